"""ASGI app of the bench's Django servers (daphne, or uvicorn for the extra row).

* ``/websocket/``: Streampod as a project ships it (``StreamingAuthMiddlewareStack``
  around ``StreamingConsumer``), serving :class:`bench.streampod_relay.RelayEndpoint`.
* ``/channels/``: the Channels baseline behind ``AuthMiddlewareStack``, as a Channels
  user writes it. Both stacks resolve the (absent) session the same way.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
django_asgi_app = get_asgi_application()  # set up Django before importing consumers

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from streaming.auth import StreamingAuthMiddlewareStack  # noqa: E402
from streaming.consumer import StreamingConsumer  # noqa: E402

from .channels_relay import RelayConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(
            [
                path("websocket/", StreamingAuthMiddlewareStack(StreamingConsumer.as_asgi())),
                path("channels/", AuthMiddlewareStack(RelayConsumer.as_asgi())),
            ]
        ),
    }
)
