"""Rooms: create, upgrade, membership, send, state, events, history, aliases."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import (
    CLIENT,
    READER_WORKER,
    ForwardToMain,
    Requester,
    authenticate,
    get_str,
    json_body,
    ok,
    query_int,
    rate_limit,
    services,
)
from lowband.gateway.appservices.queries import ask_bridges_for_alias
from lowband.gateway.appservices.registration import appservices_of
from lowband.gateway.federation.component import federation_of
from lowband.gateway.homeserver.filter_check import check_room_event_filter
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden, not_found
from lowband.gateway.matrix.events import server_name_of
from lowband.gateway.matrix.identifiers import is_room_alias, is_room_id, is_user_id
from lowband.gateway.store.interfaces import EventWrite
from lowband.gateway.store.txn_keys import transaction_key

MAX_ID_BYTES = 255
log = logging.getLogger(__name__)


def _room_id(request: web.Request) -> str:
    room_id = request.match_info["room_id"]
    if not is_room_id(room_id):  # v12 room IDs have no server name
        raise MatrixError(400, "M_INVALID_PARAM", "not a room ID")
    return room_id


def _user_param(body: dict[str, Any]) -> str:
    user_id = get_str(body, "user_id")
    assert user_id is not None
    if not user_id.startswith("@") or ":" not in user_id or len(user_id.encode()) > MAX_ID_BYTES:
        raise MatrixError(400, "M_INVALID_PARAM", "not a user ID")
    return user_id


def _require_joined(request: web.Request, requester: Requester, room_id: str) -> None:
    if services(request).store.membership(room_id, requester.user_id) != "join":
        raise forbidden("you are not joined to this room")


async def create_room(request: web.Request) -> web.Response:
    """POST /createRoom."""
    requester = authenticate(request)
    rate_limit(request, requester)
    body = await json_body(request, allow_empty=True)
    alias_name = body.get("room_alias_name")
    if isinstance(alias_name, str):
        _may_take_alias(request, requester, f"#{alias_name}:{services(request).server_name}")
    room_id = await services(request).rooms.create_room(requester.user_id, body)
    return ok({"room_id": room_id})


def _may_take_alias(request: web.Request, requester: Requester, alias: str) -> None:
    """400 M_EXCLUSIVE when ``alias`` is in a bridge's exclusive namespace and the requester is not that bridge."""
    owner = appservices_of(services(request)).exclusive_owner_of_alias(alias)
    if owner is not None and requester.appservice is not owner:
        raise MatrixError(400, "M_EXCLUSIVE", f"{alias[:100]} is in a namespace reserved for the application "
                          f"service {owner.id!r}")  # fmt: skip


async def _resolve_room(request: web.Request, target: str) -> tuple[str, list[str]]:
    """(room ID, servers that may know it) for a room ID or alias; aliases of other servers are asked there."""
    svc = services(request)
    servers = [s for s in request.query.getall("server_name", []) + request.query.getall("via", []) if s][:10]
    if target.startswith("#"):
        try:
            alias_server = server_name_of(target)
        except ValueError:
            raise MatrixError(400, "M_INVALID_PARAM", "an alias needs a server name") from None
        found = svc.store.get_alias(target)
        if found is None and alias_server == svc.server_name and await ask_bridges_for_alias(svc, target):
            found = svc.store.get_alias(target)  # appservices: the bridge made it just now (appservices/queries.py)
        if found is not None:
            return found[0], servers
        fed = federation_of(svc)
        if alias_server == svc.server_name or fed is None:
            raise not_found(f"no room has the alias {target}")
        room_id, hints = await fed.queries.directory(target)
        return room_id, [*servers, *hints]
    if target.startswith("!"):
        try:
            servers.append(server_name_of(target))  # rooms before v12 name the server that made them
        except ValueError:
            pass
        return target, servers
    raise MatrixError(400, "M_INVALID_PARAM", "expected a room ID or alias")


async def join(request: web.Request) -> web.Response:
    """POST /join/{roomIdOrAlias} and /rooms/{roomId}/join: here, or through another server."""
    requester = authenticate(request)
    rate_limit(request, requester)
    target = request.match_info.get("room_id") or request.match_info["room_or_alias"]
    room_id, servers = await _resolve_room(request, target)
    body = await json_body(request, allow_empty=True)
    custom = _member_content(body)
    svc = services(request)
    held = svc.rooms.head(room_id) is not None
    if held and svc.server_name in svc.rooms.dag.servers_in_room(room_id):
        if svc.store.membership(room_id, requester.user_id) != "join" or _changes_member(
                svc, room_id, requester.user_id, {k: v for k, v in custom.items() if k != "reason"}):  # fmt: skip
            await svc.rooms.set_membership(requester.user_id, room_id, requester.user_id, "join", extra=custom)
        return ok({"room_id": room_id})
    fed = federation_of(svc)
    if fed is None:
        raise not_found("this gateway does not know that room")
    invite = svc.store.federation.invite(room_id, requester.user_id)
    if invite is not None:
        found = svc.store.get_event(invite[0])
        if found is not None:
            servers.insert(0, server_name_of(found["event"].sender))
    if held:
        servers += sorted(svc.rooms.dag.servers_in_room(room_id))
    content: dict[str, Any] = {**svc.rooms.lookups.profile(requester.user_id), **custom}
    await fed.memberships.join_remote(requester.user_id, room_id, servers, content)
    svc.notifier.notify()
    return ok({"room_id": room_id})


#: Keys of a membership event's content that only the server sets: a client's own copy is dropped (a restricted
#: room's voucher would let a client claim a join nobody authorised; a third-party invite is signed elsewhere).
_SERVER_MEMBER_KEYS = ("membership", "join_authorised_via_users_server", "third_party_signed", "third_party_invite")


def _member_content(body: dict[str, Any]) -> dict[str, Any]:
    """The content a client asks a membership event to carry (reason, displayname, avatar_url, anything else),
    less what only the server sets; M_BAD_JSON for a reason, displayname or avatar_url that is not a string."""
    for key in ("reason", "displayname", "avatar_url"):
        if key in body and not isinstance(body[key], str):
            raise bad_json(f"'{key}' must be a string")
    return {k: v for k, v in body.items() if k not in _SERVER_MEMBER_KEYS}


def _changes_member(svc: Any, room_id: str, user_id: str, content: dict[str, Any]) -> bool:
    """Whether ``content`` would change anything in ``user_id``'s current membership content."""
    current = svc.rooms.state_content(svc.rooms.current_state(room_id), "m.room.member", user_id) or {}
    return any(current.get(k) != v for k, v in content.items())


async def knock(request: web.Request) -> web.Response:
    """POST /knock/{roomIdOrAlias}: ask to be invited, here or through a server in the room (versions 7+).

    403 when the room's join rules or version do not allow knocking (or the
    user is banned, invited or joined), 404 for an unknown room, the
    resident server's refusal or 502 when no server in the room answers.
    """
    requester = authenticate(request)
    rate_limit(request, requester)
    room_id, servers = await _resolve_room(request, request.match_info["room_or_alias"])
    body = await json_body(request, allow_empty=True)
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise bad_json("'reason' must be a string")
    svc = services(request)
    profile = svc.rooms.lookups.profile(requester.user_id)
    held = svc.rooms.head(room_id) is not None
    if held and svc.server_name in svc.rooms.dag.servers_in_room(room_id):
        version = svc.rooms.room_version(room_id)
        if not version.knock:
            raise forbidden(f"rooms of version {version.identifier} cannot be knocked on (version 7 and later can)")
        await svc.rooms.set_membership(requester.user_id, room_id, requester.user_id, "knock", reason, extra=profile)
        return ok({"room_id": room_id})
    fed = federation_of(svc)
    if fed is None:
        raise not_found("this gateway does not know that room")
    if held:
        servers += sorted(svc.rooms.dag.servers_in_room(room_id))
    content: dict[str, Any] = {**profile, **({"reason": reason} if reason else {})}
    knocked = await fed.memberships.knock_remote(requester.user_id, room_id, servers, content)
    stripped = [*knocked.stripped_state, {"type": "m.room.member", "state_key": requester.user_id,
                                          "content": knocked.event.content, "sender": requester.user_id}]  # fmt: skip
    await svc.store.federation.save_knock(room_id, requester.user_id, knocked.event.event_id,
                                          knocked.version.identifier, stripped, [knocked.server, *servers])  # fmt: skip
    await svc.store.persist_events([EventWrite(knocked.event, svc.store.next_stream(), None, None, outlier=True,
                                               memberships=((requester.user_id, "knock", knocked.event.event_id),))],
                                   None)  # fmt: skip
    svc.notifier.notify()
    return ok({"room_id": room_id})


async def _membership_change(request: web.Request, membership: str, on_target: bool) -> web.Response:
    requester = authenticate(request)
    rate_limit(request, requester)
    room_id = _room_id(request)
    body = await json_body(request, allow_empty=not on_target)
    target = _user_param(body) if on_target else requester.user_id
    svc = services(request)
    if svc.rooms.head(room_id) is None:
        fed = federation_of(svc)
        invite = svc.store.federation.invite(room_id, requester.user_id) if fed is not None else None
        if membership == "leave" and not on_target and fed is not None:
            knocked = svc.store.federation.knock(room_id, requester.user_id)
            if knocked is not None and svc.store.membership(room_id, requester.user_id) == "knock":
                return await _leave_through(svc, fed, requester.user_id, room_id, knocked[3], body.get("reason"))
            if invite is not None:
                return await _reject_remote_invite(svc, fed, requester.user_id, room_id, invite[0], body.get("reason"))
        raise not_found("unknown room")
    reason = body.get("reason")
    if membership == "unban":
        if svc.rooms.membership_in(svc.rooms.current_state(room_id), target) != "ban":
            raise forbidden(f"{target} is not banned")
        membership = "leave"
    elif membership == "kick":
        if svc.rooms.membership_in(svc.rooms.current_state(room_id), target) not in ("join", "invite", "knock"):
            raise forbidden(f"{target} is not in the room")
        membership = "leave"
    elif membership == "leave" and svc.rooms.membership_in(svc.rooms.current_state(room_id), target) in (None, "leave"):
        return ok()
    fed = federation_of(svc)
    if membership == "invite" and fed is not None and server_name_of(target) != svc.server_name:
        await fed.invites.invite_remote(requester.user_id, room_id, target, reason)
        return ok()
    await svc.rooms.set_membership(requester.user_id, room_id, target, membership, reason)
    return ok()


async def _reject_remote_invite(svc: Any, fed: Any, user_id: str, room_id: str, invite_id: str,
                                reason: Any) -> web.Response:  # fmt: skip
    """Reject an invite to a room this server does not hold, through the inviting server."""
    found = svc.store.get_event(invite_id)
    servers = [server_name_of(found["event"].sender)] if found is not None else []
    return await _leave_through(svc, fed, user_id, room_id, servers, reason)


async def _leave_through(svc: Any, fed: Any, user_id: str, room_id: str, servers: list[str],
                         reason: Any) -> web.Response:  # fmt: skip
    """Leave a room this server does not hold (reject an invite, rescind a knock) through ``servers``."""
    servers = list(servers)
    try:
        servers.append(server_name_of(room_id))
    except ValueError:
        pass
    leave = await fed.memberships.leave_remote(user_id, room_id, servers, reason if isinstance(reason, str) else None)
    await svc.store.persist_events([EventWrite(leave, svc.store.next_stream(), None, None, outlier=True,
                                               memberships=((user_id, "leave", leave.event_id),))], None)  # fmt: skip
    svc.notifier.notify()
    return ok()


async def leave(request: web.Request) -> web.Response:
    """POST /rooms/{roomId}/leave."""
    return await _membership_change(request, "leave", on_target=False)


async def invite(request: web.Request) -> web.Response:
    """POST /rooms/{roomId}/invite."""
    return await _membership_change(request, "invite", on_target=True)


async def kick(request: web.Request) -> web.Response:
    """POST /rooms/{roomId}/kick."""
    return await _membership_change(request, "kick", on_target=True)


async def ban(request: web.Request) -> web.Response:
    """POST /rooms/{roomId}/ban."""
    return await _membership_change(request, "ban", on_target=True)


async def unban(request: web.Request) -> web.Response:
    """POST /rooms/{roomId}/unban."""
    return await _membership_change(request, "unban", on_target=True)


async def forget(request: web.Request) -> web.Response:
    """POST /rooms/{roomId}/forget (only after leaving)."""
    requester = authenticate(request)
    room_id = _room_id(request)
    svc = services(request)
    if svc.store.membership(room_id, requester.user_id) in ("join", "invite"):
        raise MatrixError(400, "M_UNKNOWN", "leave the room before forgetting it")
    await svc.store.forget_room(room_id, requester.user_id)
    return ok()


async def joined_rooms(request: web.Request) -> web.Response:
    """GET /joined_rooms."""
    requester = authenticate(request)
    rows = services(request).store.rooms_for_user(requester.user_id)
    return ok({"joined_rooms": sorted(r[0] for r in rows if r[1] == "join")})


async def send(request: web.Request) -> web.Response:
    """PUT /rooms/{roomId}/send/{eventType}/{txnId} — idempotent per device and txn ID."""
    requester = authenticate(request)
    rate_limit(request, requester)
    room_id = _room_id(request)
    event_type = request.match_info["event_type"]
    txn_id = _txn_id(request)
    content = await json_body(request)
    if event_type == "m.room.redaction":
        raise bad_json("use the /redact endpoint to redact events")
    sent = await services(request).rooms.send(
        requester.user_id, room_id, event_type, content,
        txn=(requester.user_id, requester.device_id, transaction_key(room_id, event_type, txn_id)),
    )  # fmt: skip
    return ok({"event_id": sent.event.event_id})


async def redact(request: web.Request) -> web.Response:
    """PUT /rooms/{roomId}/redact/{eventId}/{txnId}."""
    requester = authenticate(request)
    rate_limit(request, requester)
    room_id = _room_id(request)
    body = await json_body(request, allow_empty=True)
    content: dict[str, Any] = {}
    if "reason" in body:
        content["reason"] = get_str(body, "reason")
    sent = await services(request).rooms.send(
        requester.user_id, room_id, "m.room.redaction", content, redacts=request.match_info["event_id"],
        txn=(requester.user_id, requester.device_id,
             transaction_key(room_id, "m.room.redaction", _txn_id(request))),
    )  # fmt: skip
    return ok({"event_id": sent.event.event_id})


async def put_state(request: web.Request) -> web.Response:
    """PUT /rooms/{roomId}/state/{eventType}[/{stateKey}]."""
    requester = authenticate(request)
    rate_limit(request, requester)
    room_id = _room_id(request)
    content = await json_body(request)
    event_type = request.match_info["event_type"]
    state_key = request.match_info.get("state_key", "")
    svc = services(request)
    if event_type == "m.room.member":
        return await _put_member(request, requester, room_id, state_key, content)
    if event_type == "m.room.canonical_alias":
        alt = content.get("alt_aliases", [])
        if not isinstance(alt, list):
            raise bad_json("'alt_aliases' must be a list of aliases")
        for alias in [content.get("alias"), *alt]:
            if alias is None:
                continue
            if not isinstance(alias, str):
                raise bad_json("aliases must be strings")
            found = svc.store.get_alias(alias)
            if found is None or found[0] != room_id:
                raise MatrixError(400, "M_BAD_ALIAS", f"alias {alias[:80]!r} does not point to this room")
    same = _same_state(svc, requester, room_id, event_type, state_key, content)
    if same is not None:
        return ok({"event_id": same})
    sent = await svc.rooms.send(requester.user_id, room_id, event_type, content, state_key=state_key)
    return ok({"event_id": sent.event.event_id})


def _same_state(svc: Any, requester: Requester, room_id: str, event_type: str, state_key: str,
                content: dict[str, Any]) -> str | None:  # fmt: skip
    """The current state event's ID when the requester sent it with this very content (a no-op: no new event), only
    while the requester is still joined (the auth rules would refuse anyone else)."""
    current = svc.rooms.state_event(room_id, event_type, state_key)
    if current is None or current.sender != requester.user_id or current.content != content:
        return None
    if svc.store.membership(room_id, requester.user_id) != "join":
        return None
    return str(current.event_id)


async def _put_member(request: web.Request, requester: Requester, room_id: str, target: str,
                      content: dict[str, Any]) -> web.Response:  # fmt: skip
    """PUT /state/m.room.member/{userId}: a membership change through the membership path (join or leave oneself,
    change one's own displayname or avatar, invite, kick, ban, unban), the content kept as sent."""
    if not is_user_id(target):
        raise MatrixError(400, "M_INVALID_PARAM", "the state key of m.room.member must be a user ID")
    membership = content.get("membership")
    if membership not in ("join", "invite", "leave", "ban", "knock"):
        raise bad_json("'membership' must be one of join, invite, leave, ban, knock")
    custom = _member_content(content)
    svc = services(request)
    if svc.rooms.head(room_id) is None:
        raise not_found("unknown room: join it through /join")
    if membership in ("join", "knock") and target != requester.user_id:
        raise forbidden(f"only {target[:80]} may set their membership to {membership}")
    current = svc.rooms.state_event(room_id, "m.room.member", target)
    would = {**(svc.rooms.lookups.profile(target) if membership == "join" else {}), **custom, "membership": membership}
    if current is not None and current.sender == requester.user_id and would == {
            k: v for k, v in current.content.items() if k != "join_authorised_via_users_server"}:  # fmt: skip
        return ok({"event_id": current.event_id})  # the same membership again: no new event
    fed = federation_of(svc)
    if membership == "invite" and fed is not None and server_name_of(target) != svc.server_name:
        invited = await fed.invites.invite_remote(requester.user_id, room_id, target, custom.get("reason"))
        return ok({"event_id": invited.event_id})
    sent = await svc.rooms.set_membership(requester.user_id, room_id, target, membership, extra=custom)
    return ok({"event_id": sent.event.event_id})


def _visible_state(request: web.Request, requester: Requester, room_id: str) -> dict[tuple[str, str], str]:
    svc = services(request)
    rows = [r for r in svc.store.rooms_for_user(requester.user_id) if r[0] == room_id]
    if (not rows or rows[0][1] != "join") and svc.rooms.head(room_id) is not None and (svc.rooms.state_content(
            svc.rooms.current_state(room_id), "m.room.history_visibility") or {}).get(
            "history_visibility") == "world_readable":  # anyone reads a world_readable room's state (sync14)
        return svc.rooms.current_state(room_id)
    if not rows or rows[0][1] not in ("join", "leave", "ban"):
        raise forbidden("you are not a member of this room")
    if rows[0][1] == "join":
        return svc.rooms.current_state(room_id)
    row = svc.store.get_event(rows[0][3])  # the state when the user left, if they had joined before leaving
    if row is None or row["state_before"] is None:  # a room held elsewhere: an invite rejected, a knock refused
        raise forbidden("you were never joined to this room")
    before = svc.store.state_for_group(row["state_before"])
    if svc.rooms.membership_in(before, requester.user_id) != "join":
        # Banned, or an invite or knock ended, without ever being in: the room's state is not theirs to read.
        raise forbidden("you were not joined to this room when you left it")
    return svc.store.state_for_group(row["state_after"])


async def get_state(request: web.Request) -> web.Response:
    """GET /rooms/{roomId}/state."""
    requester = authenticate(request)
    room_id = _room_id(request)
    svc = services(request)
    state = _visible_state(request, requester, room_id)
    events = []
    for event_id in state.values():
        row = svc.store.get_event(event_id)
        if row is not None:
            events.append(svc.sync.client_event(row))
    return ok(events)


async def get_state_event(request: web.Request) -> web.Response:
    """GET /rooms/{roomId}/state/{eventType}[/{stateKey}]."""
    requester = authenticate(request)
    room_id = _room_id(request)
    svc = services(request)
    state = _visible_state(request, requester, room_id)
    key = (request.match_info["event_type"], request.match_info.get("state_key", ""))
    event = svc.rooms.event(state[key]) if key in state else None
    if event is None:
        raise not_found("no such state event")
    row = svc.store.get_event(event.event_id)
    if request.query.get("format") == "event" and row is not None:
        return ok(svc.sync.client_event(row))
    return ok(svc.sync.client_event(row)["content"] if row else event.content)


async def get_event(request: web.Request) -> web.Response:
    """GET /rooms/{roomId}/event/{eventId}."""
    requester = authenticate(request)
    room_id = _room_id(request)
    return ok(services(request).sync.get_event(requester.user_id, room_id, request.match_info["event_id"],
                                               requester.device_id))  # fmt: skip


async def messages(request: web.Request) -> web.Response:
    """GET /rooms/{roomId}/messages."""
    requester = authenticate(request)
    room_id = _room_id(request)
    raw_filter = request.query.get("filter")
    filter_doc = None
    if raw_filter:
        if len(raw_filter) > 16 * 1024:
            raise MatrixError(400, "M_INVALID_PARAM", "filter too large")
        try:
            filter_doc = json.loads(raw_filter)
        except (ValueError, RecursionError):  # nesting past the recursion limit is not JSON we take either
            raise MatrixError(400, "M_NOT_JSON", "filter is not valid JSON") from None
        if not isinstance(filter_doc, dict):
            raise bad_json("filter must be an object")
        check_room_event_filter(filter_doc)
    svc = services(request)
    args = (requester.user_id, room_id, request.query.get("from"), request.query.get("to"),
            request.query.get("dir", "b"), query_int(request, "limit", 10, low=1, high=1000), filter_doc,
            requester.device_id)  # fmt: skip
    page = svc.sync.messages(*args)
    fed = federation_of(svc)
    if "end" not in page and args[4] == "b" and args[5] > len(page["chunk"]):
        # The page reached the oldest event this server holds: fetch older history from a peer, once per page.
        if fed is not None:
            if await fed.backfiller.backfill(room_id, args[5]):
                page = svc.sync.messages(*args)
        elif READER_WORKER in svc.components:  # a reader worker: only the main process backfills
            raise ForwardToMain()
    return ok(page)


async def members(request: web.Request) -> web.Response:
    """GET /rooms/{roomId}/members (optionally filtered by membership)."""
    requester = authenticate(request)
    room_id = _room_id(request)
    svc = services(request)
    state = _visible_state(request, requester, room_id)
    wanted = request.query.get("membership")
    unwanted = request.query.get("not_membership")
    chunk = []
    for (event_type, _), event_id in sorted(state.items()):
        if event_type != "m.room.member":
            continue
        row = svc.store.get_event(event_id)
        if row is None:
            continue
        membership = row["event"].content.get("membership")
        if (wanted and membership != wanted) or (unwanted and membership == unwanted):
            continue
        chunk.append(svc.sync.client_event(row))
    return ok({"chunk": chunk})


async def joined_members(request: web.Request) -> web.Response:
    """GET /rooms/{roomId}/joined_members."""
    requester = authenticate(request)
    room_id = _room_id(request)
    _require_joined(request, requester, room_id)
    svc = services(request)
    state = svc.rooms.current_state(room_id)
    joined = {}
    for user in svc.rooms.joined_members(room_id):
        content = svc.rooms.state_content(state, "m.room.member", user) or {}
        joined[user] = {"display_name": content.get("displayname"), "avatar_url": content.get("avatar_url")}
    return ok({"joined": joined})


# ------------------------------------------------------------------ aliases


#: Longest client transaction ID kept (clients use 20–40 characters; every one is stored with its event).
MAX_TXN_ID_CHARS = 255


def _txn_id(request: web.Request) -> str:
    txn_id = request.match_info["txn_id"]
    if len(txn_id) > MAX_TXN_ID_CHARS:
        raise MatrixError(400, "M_INVALID_PARAM", f"transaction IDs are at most {MAX_TXN_ID_CHARS} characters")
    return txn_id


def _alias(request: web.Request) -> str:
    alias = request.match_info["alias"]
    if not is_room_alias(alias):
        raise MatrixError(400, "M_INVALID_PARAM", "not a room alias (#localpart:server, at most 255 bytes, "
                          "no control characters)")  # fmt: skip
    return alias


async def get_alias(request: web.Request) -> web.Response:
    """GET /directory/room/{roomAlias}: here, or asked of the server the alias names (404, or 502 unreachable)."""
    alias = _alias(request)
    svc = services(request)
    found = svc.store.get_alias(alias)
    if found is None and server_name_of(alias) == svc.server_name and await ask_bridges_for_alias(svc, alias):
        found = svc.store.get_alias(alias)  # appservices: the bridge made it just now (appservices/queries.py)
    if found is not None:
        room_id = found[0]
        others = sorted(s for s in svc.rooms.dag.servers_in_room(room_id) if s != svc.server_name)
        return ok({"room_id": room_id, "servers": [svc.server_name, *others][:20]})
    fed = federation_of(svc)
    if server_name_of(alias) == svc.server_name or fed is None:
        raise not_found("no such alias")
    room_id, servers = await fed.queries.directory(alias)
    return ok({"room_id": room_id, "servers": servers})


async def put_alias(request: web.Request) -> web.Response:
    """PUT /directory/room/{roomAlias} — only on this server's domain."""
    requester = authenticate(request)
    alias = _alias(request)
    svc = services(request)
    if alias.split(":", 1)[1] != svc.server_name:
        raise MatrixError(400, "M_INVALID_PARAM", "aliases must be on this server's domain")
    body = await json_body(request)
    room_id = get_str(body, "room_id")
    assert room_id is not None
    if svc.rooms.head(room_id) is None:
        raise not_found("unknown room")
    _require_joined(request, requester, room_id)
    _may_take_alias(request, requester, alias)
    if not await svc.store.create_alias(alias, room_id, requester.user_id):
        raise MatrixError(409, "M_UNKNOWN", "alias already exists")
    return ok()


async def delete_alias(request: web.Request) -> web.Response:
    """DELETE /directory/room/{roomAlias} — by its creator or a room moderator."""
    requester = authenticate(request)
    alias = _alias(request)
    svc = services(request)
    found = svc.store.get_alias(alias)
    if found is None:
        raise not_found("no such alias")
    room_id, creator = found
    if creator != requester.user_id and svc.rooms.power_level(room_id, requester.user_id) < 50:
        raise forbidden("only the alias creator or a moderator may delete it")
    await svc.store.delete_alias(alias)
    await _drop_from_canonical_alias(svc, requester.user_id, room_id, alias)
    return ok()


async def _drop_from_canonical_alias(svc: Any, user_id: str, room_id: str, alias: str) -> None:
    """Take a deleted alias out of the room's ``m.room.canonical_alias`` (``alias`` and ``alt_aliases``) with a new
    state event sent as the deleter, when the auth rules let them; otherwise the event stays as it is (logged)."""
    current = svc.rooms.state_event(room_id, "m.room.canonical_alias")
    if current is None:
        return
    content = dict(current.content)
    alt = content.get("alt_aliases")
    changed = False
    if content.get("alias") == alias:
        del content["alias"]
        changed = True
    if isinstance(alt, list) and alias in alt:
        content["alt_aliases"] = [a for a in alt if a != alias]
        if not content["alt_aliases"]:
            del content["alt_aliases"]
        changed = True
    if not changed:
        return
    try:
        await svc.rooms.send(user_id, room_id, "m.room.canonical_alias", content, state_key="")
    except MatrixError as exc:
        log.info("alias %s deleted; %s's canonical alias left as it was: %s", alias, room_id, exc.message)


async def room_aliases(request: web.Request) -> web.Response:
    """GET /rooms/{roomId}/aliases."""
    requester = authenticate(request)
    room_id = _room_id(request)
    _require_joined(request, requester, room_id)
    return ok({"aliases": services(request).store.aliases_for_room(room_id)})


async def upgrade(request: web.Request) -> web.Response:
    """POST /rooms/{roomId}/upgrade {new_version[, additional_creators]}: a new room replaces this one
    (``homeserver/rooms/upgrade.py``); answers ``{"replacement_room": id}``."""
    requester = authenticate(request)
    rate_limit(request, requester)
    room_id = _room_id(request)
    body = await json_body(request)
    if "new_version" not in body:
        raise bad_json("'new_version' is required")
    new_room = await services(request).rooms.upgrade_room(requester.user_id, room_id, body["new_version"],
                                                          body.get("additional_creators"))  # fmt: skip
    return ok({"replacement_room": new_room})


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    room = CLIENT + "/rooms/{room_id}"
    return [
        web.post(room + "/upgrade", upgrade),
        web.post(CLIENT + "/createRoom", create_room),
        web.post(CLIENT + "/join/{room_or_alias}", join),
        web.post(CLIENT + "/knock/{room_or_alias}", knock),
        web.post(room + "/join", join),
        web.post(room + "/leave", leave),
        web.post(room + "/invite", invite),
        web.post(room + "/kick", kick),
        web.post(room + "/ban", ban),
        web.post(room + "/unban", unban),
        web.post(room + "/forget", forget),
        web.get(CLIENT + "/joined_rooms", joined_rooms),
        web.put(room + "/send/{event_type}/{txn_id}", send),
        web.put(room + "/redact/{event_id}/{txn_id}", redact),
        web.get(room + "/state", get_state),
        web.get(room + "/state/{event_type}", get_state_event),
        web.get(room + "/state/{event_type}/", get_state_event),
        web.get(room + "/state/{event_type}/{state_key}", get_state_event),
        web.put(room + "/state/{event_type}", put_state),
        web.put(room + "/state/{event_type}/", put_state),
        web.put(room + "/state/{event_type}/{state_key}", put_state),
        web.get(room + "/event/{event_id}", get_event),
        web.get(room + "/messages", messages),
        web.get(room + "/members", members),
        web.get(room + "/joined_members", joined_members),
        web.get(room + "/aliases", room_aliases),
        web.get(CLIENT + "/directory/room/{alias}", get_alias),
        web.put(CLIENT + "/directory/room/{alias}", put_alias),
        web.delete(CLIENT + "/directory/room/{alias}", delete_alias),
    ]
