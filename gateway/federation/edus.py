"""Ephemeral events between servers: typing notices, read receipts, device list changes, to-device messages.

Rules:

* an EDU about a user is accepted only from that user's server, only for a
  room this server holds in which that user is joined, and only when the
  room's server ACL allows the origin; anything else is ignored (an EDU is
  advisory: it never fails a transaction);
* a local user's typing change or public read receipt goes to every other
  server in the room, coalesced per (room, user) while it waits;
* ``m.device_list_update`` and ``m.signing_key_update`` about a user of the
  origin who shares a room with one of our users become a device list
  change of that user (our clients see it in ``device_lists.changed`` and
  ask the user's server for the keys: nothing of the EDU's content is kept);
* ``m.direct_to_device`` from the sender's own server is queued for our
  users' devices, once per (sender, origin, ``message_id``) however often it
  comes; messages for other servers' users in it are left out;
* an E2EE EDU that breaks these rules or the spec's shapes is ignored and
  counted per kind and reason (:attr:`Edus.refused`); the first of each
  kind and reason is logged with its origin, then one line per
  :data:`REFUSAL_LOG_INTERVAL_S` at most says how many followed.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any, TypeGuard

from lowband.gateway.federation.sender import FederationSender
from lowband.gateway.homeserver.services import Services
from lowband.gateway.homeserver.to_device import MAX_TARGETS, check_messages
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.matrix.events import server_name_of
from lowband.gateway.matrix.server_acl import server_allowed

__all__ = ["REFUSAL_LOG_INTERVAL_S", "Edus"]

log = logging.getLogger("lowband.federation")

_MAX_RECEIPTS = 1000
_DEVICE_LIST_EDUS = ("m.device_list_update", "m.signing_key_update")
_E2EE_EDUS = (*_DEVICE_LIST_EDUS, "m.direct_to_device")
_MAX_ID_CHARS = 255
_MAX_PREV_IDS = 100
REFUSAL_LOG_INTERVAL_S = 60.0


class Edus:
    """Handles EDUs in (typing, receipts, device lists, to-device); turns local typing and receipts into EDUs."""

    def __init__(
        self, services: Services, sender: FederationSender, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.services = services
        self.sender = sender
        self.clock = clock
        #: (edu_type, reason) -> E2EE EDUs ignored for it since start
        self.refused: collections.Counter[tuple[str, str]] = collections.Counter()
        self._refusal_lines: dict[tuple[str, str], tuple[float, int]] = {}  # -> (time of last line, count then)
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
            if kind in _E2EE_EDUS:
                self._refuse(origin, str(kind), "content is not an object")
            return
        if kind == "m.typing":
            room_id, user_id, typing = content.get("room_id"), content.get("user_id"), content.get("typing")
            if isinstance(typing, bool) and self._may_speak_for(origin, room_id, user_id):
                self.services.typing.set_typing(room_id, user_id, typing, 30_000, local=False)  # type: ignore[arg-type]
                self.services.notifier.notify()
        elif kind == "m.receipt":
            await self._receipts(origin, content)
        elif kind in _DEVICE_LIST_EDUS:
            await self._device_list(origin, str(kind), content)
        elif kind == "m.direct_to_device":
            await self._to_device(origin, content)

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
                    # spec v1.4: data.thread_id ("main" or a thread root) makes the receipt threaded; one that is
                    # not a short non-empty string is malformed and the receipt passed over
                    thread_id = data.get("thread_id") if isinstance(data, dict) else None
                    if thread_id is not None and (not isinstance(thread_id, str) or not thread_id
                                                  or len(thread_id) > _MAX_ID_CHARS):  # fmt: skip
                        continue
                    if not self._may_speak_for(origin, room_id, user_id):
                        continue
                    event = self.services.store.get_event(event_ids[0])
                    if event is None or event["event"].room_id != room_id:
                        continue
                    await self.services.store.set_receipt(room_id, receipt_type, user_id, event_ids[0], ts,
                                                          thread_id)  # fmt: skip
                    changed = True
        if changed:
            self.services.notifier.notify()

    # ------------------------------------------------------------- end-to-end encryption in

    @staticmethod
    def _of_origin(user_id: Any, origin: str) -> TypeGuard[str]:
        return isinstance(user_id, str) and user_id.startswith("@") and len(user_id) <= _MAX_ID_CHARS \
            and user_id.partition(":")[2] == origin  # fmt: skip

    def _is_local(self, user_id: Any) -> bool:
        return isinstance(user_id, str) and user_id.partition(":")[2] == self.services.server_name

    async def _device_list(self, origin: str, kind: str, content: dict[str, Any]) -> None:
        """A remote user's devices or cross-signing keys changed: note it for our users who share a room."""
        user_id = content.get("user_id")
        if not self._of_origin(user_id, origin):
            self._refuse(origin, kind, "user_id is not a user of the sending server")
            return
        problem = _device_list_problem(kind, content)
        if problem is not None:
            self._refuse(origin, kind, problem)
            return
        if not any(self._is_local(u) for u in self.services.store.users_sharing_rooms(user_id)):
            self._refuse(origin, kind, "the user shares no room with a user of ours")
            return
        await self.services.store.e2ee.device_list_changed([user_id])
        self.services.device_keys.notify()

    async def _to_device(self, origin: str, content: dict[str, Any]) -> None:
        """To-device messages from a user of ``origin`` for our users' devices, queued once per message ID."""
        kind = "m.direct_to_device"
        sender, event_type, message_id = content.get("sender"), content.get("type"), content.get("message_id")
        if not self._of_origin(sender, origin):
            self._refuse(origin, kind, "sender is not a user of the sending server")
            return
        if not isinstance(message_id, str) or not 0 < len(message_id) <= _MAX_ID_CHARS:
            self._refuse(origin, kind, "message_id is not a string of 1 to 255 characters")
            return
        try:
            messages = check_messages(event_type, content.get("messages"))
        except MatrixError as exc:
            self._refuse(origin, kind, exc.message)
            return
        ours = {u: d for u, d in messages.items() if d and self._is_local(u)}
        if any(d and not self._is_local(u) for u, d in messages.items()):
            self._refuse(origin, kind, "messages for users of other servers (left out)")
        if sum(len(d) for d in ours.values()) > MAX_TARGETS:  # each user named costs a lookup: bound them first
            self._refuse(origin, kind, f"more than {MAX_TARGETS} messages")
            return
        if not ours:
            return
        try:
            await self.services.to_device.deliver(sender, str(event_type), ours, (sender, origin, message_id))
        except MatrixError as exc:  # too many target devices
            self._refuse(origin, kind, exc.message)

    def _refuse(self, origin: str, kind: str, reason: str) -> None:
        """Count an ignored EDU; log the first of its kind and reason, then at most a line per interval."""
        slot = (kind, reason)
        self.refused[slot] += 1
        total, now = self.refused[slot], self.clock()
        last = self._refusal_lines.get(slot)
        if last is None:
            log.warning("ignored %s from %s: %s (further ones are counted, summarised every %.0f s at most)", kind,
                        origin[:100], reason[:200], REFUSAL_LOG_INTERVAL_S)  # fmt: skip
        elif now - last[0] >= REFUSAL_LOG_INTERVAL_S:
            log.warning("ignored %d more %s since the last line, the latest from %s: %s (%d in all)",
                        total - last[1], kind, origin[:100], reason[:200], total)  # fmt: skip
        else:
            return
        self._refusal_lines[slot] = (now, total)

    # ------------------------------------------------------------- out

    def _others(self, room_id: str) -> set[str]:
        return self.services.rooms.dag.servers_in_room(room_id) - {self.services.server_name}

    def _local_typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> None:
        for server in self._others(room_id):
            self.sender.send_edu(server, "m.typing", {"room_id": room_id, "user_id": user_id, "typing": typing},
                                 key=(room_id, user_id))  # fmt: skip

    def _local_receipt(self, room_id: str, receipt_type: str, user_id: str, event_id: str, ts: int,
                       thread_id: str | None = None) -> None:  # fmt: skip
        data: dict[str, Any] = {"ts": ts} if thread_id is None else {"ts": ts, "thread_id": thread_id}
        content = {room_id: {receipt_type: {user_id: {"event_ids": [event_id], "data": data}}}}
        for server in self._others(room_id):  # each thread's receipt is its own EDU slot: none replaces another
            self.sender.send_edu(server, "m.receipt", content, key=(room_id, receipt_type, user_id, thread_id or ""))


def _device_list_problem(kind: str, content: dict[str, Any]) -> str | None:
    """Why an ``m.device_list_update`` or ``m.signing_key_update`` is malformed, or None."""
    if kind == "m.signing_key_update":
        for field in ("master_key", "self_signing_key"):
            if not isinstance(content.get(field, {}), dict):
                return f"{field} is not an object"
        return None
    device_id, stream_id, prev = content.get("device_id"), content.get("stream_id"), content.get("prev_id", [])
    if not isinstance(device_id, str) or len(device_id) > _MAX_ID_CHARS:
        return "device_id is not a string of at most 255 characters"
    if isinstance(stream_id, bool) or not isinstance(stream_id, (int, str)) or len(str(stream_id)) > 64:
        return "stream_id is not an integer"
    if not isinstance(prev, list) or len(prev) > _MAX_PREV_IDS:
        return f"prev_id is not a list of at most {_MAX_PREV_IDS}"
    if not isinstance(content.get("deleted", False), bool) or not isinstance(content.get("keys", {}), dict):
        return "deleted is not a boolean or keys not an object"
    return None
