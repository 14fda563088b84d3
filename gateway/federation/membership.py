"""Joining and leaving rooms across servers: make_join/send_join and make_leave/send_leave, both sides.

Rules (server-server API, "Joining Rooms", "Leaving Rooms"):

* to join a room hosted elsewhere, ask a resident server for a template
  (``make_join``, offering every room version we support), fill it in, sign
  it, and submit it (``send_join`` v2). The answer's state and auth chain
  are checked like any received events (signatures, auth chain order, auth
  rules) and kept as outliers; the join is placed on that state. The
  resident server sends the join to the room's other servers — we do not.
  The answer is bounded (:data:`MAX_JOIN_EVENTS`, :data:`MAX_JOIN_BYTES`), and
  checking it gives the event loop a turn every few events;
* as a resident server, a template is made only for a user of the asking
  server, only for a room version it supports, only if the join would be
  authorised now; a submitted join is checked through the receive path's
  steps, stored, sent on to the room's other servers, and answered with the
  state before it and the auth chain (co-signed when it names one of our
  users as ``join_authorised_via_users_server``);
* leaves work the same way (``make_leave``/``send_leave``): rejecting an
  invite to a room this server does not hold goes through the inviting
  server;
* knocks too (``make_knock``/``send_knock`` v1), in room versions that have
  them (7+: only those are offered, and a resident server refuses a knock
  on an older room): the answer to ``send_knock`` carries the room's
  identifying state (``knock_room_state``), which the knocker is shown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lowband.gateway.federation.client import FederationClient, FederationError, path_segment
from lowband.gateway.federation.inbound import versioned
from lowband.gateway.federation.inbound.auth_checks import verdict
from lowband.gateway.federation.inbound.check_signatures import check_signatures
from lowband.gateway.federation.inbound.dag import RoomDag, StateMap
from lowband.gateway.federation.inbound.errors import PduDropped
from lowband.gateway.federation.inbound.fetch_auth_events import rule4, store_checked_outliers
from lowband.gateway.federation.inbound.parse_incoming_pdu import parse_for_room
from lowband.gateway.federation.keyring import KeyRing
from lowband.gateway.federation.stripped_state import room_state_pdus, to_client
from lowband.gateway.matrix import room_versions
from lowband.gateway.matrix.auth_rules import AuthError
from lowband.gateway.matrix.errors import MatrixError, forbidden, not_found
from lowband.gateway.matrix.events import Event, EventFormatError, add_signature, build_event, server_name_of
from lowband.gateway.matrix.room_versions import RoomVersion
from lowband.gateway.matrix.signing import SigningKey

__all__ = ["MAX_JOIN_BYTES", "MAX_JOIN_EVENTS", "Knocked", "MembershipError", "Memberships"]

log = logging.getLogger("lowband.federation")

#: The most events (state and auth chain together) a ``send_join`` answer may hold: each is checked (signatures,
#: hashes, auth), so this bounds what joining a room costs; a bigger room is refused with that reason.
MAX_JOIN_EVENTS = 100_000
#: The largest ``send_join`` answer read.
MAX_JOIN_BYTES = 256 * 1024 * 1024


class MembershipError(MatrixError):
    """A join or leave through another server failed; the message says why (for the client)."""


@dataclass(frozen=True)
class Knocked:
    """A knock a resident server took: the event, the room's version, its stripped state, the server."""

    event: Event
    version: RoomVersion
    stripped_state: list[dict[str, Any]]
    server: str


def _knockable(version: RoomVersion) -> None:
    if not version.knock:
        raise forbidden(f"rooms of version {version.identifier} cannot be knocked on (version 7 and later can)")


@dataclass
class Memberships:
    """Membership handshakes of this server."""

    server_name: str
    key: SigningKey
    client: FederationClient
    keyring: KeyRing
    dag: RoomDag
    clock_ms: Any  # () -> int

    # ------------------------------------------------------------- our side

    async def join_remote(self, user_id: str, room_id: str, servers: list[str], content: dict[str, Any]) -> Event:
        """Join ``user_id`` to a room held by one of ``servers``; the stored join event.

        Tries each server in turn. MembershipError (404 when nobody could
        make a join, 403 when the room refused) with the last reason.
        """
        last: MatrixError = MembershipError(404, "M_NOT_FOUND", f"no server could help to join {room_id}")
        for server in [s for s in dict.fromkeys(servers) if s != self.server_name][:10]:
            try:
                return await self._join_via(server, user_id, room_id, content)
            except FederationError as exc:
                log.info("joining %s via %s failed: %s", room_id, server, exc)
                status = exc.status if 400 <= exc.status < 500 else 502
                last = MembershipError(status, exc.errcode if status != 502 else "M_UNKNOWN",
                                       f"{server}: {exc.message}")  # fmt: skip
            except PduDropped as exc:
                log.info("joining %s via %s failed: %s", room_id, server, exc.reason)
                last = MembershipError(502, "M_UNKNOWN", f"{server} sent an unusable room: {exc.reason}")
        raise last

    async def _join_via(self, server: str, user_id: str, room_id: str, content: dict[str, Any]) -> Event:
        query = {"ver": list(room_versions.KNOWN)}
        path = f"/_matrix/federation/v1/make_join/{path_segment(room_id)}/{path_segment(user_id)}"
        answer = await self.client.request(server, "GET", path, query=query, timeout=30.0)
        version, template = self._template(answer, room_id, user_id, "join")
        join = self._sign_from_template(template, version, {**content, "membership": "join"})
        path = f"/_matrix/federation/v2/send_join/{path_segment(room_id)}/{path_segment(join.event_id)}"
        result = await self.client.request(server, "PUT", path, body=join.pdu, timeout=120.0,
                                           max_bytes=MAX_JOIN_BYTES)  # fmt: skip
        if not isinstance(result, dict) or not isinstance(result.get("state"), list) \
                or not isinstance(result.get("auth_chain"), list):  # fmt: skip
            raise PduDropped("send_join answer without state and auth_chain")
        if len(result["state"]) + len(result["auth_chain"]) > MAX_JOIN_EVENTS:
            raise PduDropped(f"the room's state and auth chain hold more than {MAX_JOIN_EVENTS} events")
        signed = result.get("event")
        if isinstance(signed, dict):  # restricted rooms: the resident server co-signed it
            candidate = versioned.event_from_pdu(signed, version)
            if candidate.event_id == join.event_id:
                join = candidate
        return await self._store_join(server, room_id, version, join, result["state"], result["auth_chain"])

    def _template(self, answer: Any, room_id: str, user_id: str, membership: str) -> tuple[RoomVersion, dict[str, Any]]:
        if not isinstance(answer, dict) or not isinstance(answer.get("event"), dict):
            raise PduDropped(f"make_{membership} answer without an event template")
        try:
            version = room_versions.get(answer.get("room_version", "1"))
        except room_versions.UnsupportedRoomVersion as exc:
            raise MembershipError(400, "M_INCOMPATIBLE_ROOM_VERSION", str(exc)) from None
        template = answer["event"]
        if template.get("room_id") != room_id or template.get("state_key") != user_id \
                or template.get("sender") != user_id or template.get("type") != "m.room.member":  # fmt: skip
            raise PduDropped(f"the make_{membership} template is not a {membership} of {user_id} in {room_id}")
        return version, template

    def _sign_from_template(self, template: dict[str, Any], version: RoomVersion, content: dict[str, Any]) -> Event:
        prev = template.get("prev_events")
        auth = template.get("auth_events")
        depth = template.get("depth")
        if not isinstance(prev, list) or not isinstance(auth, list) or not isinstance(depth, int):
            raise PduDropped("the template lacks prev_events, auth_events or depth")
        via = template.get("content", {}).get("join_authorised_via_users_server") \
            if isinstance(template.get("content"), dict) else None  # fmt: skip
        if isinstance(via, str):
            content = {**content, "join_authorised_via_users_server": via}
        hashes: dict[str, str] = {}
        if version.events_carry_id:  # v1-v2 templates cite [event_id, {"sha256": …}] pairs
            for pair in [*prev, *auth]:
                if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], dict):
                    hashes[str(pair[0])] = str(pair[1].get("sha256", ""))
            prev = [p[0] if isinstance(p, list) and p else p for p in prev]
            auth = [a[0] if isinstance(a, list) and a else a for a in auth]
        try:
            return build_event(room_id=template["room_id"], sender=template["sender"], type="m.room.member",
                               content=content, prev_events=[str(p) for p in prev], auth_events=[str(a) for a in auth],
                               depth=depth, origin_server_ts=self.clock_ms(), server_name=self.server_name,
                               signing_key=self.key, state_key=template["state_key"], room_version=version,
                               event_hashes=hashes or None)  # fmt: skip
        except (EventFormatError, ValueError) as exc:
            raise PduDropped(f"the template does not make a valid event: {exc}") from None

    async def _store_join(self, server: str, room_id: str, version: RoomVersion, join: Event, state: list[Any],
                          auth_chain: list[Any]) -> Event:  # fmt: skip
        known_room = self.dag.room_version(room_id) is not None
        if not known_room:
            create = [e for e in state if isinstance(e, dict) and e.get("type") == "m.room.create"]
            creator = create[0].get("sender") if create else None
            if not isinstance(creator, str):
                raise PduDropped("the room's state has no create event")
            await self.dag.create_remote_room(room_id, version, creator)
        async with self.dag.room_lock(room_id):
            kept = await store_checked_outliers([*auth_chain, *state], server, version, room_id, self.keyring, self.dag)
            by_id = {e.event_id: e for e in kept}
            before: StateMap = {}
            for raw in state:
                event_id = versioned.event_from_pdu(raw, version).event_id if isinstance(raw, dict) else None
                known = self.dag.known(event_id) if event_id else None
                event = known.event if known else by_id.get(event_id or "")
                if event is None or event.state_key is None:
                    continue
                if known is not None and known.rejected is not None:
                    continue  # a state event failing its own auth chain stays out of the state
                before[(event.type, event.state_key)] = event.event_id
            if ("m.room.create", "") not in before:
                raise PduDropped("the room's state has no valid create event")
            reason = rule4(join, version, self.dag)
            if reason is not None:
                raise PduDropped(f"our join does not pass its auth events: {reason}")
            await self.dag.store_remote(room_id, join, before, None, False)
        return join

    async def leave_remote(self, user_id: str, room_id: str, servers: list[str], reason: str | None) -> Event:
        """Leave (or reject an invite to) a room this server does not hold, through one of ``servers``."""
        last: MatrixError = MembershipError(404, "M_NOT_FOUND", f"no server could help to leave {room_id}")
        for server in [s for s in dict.fromkeys(servers) if s != self.server_name][:10]:
            try:
                path = f"/_matrix/federation/v1/make_leave/{path_segment(room_id)}/{path_segment(user_id)}"
                answer = await self.client.request(server, "GET", path, timeout=30.0)
                version, template = self._template(answer, room_id, user_id, "leave")
                content: dict[str, Any] = {"membership": "leave"}
                if reason:
                    content["reason"] = reason
                leave = self._sign_from_template(template, version, content)
                path = f"/_matrix/federation/v2/send_leave/{path_segment(room_id)}/{path_segment(leave.event_id)}"
                await self.client.request(server, "PUT", path, body=leave.pdu, timeout=60.0)
                return leave
            except (FederationError, PduDropped) as exc:
                log.info("leaving %s via %s failed: %s", room_id, server, exc)
                last = MembershipError(502, "M_UNKNOWN", f"{server}: {exc}")
        raise last

    async def knock_remote(self, user_id: str, room_id: str, servers: list[str], content: dict[str, Any]) -> Knocked:
        """Knock on a room this server does not take part in, through one of ``servers``.

        Only room versions with knocking are offered. MembershipError (the
        resident server's 4xx, 404 when nobody could help, 502 when no one
        answered usably); 400 M_INCOMPATIBLE_ROOM_VERSION for a room of a
        version without knocking.
        """
        last: MatrixError = MembershipError(404, "M_NOT_FOUND", f"no server could help to knock on {room_id}")
        versions = [v for v in room_versions.KNOWN if room_versions.get(v).knock]
        for server in [s for s in dict.fromkeys(servers) if s != self.server_name][:10]:
            try:
                path = f"/_matrix/federation/v1/make_knock/{path_segment(room_id)}/{path_segment(user_id)}"
                answer = await self.client.request(server, "GET", path, query={"ver": versions}, timeout=30.0)
                version, template = self._template(answer, room_id, user_id, "knock")
                if not version.knock:
                    raise MembershipError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                                          f"rooms of version {version.identifier} cannot be knocked on",
                                          room_version=version.identifier)  # fmt: skip
                knock = self._sign_from_template(template, version, {**content, "membership": "knock"})
                path = f"/_matrix/federation/v1/send_knock/{path_segment(room_id)}/{path_segment(knock.event_id)}"
                result = await self.client.request(server, "PUT", path, body=knock.pdu, timeout=60.0,
                                                   max_bytes=1024 * 1024)  # fmt: skip
                state = result.get("knock_room_state") if isinstance(result, dict) else None
                if not isinstance(state, list):
                    raise PduDropped("the send_knock answer has no knock_room_state")
                return Knocked(knock, version, to_client(state, room_id), server)
            except FederationError as exc:
                log.info("knocking on %s via %s failed: %s", room_id, server, exc)
                status = exc.status if 400 <= exc.status < 500 else 502
                last = MembershipError(status, exc.errcode if status != 502 else "M_UNKNOWN",
                                       f"{server}: {exc.message}")  # fmt: skip
            except PduDropped as exc:
                log.info("knocking on %s via %s failed: %s", room_id, server, exc.reason)
                last = MembershipError(502, "M_UNKNOWN", f"{server} answered the knock unusably: {exc.reason}")
        raise last

    # ------------------------------------------------------------- resident side

    def make_template(self, origin: str, room_id: str, user_id: str, membership: str,
                      versions: list[str] | None) -> dict[str, Any]:  # fmt: skip
        """Answer ``make_join`` / ``make_leave`` / ``make_knock`` from ``origin`` (MatrixError when refused)."""
        version = self.dag.room_version(room_id)
        if version is None:
            raise not_found(f"this server is not in room {room_id}")
        if server_name_of(user_id) != origin:
            raise forbidden("a server may only ask for its own users")
        if versions is not None and version.identifier not in versions:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", f"the room has version {version.identifier}",
                              room_version=version.identifier)  # fmt: skip
        if membership == "knock":
            _knockable(version)
        state = self.dag.current_state(room_id)
        content: dict[str, Any] = {"membership": membership}
        extremities = self.dag.forward_extremities(room_id)[:10]
        known = [k for k in (self.dag.known(e) for e in extremities) if k is not None]
        depth = max((k.event.depth for k in known), default=0) + 1
        probe_pdu = {"room_id": room_id, "sender": user_id, "type": "m.room.member", "state_key": user_id,
                     "content": content, "prev_events": extremities, "depth": depth,
                     "origin_server_ts": self.clock_ms()}  # fmt: skip
        probe = Event("$probe", {**probe_pdu, "auth_events": [], "hashes": {}, "signatures": {}})
        auth_ids = [state[k] for k in versioned.auth_types(probe, version) if k in state]
        template = {**probe_pdu, "auth_events": auth_ids}
        probe = Event("$probe", {**template, "hashes": {}, "signatures": {}})
        auth_events = [k.event for k in (self.dag.known(a) for a in auth_ids) if k is not None]
        try:
            create_id = versioned.create_event_id(probe, version)
            create = self.dag.known(create_id) if create_id else None
            versioned.check_auth(probe, versioned.auth_state_from(probe, auth_events, version,
                                                                  create.event if create else None), version)  # fmt: skip
        except AuthError as exc:
            raise forbidden(f"{user_id} may not {membership}: {exc.reason}") from None
        return {"event": template, "room_version": version.identifier}

    async def accept(self, origin: str, room_id: str, event_id: str, raw: Any, membership: str) -> dict[str, Any]:
        """Answer ``send_join`` / ``send_leave`` / ``send_knock`` v2: check, store, relay (MatrixError when refused)."""
        version = self.dag.room_version(room_id)
        if version is None:
            raise not_found(f"this server is not in room {room_id}")
        if membership == "knock":
            _knockable(version)  # before any signature work
        try:
            incoming = await check_signatures(parse_for_room(raw, origin, version), self.keyring)
        except PduDropped as exc:
            raise MatrixError(400, "M_INVALID_PARAM", exc.reason) from None
        event = incoming.event
        if incoming.redacted or event.event_id != event_id or event.room_id != room_id \
                or event.type != "m.room.member" or event.state_key != event.sender \
                or event.content.get("membership") != membership:  # fmt: skip
            raise MatrixError(400, "M_INVALID_PARAM", f"not a {membership} event with that ID")
        if server_name_of(event.sender) != origin:
            raise MatrixError(400, "M_INVALID_PARAM", "the event's sender is not on the asking server")
        via = event.content.get("join_authorised_via_users_server")
        if membership == "join" and isinstance(via, str) and server_name_of(via) == self.server_name:
            event = Event(event.event_id, add_signature(event.pdu, self.server_name, self.key, version))
            incoming.event = event
        async with self.dag.room_lock(room_id):
            missing = [p for p in event.prev_events if self.dag.state_after(p) is None]
            if missing or any(self.dag.known(a) is None for a in event.auth_events):
                raise MatrixError(400, "M_INVALID_PARAM", "the event builds on events this server does not have")
            from lowband.gateway.federation.inbound.state_at_event import state_before

            before = state_before(incoming, self.dag, {})
            rejected, _soft = verdict(incoming, before, self.dag)
            if rejected is not None:
                raise forbidden(f"the {membership} is not allowed: {rejected}")
            already = self.dag.known(event.event_id)
            if already is None or already.outlier:
                await self.dag.store_remote(room_id, event, before, None, False, relay=True)
        if membership == "knock":
            return {"knock_room_state": room_state_pdus(self.dag, room_id)}
        if membership != "join":
            return {}
        chain = self.dag.auth_chain([*before.values(), event.event_id])
        state_pdus = [k.event.pdu for k in (self.dag.known(e) for e in before.values()) if k is not None]
        return {"origin": self.server_name, "state": state_pdus, "auth_chain": [e.pdu for e in chain],
                "event": event.pdu, "members_omitted": False}  # fmt: skip
