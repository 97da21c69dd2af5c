"""REST routes of the chat, mounted under ``/api/`` by the project."""

from django.urls import path

from . import api

urlpatterns = [
    path("users/", api.PeopleView.as_view(), name="api-users"),
    path("chat/messages/", api.ConversationView.as_view(), name="api-chat-messages"),
]
