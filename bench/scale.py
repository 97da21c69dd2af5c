"""What the curves of ``make bench-scale`` share: :mod:`bench.fanout_curve`,
:mod:`bench.connections` and :mod:`bench.open_loop`.

Each runs its contenders one after the other on fresh servers, with its sockets in
load-client processes (:mod:`bench.swarm`), and writes
``bench/results/<date>-<name>.md`` / ``.json`` / ``.png``. Every figure is taken with
the machine's load average beside it (the machine is shared: compare within a file).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .servers import ServerProcess
from .swarm import SwarmProcess

#: The colour of each contender in every curve.
COLOURS = {
    "streampod_uvicorn": "#c44e52",
    "streampod_demo": "#c44e52",
    "socketio": "#4c72b0",
    "channels": "#55a868",
    "ceiling": "#8c8c8c",
}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def revision() -> str:
    """The commit measured (``git describe``-like: short hash, ``+dirty`` when the
    server's code, ``streaming/``, differs from it), or "" outside a git checkout."""
    import subprocess

    from .servers import ROOT

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "streaming"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")


async def stop_all(
    out: dict[str, Any], procs: list[ServerProcess], swarms: list[SwarmProcess]
) -> None:
    """Stop the load clients, then the servers; count the servers' logged errors into
    ``out`` (with the tail of their output when there are some, or ``out`` has one)."""
    await asyncio.gather(*(s.stop() for s in swarms), return_exceptions=True)
    await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))
    out["server_errors"] = sum(p.tail.errors for p in procs if p.tail)
    if out["server_errors"] or "error" in out:
        out["server_log_tail"] = [line for p in procs for line in p.output().splitlines()[-15:]]


def pyplot() -> Any:
    """matplotlib's pyplot on the file backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save(plt: Any, fig: Any, path: Path) -> bool:
    """Lay out, write and close a figure; True (the file is there)."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def run(main: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Run the coordinator on uvloop when it is installed (as the load clients do)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def write(
    out: Path,
    name: str,
    data: dict[str, Any],
    plot: Callable[[dict[str, Any], Path], bool],
    render: Callable[[str | None], list[str]],
) -> list[Path]:
    """``<date>-<name>.json`` (every figure), ``.png`` (``plot``) and ``.md``
    (``render(png file name or None)``); prints what it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = data["meta"]["date"][:10]
    md, js, png = (out / f"{stamp}-{name}.{ext}" for ext in ("md", "json", "png"))
    js.write_text(json.dumps(data, indent=1) + "\n")
    plotted = plot(data, png)
    md.write_text("\n".join(render(png.name if plotted else None)) + "\n")
    paths = [md, js, *([png] if plotted else [])]
    for path in paths:
        print(f"wrote {path}")
    return paths


def execute(
    name: str,
    args: Any,
    main: Callable[[Any], Coroutine[Any, Any, dict[str, Any]]],
    plot: Callable[[dict[str, Any], Path], bool],
    render: Callable[[dict[str, Any], str | None], list[str]],
    table: Callable[[dict[str, Any]], list[str]],
) -> int:
    """A curve's ``main``: raise the open-files limit, run ``main(args)``, write the files
    under ``args.out`` and print the tables."""
    from .run import raise_fd_limit

    raise_fd_limit()
    data = run(lambda: main(args))
    write(args.out, name, data, plot, lambda png: render(data, png))
    print("\n".join(table(data)))
    return 0
