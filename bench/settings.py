"""Settings of the bench's Django servers (Streampod and the Channels baseline).

The project's settings (so the channel layer is what the project ships: in-memory,
or the channels-redis pub/sub layer when ``REDIS_URL`` is set), with:

* the bench relay as the one endpoint on ``/websocket/`` (the demo ``chat`` app left
  out, so that each socket opens only the endpoint being measured);
* no database work: an in-memory SQLite nobody queries (clients are identified by
  ``?uid=``, see :mod:`bench.identity`);
* ``DEBUG`` off, as in production.
"""

from streampod_project.settings import *  # noqa: F403
from streampod_project.settings import INSTALLED_APPS, STREAMING

DEBUG = False
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "chat"]
ROOT_URLCONF = "bench.urls"
ASGI_APPLICATION = "bench.asgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
STREAMING = {**STREAMING, "ENDPOINTS": ["bench.streampod_relay.RelayEndpoint"]}
