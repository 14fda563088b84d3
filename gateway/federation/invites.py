"""Invites across servers: ours to users elsewhere, theirs to our users (``/v2/invite``).

Rules:

* an invite of a user on another server is built and checked here like any
  local event, then sent to that user's server, which signs it too; only
  the event that comes back carrying both signatures (and the same event
  ID) is stored and sent on to the room's other servers;
* an invite from another server is accepted only for an existing local
  user, from the server of its sender, in a room version we know, with a
  valid signature; we sign it and keep it, with the state the inviter
  showed (``invite_room_state``), so the user sees it in ``/sync`` and can
  join or reject it through the inviting server;
* while our user is invited to, or knocking on, a room this server does not
  hold, a member event from the room that withdraws the invite or refuses
  the knock (leave or ban of that user, by someone else) arrives over
  ``/send``, as we have no member there to learn it from. It is taken only
  from the server that handled the invite (the inviter's) or the knock
  (the servers it went through), checked for format and for the
  signatures of its origin and its sender's server (the room's state is
  not ours to judge it by), and kept as an outlier that moves the user to
  ``leave`` or ``ban``, shown in ``/sync``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lowband.gateway.federation.client import FederationClient, FederationError, path_segment
from lowband.gateway.federation.inbound import versioned
from lowband.gateway.federation.inbound.budget import FetchBudget
from lowband.gateway.federation.inbound.check_signatures import check_signatures
from lowband.gateway.federation.inbound.errors import PduDropped
from lowband.gateway.federation.inbound.parse_incoming_pdu import parse_for_room
from lowband.gateway.federation.keyring import KeyRing
from lowband.gateway.federation.stripped_state import STRIPPED_TYPES
from lowband.gateway.homeserver.rooms import RoomService, SendRequest
from lowband.gateway.matrix import room_versions
from lowband.gateway.matrix.errors import MatrixError, forbidden, not_found
from lowband.gateway.matrix.events import Event, add_signature, server_name_of
from lowband.gateway.matrix.signing import SignatureError, SigningKey, verify_json
from lowband.gateway.store.interfaces import EventWrite, Store

__all__ = ["Invites"]



@dataclass
class Invites:
    """Invites of this server's users, and by them."""

    server_name: str
    key: SigningKey
    client: FederationClient
    keyring: KeyRing
    rooms: RoomService
    store: Store
    notify: Callable[[], None]  # wakes /sync

    def stripped_state(self, room_id: str) -> list[dict[str, Any]]:
        """The room's state an invitee is shown (name, topic, join rules …)."""
        state = self.rooms.current_state(room_id)
        out = []
        for event_type in STRIPPED_TYPES:
            event = self.rooms.event(state[(event_type, "")]) if (event_type, "") in state else None
            if event is not None:
                out.append({"type": event.type, "state_key": "", "content": event.content, "sender": event.sender})
        return out

    async def invite_remote(self, sender: str, room_id: str, target: str, reason: str | None) -> Event:
        """Invite ``target`` (a user of another server) into a room we hold; the stored invite.

        MatrixError: 403 when the auth rules refuse, 502 when the target's
        server cannot be reached or refuses (its reason is given).
        """
        content: dict[str, Any] = {"membership": "invite"}
        if reason is not None:
            content["reason"] = reason
        request = SendRequest(sender, "m.room.member", content, state_key=target)
        event, before = await self.rooms.sender.build_checked(room_id, request)
        version = self.rooms.room_version(room_id)
        body = {"event": event.pdu, "room_version": version.identifier,
                "invite_room_state": self.stripped_state(room_id)}  # fmt: skip
        server = server_name_of(target)
        try:
            answer = await self.client.request(server, "PUT", f"/_matrix/federation/v2/invite/"
                                               f"{path_segment(room_id)}/{path_segment(event.event_id)}",
                                               body=body, timeout=60.0)  # fmt: skip
        except FederationError as exc:
            status = exc.status if exc.status in (400, 403, 404) else 502
            raise MatrixError(status, exc.errcode if status != 502 else "M_UNKNOWN",
                              f"{server} refused the invite: {exc.message}") from None  # fmt: skip
        signed = answer.get("event") if isinstance(answer, dict) else None
        try:
            incoming = parse_for_room(signed, server, version)
            if incoming.event.event_id != event.event_id:
                raise PduDropped("the signed invite is another event")
            incoming.origin = self.server_name
            checked = await check_signatures(incoming, self.keyring)  # our signature and the sender's
            remote_sigs = signed.get("signatures", {}).get(server) if isinstance(signed, dict) else None
            if not isinstance(remote_sigs, dict) or not remote_sigs:
                raise PduDropped(f"{server} did not sign the invite")
            redacted = versioned.redacted(checked.event.pdu, version)
            for key_id in list(remote_sigs)[:8]:
                key = await self.keyring.verify_key(server, key_id)
                if key is not None:
                    verify_json(redacted, server, key_id, key)  # the invitee's server signs the redacted event too
                    break
            else:
                raise PduDropped(f"no key of {server} could be found to check its signature")
        except (PduDropped, SignatureError, ValueError) as exc:
            raise MatrixError(502, "M_UNKNOWN", f"{server} sent back an unusable invite: {exc}") from None
        async with self.rooms.dag.room_lock(room_id):
            await self.rooms.dag.store_remote(room_id, checked.event, before, None, False, relay=True)
        return checked.event

    async def receive(self, origin: str, room_id: str, event_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Answer ``PUT /v2/invite``: check, co-sign and keep an invite of one of our users; the signed PDU."""
        try:
            version = room_versions.get(body.get("room_version", "1"))
        except room_versions.UnsupportedRoomVersion as exc:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", str(exc),
                              room_version=str(body.get("room_version"))[:20]) from None  # fmt: skip
        try:
            incoming = await check_signatures(parse_for_room(body.get("event"), origin, version), self.keyring)
        except PduDropped as exc:
            raise MatrixError(400, "M_INVALID_PARAM", exc.reason) from None
        event = incoming.event
        target = event.state_key
        if incoming.redacted or event.event_id != event_id or event.room_id != room_id \
                or event.type != "m.room.member" or event.content.get("membership") != "invite" or target is None:  # fmt: skip
            raise MatrixError(400, "M_INVALID_PARAM", "not an invite event with that ID")
        if server_name_of(event.sender) != origin:
            raise forbidden("the invite's sender is not on the asking server")
        if server_name_of(target) != self.server_name or self.store.get_user(target) is None:
            raise not_found(f"no user {target[:100]} here")
        signed = add_signature(event.pdu, self.server_name, self.key, version)
        invite = Event(event.event_id, signed)
        stripped = body.get("invite_room_state")
        stripped = [s for s in stripped if isinstance(s, dict)][:50] if isinstance(stripped, list) else []
        stripped.append({"type": "m.room.member", "state_key": target, "content": event.content,
                         "sender": event.sender})  # fmt: skip
        if self.rooms.head(room_id) is not None:
            # A room we hold: the invite arrives over /send too; show it now as the current state says.
            return signed
        await self.store.federation.save_invite(room_id, target, event.event_id, version.identifier, stripped)
        write = EventWrite(invite, self.store.next_stream(), None, None, outlier=True,
                           memberships=((target, "invite", event.event_id),))  # fmt: skip
        await self.store.persist_events([write], None)
        self.notify()
        return signed

    async def outside_room(self, origin: str, raw: Any, budget: FetchBudget) -> tuple[str, None] | None:
        """A PDU for a room we do not hold that ends our user's pending invite or knock there (see the rules).

        (its event ID, None) once kept; None when it is no such PDU (the
        caller drops it as for any room we do not hold); PduDropped when it
        is one but fails a check.
        """
        if not isinstance(raw, dict) or raw.get("type") != "m.room.member":
            return None
        room_id, target = raw.get("room_id"), raw.get("state_key")
        if not isinstance(room_id, str) or not isinstance(target, str) or self.rooms.head(room_id) is not None:
            return None
        try:
            if server_name_of(target) != self.server_name:
                return None
        except ValueError:
            return None
        pending = self.store.membership(room_id, target)
        record = (self.store.federation.invite(room_id, target) if pending == "invite"
                  else self.store.federation.knock(room_id, target) if pending == "knock" else None)  # fmt: skip
        if record is None:
            return None
        try:
            version = room_versions.get(record[1])
        except room_versions.UnsupportedRoomVersion:
            return None
        if origin not in self._pending_servers(pending, record):
            raise PduDropped(f"{origin[:100]} did not handle {target[:100]}'s {pending} in room {room_id[:100]}")
        incoming = await check_signatures(parse_for_room(raw, origin, version), self.keyring, budget)
        event = incoming.event
        membership = event.content.get("membership")
        if incoming.redacted or membership not in ("leave", "ban") or event.sender == target:
            raise PduDropped(f"this server is not in room {room_id[:100]}, and the event does not end "
                             f"{target[:100]}'s {pending} there")  # fmt: skip
        write = EventWrite(event, self.store.next_stream(), None, None, outlier=True,
                           memberships=((target, str(membership), event.event_id),))  # fmt: skip
        await self.store.persist_events([write], None)
        self.notify()
        return event.event_id, None

    def _pending_servers(self, pending: str | None, record: tuple[Any, ...]) -> set[str]:
        """Who may end a pending invite (the inviter's server) or knock (the servers it went through)."""
        if pending == "knock":
            return {s for s in record[3] if isinstance(s, str)}
        found = self.store.get_event(record[0])
        try:
            return {server_name_of(found["event"].sender)} if found is not None else set()
        except ValueError:
            return set()
