"""ASGI app of the Channels baseline: ``/channels/`` as a Channels user deploys it.

``AuthMiddlewareStack`` around :class:`bench.channels_relay.RelayConsumer`, in a
default CPython process (no GC tuning), with the same settings as Streampod's
contender (:mod:`bench.settings`).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
django_asgi_app = get_asgi_application()  # set up Django before importing consumers

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from .channels_relay import RelayConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter([path("channels/", AuthMiddlewareStack(RelayConsumer.as_asgi()))]),
    }
)
