"""Ephemeral events between servers: typing notices and read receipts, both ways.

Rules:

* an EDU about a user is accepted only from that user's server, only for a
  room this server holds in which that user is joined, and only when the
  room's server ACL allows the origin; anything else is ignored (an EDU is
  advisory: it never fails a transaction);
* a local user's typing change or public read receipt goes to every other
  server in the room, coalesced per (room, user) while it waits.
"""

from __future__ import annotations

import logging
from typing import Any

from lowband.gateway.federation.sender import FederationSender
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.events import server_name_of
from lowband.gateway.matrix.server_acl import server_allowed

__all__ = ["Edus"]

log = logging.getLogger("lowband.federation")

_MAX_RECEIPTS = 1000


class Edus:
    """Handles EDUs in, and turns local typing and receipts into EDUs out."""

    def __init__(self, services: Services, sender: FederationSender) -> None:
        self.services = services
        self.sender = sender
        services.typing.listeners.append(self._local_typing)
        services.receipt_listeners.append(self._local_receipt)

    # ------------------------------------------------------------- in

    def _may_speak_for(self, origin: str, room_id: Any, user_id: Any) -> bool:
        if not isinstance(room_id, str) or not isinstance(user_id, str):
            return False
        try:
            if server_name_of(user_id) != origin:
                return False
        except ValueError:
            return False
        rooms = self.services.rooms
        if rooms.head(room_id) is None:
            return False
        state = rooms.current_state(room_id)
        acl = rooms.state_content(state, "m.room.server_acl")
        return server_allowed(acl, origin) and rooms.membership_in(state, user_id) == "join"

    async def receive(self, origin: str, edu: dict[str, Any]) -> None:
        """Apply one EDU from ``origin`` (ignored when it is not acceptable)."""
        kind, content = edu.get("edu_type"), edu.get("content")
        if not isinstance(content, dict):
            return
        if kind == "m.typing":
            room_id, user_id, typing = content.get("room_id"), content.get("user_id"), content.get("typing")
            if isinstance(typing, bool) and self._may_speak_for(origin, room_id, user_id):
                self.services.typing.set_typing(room_id, user_id, typing, 30_000, local=False)  # type: ignore[arg-type]
                self.services.notifier.notify()
        elif kind == "m.receipt":
            await self._receipts(origin, content)

    async def _receipts(self, origin: str, content: dict[str, Any]) -> None:
        count = 0
        changed = False
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict):
                continue
            for receipt_type, by_user in by_type.items():
                if receipt_type != "m.read" or not isinstance(by_user, dict):
                    continue
                for user_id, receipt in by_user.items():
                    count += 1
                    if count > _MAX_RECEIPTS or not isinstance(receipt, dict):
                        return
                    event_ids = receipt.get("event_ids")
                    data = receipt.get("data")
                    found_ts = data.get("ts") if isinstance(data, dict) else None
                    ts = found_ts if isinstance(found_ts, int) else self.services.rooms.now_ms()
                    if not isinstance(event_ids, list) or not event_ids or not isinstance(event_ids[0], str):
                        continue
                    if not self._may_speak_for(origin, room_id, user_id):
                        continue
                    event = self.services.store.get_event(event_ids[0])
                    if event is None or event["event"].room_id != room_id:
                        continue
                    await self.services.store.set_receipt(room_id, receipt_type, user_id, event_ids[0], ts)
                    changed = True
        if changed:
            self.services.notifier.notify()

    # ------------------------------------------------------------- out

    def _others(self, room_id: str) -> set[str]:
        return self.services.rooms.dag.servers_in_room(room_id) - {self.services.server_name}

    def _local_typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> None:
        for server in self._others(room_id):
            self.sender.send_edu(server, "m.typing", {"room_id": room_id, "user_id": user_id, "typing": typing},
                                 key=(room_id, user_id))  # fmt: skip

    def _local_receipt(self, room_id: str, receipt_type: str, user_id: str, event_id: str, ts: int) -> None:
        content = {room_id: {receipt_type: {user_id: {"event_ids": [event_id], "data": {"ts": ts}}}}}
        for server in self._others(room_id):
            self.sender.send_edu(server, "m.receipt", content, key=(room_id, receipt_type, user_id))
