"""Hand-built room DAGs for the state resolution tests.

Events carry readable IDs (``$PA``, ``$T1``) and no signatures or hashes:
state resolution never looks at them. Each room is a room of one version, as
its auth rules need it: the create event names that version, a version 12
room's ID is its create event's (real) reference hash and its events never
cite the create event (MSC4291), and version 12 power levels leave the
creator out (a creator has no level: MSC4289). Two ways to build a room:

* :class:`Room` grows a DAG from named events and ``prev_events`` chains, the
  way servers do: it walks the DAG in topological order (ties by the order
  the events were declared), stamps ``origin_server_ts`` in that order, takes
  the state before each event from its parents (resolving with
  :func:`resolve_state` where branches meet) and picks the event's
  ``auth_events`` from that state. It does not check auth when building: a
  branch may hold events that the resolution later throws out, which is the
  point of the tests.
* :class:`HandRoom` adds events with explicit ``auth_events``, for the graphs
  that servers only reach through partial synchronisation (MSC4297);
  :func:`make_event` builds one such event on its own.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lowband.gateway.matrix.auth_rules import (
    AuthError,
    StateKey,
    auth_state_from_events,
    auth_types_for_event,
    check_auth,
)
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.identifiers import create_event_id_of_room, room_id_of_create_event
from lowband.gateway.matrix.room_versions import V10, RoomVersion
from lowband.gateway.matrix.state_res import resolve_state

ROOM_ID = "!room:example.test"  # versions 2-11; a version 12 room's ID is its create event's
ALICE = "@alice:example.test"  # creator, 100 (version 12: a creator, above every level)
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


def create_content(version: RoomVersion, **extra: Any) -> dict[str, Any]:
    """Alice's create event content for a room of ``version``: ``creator`` only before version 11."""
    content: dict[str, Any] = {"room_version": version.identifier, **extra}
    if not version.implicit_room_creator:
        content["creator"] = ALICE
    return content


def for_version(type: str, content: Mapping[str, Any], version: RoomVersion) -> Mapping[str, Any]:
    """``content`` as a server of ``version`` writes it: from version 12 power levels leave Alice's 100 out.

    A creator has no level in version 12 and the rules refuse power levels
    that give one (MSC4289); only Alice's usual entry (100) goes, so a test
    that gives her another level still sees the refusal.
    """
    users = content.get("users") if type == POWER_LEVELS else None
    if version.privileged_creators and isinstance(users, dict) and users.get(ALICE) == 100:
        return {**content, "users": {user: level for user, level in users.items() if user != ALICE}}
    return content


def make_create(version: RoomVersion, *, ts: int = 0, **extra: Any) -> Event:
    """Alice's create event of a room of ``version`` (see :func:`create_content`; ``extra`` goes in its content).

    Up to version 11 it is ``$create`` in :data:`ROOM_ID`; in version 12 it
    has no ``room_id`` and its ID is its reference hash, which names the room.
    """
    content = create_content(version, **extra)
    if not version.room_id_is_create_hash:
        return make_event("create", ALICE, CREATE, "", content, ts=ts)
    return Event.from_pdu(_pdu(ALICE, CREATE, "", content, [], [], ts, None), version)


def room_id_of(create: Event, version: RoomVersion) -> str:
    """The ID of the room ``create`` made: :data:`ROOM_ID` up to version 11, its own ID's in version 12."""
    return room_id_of_create_event(create.event_id) if version.room_id_is_create_hash else ROOM_ID


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
    pdu = _pdu(sender, type, state_key, content, [eid(a) for a in auth], [eid(p) for p in prev], ts, room_id)
    return Event(eid(name), pdu)


def _pdu(
    sender: str,
    type: str,
    state_key: str | None,
    content: Mapping[str, Any],
    auth_ids: list[str],
    prev_ids: list[str],
    ts: int,
    room_id: str | None,
) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "sender": sender,
        "type": type,
        "content": dict(content),
        "auth_events": auth_ids,
        "prev_events": prev_ids,
        "depth": 0,
        "origin_server_ts": ts,
        "hashes": {"sha256": ""},
        "signatures": {},
    }
    if room_id is not None:
        pdu["room_id"] = room_id
    if state_key is not None:
        pdu["state_key"] = state_key
    return pdu


def unauthorised(events: Mapping[str, Event], version: RoomVersion) -> dict[str, str]:
    """The events that ``version``'s rules refuse against their own auth events: event ID -> reason.

    What a server checks on receipt, less signatures and hashes: in version
    12 the create event the room ID names is added to the auth events.
    """
    refused: dict[str, str] = {}
    for event in events.values():
        cited = [events[auth_id] for auth_id in event.auth_events]
        if version.room_id_is_create_hash and event.type != CREATE:
            cited.append(events[create_event_id_of_room(event.room_id)])
        try:
            check_auth(event, auth_state_from_events(event, cited, room_version=version), room_version=version)
        except AuthError as refusal:
            refused[event.event_id] = refusal.reason
    return refused


class HandRoom:
    """Events of one room of ``version`` with explicit ``auth_events``, by name.

    Starts with :func:`make_create` (``create_extra`` in its content), called
    ``create``. :meth:`add` takes ``auth`` and ``prev`` as names; in version
    12 ``create`` is left out of ``auth`` (the room ID names it) and power
    levels go through :func:`for_version`, so one graph is written once for
    every version. ``get`` is the ``get_event`` state resolution takes.
    """

    def __init__(self, version: RoomVersion = V10, **create_extra: Any) -> None:
        self.version = version
        create = make_create(version, **create_extra)
        self.room_id = room_id_of(create, version)
        self.ids: dict[str, str] = {"create": create.event_id}
        self.events: dict[str, Event] = {create.event_id: create}

    def add(
        self,
        name: str,
        sender: str,
        type: str,
        state_key: str | None,
        content: Mapping[str, Any],
        *,
        auth: Iterable[str] = (),
        prev: Iterable[str] = (),
        ts: int = 0,
        room_id: str | None = None,
    ) -> Event:
        """Add ``$name`` (``room_id``: to put it in another room than this one); returns it."""
        assert name not in self.ids, name
        cited = [self.ids[a] for a in auth if not (a == "create" and self.version.room_id_is_create_hash)]
        pdu = _pdu(sender, type, state_key, for_version(type, content, self.version), cited,
                   [self.ids[p] for p in prev], ts, room_id or self.room_id)  # fmt: skip
        event = Event(eid(name), pdu)
        self.ids[name] = event.event_id
        self.events[event.event_id] = event
        return event

    def get(self, event_id: str) -> Event | None:
        return self.events.get(event_id)

    def id(self, name: str) -> str:
        """The event ID of the event called ``name``."""
        return self.ids[name]

    def state(self, *names: str) -> dict[StateKey, str]:
        """The state map that holds the named events."""
        state: dict[StateKey, str] = {}
        for name in names:
            event = self.events[self.ids[name]]
            assert event.state_key is not None, name
            state[(event.type, event.state_key)] = event.event_id
        return state


@dataclass(frozen=True)
class _Declared:
    sender: str
    type: str
    state_key: str | None
    content: Mapping[str, Any]


class Room:
    """A room DAG declared by name, built in one go by :meth:`build`.

    Every room starts the same: ``create`` (Alice), ``alice-join``, ``pl0``
    (Alice 100 — a creator in version 12 —, everything else default), ``jr0`` (public), ``bob-join``,
    ``carol-join``, ``zara-join``, then ``start``, a message by Zara. Tests
    add events, link them with :meth:`chain` and end their branches at
    ``end``, another message by Zara. ``create_extra`` goes in the create
    event's content (``additional_creators=[CAROL]``).
    """

    def __init__(self, room_version: RoomVersion = V10, *, join_rule: str = "public", **create_extra: Any) -> None:
        self.room_version = room_version
        self._create_extra = create_extra
        self._declared: dict[str, _Declared] = {}
        self._prevs: dict[str, list[str]] = {}
        self.events: dict[str, Event] = {}
        self.ids: dict[str, str] = {}  # name -> event ID, once built
        self.names: dict[str, str] = {}  # event ID -> name
        self.room_id = ROOM_ID  # version 12: set when the create event is built
        self._state_after: dict[str, dict[StateKey, str]] = {}
        self.event("create", ALICE, CREATE, "", create_content(room_version, **create_extra))
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
        self._declared[name] = _Declared(sender, type, state_key, for_version(type, content, self.room_version))
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
        if name == "create":
            event = make_create(self.room_version, ts=ts, **self._create_extra)
            self.room_id = room_id_of(event, self.room_version)
        else:
            wanted = auth_types_for_event(declared.type, declared.sender, declared.state_key, declared.content,
                                          room_version=self.room_version)  # fmt: skip
            auth = [before[key] for key in wanted if key in before]
            pdu = _pdu(declared.sender, declared.type, declared.state_key, declared.content, auth,
                       [self.ids[p] for p in prevs], ts, self.room_id)  # fmt: skip
            event = Event(eid(name), pdu)
        self.events[event.event_id] = event
        self.ids[name] = event.event_id
        self.names[event.event_id] = name
        after = dict(before)
        if declared.state_key is not None:
            after[(declared.type, declared.state_key)] = event.event_id
        self._state_after[name] = after

    def id(self, name: str) -> str:
        """The event ID of the named event (after :meth:`build`)."""
        return self.ids[name]

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
        return {key: self.names[value] for key, value in end.items() if start.get(key) != value} | {
            key: "(gone)" for key in start.keys() - end.keys()
        }

    def ts(self, name: str) -> int:
        return self.events[self.id(name)].origin_server_ts

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
