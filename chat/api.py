"""The chat's REST API (DRF): the people one can write to, and a conversation's history.

Both need a signed-in user (session or ``Authorization: Token <key>``; the project's
``REST_FRAMEWORK`` defaults). A conversation is always read from the requesting
user's side: there is no parameter that names somebody else's messages.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from rest_framework import generics

from .models import Message
from .pagination import AfterIdPagination
from .people import chat_partners
from .serializers import ConversationQuerySerializer, MessageSerializer, PersonSerializer


class PeopleView(generics.ListAPIView):
    """``GET /api/users/``: active users other than me (id, username, display_name)."""

    serializer_class = PersonSerializer

    def get_queryset(self) -> QuerySet[Any]:
        return chat_partners(self.request.user)


class ConversationView(generics.ListAPIView):
    """``GET /api/chat/messages/?with=<user id>&after=<id>&limit=<n>``.

    The messages between me and ``with``, both directions, oldest first, keyset
    paginated by id (see :class:`~chat.pagination.AfterIdPagination`).
    """

    serializer_class = MessageSerializer
    pagination_class = AfterIdPagination

    def get_queryset(self) -> QuerySet[Message]:
        query = ConversationQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        me = self.request.user.pk
        other = query.validated_data["with"]
        return Message.objects.filter(
            Q(sender_id=me, recipient_id=other) | Q(sender_id=other, recipient_id=me)
        )
