"""WebSocket URL patterns: ``/websocket/`` carries every registered endpoint.

Mount them behind ``streaming.auth.StreamingAuthMiddlewareStack`` in your ASGI app::

    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": StreamingAuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    })
"""

from django.urls import path

from .consumer import StreamingConsumer

websocket_urlpatterns = [
    path("websocket/", StreamingConsumer.as_asgi(), name="streaming-websocket"),
]
