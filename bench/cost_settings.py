"""Settings of ``python -m bench.frame_cost``: the project's shipped limits, one endpoint
that takes heavy messages. ``STREAMPOD_BENCH_NO_BYTE_LIMIT=1`` turns the byte rate off
(what the server did before it had one)."""

import os

from streampod_project.settings import *  # noqa: F403
from streampod_project.settings import INSTALLED_APPS, STREAMING

DEBUG = False
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "chat"]
ROOT_URLCONF = "bench.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
STREAMING = {**STREAMING, "ENDPOINTS": ["bench.frame_cost.HeavyEndpoint"]}
if os.environ.get("STREAMPOD_BENCH_NO_BYTE_LIMIT") == "1":
    STREAMING["RATE_LIMIT_BYTES_PER_SECOND"] = None
