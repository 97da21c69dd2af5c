"""The chat's one table: direct messages between two users."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from .protocol import ChatMessage


class Message(models.Model):
    """A message ``sender`` sent to ``recipient``; ``id`` orders a conversation."""

    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sent_messages"
    )
    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="received_messages"
    )
    text = models.TextField()
    sent_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # A conversation is read as (sender, recipient) in both directions, by id.
            models.Index(fields=["sender", "recipient", "id"], name="chat_msg_pair_idx"),
        ]

    def __str__(self) -> str:
        preview = self.text if len(self.text) <= 40 else self.text[:39] + "…"
        return f"#{self.pk} {self.sender_id} -> {self.recipient_id}: {preview}"

    def to_chat_message(self) -> ChatMessage:
        """The stored message as it travels on the wire."""
        return ChatMessage(
            id=self.pk,
            sender_id=self.sender_id,
            recipient_id=self.recipient_id,
            text=self.text,
            sent_at=self.sent_at,
        )
