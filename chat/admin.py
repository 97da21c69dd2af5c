"""Admin for chat messages. Users are managed by Django's own user admin."""

from __future__ import annotations

from django.contrib import admin

from .models import Message


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "sent_at", "sender", "recipient", "short_text")
    list_display_links = ("id", "short_text")
    list_filter = ("sent_at", "sender", "recipient")
    search_fields = ("text", "sender__username", "recipient__username")
    date_hierarchy = "sent_at"
    list_select_related = ("sender", "recipient")
    autocomplete_fields = ("sender", "recipient")
    ordering = ("-id",)

    @admin.display(description="text")
    def short_text(self, obj: Message) -> str:
        return obj.text if len(obj.text) <= 80 else obj.text[:79] + "…"
