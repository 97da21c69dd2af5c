"""Memory probe for ``python -m bench.connections --memprobe`` only
(``PYTHONPATH=bench/memprobe``, ``BENCH_MEMPROBE=<path prefix>``).

Starts tracemalloc (one frame per allocation) at interpreter start; on SIGUSR1 the
process writes a snapshot to ``<prefix>.<n>`` (n = 0, 1, ...) and prints
``BENCH-MEMPROBE <path>`` once it is complete.
"""

import os
import signal
import sys
import tracemalloc

_prefix = os.environ.get("BENCH_MEMPROBE")
_taken = [0]


def _dump(signum: int, frame: object) -> None:
    path = f"{_prefix}.{_taken[0]}"
    _taken[0] += 1
    tracemalloc.take_snapshot().dump(path)
    print(f"BENCH-MEMPROBE {path}", file=sys.stderr, flush=True)


if _prefix:
    tracemalloc.start(1)
    signal.signal(signal.SIGUSR1, _dump)
