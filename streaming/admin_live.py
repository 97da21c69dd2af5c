"""The admin's live page: every server process's figures, updated over Streampod.

``/admin/streampod/live/`` (``streaming.urls``; include it before ``admin.site.urls``).
Staff only (``admin.site.admin_view``: anyone else gets the admin's login page). The
page opens a socket with ``streampod.js`` and asks the ``streampod_metrics`` endpoint
(:mod:`streaming.ops`, which must be registered) for every process's figures once a
second; it shows the cluster's totals and one row per process. The admin index links
to it (:mod:`streaming.admin`).
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

#: The name of ``streaming.ops.ClusterMetricsEndpoint`` (not imported here: importing it
#: makes the process answer metrics requests, which only registering it should do).
ENDPOINT_NAME = "streampod_metrics"

#: Seconds between the page's requests (and after which a silent process is dropped: 5x).
REFRESH_SECONDS = 1.0


def _live(request: HttpRequest) -> HttpResponse:
    from . import registry

    context = {
        **admin.site.each_context(request),
        "title": "Streampod: live cluster figures",
        "endpoint": ENDPOINT_NAME,
        "refresh_ms": int(REFRESH_SECONDS * 1000),
        # Not registered: the page says how to turn it on instead of opening a socket
        # that would be refused ("Unknown endpoint").
        "registered": registry.endpoints.get(ENDPOINT_NAME) is not None,
        "endpoint_path": "streaming.ops.ClusterMetricsEndpoint",
    }
    return TemplateResponse(request, "streaming/admin_live.html", context)


live_view = admin.site.admin_view(_live)
