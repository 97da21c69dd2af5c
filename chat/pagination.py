"""Pagination of the chat's API, and the bounds of its query parameters.

Conversations use keyset pagination on the message id: ``?after=<id>&limit=<n>``.
Message ids only grow, so "everything after the last id I have" is both the next
page and what a client missed while it was offline, with no offset to drift when
new messages arrive between two requests. The people list uses DRF's
``?limit=<n>&offset=<n>``.

Every integer parameter is checked before it reaches the database: one that is not
an integer, or is outside its range (below its minimum, or above :data:`MAX_ID`), is a
400 naming the parameter. ``limit`` above :data:`MAX_PAGE_SIZE` is served as
:data:`MAX_PAGE_SIZE`.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.pagination import BasePagination, LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.utils.urls import replace_query_param

from .protocol import MAX_ID

#: The largest id or count a query parameter may name (chat.protocol.MAX_ID): a signed
#: 64-bit integer, the widest primary key of any database Django supports. Above it SQLite
#: raises OverflowError (a 500), so it is a 400 instead.

#: The most rows one page holds, whatever ``limit`` asks for.
MAX_PAGE_SIZE = 200


class _PageQuery(serializers.Serializer):
    after = serializers.IntegerField(min_value=0, max_value=MAX_ID, required=False, default=0)
    limit = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)


class _LimitOffsetQuery(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)
    offset = serializers.IntegerField(min_value=0, max_value=MAX_ID, required=False)


class CheckedLimitOffsetPagination(LimitOffsetPagination):
    """DRF's ``?limit=&offset=``, with a 400 for a bad value (DRF ignores one) and
    ``limit`` capped at :data:`MAX_PAGE_SIZE` (DRF has no cap by default)."""

    max_limit = MAX_PAGE_SIZE

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: Any = None
    ) -> list[Any] | None:
        _LimitOffsetQuery(data=request.query_params).is_valid(raise_exception=True)
        return super().paginate_queryset(queryset, request, view)


class AfterIdPagination(BasePagination):
    """Rows with ``id > after``, oldest first, at most ``limit`` of them.

    The response is ``{"next": <url or null>, "results": [...]}``; ``next`` is the
    same query with ``after`` set to the page's last id, null on the last page.
    """

    max_limit = MAX_PAGE_SIZE

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: Any = None
    ) -> list[Any]:
        query = _PageQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        after: int = query.validated_data["after"]
        limit: int = min(
            query.validated_data.get("limit") or api_settings.PAGE_SIZE or 50, self.max_limit
        )
        rows = list(queryset.filter(pk__gt=after).order_by("pk")[: limit + 1])
        self.request = request
        self.has_next = len(rows) > limit
        self.page = rows[:limit]
        return self.page

    def get_next_link(self) -> str | None:
        if not self.has_next:
            return None
        url = self.request.build_absolute_uri()
        return replace_query_param(url, "after", self.page[-1].pk)

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"next": self.get_next_link(), "results": data})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["next", "results"],
            "properties": {
                "next": {"type": "string", "nullable": True, "format": "uri"},
                "results": schema,
            },
        }
