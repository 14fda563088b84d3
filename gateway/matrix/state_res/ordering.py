"""The two orderings of state resolution v2: reverse topological power ordering and mainline ordering.

Rules (room versions spec, v2 "State resolution" definitions):

* *power events*: ``m.room.power_levels``, ``m.room.join_rules``, and a
  ``leave`` or ``ban`` membership whose sender is not its target. Lowband
  also counts ``m.room.create`` (Synapse and ruma do): a second create event
  can only come from a broken or hostile server, and every server must sort
  it into the same place.
* *reverse topological power ordering*: Kahn's algorithm over the auth
  events among the sorted events, taking at each step the smallest ready
  event: the greater sender power first, then the smaller
  ``origin_server_ts``, then the smaller event ID. The sender's power is
  read from the event's own auth events, exactly as the auth rules read a
  level (:func:`~lowband.gateway.matrix.power_levels.power_level_for_user`,
  one implementation for both): ``users[sender]``, else ``users_default``,
  else 0; with no power levels among them, 100 for the room's creator and 0
  for others; from version 12 (MSC4289) the creators (the create event's
  sender and ``additional_creators``) have ``CREATOR_POWER_LEVEL``, above
  every level an event can hold. The create event is the one among the
  auth events, or from version 12 the one the room ID names.
* levels written as integer strings (versions 1-9) or floats (1-5) are
  read as their integer value in every version, as the auth rules and
  Synapse (``int(level)``) read them. A version that refuses those forms
  refuses the power levels event holding one, and with it every event that
  cites it, so only refused events are ranked by such a level.
* *mainline ordering* based on a power levels event P: an event's position is
  the index in P's chain of power levels ancestors [P, P1, …] of the first of
  its own power levels ancestors found there (∞ if none); the greater position
  first, then the smaller ``origin_server_ts``, then the smaller event ID.

Event IDs compare as strings (by code point, which is their UTF-8 byte order).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection

from lowband.gateway.matrix.auth_rules import BAN, CREATE, JOIN_RULES, LEAVE, MEMBER, POWER_LEVELS
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.power_levels import power_level_for_user
from lowband.gateway.matrix.state_res.loader import EventLoader

__all__ = [
    "is_power_event",
    "mainline_order",
    "reverse_topological_power_order",
    "sender_power",
]


def is_power_event(event: Event) -> bool:
    """Whether ``event`` is a power event (see the module rules)."""
    if event.state_key is None:
        return False
    if event.type in (POWER_LEVELS, JOIN_RULES, CREATE):
        return event.state_key == ""
    if event.type == MEMBER:
        return event.content.get("membership") in (LEAVE, BAN) and event.sender != event.state_key
    return False


def sender_power(loader: EventLoader, event: Event) -> int:
    """The power level of ``event``'s sender as its own auth events say (see the module rules).

    Loads the event's auth events (and, from version 12, the create event
    its room ID names). One dictionary lookup in the power levels: the
    ``users`` map is never copied or walked, however large.
    """
    power_levels = None
    for auth_id in event.auth_events:
        auth_event = loader.event(auth_id)
        if auth_event.type == POWER_LEVELS and auth_event.state_key == "":
            power_levels = auth_event.content
            break
    create = loader.create_event(event)
    return power_level_for_user(power_levels, create, event.sender, room_version=loader.room_version)


def reverse_topological_power_order(loader: EventLoader, events: Collection[str]) -> list[str]:
    """Sort ``events`` by the reverse topological power ordering, earliest first.

    The topology is the ``auth_events`` edges between events of ``events``.
    Events on an auth cycle (impossible with hash event IDs; a hostile
    version 1-2 DAG could have one) are left out: none of them could have
    passed auth. Cost: each event and its auth events loaded once, then
    O(n log n).
    """
    members = set(events)
    pending: dict[str, int] = {}  # event -> how many of its auth events are still unsorted
    cited_by: dict[str, list[str]] = {event_id: [] for event_id in members}
    for event_id in members:
        auth_ids = {a for a in loader.auth_ids(event_id) if a in members and a != event_id}
        pending[event_id] = len(auth_ids)
        for auth_id in auth_ids:
            cited_by[auth_id].append(event_id)

    def key(event_id: str) -> tuple[int, int, str]:
        event = loader.event(event_id)
        return (-sender_power(loader, event), event.origin_server_ts, event_id)

    ready = [key(event_id) for event_id, count in pending.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[str] = []
    while ready:
        event_id = heapq.heappop(ready)[2]
        ordered.append(event_id)
        for child in cited_by[event_id]:
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(ready, key(child))
    return ordered


def mainline_order(loader: EventLoader, events: Collection[str], power_levels_id: str | None) -> list[str]:
    """Sort ``events`` by the mainline ordering based on ``power_levels_id``, earliest first.

    ``None`` (no power levels in the partial state) makes an empty mainline:
    every position is ∞ and the order is by timestamp, then ID. Positions
    are memoised per power levels event, so the walks cost O(power levels
    history) in all, not per event.
    """
    mainline: dict[str, int] = {}
    current = power_levels_id
    while current is not None and current not in mainline:  # the membership test stops a hostile cycle
        mainline[current] = len(mainline)
        current = _power_levels_parent(loader, current)

    positions: dict[str, float] = {}  # power levels event -> position of the first mainline event from it

    def position_from(first: str | None) -> float:
        walked: dict[str, None] = {}  # insertion-ordered set
        found = math.inf
        current = first
        while current is not None:
            if current in positions:
                found = positions[current]
                break
            if current in mainline:
                found = mainline[current]
                break
            if current in walked:
                break  # a power levels cycle reaches no mainline event
            walked[current] = None
            current = _power_levels_parent(loader, current)
        for event_id in walked:
            positions[event_id] = found
        return found

    def key(event_id: str) -> tuple[float, int, str]:
        event = loader.event(event_id)
        return (-position_from(_power_levels_parent(loader, event_id)), event.origin_server_ts, event_id)

    return sorted(events, key=key)


def _power_levels_parent(loader: EventLoader, event_id: str) -> str | None:
    """The first ``m.room.power_levels`` among the event's auth events, or ``None``."""
    for auth_id in loader.auth_ids(event_id):
        auth_event = loader.event(auth_id)
        if auth_event.type == POWER_LEVELS and auth_event.state_key == "":
            return auth_id
    return None
