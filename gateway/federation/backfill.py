"""History from before this server joined a room: ``/backfill`` from a server that has it.

Rules:

* asked when a user pages ``/messages`` back past the oldest event this
  server holds in the room's timeline; one request of at most
  :data:`MAX_BATCH` events per page, to one server in the room at a time
  (the next one if it fails);
* the events go through the receive path's checks (format, signatures,
  content hash, auth chain, auth against their auth events and the state
  before them), oldest first; the state before the oldest comes from
  ``/state_ids`` at it, later ones build on the earlier ones;
* they are checked without the room's lock (a slow peer never holds up
  local sends), within one
  :class:`~lowband.gateway.federation.inbound.budget.FetchBudget` per page,
  and stored under it;
* they are stored below everything else (negative stream positions): the
  room's current state and extremities never change for history, and
  ``/sync`` never shows it as new;
* a room whose history reaches its create event has nothing more to fetch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lowband.gateway.federation.client import FederationClient, FederationError, path_segment
from lowband.gateway.federation.inbound.auth_checks import verdict
from lowband.gateway.federation.inbound.budget import FetchBudget
from lowband.gateway.federation.inbound.check_signatures import check_signatures
from lowband.gateway.federation.inbound.dag import StateMap
from lowband.gateway.federation.inbound.errors import PduDropped
from lowband.gateway.federation.inbound.fetch_auth_events import fetch_auth_chain
from lowband.gateway.federation.inbound.fetch_prev_events import in_timeline, state_after_gap
from lowband.gateway.federation.inbound.parse_incoming_pdu import Incoming, parse_for_room
from lowband.gateway.federation.keyring import KeyRing
from lowband.gateway.homeserver.rooms.dag import RoomDag
from lowband.gateway.matrix.events import Event

__all__ = ["MAX_BATCH", "Backfiller"]

log = logging.getLogger("lowband.federation")

MAX_BATCH = 50


class Backfiller:
    """Fetches and places a room's older history on demand."""

    def __init__(self, server_name: str, client: FederationClient, keyring: KeyRing, dag: RoomDag) -> None:
        self.server_name = server_name
        self.client = client
        self.keyring = keyring
        self.dag = dag
        #: events past their room's retention (MSC1763; the client API's ``SyncHandler.expired``): not stored
        #: again when a peer that kept them sends them back
        self.expired: Callable[[Event], bool] = lambda event: False

    def _backward_extremities(self, room_id: str) -> list[str]:
        """Prev events of our oldest timeline events that are not in the timeline yet."""
        wanted: list[str] = []
        for event in self.dag.earliest_events(room_id):
            for prev in event.prev_events:
                known = self.dag.known(prev)
                if known is None or known.outlier:
                    wanted.append(prev)
        return list(dict.fromkeys(wanted))[:20]

    async def backfill(self, room_id: str, limit: int = MAX_BATCH) -> int:
        """Fetch and place up to ``limit`` older events; how many were placed (0: nothing more to get)."""
        version = self.dag.room_version(room_id)
        starts = self._backward_extremities(room_id)
        if version is None or not starts:
            return 0
        servers = sorted(self.dag.servers_in_room(room_id) - {self.server_name})
        for server in servers[:5]:
            try:
                answer = await self.client.request(server, "GET", f"/_matrix/federation/v1/backfill/{path_segment(room_id)}",
                                                   query={"v": starts, "limit": str(min(limit, MAX_BATCH))},
                                                   timeout=60.0)  # fmt: skip
            except FederationError as exc:
                log.info("backfill of %s from %s failed: %s", room_id, server, exc)
                continue
            pdus = answer.get("pdus") if isinstance(answer, dict) else None
            if isinstance(pdus, list):
                placed = await self._check(room_id, server, version, pdus[: MAX_BATCH * 2], FetchBudget())
                placed = [p for p in placed if not self.expired(p[0])]
                async with self.dag.room_lock(room_id):  # only to store: a slow peer never holds up local sends
                    placed = [p for p in placed if not in_timeline(p[0].event_id, self.dag)]
                    await self.dag.store_backfilled(room_id, placed)
                return len(placed)
        return 0

    async def _check(self, room_id: str, origin: str, version: Any, pdus: list[Any],
                     budget: FetchBudget) -> list[tuple[Event, StateMap, str | None]]:  # fmt: skip
        """The events of a backfill answer that pass the checks, oldest first, with the state before each."""
        checked: list[Incoming] = []
        for raw in pdus:
            try:
                incoming = await check_signatures(parse_for_room(raw, origin, version), self.keyring, budget)
            except PduDropped as exc:
                log.info("backfilled event from %s dropped: %s", origin, exc.reason)
                continue
            known = self.dag.known(incoming.event.event_id)
            if incoming.event.room_id != room_id or (known is not None and not known.outlier):
                continue
            checked.append(incoming)
        checked.sort(key=lambda i: (i.event.depth, i.event.event_id))
        states: dict[str, StateMap] = {}
        placed: list[tuple[Event, StateMap, str | None]] = []
        for incoming in checked:
            try:
                await fetch_auth_chain(incoming, self.client, self.keyring, self.dag, budget)
                before = self._state_before(incoming, states)
                if before is None:
                    before = await self._state_from_peer(incoming, budget)
                rejected, _soft = verdict(incoming, before, self.dag)
            except PduDropped as exc:
                log.info("backfilled event %s not placed: %s", incoming.event.event_id, exc.reason)
                continue
            after = dict(before)
            event = incoming.event
            if event.state_key is not None and rejected is None:
                after[(event.type, event.state_key)] = event.event_id
            states[event.event_id] = after
            placed.append((event, before, rejected))
        return placed

    def _state_before(self, incoming: Incoming, states: dict[str, StateMap]) -> StateMap | None:
        """The state before an event whose prev events are all placed (in this batch or before); else None."""
        found: list[StateMap] = []
        for prev in incoming.event.prev_events:
            state = states.get(prev) or self.dag.state_after(prev)
            if state is None:
                return None
            found.append(state)
        if not found:
            return {}
        from lowband.gateway.federation.inbound.state_at_event import state_before

        return state_before(incoming, self.dag, {p: s for p, s in zip(incoming.event.prev_events, found, strict=True)})

    async def _state_from_peer(self, incoming: Incoming, budget: FetchBudget) -> StateMap:
        """The state before an event at the edge of what we have: asked from its server (``/state_ids``)."""
        prevs = incoming.event.prev_events
        if len(prevs) != 1:
            states = [await state_after_gap(p, incoming, self.client, self.keyring, self.dag, budget) for p in prevs[:5]]
            from lowband.gateway.federation.inbound.state_at_event import state_before

            return state_before(incoming, self.dag, dict(zip(prevs, states, strict=False)))
        return await state_after_gap(prevs[0], incoming, self.client, self.keyring, self.dag, budget)
