"""Settings of the bench's Django servers (Streampod and the Channels baseline).

The project's settings (so the channel layer is what the project ships: in-memory,
or the channels-redis pub/sub layer when ``REDIS_URL`` is set), with:

* the bench relay as the one endpoint on ``/websocket/`` (the demo ``chat`` app left
  out, so that each socket opens only the endpoint being measured);
* no database work: an in-memory SQLite nobody queries (clients are identified by
  ``?uid=``, see :mod:`bench.identity`), unless ``BENCH_DATABASE_URL`` names a database
  (bench/churn.py, whose sockets authenticate);
* ``DEBUG`` off, as in production;
* the per-connection rate limit raised (10,000 frames/s, bursts of 20,000): the relay's
  senders send over 1,000 frames/s each on a fast run, past the shipped 500/s, and the
  other contenders have no such limit. A refused frame would count as lost. The same for
  the frames a connection may have waiting for its endpoint (``MAX_PENDING_FRAMES``).
"""

import os

import dj_database_url

from streampod_project.settings import *  # noqa: F403
from streampod_project.settings import INSTALLED_APPS, STREAMING

DEBUG = False
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "chat"]
ROOT_URLCONF = "bench.urls"
ASGI_APPLICATION = "bench.asgi.application"
# bench/churn.py authenticates its sockets: it gives the servers a database with users.
DATABASES = (
    {"default": dj_database_url.parse(os.environ["BENCH_DATABASE_URL"])}
    if os.environ.get("BENCH_DATABASE_URL")
    else {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
)
STREAMING = {
    **STREAMING,
    "ENDPOINTS": ["bench.streampod_relay.RelayEndpoint"],
    "RATE_LIMIT_PER_SECOND": 10_000,
    "RATE_LIMIT_BURST": 20_000,
    "RATE_LIMIT_BYTES_PER_SECOND": 64 * 1024 * 1024,
    "RATE_LIMIT_BYTES_BURST": 64 * 1024 * 1024,
    # Frames queued for the endpoint's lane per connection before `rate_limited` (shipped:
    # 256). An overloaded open-loop run (bench/open_loop.py) queues more than that behind a
    # busy lane; the other contenders queue without limit, so the bench does too.
    "MAX_PENDING_FRAMES": 1_000_000,
    "MAX_PENDING_BYTES": 1024 * 1024 * 1024,
    # BENCH_METRICS=0 turns Streampod's metrics off (bench/metrics_cost.py measures both).
    "METRICS": os.environ.get("BENCH_METRICS", "1") != "0",
}
# bench/herd.py compares the 1012's advice (RESTART_RATE) with none ("none").
if os.environ.get("BENCH_RESTART_RATE"):
    _rate = os.environ["BENCH_RESTART_RATE"]
    STREAMING["RESTART_RATE"] = None if _rate == "none" else float(_rate)
