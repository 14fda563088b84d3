"""Presence (``/presence/{userId}/status``), the ``set_presence`` of /sync, and guest registration.

Rules in :mod:`lowband.gateway.homeserver.presence` and :mod:`lowband.gateway.homeserver.guests`.
"""

from __future__ import annotations

import time

from aiohttp import web

from lowband.gateway.api.http.base import (
    CLIENT,
    READER_WORKER,
    authenticate,
    get_str,
    json_body,
    ok,
    rate_limit,
    services,
)
from lowband.gateway.homeserver.accounts import new_device_id, new_token
from lowband.gateway.homeserver.presence import MAX_STATUS_MSG, STATES
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden, invalid_param, not_found

MAX_ID_BYTES = 255


def _target(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not user_id.startswith("@") or ":" not in user_id or len(user_id.encode()) > MAX_ID_BYTES:
        raise invalid_param("not a user ID")
    return user_id


async def get_presence(request: web.Request) -> web.Response:
    """GET /presence/{userId}/status: one's own, or that of a user (of any server) sharing a room; 403 otherwise,
    404 for a local user who does not exist."""
    requester = authenticate(request)
    svc = services(request)
    user_id = _target(request)
    if user_id != requester.user_id and user_id not in svc.store.users_sharing_rooms(requester.user_id):
        if user_id.endswith(":" + svc.server_name) and svc.store.get_user(user_id) is None:
            raise not_found("no such user")
        raise forbidden("you share no room with this user")
    tracker = svc.sync.presence
    return ok(tracker.content(user_id) if tracker is not None else {"presence": "offline"})


async def put_presence(request: web.Request) -> web.Response:
    """PUT /presence/{userId}/status: one's own presence and ``status_msg`` (dropped when presence is off)."""
    requester = authenticate(request)
    rate_limit(request, requester)
    if _target(request) != requester.user_id:
        raise forbidden("you can only set your own presence")
    body = await json_body(request)
    presence = get_str(body, "presence")
    if presence not in STATES:
        raise invalid_param("presence must be online, unavailable or offline")
    status_msg = get_str(body, "status_msg", required=False)
    if status_msg is not None and len(status_msg) > MAX_STATUS_MSG:
        raise MatrixError(400, "M_TOO_LARGE", f"status_msg is longer than {MAX_STATUS_MSG} characters")
    tracker = services(request).sync.presence
    if tracker is not None:
        tracker.set_status(requester.user_id, presence, status_msg)
    return ok()


def note_sync(svc: Services, user_id: str, set_presence: str | None) -> None:
    """A /sync's ``set_presence`` (absent: online); M_INVALID_PARAM for another value."""
    value = "online" if set_presence is None else set_presence
    if value not in STATES:
        raise invalid_param("set_presence must be online, unavailable or offline")
    worker = svc.components.get(READER_WORKER)
    if worker is not None:  # a reader worker: the main process tracks presence (api/http/workers.py)
        worker.note_sync(user_id, value)
    elif svc.sync.presence is not None:
        svc.sync.presence.synced(user_id, value)


async def register_guest(request: web.Request) -> web.Response:
    """POST /register?kind=guest: a guest account and its token (403 M_GUEST_ACCESS_FORBIDDEN when the config
    does not allow guests)."""
    svc = services(request)
    if not svc.config.guests_enabled:
        raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "guest accounts are not available on this gateway")
    body = await json_body(request, allow_empty=True)
    display_name = get_str(body, "initial_device_display_name", required=False)
    if display_name is not None and len(display_name) > 256:
        raise bad_json("initial_device_display_name is longer than 256 characters")
    user_id = await svc.guests.create(svc.server_name, int(time.time() * 1000))
    device_id, token = await issue_guest_token(svc, user_id, display_name)
    return ok({"user_id": user_id, "access_token": token, "device_id": device_id, "home_server": svc.server_name})


async def issue_guest_token(svc: Services, user_id: str, display_name: str | None) -> tuple[str, str]:
    """A new device and access token for a guest."""
    device_id, token = new_device_id(), new_token()
    await svc.store.add_token(token, user_id, device_id, display_name, int(time.time() * 1000))
    return device_id, token


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    return [
        web.get(CLIENT + "/presence/{user_id}/status", get_presence),
        web.put(CLIENT + "/presence/{user_id}/status", put_presence),
    ]
