from django.http import HttpRequest, HttpResponse


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Streampod is running. WebSocket endpoint: /websocket/\n", content_type="text/plain")
