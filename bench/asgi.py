"""ASGI app of the Streampod contender (daphne, or uvicorn for the extra row).

``/websocket/``: Streampod as a project ships it (``StreamingAuthMiddlewareStack``
around ``StreamingConsumer``, and ``tune_gc()`` as in ``streampod_project/asgi.py``),
serving :class:`bench.streampod_relay.RelayEndpoint`. The Channels baseline has its
own module, :mod:`bench.channels_asgi`, without Streampod's tuning.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
django_asgi_app = get_asgi_application()  # set up Django before importing consumers

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from streaming.auth import StreamingAuthMiddlewareStack  # noqa: E402
from streaming.consumer import StreamingConsumer  # noqa: E402
from streaming.tuning import tune_gc  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(
            [path("websocket/", StreamingAuthMiddlewareStack(StreamingConsumer.as_asgi()))]
        ),
    }
)

# Rarer, shorter GC pauses for a process that holds many sockets (streaming/tuning.py).
# BENCH_FREEZE_SOCKETS=0: without its socket freezer (python -m bench.herd --freeze-sockets).
tune_gc(freeze_sockets=os.environ.get("BENCH_FREEZE_SOCKETS", "1") != "0")
