from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path

from chat.api import TokenView
from chat.views import ChatLoginView

urlpatterns = [
    # /healthz, /readyz, /metrics and the admin's live page (before the admin's catch-all).
    path("", include("streaming.urls")),
    path("admin/", admin.site.urls),
    # Throttled (chat/api.py); DRF's own obtain_auth_token is not.
    path("api/auth/token/", TokenView.as_view(), name="api-token"),
    path("api/", include("chat.api_urls")),
    path("login/", ChatLoginView.as_view(), name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
    path("", include("chat.urls")),
]
