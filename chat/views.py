"""The chat's web pages: sign in, then one page that chats over the socket."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from .demo import DEMO_PASSWORD, DEMO_USERS
from .people import display_name


class ChatLoginView(LoginView):
    """Django's login, with the demo accounts listed when DEBUG is on."""

    template_name = "chat/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        if settings.DEBUG:
            context["demo_users"] = [name for name, _ in DEMO_USERS]
            context["demo_password"] = DEMO_PASSWORD
        return context


@login_required
def index(request: HttpRequest) -> HttpResponse:
    """The chat. Everything after the first paint comes from the API and the socket."""
    user = request.user
    config = {
        "me": {"id": user.pk, "username": user.get_username(), "display_name": display_name(user)},
        "usersUrl": reverse("api-users"),
        "messagesUrl": reverse("api-chat-messages"),
    }
    return render(request, "chat/index.html", {"config": config, "me": config["me"]})
