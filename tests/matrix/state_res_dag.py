"""Hand-built room DAGs for the state resolution tests.

Events carry readable IDs (``$PA``, ``$T1``) and no signatures or hashes:
state resolution never looks at them. Two ways to build a room:

* :class:`Room` grows a DAG from named events and ``prev_events`` chains, the
  way servers do: it walks the DAG in topological order (ties by the order
  the events were declared), stamps ``origin_server_ts`` in that order, takes
  the state before each event from its parents (resolving with
  :func:`resolve_state` where branches meet) and picks the event's
  ``auth_events`` from that state. It does not check auth when building: a
  branch may hold events that the resolution later throws out, which is the
  point of the tests.
* :func:`make_event` builds one event with explicit ``auth_events``, for the
  graphs that servers only reach through partial synchronisation (MSC4297).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lowband.gateway.matrix.auth_rules import StateKey, auth_types_for_event
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.room_versions import V10, RoomVersion
from lowband.gateway.matrix.state_res import resolve_state

ROOM_ID = "!room:example.test"
ALICE = "@alice:example.test"  # creator, 100
BOB = "@bob:example.test"
CAROL = "@carol:example.test"
ZARA = "@zara:example.test"
EVE = "@eve:example.test"  # not in the base room
FRED = "@fred:example.test"  # not in the base room

CREATE, MEMBER, POWER_LEVELS, JOIN_RULES, TOPIC, MESSAGE = (
    "m.room.create",
    "m.room.member",
    "m.room.power_levels",
    "m.room.join_rules",
    "m.room.topic",
    "m.room.message",
)
POWER: StateKey = (POWER_LEVELS, "")
RULES: StateKey = (JOIN_RULES, "")
TOPIC_KEY: StateKey = (TOPIC, "")
JOIN, LEAVE, BAN = {"membership": "join"}, {"membership": "leave"}, {"membership": "ban"}


def member(user: str) -> StateKey:
    return (MEMBER, user)


def eid(name: str) -> str:
    """The event ID of a named event."""
    return "$" + name


def make_event(
    name: str,
    sender: str,
    type: str,
    state_key: str | None,
    content: Mapping[str, Any],
    *,
    auth: Iterable[str] = (),
    prev: Iterable[str] = (),
    ts: int = 0,
    room_id: str | None = ROOM_ID,
) -> Event:
    """An event called ``$name``; ``auth`` and ``prev`` are names too. ``room_id=None`` leaves it out."""
    pdu: dict[str, Any] = {
        "sender": sender,
        "type": type,
        "content": dict(content),
        "auth_events": [eid(a) for a in auth],
        "prev_events": [eid(p) for p in prev],
        "depth": 0,
        "origin_server_ts": ts,
        "hashes": {"sha256": ""},
        "signatures": {},
    }
    if room_id is not None:
        pdu["room_id"] = room_id
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event(eid(name), pdu)


@dataclass(frozen=True)
class _Declared:
    sender: str
    type: str
    state_key: str | None
    content: Mapping[str, Any]


class Room:
    """A room DAG declared by name, built in one go by :meth:`build`.

    Every room starts the same: ``create`` (Alice), ``alice-join``, ``pl0``
    (Alice 100, everything else default), ``jr0`` (public), ``bob-join``,
    ``carol-join``, ``zara-join``, then ``start``, a message by Zara. Tests
    add events, link them with :meth:`chain` and end their branches at
    ``end``, another message by Zara.
    """

    def __init__(self, room_version: RoomVersion = V10, *, join_rule: str = "public") -> None:
        self.room_version = room_version
        self._declared: dict[str, _Declared] = {}
        self._prevs: dict[str, list[str]] = {}
        self.events: dict[str, Event] = {}
        self._state_after: dict[str, dict[StateKey, str]] = {}
        self.event("create", ALICE, CREATE, "", {"creator": ALICE, "room_version": room_version.identifier})
        self.event("alice-join", ALICE, MEMBER, ALICE, JOIN)
        self.event("pl0", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100}})
        self.event("jr0", ALICE, JOIN_RULES, "", {"join_rule": join_rule})
        self.event("bob-join", BOB, MEMBER, BOB, JOIN)
        self.event("carol-join", CAROL, MEMBER, CAROL, JOIN)
        self.event("zara-join", ZARA, MEMBER, ZARA, JOIN)
        self.event("start", ZARA, MESSAGE, None, {"body": "start"})
        self.event("end", ZARA, MESSAGE, None, {"body": "end"})
        self.chain("create", "alice-join", "pl0", "jr0", "bob-join", "carol-join", "zara-join", "start")

    def event(self, name: str, sender: str, type: str, state_key: str | None, content: Mapping[str, Any]) -> None:
        """Declare an event (its place in the DAG comes from :meth:`chain`)."""
        assert name not in self._declared, name
        self._declared[name] = _Declared(sender, type, state_key, content)
        self._prevs[name] = []

    def chain(self, *names: str) -> None:
        """Link ``names`` oldest first: each one's ``prev_events`` gets the one before it."""
        for older, newer in itertools.pairwise(names):
            self._prevs[newer].append(older)

    def build(self) -> Room:
        """Build every event; ``origin_server_ts`` follows the build order. Returns ``self``."""
        order = list(self._declared)
        position = {name: index for index, name in enumerate(order)}
        waiting = {name: len(set(prevs)) for name, prevs in self._prevs.items()}
        children: dict[str, list[str]] = {name: [] for name in order}
        for name, prevs in self._prevs.items():
            for prev in set(prevs):
                children[prev].append(name)
        ready = [(position[name], name) for name, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        while ready:
            _, name = heapq.heappop(ready)
            self._build_one(name, ts=len(self.events))
            for child in children[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, (position[child], child))
        assert len(self.events) == len(self._declared), "the prev_events graph has a cycle"
        return self

    def _build_one(self, name: str, ts: int) -> None:
        declared = self._declared[name]
        prevs = self._prevs[name]
        before = self.resolve([self._state_after[p] for p in prevs]) if prevs else {}
        wanted = auth_types_for_event(declared.type, declared.sender, declared.state_key, declared.content)
        auth = [before[key][1:] for key in wanted if key in before]
        self.events[eid(name)] = make_event(
            name, declared.sender, declared.type, declared.state_key, declared.content, auth=auth, prev=prevs, ts=ts
        )
        after = dict(before)
        if declared.state_key is not None:
            after[(declared.type, declared.state_key)] = eid(name)
        self._state_after[name] = after

    def resolve(self, state_sets: list[dict[StateKey, str]], **options: Any) -> dict[StateKey, str]:
        """:func:`resolve_state` on this room's events."""
        if len(state_sets) == 1:
            return dict(state_sets[0])
        return resolve_state(self.room_version, state_sets, self.events.get, **options)

    def state_after(self, name: str) -> dict[StateKey, str]:
        """The state after the named event (after :meth:`build`)."""
        return dict(self._state_after[name])

    def changes(self) -> dict[StateKey, str]:
        """What the state at ``end`` holds that the state at ``start`` did not: key -> event name."""
        start, end = self._state_after["start"], self._state_after["end"]
        return {key: value[1:] for key, value in end.items() if start.get(key) != value} | {
            key: "(gone)" for key in start.keys() - end.keys()
        }

    def ts(self, name: str) -> int:
        return self.events[eid(name)].origin_server_ts

    def auth_chain(self, event_id: str) -> set[str]:
        """Brute-force auth chain of an event (the oracle for the ``auth_chain`` option)."""
        found: set[str] = set()
        stack = list(self.events[event_id].auth_events)
        while stack:
            current = stack.pop()
            if current not in found:
                found.add(current)
                stack.extend(self.events[current].auth_events)
        return found
