"""What the receive path needs from the homeserver's rooms (implemented in ``homeserver``)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.room_versions import RoomVersion

StateMap = dict[tuple[str, str], str]


class KnownEvent(Protocol):
    """An event this server holds, with what it decided about it."""

    @property
    def event(self) -> Event: ...

    @property
    def rejected(self) -> str | None: ...  # the reason, None when accepted

    @property
    def outlier(self) -> bool: ...  # known (e.g. as an auth event) but not placed in the room's timeline


class RoomDag(Protocol):
    """The rooms as a DAG of events, as the receive path sees them."""

    def room_version(self, room_id: str) -> RoomVersion | None:
        """The version of a room this server takes part in, or None."""

    def room_lock(self, room_id: str) -> asyncio.Lock:
        """The lock that serialises changes to one room's DAG (local sends take it too)."""

    def known(self, event_id: str) -> KnownEvent | None:
        """An event this server holds (outliers and rejected ones included), or None."""

    def state_before(self, event_id: str) -> StateMap | None:
        """The state before a non-outlier event, or None."""

    def state_after(self, event_id: str) -> StateMap | None:
        """The state after a non-outlier event (before it, for a rejected one), or None."""

    def current_state(self, room_id: str) -> StateMap:
        """The room's current state: the state resolved across its forward extremities."""

    def forward_extremities(self, room_id: str) -> list[str]:
        """The room's forward extremities (the events new local events build on)."""

    async def store_outliers(self, room_id: str, events: list[tuple[Event, str | None]]) -> None:
        """Keep events (with their rejection reason, or None) outside the timeline."""

    async def store_remote(self, room_id: str, event: Event, state_before: StateMap, rejected: str | None,
                           soft_failed: bool, relay: bool = False) -> None:  # fmt: skip
        """Place a received event in the DAG after its prev events, with the state before it.

        A rejected event changes no state and is no forward extremity; a
        soft-failed one is stored and may enter state later through
        resolution, but is no forward extremity and is not shown to clients.
        ``relay``: this server sends it on to the room's other servers (a
        join, leave or knock it accepted as the resident server). Committed
        when this returns.
        """

    async def create_remote_room(self, room_id: str, version: RoomVersion, creator: str) -> None:
        """Start holding a room another server made (before its join's state is stored)."""

    def auth_chain(self, event_ids: list[str]) -> list[Event]:
        """Every event in the auth chains of ``event_ids`` (not including them), known to this server."""
