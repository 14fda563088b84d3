"""Room tags: ``GET /user/{userId}/rooms/{roomId}/tags``, ``PUT|DELETE .../tags/{tag}``.

Tags are the ``m.tag`` room account data (``{"tags": {tag: {"order": 0.5}}}``), so
``/sync`` delivers them in ``rooms.join.{roomId}.account_data`` with the rest.
A tag name is at most :data:`MAX_TAG_BYTES` bytes of UTF-8, a room carries at
most :data:`MAX_TAGS` tags, a tag's object at most :data:`MAX_TAG_JSON` bytes;
``order``, when given, is a number from 0 to 1. Tags are kept only for rooms
the user is or was in (or is invited to). Writes of one user are serialised, so
two clients tagging at once both keep their tag.
"""

from __future__ import annotations

import asyncio
import json
import math
import weakref
from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import CLIENT, authenticate, json_body, ok, rate_limit, services
from lowband.gateway.matrix.errors import MatrixError, forbidden, invalid_param
from lowband.gateway.matrix.identifiers import is_room_id

MAX_TAG_BYTES = 255
MAX_TAGS = 100
MAX_TAG_JSON = 1024

_LOCKS: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _target(request: web.Request) -> tuple[str, str]:
    """(user ID, room ID) of the path, the user being the requester's own; 403 / 400 otherwise."""
    requester = authenticate(request)
    user_id = request.match_info["user_id"]
    if user_id != requester.user_id:
        raise forbidden("you can only read and change your own tags")
    room_id = request.match_info["room_id"]
    if not is_room_id(room_id):
        raise invalid_param("not a room ID")
    return user_id, room_id


def _tag(request: web.Request) -> str:
    tag = request.match_info["tag"]
    if not tag or len(tag.encode()) > MAX_TAG_BYTES:
        raise invalid_param(f"a tag is 1 to {MAX_TAG_BYTES} bytes")
    return tag


def _tags_of(request: web.Request, user_id: str, room_id: str) -> dict[str, Any]:
    content = services(request).store.get_account_data(user_id, room_id, "m.tag") or {}
    tags = content.get("tags")
    return dict(tags) if isinstance(tags, dict) else {}


async def get_tags(request: web.Request) -> web.Response:
    """GET /user/{userId}/rooms/{roomId}/tags: ``{"tags": {...}}`` (empty when none)."""
    user_id, room_id = _target(request)
    return ok({"tags": _tags_of(request, user_id, room_id)})


async def put_tag(request: web.Request) -> web.Response:
    """PUT /user/{userId}/rooms/{roomId}/tags/{tag}: add or replace a tag. 400 M_INVALID_PARAM for an order
    outside [0, 1], a name too long, too many tags; M_TOO_LARGE for a tag object over the bound; 403 for a
    room the user was never in."""
    user_id, room_id = _target(request)
    tag = _tag(request)
    body = await json_body(request, allow_empty=True)
    order = body.get("order")
    if order is not None and (not isinstance(order, int | float) or isinstance(order, bool)
                              or not math.isfinite(order) or not 0 <= order <= 1):  # fmt: skip
        raise invalid_param("'order' must be a number from 0 to 1")
    if len(json.dumps(body).encode()) > MAX_TAG_JSON:
        raise MatrixError(400, "M_TOO_LARGE", f"a tag's object is at most {MAX_TAG_JSON} bytes")
    svc = services(request)
    rate_limit(request, authenticate(request))
    if not any(r[0] == room_id for r in svc.store.rooms_for_user(user_id)):
        raise forbidden("you are not a member of this room")
    await _change(request, user_id, room_id, tag, body)
    return ok()


async def delete_tag(request: web.Request) -> web.Response:
    """DELETE /user/{userId}/rooms/{roomId}/tags/{tag}: remove a tag (no error when it was not set)."""
    user_id, room_id = _target(request)
    tag = _tag(request)
    rate_limit(request, authenticate(request))
    await _change(request, user_id, room_id, tag, None)
    return ok()


async def _change(request: web.Request, user_id: str, room_id: str, tag: str, value: dict[str, Any] | None) -> None:
    lock = _LOCKS.get(user_id)
    if lock is None:
        lock = _LOCKS[user_id] = asyncio.Lock()
    async with lock:
        tags = _tags_of(request, user_id, room_id)
        if value is None:
            if tag not in tags:
                return
            del tags[tag]
        else:
            if tag not in tags and len(tags) >= MAX_TAGS:
                raise invalid_param(f"a room carries at most {MAX_TAGS} tags")
            tags[tag] = value
        svc = services(request)
        await svc.store.set_account_data(user_id, room_id, "m.tag", {"tags": tags})
        svc.notifier.notify()


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    tags = CLIENT + "/user/{user_id}/rooms/{room_id}/tags"
    return [
        web.get(tags, get_tags),
        web.put(tags + "/{tag}", put_tag),
        web.delete(tags + "/{tag}", delete_tag),
    ]

