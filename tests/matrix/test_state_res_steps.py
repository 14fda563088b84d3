"""State resolution step by step: the orderings, the sender's power, the conflicted subgraph,
what the iterative auth checks judge by, and properties of the whole.

Every hand-built room is a room of the version it is loaded as (its create
event names that version; a version 12 room is named by its create event),
so that the auth rules, which check this, judge the events as that room's.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from state_res_dag import (
    ALICE,
    BAN,
    BOB,
    CAROL,
    CREATE,
    JOIN,
    JOIN_RULES,
    LEAVE,
    MEMBER,
    POWER_LEVELS,
    TOPIC,
    TOPIC_KEY,
    ZARA,
    HandRoom,
    Room,
    create_content,
    make_event,
    member,
    unauthorised,
)

from lowband.gateway.matrix.auth_rules import check_auth
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.power_levels import CREATOR_POWER_LEVEL, power_level_for_user
from lowband.gateway.matrix.room_versions import V5, V6, V9, V10, V11, V12, RoomVersion
from lowband.gateway.matrix.state_res import auth_checks, resolve_state
from lowband.gateway.matrix.state_res.conflicts import conflicted_subgraph, split_state_sets
from lowband.gateway.matrix.state_res.loader import EventLoader
from lowband.gateway.matrix.state_res.ordering import (
    is_power_event,
    mainline_order,
    reverse_topological_power_order,
    sender_power,
)

MAX_LEVEL = 2**53 - 1


def _loader(events: list[Event], version=V10) -> EventLoader:
    store = {e.event_id: e for e in events}
    return EventLoader(version, store.get, None, 100_000)


def _base(
    levels: dict[str, int] | None = None, *, version: RoomVersion = V10, creator_field: bool = True
) -> list[Event]:
    """create (of a room of ``version``), Alice's join, power levels ``levels`` (Alice 100, Bob 50 by default).

    ``creator_field=False`` leaves ``creator`` out of the create event, as
    version 11 does (before, the rules refuse such a create event).
    """
    content = create_content(version)
    if not creator_field:
        content.pop("creator", None)
    return [
        make_event("create", ALICE, CREATE, "", content),
        make_event("a-join", ALICE, MEMBER, ALICE, JOIN, auth=["create"], prev=["create"]),
        make_event(
            "pl", ALICE, POWER_LEVELS, "", {"users": levels or {ALICE: 100, BOB: 50}}, auth=["create", "a-join"]
        ),
    ]


def _topic(name: str, sender: str, ts: int, *, auth: tuple[str, ...] = ("create", "pl")) -> Event:
    return make_event(name, sender, TOPIC, "", {"topic": name}, auth=list(auth), ts=ts)


# -- the test rooms ---------------------------------------------------------------


@pytest.mark.parametrize("version", [V10, V11, V12])
def test_the_base_room_is_a_room_of_its_version(version):
    """The helper's base room passes its version's rules event by event, against each event's own auth events.

    (Its branches may hold refused events: that is what the resolution tests are about.)
    """
    room = Room(version)
    room.chain("start", "end")
    room.build()
    assert unauthorised(room.events, version) == {}
    create = room.events[room.id("create")]
    assert create.content["room_version"] == version.identifier
    if version.room_id_is_create_hash:
        assert "room_id" not in create.pdu and room.room_id == "!" + create.event_id[1:]
        assert all(create.event_id not in event.auth_events for event in room.events.values())


def test_a_create_event_of_another_version_is_refused():
    """Why the test rooms name their version: the rules judge a create event by the version it names."""
    room = Room(V10)
    room.build()
    create = room.events[room.id("create")]
    stale = {**room.events, create.event_id: make_event("create", ALICE, CREATE, "", {"creator": ALICE})}
    assert set(unauthorised(stale, V10)) == set(room.events)  # a create without room_version names version 1
    assert set(unauthorised(room.events, V11)) == set(room.events)


# -- power events -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "power"),
    [
        (make_event("p", ALICE, POWER_LEVELS, "", {}), True),
        (make_event("j", ALICE, JOIN_RULES, "", {"join_rule": "invite"}), True),
        (make_event("c", ALICE, CREATE, "", create_content(V10)), True),
        (make_event("kick", ALICE, MEMBER, BOB, LEAVE), True),
        (make_event("ban", ALICE, MEMBER, BOB, BAN), True),
        (make_event("leave", BOB, MEMBER, BOB, LEAVE), False),  # leaving yourself takes no one's power
        (make_event("self-ban", BOB, MEMBER, BOB, BAN), False),
        (make_event("invite", ALICE, MEMBER, BOB, {"membership": "invite"}), False),
        (make_event("t", ALICE, TOPIC, "", {}), False),
        (make_event("odd-pl", ALICE, POWER_LEVELS, "x", {}), False),  # not the room's power levels
        (make_event("msg", ALICE, POWER_LEVELS, None, {}), False),  # not a state event
    ],
)
def test_power_events(event, power):
    assert is_power_event(event) is power


# -- the sender's power --------------------------------------------------------------


def test_sender_power_comes_from_the_power_levels_among_the_auth_events():
    events = _base({ALICE: 100, BOB: 50}) + [
        _topic("by-bob", BOB, 1),
        _topic("by-carol", CAROL, 2),
        make_event("pl-default", ALICE, POWER_LEVELS, "", {"users_default": 7}, auth=["create", "a-join"]),
        _topic("by-zara", ZARA, 3, auth=("create", "pl-default")),
    ]
    loader = _loader(events)
    power = {name: sender_power(loader, loader.event("$" + name)) for name in ("by-bob", "by-carol", "by-zara")}
    assert power == {"by-bob": 50, "by-carol": 0, "by-zara": 7}


@pytest.mark.parametrize(
    ("version", "creator_field", "alice", "bob"),
    [
        (V10, True, 100, 0),  # content.creator is the creator
        (V10, False, 0, 0),  # ... and without it there is none (the sender does not count before v11)
        (V11, False, 100, 0),  # v11: the create event's sender is the creator
    ],
)
def test_without_power_levels_the_creator_has_100(version, creator_field, alice, bob):
    events = _base(version=version, creator_field=creator_field) + [
        _topic("by-alice", ALICE, 1, auth=("create", "a-join")),
        _topic("by-bob", BOB, 2, auth=("create",)),
    ]
    loader = _loader(events, version)
    assert sender_power(loader, loader.event("$by-alice")) == alice
    assert sender_power(loader, loader.event("$by-bob")) == bob


def _odd_levels_room(version: RoomVersion, value: object) -> list[Event]:
    """Alice's power levels give Bob ``value``, with ``users_default`` 3; Bob's topic cites them."""
    return _base({ALICE: 100}, version=version) + [
        make_event(
            "pl-odd",
            ALICE,
            POWER_LEVELS,
            "",
            {"users": {ALICE: 100, BOB: value}, "users_default": 3},
            auth=["create", "a-join", "pl"],
        ),
        _topic("by-bob", BOB, 1, auth=("create", "pl-odd")),
    ]


@pytest.mark.parametrize(
    ("version", "value", "level", "stands"),
    [
        (V9, "50", 50, True),  # versions 1-9 accept integer strings
        (V9, " +050 ", 50, True),  # sign, leading zeroes and surrounding whitespace too
        (V9, "5O", 3, False),  # not an integer: refused, and the default applies
        (V9, True, 3, False),  # nor is a boolean
        (V5, 50.9, 50, True),  # versions 1-5 accept floats, truncated
        (V5, -50.9, -50, True),  # toward zero
    ],
)
def test_older_versions_read_string_and_float_levels(version, value, level, stands):
    """The sort reads such a level as the auth rules do (one implementation for both)."""
    events = _odd_levels_room(version, value)
    loader = _loader(events, version)
    assert sender_power(loader, loader.event("$by-bob")) == level
    create, pl_odd = loader.event("$create"), loader.event("$pl-odd")
    assert level == power_level_for_user(pl_odd.content, create, BOB, room_version=version)
    assert ("$pl-odd" not in unauthorised({e.event_id: e for e in events}, version)) is stands


@pytest.mark.parametrize(("version", "value"), [(V10, "50"), (V6, 50.9)])
def test_a_level_form_the_version_refuses_ranks_only_refused_events(version, value):
    """Version 10 refuses integer strings, version 6 floats (not even canonical JSON there): the power
    levels event holding one is refused, and so, on receipt, is every event citing it.

    The sort still reads the level as every version does (50), as Synapse's
    ``int(level)`` does: where a refused event sorts decides nothing (it is
    never state), and one reading for all versions keeps the sort as cheap
    as the rules' own.
    """
    events = _odd_levels_room(version, value)
    loader = _loader(events, version)
    assert "must be integers" in unauthorised({e.event_id: e for e in events}, version)["$pl-odd"]
    assert sender_power(loader, loader.event("$by-bob")) == 50


def test_the_sort_never_walks_the_users_of_the_power_levels():
    """Cheap: one lookup per sorted event, whatever the size of ``users`` (versions 1-9 too, where
    levels may be strings). A users map that counts walks and copies proves it."""

    class Walked(dict):
        walks = 0

        def __iter__(self):
            Walked.walks += 1
            return super().__iter__()

        def items(self):
            Walked.walks += 1
            return super().items()

        def keys(self):
            Walked.walks += 1
            return super().keys()

        def values(self):
            Walked.walks += 1
            return super().values()

    for version in (V5, V9, V10, V12):
        users = Walked({f"@u{i}:example.test": str(i) if not version.integer_power_levels else i for i in range(500)})
        room = HandRoom(version)
        room.add("a-join", ALICE, MEMBER, ALICE, JOIN, auth=["create"], prev=["create"])
        room.add("pl", ALICE, POWER_LEVELS, "", {"users": users}, auth=["create", "a-join"])
        kicks = [f"kick{i}" for i in range(0, 500, 5)]
        for name in kicks:
            user = f"@u{name[4:]}:example.test"
            room.add(name, user, MEMBER, BOB, LEAVE, auth=["create", "pl"], ts=int(name[4:]))
        loader = _loader(list(room.events.values()), version)
        order = reverse_topological_power_order(loader, ["$" + name for name in kicks])
        assert order == ["$" + name for name in reversed(kicks)]  # @u495 holds the highest level
        assert Walked.walks == 0, version.identifier


def _v12_room() -> HandRoom:
    """A version 12 room with Carol as an additional creator: the room ID names the create event, nobody cites it."""
    room = HandRoom(V12, additional_creators=[CAROL])
    room.add("a-join", ALICE, MEMBER, ALICE, JOIN, prev=["create"])
    room.add("pl", ALICE, POWER_LEVELS, "", {"users": {BOB: MAX_LEVEL}}, auth=["a-join"])
    room.add("jr", ALICE, JOIN_RULES, "", {"join_rule": "public"}, auth=["a-join", "pl"])
    room.add("b-join", BOB, MEMBER, BOB, JOIN, auth=["pl", "jr"])
    room.add("b-rename", BOB, MEMBER, BOB, {"membership": "join", "displayname": "B"}, auth=["pl", "jr", "b-join"])
    room.add("by-alice", ALICE, TOPIC, "", {}, auth=["pl", "a-join"], ts=9)
    room.add("by-carol", CAROL, TOPIC, "", {}, auth=["pl"], ts=8)  # not joined: here only to be sorted
    room.add("by-bob", BOB, TOPIC, "", {}, auth=["pl", "b-join"], ts=1)
    return room


def test_version_12_creators_outrank_every_level():
    """MSC4289: the creator and ``additional_creators`` have infinite power, above 2**53-1."""
    loader = _loader(list(_v12_room().events.values()), V12)
    assert sender_power(loader, loader.event("$by-alice")) == CREATOR_POWER_LEVEL > MAX_LEVEL
    assert sender_power(loader, loader.event("$by-carol")) == CREATOR_POWER_LEVEL
    assert sender_power(loader, loader.event("$by-bob")) == MAX_LEVEL
    order = reverse_topological_power_order(loader, ["$by-bob", "$by-alice", "$by-carol"])
    assert order == ["$by-carol", "$by-alice", "$by-bob"]  # the creators first (by time), Bob last though earliest


def test_before_version_12_the_creator_is_only_as_strong_as_the_power_levels_say():
    events = _base({ALICE: 100, BOB: MAX_LEVEL}, version=V11) + [_topic("by-alice", ALICE, 1), _topic("by-bob", BOB, 2)]
    loader = _loader(events, V11)
    assert reverse_topological_power_order(loader, ["$by-alice", "$by-bob"]) == ["$by-bob", "$by-alice"]


# -- reverse topological power ordering ----------------------------------------------------


def test_power_ordering_tie_breaks_power_then_time_then_event_id():
    events = _base({ALICE: 100, BOB: 50}) + [
        _topic("bob-early", BOB, 1),
        _topic("alice-late", ALICE, 5),
        _topic("alice-early", ALICE, 3),
        _topic("alice-same-b", ALICE, 4),
        _topic("alice-same-a", ALICE, 4),
    ]
    loader = _loader(events)
    ids = ["$bob-early", "$alice-late", "$alice-early", "$alice-same-b", "$alice-same-a"]
    assert reverse_topological_power_order(loader, ids) == [
        "$alice-early",  # Alice (100) before Bob (50); among hers, the earliest first
        "$alice-same-a",  # same time: the smaller event ID first
        "$alice-same-b",
        "$alice-late",
        "$bob-early",  # the earliest event of all, but the weakest sender
    ]


def test_power_ordering_respects_auth_events_before_power():
    """An event comes after its auth events among the sorted ones, whatever their senders' power."""
    events = _base({ALICE: 100, BOB: 50}) + [
        make_event("bob-pl", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}, auth=["create", "pl"], ts=9),
        _topic("alice-on-bob", ALICE, 10, auth=("create", "bob-pl")),
        _topic("zara", ZARA, 0),
    ]
    loader = _loader(events)
    order = reverse_topological_power_order(loader, ["$alice-on-bob", "$bob-pl", "$zara"])
    # Ready at first: bob-pl (50) and zara (0): Bob's goes first, which frees Alice's (100),
    # which then goes before Zara's although Zara's is the earliest.
    assert order == ["$bob-pl", "$alice-on-bob", "$zara"]


def test_power_ordering_leaves_out_an_auth_cycle():
    """Only a hostile DAG with made-up IDs (versions 1-2) can have a cycle; its events could never pass auth."""
    events = _base() + [
        _topic("loop-a", ALICE, 1, auth=("create", "loop-b")),
        _topic("loop-b", ALICE, 2, auth=("create", "loop-a")),
        _topic("fine", ALICE, 3),
    ]
    loader = _loader(events)
    assert reverse_topological_power_order(loader, ["$loop-a", "$loop-b", "$fine"]) == ["$fine"]


# -- mainline ordering --------------------------------------------------------------------


def _mainline_room() -> list[Event]:
    """pl0 <- pl1 <- pl2 (each cites the one before); q1 forks off pl0; topics on each."""
    return _base() + [
        make_event("pl1", ALICE, POWER_LEVELS, "", {}, auth=["create", "pl"]),
        make_event("pl2", ALICE, POWER_LEVELS, "", {}, auth=["create", "pl1"]),
        make_event("q1", BOB, POWER_LEVELS, "", {}, auth=["create", "pl"]),
        _topic("on-pl2", ALICE, 1, auth=("create", "pl2")),
        _topic("on-pl1", ALICE, 2, auth=("create", "pl1")),
        _topic("on-pl", ALICE, 3),
        _topic("on-q1", BOB, 4, auth=("create", "q1")),  # q1 is off the mainline; its parent pl is on it
        _topic("on-none", ALICE, 5, auth=("create",)),
        _topic("on-pl2-same-time", ALICE, 1, auth=("create", "pl2")),
    ]


def test_mainline_ordering_older_power_levels_first_then_time_then_id():
    loader = _loader(_mainline_room())
    ids = ["$on-pl2", "$on-pl1", "$on-pl", "$on-q1", "$on-none", "$on-pl2-same-time"]
    assert mainline_order(loader, ids, "$pl2") == [
        "$on-none",  # no power levels ancestor: position infinity, first
        "$on-pl",  # pl is position 2 of the mainline pl2, pl1, pl
        "$on-q1",  # q1 is not on it; its first ancestor that is, is pl: position 2 too, later timestamp
        "$on-pl1",
        "$on-pl2",  # position 0; same time as the next, smaller ID
        "$on-pl2-same-time",
    ]


def test_mainline_ordering_depends_on_the_power_levels_it_is_based_on():
    events = _mainline_room() + [_topic("on-q1-early", BOB, 0, auth=("create", "q1"))]
    loader = _loader(events)
    ids = ["$on-pl2", "$on-pl1", "$on-q1-early"]
    # Based on pl2 (mainline pl2, pl1, pl): q1 is off it and leads to pl, the oldest position.
    assert mainline_order(loader, ids, "$pl2") == ["$on-q1-early", "$on-pl1", "$on-pl2"]
    # Based on q1 (mainline q1, pl): pl2 and pl1 are off it and lead to pl; on-q1-early sits on the head.
    assert mainline_order(loader, ids, "$q1") == ["$on-pl2", "$on-pl1", "$on-q1-early"]
    # With no power levels every position is infinity: by time alone, whatever the input order.
    assert mainline_order(loader, ids, None) == ["$on-q1-early", "$on-pl2", "$on-pl1"]
    assert mainline_order(loader, list(reversed(ids)), None) == ["$on-q1-early", "$on-pl2", "$on-pl1"]


def test_mainline_walk_stops_on_a_power_levels_cycle():
    events = _base() + [
        make_event("cyc-a", ALICE, POWER_LEVELS, "", {}, auth=["cyc-b"]),
        make_event("cyc-b", ALICE, POWER_LEVELS, "", {}, auth=["cyc-a"]),
        _topic("on-cycle", ALICE, 1, auth=("cyc-a",)),
        _topic("on-pl", ALICE, 2),
    ]
    loader = _loader(events)
    assert mainline_order(loader, ["$on-pl", "$on-cycle"], "$pl") == ["$on-cycle", "$on-pl"]
    assert mainline_order(loader, ["$on-pl"], "$cyc-a") == ["$on-pl"]


# -- conflicted state subgraph ----------------------------------------------------------


def test_conflicted_subgraph_is_every_path_between_conflicted_events():
    r"""c1 -> x -> y -> c2 -> z; c1 -> w; c3 alone.

    x and y lie between c1 and c2; z is below c2 but reaches no conflicted
    event; w hangs off c1 and reaches none either.
    """
    events = [
        make_event("z", ALICE, CREATE, "", create_content(V10)),
        make_event("c2", ALICE, POWER_LEVELS, "", {}, auth=["z"]),
        make_event("y", ALICE, MEMBER, ALICE, JOIN, auth=["c2", "z"]),
        make_event("x", ALICE, POWER_LEVELS, "", {}, auth=["y", "z"]),
        make_event("w", ALICE, JOIN_RULES, "", {}, auth=["z"]),
        make_event("c1", ALICE, POWER_LEVELS, "", {}, auth=["x", "w", "z"]),
        make_event("c3", BOB, MEMBER, BOB, JOIN, auth=["z"]),
    ]
    loader = _loader(events)
    assert conflicted_subgraph(loader, ["$c1", "$c2", "$c3"]) == {"$c1", "$x", "$y", "$c2", "$c3"}
    assert conflicted_subgraph(loader, ["$c1"]) == {"$c1"}
    assert conflicted_subgraph(loader, []) == set()


# -- unconflicted and conflicted --------------------------------------------------------


def test_split_a_key_missing_from_a_set_is_conflicted():
    unconflicted, conflicted = split_state_sets(
        [{TOPIC_KEY: "$t", member(BOB): "$b1"}, {TOPIC_KEY: "$t", member(BOB): "$b2", member(CAROL): "$c"}]
    )
    assert unconflicted == {TOPIC_KEY: "$t"}
    assert conflicted == {member(BOB): {"$b1", "$b2"}, member(CAROL): {"$c"}}


# -- what the iterative auth checks judge by -------------------------------------------


def test_iterative_auth_checks_take_the_state_first_and_the_auth_events_for_the_rest():
    """Bob's topic cites his join; the state says he is banned: the state wins and the topic fails."""
    events = _base({ALICE: 100, BOB: 50}) + [
        make_event("jr", ALICE, JOIN_RULES, "", {"join_rule": "public"}, auth=["create", "a-join", "pl"]),
        make_event("b-join", BOB, MEMBER, BOB, JOIN, auth=["create", "pl", "jr"]),
        make_event("b-ban", ALICE, MEMBER, BOB, BAN, auth=["create", "pl", "a-join", "b-join"]),
        make_event("t", BOB, TOPIC, "", {}, auth=["create", "pl", "b-join"]),
    ]
    loader = _loader(events)
    banned = {member(BOB): "$b-ban"}
    assert auth_checks.iterative_auth_checks(loader, ["$t"], banned) == banned
    assert auth_checks.iterative_auth_checks(loader, ["$t"], {}) == {TOPIC_KEY: "$t"}
    assert banned == {member(BOB): "$b-ban"}  # the initial state is not modified


def test_version_12_auth_state_has_the_create_event_from_the_room_id(monkeypatch):
    """The create event is in no version 12 event's auth events; the auth rules still get it, and pass the event.

    Bob's topic cites his first join; the state holds his later one: the
    state wins, the power levels come from the auth events, the create event
    from the room ID.
    """
    seen: list[dict] = []

    def record(event, auth_state, *, room_version):
        assert room_version is V12
        seen.append({key: e.event_id for key, e in auth_state.items()})
        check_auth(event, auth_state, room_version=room_version)

    monkeypatch.setattr(auth_checks, "check_auth", record)
    room = _v12_room()
    loader = _loader(list(room.events.values()), V12)
    state = auth_checks.iterative_auth_checks(loader, ["$by-bob"], {member(BOB): "$b-rename"})
    assert state == {member(BOB): "$b-rename", TOPIC_KEY: "$by-bob"}
    assert seen == [
        {
            (CREATE, ""): room.id("create"),  # from the room ID
            (POWER_LEVELS, ""): "$pl",  # from the event's auth events
            member(BOB): "$b-rename",  # from the state, though the event cites $b-join
        }
    ]


# -- properties on random histories -----------------------------------------------------------

USERS = [ALICE, BOB, CAROL, ZARA]
_ACTIONS = st.tuples(
    st.integers(0, 2),  # branch
    st.sampled_from(USERS),  # sender
    st.sampled_from(["topic", "promote", "demote", "kick", "ban", "leave", "rejoin", "invite-only"]),
    st.sampled_from(USERS),  # target
)


def _random_room(version, actions) -> tuple[Room, list[dict]]:
    """Up to three branches from ``start``, one event per action; returns the room and each branch's state."""
    room = Room(version)
    tips = {0: "start", 1: "start", 2: "start"}
    for index, (branch, sender, kind, target) in enumerate(actions):
        name = f"e{index}"
        if kind == "topic":
            room.event(name, sender, TOPIC, "", {"topic": name})
        elif kind in ("promote", "demote"):
            level = 50 if kind == "promote" else 0
            room.event(name, sender, POWER_LEVELS, "", {"users": {ALICE: 100, target: level} | {sender: 50}})
        elif kind in ("kick", "ban"):
            room.event(name, sender, MEMBER, target, LEAVE if kind == "kick" else BAN)
        elif kind in ("leave", "rejoin"):
            room.event(name, sender, MEMBER, sender, LEAVE if kind == "leave" else JOIN)
        else:
            room.event(name, sender, JOIN_RULES, "", {"join_rule": "invite"})
        room.chain(tips[branch], name)
        tips[branch] = name
    used = sorted({tip for tip in tips.values()})
    for tip in used:
        room.chain(tip, "end")
    room.build()
    return room, [room.state_after(tip) for tip in used]


@pytest.mark.parametrize("version", [V10, V12], ids=["v2", "v2.1"])
@settings(max_examples=60, deadline=None)
@given(actions=st.lists(_ACTIONS, min_size=1, max_size=9))
def test_resolution_properties(version, actions):
    """On any history: the order of the state sets does not matter; a precomputed auth chain gives
    the same answer as the walk; unconflicted state is kept; every answer is a state event of its key
    from the inputs or their auth chains."""
    room, sets = _random_room(version, actions)
    resolved = room.resolve(sets)
    for permutation in itertools.permutations(sets):
        assert room.resolve(list(permutation)) == resolved
    if len(sets) > 1:
        assert resolve_state(version, sets, room.events.get, auth_chain=room.auth_chain) == resolved
    unconflicted, _ = split_state_sets(sets)
    assert unconflicted.items() <= resolved.items()
    known = set().union(*(s.values() for s in sets))
    known |= set().union(*(room.auth_chain(e) for e in known))
    for key, event_id in resolved.items():
        assert event_id in known
        event = room.events[event_id]
        assert (event.type, event.state_key) == key


@given(actions=st.lists(_ACTIONS, min_size=1, max_size=6))
@settings(max_examples=30, deadline=None)
def test_one_state_set_or_the_same_set_twice_resolves_to_itself(actions):
    room, sets = _random_room(V10, actions)
    for state in sets:
        assert resolve_state(V10, [state], room.events.get) == state
        assert resolve_state(V10, [state, dict(state)], lambda _: None) == state
