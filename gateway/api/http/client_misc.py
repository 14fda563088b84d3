"""Profiles, account data, receipts, read markers, typing, the room directory,
and the small endpoints clients call on start (push rules, devices, TURN;
presence is in client_presence.py).

Everything a long-polling /sync must deliver (typing, receipts, account
data) calls ``notifier.notify()`` once it is stored; profile changes reach
other members as fresh ``m.room.member`` events, which notify by themselves.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import (
    CLIENT,
    Requester,
    authenticate,
    get_str,
    json_body,
    ok,
    query_int,
    rate_limit,
    services,
)  # fmt: skip
from lowband.gateway.api.http.client_thirdparty import directory_room_ids, network_options
from lowband.gateway.appservices.queries import ask_bridges_for_user
from lowband.gateway.federation.component import federation_of
from lowband.gateway.homeserver.directory import MAX_PUBLIC_ROOMS, public_rooms_page
from lowband.gateway.homeserver.notifications import thread_of
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden, invalid_param, not_found
from lowband.gateway.matrix.events import server_name_of
from lowband.gateway.matrix.identifiers import is_room_id
from lowband.gateway.store.interfaces import DeviceInfo

log = logging.getLogger(__name__)

MAX_ID_BYTES = 255
MAX_PROFILE_CHARS = 256
DEFAULT_TYPING_MS = 30_000
PROFILE_FIELDS = ("displayname", "avatar_url")
# Receipt types this server stores; m.fully_read is the read marker, kept in
# room account data as the spec's read-markers module says.
RECEIPT_TYPES = ("m.read", "m.read.private", "m.fully_read")
# Account data the server maintains itself; clients get 405 M_BAD_JSON.
SERVER_ACCOUNT_DATA = ("m.fully_read", "m.push_rules")
_MXC = re.compile(r"mxc://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?/[A-Za-z0-9_-]+")
# Not copied into a profile update's member event: who vouched for a join
# that already happened means nothing later, and a federation peer would
# want the authorising server's signature on it.
_NOT_CARRIED = ("join_authorised_via_users_server",)


# ------------------------------------------------------------ parameters


def _user_param(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not user_id.startswith("@") or ":" not in user_id or len(user_id.encode()) > MAX_ID_BYTES:
        raise invalid_param("not a user ID")
    return user_id


def _room_param(request: web.Request) -> str:
    room_id = request.match_info["room_id"]
    if not is_room_id(room_id):  # v12 room IDs have no server name
        raise invalid_param("not a room ID")
    return room_id


def _own_user(request: web.Request, requester: Requester, what: str) -> str:
    user_id = _user_param(request)
    if user_id != requester.user_id:
        raise forbidden(f"you can only change your own {what}")
    return user_id


def _require_joined(svc: Services, room_id: str, user_id: str) -> None:
    if svc.store.membership(room_id, user_id) != "join":
        raise forbidden("you are not joined to this room")


def _local_user(svc: Services, user_id: str) -> Mapping[str, Any]:
    """The stored user row of a local user; 404 M_NOT_FOUND otherwise."""
    row = svc.store.get_user(user_id) if user_id.endswith(":" + svc.server_name) else None
    if row is None:
        raise not_found("no such user")
    return row


# --------------------------------------------------------------- profile


async def _profile(svc: Services, user_id: str) -> dict[str, str]:
    """The set profile fields of a user here, or (asked there, cached briefly) of another server's user.

    404 M_NOT_FOUND for no such user; 502 when the other server cannot be asked.
    """
    try:
        server = server_name_of(user_id)
    except ValueError:
        raise invalid_param("not a user ID") from None
    fed = federation_of(svc)
    if server == svc.server_name or fed is None:
        if server == svc.server_name and svc.store.get_user(user_id) is None:
            await ask_bridges_for_user(svc, user_id)  # appservices: a bridge may make it now (appservices/queries.py)
        row = _local_user(svc, user_id)
        return {k: row[k] for k in PROFILE_FIELDS if row.get(k)}
    return await fed.queries.profile(user_id)


async def get_profile(request: web.Request) -> web.Response:
    """GET /profile/{userId} (no auth): displayname and avatar_url, when set."""
    return ok(await _profile(services(request), _user_param(request)))


async def get_profile_field(request: web.Request) -> web.Response:
    """GET /profile/{userId}/{displayname|avatar_url}; 404 when unset."""
    field = request.match_info["field"]
    profile = await _profile(services(request), _user_param(request))
    if not profile.get(field):
        raise not_found(f"{field} is not set")
    return ok({field: profile[field]})


async def put_profile_field(request: web.Request) -> web.Response:
    """PUT /profile/{userId}/{displayname|avatar_url}, then refresh room memberships.

    The value is a string of at most 256 characters (an ``mxc://`` URI for
    avatar_url); empty or null clears the field. M_FORBIDDEN for another
    user, M_MISSING_PARAM / M_BAD_JSON / M_TOO_LARGE / M_INVALID_PARAM for
    a bad value.
    """
    requester = authenticate(request)
    rate_limit(request, requester)
    user_id = _own_user(request, requester, "profile")
    field = request.match_info["field"]
    body = await json_body(request)
    if field not in body:
        raise MatrixError(400, "M_MISSING_PARAM", f"missing '{field}'")
    value = body[field]
    if value is not None and not isinstance(value, str):
        raise bad_json(f"'{field}' must be a string")
    if value and len(value) > MAX_PROFILE_CHARS:
        raise MatrixError(400, "M_TOO_LARGE", f"'{field}' is longer than {MAX_PROFILE_CHARS} characters")
    if field == "avatar_url" and value and not _MXC.fullmatch(value):
        raise invalid_param("avatar_url must be an mxc:// URI")
    svc = services(request)
    await svc.store.set_profile_field(user_id, field, value or None)
    await _refresh_memberships(svc, user_id, field, value or None)
    return ok()


async def _refresh_memberships(svc: Services, user_id: str, field: str, value: str | None) -> None:
    """Send an updated join event into every room the user is joined to.

    A room that refuses (say, a power level change raced us) is logged and
    skipped: the profile itself is already stored.
    """
    for room_id, membership, _, _ in svc.store.rooms_for_user(user_id):
        if membership != "join":
            continue
        current = svc.rooms.state_content(svc.rooms.current_state(room_id), "m.room.member", user_id) or {}
        if current.get("membership") != "join":
            continue
        content = {k: v for k, v in current.items() if k not in _NOT_CARRIED}
        if value is None:
            content.pop(field, None)
        else:
            content[field] = value
        if content == current:
            continue
        try:
            await svc.rooms.send(user_id, room_id, "m.room.member", content, state_key=user_id)
        except MatrixError as exc:
            log.warning("profile update of %s not sent to %s: %s", user_id, room_id, exc.message)


# ---------------------------------------------------------- account data


def _data_type(request: web.Request) -> str:
    data_type = request.match_info["data_type"]
    if len(data_type.encode()) > MAX_ID_BYTES:
        raise invalid_param("account data type too long")
    return data_type


async def get_account_data(request: web.Request) -> web.Response:
    """GET /user/{userId}[/rooms/{roomId}]/account_data/{type}; 404 when unset."""
    requester = authenticate(request)
    user_id = _own_user(request, requester, "account data")
    room_id = _room_param(request) if "room_id" in request.match_info else ""
    content = services(request).store.get_account_data(user_id, room_id, _data_type(request))
    if content is None:
        raise not_found("no account data of this type")
    return ok(content)


async def put_account_data(request: web.Request) -> web.Response:
    """PUT /user/{userId}[/rooms/{roomId}]/account_data/{type}: any JSON object.

    405 M_BAD_JSON for the types the server keeps itself (m.fully_read is
    set through /read_markers).
    """
    requester = authenticate(request)
    rate_limit(request, requester)
    user_id = _own_user(request, requester, "account data")
    room_id = _room_param(request) if "room_id" in request.match_info else ""
    data_type = _data_type(request)
    if data_type in SERVER_ACCOUNT_DATA:
        raise MatrixError(405, "M_BAD_JSON", f"{data_type} cannot be set through this API")
    content = await json_body(request)
    svc = services(request)
    await svc.store.set_account_data(user_id, room_id, data_type, content)
    svc.notifier.notify()
    return ok()


# ------------------------------------------------ receipts, read markers


def _marker_target(svc: Services, user_id: str, room_id: str, event_id: str) -> int:
    """Stream position of an event the user may see in the room; 404 otherwise."""
    svc.sync.get_event(user_id, room_id, event_id)  # raises 404 when missing or invisible
    row = svc.store.get_event(event_id)
    assert row is not None
    return int(row["stream"])


def _stream_of(svc: Services, event_id: str | None) -> int:
    row = svc.store.get_event(event_id) if event_id else None
    return int(row["stream"]) if row else -1


async def _set_marker(svc: Services, user_id: str, room_id: str, marker: str, event_id: str, stream: int,
                      thread_id: str | None = None) -> bool:  # fmt: skip
    """Move one receipt (of a thread: ``thread_id``, None unthreaded) or the read marker forward; False when it
    is already there or ahead.

    Markers say "read up to", so one pointing at an older event than the
    stored one is ignored rather than moving the marker back. Each thread's
    receipt moves on its own (spec v1.4: one event per user, type and thread).
    """
    if marker == "m.fully_read":
        current = svc.store.get_account_data(user_id, room_id, "m.fully_read") or {}
        if _stream_of(svc, current.get("event_id")) >= stream:
            return False
        await svc.store.set_account_data(user_id, room_id, "m.fully_read", {"event_id": event_id})
        return True
    current_id = svc.store.get_receipt(room_id, marker, user_id, thread_id)
    if current_id is not None and _stream_of(svc, current_id) >= stream:
        return False
    ts = svc.rooms.now_ms()
    await svc.store.set_receipt(room_id, marker, user_id, event_id, ts, thread_id)
    if marker == "m.read":  # m.read.private stays on this server
        for listener in svc.receipt_listeners:
            listener(room_id, marker, user_id, event_id, ts, thread_id)
    return True


def _receipt_thread(body: dict[str, Any], receipt_type: str) -> str | None:
    """The ``thread_id`` of a receipt body (None: unthreaded); M_INVALID_PARAM when it is not a non-empty
    string or comes with ``m.fully_read`` (a marker of the whole room)."""
    if "thread_id" not in body:
        return None
    thread_id = body["thread_id"]
    if not isinstance(thread_id, str) or not thread_id:
        raise invalid_param("thread_id field must be a non-empty string")
    if receipt_type == "m.fully_read":
        raise invalid_param("m.fully_read cannot be threaded")
    return thread_id


async def post_receipt(request: web.Request) -> web.Response:
    """POST /rooms/{roomId}/receipt/{receiptType}/{eventId}.

    m.read, m.read.private or m.fully_read; the body may carry ``thread_id``
    ("main" or a thread root's event ID; absent: unthreaded), kept apart
    from the user's other threads' receipts. M_INVALID_PARAM for another
    type, a ``thread_id`` that is not a non-empty string, one on
    m.fully_read, or one the event is not in (``notifications.thread_of``);
    M_FORBIDDEN unless joined, M_NOT_FOUND for an event that is not in the
    room.
    """
    requester = authenticate(request)
    rate_limit(request, requester)
    room_id = _room_param(request)
    receipt_type = request.match_info["receipt_type"]
    if receipt_type not in RECEIPT_TYPES:
        raise invalid_param(f"receipt type must be one of {', '.join(RECEIPT_TYPES)}")
    body = await json_body(request, allow_empty=True)
    thread_id = _receipt_thread(body, receipt_type)
    svc = services(request)
    _require_joined(svc, room_id, requester.user_id)
    event_id = request.match_info["event_id"]
    stream = _marker_target(svc, requester.user_id, room_id, event_id)
    if thread_id is not None and thread_of(svc.store, event_id) != thread_id:
        raise invalid_param(f"{event_id} is not in thread {thread_id}")
    if await _set_marker(svc, requester.user_id, room_id, receipt_type, event_id, stream, thread_id):
        svc.notifier.notify()
    return ok()


async def post_read_markers(request: web.Request) -> web.Response:
    """POST /rooms/{roomId}/read_markers {m.fully_read, m.read, m.read.private}, all optional.

    Every given event is checked before anything is stored, so a bad one
    changes nothing.
    """
    requester = authenticate(request)
    rate_limit(request, requester)
    room_id = _room_param(request)
    body = await json_body(request, allow_empty=True)
    wanted = {marker: get_str(body, marker, required=False) for marker in RECEIPT_TYPES}
    svc = services(request)
    _require_joined(svc, room_id, requester.user_id)
    targets = [
        (marker, event_id, _marker_target(svc, requester.user_id, room_id, event_id))
        for marker, event_id in wanted.items() if event_id is not None
    ]  # fmt: skip
    changed = False
    for marker, event_id, stream in targets:
        changed |= await _set_marker(svc, requester.user_id, room_id, marker, event_id, stream)
    if changed:
        svc.notifier.notify()
    return ok()


# ---------------------------------------------------------------- typing


async def put_typing(request: web.Request) -> web.Response:
    """PUT /rooms/{roomId}/typing/{userId} {"typing": bool, "timeout": ms}."""
    requester = authenticate(request)
    rate_limit(request, requester)
    user_id = _own_user(request, requester, "typing state")
    room_id = _room_param(request)
    body = await json_body(request)
    typing = body.get("typing")
    if typing is None:
        raise MatrixError(400, "M_MISSING_PARAM", "missing 'typing'")
    if not isinstance(typing, bool):
        raise bad_json("'typing' must be a boolean")
    timeout = body.get("timeout", DEFAULT_TYPING_MS)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        raise bad_json("'timeout' must be a non-negative integer")
    svc = services(request)
    _require_joined(svc, room_id, user_id)
    svc.typing.set_typing(room_id, user_id, typing, timeout)
    svc.notifier.notify()
    return ok()


# -------------------------------------------------------- room directory


def _remote_server(request: web.Request, svc: Services) -> str | None:
    """The other server whose directory ``?server=`` names, or None for this one."""
    server = request.query.get("server")
    if server is None or server == svc.server_name:
        return None
    if federation_of(svc) is None:
        raise not_found("this gateway does not federate: it lists only its own public rooms")
    return server


async def get_public_rooms(request: web.Request) -> web.Response:
    """GET /publicRooms (no auth) with ``limit`` and ``since``; ``server`` asks another server's directory."""
    svc = services(request)
    limit = query_int(request, "limit", 0, high=MAX_PUBLIC_ROOMS)
    remote = _remote_server(request, svc)
    fed = federation_of(svc)
    if remote is not None and fed is not None:
        return ok(await fed.queries.public_rooms(remote, limit or None, request.query.get("since")))
    # the directory per bridge network: include_all_networks / third_party_instance_id (client_thirdparty)
    room_ids = directory_room_ids(svc, *network_options(request.query, from_query=True))
    return ok(public_rooms_page(svc.rooms, svc.store, limit, request.query.get("since"), None, None, room_ids))


async def post_public_rooms(request: web.Request) -> web.Response:
    """POST /publicRooms with ``limit``, ``since`` and ``filter.generic_search_term`` / ``room_types``.

    ``?server=`` asks another server's directory with the same search.
    """
    authenticate(request)
    svc = services(request)
    remote = _remote_server(request, svc)
    body = await json_body(request, allow_empty=True)
    limit = body.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise bad_json("'limit' must be a non-negative integer")
    since = get_str(body, "since", required=False)
    room_filter = body.get("filter")
    room_filter = {} if room_filter is None else room_filter
    if not isinstance(room_filter, dict):
        raise bad_json("'filter' must be an object")
    term = get_str(room_filter, "generic_search_term", required=False)
    room_types = room_filter.get("room_types")
    if room_types is not None and not (
        isinstance(room_types, list) and all(t is None or isinstance(t, str) for t in room_types)
    ):
        raise bad_json("'room_types' must be a list of strings or nulls")
    fed = federation_of(svc)
    if remote is not None and fed is not None:
        search: dict[str, Any] = {"filter": room_filter}
        search.update({k: body[k] for k in ("include_all_networks", "third_party_instance_id") if k in body})
        return ok(await fed.queries.public_rooms(remote, limit or None, since, search))
    # the directory per bridge network: include_all_networks / third_party_instance_id (client_thirdparty)
    room_ids = directory_room_ids(svc, *network_options(body, from_query=False))
    return ok(public_rooms_page(svc.rooms, svc.store, limit, since, term, room_types, room_ids))


async def get_room_visibility(request: web.Request) -> web.Response:
    """GET /directory/list/room/{roomId} (no auth); 404 for an unknown room."""
    room = services(request).store.get_room(_room_param(request))
    if room is None:
        raise not_found("unknown room")
    return ok({"visibility": "public" if room["is_public"] else "private"})


async def put_room_visibility(request: web.Request) -> web.Response:
    """PUT /directory/list/room/{roomId} {"visibility": "public"|"private"}.

    Only a joined member whose power level reaches the room's
    ``state_default`` may publish or unpublish a room.
    """
    requester = authenticate(request)
    rate_limit(request, requester)
    room_id = _room_param(request)
    svc = services(request)
    if svc.rooms.head(room_id) is None:
        raise not_found("unknown room")
    body = await json_body(request)
    visibility = get_str(body, "visibility", required=False) or "public"
    if visibility not in ("public", "private"):
        raise invalid_param("visibility must be 'public' or 'private'")
    _require_joined(svc, room_id, requester.user_id)
    levels = svc.rooms.state_event(room_id, "m.room.power_levels")
    needed = levels.content.get("state_default", 50) if levels else 0
    if not isinstance(needed, int) or svc.rooms.power_level(room_id, requester.user_id) < needed:
        raise forbidden("you may not change this room's directory visibility")
    await svc.store.set_room_public(room_id, visibility == "public")
    return ok()


# ----------------------------------------------------- start-up endpoints


def _device(info: DeviceInfo) -> dict[str, Any]:
    device: dict[str, Any] = {"device_id": info.device_id}
    if info.display_name is not None:
        device["display_name"] = info.display_name
    return device


async def get_devices(request: web.Request) -> web.Response:
    """GET /devices: the requester's devices."""
    requester = authenticate(request)
    devices = services(request).store.user_devices(requester.user_id)
    return ok({"devices": [_device(d) for d in devices]})


async def get_device(request: web.Request) -> web.Response:
    """GET /devices/{deviceId}; 404 for a device the requester does not have."""
    requester = authenticate(request)
    device = services(request).store.user_device(requester.user_id, request.match_info["device_id"])
    if device is None:
        raise not_found("no such device")
    return ok(_device(device))


async def get_turn_server(request: web.Request) -> web.Response:
    """GET /voip/turnServer: no TURN server here, so an empty object."""
    authenticate(request)
    return ok()


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    profile = CLIENT + "/profile/{user_id}"
    field = profile + "/{field:(?:displayname|avatar_url)}"
    user = CLIENT + "/user/{user_id}"
    room = CLIENT + "/rooms/{room_id}"
    return [
        web.get(profile, get_profile),
        web.get(field, get_profile_field),
        web.put(field, put_profile_field),
        web.get(user + "/account_data/{data_type}", get_account_data),
        web.put(user + "/account_data/{data_type}", put_account_data),
        web.get(user + "/rooms/{room_id}/account_data/{data_type}", get_account_data),
        web.put(user + "/rooms/{room_id}/account_data/{data_type}", put_account_data),
        web.post(room + "/receipt/{receipt_type}/{event_id}", post_receipt),
        web.post(room + "/read_markers", post_read_markers),
        web.put(room + "/typing/{user_id}", put_typing),
        web.get(CLIENT + "/publicRooms", get_public_rooms),
        web.post(CLIENT + "/publicRooms", post_public_rooms),
        web.get(CLIENT + "/directory/list/room/{room_id}", get_room_visibility),
        web.put(CLIENT + "/directory/list/room/{room_id}", put_room_visibility),
        web.get(CLIENT + "/devices", get_devices),
        web.get(CLIENT + "/devices/{device_id}", get_device),
        web.get(CLIENT + "/voip/turnServer", get_turn_server),
    ]
