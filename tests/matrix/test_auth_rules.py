"""Room version 10 authorization rules, table-driven.

Every case builds a small room in memory with real signed events (create,
creator join, power levels, join rules, history visibility, then its own
setup steps, each of which must itself pass auth), then builds one more
event and checks it against the state the auth event selection picks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from lowband.gateway.matrix.auth_rules import (
    AuthError,
    action_power_level,
    auth_state_from_events,
    auth_types_for_event,
    check_auth,
    power_level_for_user,
    redaction_allowed,
    required_power_level,
    required_power_level_for,
    select_auth_state,
)
from lowband.gateway.matrix.events import Event, add_signature, build_event, server_name_of
from lowband.gateway.matrix.signing import SigningKey, sign_json

KEYS = {
    "a.test": SigningKey.from_seed(bytes([1]) * 32, "a_AAAA"),
    "b.test": SigningKey.from_seed(bytes([2]) * 32, "a_BBBB"),
    "c.test": SigningKey.from_seed(bytes([3]) * 32, "a_CCCC"),
}
IDENTITY_KEY = SigningKey.from_seed(bytes([9]) * 32, "0")

ROOM_ID = "!room:a.test"
ALICE = "@alice:a.test"  # creator, 100
MOD = "@mod:a.test"  # 50
DAVE = "@dave:a.test"  # same server as the creator, 0
MOD2 = "@mod2:b.test"  # 50
BOB = "@bob:b.test"  # 0
CAROL = "@carol:b.test"  # 0
EVE = "@eve:c.test"  # 0, never in the room unless a case says so

BASE_PL: dict[str, Any] = {
    "users": {ALICE: 100, MOD: 50, MOD2: 50},
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 50,
    "events": {"m.room.history_visibility": 100},
    "notifications": {"room": 50},
}

VIA = "join_authorised_via_users_server"


@dataclass(frozen=True)
class Step:
    """An event to build: who sends what."""

    sender: str
    type: str
    content: dict[str, Any]
    state_key: str | None = None
    redacts: str | None = None


class Room:
    """A room's state and forward extremity, grown one authorised event at a time."""

    def __init__(self) -> None:
        self.state: dict[tuple[str, str], Event] = {}
        self.events: dict[str, Event] = {}
        self.prev: list[str] = []
        self.depth = 0

    @classmethod
    def standard(
        cls,
        join_rule: str | None = "invite",
        pl: dict[str, Any] | None = None,
        create_extra: dict[str, Any] | None = None,
    ) -> Room:
        room = cls()
        room.send(Step(ALICE, "m.room.create", {"creator": ALICE, "room_version": "10", **(create_extra or {})}, ""))
        room.send(member(ALICE, ALICE, "join"))
        room.send(Step(ALICE, "m.room.power_levels", {**copy.deepcopy(BASE_PL), **(pl or {})}, ""))
        if join_rule is not None:
            room.send(Step(ALICE, "m.room.join_rules", {"join_rule": join_rule}, ""))
        room.send(Step(ALICE, "m.room.history_visibility", {"history_visibility": "shared"}, ""))
        return room

    def build(self, step: Step, *, prev: list[str] | None = None, cosign: tuple[str, ...] = ()) -> Event:
        auth = self.auth_state_for(step.type, step.sender, step.state_key, step.content)
        server = server_name_of(step.sender)
        event = build_event(
            room_id=ROOM_ID,
            sender=step.sender,
            type=step.type,
            content=step.content,
            prev_events=self.prev if prev is None else prev,
            auth_events=[e.event_id for e in auth.values()],
            depth=self.depth + 1,
            origin_server_ts=1_700_000_000_000 + self.depth,
            server_name=server,
            signing_key=KEYS[server],
            state_key=step.state_key,
            redacts=step.redacts,
        )
        for other in cosign:
            event = Event(event.event_id, add_signature(event.pdu, other, KEYS[other]))
        return event

    def auth_state_for(self, event_type: str, sender: str, state_key: str | None, content: dict) -> dict:
        return select_auth_state(self.state, event_type, sender, state_key, content)

    def auth_state(self, event: Event) -> dict:
        return self.auth_state_for(event.type, event.sender, event.state_key, event.content)

    def apply(self, event: Event) -> Event:
        check_auth(event, self.auth_state(event))
        self.events[event.event_id] = event
        self.prev = [event.event_id]
        self.depth += 1
        if event.state_key is not None:
            self.state[(event.type, event.state_key)] = event
        return event

    def send(self, step: Step, **kwargs: Any) -> Event:
        return self.apply(self.build(step, **kwargs))

    def add_member(self, user: str) -> None:
        self.send(member(ALICE, user, "invite"))
        self.send(member(user, user, "join"))


def member(sender: str, target: str | None, membership: str | None, **extra: Any) -> Step:
    content = dict(extra)
    if membership is not None:
        content["membership"] = membership
    return Step(sender, "m.room.member", content, target)


def msg(sender: str) -> Step:
    return Step(sender, "m.room.message", {"msgtype": "m.text", "body": "hi"})


def state(sender: str, event_type: str, content: dict[str, Any] | None = None, key: str = "") -> Step:
    return Step(sender, event_type, content or {}, key)


def pl(sender: str, users: dict[str, int | None] | None = None, **changes: Any) -> Step:
    """A power levels event: BASE_PL with ``changes``; ``users`` entries set (None = removed)."""
    content = copy.deepcopy(BASE_PL)
    for name, value in changes.items():
        if value is None:
            content.pop(name, None)
        else:
            content[name] = value
    for user, level in (users or {}).items():
        if level is None:
            content["users"].pop(user, None)
        else:
            content["users"][user] = level
    return Step(sender, "m.room.power_levels", content, "")


def redaction(sender: str) -> Step:
    return Step(sender, "m.room.redaction", {"reason": "spam"}, None, "$some-event")


Attempt = Step | Callable[[Room], tuple[Event, dict]]


@dataclass
class Case:
    name: str
    attempt: Attempt
    error: str | None = None  # regex on AuthError.reason; None: the event is allowed
    join_rule: str | None = "invite"
    members: tuple[str, ...] = ()
    setup: tuple[Step, ...] = ()
    pl: dict[str, Any] | None = None
    create_extra: dict[str, Any] = field(default_factory=dict)


# -- special attempts (need cosigning, custom prev_events or a hand-made auth state) ---


def restricted_join(via: str, *, cosign: tuple[str, ...]) -> Callable[[Room], tuple[Event, dict]]:
    def attempt(room: Room) -> tuple[Event, dict]:
        event = room.build(member(CAROL, CAROL, "join", **{VIA: via}), cosign=cosign)
        return event, room.auth_state(event)

    return attempt


def creator_join_after_create(user: str) -> Callable[[Room], tuple[Event, dict]]:
    def attempt(_: Room) -> tuple[Event, dict]:
        fresh = Room()
        create = fresh.send(Step(ALICE, "m.room.create", {"creator": ALICE, "room_version": "10"}, ""))
        event = fresh.build(member(user, user, "join"), prev=[create.event_id])
        return event, fresh.auth_state(event)

    return attempt


def first_power_levels(room: Room) -> tuple[Event, dict]:
    fresh = Room()
    fresh.send(Step(ALICE, "m.room.create", {"creator": ALICE, "room_version": "10"}, ""))
    fresh.send(member(ALICE, ALICE, "join"))
    event = fresh.build(Step(ALICE, "m.room.power_levels", {"users": {ALICE: 9000, BOB: 9000}, "kick": 9000}, ""))
    return event, fresh.auth_state(event)


def create_event(room_id: str = "!new:a.test", sender: str = ALICE, prev: list[str] | None = None,
                 **content: Any) -> Callable[[Room], tuple[Event, dict]]:
    def attempt(_: Room) -> tuple[Event, dict]:
        server = server_name_of(sender)
        event = build_event(
            room_id=room_id, sender=sender, type="m.room.create", content=content, prev_events=prev or [],
            auth_events=[], depth=1, origin_server_ts=1, server_name=server, signing_key=KEYS[server],
            state_key="",
        )
        return event, {}

    return attempt


def with_auth_state(step: Step, edit: Callable[[Room, dict], None]) -> Callable[[Room], tuple[Event, dict]]:
    def attempt(room: Room) -> tuple[Event, dict]:
        event = room.build(step)
        auth = dict(room.auth_state(event))
        edit(room, auth)
        return event, auth

    return attempt


def _other_room_create(room: Room, auth: dict) -> None:
    auth[("m.room.create", "")] = build_event(
        room_id="!elsewhere:a.test", sender=ALICE, type="m.room.create", content={"creator": ALICE},
        prev_events=[], auth_events=[], depth=1, origin_server_ts=1, server_name="a.test",
        signing_key=KEYS["a.test"], state_key="",
    )


def _third_party_invite_event(sender: str, token: str = "tok") -> Step:
    key = IDENTITY_KEY.public_key_base64
    return state(
        sender,
        "m.room.third_party_invite",
        {
            "display_name": "c...@example.org",
            "key_validity_url": "https://id.test/_matrix/identity/v2/pubkey/isvalid",
            "public_key": key,
            "public_keys": [{"public_key": key, "key_validity_url": "https://id.test/isvalid"}],
        },
        key=token,
    )


def third_party_invite(
    sender: str = MOD, mxid: str = CAROL, token: str = "tok", key: SigningKey = IDENTITY_KEY
) -> Step:
    signed = sign_json({"mxid": mxid, "token": token}, "id.test", key)
    return member(sender, CAROL, "invite", third_party_invite={"display_name": "c...", "signed": signed})


# -- the table -------------------------------------------------------------------

NOT_JOINED = "is not joined"

CASES = [
    # sending messages
    Case("creator sends a message", msg(ALICE)),
    Case("joined member sends a message", msg(BOB), members=(BOB,)),
    Case("non-member cannot send", msg(EVE), NOT_JOINED),
    Case("invited user cannot send before joining", msg(BOB), NOT_JOINED, setup=(member(ALICE, BOB, "invite"),)),
    Case("user who left cannot send", msg(BOB), NOT_JOINED, members=(BOB,), setup=(member(BOB, BOB, "leave"),)),
    Case("below events_default cannot send", msg(BOB), "needs power level 10", members=(BOB,),
         pl={"events_default": 10}),
    Case("events override raises a message type", msg(MOD), "needs power level 60", members=(MOD,),
         pl={"events": {"m.room.message": 60}}),
    # state events
    Case("state event needs state_default", state(BOB, "m.room.topic", {"topic": "t"}), "needs power level 50",
         members=(BOB,)),
    Case("moderator at state_default sets the topic", state(MOD, "m.room.topic", {"topic": "t"}), members=(MOD,)),
    Case("events override lowers a state type", state(BOB, "m.room.topic", {"topic": "t"}), members=(BOB,),
         pl={"events": {"m.room.topic": 0}}),
    Case("events override above state_default", state(MOD, "m.room.history_visibility",
         {"history_visibility": "joined"}), "needs power level 100", members=(MOD,)),
    Case("state_key of another user is forbidden", state(BOB, "org.example.status", key=CAROL), "state_key",
         members=(BOB,), pl={"events": {"org.example.status": 0}}),
    Case("state_key of own user ID is allowed", state(BOB, "org.example.status", key=BOB), members=(BOB,),
         pl={"events": {"org.example.status": 0}}),
    Case("state_key '@' rule binds admins too", state(ALICE, "org.example.status", key=BOB), "state_key"),
    Case("state_key not starting with '@' is free", state(ALICE, "org.example.status", key="x@y")),
    # invites
    Case("moderator invites", member(MOD, CAROL, "invite"), members=(MOD,)),
    Case("member below invite level cannot invite", member(BOB, CAROL, "invite"), "invite level", members=(BOB,)),
    Case("invite level 0 lets members invite", member(BOB, CAROL, "invite"), members=(BOB,), pl={"invite": 0}),
    Case("banned user cannot be invited", member(ALICE, CAROL, "invite"), "membership is 'ban'",
         setup=(member(ALICE, CAROL, "ban"),)),
    Case("joined user cannot be invited", member(ALICE, BOB, "invite"), "membership is 'join'", members=(BOB,)),
    Case("non-member cannot invite", member(EVE, CAROL, "invite"), NOT_JOINED),
    Case("invited user may be invited again", member(ALICE, BOB, "invite"), setup=(member(ALICE, BOB, "invite"),)),
    # joins
    Case("public room: anyone joins", member(EVE, EVE, "join"), join_rule="public"),
    Case("invite-only: no join without invite", member(EVE, EVE, "join"), "needs an invite"),
    Case("invite-only: join after invite", member(EVE, EVE, "join"), setup=(member(ALICE, EVE, "invite"),)),
    Case("joined user may join again (profile change)", member(BOB, BOB, "join", displayname="B"), members=(BOB,)),
    Case("banned user cannot join a public room", member(EVE, EVE, "join"), "banned", join_rule="public",
         setup=(member(ALICE, EVE, "ban"),)),
    Case("cannot join on behalf of another user", member(BOB, EVE, "join"), "on behalf", join_rule="public"),
    Case("knock rule: join after invite", member(EVE, EVE, "join"), join_rule="knock",
         setup=(member(ALICE, EVE, "invite"),)),
    Case("knock rule: no join without invite", member(EVE, EVE, "join"), "needs an invite", join_rule="knock"),
    Case("restricted: join authorised by a joined moderator", restricted_join(MOD, cosign=("a.test",)),
         join_rule="restricted", members=(MOD,)),
    Case("knock_restricted: join authorised by a moderator", restricted_join(MOD, cosign=("a.test",)),
         join_rule="knock_restricted", members=(MOD,)),
    Case("restricted: join without authorising user", member(CAROL, CAROL, "join"), f"without {VIA}",
         join_rule="restricted"),
    Case("restricted: authorising user below invite level", restricted_join(BOB, cosign=()), "may not invite",
         join_rule="restricted", members=(BOB,)),
    Case("restricted: authorising user not joined", restricted_join(MOD, cosign=("a.test",)), "not joined",
         join_rule="restricted"),
    Case("restricted: authorising server did not sign", restricted_join(MOD, cosign=()), "not signed by the server",
         join_rule="restricted", members=(MOD,)),
    Case("restricted: invited user needs no authoriser", member(CAROL, CAROL, "join"), join_rule="restricted",
         setup=(member(ALICE, CAROL, "invite"),)),
    Case("restricted: authoriser must be a user ID", member(CAROL, CAROL, "join", **{VIA: "mod"}), "not a user ID",
         join_rule="restricted"),
    Case("unknown join rule rejects joins", member(EVE, EVE, "join"), "does not allow joining", join_rule="private"),
    Case("no join rules event means invite-only", member(EVE, EVE, "join"), "needs an invite", join_rule=None),
    Case("creator joins straight after the create event", creator_join_after_create(ALICE)),
    Case("only the creator may use the first-join rule", creator_join_after_create(BOB), "needs an invite"),
    Case("creator who left needs an invite like anyone", member(ALICE, ALICE, "join"), "needs an invite",
         setup=(member(ALICE, ALICE, "leave"),)),
    # leaving
    Case("member leaves", member(BOB, BOB, "leave"), members=(BOB,)),
    Case("invited user rejects the invite", member(BOB, BOB, "leave"), setup=(member(ALICE, BOB, "invite"),)),
    Case("knocking user rescinds the knock", member(EVE, EVE, "leave"), join_rule="knock",
         setup=(member(EVE, EVE, "knock"),)),
    Case("cannot leave a room one is not in", member(EVE, EVE, "leave"), "membership 'leave'"),
    Case("banned user cannot unban themself", member(BOB, BOB, "leave"), "membership 'ban'",
         setup=(member(ALICE, BOB, "ban"),)),
    # kicking
    Case("moderator kicks a member", member(MOD, BOB, "leave"), members=(MOD, BOB)),
    Case("moderator revokes an invite", member(MOD, CAROL, "leave"), members=(MOD,),
         setup=(member(ALICE, CAROL, "invite"),)),
    Case("member below kick level cannot kick", member(BOB, CAROL, "leave"), "kick level", members=(BOB, CAROL)),
    Case("cannot kick a higher user", member(MOD, ALICE, "leave"), "not below", members=(MOD,)),
    Case("cannot kick an equal user", member(MOD, MOD2, "leave"), "not below", members=(MOD, MOD2)),
    Case("non-member cannot kick", member(EVE, BOB, "leave"), NOT_JOINED, members=(BOB,)),
    # banning and unbanning
    Case("moderator bans a member", member(MOD, BOB, "ban"), members=(MOD, BOB)),
    Case("moderator bans a non-member", member(MOD, EVE, "ban"), members=(MOD,)),
    Case("member below ban level cannot ban", member(BOB, CAROL, "ban"), "ban level", members=(BOB, CAROL)),
    Case("cannot ban an equal user", member(MOD, MOD2, "ban"), "not below", members=(MOD, MOD2)),
    Case("non-member cannot ban", member(EVE, BOB, "ban"), NOT_JOINED, members=(BOB,)),
    Case("moderator unbans", member(MOD, EVE, "leave"), members=(MOD,), setup=(member(ALICE, EVE, "ban"),)),
    Case("unban needs the ban level as well as kick", member(MOD, EVE, "leave"), "needs the ban level",
         members=(MOD,), pl={"ban": 60}, setup=(member(ALICE, EVE, "ban"),)),
    # knocking
    Case("knock where the join rule allows it", member(EVE, EVE, "knock"), join_rule="knock"),
    Case("knock_restricted allows knocking", member(EVE, EVE, "knock"), join_rule="knock_restricted"),
    Case("no knocking on an invite-only room", member(EVE, EVE, "knock"), "does not allow knocking"),
    Case("no knocking on behalf of another", member(BOB, EVE, "knock"), "on behalf", join_rule="knock",
         members=(BOB,)),
    Case("banned user cannot knock", member(EVE, EVE, "knock"), "membership 'ban'", join_rule="knock",
         setup=(member(ALICE, EVE, "ban"),)),
    Case("joined user cannot knock", member(BOB, BOB, "knock"), "membership 'join'", join_rule="knock",
         members=(BOB,)),
    # malformed membership events
    Case("unknown membership", member(ALICE, ALICE, "dance"), "unknown membership"),
    Case("membership missing", member(ALICE, ALICE, None), "content.membership"),
    Case("member event without state_key", member(ALICE, None, "join"), "state_key"),
    # power levels
    Case("admin raises a moderator to own level", pl(ALICE, users={MOD: 100})),
    Case("moderator cannot raise someone above own level", pl(MOD, users={BOB: 60}), "above your own level",
         members=(MOD, BOB)),
    Case("moderator can raise someone to own level", pl(MOD, users={BOB: 50}), members=(MOD, BOB)),
    Case("moderator cannot change a user at own level", pl(MOD, users={MOD2: 0}), "at or above your level",
         members=(MOD,)),
    Case("moderator cannot demote the admin", pl(MOD, users={ALICE: 0}), "at or above your level", members=(MOD,)),
    Case("moderator cannot remove the admin's entry", pl(MOD, users={ALICE: None}), "at or above your level",
         members=(MOD,)),
    Case("moderator may lower own level", pl(MOD, users={MOD: 10}), members=(MOD,)),
    Case("moderator cannot raise own level", pl(MOD, users={MOD: 51}), "above your own level", members=(MOD,)),
    Case("moderator lowers the kick level", pl(MOD, kick=40), members=(MOD,)),
    Case("moderator cannot set ban above own level", pl(MOD, ban=60), "above your own level", members=(MOD,)),
    Case("moderator cannot change a level above own", pl(MOD, events={"m.room.history_visibility": 50}),
         "at or above your level", members=(MOD,)),
    Case("moderator cannot add an events entry above own", pl(MOD, events={"m.room.history_visibility": 100,
         "org.example": 75}), "above your own level", members=(MOD,)),
    Case("moderator cannot set notifications above own", pl(MOD, notifications={"room": 75}),
         "above your own level", members=(MOD,)),
    Case("member below state_default cannot send power levels", pl(BOB), "needs power level 50", members=(BOB,)),
    Case("v10: string power level rejected", pl(ALICE, ban="50"), "ban must be an integer"),
    Case("v10: string user level rejected", pl(ALICE, users={BOB: "10"}), "users values must be integers"),  # type: ignore[dict-item]
    Case("v10: boolean is not an integer", pl(ALICE, kick=True), "kick must be an integer"),
    Case("v10: events values must be integers", pl(ALICE, events={"m.room.name": "50"}), "must map to integers"),
    Case("v10: notifications must be an object", pl(ALICE, notifications=50), "must map to integers"),
    Case("users keys must be user IDs", pl(ALICE, users={"bob": 0}), "not a user ID"),
    Case("users must be an object", Step(ALICE, "m.room.power_levels", {**BASE_PL, "users": [ALICE]}, ""),
         "users must be an object"),
    Case("first power levels event may set anything", first_power_levels),
    # redactions: at auth time only the level for the event type counts
    Case("member may send a redaction", redaction(BOB), members=(BOB,)),
    Case("redaction type raised in events", redaction(BOB), "needs power level 50", members=(BOB,),
         pl={"events": {"m.room.redaction": 50}}),
    Case("non-member cannot redact", redaction(EVE), NOT_JOINED),
    # third-party invites
    Case("moderator sends m.room.third_party_invite", _third_party_invite_event(MOD), members=(MOD,)),
    Case("member below invite level cannot", _third_party_invite_event(BOB), "invite level", members=(BOB,)),
    Case("third-party invite signed by the identity server", third_party_invite(), members=(MOD,),
         setup=(_third_party_invite_event(MOD),)),
    Case("third-party invite for another mxid", third_party_invite(mxid=EVE), "mxid", members=(MOD,),
         setup=(_third_party_invite_event(MOD),)),
    Case("third-party invite with a forged signature", third_party_invite(key=KEYS["a.test"]), "not signed by a key",
         members=(MOD,), setup=(_third_party_invite_event(MOD),)),
    Case("third-party invite by another sender", third_party_invite(sender=ALICE), "did not send", members=(MOD,),
         setup=(_third_party_invite_event(MOD),)),
    Case("third-party invite with an unknown token", third_party_invite(token="other"), "no m.room.third_party",
         members=(MOD,), setup=(_third_party_invite_event(MOD),)),
    Case("third-party invite of a banned user", third_party_invite(), "banned", members=(MOD,),
         setup=(_third_party_invite_event(MOD), member(ALICE, CAROL, "ban"))),
    Case("third-party invite without signed", member(MOD, CAROL, "invite", third_party_invite={}), "no signed",
         members=(MOD,)),
    # create events
    Case("valid create event", create_event(creator=ALICE, room_version="10")),
    Case("create without room_version passes rule 1", create_event(creator=ALICE)),
    Case("second create (has prev_events)", create_event(room_id=ROOM_ID, prev=["$earlier"], creator=ALICE),
         "no prev_events"),
    Case("create on another server's room ID", create_event(room_id="!new:b.test", creator=ALICE),
         "different servers"),
    Case("create without creator", create_event(room_version="10"), "no creator"),
    Case("create for another room version", create_event(creator=ALICE, room_version="9"), "not handled"),
    # auth events sanity and federation
    Case("auth state with an unexpected type", with_auth_state(msg(ALICE), lambda r, a: a.__setitem__(
        ("m.room.history_visibility", ""), r.state[("m.room.history_visibility", "")])), "may cite"),
    Case("auth state without the create event", with_auth_state(msg(ALICE), lambda r, a: a.pop(
        ("m.room.create", ""))), "no m.room.create"),
    Case("auth state entry holding another event", with_auth_state(msg(ALICE), lambda r, a: a.__setitem__(
        ("m.room.power_levels", ""), r.state[("m.room.join_rules", "")])), "holds a different event"),
    Case("auth event from another room", with_auth_state(msg(ALICE), _other_room_create), "another room"),
    Case("target's membership is allowed only for member events", with_auth_state(msg(ALICE), lambda r, a: a.__setitem__(
        ("m.room.member", BOB), r.state[("m.room.member", BOB)])), "may cite", members=(BOB,)),
    Case("m.federate false: other servers cannot join", member(EVE, EVE, "join"), "does not federate",
         join_rule="public", create_extra={"m.federate": False}),
    Case("m.federate false: same server joins", member(DAVE, DAVE, "join"), join_rule="public",
         create_extra={"m.federate": False}),
]


def test_table_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_auth_rules(case: Case):
    room = Room.standard(case.join_rule, case.pl, case.create_extra)
    for user in case.members:
        room.add_member(user)
    for step in case.setup:
        room.send(step)
    if isinstance(case.attempt, Step):
        event = room.build(case.attempt)
        auth_state = room.auth_state(event)
        # The event's own auth events give the same map (checks before/at receipt agree).
        listed = [room.events[event_id] for event_id in event.auth_events]
        assert auth_state_from_events(event, listed) == auth_state
    else:
        event, auth_state = case.attempt(room)
    if case.error is None:
        check_auth(event, auth_state)
    else:
        with pytest.raises(AuthError, match=case.error) as info:
            check_auth(event, auth_state)
        assert info.value.reason == str(info.value)


# -- auth event selection -------------------------------------------------------

SELECTION = [
    ("m.room.create", ALICE, "", {"creator": ALICE}, []),
    ("m.room.message", BOB, None, {"body": "x"}, [("m.room.create", ""), ("m.room.power_levels", ""),
                                                 ("m.room.member", BOB)]),
    ("m.room.topic", BOB, "", {}, [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", BOB)]),
    ("m.room.member", BOB, BOB, {"membership": "join"}, [("m.room.create", ""), ("m.room.power_levels", ""),
     ("m.room.member", BOB), ("m.room.join_rules", "")]),
    ("m.room.member", ALICE, BOB, {"membership": "invite"}, [("m.room.create", ""), ("m.room.power_levels", ""),
     ("m.room.member", ALICE), ("m.room.member", BOB), ("m.room.join_rules", "")]),
    ("m.room.member", BOB, BOB, {"membership": "knock"}, [("m.room.create", ""), ("m.room.power_levels", ""),
     ("m.room.member", BOB), ("m.room.join_rules", "")]),
    ("m.room.member", ALICE, BOB, {"membership": "ban"}, [("m.room.create", ""), ("m.room.power_levels", ""),
     ("m.room.member", ALICE), ("m.room.member", BOB)]),
    ("m.room.member", BOB, BOB, {"membership": "leave"}, [("m.room.create", ""), ("m.room.power_levels", ""),
     ("m.room.member", BOB)]),
    ("m.room.member", ALICE, BOB, {"membership": "invite", "third_party_invite": {"signed": {"token": "t"}}},
     [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", ALICE), ("m.room.member", BOB),
      ("m.room.join_rules", ""), ("m.room.third_party_invite", "t")]),
    ("m.room.member", BOB, BOB, {"membership": "join", VIA: MOD}, [("m.room.create", ""),
     ("m.room.power_levels", ""), ("m.room.member", BOB), ("m.room.join_rules", ""), ("m.room.member", MOD)]),
    ("m.room.member", BOB, BOB, {"membership": "invite", "third_party_invite": "junk"}, [("m.room.create", ""),
     ("m.room.power_levels", ""), ("m.room.member", BOB), ("m.room.join_rules", "")]),
]


@pytest.mark.parametrize("event_type, sender, state_key, content, expected", SELECTION)
def test_auth_types_for_event(event_type, sender, state_key, content, expected):
    assert auth_types_for_event(event_type, sender, state_key, content) == expected


def test_auth_state_from_events_rejects_bad_lists():
    room = Room.standard()
    room.add_member(BOB)
    event = room.build(msg(BOB))
    listed = [room.events[i] for i in event.auth_events]
    with pytest.raises(AuthError, match="missing"):
        auth_state_from_events(event, listed[:-1])
    stranger = room.state[("m.room.join_rules", "")]
    with pytest.raises(AuthError, match="not among"):
        auth_state_from_events(event, [*listed, stranger])
    # two events for the same (type, state_key) pair: rule 2.1
    old_join = room.events[next(i for i, e in room.events.items()
                                if e.type == "m.room.member" and e.state_key == BOB and e.content["membership"] == "invite")]
    doubled = room.build(msg(BOB))
    doubled = Event.from_pdu({**doubled.pdu, "auth_events": [*event.auth_events, old_join.event_id]})
    with pytest.raises(AuthError, match="duplicate"):
        auth_state_from_events(doubled, [*listed, old_join])
    message = room.send(msg(BOB))
    with_message = Event.from_pdu({**event.pdu, "auth_events": [*event.auth_events, message.event_id]})
    with pytest.raises(AuthError, match="not a state event"):
        auth_state_from_events(with_message, [*listed, message])


# -- level helpers ---------------------------------------------------------------


def test_power_level_helpers():
    room = Room.standard()
    create = room.state[("m.room.create", "")]
    content = room.state[("m.room.power_levels", "")].content
    assert power_level_for_user(None, create, ALICE) == 100
    assert power_level_for_user(None, create, BOB) == 0
    assert power_level_for_user(None, None, ALICE) == 0
    assert power_level_for_user(content, create, MOD) == 50
    assert power_level_for_user(content, create, BOB) == 0
    assert power_level_for_user({"users_default": 7}, create, ALICE) == 7  # the PL event overrides the creator rule
    assert [action_power_level(None, a) for a in ("invite", "kick", "ban", "redact")] == [0, 50, 50, 50]
    assert action_power_level(content, "invite") == 50
    assert required_power_level_for("m.room.message", False, None) == 0
    assert required_power_level_for("m.room.topic", True, None) == 50
    assert required_power_level_for("m.room.history_visibility", True, content) == 100
    assert required_power_level_for("x", False, {"events_default": 3}) == 3
    assert required_power_level(room.build(msg(ALICE)), {"events": {"m.room.message": 20}}) == 20
    assert required_power_level(room.build(state(ALICE, "m.room.name")), {"state_default": 40}) == 40


@pytest.mark.parametrize(
    "sender, original, expected",
    [
        (MOD, BOB, True),  # at the redact level
        (BOB, BOB, True),  # own event
        (BOB, CAROL, True),  # same server: that server vouches (client API also compares users)
        (BOB, DAVE, False),  # other server, below redact level
        (EVE, ALICE, False),
        (ALICE, EVE, True),
    ],
)
def test_redaction_allowed(sender, original, expected):
    room = Room.standard()
    content = room.state[("m.room.power_levels", "")].content
    create = room.state[("m.room.create", "")]
    assert redaction_allowed(sender, original, content, create) is expected


def test_redaction_allowed_honours_the_redact_level():
    assert redaction_allowed(BOB, DAVE, {"redact": 0}, None) is True
    assert redaction_allowed(MOD, EVE, {"redact": 60, "users": {MOD: 50}}, None) is False
