"""Presence between servers: ``m.presence`` EDUs out for local users' changes, in for other servers' users.

Rules:

* a local user's presence change (``homeserver/presence.py`` tells its listeners) goes to every other server
  in a room the user is joined to, as ``{"push": [{user_id, presence, last_active_ago, currently_active,
  status_msg?}]}``, coalesced per user while it waits (a later change replaces an unsent one);
* an incoming EDU is advisory and never fails a transaction: an item is taken only when the user belongs to
  the origin, is joined to a room this server holds, and has the spec's shapes (a known state, a
  ``status_msg`` of at most ``MAX_STATUS_MSG`` characters, a non-negative ``last_active_ago``); at most
  :data:`MAX_ITEMS` items of one EDU are looked at; the rest is ignored and counted in :attr:`refused`;
* with presence off in the config, nothing goes out and what comes in is ignored.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Any

from lowband.gateway.federation.sender import FederationSender
from lowband.gateway.homeserver.presence import MAX_STATUS_MSG, STATES
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.events import server_name_of

MAX_ITEMS = 100
EduHandler = Callable[[str, dict[str, Any]], Awaitable[None]]


class PresenceEdus:
    """Sends local presence changes to the servers that share a room; takes other servers' presence in."""

    def __init__(self, services: Services, sender: FederationSender) -> None:
        self.services = services
        self.sender = sender
        #: reason -> presence items ignored for it since start
        self.refused: collections.Counter[str] = collections.Counter()
        tracker = services.sync.presence
        if tracker is not None:
            tracker.listeners.append(self._local_change)

    def wrap(self, inner: EduHandler) -> EduHandler:
        """An EDU handler that takes ``m.presence`` here and passes every other EDU to ``inner``."""

        async def receive(origin: str, edu: dict[str, Any]) -> None:
            if edu.get("edu_type") == "m.presence":
                self.receive(origin, edu.get("content"))
            else:
                await inner(origin, edu)

        return receive

    def _local_change(self, user_id: str) -> None:
        tracker = self.services.sync.presence
        if tracker is None:
            return
        servers: set[str] = set()
        dag = self.services.rooms.dag
        for room_id, membership, _, _ in self.services.store.rooms_for_user(user_id):
            if membership == "join":
                servers |= dag.servers_in_room(room_id)
        servers.discard(self.services.server_name)
        if not servers:
            return
        content = {"push": [{"user_id": user_id, **tracker.content(user_id)}]}
        for server in sorted(servers):
            self.sender.send_edu(server, "m.presence", content, key=("presence", user_id))

    def receive(self, origin: str, content: Any) -> None:
        """Apply an ``m.presence`` EDU's content from ``origin`` (items that break the rules are ignored)."""
        tracker = self.services.sync.presence
        if tracker is None:
            return
        push = content.get("push") if isinstance(content, dict) else None
        if not isinstance(push, list):
            self.refused["no push list"] += 1
            return
        changed = False
        for item in push[:MAX_ITEMS]:
            reason = self._problem(origin, item)
            if reason is not None:
                self.refused[reason] += 1
                continue
            tracker.set_remote(item["user_id"], item["presence"], item.get("status_msg"),
                               item.get("last_active_ago", 0))  # fmt: skip
            changed = True
        self.refused["past the item limit"] += max(0, len(push) - MAX_ITEMS)
        if changed:
            self.services.notifier.notify()

    def _problem(self, origin: str, item: Any) -> str | None:
        if not isinstance(item, dict) or not isinstance(item.get("user_id"), str):
            return "not an object with a user_id"
        user_id = item["user_id"]
        try:
            if server_name_of(user_id) != origin or origin == self.services.server_name:
                return "user of another server"
        except ValueError:
            return "bad user_id"
        if item.get("presence") not in STATES:
            return "bad presence"
        status_msg = item.get("status_msg")
        if status_msg is not None and (not isinstance(status_msg, str) or len(status_msg) > MAX_STATUS_MSG):
            return "bad status_msg"
        ago = item.get("last_active_ago", 0)
        if not isinstance(ago, int) or isinstance(ago, bool) or ago < 0:
            return "bad last_active_ago"
        if not any(m == "join" for _, m, _, _ in self.services.store.rooms_for_user(user_id)):
            return "shares no room"
        return None
