"""Server-server queries: room aliases, profiles, the public room directory, a user's devices."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import ok, services
from lowband.gateway.api.http.federation_base import FEDERATION_V1, authenticate_server, federation
from lowband.gateway.matrix.errors import MatrixError, bad_json, not_found
from lowband.gateway.matrix.events import server_name_of

MAX_PUBLIC_ROOMS = 500


def _local(request: web.Request, identifier: str, what: str) -> None:
    try:
        server = server_name_of(identifier)
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", f"{identifier[:80]!r} is not a {what}") from None
    if server != services(request).server_name:
        raise not_found(f"{identifier[:100]} does not belong to this server")


async def query_directory(request: web.Request) -> web.Response:
    """GET /v1/query/directory?room_alias=: the room an alias of ours names, and servers in it."""
    await authenticate_server(request)
    fed = federation(request)
    alias = request.query.get("room_alias", "")
    if not alias.startswith("#"):
        raise MatrixError(400, "M_INVALID_PARAM", "room_alias must be an alias")
    _local(request, alias, "room alias")
    found = services(request).store.get_alias(alias)
    if found is None:
        raise not_found(f"no room has the alias {alias[:100]}")
    room_id = found[0]
    servers = [fed.server_name, *sorted(s for s in fed.dag.servers_in_room(room_id) if s != fed.server_name)]
    return ok({"room_id": room_id, "servers": servers[:20]})


async def query_profile(request: web.Request) -> web.Response:
    """GET /v1/query/profile?user_id=&field=: a local user's display name and avatar."""
    await authenticate_server(request)
    user_id = request.query.get("user_id", "")
    if not user_id.startswith("@"):
        raise MatrixError(400, "M_INVALID_PARAM", "user_id must be a user ID")
    _local(request, user_id, "user ID")
    row = services(request).store.get_user(user_id)
    if row is None or row["deactivated"]:
        raise not_found("no such user")
    profile = {k: row[k] for k in ("displayname", "avatar_url") if row[k]}
    field = request.query.get("field")
    if field is not None:
        if field not in ("displayname", "avatar_url"):
            raise MatrixError(400, "M_INVALID_PARAM", "field must be displayname or avatar_url")
        profile = {k: v for k, v in profile.items() if k == field}
    return ok(profile)


def _room_summary(request: web.Request, room_id: str) -> dict[str, Any]:
    rooms = services(request).rooms
    state = rooms.current_state(room_id)
    summary: dict[str, Any] = {"room_id": room_id, "num_joined_members": len(rooms.joined_members(room_id)),
                               "world_readable": False, "guest_can_join": False}  # fmt: skip
    for key, event_type, field in (("name", "m.room.name", "name"), ("topic", "m.room.topic", "topic"),
                                   ("canonical_alias", "m.room.canonical_alias", "alias"),
                                   ("avatar_url", "m.room.avatar", "url"),
                                   ("join_rule", "m.room.join_rules", "join_rule")):  # fmt: skip
        content = rooms.state_content(state, event_type) or {}
        if isinstance(content.get(field), str):
            summary[key] = content[field]
    visibility = (rooms.state_content(state, "m.room.history_visibility") or {}).get("history_visibility")
    summary["world_readable"] = visibility == "world_readable"
    guest = (rooms.state_content(state, "m.room.guest_access") or {}).get("guest_access")
    summary["guest_can_join"] = guest == "can_join"
    return summary


async def public_rooms(request: web.Request) -> web.Response:
    """GET|POST /v1/publicRooms: the rooms published in our directory (filter by a search term on POST)."""
    _, body = await authenticate_server(request)
    term = ""
    if request.method == "POST":
        if not isinstance(body, dict):
            raise bad_json("the body must be an object")
        flt = body.get("filter")
        term = str(flt.get("generic_search_term") or "").lower() if isinstance(flt, dict) else ""
    rooms = [_room_summary(request, r) for r in services(request).store.public_rooms()[:MAX_PUBLIC_ROOMS]]
    if term:
        rooms = [r for r in rooms if any(term in str(r.get(k, "")).lower() for k in ("name", "topic", "canonical_alias"))]
    return ok({"chunk": rooms, "total_room_count_estimate": len(rooms)})


async def user_devices(request: web.Request) -> web.Response:
    """GET /v1/user/devices/{userId}: a local user's devices (keys come with end-to-end encryption)."""
    await authenticate_server(request)
    user_id = request.match_info["user_id"]
    _local(request, user_id, "user ID")
    store = services(request).store
    if store.get_user(user_id) is None:
        raise not_found("no such user")
    devices = [{"device_id": d.device_id, **({"device_display_name": d.display_name} if d.display_name else {}),
                "keys": {}} for d in store.user_devices(user_id)]  # fmt: skip
    return ok({"user_id": user_id, "stream_id": 0, "devices": devices})


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    return [
        web.get(FEDERATION_V1 + "/query/directory", query_directory),
        web.get(FEDERATION_V1 + "/query/profile", query_profile),
        web.get(FEDERATION_V1 + "/publicRooms", public_rooms),
        web.post(FEDERATION_V1 + "/publicRooms", public_rooms),
        web.get(FEDERATION_V1 + "/user/devices/{user_id}", user_devices),
    ]
