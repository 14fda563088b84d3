"""Third-party lookups answered by the bridges, and the room directory per bridge network.

* ``GET /thirdparty/protocols``, ``/thirdparty/protocol/{protocol}``,
  ``/thirdparty/location/{protocol}?fields``, ``/thirdparty/user/{protocol}?fields``,
  ``/thirdparty/location?alias=``, ``/thirdparty/user?userid=``: asked of the
  registered bridges (:mod:`lowband.gateway.appservices.thirdparty` checks
  and bounds their answers). Without a bridge for it: ``{}`` for the list of
  protocols, 404 M_NOT_FOUND for the rest, as for a lookup that found nothing.
* ``PUT|DELETE /directory/list/appservice/{networkId}/{roomId}``: a bridge
  (its ``as_token``) lists a room under one of its networks, or takes it off;
  ``/publicRooms`` shows those rooms for ``third_party_instance_id``
  ``{bridge id}|{networkId}``, and with the server's own for
  ``include_all_networks`` (:func:`directory_room_ids`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import CLIENT, authenticate, get_str, json_body, ok, rate_limit, services
from lowband.gateway.appservices.component import runtime_of
from lowband.gateway.appservices.registration import appservices_of
from lowband.gateway.appservices.thirdparty import NOT_FORWARDED, parse_instance_id
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden, invalid_param, not_found
from lowband.gateway.matrix.identifiers import is_room_alias, is_room_id, is_user_id

#: query parameters forwarded to a bridge with one lookup, and their sizes
MAX_LOOKUP_PARAMS = 20
MAX_PARAM_KEY = 100
MAX_PARAM_VALUE = 1000
#: rooms one bridge may list over all its networks
MAX_NETWORK_ROOMS = 10_000
MAX_NETWORK_ID = 255


def _nothing(what: str) -> MatrixError:
    return not_found(f"no {what} found")


def _forwarded(request: web.Request) -> list[tuple[str, str]]:
    """The lookup's fields from the query string (not the ones the gateway reads itself); 400 past the bounds."""
    params = [(k, v) for k, v in request.query.items() if k not in NOT_FORWARDED]
    if len(params) > MAX_LOOKUP_PARAMS:
        raise invalid_param(f"at most {MAX_LOOKUP_PARAMS} fields per lookup")
    for key, value in params:
        if len(key) > MAX_PARAM_KEY or len(value) > MAX_PARAM_VALUE:
            raise invalid_param(f"a field's name is at most {MAX_PARAM_KEY} characters, its value {MAX_PARAM_VALUE}")
    return params


async def get_protocols(request: web.Request) -> web.Response:
    """GET /thirdparty/protocols: each protocol some bridge declares and answered for (``{}`` without bridges)."""
    authenticate(request)
    runtime = runtime_of(services(request))
    if runtime is None:
        return ok({})
    return ok(await runtime.thirdparty.protocols(runtime.bridges, runtime.client))


async def get_protocol(request: web.Request) -> web.Response:
    """GET /thirdparty/protocol/{protocol}: its metadata; 404 when no bridge declares it or none answered."""
    authenticate(request)
    runtime = runtime_of(services(request))
    protocol = request.match_info["protocol"]
    found = None if runtime is None else await runtime.thirdparty.protocol(runtime.bridges, runtime.client, protocol)
    if found is None:
        raise not_found("unknown protocol")
    return ok(found)


async def _by_protocol(request: web.Request, kind: str) -> web.Response:
    authenticate(request)
    params = _forwarded(request)
    runtime = runtime_of(services(request))
    asked = None if runtime is None else runtime.thirdparty.lookup(
        runtime.bridges, runtime.client, kind, request.match_info["protocol"], params)  # fmt: skip
    found = [] if asked is None else await asked
    if not found:
        raise _nothing(f"third-party {kind}")
    return ok(found)


async def get_location_by_protocol(request: web.Request) -> web.Response:
    """GET /thirdparty/location/{protocol}?fields: portal rooms from the bridges of the protocol; 404 when none."""
    return await _by_protocol(request, "location")


async def get_user_by_protocol(request: web.Request) -> web.Response:
    """GET /thirdparty/user/{protocol}?fields: Matrix users for a third-party user; 404 when none."""
    return await _by_protocol(request, "user")


async def _reverse(request: web.Request, kind: str, key: str) -> web.Response:
    authenticate(request)
    value = request.query.get(key)
    if value is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"missing '{key}'")
    if not (is_room_alias(value) if kind == "location" else is_user_id(value)):
        raise invalid_param(f"'{key}' is not a {'room alias' if kind == 'location' else 'user ID'}")
    runtime = runtime_of(services(request))
    asked = None if runtime is None else runtime.thirdparty.reverse(runtime.bridges, runtime.client, kind, value)
    found = [] if asked is None else await asked
    if not found:
        raise _nothing(f"third-party {kind}")
    return ok(found)


async def get_location_by_alias(request: web.Request) -> web.Response:
    """GET /thirdparty/location?alias=: third-party locations of a room alias; 404 when none."""
    return await _reverse(request, "location", "alias")


async def get_user_by_id(request: web.Request) -> web.Response:
    """GET /thirdparty/user?userid=: third-party users of a Matrix user; 404 when none."""
    return await _reverse(request, "user", "userid")


# ------------------------------------------------- directory per network


def _network_params(request: web.Request) -> tuple[str, str]:
    network_id, room_id = request.match_info["network_id"], request.match_info["room_id"]
    if not network_id or len(network_id) > MAX_NETWORK_ID or any(ord(c) < 0x20 for c in network_id):
        raise invalid_param(f"networkId must be 1 to {MAX_NETWORK_ID} characters")
    if not is_room_id(room_id):
        raise invalid_param("not a room ID")
    return network_id, room_id


async def put_network_room(request: web.Request) -> web.Response:
    """PUT /directory/list/appservice/{networkId}/{roomId} {"visibility"}: a bridge lists a room under its network.

    403 M_FORBIDDEN unless an application service asks, and, to list a room, unless the user it acts as is
    joined to it or the room is in its room namespaces; 404 for an unknown room; 400 M_LIMIT_EXCEEDED past
    :data:`MAX_NETWORK_ROOMS` rooms of the bridge. ``private`` takes the room off, as DELETE does.
    """
    requester = authenticate(request)
    bridge = requester.appservice
    if bridge is None:
        raise forbidden("only an application service may list rooms under its networks")
    rate_limit(request, requester)
    network_id, room_id = _network_params(request)
    body = await json_body(request)
    visibility = get_str(body, "visibility")
    if visibility not in ("public", "private"):
        raise invalid_param("visibility must be 'public' or 'private'")
    svc = services(request)
    table = svc.store.directory_networks
    if visibility == "private":
        await table.unpublish(bridge.id, network_id, room_id)
        return ok()
    if svc.rooms.head(room_id) is None:
        raise not_found("unknown room")
    # Listing shows the room's name, topic and size to everyone: only a room the bridge is in, or owns.
    if svc.store.membership(room_id, requester.user_id) != "join" and not bridge.wants_room(room_id):
        raise forbidden(f"{requester.user_id} is not in this room")
    if not await table.publish(bridge.id, network_id, room_id, MAX_NETWORK_ROOMS):
        raise MatrixError(400, "M_LIMIT_EXCEEDED", f"an application service lists at most {MAX_NETWORK_ROOMS} rooms")
    return ok()


async def delete_network_room(request: web.Request) -> web.Response:
    """DELETE /directory/list/appservice/{networkId}/{roomId}: the bridge takes the room off its network (200 also
    when it was not listed); 403 unless an application service asks."""
    requester = authenticate(request)
    bridge = requester.appservice
    if bridge is None:
        raise forbidden("only an application service may list rooms under its networks")
    rate_limit(request, requester)
    network_id, room_id = _network_params(request)
    await services(request).store.directory_networks.unpublish(bridge.id, network_id, room_id)
    return ok()


def network_options(source: Any, *, from_query: bool) -> tuple[bool, str | None]:
    """(include_all_networks, third_party_instance_id) of a /publicRooms request (its query or its JSON body).

    400 M_INVALID_PARAM / M_BAD_JSON for a wrong type, or both given (the spec allows the instance only
    without all networks).
    """
    raw_all, instance = source.get("include_all_networks"), source.get("third_party_instance_id")
    if from_query:
        if raw_all not in (None, "true", "false"):
            raise invalid_param("include_all_networks must be true or false")
        include_all = raw_all == "true"
    else:
        if raw_all is not None and not isinstance(raw_all, bool):
            raise bad_json("'include_all_networks' must be a boolean")
        include_all = bool(raw_all)
        if instance is not None and not isinstance(instance, str):
            raise bad_json("'third_party_instance_id' must be a string")
    if include_all and instance is not None:
        raise invalid_param("third_party_instance_id cannot be used with include_all_networks")
    return include_all, instance


def directory_room_ids(svc: Services, include_all_networks: bool, instance_id: str | None) -> list[str] | None:
    """The rooms /publicRooms lists: None for the server's own directory (no network asked for); one
    (bridge, network)'s rooms for ``instance_id`` (none for an unknown one); with ``include_all_networks``
    the server's own and every registered bridge's."""
    if not include_all_networks and instance_id is None:
        return None
    bridges = appservices_of(svc)
    table = svc.store.directory_networks
    if include_all_networks:
        return sorted(set(svc.store.public_rooms()) | set(table.rooms([b.id for b in bridges.all])))
    assert instance_id is not None
    found = parse_instance_id(bridges, instance_id)
    return [] if found is None else table.rooms([found[0]], found[1])


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    third = CLIENT + "/thirdparty"
    network = CLIENT + "/directory/list/appservice/{network_id}/{room_id}"
    return [
        web.get(third + "/protocols", get_protocols),
        web.get(third + "/protocol/{protocol}", get_protocol),
        web.get(third + "/location/{protocol}", get_location_by_protocol),
        web.get(third + "/user/{protocol}", get_user_by_protocol),
        web.get(third + "/location", get_location_by_alias),
        web.get(third + "/user", get_user_by_id),
        web.put(network, put_network_room),
        web.delete(network, delete_network_room),
    ]
