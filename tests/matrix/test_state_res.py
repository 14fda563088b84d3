"""State resolution v2 and v2.1 on the well-known graphs, each with its expected winner and why.

Rooms are built by :class:`state_res_dag.Room` (see there): base room with
Alice (creator, 100), Bob, Carol and Zara joined, public; each test adds two
or three branches from ``start`` that meet at ``end`` and checks what the
state at ``end`` holds that the state at ``start`` did not. The graphs are the
scenarios Synapse and ruma test (ban vs power levels, join rule evasion, topic
races, mainline sort, …) and the two problems MSC4297 was written for,
rebuilt here by hand.

Room versions: every graph is a real room of its version (see
:mod:`state_res_dag`). v2 runs on version 10 rooms, v2.1 on version 12 rooms
(creators above every level, the create event named by the room ID). One
made-up version, ``V12_WITH_V2``, resolves version 12 rooms with v2: it is
the control of the MSC4297 tests, showing that what tells the two answers
apart is the algorithm, not version 12's other rules.
"""

from __future__ import annotations

import dataclasses

import pytest
from state_res_dag import (
    ALICE,
    BAN,
    BOB,
    CAROL,
    CREATE,
    EVE,
    FRED,
    JOIN,
    JOIN_RULES,
    LEAVE,
    MEMBER,
    POWER,
    POWER_LEVELS,
    RULES,
    TOPIC,
    TOPIC_KEY,
    ZARA,
    HandRoom,
    Room,
    create_content,
    eid,
    make_event,
    member,
    unauthorised,
)

from lowband.gateway.matrix.room_versions import V1, V10, V11, V12, RoomVersion, UnsupportedRoomVersion
from lowband.gateway.matrix.state_res import (
    InvalidStateError,
    MissingEventError,
    StateResolutionError,
    WorkLimitExceeded,
    resolve_state,
)
from lowband.gateway.matrix.state_res.conflicts import auth_difference, full_auth_chains
from lowband.gateway.matrix.state_res.loader import EventLoader

#: Version 12's rules resolved by v2, the algorithm before MSC4297: no room has this version.
#: Same identifier, so the rules accept the rooms' create events; only ``state_res`` differs.
V12_WITH_V2 = dataclasses.replace(V12, state_res="v2")
BOTH_ALGORITHMS = pytest.mark.parametrize("version", [V10, V12], ids=["v2", "v2.1"])


# -- the well-known graphs ------------------------------------------------------


@BOTH_ALGORITHMS
def test_ban_beats_a_concurrent_power_levels_change_by_the_banned_user(version):
    """Alice bans Bob while Bob, a moderator, resends the power levels.

    Winner: the ban, and Alice's power levels. Power events go first in
    reverse topological power order: after PA (which both branches cite),
    Alice's ban (sender at 100) sorts before Bob's PB (sender at 50); replayed
    in that order, PB is from a banned user and fails.
    """
    room = Room(version)
    room.event("PA", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}})
    room.event("MA", ALICE, MEMBER, ALICE, JOIN)
    room.event("MB", ALICE, MEMBER, BOB, BAN)
    room.event("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}})
    room.chain("start", "PA", "MA", "MB", "end")
    room.chain("PA", "PB", "end")
    assert room.build().changes() == {POWER: "PA", member(ALICE): "MA", member(BOB): "MB"}


@BOTH_ALGORITHMS
def test_join_rules_change_beats_a_concurrent_join(version):
    """Alice makes the room invite-only while Eve, never invited, joins.

    Winner: the join rules; Eve is not in the room. The join rules are a
    power event and are replayed first; Eve's join comes in the second pass
    and fails against ``invite``.
    """
    room = Room(version)
    room.event("JR", ALICE, JOIN_RULES, "", {"join_rule": "invite"})
    room.event("JE", EVE, MEMBER, EVE, JOIN)
    room.chain("start", "JR", "end")
    room.chain("start", "JE", "end")
    assert room.build().changes() == {RULES: "JR"}


@BOTH_ALGORITHMS
def test_power_levels_chain_on_one_branch_beats_its_own_start_on_the_other(version):
    """Off-topic power levels: PA, then Bob's PB (which promotes Carol), then Carol's PC, vs PA alone.

    Winner: PC, the newest. PB and PC are only in one branch's auth chains
    (the auth difference), so all three are replayed in topological order
    and each passes on top of the one before.
    """
    room = Room(version)
    room.event("PA", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}})
    room.event("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50, CAROL: 50}})
    room.event("PC", CAROL, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50, CAROL: 0}})
    room.chain("start", "PA", "PB", "PC", "end")
    room.chain("PA", "end")
    assert room.build().changes() == {POWER: "PC"}


def _topic_race_room(version):
    """T1, PA1 (Bob 50), T2 by Alice, PA2 demoting Bob; on the other branch from PA1, PB by Bob and T3 by Bob."""
    room = Room(version)
    room.event("T1", ALICE, TOPIC, "", {"topic": "one"})
    room.event("PA1", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}})
    room.event("T2", ALICE, TOPIC, "", {"topic": "two"})
    room.event("PA2", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 0}})
    room.event("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}})
    room.event("T3", BOB, TOPIC, "", {"topic": "three"})
    room.chain("start", "T1", "PA1", "T2", "PA2")
    room.chain("PA1", "PB", "T3")
    return room


@BOTH_ALGORITHMS
def test_topic_race_demoted_users_topic_loses(version):
    """Basic topic race: Alice demotes Bob (PA2) while Bob resends power levels (PB) and sets a topic (T3).

    Winner: PA2 and Alice's T2. PA2 (sender 100) sorts before PB (sender
    50), so PB fails: Bob is at 0 and power levels need 50. Then the topics:
    T2 and T3 both sit on PA1 in PA2's mainline; T3, by Bob at 0, fails.
    """
    room = _topic_race_room(version)
    room.chain("PA2", "end")
    room.chain("T3", "end")
    assert room.build().changes() == {POWER: "PA2", TOPIC_KEY: "T2"}


@BOTH_ALGORITHMS
def test_topic_race_then_a_newer_topic_on_the_merged_state_wins(version):
    """The race above merges at a message MZ; Alice then sets T4 after it, and ``end`` also cites MZ.

    Winner: PA2 and T4. At MZ the race resolves to T2 (see the test above);
    T4 cites PA2, the head of the mainline, so it sorts after T2, which sits
    on PA1, and replaces it.
    """
    room = _topic_race_room(version)
    room.event("MZ", ZARA, "m.room.message", None, {"body": "hi"})
    room.event("T4", ALICE, TOPIC, "", {"topic": "four"})
    room.chain("PA2", "MZ", "T4", "end")
    room.chain("T3", "MZ", "end")
    room.build()
    assert room.state_after("MZ")[TOPIC_KEY] == eid("T2")
    assert room.changes() == {POWER: "PA2", TOPIC_KEY: "T4"}


@BOTH_ALGORITHMS
def test_topic_reset_to_the_common_ancestor_after_the_setter_is_banned(version):
    """Bob (promoted by PA) sets T2, then Alice bans him; the other branch still holds T1.

    Winner: T1, with PA and the ban. The ban is replayed before the topics;
    T2 is then by a banned user and fails, so the topic goes back to T1,
    although one branch had moved past it.
    """
    room = Room(version)
    room.event("T1", ALICE, TOPIC, "", {"topic": "one"})
    room.event("PA", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}})
    room.event("T2", BOB, TOPIC, "", {"topic": "two"})
    room.event("MB", ALICE, MEMBER, BOB, BAN)
    room.chain("start", "T1", "PA", "T2", "MB", "end")
    room.chain("T1", "end")
    assert room.build().changes() == {TOPIC_KEY: "T1", POWER: "PA", member(BOB): "MB"}


@BOTH_ALGORITHMS
def test_mainline_sort_puts_topics_on_older_power_levels_first(version):
    """Alice raises the power levels level to 100 (PA2) while Bob resends them (PB); T3 cites PA2, T4 cites PB.

    Winner: T3, though T4 was sent later. PB fails (Bob is below the new
    100), so the mainline is PA2, PA1, pl0. T4's nearest power levels
    ancestor on it is PA1 (through PB), an older position than T3's PA2, so
    T4 is replayed first and T3 overwrites it.
    """
    room = Room(version)
    room.event("T1", ALICE, TOPIC, "", {"topic": "one"})
    room.event("PA1", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}})
    room.event("T2", ALICE, TOPIC, "", {"topic": "two"})
    room.event("PA2", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}, "events": {POWER_LEVELS: 100}})
    room.event("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}})
    room.event("T3", BOB, TOPIC, "", {"topic": "three"})
    room.event("T4", ALICE, TOPIC, "", {"topic": "four"})
    room.chain("start", "T1", "PA1", "T2", "PA2", "T3", "end")
    room.chain("PA1", "PB", "T4", "end")
    room.build()
    assert room.ts("T4") > room.ts("T3")
    assert room.changes() == {POWER: "PA2", TOPIC_KEY: "T3"}


# -- memberships -------------------------------------------------------------------


@BOTH_ALGORITHMS
def test_concurrent_joins_both_stay(version):
    """Eve and Fred join a public room on different branches: each key is held by one state set only.

    Winner: both joins. A key missing from a state set is conflicted; both
    joins are replayed in the second pass and both pass.
    """
    room = Room(version)
    room.event("JE", EVE, MEMBER, EVE, JOIN)
    room.event("JF", FRED, MEMBER, FRED, JOIN)
    room.chain("start", "JE", "end")
    room.chain("start", "JF", "end")
    assert room.build().changes() == {member(EVE): "JE", member(FRED): "JF"}


@pytest.mark.parametrize(
    ("join_rule", "winner"),
    [("invite", "kick"), ("public", "rename")],
)
@BOTH_ALGORITHMS
def test_kick_vs_a_concurrent_profile_change(version, join_rule, winner):
    """Alice kicks Bob while Bob changes his display name (a ``join`` membership).

    The kick is a power event and is replayed first. Bob's profile change is
    replayed after it as a join from ``leave``: in an invite-only room it
    fails and the kick stands; in a public room it is a valid re-join, and
    Bob is back with his new name.
    """
    room = Room(version, join_rule=join_rule)
    room.event("kick", ALICE, MEMBER, BOB, LEAVE)
    room.event("rename", BOB, MEMBER, BOB, {"membership": "join", "displayname": "Bobby"})
    room.chain("start", "kick", "end")
    room.chain("start", "rename", "end")
    assert room.build().changes() == {member(BOB): winner}


@BOTH_ALGORITHMS
def test_three_branches(version):
    """Three state sets: Alice demotes Bob; Bob sets a topic; Carol changes her display name.

    Winner: the demotion and Carol's profile; no topic. The demotion is a
    power event, replayed first; Bob's topic comes in the second pass, after
    it, and fails (Bob is at 0, topics need 50). A key only one set holds
    (the topic) is conflicted like any other.
    """
    room = Room(version)
    room.event("PA", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}})
    room.event("demote", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 0}})
    room.event("TB", BOB, TOPIC, "", {"topic": "bob's"})
    room.event("rename", CAROL, MEMBER, CAROL, {"membership": "join", "displayname": "C"})
    room.chain("start", "PA", "demote", "end")
    room.chain("PA", "TB", "end")
    room.chain("PA", "rename", "end")
    assert room.build().changes() == {POWER: "demote", member(CAROL): "rename"}


# -- version 12: creators above every level ---------------------------------------

#: The highest level a power levels event can give (canonical JSON's largest integer).
MAX_LEVEL = 2**53 - 1


@pytest.mark.parametrize("carol_first", [True, False], ids=["carol-first", "bob-first"])
@pytest.mark.parametrize(
    ("carol_creates", "changes"),
    [(True, {member(BOB): "KB"}), (False, {RULES: "JR"})],
    ids=["additional-creator", "member"],
)
def test_version_12_an_additional_creator_is_replayed_before_the_highest_level(carol_creates, changes, carol_first):
    """A version 12 room: Alice gives Bob the highest level there is (PA); then Carol kicks Bob (KB) while
    Bob makes the room invite-only (JR).

    Winner, when Carol is among ``additional_creators``: her kick alone,
    whoever acted first. Both are power events; Carol's sender ranks above
    every level, so KB is replayed first and passes (Bob, at 2**53-1, is
    below a creator); JR then comes from a user who is no longer joined, and
    fails. Were the creator ranked by her (absent) ``users`` entry, JR would
    go first and both would pass. When Carol is an ordinary member, JR goes
    first and passes, and KB fails: she is below the kick level.
    """
    room = Room(V12, **({"additional_creators": [CAROL]} if carol_creates else {}))
    room.event("PA", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: MAX_LEVEL}})
    acts = [("KB", CAROL, MEMBER, BOB, LEAVE), ("JR", BOB, JOIN_RULES, "", {"join_rule": "invite"})]
    for act in acts if carol_first else reversed(acts):
        room.event(*act)
    room.chain("start", "PA", "KB", "end")
    room.chain("PA", "JR", "end")
    room.build()
    assert (room.ts("KB") < room.ts("JR")) is carol_first
    assert ALICE not in room.events["$PA"].content["users"]  # a creator has no level in version 12
    assert room.changes() == {POWER: "PA", **changes}


# -- the auth difference -------------------------------------------------------


@BOTH_ALGORITHMS
def test_auth_difference_replays_a_promotion_no_state_set_holds(version):
    """Alice promotes Bob (PA), Bob promotes Carol (PB), Carol sets a topic; the other branch has Alice's T0.

    Winner: PB and Carol's topic. PA is no longer state anywhere (PB
    replaced it) but it is in one branch's auth chains only: the auth
    difference brings it back, so it is replayed before PB, which then
    passes; Carol at 50 may set the topic, and her topic, on the newest
    mainline position, replaces T0.
    """
    room = Room(version)
    room.event("PA", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}})
    room.event("PB", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50, CAROL: 50}})
    room.event("TC", CAROL, TOPIC, "", {"topic": "carol's"})
    room.event("T0", ALICE, TOPIC, "", {"topic": "alice's"})
    room.chain("start", "PA", "PB", "TC", "end")
    room.chain("start", "T0", "end")
    room.build()
    sets = [room.state_after("TC"), room.state_after("T0")]
    chains = full_auth_chains(EventLoader(version, room.events.get, None, 10_000), sets)
    assert eid("PA") in auth_difference(chains)
    assert eid("PA") not in sets[0].values() and eid("PA") not in sets[1].values()
    assert room.changes() == {POWER: "PB", TOPIC_KEY: "TC"}


def test_auth_difference_is_union_minus_intersection_of_full_chains():
    """A hand DAG: the chains hold each set's own events too; what every chain holds is no difference."""
    events = {
        e.event_id: e
        for e in [
            make_event("A", ALICE, CREATE, "", create_content(V10)),
            make_event("B", ALICE, MEMBER, ALICE, JOIN, auth=["A"]),
            make_event("C", ALICE, POWER_LEVELS, "", {}, auth=["A", "B"]),
            make_event("D", ALICE, TOPIC, "", {}, auth=["A", "B", "C"]),
            make_event("E", ALICE, TOPIC, "", {}, auth=["A", "B"]),
        ]
    }
    loader = EventLoader(V10, events.get, None, 100)
    sets = [{TOPIC_KEY: "$D"}, {TOPIC_KEY: "$E", (MEMBER, ALICE): "$B"}]
    chains = full_auth_chains(loader, sets)
    assert chains == [{"$D", "$C", "$B", "$A"}, {"$E", "$B", "$A"}]
    assert auth_difference(chains) == {"$C", "$D", "$E"}
    assert auth_difference([chains[0]]) == set()
    assert auth_difference([]) == set()


# -- v2 and v2.1 apart (MSC4297) ----------------------------------------------------


def _problem_a(version: RoomVersion) -> tuple[HandRoom, list[dict[tuple[str, str], str]]]:
    """MSC4297 problem A, rebuilt: Alice makes the room invite-only, then leaves; Bob and Carol rename.

    Carol's server holds stale join rules (the public ones) in its state,
    as a partial synchronisation can give it. Alice's leave is unconflicted.
    """
    room = HandRoom(version)
    room.add("a-join", ALICE, MEMBER, ALICE, JOIN, auth=["create"], prev=["create"], ts=1)
    room.add("pl", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100}}, auth=["create", "a-join"], ts=2)
    room.add("jr-public", ALICE, JOIN_RULES, "", {"join_rule": "public"}, auth=["create", "a-join", "pl"], ts=3)
    room.add("b-join", BOB, MEMBER, BOB, JOIN, auth=["create", "pl", "jr-public"], ts=4)
    room.add("c-join", CAROL, MEMBER, CAROL, JOIN, auth=["create", "pl", "jr-public"], ts=5)
    room.add("jr-invite", ALICE, JOIN_RULES, "", {"join_rule": "invite"}, auth=["create", "pl", "a-join"], ts=6)
    room.add("a-leave", ALICE, MEMBER, ALICE, LEAVE, auth=["create", "pl", "a-join"], ts=7)
    room.add("b-rename", BOB, MEMBER, BOB, JOIN, auth=["create", "pl", "b-join", "jr-invite"], ts=8)
    room.add("c-rename", CAROL, MEMBER, CAROL, JOIN, auth=["create", "pl", "c-join", "jr-invite"], ts=9)
    at_bob = room.state("create", "pl", "c-join", "jr-invite", "a-leave", "b-rename")
    at_carol = room.state("create", "pl", "jr-public", "b-join", "a-leave", "c-rename")
    return room, [at_bob, at_carol]


def _problem_b(version: RoomVersion = V10) -> tuple[HandRoom, list[dict[tuple[str, str], str]]]:
    """MSC4297 problem B, rebuilt: Alice promotes Bob (pl1), Bob promotes Carol (pl2), Zara and Eve join.

    Eve's server holds the first power levels (pl0) in its state, as a
    partial synchronisation can give it; every event after pl2 cites pl2.
    """
    room = HandRoom(version)
    room.add("a-join", ALICE, MEMBER, ALICE, JOIN, auth=["create"], prev=["create"], ts=1)
    room.add("pl0", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100}}, auth=["create", "a-join"], ts=2)
    room.add("jr", ALICE, JOIN_RULES, "", {"join_rule": "public"}, auth=["create", "a-join", "pl0"], ts=3)
    room.add("b-join", BOB, MEMBER, BOB, JOIN, auth=["create", "pl0", "jr"], ts=4)
    room.add("c-join", CAROL, MEMBER, CAROL, JOIN, auth=["create", "pl0", "jr"], ts=5)
    room.add("pl1", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50}}, auth=["create", "pl0", "a-join"], ts=6)
    room.add("pl2", BOB, POWER_LEVELS, "", {"users": {ALICE: 100, BOB: 50, CAROL: 50}},
             auth=["create", "pl1", "b-join"], ts=7)  # fmt: skip
    room.add("z-join", ZARA, MEMBER, ZARA, JOIN, auth=["create", "pl2", "jr"], ts=8)
    room.add("e-join", EVE, MEMBER, EVE, JOIN, auth=["create", "pl2", "jr"], ts=9)
    room.add("e-rename", EVE, MEMBER, EVE, JOIN, auth=["create", "pl2", "e-join", "jr"], ts=9)
    at_eve = room.state("create", "a-join", "pl0", "jr", "b-join", "c-join", "e-rename")
    at_zara = room.state("create", "a-join", "jr", "b-join", "c-join", "pl2", "z-join")
    return room, [at_eve, at_zara]


@pytest.mark.parametrize("version", [V10, V12])
@pytest.mark.parametrize("graph", ["A", "B", "1000"])
def test_the_hand_built_rooms_are_authorised(graph, version):
    """Every event of problems A and B and of the 1,000 memberships passes its own auth events:
    the resolution judges what servers could really hold."""
    if graph == "1000":
        room = _thousand_members(version, count=20)[1]
    else:
        room = (_problem_a if graph == "A" else _problem_b)(version)[0]
    assert unauthorised(room.events, version) == {}


@pytest.mark.parametrize("version", [V10, V12_WITH_V2], ids=["v10", "v12-rules-with-v2"])
def test_problem_a_v2_loses_the_join_rules(version):
    """v2 starts the replay from the unconflicted state, where Alice has already left.

    Result: no join rules at all. Both join rules events are conflicted and
    replayed; both are by Alice, who is not joined in the unconflicted
    state, so both fail (in a version 12 room too: a creator's infinite
    level does not make her joined). The renames pass (each falls back to
    its own auth events for the join rules). This is the state reset MSC4297
    describes.
    """
    room, sets = _problem_a(version)
    resolved = resolve_state(version, sets, room.get)
    assert RULES not in resolved
    assert resolved == room.state("create", "pl", "a-leave", "b-rename", "c-rename")


def test_problem_a_v2_1_keeps_the_invite_only_join_rules():
    """v2.1 (a version 12 room) starts the replay from nothing, so each event is judged by its own auth events first.

    Result: ``jr-invite``, and Alice's leave (unconflicted, never replayed:
    step 5 puts it back). Both join rules pass (Alice was joined when she set
    them); the later one wins. The renames pass against it as they are joins
    of joined users.
    """
    room, sets = _problem_a(V12)
    resolved = resolve_state(V12, sets, room.get)
    assert resolved == room.state("create", "pl", "jr-invite", "a-leave", "b-rename", "c-rename")
    assert resolve_state(V12_WITH_V2, sets, room.get) != resolved  # the same room, the same rules: v2 differs


@pytest.mark.parametrize("version", [V10, V12_WITH_V2], ids=["v10", "v12-rules-with-v2"])
def test_problem_b_v2_resets_the_power_levels(version):
    """v2: pl1 is in every state set's auth chains, so it is not in the auth difference and is not replayed.

    Result: pl0. pl2 is replayed on pl0, where Bob is at 0, and fails.
    """
    room, sets = _problem_b(version)
    resolved = resolve_state(version, sets, room.get)
    assert resolved[POWER] == "$pl0"
    assert resolved[member(ZARA)] == "$z-join" and resolved[member(EVE)] == "$e-rename"


def test_problem_b_v2_1_replays_the_conflicted_subgraph():
    """v2.1 (a version 12 room): pl1 lies on the auth path from pl2 to pl0, both conflicted: the
    conflicted subgraph adds it.

    Result: pl2. Replayed in order pl0, pl1, pl2, each passes: Alice, a
    creator, may send pl1 whatever pl0 says; Bob is at 50 in pl1.
    """
    room, sets = _problem_b(V12)
    resolved = resolve_state(V12, sets, room.get)
    assert resolved[POWER] == "$pl2"
    assert resolved[member(ZARA)] == "$z-join" and resolved[member(EVE)] == "$e-rename"
    assert resolve_state(V12_WITH_V2, sets, room.get)[POWER] == "$pl0"  # the same room, the same rules: v2 resets


# -- rejected events ------------------------------------------------------------


def test_a_rejected_auth_event_is_not_used():
    """Problem B under v2.1 (a version 12 room), with Bob's join marked rejected by this server.

    Result: pl1. Bob's join is dropped from both state sets and cannot stand
    in as pl2's auth event, so Bob is not joined when pl2 is replayed.
    """
    room, sets = _problem_b(V12)
    resolved = resolve_state(V12, sets, room.get, is_rejected=lambda e: e == "$b-join")
    assert resolved[POWER] == "$pl1"
    assert member(BOB) not in resolved


def test_a_rejected_event_never_becomes_state_even_if_it_would_pass():
    """Problem B under v2.1 (a version 12 room), with pl2 marked rejected: it is in the conflicted
    subgraph, and would pass.

    Result: pl1, the last power levels that is not rejected.
    """
    room, sets = _problem_b(V12)
    resolved = resolve_state(V12, sets, room.get, is_rejected=lambda e: e == "$pl2")
    assert resolved[POWER] == "$pl1"
    assert "$pl2" not in resolved.values()


def test_a_rejected_event_in_every_state_set_is_dropped():
    room, sets = _problem_b()
    resolved = resolve_state(V10, [sets[1], sets[1]], room.get, is_rejected=lambda e: e == "$z-join")
    assert member(ZARA) not in resolved
    assert resolved == {key: value for key, value in sets[1].items() if value != "$z-join"}


# -- no conflict ------------------------------------------------------------------


def test_no_conflict_returns_the_state_without_loading_anything():
    state = {POWER: "$p", TOPIC_KEY: "$t"}
    assert resolve_state(V11, [state, dict(state)], lambda _: None) == state
    assert resolve_state(V11, [state], lambda _: None) == state
    assert resolve_state(V11, [], lambda _: None) == {}


# -- errors --------------------------------------------------------------------------


def test_a_missing_auth_event_is_a_documented_error():
    room, sets = _problem_b()
    del room.events["$pl1"]
    with pytest.raises(MissingEventError) as caught:
        resolve_state(V10, sets, room.get)
    assert caught.value.event_id == "$pl1"
    assert isinstance(caught.value, StateResolutionError)


def test_get_event_answering_with_another_event_counts_as_missing():
    room, sets = _problem_b()
    create = room.events[room.id("create")]
    with pytest.raises(MissingEventError):
        resolve_state(V10, sets, lambda event_id: create if event_id == "$pl1" else room.get(event_id))


@pytest.mark.parametrize("with_cache", [False, True])
def test_work_past_the_limit_stops_with_a_documented_error(with_cache):
    room, sets = _problem_b()

    def chain_of(event_id: str) -> set[str]:
        found, stack = set(), list(room.events[event_id].auth_events)
        while stack:
            current = stack.pop()
            if current not in found:
                found.add(current)
                stack.extend(room.events[current].auth_events)
        return found

    options = {"auth_chain": chain_of} if with_cache else {}
    assert resolve_state(V10, sets, room.get, max_visits=200, **options)[POWER] == "$pl0"
    with pytest.raises(WorkLimitExceeded) as caught:
        resolve_state(V10, sets, room.get, max_visits=10, **options)
    assert caught.value.limit == 10


def test_a_state_entry_naming_an_event_of_another_key_is_refused():
    room, sets = _problem_b()
    sets[0][TOPIC_KEY] = "$pl0"
    with pytest.raises(InvalidStateError):
        resolve_state(V10, sets, room.get)


def test_a_state_entry_naming_a_message_is_refused():
    room, sets = _problem_b()
    room.add("msg", ALICE, "m.room.message", None, {}, auth=["create"])
    sets[0][TOPIC_KEY] = "$msg"
    with pytest.raises(InvalidStateError):
        resolve_state(V10, sets, room.get)


@pytest.mark.parametrize("version", [V10, V12])
def test_an_event_of_another_room_is_refused(version):
    room, sets = _problem_b(version)
    room.add("elsewhere", EVE, MEMBER, EVE, JOIN, room_id="!other:example.test")
    sets[0][member(EVE)] = "$elsewhere"
    with pytest.raises(InvalidStateError):
        resolve_state(version, sets, room.get)


def test_room_version_1_has_no_v2_resolution():
    room, sets = _problem_b()
    with pytest.raises(UnsupportedRoomVersion):
        resolve_state(V1, sets, room.get)


# -- size ----------------------------------------------------------------------------


def _thousand_members(version: RoomVersion, count: int = 1000):
    """A room of ``count`` members, then invite-only; one branch kicks them all, the other renames them all."""
    users = [f"@user{i:04d}:example.test" for i in range(count)]
    room = HandRoom(version)
    room.add("a-join", ALICE, MEMBER, ALICE, JOIN, auth=["create"], prev=["create"], ts=1)
    room.add("pl", ALICE, POWER_LEVELS, "", {"users": {ALICE: 100}}, auth=["create", "a-join"], ts=2)
    room.add("jr", ALICE, JOIN_RULES, "", {"join_rule": "public"}, auth=["create", "a-join", "pl"], ts=3)
    for i, user in enumerate(users):
        room.add(f"join{i}", user, MEMBER, user, JOIN, auth=["create", "pl", "jr"], ts=10 + i)
    room.add("jr2", ALICE, JOIN_RULES, "", {"join_rule": "invite"}, auth=["create", "a-join", "pl"], ts=5000)
    for i, user in enumerate(users):
        room.add(f"kick{i}", ALICE, MEMBER, user, LEAVE, auth=["create", "pl", "a-join", f"join{i}"], ts=6000 + i)
        room.add(f"rename{i}", user, MEMBER, user, {"membership": "join", "displayname": str(i)},
                 auth=["create", "pl", "jr2", f"join{i}"], ts=6000 + i)  # fmt: skip
    base = room.state("create", "a-join", "pl", "jr2")
    kicked = base | {member(u): f"$kick{i}" for i, u in enumerate(users)}
    renamed = base | {member(u): f"$rename{i}" for i, u in enumerate(users)}
    return users, room, [kicked, renamed]


@BOTH_ALGORITHMS
def test_a_thousand_conflicted_memberships(version):
    """1,000 kicks on one branch, 1,000 profile changes of the same users on the other, invite-only room.

    Winner: every kick (the renames are re-joins after the kicks and need an
    invite). `pytest --durations` shows the time; nothing here measures it.
    """
    users, room, sets = _thousand_members(version)
    resolved = resolve_state(version, sets, room.get)
    assert all(resolved[member(u)] == f"$kick{i}" for i, u in enumerate(users))
    assert resolved[RULES] == "$jr2" and resolved[member(ALICE)] == "$a-join"
