"""Relations, threads and event context: ``/v1/rooms/{roomId}/relations/...``, ``/v1/rooms/{roomId}/threads``,
``/v3/rooms/{roomId}/context/{eventId}`` (behaviour and bounds: docs/client-api.md)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import CLIENT, authenticate, ok, services
from lowband.gateway.homeserver import context, relations
from lowband.gateway.homeserver.context import ContextHandler
from lowband.gateway.homeserver.filter_check import check_room_event_filter
from lowband.gateway.homeserver.relations import RelationsHandler, page_limit
from lowband.gateway.matrix.errors import MatrixError, bad_json, invalid_param
from lowband.gateway.matrix.identifiers import is_room_id

V1 = "/_matrix/client/v1"
#: the longest inline filter taken (as /sync's)
MAX_FILTER_CHARS = 16 * 1024


def _room_id(request: web.Request) -> str:
    room_id = request.match_info["room_id"]
    if not is_room_id(room_id):
        raise invalid_param("not a room ID")
    return room_id


def _flag(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise invalid_param(f"'{name}' must be true or false")
    return raw == "true"


def _room_event_filter(request: web.Request) -> dict[str, Any] | None:
    """The ``filter`` query parameter: an inline RoomEventFilter (JSON object), or None."""
    raw = request.query.get("filter")
    if not raw:
        return None
    if len(raw) > MAX_FILTER_CHARS:
        raise invalid_param("filter too large")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise MatrixError(400, "M_NOT_JSON", "filter is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad_json("filter must be an object")
    return check_room_event_filter(value)


async def get_relations(request: web.Request) -> web.Response:
    """GET /v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]."""
    requester = authenticate(request)
    room_id = _room_id(request)
    handler = RelationsHandler(services(request).sync)
    return ok(handler.relations(
        requester.user_id, room_id, request.match_info["event_id"], rel_type=request.match_info.get("rel_type"),
        event_type=request.match_info.get("event_type"), from_token=request.query.get("from"),
        to_token=request.query.get("to"), direction=request.query.get("dir", "b"),
        limit=page_limit(request.query.get("limit")), recurse=_flag(request, "recurse"),
        device_id=requester.device_id,
    ))  # fmt: skip


async def get_threads(request: web.Request) -> web.Response:
    """GET /v1/rooms/{roomId}/threads."""
    requester = authenticate(request)
    room_id = _room_id(request)
    handler = RelationsHandler(services(request).sync)
    return ok(handler.threads(requester.user_id, room_id, include=request.query.get("include", "all"),
                              from_token=request.query.get("from"),
                              limit=page_limit(request.query.get("limit"), relations.DEFAULT_LIMIT),
                              device_id=requester.device_id))  # fmt: skip


async def get_context(request: web.Request) -> web.Response:
    """GET /v3/rooms/{roomId}/context/{eventId}."""
    requester = authenticate(request)
    room_id = _room_id(request)
    limit = page_limit(request.query.get("limit"), context.DEFAULT_LIMIT, context.MAX_LIMIT, low=0)
    handler = ContextHandler(services(request).sync)
    return ok(handler.context(requester.user_id, room_id, request.match_info["event_id"], limit,
                              _room_event_filter(request), requester.device_id))  # fmt: skip


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    room = V1 + "/rooms/{room_id}"
    return [
        web.get(room + "/relations/{event_id}", get_relations),
        web.get(room + "/relations/{event_id}/{rel_type}", get_relations),
        web.get(room + "/relations/{event_id}/{rel_type}/{event_type}", get_relations),
        web.get(room + "/threads", get_threads),
        web.get(CLIENT + "/rooms/{room_id}/context/{event_id}", get_context),
    ]
