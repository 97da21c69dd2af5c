from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path

from chat.api import TokenView
from chat.views import ChatLoginView, admin_login

urlpatterns = [
    # /healthz, /readyz, /metrics and the admin's live page (before the admin's catch-all).
    path("", include("streaming.urls")),
    # The admin's sign-in, throttled as the chat's (before the admin's own URLs).
    path("admin/login/", admin_login),
    path("admin/", admin.site.urls),
    # Throttled (chat/api.py); DRF's own obtain_auth_token is not.
    path("api/auth/token/", TokenView.as_view(), name="api-token"),
    path("api/", include("chat.api_urls")),
    path("login/", ChatLoginView.as_view(), name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
    path("", include("chat.urls")),
]
