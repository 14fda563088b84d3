"""Server-server endpoints about rooms: transactions, membership handshakes, events, state, history.

Every endpoint here needs a valid ``X-Matrix`` signature (401 otherwise);
the room endpoints also check the room's server ACL (403; ``/invite``
too, for a room this server holds) and that the asking server takes part
in the room (403), except the handshakes a server uses to join. Answers are bounded: ``limit`` parameters are capped,
state and auth chains are what the room holds.

Erasure (``erase: true`` on deactivation): ``/event``, ``/backfill`` and ``/get_missing_events`` give a message
(non-state) event of an erased user in redacted form to a server none of whose users was joined when it was sent,
the rule the client API applies to later joiners. The redacted PDU keeps its event ID and sender signature (both
cover the redacted form); its content hash no longer matches, which tells the receiver to keep it redacted. State
and auth events (``/state``, ``/state_ids``, ``/event_auth``, ``send_join``) stay whole: other servers auth against
them.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import ok, services
from lowband.gateway.api.http.federation_base import FEDERATION_V1, FEDERATION_V2, authenticate_server, federation
from lowband.gateway.federation.component import Federation
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden, not_found
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.redaction import redact
from lowband.gateway.matrix.server_acl import server_allowed

MAX_BACKFILL = 100
MAX_MISSING = 100


def _room_check(fed: Federation, origin: str, room_id: str, *, member: bool = True) -> None:
    """404 for a room we do not hold; 403 when the ACL denies ``origin`` or (``member``) it is not in the room."""
    if fed.dag.room_version(room_id) is None:
        raise not_found(f"this server is not in room {room_id}")
    acl = fed.dag.state_content(room_id, "m.room.server_acl")
    if not server_allowed(acl, origin):
        raise forbidden(f"{origin} is denied by the room's server ACL")
    if member and origin not in fed.dag.servers_in_room(room_id):
        raise forbidden(f"{origin} is not in room {room_id}")


async def _authenticated(request: web.Request) -> tuple[Federation, str, Any]:
    origin, body = await authenticate_server(request)
    fed = federation(request)
    fed.sender.peer_is_back(origin)  # any request shows the peer is up: retry what waits for it now
    return fed, origin, body


# ----------------------------------------------------------------- transactions


async def send_transaction(request: web.Request) -> web.Response:
    """PUT /v1/send/{txnId}: PDUs into the rooms, EDUs to their handlers; a retried ID gets the first answer."""
    fed, origin, body = await _authenticated(request)
    txn_id = request.match_info["txn_id"]
    done = fed.store.received_txn(origin, txn_id)
    if done is not None:
        return ok(done)
    if isinstance(body, dict) and body.get("origin") not in (None, origin):
        raise bad_json("the transaction's origin is not the signing server")
    answer = await fed.pipeline.receive_transaction(origin, body)
    await fed.store.remember_txn(origin, txn_id, answer, int(time.time() * 1000))
    return ok(answer)


# ----------------------------------------------------------------- membership


def _versions(request: web.Request) -> list[str]:
    return [v for v in request.query.getall("ver", [])][:50]


async def make_join(request: web.Request) -> web.Response:
    """GET /v1/make_join/{roomId}/{userId}?ver=…: a join template the asking server fills in."""
    fed, origin, _ = await _authenticated(request)
    room_id, user_id = request.match_info["room_id"], request.match_info["user_id"]
    _room_check(fed, origin, room_id, member=False)
    return ok(fed.memberships.make_template(origin, room_id, user_id, "join", _versions(request) or ["1"]))


async def make_leave(request: web.Request) -> web.Response:
    """GET /v1/make_leave/{roomId}/{userId}."""
    fed, origin, _ = await _authenticated(request)
    room_id, user_id = request.match_info["room_id"], request.match_info["user_id"]
    _room_check(fed, origin, room_id, member=False)
    return ok(fed.memberships.make_template(origin, room_id, user_id, "leave", None))


async def send_join(request: web.Request) -> web.Response:
    """PUT /v1|v2/send_join/{roomId}/{eventId}: check and store the join, answer with state and auth chain."""
    fed, origin, body = await _authenticated(request)
    room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
    _room_check(fed, origin, room_id, member=False)
    answer = await fed.memberships.accept(origin, room_id, event_id, body, "join")
    if request.match_info["version"] == "v1":
        return ok([200, answer])  # the v1 shape, for old servers
    return ok(answer)


async def send_leave(request: web.Request) -> web.Response:
    """PUT /v1|v2/send_leave/{roomId}/{eventId}."""
    fed, origin, body = await _authenticated(request)
    room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
    _room_check(fed, origin, room_id, member=False)
    await fed.memberships.accept(origin, room_id, event_id, body, "leave")
    return ok([200, {}] if request.match_info["version"] == "v1" else {})


async def make_knock(request: web.Request) -> web.Response:
    """GET /v1/make_knock/{roomId}/{userId}?ver=…: a knock template (rooms of version 7 and later)."""
    fed, origin, _ = await _authenticated(request)
    room_id, user_id = request.match_info["room_id"], request.match_info["user_id"]
    _room_check(fed, origin, room_id, member=False)
    versions = _versions(request)
    if not versions:
        raise MatrixError(400, "M_MISSING_PARAM", "ver: the room versions the asking server supports")
    return ok(fed.memberships.make_template(origin, room_id, user_id, "knock", versions))


async def send_knock(request: web.Request) -> web.Response:
    """PUT /v1/send_knock/{roomId}/{eventId}: check and store the knock, answer with the room's stripped state."""
    fed, origin, body = await _authenticated(request)
    room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
    _room_check(fed, origin, room_id, member=False)
    return ok(await fed.memberships.accept(origin, room_id, event_id, body, "knock"))


async def invite(request: web.Request) -> web.Response:
    """PUT /v2/invite/{roomId}/{eventId}: co-sign an invite of one of our users and show it to them."""
    fed, origin, body = await _authenticated(request)
    room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
    if not isinstance(body, dict):
        raise bad_json("the invite body must be an object")
    if fed.dag.room_version(room_id) is not None:  # a room we hold: its ACL applies (one we do not hold has none here)
        _room_check(fed, origin, room_id, member=False)
    signed = await fed.invites.receive(origin, room_id, event_id, body)
    return ok({"event": signed})


# ----------------------------------------------------------------- events and state


async def get_event(request: web.Request) -> web.Response:
    """GET /v1/event/{eventId}: one event, if the asking server may see it."""
    fed, origin, _ = await _authenticated(request)
    known = fed.dag.known(request.match_info["event_id"])
    if known is None or known.rejected is not None or services(request).sync.expired(known.event):
        raise not_found("no such event")  # an event past its room's retention is not shared (MSC1763)
    _room_check(fed, origin, known.event.room_id, member=False)
    if not fed.dag.server_may_see(origin, known.event):
        raise forbidden("the asking server may not see this event")
    pdu = _served(fed, services(request).sync.erased, origin, known.event)
    return ok({"origin": fed.server_name, "origin_server_ts": int(time.time() * 1000), "pdus": [pdu]})


def _served(fed: Federation, erased: set[str], origin: str, event: Event) -> dict[str, Any]:
    """The PDU of ``event`` as ``origin`` gets it: redacted when the sender was erased, it is not a state event and
    no user of ``origin`` was joined at it (see the module rules). One set lookup unless the sender was erased."""
    if event.sender not in erased or event.state_key is not None:
        return event.pdu
    state = fed.dag.state_after(event.event_id) or {}
    suffix = ":" + origin
    if any(fed.dag.lookups.membership_in(state, user) == "join" for (kind, user) in state
           if kind == "m.room.member" and user.endswith(suffix)):  # fmt: skip
        return event.pdu
    version = fed.dag.room_version(event.room_id)
    return redact(event.pdu, version) if version is not None else event.pdu


def _state_at(fed: Federation, room_id: str, event_id: str | None) -> dict[tuple[str, str], str]:
    if event_id is None:
        raise MatrixError(400, "M_MISSING_PARAM", "event_id is required")
    known = fed.dag.known(event_id)
    if known is None or known.event.room_id != room_id:
        raise not_found("no such event in this room")
    state = fed.dag.state_before(event_id)
    if state is None:
        raise not_found("the state at that event is not known here")
    return state


async def state_ids(request: web.Request) -> web.Response:
    """GET /v1/state_ids/{roomId}?event_id=: the state before an event, and its auth chain, as IDs."""
    fed, origin, _ = await _authenticated(request)
    room_id = request.match_info["room_id"]
    _room_check(fed, origin, room_id)
    state = _state_at(fed, room_id, request.query.get("event_id"))
    chain = fed.dag.auth_chain(list(state.values()))
    return ok({"pdu_ids": list(state.values()), "auth_chain_ids": [e.event_id for e in chain]})


async def state(request: web.Request) -> web.Response:
    """GET /v1/state/{roomId}?event_id=: the same, with whole events."""
    fed, origin, _ = await _authenticated(request)
    room_id = request.match_info["room_id"]
    _room_check(fed, origin, room_id)
    found = _state_at(fed, room_id, request.query.get("event_id"))
    pdus = [k.event.pdu for k in (fed.dag.known(e) for e in found.values()) if k is not None]
    chain = fed.dag.auth_chain(list(found.values()))
    return ok({"pdus": pdus, "auth_chain": [e.pdu for e in chain]})


async def event_auth(request: web.Request) -> web.Response:
    """GET /v1/event_auth/{roomId}/{eventId}: the auth chain of an event."""
    fed, origin, _ = await _authenticated(request)
    room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
    _room_check(fed, origin, room_id)
    known = fed.dag.known(event_id)
    if known is None or known.event.room_id != room_id:
        raise not_found("no such event in this room")
    return ok({"auth_chain": [e.pdu for e in fed.dag.auth_chain([event_id])]})


async def backfill(request: web.Request) -> web.Response:
    """GET /v1/backfill/{roomId}?v=…&limit=: events before the given ones, newest first, walking prev_events."""
    fed, origin, _ = await _authenticated(request)
    room_id = request.match_info["room_id"]
    _room_check(fed, origin, room_id)
    starts = request.query.getall("v", [])[:20]
    try:
        limit = max(1, min(MAX_BACKFILL, int(request.query.get("limit", "10"))))
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", "limit must be an integer") from None
    events = fed.dag.walk_back(room_id, starts, limit, exclude=set())
    sync = services(request).sync
    expired = sync.expired  # events past the room's retention are not shared (MSC1763)
    visible = [_served(fed, sync.erased, origin, e) for e in events
               if fed.dag.server_may_see(origin, e) and not expired(e)]  # fmt: skip
    return ok({"origin": fed.server_name, "origin_server_ts": int(time.time() * 1000), "pdus": visible})


async def get_missing_events(request: web.Request) -> web.Response:
    """POST /v1/get_missing_events/{roomId}: prev events between ``earliest`` and ``latest``, oldest first."""
    fed, origin, body = await _authenticated(request)
    room_id = request.match_info["room_id"]
    _room_check(fed, origin, room_id)
    if not isinstance(body, dict):
        raise bad_json("the body must be an object")
    latest, earliest = body.get("latest_events"), body.get("earliest_events", [])
    if not isinstance(latest, list) or not isinstance(earliest, list):
        raise bad_json("latest_events and earliest_events must be lists")
    limit = body.get("limit", 10)
    limit = max(1, min(MAX_MISSING, limit if isinstance(limit, int) else 10))
    starts = [e for e in latest[:20] if isinstance(e, str)]
    exclude = {e for e in earliest[:100] if isinstance(e, str)}
    events = fed.dag.walk_back(room_id, starts, limit, exclude=exclude)
    sync = services(request).sync
    expired = sync.expired  # events past the room's retention are not shared (MSC1763)
    visible = [e for e in events if fed.dag.server_may_see(origin, e) and not expired(e)]
    return ok({"events": [_served(fed, sync.erased, origin, e) for e in sorted(visible, key=lambda e: e.depth)]})


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    v1, any_version = FEDERATION_V1, "/_matrix/federation/{version:v1|v2}"
    return [
        web.put(v1 + "/send/{txn_id}", send_transaction),
        web.get(v1 + "/make_join/{room_id}/{user_id}", make_join),
        web.get(v1 + "/make_leave/{room_id}/{user_id}", make_leave),
        web.put(any_version + "/send_join/{room_id}/{event_id}", send_join),
        web.put(any_version + "/send_leave/{room_id}/{event_id}", send_leave),
        web.get(v1 + "/make_knock/{room_id}/{user_id}", make_knock),
        web.put(v1 + "/send_knock/{room_id}/{event_id}", send_knock),
        web.put(FEDERATION_V2 + "/invite/{room_id}/{event_id}", invite),
        web.get(v1 + "/event/{event_id}", get_event),
        web.get(v1 + "/state_ids/{room_id}", state_ids),
        web.get(v1 + "/state/{room_id}", state),
        web.get(v1 + "/event_auth/{room_id}/{event_id}", event_auth),
        web.get(v1 + "/backfill/{room_id}", backfill),
        web.post(v1 + "/get_missing_events/{room_id}", get_missing_events),
    ]


__all__ = ["routes", "services"]
