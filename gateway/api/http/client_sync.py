"""/sync and filters."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import CLIENT, authenticate, json_body, ok, query_int, services
from lowband.gateway.api.http.client_presence import note_sync
from lowband.gateway.homeserver.filter_check import check_filter
from lowband.gateway.homeserver.sync import SyncToken
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden
from lowband.gateway.matrix.numbers import parse_digits
from lowband.gateway.store.interfaces import MAX_FILTERS_PER_USER, TooManyFilters

MAX_FILTER_BYTES = 16 * 1024


def _filter_for(request: web.Request, user_id: str) -> dict[str, Any]:
    raw = request.query.get("filter")
    if raw is None:
        return {}
    if raw.lstrip().startswith("{"):
        if len(raw) > MAX_FILTER_BYTES:
            raise MatrixError(400, "M_INVALID_PARAM", "filter too large")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # nesting past the recursion limit is not JSON we take either
            raise MatrixError(400, "M_NOT_JSON", "the inline filter is not valid JSON") from None
        if not isinstance(value, dict):
            raise bad_json("a filter must be a JSON object")
        return check_filter(value)
    filter_id = parse_digits(raw)
    if filter_id is None:
        raise MatrixError(400, "M_INVALID_PARAM", "unknown filter ID")
    stored = services(request).store.get_filter(user_id, filter_id)
    if stored is None:
        raise MatrixError(400, "M_INVALID_PARAM", f"no filter {raw}")
    return stored


async def sync(request: web.Request) -> web.Response:
    """GET /sync: initial, incremental and long-polling."""
    requester = authenticate(request)
    svc = services(request)
    since_raw = request.query.get("since")
    since = SyncToken.parse(since_raw) if since_raw else None
    timeout = query_int(request, "timeout", 0, high=300_000)
    full_state = request.query.get("full_state", "false") == "true"
    filter_doc = _filter_for(request, requester.user_id)
    note_sync(svc, requester.user_id, request.query.get("set_presence"))  # presence.py: online unless told
    return ok(await svc.sync.sync(requester.user_id, since, timeout, full_state, filter_doc, requester.device_id))


def _own_user(request: web.Request) -> str:
    requester = authenticate(request)
    if request.match_info["user_id"] != requester.user_id:
        raise forbidden("you can only manage your own filters")
    return requester.user_id


async def create_filter(request: web.Request) -> web.Response:
    """POST /user/{userId}/filter."""
    user_id = _own_user(request)
    body = check_filter(await json_body(request))
    text = json.dumps(body)
    if len(text) > MAX_FILTER_BYTES:
        raise MatrixError(413, "M_TOO_LARGE", "filter too large")
    try:
        filter_id = await services(request).store.add_filter(user_id, text)
    except TooManyFilters:
        raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_FILTERS_PER_USER} different filters per user; "
                          "use an inline filter or one stored before") from None  # fmt: skip
    return ok({"filter_id": str(filter_id)})


async def get_filter(request: web.Request) -> web.Response:
    """GET /user/{userId}/filter/{filterId}."""
    user_id = _own_user(request)
    raw = request.match_info["filter_id"]
    filter_id = parse_digits(raw)
    stored = services(request).store.get_filter(user_id, filter_id) if filter_id is not None else None
    if stored is None:
        raise MatrixError(404, "M_NOT_FOUND", "no such filter")
    return ok(stored)


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    return [
        web.get(CLIENT + "/sync", sync),
        web.post(CLIENT + "/user/{user_id}/filter", create_filter),
        web.get(CLIENT + "/user/{user_id}/filter/{filter_id}", get_filter),
    ]
