"""The C load client, ``bench/cswarm.c``: a :mod:`bench.swarm` process for the relay and
fan-out workloads (Streampod's dialect only) that costs the machine's shared cores a few
microseconds a message instead of bench.swarm's 40 to 50 (``python -m bench.workers
--client c``).

It is built on first use with the machine's C compiler (``$CC``, else ``cc`` or ``gcc``)
into the temporary directory, named by a hash of its source, so a changed source is
built again and nothing is written into the checkout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .swarm import SwarmProcess

SOURCE = Path(__file__).with_name("cswarm.c")


class NoCompiler(RuntimeError):
    """No C compiler on this machine: use the Python client (``--client python``)."""


def binary() -> Path:
    """The built client, built now if it is not yet."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"streampod-cswarm-{digest}"
    if out.exists():
        return out
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise NoCompiler("no C compiler (cc or gcc) for bench/cswarm.c: use --client python")
    partial = out.with_name(f"{out.name}.{os.getpid()}")
    subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(partial), str(SOURCE)],
        check=True,
    )
    partial.replace(out)  # atomic: two runs building at once both end with a whole binary
    return out


def swarm_process() -> SwarmProcess:
    """A load-client process running the C client (start it with ``await ....start()``)."""
    return SwarmProcess(command=[str(binary())])
