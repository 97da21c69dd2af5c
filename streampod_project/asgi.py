"""ASGI entry point: Django for HTTP, Streampod's ``/websocket/`` for WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "streampod_project.settings")
django_asgi_app = get_asgi_application()  # set up Django before importing consumers

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from streaming.auth import StreamingAuthMiddlewareStack  # noqa: E402
from streaming.routing import websocket_urlpatterns  # noqa: E402
from streaming.shutdown import install_graceful_shutdown  # noqa: E402
from streaming.tuning import tune_gc  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": StreamingAuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)

# Rarer, shorter GC pauses for a process that holds many sockets (streaming/tuning.py).
tune_gc()
# On SIGTERM: close every socket with 1012, let hooks finish, then exit (streaming/shutdown.py).
install_graceful_shutdown()
