"""The chat's REST API (DRF): the people one can write to, a conversation's history,
and the token endpoint.

The first two need a signed-in user (session or ``Authorization: Token <key>``; the
project's ``REST_FRAMEWORK`` defaults). A conversation is always read from the
requesting user's side: there is no parameter that names somebody else's messages.

All three are throttled with DRF's ``ScopedRateThrottle`` (open while its cache is down:
chat/throttling.py): scope ``chat_api`` per user,
scope ``auth_token`` per client address (the rates are the project's
``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``). Over a rate: 429 with ``Retry-After``.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from rest_framework import generics
from rest_framework.authtoken.views import ObtainAuthToken

from .models import Message
from .pagination import AfterIdPagination, CheckedLimitOffsetPagination
from .people import chat_partners
from .serializers import ConversationQuerySerializer, MessageSerializer, PersonSerializer
from .throttling import ScopedRateThrottleFailLocal, ScopedRateThrottleFailOpen


class TokenView(ObtainAuthToken):
    """``POST /api/auth/token/`` ``{username, password}`` -> ``{"token": key}``: DRF's
    ``obtain_auth_token``, which has no throttle of its own, throttled per client
    address so that passwords cannot be guessed at full speed."""

    throttle_classes = [ScopedRateThrottleFailLocal]
    throttle_scope = "auth_token"


class PeopleView(generics.ListAPIView):
    """``GET /api/users/?limit=<n>&offset=<n>``: active users other than me (id,
    username, display_name); ``limit`` is at most 200."""

    serializer_class = PersonSerializer
    pagination_class = CheckedLimitOffsetPagination
    throttle_classes = [ScopedRateThrottleFailOpen]
    throttle_scope = "chat_api"

    def get_queryset(self) -> QuerySet[Any]:
        return chat_partners(self.request.user)


class ConversationView(generics.ListAPIView):
    """``GET /api/chat/messages/?with=<user id>&after=<id>&limit=<n>``.

    The messages between me and ``with``, both directions, oldest first, keyset
    paginated by id (see :class:`~chat.pagination.AfterIdPagination`).
    """

    serializer_class = MessageSerializer
    pagination_class = AfterIdPagination
    throttle_classes = [ScopedRateThrottleFailOpen]
    throttle_scope = "chat_api"

    def get_queryset(self) -> QuerySet[Message]:
        query = ConversationQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        me = self.request.user.pk
        other = query.validated_data["with"]
        return Message.objects.filter(
            Q(sender_id=me, recipient_id=other) | Q(sender_id=other, recipient_id=me)
        )
