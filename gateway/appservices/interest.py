"""Which bridges want which events: the spec's interest rules, with Synapse's reading of them.

A bridge is interested in an event when

* its sender, or the user a membership event is about (its ``state_key``),
  is the bridge's sender or in one of its user namespaces;
* its room's ID is in one of the bridge's room namespaces;
* one of the room's local aliases is in one of its alias namespaces;
* a local user in one of its user namespaces is joined to the room — in the
  state *before the event* (so a bridge catching up after days gets what
  its users could see then, not what today's members would), or, for
  typing, receipts and device lists, in the room's current state.

Cost: the member rule needs the room's member list. It is computed once per
state group (groups never change, so there is nothing to invalidate: a
membership change makes a new group) for every bridge at once, and kept in
a bounded LRU; which bridges cover a user ID is likewise kept per user.
Aliases are not in the room state: they are read per room and kept for
:data:`ALIAS_TTL_S`, so an alias made or removed counts within seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from lowband.gateway.appservices.registration import AppService
from lowband.gateway.homeserver.services import Services
from lowband.gateway.store.interfaces import TimelineRow

#: state groups whose interested bridges are remembered
GROUP_CACHE = 4096
#: user IDs whose covering bridges are remembered
USER_CACHE = 50_000
#: rooms whose aliases are remembered, and for how long
ALIAS_CACHE = 10_000
ALIAS_TTL_S = 5.0


class Interest:
    """Answers "does this bridge want this?" for the registered bridges of one gateway."""

    def __init__(self, services: Services, bridges: Sequence[AppService],
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.services = services
        self.bridges = list(bridges)
        self.clock = clock
        self._local_suffix = ":" + services.server_name
        self._by_group: OrderedDict[int, frozenset[str]] = OrderedDict()
        self._by_user: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._aliases: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()

    # ------------------------------------------------------------- rules

    def covering(self, user_id: str) -> frozenset[str]:
        """IDs of the bridges whose sender this is or whose user namespaces hold ``user_id`` (cached)."""
        found = self._by_user.get(user_id)
        if found is None:
            found = frozenset(b.id for b in self.bridges if b.wants_user(user_id))
            self._by_user[user_id] = found
            if len(self._by_user) > USER_CACHE:
                self._by_user.popitem(last=False)
        return found

    def wants_event(self, bridge: AppService, row: TimelineRow) -> bool:
        """Whether ``bridge`` wants the timeline event ``row``."""
        if bridge.id in self.covering(row.sender):
            return True
        if row.type == "m.room.member" and row.state_key is not None and bridge.id in self.covering(row.state_key):
            return True
        return self._wants_room(bridge, row.room_id, row.state_before)

    def wants_room_now(self, bridge: AppService, room_id: str) -> bool:
        """Whether ``bridge`` wants what happens in ``room_id`` now (typing, receipts), by its current state."""
        head = self.services.rooms.head(room_id)
        return self._wants_room(bridge, room_id, head.state_group if head is not None else None)

    def wants_user_now(self, bridge: AppService, user_id: str) -> bool:
        """Whether ``user_id`` is the bridge's (a local user in its namespaces), or shares a room it wants now."""
        if user_id.endswith(self._local_suffix) and bridge.id in self.covering(user_id):
            return True
        store = self.services.store
        rooms = [room for room, membership, _, _ in store.rooms_for_user(user_id) if membership == "join"]
        return any(self.wants_room_now(bridge, room) for room in rooms[:1000])

    # ------------------------------------------------------------- parts

    def _wants_room(self, bridge: AppService, room_id: str, group: int | None) -> bool:
        if bridge.wants_room(room_id):
            return True
        if bridge.aliases and any(bridge.wants_alias(alias) for alias in self._room_aliases(room_id)):
            return True
        return group is not None and bridge.id in self._members_interest(group)

    def _members_interest(self, group: int) -> frozenset[str]:
        """Bridges with a local user of theirs joined in state group ``group``."""
        found = self._by_group.get(group)
        if found is not None:
            self._by_group.move_to_end(group)
            return found
        rooms = self.services.rooms
        state = self.services.store.state_for_group(group)
        wanted: set[str] = set()
        for event_type, user_id in state:
            if event_type != "m.room.member" or not user_id.endswith(self._local_suffix):
                continue
            covering = self.covering(user_id) - wanted
            if covering and rooms.membership_in(state, user_id) == "join":
                wanted |= covering
                if len(wanted) == len(self.bridges):
                    break
        found = frozenset(wanted)
        self._by_group[group] = found
        if len(self._by_group) > GROUP_CACHE:
            self._by_group.popitem(last=False)
        return found

    def _room_aliases(self, room_id: str) -> tuple[str, ...]:
        now = self.clock()
        cached = self._aliases.get(room_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        aliases = tuple(self.services.store.aliases_for_room(room_id))
        self._aliases[room_id] = (now + ALIAS_TTL_S, aliases)
        self._aliases.move_to_end(room_id)
        if len(self._aliases) > ALIAS_CACHE:
            self._aliases.popitem(last=False)
        return aliases
