"""Server-server queries: room aliases, profiles, the public room directory, a user's devices and keys.

The end-to-end encryption answers (``/user/devices``, ``/user/keys/query``, ``/user/keys/claim``) are
shaped by :class:`~lowband.gateway.federation.e2ee.FederatedKeys`, which also decides what other servers
may see of a device (its signed keys, not its display name).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import ok, services
from lowband.gateway.api.http.federation_base import FEDERATION_V1, authenticate_server, federation
from lowband.gateway.homeserver.directory import public_rooms_page
from lowband.gateway.matrix.errors import MatrixError, bad_json, not_found
from lowband.gateway.matrix.events import server_name_of
from lowband.gateway.matrix.numbers import parse_digits


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


def _limit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_digits(value, 9)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise MatrixError(400, "M_INVALID_PARAM", "limit must be a non-negative integer")


async def public_rooms(request: web.Request) -> web.Response:
    """GET|POST /v1/publicRooms: a page of the rooms published in our directory, as our own clients see it.

    GET takes ``limit`` and ``since``; POST also ``filter`` (``generic_search_term``, ``room_types``).
    """
    _, body = await authenticate_server(request)
    term: str | None = None
    room_types: list[Any] | None = None
    if request.method == "POST":
        if not isinstance(body, dict):
            raise bad_json("the body must be an object")
        limit, since = _limit(body.get("limit")), body.get("since")
        flt = body.get("filter")
        if isinstance(flt, dict):
            term = flt.get("generic_search_term") if isinstance(flt.get("generic_search_term"), str) else None
            types = flt.get("room_types")
            room_types = types if isinstance(types, list) else None
    else:
        limit, since = _limit(request.query.get("limit")), request.query.get("since")
    if since is not None and not isinstance(since, str):
        raise MatrixError(400, "M_INVALID_PARAM", "since must be a string")
    svc = services(request)
    return ok(public_rooms_page(svc.rooms, svc.store, limit, since, term, room_types))


async def user_devices(request: web.Request) -> web.Response:
    """GET /v1/user/devices/{userId}: a local user's devices with keys, cross-signing keys and ``stream_id``."""
    await authenticate_server(request)
    fed = federation(request)
    user_id = request.match_info["user_id"]
    _local(request, user_id, "user ID")
    if services(request).store.get_user(user_id) is None:
        raise not_found("no such user")
    return ok(fed.e2ee.answer_user_devices(user_id))


async def user_keys_query(request: web.Request) -> web.Response:
    """POST /v1/user/keys/query: device and cross-signing keys of our users (others in the request are ignored)."""
    _, body = await authenticate_server(request)
    return ok(federation(request).e2ee.answer_query(body))


async def user_keys_claim(request: web.Request) -> web.Response:
    """POST /v1/user/keys/claim: a one-time (else fallback) key per asked device of our users, handed out once."""
    _, body = await authenticate_server(request)
    return ok(await federation(request).e2ee.answer_claim(body))


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    return [
        web.get(FEDERATION_V1 + "/query/directory", query_directory),
        web.get(FEDERATION_V1 + "/query/profile", query_profile),
        web.get(FEDERATION_V1 + "/publicRooms", public_rooms),
        web.post(FEDERATION_V1 + "/publicRooms", public_rooms),
        web.get(FEDERATION_V1 + "/user/devices/{user_id}", user_devices),
        web.post(FEDERATION_V1 + "/user/keys/query", user_keys_query),
        web.post(FEDERATION_V1 + "/user/keys/claim", user_keys_claim),
    ]
