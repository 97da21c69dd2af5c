"""GC pause probe for the profiled bench run only (``PYTHONPATH=bench/gcprobe``).

Prints one ``BENCH-GC <generation> <ms>`` line per collection that takes 1 ms or
more, so the harness can tell how much of a latency tail is garbage collection.
"""

import gc
import sys
import time

_started: list[float] = [0.0]


def _probe(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _started[0]) * 1000
    if ms >= 1.0:
        print(f"BENCH-GC {info['generation']} {ms:.1f}", file=sys.stderr, flush=True)


gc.callbacks.append(_probe)
