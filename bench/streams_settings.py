"""Settings of ``python -m bench.idle_streams``: the project's shipped limits, one
endpoint with an endless streaming method."""

from streampod_project.settings import *  # noqa: F403
from streampod_project.settings import INSTALLED_APPS, STREAMING

DEBUG = False
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "chat"]
ROOT_URLCONF = "bench.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
STREAMING = {**STREAMING, "ENDPOINTS": ["bench.idle_streams.StreamsEndpoint"]}
