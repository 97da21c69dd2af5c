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
from .protocol import MAX_TEXT_LENGTH
from .throttling import sign_in_wait


class ChatLoginView(LoginView):
    """Django's login, with the demo accounts listed when DEBUG is on.

    ``?signed_out=1`` (where the chat page sends a user whose session ended while it
    was open: signed out in another tab, deactivated) adds a line saying so.
    """

    template_name = "chat/login.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        wait = sign_in_wait(request)
        if wait is None:
            return super().post(request, *args, **kwargs)
        form = self.get_form()
        form.add_error(None, f"Too many sign-in attempts; try again in {wait} s.")
        response = self.form_invalid(form)
        response.status_code = 429
        response["Retry-After"] = str(wait)
        return response

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["signed_out"] = self.request.method == "GET" and "signed_out" in self.request.GET
        if settings.DEBUG:
            context["demo_users"] = [name for name, _ in DEMO_USERS]
            context["demo_password"] = DEMO_PASSWORD
        return context


def admin_login(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
    """The admin's sign-in, throttled as the chat's (:func:`chat.throttling.sign_in_wait`)."""
    from django.contrib import admin

    if request.method == "POST":
        wait = sign_in_wait(request)
        if wait is not None:
            response = HttpResponse(
                f"Too many sign-in attempts; try again in {wait} s.\n",
                status=429,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = str(wait)
            return response
    return admin.site.login(request, extra_context)


@login_required
def index(request: HttpRequest) -> HttpResponse:
    """The chat. Everything after the first paint comes from the API and the socket."""
    user = request.user
    config = {
        "me": {"id": user.pk, "username": user.get_username(), "display_name": display_name(user)},
        "usersUrl": reverse("api-users"),
        "messagesUrl": reverse("api-chat-messages"),
        "loginUrl": reverse("login"),
        "maxTextLength": MAX_TEXT_LENGTH,
    }
    return render(request, "chat/index.html", {"config": config, "me": config["me"]})
