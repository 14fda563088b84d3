"""Searching: ``POST /search`` (message bodies, room names and topics in the user's rooms) and
``POST /user_directory/search`` (behaviour and bounds: docs/client-api.md).

Both are reads that can cost a bounded scan, so each takes from the user's read bucket like a GET does.
"""

from __future__ import annotations

from aiohttp import web

from lowband.gateway.api.http.base import CLIENT, authenticate, json_body, ok, read_limit, services
from lowband.gateway.homeserver.search import SearchHandler
from lowband.gateway.homeserver.user_directory import UserDirectory


async def post_search(request: web.Request) -> web.Response:
    """POST /search[?next_batch=]: the ``room_events`` category."""
    requester = authenticate(request)
    read_limit(request)
    body = await json_body(request)
    handler = SearchHandler(services(request).sync)
    return ok(handler.search(requester.user_id, body, request.query.get("next_batch"), requester.device_id))


async def post_user_directory_search(request: web.Request) -> web.Response:
    """POST /user_directory/search."""
    requester = authenticate(request)
    read_limit(request)
    body = await json_body(request)
    svc = services(request)
    directory = UserDirectory(svc.store, search_all_users=svc.config.user_directory_search_all)
    return ok(directory.search(requester.user_id, body))


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    return [
        web.post(CLIENT + "/search", post_search),
        web.post(CLIENT + "/user_directory/search", post_user_directory_search),
    ]
