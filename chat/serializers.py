"""DRF serializers of the chat's REST API."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from rest_framework import serializers

from .models import Message
from .pagination import MAX_ID
from .people import display_name


class PersonSerializer(serializers.ModelSerializer):
    """Someone one can chat with."""

    display_name = serializers.SerializerMethodField()

    class Meta:
        model = get_user_model()
        fields = ["id", "username", "display_name"]

    def get_display_name(self, user: Any) -> str:
        return display_name(user)


class MessageSerializer(serializers.ModelSerializer):
    """A stored message: the same fields as the ``ChatMessage`` the socket delivers."""

    sender_id = serializers.IntegerField(read_only=True)
    recipient_id = serializers.IntegerField(read_only=True)

    class Meta:
        model = Message
        fields = ["id", "sender_id", "recipient_id", "text", "sent_at"]
        read_only_fields = fields


class ConversationQuerySerializer(serializers.Serializer):
    """``?with=<user id>`` of the messages list (``after`` and ``limit`` belong to
    the pagination)."""

    def get_fields(self) -> dict[str, serializers.Field]:
        # "with" is a Python keyword, so the fields are declared here, not as attributes.
        return {
            "with": serializers.IntegerField(min_value=1, max_value=MAX_ID),
        }
