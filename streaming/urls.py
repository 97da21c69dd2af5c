"""HTTP URLs of the ``streaming`` app: health checks and metrics.

::

    urlpatterns = [
        ...
        path("", include("streaming.urls")),
    ]

gives ``/healthz``, ``/readyz`` and ``/metrics`` (see :mod:`streaming.health`) and the
admin's live page ``/admin/streampod/live/`` (:mod:`streaming.admin_live`): include
them before ``admin.site.urls``, whose catch-all would hide the page.
"""

from django.urls import path

from . import admin_live, health

urlpatterns = [
    path("healthz", health.healthz, name="streaming-healthz"),
    path("readyz", health.readyz, name="streaming-readyz"),
    path("metrics", health.metrics_view, name="streaming-metrics"),
    path("admin/streampod/live/", admin_live.live_view, name="streaming-admin-live"),
]
