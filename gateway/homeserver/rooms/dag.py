"""The rooms as DAGs of events from many servers: what federation reads and writes.

Rules:

* a received event is placed after its prev events with the state before it
  the receive path computed; the state after it adds it when it is an
  accepted state event. State maps are stored as state groups, reusing the
  group of a prev event or of the current state when the map is the same,
  or storing the difference from the closest one;
* a rejected or soft-failed event is stored (it may be asked for, and a
  later event may cite it) but is no forward extremity and never shown to
  clients; an accepted one replaces the extremities it cites;
* the current state is the state after the one extremity, or the state
  resolved across several; the memberships that change with it are written
  in the same transaction, so sync and ``store.membership`` follow the
  resolved state, not the last member event received;
* everything happens under the room's lock, the one local sends take:
  a local send always builds on the extremities and current state this
  module leaves;
* outliers (auth chains, state fetched at a gap) are kept outside the
  timeline and without state groups, and placed later if they arrive as
  part of the DAG.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from lowband.gateway.homeserver.rooms.lookups import RoomHead, RoomLookups
from lowband.gateway.homeserver.rooms.sending import EventSender, Sent
from lowband.gateway.matrix.events import Event, server_name_of
from lowband.gateway.matrix.identifiers import create_event_id_of_room
from lowband.gateway.matrix.room_versions import RoomVersion
from lowband.gateway.matrix.state_res import StateResolutionError, resolve_state
from lowband.gateway.store.interfaces import EventWrite, RoomHeadRow, StateGroupWrite, StateMap, Store

__all__ = ["KnownEvent", "RoomDag"]

log = logging.getLogger(__name__)

_AUTH_CHAIN_LIMIT = 100_000
_WALK_LIMIT = 10_000


class KnownEvent:
    """An event this server holds, with what it decided about it."""

    __slots__ = ("event", "rejected", "outlier", "soft_failed", "stream", "state_before", "state_after")

    def __init__(self, row: dict[str, Any]) -> None:
        self.event: Event = row["event"]
        self.rejected: str | None = row["rejected"]
        self.outlier: bool = bool(row.get("outlier"))
        self.soft_failed: bool = bool(row.get("soft_failed"))
        self.stream: int = row["stream"]
        self.state_before: int | None = row["state_before"]
        self.state_after: int | None = row["state_after"]


class RoomDag:
    """Rooms as DAGs over the store and the rooms' heads (see the module rules)."""

    def __init__(self, store: Store, lookups: RoomLookups, sender: EventSender, server_name: str) -> None:
        self.store = store
        self.lookups = lookups
        self.sender = sender
        self.server_name = server_name
        self._known: OrderedDict[str, KnownEvent] = OrderedDict()
        self._pending_heads: dict[str, RoomHead] = {}

    # ------------------------------------------------------------- reading

    def room_version(self, room_id: str) -> RoomVersion | None:
        """The version of a room this server takes part in, or None."""
        head = self.lookups.head(room_id) or self._pending_heads.get(room_id)
        return head.version if head is not None else None

    def room_lock(self, room_id: str) -> asyncio.Lock:
        """The lock that serialises changes to one room (local sends take it too)."""
        head = self.lookups.head(room_id) or self._pending_heads.get(room_id)
        if head is None:
            raise KeyError(room_id)
        return head.lock

    def known(self, event_id: str) -> KnownEvent | None:
        """An event this server holds (outliers and rejected ones included), or None."""
        cached = self._known.get(event_id)
        if cached is not None:
            return cached
        row = self.store.get_event(event_id)
        if row is None:
            return None
        known = KnownEvent(dict(row))
        self._known[event_id] = known
        if len(self._known) > 20_000:
            self._known.popitem(last=False)
        return known

    def _forget(self, event_id: str) -> None:
        self._known.pop(event_id, None)

    def forget_events(self, event_ids: list[str]) -> None:
        """Drop events from the cache of known events (they were deleted from the store: retention)."""
        for event_id in event_ids:
            self._known.pop(event_id, None)

    def state_before(self, event_id: str) -> StateMap | None:
        """The state before a placed event, or None (unknown, or an outlier)."""
        known = self.known(event_id)
        if known is None or known.outlier:
            return None
        return self.store.state_for_group(known.state_before)

    def state_after(self, event_id: str) -> StateMap | None:
        """The state after a placed event (before it, for a rejected one), or None."""
        known = self.known(event_id)
        if known is None or known.outlier:
            return None
        return self.store.state_for_group(known.state_after)

    def current_state(self, room_id: str) -> StateMap:
        """The room's current state ({} for an unknown room)."""
        return self.lookups.current_state(room_id)

    def forward_extremities(self, room_id: str) -> list[str]:
        """The room's forward extremities."""
        head = self.lookups.head(room_id)
        return list(head.extremities) if head is not None else []

    def state_content(self, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any] | None:
        """Content of a current state event, or None."""
        return self.lookups.state_content(self.current_state(room_id), event_type, state_key)

    def servers_in_room(self, room_id: str) -> set[str]:
        """Servers with a joined member in the current state."""
        head = self.lookups.head(room_id)
        return set(self.lookups.servers_in_group(head.state_group)) if head is not None else set()

    def servers_of(self, event_id: str) -> set[str]:
        """The servers an event of ours goes to (``RoomLookups.destinations``)."""
        known = self.known(event_id)
        if known is None or known.outlier:
            return set()
        return self.lookups.destinations(known.event, known.state_before, known.state_after)

    def pdu_of(self, event_id: str) -> dict[str, Any] | None:
        """The PDU of an event, as stored."""
        known = self.known(event_id)
        return known.event.pdu if known is not None else None

    def server_may_see(self, server: str, event: Event) -> bool:
        """Whether ``server`` may read ``event``: history visibility at the event, as for its users.

        A server sees what one of its users could: ``world_readable`` and
        ``shared`` history to any server with a member that joined at some
        point; otherwise it must have a joined (or, for ``invited``, an
        invited) member at the event.
        """
        state = self.state_after(event.event_id)
        if state is None:
            return False
        visibility = (self.lookups.state_content(state, "m.room.history_visibility") or {}).get("history_visibility")
        if visibility == "world_readable":
            return True
        memberships = [self.lookups.membership_in(state, user) for (t, user) in state
                       if t == "m.room.member" and user.endswith(":" + server)]  # fmt: skip
        if "join" in memberships:
            return True
        if visibility == "invited" and "invite" in memberships:
            return True
        if visibility in (None, "shared"):
            current = self.current_state(event.room_id)
            return any(self.lookups.membership_in(current, user) == "join" for (t, user) in current
                       if t == "m.room.member" and user.endswith(":" + server))  # fmt: skip
        return False

    def auth_chain(self, event_ids: list[str]) -> list[Event]:
        """Every known event in the auth chains of ``event_ids`` (not including them), oldest first."""
        seen: dict[str, Event] = {}
        todo = [a for e in event_ids if (k := self.known(e)) is not None for a in k.event.auth_events]
        for event_id in event_ids:
            known = self.known(event_id)
            if known is not None:
                create = self._create_of(known.event)
                if create:
                    todo.append(create)
        while todo and len(seen) < _AUTH_CHAIN_LIMIT:
            current = todo.pop()
            if current in seen:
                continue
            known = self.known(current)
            if known is None:
                continue
            seen[current] = known.event
            todo.extend(known.event.auth_events)
        return sorted(seen.values(), key=lambda e: (e.depth, e.event_id))

    def _create_of(self, event: Event) -> str | None:
        version = self.room_version(event.room_id)
        if version is not None and version.room_id_is_create_hash and event.type != "m.room.create":
            return create_event_id_of_room(event.room_id)
        return None

    def walk_back(self, room_id: str, starts: list[str], limit: int, exclude: set[str]) -> list[Event]:
        """Events before ``starts`` (breadth first through prev_events), not ``exclude``, at most ``limit``.

        The starting events themselves are included (as ``/backfill`` asks),
        unless excluded; rejected events and outliers are skipped.
        """
        out: list[Event] = []
        seen = set(exclude)
        queue = [s for s in starts if s not in seen]
        steps = 0
        while queue and len(out) < limit and steps < _WALK_LIMIT:
            steps += 1
            current = queue.pop(0)
            if current in seen:
                continue
            seen.add(current)
            known = self.known(current)
            if known is None or known.event.room_id != room_id:
                continue
            if known.rejected is None and not known.outlier:
                out.append(known.event)
            queue.extend(p for p in known.event.prev_events if p not in seen)
        return out

    # ------------------------------------------------------------- writing

    async def create_remote_room(self, room_id: str, version: RoomVersion, creator: str) -> None:
        """Start holding a room another server made; its row is written with its first placed event."""
        if self.lookups.head(room_id) is None and room_id not in self._pending_heads:
            self._pending_heads[room_id] = RoomHead(room_id, creator, None, [], 0, version)

    async def store_outliers(self, room_id: str, events: list[tuple[Event, str | None]]) -> None:
        """Keep events (with their rejection reason) outside the timeline; committed on return."""
        writes = [EventWrite(event, self.store.next_stream(), None, None, rejected=rejected, outlier=True)
                  for event, rejected in events if self.known(event.event_id) is None]  # fmt: skip
        if writes:
            await self.store.persist_events(writes, None)
            for write in writes:
                self._forget(write.event.event_id)

    def _group_for(self, room_id: str, state: StateMap, candidates: list[int | None],
                   made: list[StateGroupWrite]) -> int | None:  # fmt: skip
        """A state group holding exactly ``state``: one of ``candidates``, or a new one (appended to ``made``)."""
        if not state:
            return None
        best: tuple[int, StateMap] | None = None
        for group in dict.fromkeys(candidates):
            if group is None:
                continue
            existing = self.store.state_for_group(group)
            if existing == state:
                return group
            if existing.keys() <= state.keys():
                delta = {k: v for k, v in state.items() if existing.get(k) != v}
                if best is None or len(delta) < len(best[1]):
                    best = (group, delta)
        new = self.store.new_state_group(room_id, best[0], best[1]) if best else \
            self.store.new_state_group(room_id, None, dict(state))  # fmt: skip
        made.append(new)
        return new.group

    def _resolve(self, version: RoomVersion, states: list[StateMap]) -> StateMap:
        if all(s == states[0] for s in states[1:]):
            return dict(states[0])

        def get_event(event_id: str) -> Event | None:
            known = self.known(event_id)
            return known.event if known is not None else None

        def is_rejected(event_id: str) -> bool:
            known = self.known(event_id)
            return known is not None and known.rejected is not None

        return dict(resolve_state(version, states, get_event, is_rejected=is_rejected))

    def _membership_changes(self, old: StateMap, new: StateMap, placing: Event) -> tuple[tuple[str, str, str], ...]:
        changes: list[tuple[str, str, str]] = []
        for (event_type, user), event_id in new.items():
            if event_type == "m.room.member" and old.get((event_type, user)) != event_id:
                event = placing if event_id == placing.event_id else self.lookups.event(event_id)
                membership = event.content.get("membership") if event is not None else None
                changes.append((user, membership if isinstance(membership, str) else "leave", event_id))
        return tuple(changes)

    def earliest_events(self, room_id: str, count: int = 5) -> list[Event]:
        """The room's oldest events in this server's timeline (backfill starts from their prev events)."""
        rows = self.store.room_events(room_id, after=-(1 << 62), upto=self.store.persisted, limit=count,
                                      backwards=False)  # fmt: skip
        return [row["event"] for row in rows]

    async def store_backfilled(self, room_id: str, placed: list[tuple[Event, StateMap, str | None]]) -> None:
        """Place history fetched from a peer (oldest first), below everything in the timeline; committed on return.

        Each entry is (event, state before it, rejection reason). The room's
        extremities, current state and memberships do not change: this is
        the past. The caller holds the room's lock.
        """
        head = self.lookups.head(room_id)
        if head is None or not placed:
            return
        made: list[StateGroupWrite] = []
        writes: list[EventWrite] = []
        positions = self.store.backfill_positions(len(placed))
        groups: dict[str, int | None] = {}
        for (event, state_before, rejected), position in zip(placed, positions, strict=True):
            prev_groups = [groups.get(p) if p in groups else (k.state_after if (k := self.known(p)) else None)
                           for p in event.prev_events]  # fmt: skip
            before_group = self._group_for(room_id, state_before, prev_groups, made)
            after_group = before_group
            if event.state_key is not None and rejected is None:
                after = {**state_before, (event.type, event.state_key): event.event_id}
                after_group = self._group_for(room_id, after, [before_group], made)
            groups[event.event_id] = after_group
            writes.append(EventWrite(event, position, before_group, after_group, rejected=rejected,
                                     memberships=(), extra_groups=tuple(made),
                                     replaces_outlier=True))  # fmt: skip
            made = []
        await self.store.persist_events(writes, None)
        for write in writes:
            self._forget(write.event.event_id)
            self.lookups.remember(write.event)

    async def store_remote(self, room_id: str, event: Event, state_before: StateMap, rejected: str | None,
                           soft_failed: bool, relay: bool = False) -> None:  # fmt: skip
        """Place a received event (or one of ours built elsewhere) in the DAG; committed on return.

        The caller holds the room's lock. See the module rules.
        """
        head = self.lookups.head(room_id)
        if head is None:
            head = self._pending_heads.get(room_id)
            if head is None:
                raise KeyError(f"unknown room {room_id}")
        version = head.version
        made: list[StateGroupWrite] = []
        prev_groups = [k.state_after for p in event.prev_events if (k := self.known(p)) is not None]
        before_group = self._group_for(room_id, state_before, [*prev_groups, head.state_group], made)
        after_group = before_group
        state_after = dict(state_before)
        if event.state_key is not None and rejected is None:
            state_after[(event.type, event.state_key)] = event.event_id
            after_group = self._group_for(room_id, state_after, [before_group], made)
        old_current = self.store.state_for_group(head.state_group)
        extremities = list(head.extremities)
        current_group = head.state_group
        current = old_current
        if rejected is None and not soft_failed:
            extremities = [e for e in extremities if e not in event.prev_events] + [event.event_id]
            if extremities == [event.event_id]:
                current, current_group = state_after, after_group
            else:
                states = [state_after if e == event.event_id else (self.state_after(e) or {}) for e in extremities]
                try:
                    current = self._resolve(version, states)
                except StateResolutionError as exc:
                    log.warning("room %s: the state across its extremities cannot be resolved (%s); "
                                "keeping the new event's", room_id, exc)  # fmt: skip
                    current = state_after
                current_group = self._group_for(room_id, current, [after_group, head.state_group], made)
        memberships = self._membership_changes(old_current, current, event)
        groups = {g.group: g for g in made}
        new_group = groups.pop(after_group, None) if after_group is not None else None
        write = EventWrite(event, self.store.next_stream(), before_group, after_group, new_group,
                           rejected=rejected, soft_failed=soft_failed, memberships=memberships, federate=relay,
                           extra_groups=tuple(groups.values()), replaces_outlier=True)  # fmt: skip
        room_row: RoomHeadRow = {
            "room_version": version.identifier, "creator": head.creator, "state_group": current_group,
            "extremities": extremities[-20:], "depth": max(head.depth, event.depth),
        }  # fmt: skip
        await self.store.persist_events([write], room_row)
        self._forget(event.event_id)
        head.extremities = extremities[-20:]
        head.state_group = current_group
        head.depth = max(head.depth, event.depth)
        if room_id in self._pending_heads:
            del self._pending_heads[room_id]
            self.lookups.add_head(head)
        self.lookups.remember(event)
        if version.events_carry_id:
            self.lookups.remember_hash(event, version)
        if rejected is None and not soft_failed:
            self.sender.announce(Sent(event, write.position))
        if relay:
            self.sender.announce_logged(write.position, event.event_id)


def server_of(user_id: str) -> str | None:
    """The server name of a user ID, or None when it has none."""
    try:
        return server_name_of(user_id)
    except ValueError:
        return None


ServersOf = Callable[[str], set[str]]
