"""The receive path in memory: a remote server's events through every check into a DAG."""

from __future__ import annotations

import asyncio
import copy

import pytest
from memory_dag import FakeKeyRing, MemoryDag, RemoteServer

from lowband.gateway.federation.inbound.pipeline import InboundPipeline
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.matrix.signing import SigningKey

ROOM = "!room:remote.test"
ALICE = "@alice:remote.test"
BOB = "@bob:remote.test"


class Scene:
    """A room made on remote.test, which our DAG already holds up to its join rules."""

    def __init__(self, seed_all: bool = True) -> None:
        self.remote = RemoteServer("remote.test")
        r = self.remote
        self.create = r.make(ROOM, ALICE, "m.room.create", {"creator": ALICE, "room_version": "10"}, prev=[], auth=[],
                             state_key="")  # fmt: skip
        s = {("m.room.create", ""): self.create.event_id}
        self.join = r.make(ROOM, ALICE, "m.room.member", {"membership": "join"}, prev=[self.create],
                           auth=[self.create], state_key=ALICE, state=s)  # fmt: skip
        s = {**s, ("m.room.member", ALICE): self.join.event_id}
        self.levels = r.make(ROOM, ALICE, "m.room.power_levels", {"users": {ALICE: 100}}, prev=[self.join],
                             auth=[self.create, self.join], state_key="", state=s)  # fmt: skip
        s = {**s, ("m.room.power_levels", ""): self.levels.event_id}
        self.rules = r.make(ROOM, ALICE, "m.room.join_rules", {"join_rule": "public"}, prev=[self.levels],
                            auth=[self.create, self.join, self.levels], state_key="", state=s)  # fmt: skip
        self.state = {**s, ("m.room.join_rules", ""): self.rules.event_id}
        self.dag = MemoryDag()
        self.dag.rooms[ROOM] = {"state": {}, "extremities": []}
        if seed_all:
            for event in (self.create, self.join, self.levels, self.rules):
                asyncio.run(self.dag.store_remote(ROOM, event, self.remote.state_before[event.event_id], None, False))
        self.pipeline = InboundPipeline(self.remote, FakeKeyRing(self.remote), self.dag)

    def auth(self, *keys):
        return [self.remote.events[self.state[k]] for k in keys]

    def message(self, prev, text="hi", sender=ALICE, state=None):
        state = state or self.state
        auth = [self.remote.events[state[k]] for k in [("m.room.create", ""), ("m.room.power_levels", ""),
                                                     ("m.room.member", sender)] if k in state]  # fmt: skip
        return self.remote.make(ROOM, sender, "m.room.message", {"msgtype": "m.text", "body": text}, prev=prev,
                                auth=auth, state=state)  # fmt: skip

    def send(self, *events, raw=None):
        body = {"pdus": raw if raw is not None else [e.pdu for e in events], "edus": []}
        return asyncio.run(self.pipeline.receive_transaction("remote.test", body))["pdus"]


def test_an_authorised_event_is_accepted_and_a_repeat_is_harmless():
    scene = Scene()
    event = scene.message([scene.rules])
    assert scene.send(event) == {event.event_id: {}}
    assert scene.dag.known(event.event_id).rejected is None and event.event_id in scene.dag.timeline
    assert scene.send(event) == {event.event_id: {}}
    assert scene.dag.timeline.count(event.event_id) == 1


def test_an_event_from_a_stranger_is_rejected_but_kept():
    scene = Scene()
    event = scene.message([scene.rules], sender=BOB)  # bob never joined
    reason = f"auth events: {BOB} is not joined to the room"
    assert scene.send(event) == {event.event_id: {"error": f"rejected: {reason}"}}  # kept, but refused
    known = scene.dag.known(event.event_id)
    assert known.rejected == reason
    assert scene.dag.forward_extremities(ROOM) == [scene.rules.event_id]


def test_a_bad_signature_or_a_forged_sender_is_dropped():
    scene = Scene()
    event = scene.message([scene.rules])
    forged = copy.deepcopy(event.pdu)
    forged["signatures"]["remote.test"]["ed25519:r1"] = "A" * 86
    other = RemoteServer("evil.test", SigningKey.from_seed(b"\x07" * 32, "e1"))
    impostor = other.make(ROOM, ALICE, "m.room.message", {"body": "x"}, prev=[scene.rules], auth=scene.auth(
        ("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", ALICE)))  # fmt: skip
    answer = scene.send(raw=[forged, impostor.pdu, {"room_id": 5}, "junk"])
    errors = [v.get("error", "") for v in answer.values()]
    assert len(errors) == 4 and all(errors)
    assert "bad signatures" in errors[0] and "not signed by remote.test" in errors[1]
    assert scene.dag.known(event.event_id) is None and scene.dag.known(impostor.event_id) is None


def test_a_wrong_content_hash_stores_the_redacted_event():
    scene = Scene()
    event = scene.message([scene.rules], text="secret")
    tampered = copy.deepcopy(event.pdu)
    tampered["content"]["body"] = "changed"  # content is not covered by the signature, only by the hash
    assert scene.send(raw=[tampered]) == {event.event_id: {}}
    assert scene.dag.known(event.event_id).event.content == {}


def test_an_event_for_a_room_we_are_not_in_is_dropped():
    scene = Scene()
    event = scene.remote.make("!other:remote.test", ALICE, "m.room.message", {"body": "x"}, prev=[], auth=[])
    assert "not in room" in scene.send(event)[event.event_id]["error"]


def test_missing_prev_events_are_fetched_with_get_missing_events():
    scene = Scene()
    first = scene.message([scene.rules], "one")
    second = scene.message([first], "two")
    third = scene.message([second], "three")
    assert scene.send(third) == {third.event_id: {}}
    assert [e for e in scene.dag.timeline[-3:]] == [first.event_id, second.event_id, third.event_id]
    assert ("POST", "get_missing_events") in scene.remote.requests


def test_a_gap_too_long_is_bridged_with_the_state_at_the_gap():
    scene = Scene()
    chain = [scene.rules]
    for i in range(25):
        chain.append(scene.message([chain[-1]], f"m{i}"))
    last = chain[-1]
    assert scene.send(last) == {last.event_id: {}}
    assert ("GET", "state_ids") in scene.remote.requests
    assert scene.dag.state_before(last.event_id) == scene.state
    assert scene.dag.known(last.event_id).rejected is None


def test_missing_auth_events_are_fetched_and_checked():
    scene = Scene()
    r = scene.remote
    bob_join = r.make(ROOM, BOB, "m.room.member", {"membership": "join"}, prev=[scene.rules],
                      auth=scene.auth(("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", "")),
                      state_key=BOB, state=scene.state)  # fmt: skip
    state = {**scene.state, ("m.room.member", BOB): bob_join.event_id}
    hello = scene.message([scene.rules], "bob was here", sender=BOB, state=state)  # refers to bob_join by auth only
    assert scene.send(hello)[hello.event_id]["error"].startswith("rejected: state before the event")
    assert scene.dag.known(bob_join.event_id).outlier
    # bob's join is not in the state before his message (his message's prev is the join rules): rejected there
    assert "state before" in scene.dag.known(hello.event_id).rejected


def test_soft_failure_when_the_current_state_forbids_what_an_old_branch_allowed():
    scene = Scene()
    r = scene.remote
    bob_join = r.make(ROOM, BOB, "m.room.member", {"membership": "join"}, prev=[scene.rules],
                      auth=scene.auth(("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", "")),
                      state_key=BOB, state=scene.state)  # fmt: skip
    joined = {**scene.state, ("m.room.member", BOB): bob_join.event_id}
    ban = r.make(ROOM, ALICE, "m.room.member", {"membership": "ban"}, prev=[bob_join],
                 auth=[scene.create, scene.levels, scene.join, bob_join], state_key=BOB, state=joined)  # fmt: skip
    evading = scene.message([bob_join], "still here", sender=BOB, state=joined)  # built on the branch before the ban
    assert scene.send(bob_join, ban) == {bob_join.event_id: {}, ban.event_id: {}}
    assert scene.send(evading) == {evading.event_id: {}}
    assert scene.dag.known(evading.event_id).rejected is None and evading.event_id in scene.dag.soft_failed
    assert scene.dag.forward_extremities(ROOM) == [ban.event_id]


@pytest.mark.parametrize("body", [[], {"pdus": "x"}, {"pdus": [{}] * 51}, {"edus": [{}] * 101}])
def test_a_malformed_or_oversized_transaction_is_refused(body):
    scene = Scene()
    with pytest.raises(MatrixError) as refused:
        asyncio.run(scene.pipeline.receive_transaction("remote.test", body))
    assert refused.value.status == 400
