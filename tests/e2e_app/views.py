"""Test-only views of the end-to-end servers (routed by tests/e2e_app/urls.py, which only
tests/e2e_settings.py uses: never the shipped project's URLs)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import inspect
import linecache
import os
import tracemalloc
from pathlib import Path
from typing import Any

from django.http import JsonResponse
from django.shortcuts import render

ROOT = str(Path(__file__).resolve().parents[2])
#: Source trees that are Streampod's own: the framework and the demo app.
PROJECT_DIRS = tuple(os.path.join(ROOT, name) + os.sep for name in ("streaming", "chat"))

_baseline: tracemalloc.Snapshot | None = None


def js_client(request):
    """A test page for streampod.js (see tests/browser)."""
    return render(request, "e2e/js_client.html")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def native_kb() -> dict[str, int]:
    """Memory below Python: glibc's heap (in use, free), SQLite's own, threads.

    RSS that tracemalloc does not see is one of these: C allocations (SQLite's page
    cache, per connection), free memory glibc keeps in its arenas, or thread stacks.
    """
    out: dict[str, int] = {"threads": len(os.listdir("/proc/self/task"))}
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        out.update(
            malloc_arena_kb=info.arena // 1024,
            malloc_mmap_kb=info.hblkhd // 1024,
            malloc_used_kb=info.uordblks // 1024,
            malloc_free_kb=info.fordblks // 1024,
        )
    except (OSError, AttributeError):
        pass
    try:
        sqlite = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
        out["sqlite_kb"] = sqlite.sqlite3_memory_used() // 1024
    except (OSError, AttributeError):
        pass
    return out


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _short(filename: str) -> str:
    if filename.startswith(ROOT + os.sep):
        return filename[len(ROOT) + 1 :]
    marker = f"{os.sep}site-packages{os.sep}"
    if marker in filename:
        return filename.split(marker, 1)[1]
    return filename


def _where(frame: tracemalloc.Frame) -> str:
    code = linecache.getline(frame.filename, frame.lineno).strip()
    return f"{_short(frame.filename)}:{frame.lineno}  {code}"[:200]


def _live_counts() -> dict[str, int]:
    from streaming.consumer import StreamingConsumer

    try:
        from streaming.lane import Lane
    except ImportError:  # before lanes had a module of their own
        from streaming.consumer import Lane  # type: ignore[attr-defined,no-redef]
    from streaming.endpoint import Endpoint
    from streaming.messages import SessionMessages
    from streaming.outbox import Outbox
    from streaming.session import StreamingSession

    kinds: dict[str, type] = {
        "StreamingConsumer": StreamingConsumer,
        "StreamingSession": StreamingSession,
        "SessionMessages": SessionMessages,
        "Endpoint": Endpoint,
        "Outbox": Outbox,
        "Lane": Lane,
    }
    counts = dict.fromkeys(kinds, 0)
    for obj in gc.get_objects():
        for name, cls in kinds.items():
            if isinstance(obj, cls) and not isinstance(obj, type):
                counts[name] += 1
    return counts


def _bus_state() -> dict[str, Any]:
    from streaming.messages import get_bus

    bus = get_bus()
    tables = {
        "channels": "_channels",
        "owners": "_owned",
        "joined": "_joined",
        "locks": "_locks",
        "reconcilers": "_reconcilers",
    }
    state: dict[str, Any] = {"cross_process": bus.cross_process}
    for name, attr in tables.items():
        state[name] = len(getattr(bus, attr, ()))
    return state


def _diff(top: int) -> dict[str, Any]:
    assert _baseline is not None
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*"),
            tracemalloc.Filter(False, linecache.__file__),
        ]
    )
    stats = snapshot.compare_to(_baseline, "traceback")
    # Innermost frame of each allocation, and the innermost frame in Streampod's own code
    # (streaming/, chat/) on its stack: what Streampod allocated, directly or through a
    # library it called.
    lines: dict[str, list[int]] = {}
    project: dict[str, list[int]] = {}
    files: dict[str, list[int]] = {}
    tracebacks = []
    for stat in stats:
        if stat.size_diff == 0 and stat.count_diff == 0:
            continue
        frames = list(reversed(stat.traceback))  # the allocation first, then its callers
        inner = _where(frames[0])
        for key, table in ((inner, lines), (_short(frames[0].filename), files)):
            entry = table.setdefault(key, [0, 0])
            entry[0] += stat.size_diff
            entry[1] += stat.count_diff
        own = next((f for f in frames if f.filename.startswith(PROJECT_DIRS)), None)
        if own is not None:
            entry = project.setdefault(_where(own), [0, 0])
            entry[0] += stat.size_diff
            entry[1] += stat.count_diff
        tracebacks.append((stat.size_diff, stat.count_diff, frames))
    tracebacks.sort(key=lambda t: t[0], reverse=True)

    def ranked(table: dict[str, list[int]]) -> list[dict[str, Any]]:
        rows = sorted(table.items(), key=lambda kv: kv[1][0], reverse=True)[:top]
        return [{"where": k, "size_diff": v[0], "count_diff": v[1]} for k, v in rows]

    return {
        "total_diff": sum(s.size_diff for s in stats),
        "lines": ranked(lines),
        "files": ranked(files),
        "project_lines": ranked(project),
        "tracebacks": [
            {"size_diff": size, "count_diff": count, "frames": [_where(f) for f in frames]}
            for size, count, frames in tracebacks[:top]
        ],
    }


def _garbage(top: int) -> dict[str, Any]:
    """What the next collection would free (cyclic garbage), by type, and who holds sessions."""
    from collections import Counter

    from streaming.session import StreamingSession

    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        garbage = list(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    ids = {id(obj) for obj in garbage}
    types = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage)
    holders: Counter[str] = Counter()
    for obj in garbage:
        if isinstance(obj, StreamingSession):
            for ref in gc.get_referrers(obj):
                if id(ref) in ids:
                    desc = f"{type(ref).__module__}.{type(ref).__qualname__}"
                    if isinstance(ref, dict):
                        desc += "{" + ",".join(sorted(map(str, ref))[:6]) + "}"
                    elif hasattr(ref, "__qualname__"):
                        desc += " " + ref.__qualname__
                    holders[desc] += 1
    functions = Counter(
        f"{getattr(o, '__module__', '?')}.{o.__qualname__}"
        for o in garbage
        if inspect.isfunction(o)
    )
    user_holders: Counter[str] = Counter()
    for obj in garbage:
        if type(obj).__name__ == "User":
            for ref in gc.get_referrers(obj):
                if id(ref) in ids:
                    desc = f"{type(ref).__module__}.{type(ref).__qualname__}"
                    if isinstance(ref, dict):
                        desc += "{" + ",".join(sorted(map(str, ref))[:6]) + "}"
                    elif isinstance(ref, tuple):
                        desc += f"[{len(ref)}]"
                    user_holders[desc] += 1
    del garbage
    return {
        "types": types.most_common(top),
        "functions": functions.most_common(top),
        "session_holders": holders.most_common(top),
        "user_holders": user_holders.most_common(top),
    }


async def memory(request):
    """This server process's memory, for the churn tests (tests/e2e/test_memory_churn.py).

    Runs on the event loop, like the consumers, after a full garbage collection.

    * ``?trace=start[&frames=N]``: start tracemalloc (N frames a trace, 25 by default)
      and take the baseline snapshot; ``?trace=diff[&top=N]``: what grew since, by
      allocation site; ``?trace=stop``.
    * ``?collect=0``: no garbage collection (what is uncollected garbage shows as live).
    * Always: ``rss_kb`` (VmRSS), live Streampod objects, the message bus's tables and
      the number of asyncio tasks.
    """
    global _baseline
    collect = request.GET.get("collect", "1") != "0"
    if collect:
        gc.collect()
    trace = request.GET.get("trace")
    body: dict[str, Any] = {}
    if trace == "start":
        if not tracemalloc.is_tracing():
            tracemalloc.start(int(request.GET.get("frames", "25")))
        _baseline = tracemalloc.take_snapshot()
    elif trace == "diff":
        if _baseline is None:
            return JsonResponse({"error": "no baseline: ?trace=start first"}, status=400)
        body["trace"] = _diff(int(request.GET.get("top", "15")))
    elif trace == "garbage":
        body["garbage"] = _garbage(int(request.GET.get("top", "40")))
    elif trace == "stop":
        _baseline = None
        tracemalloc.stop()
    if collect:
        gc.collect()
    body.update(
        {
            "rss_kb": rss_kb(),
            "native": native_kb(),
            "gc_count": gc.get_count(),
            "gc_stats": gc.get_stats(),
            "gc_threshold": gc.get_threshold(),
            "live": _live_counts(),
            "bus": _bus_state(),
            "tasks": len(asyncio.all_tasks()),
            "tracing": tracemalloc.is_tracing(),
            "traced_kb": tracemalloc.get_traced_memory()[0] // 1024,
        }
    )
    return JsonResponse(body)
