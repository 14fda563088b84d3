"""The room service: one object the rest of the gateway holds, wiring the room modules together.

Each concern lives in its own module and :class:`RoomService` hands every
call to the one that owns it: lookups (heads, events, state), sending,
creation, membership. The parts share one :class:`RoomLookups`, so a head
advanced by a send is the head the next creation or membership change sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lowband.gateway.homeserver.rooms.creation import RoomCreator
from lowband.gateway.homeserver.rooms.dag import RoomDag
from lowband.gateway.homeserver.rooms.lookups import RoomHead, RoomLookups
from lowband.gateway.homeserver.rooms.membership import MembershipChanges
from lowband.gateway.homeserver.rooms.sending import EventSender, SendRequest, Sent
from lowband.gateway.homeserver.rooms.upgrade import RoomUpgrader
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.room_versions import RoomVersion
from lowband.gateway.matrix.signing import SigningKey
from lowband.gateway.store.interfaces import StateMap, Store


class RoomService:
    """Creates rooms and sends events as local users."""

    def __init__(
        self,
        store: Store,
        server_name: str,
        signing_key: SigningKey,
        on_new_event: Callable[[Sent], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.server_name = server_name
        self.signing_key = signing_key
        self.lookups = RoomLookups(store)
        self.sender = EventSender(store, self.lookups, server_name, signing_key, clock)
        self.creator = RoomCreator(store, self.lookups, self.sender, server_name, signing_key)
        self.memberships = MembershipChanges(store, self.lookups, self.sender, server_name)
        self.dag = RoomDag(store, self.lookups, self.sender, server_name)
        self.upgrader = RoomUpgrader(store, self.lookups, self.sender, self.creator, server_name)
        if on_new_event is not None:
            self.sender.add_listener(on_new_event)

    @property
    def listeners(self) -> list[Callable[[Sent], None]]:
        """Who is told about every committed local event (see :meth:`add_listener`)."""
        return self.sender.listeners

    @property
    def _pending_txns(self) -> dict[tuple[str, str, str], Any]:
        # Transactions in flight; tests/homeserver/test_room_batch.py clears them to fake a second writer.
        return self.sender.pending_txns

    def add_listener(self, listener: Callable[[Sent], None]) -> None:
        """Call ``listener`` with every committed local event (in commit order per room)."""
        self.sender.add_listener(listener)

    def now_ms(self) -> int:
        """The clock in ms."""
        return self.sender.now_ms()

    # ------------------------------------------------------------- lookups

    def head(self, room_id: str) -> RoomHead | None:
        """The room's head, loaded from the store on first use; None if unknown."""
        return self.lookups.head(room_id)

    def room_version(self, room_id: str) -> RoomVersion:
        """The version of a room this server knows (``room_versions.DEFAULT`` for an unknown room)."""
        return self.lookups.room_version(room_id)

    def event(self, event_id: str) -> Event | None:
        """An accepted or rejected event by ID (cached), or None."""
        return self.lookups.event(event_id)

    def current_state(self, room_id: str) -> StateMap:
        """Current state map of a room ({} when unknown)."""
        return self.lookups.current_state(room_id)

    def state_event(self, room_id: str, event_type: str, state_key: str = "") -> Event | None:
        """Current state event of one (type, state_key), or None."""
        return self.lookups.state_event(room_id, event_type, state_key)

    def state_content(self, state: StateMap, event_type: str, state_key: str = "") -> dict[str, Any] | None:
        """Content of a state event in a given state map, or None."""
        return self.lookups.state_content(state, event_type, state_key)

    def membership_in(self, state: StateMap, user_id: str) -> str | None:
        """A user's membership in a state map, or None."""
        return self.lookups.membership_in(state, user_id)

    def joined_members(self, room_id: str) -> list[str]:
        """Users whose current membership is join."""
        return self.lookups.joined_members(room_id)

    def power_level(self, room_id: str, user_id: str) -> int:
        """A user's current power level in the room."""
        return self.lookups.power_level(room_id, user_id)

    # ------------------------------------------------------------- sending

    async def send(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        *,
        state_key: str | None = None,
        redacts: str | None = None,
        txn: tuple[str, str, str] | None = None,
        origin_server_ts: int | None = None,
    ) -> Sent:
        """Build, authorise and persist one event as ``sender``; see :meth:`EventSender.send`.

        Raises MatrixError: M_NOT_FOUND for an unknown room, M_FORBIDDEN when
        the auth rules refuse, M_BAD_JSON / M_TOO_LARGE for a malformed event.
        """
        return await self.sender.send(sender, room_id, event_type, content, state_key=state_key, redacts=redacts,
                                      txn=txn, origin_server_ts=origin_server_ts)  # fmt: skip

    async def send_batch(self, room_id: str, requests: list[SendRequest]) -> list[Sent | MatrixError]:
        """Send several events into one room, in order, committed together; see :meth:`EventSender.send_batch`."""
        return await self.sender.send_batch(room_id, requests)

    # ------------------------------------------------------------ creating

    def new_room_id(self) -> str:
        """A fresh room ID on this server."""
        return self.creator.new_room_id()

    async def create_room(self, creator: str, body: dict[str, Any]) -> str:
        """Create a room as the /createRoom body asks; returns its ID. See :meth:`RoomCreator.create_room`."""
        return await self.creator.create_room(creator, body)

    async def upgrade_room(self, user_id: str, room_id: str, new_version: Any, additional_creators: Any = None) -> str:
        """Replace a room by one of ``new_version``; returns the new room's ID. See :meth:`RoomUpgrader.upgrade`."""
        return await self.upgrader.upgrade(user_id, room_id, new_version, additional_creators)

    # ---------------------------------------------------------- membership

    async def set_membership(
        self, sender: str, room_id: str, target: str, membership: str, reason: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Sent:  # fmt: skip
        """Send a membership event (join, invite, leave, ban; leave on another user is a kick).

        Raises MatrixError as :meth:`send` does.
        """
        return await self.memberships.set_membership(sender, room_id, target, membership, reason, extra)
