"""Authorization rules of room versions 2-12, table-driven.

Every case builds a small room in memory with real signed events (create,
creator join, power levels, join rules, history visibility, then its own
setup steps, each of which must itself pass auth), then builds one more
event and checks it against the state the auth event selection picks.
Each case runs in every room version it names (all by default): cases
whose outcome a version changes come in pairs, one per side of the change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from room_dag import (
    ALICE,
    BASE_PL,
    BOB,
    CAROL,
    CREATE_KEY,
    DAVE,
    EVE,
    KEYS,
    MOD,
    MOD2,
    VIA,
    Room,
    Step,
    adapt,
    create_content,
    member,
    msg,
    pl,
    state,
)

from lowband.gateway.matrix.auth_rules import (
    CREATOR_POWER_LEVEL,
    AuthError,
    action_power_level,
    auth_state_from_events,
    auth_types_for_event,
    check_auth,
    power_level_for_user,
    redaction_allowed,
    required_power_level,
    required_power_level_for,
    room_creators,
)
from lowband.gateway.matrix.canonical_json import MAX_SAFE_INTEGER
from lowband.gateway.matrix.events import Event, build_event, server_name_of
from lowband.gateway.matrix.room_versions import KNOWN, V2, V5, V9, V10, V11, V12, RoomVersion
from lowband.gateway.matrix.signing import SigningKey, sign_json

IDENTITY_KEY = SigningKey.from_seed(bytes([9]) * 32, "0")

ALL = tuple(KNOWN.values())


def since(identifier: str) -> tuple[RoomVersion, ...]:
    return tuple(v for v in ALL if int(v.identifier) >= int(identifier))


def until(identifier: str) -> tuple[RoomVersion, ...]:
    return tuple(v for v in ALL if int(v.identifier) <= int(identifier))


def redaction(sender: str, target: str = "$some-event") -> Step:
    return Step(sender, "m.room.redaction", {"reason": "spam"}, None, target)


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
    versions: tuple[RoomVersion, ...] = ALL


# -- special attempts (need cosigning, custom prev_events or a hand-made auth state) ---


def restricted_join(via: str, *, cosign: tuple[str, ...]) -> Callable[[Room], tuple[Event, dict]]:
    def attempt(room: Room) -> tuple[Event, dict]:
        event = room.build(member(CAROL, CAROL, "join", **{VIA: via}), cosign=cosign)
        return event, room.auth_state(event)

    return attempt


def creator_join_after_create(user: str, **create_extra: Any) -> Callable[[Room], tuple[Event, dict]]:
    """``user`` joins straight after a create event sent by ALICE (with ``create_extra`` in its content)."""

    def attempt(room: Room) -> tuple[Event, dict]:
        fresh = Room(room.version)
        create = fresh.send(Step(ALICE, "m.room.create", {**create_content(room.version), **create_extra}, ""))
        event = fresh.build(member(user, user, "join"), prev=[create.event_id])
        return event, fresh.auth_state(event)

    return attempt


def first_power_levels(room: Room) -> tuple[Event, dict]:
    fresh = Room(room.version)
    fresh.send(Step(ALICE, "m.room.create", create_content(room.version), ""))
    fresh.send(member(ALICE, ALICE, "join"))
    event = fresh.build(Step(ALICE, "m.room.power_levels", {"users": {ALICE: 9000, BOB: 9000}, "kick": 9000}, ""))
    return event, fresh.auth_state(event)


_NATURAL: Any = object()  # "!new:a.test" before v12, none in v12


def create_event(room_id: Any = _NATURAL, sender: str = ALICE, prev: list[str] | None = None,
                 content: dict[str, Any] | Callable[[RoomVersion], dict[str, Any]] | None = None,
                 ) -> Callable[[Room], tuple[Event, dict]]:
    """A create event of a new room; ``content`` (or a function of the version giving it) defaults to
    what the room version's servers write."""

    def attempt(room: Room) -> tuple[Event, dict]:
        server = server_name_of(sender)
        natural = None if room.version.room_id_is_create_hash else "!new:a.test"
        if content is None:
            body = create_content(room.version)
        else:
            body = content(room.version) if callable(content) else content
        event = build_event(
            room_id=natural if room_id is _NATURAL else room_id, sender=sender, type="m.room.create",
            content=body, prev_events=prev or [], auth_events=[], depth=1, origin_server_ts=1,
            server_name=server, signing_key=KEYS[server], state_key="", room_version=room.version,
            event_hashes={e: "AAAA" for e in prev or []},
        )
        return event, {}

    return attempt


def _named(**extra: Any) -> Callable[[RoomVersion], dict[str, Any]]:
    """Create content naming the room's own version, with ``extra`` and no creator."""
    return lambda version: {"room_version": version.identifier, **extra}


def v12_create_with_room_id(room: Room) -> tuple[Event, dict]:
    """A v12 create event that carries a room_id anyway (build_event refuses to make one: edit a built one)."""
    event, _ = create_event()(room)
    pdu = copy.deepcopy(event.pdu)
    pdu["room_id"] = "!new:a.test"
    return Event.from_pdu(pdu, room.version), {}


def with_auth_state(step: Step, edit: Callable[[Room, dict], None]) -> Callable[[Room], tuple[Event, dict]]:
    def attempt(room: Room) -> tuple[Event, dict]:
        event = room.build(step)
        auth = dict(room.auth_state(event))
        edit(room, auth)
        return event, auth

    return attempt


def _other_room_create(room: Room, auth: dict) -> None:
    other = Room(room.version)
    other.room_id = None if room.version.room_id_is_create_hash else "!elsewhere:a.test"
    auth[CREATE_KEY] = other.send(Step(ALICE, "m.room.create", create_content(room.version, topic="other"), ""))


def listing_the_create_event(room: Room) -> tuple[Event, dict]:
    """A v12 message whose auth_events also list the create event (which the room ID names)."""
    event = room.build(msg(ALICE))
    pdu = copy.deepcopy(event.pdu)
    pdu["auth_events"] = [room.create.event_id, *pdu["auth_events"]]
    return Event.from_pdu(pdu, room.version), room.auth_state(event)


def in_a_room_with_another_id(room: Room) -> tuple[Event, dict]:
    """A v12 message whose room ID is no create event's."""
    event = room.build(msg(ALICE))
    pdu = {**copy.deepcopy(event.pdu), "room_id": "!" + "A" * 43}
    forged = Event.from_pdu(pdu, room.version)
    return forged, room.auth_state(event)


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
NO_JOIN = "does not allow joining"
UNKNOWN_MEMBERSHIP = "unknown membership"
ALIASES = "m.room.aliases"

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
    # m.room.aliases: its own rule in v1-v5 (the sender's server as state_key, no power level, not even
    # membership), an ordinary state event from v6
    Case("v1-v5: a server publishes its own aliases", state(BOB, ALIASES, {"aliases": ["#x:b.test"]}, key="b.test"),
         members=(BOB,), versions=until("5")),
    Case("v6+: aliases need the state level like any state", state(BOB, ALIASES, {"aliases": []}, key="b.test"),
         "needs power level 50", members=(BOB,), versions=since("6")),
    Case("v1-v5: aliases keyed by another server are refused", state(MOD, ALIASES, {"aliases": []}, key="b.test"),
         "sender's server", members=(MOD,), versions=until("5")),
    Case("v6+: the state_key of aliases is free", state(MOD, ALIASES, {"aliases": []}, key="b.test"), members=(MOD,),
         versions=since("6")),
    Case("v1-v5: even a non-member publishes its server's aliases", state(EVE, ALIASES, {}, key="c.test"),
         versions=until("5")),
    Case("v6+: a non-member cannot send aliases", state(EVE, ALIASES, {}, key="c.test"), NOT_JOINED,
         versions=since("6")),
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
         setup=(member(ALICE, EVE, "invite"),), versions=since("7")),
    Case("v1-v6: the knock join rule is unknown, so not even the invited join", member(EVE, EVE, "join"), NO_JOIN,
         join_rule="knock", setup=(member(ALICE, EVE, "invite"),), versions=until("6")),
    Case("knock rule: no join without invite", member(EVE, EVE, "join"), "needs an invite", join_rule="knock",
         versions=since("7")),
    Case("restricted: join authorised by a joined moderator", restricted_join(MOD, cosign=("a.test",)),
         join_rule="restricted", members=(MOD,), versions=since("8")),
    # (an unknown join rule lets nobody in, not even the invited: the authoriser cannot be a member)
    Case("v1-v7: the restricted join rule is unknown", restricted_join(ALICE, cosign=("a.test",)), NO_JOIN,
         join_rule="restricted", versions=until("7")),
    Case("knock_restricted: join authorised by a moderator", restricted_join(MOD, cosign=("a.test",)),
         join_rule="knock_restricted", members=(MOD,), versions=since("10")),
    Case("v1-v9: the knock_restricted join rule is unknown", restricted_join(ALICE, cosign=("a.test",)), NO_JOIN,
         join_rule="knock_restricted", versions=until("9")),
    Case("restricted: join without authorising user", member(CAROL, CAROL, "join"), f"without {VIA}",
         join_rule="restricted", versions=since("8")),
    Case("restricted: authorising user below invite level", restricted_join(BOB, cosign=()), "may not invite",
         join_rule="restricted", members=(BOB,), versions=since("8")),
    Case("restricted: authorising user not joined", restricted_join(MOD, cosign=("a.test",)), "not joined",
         join_rule="restricted", versions=since("8")),
    Case("restricted: authorising server did not sign", restricted_join(MOD, cosign=()), "not signed by the server",
         join_rule="restricted", members=(MOD,), versions=since("8")),
    Case("v1-v7: join_authorised_via_users_server means nothing", member(CAROL, CAROL, "join", **{VIA: MOD}),
         join_rule="public", members=(MOD,), versions=until("7")),
    Case("restricted: invited user needs no authoriser", member(CAROL, CAROL, "join"), join_rule="restricted",
         setup=(member(ALICE, CAROL, "invite"),), versions=since("8")),
    Case("restricted: authoriser must be a user ID", member(CAROL, CAROL, "join", **{VIA: "mod"}), "not a user ID",
         join_rule="restricted", versions=since("8")),
    Case("unknown join rule rejects joins", member(EVE, EVE, "join"), NO_JOIN, join_rule="private"),
    Case("no join rules event means invite-only", member(EVE, EVE, "join"), "needs an invite", join_rule=None),
    Case("creator joins straight after the create event", creator_join_after_create(ALICE)),
    Case("only the creator may use the first-join rule", creator_join_after_create(BOB), "needs an invite"),
    Case("creator who left needs an invite like anyone", member(ALICE, ALICE, "join"), "needs an invite",
         setup=(member(ALICE, ALICE, "leave"),)),
    # v11 (MSC2175): the creator is the create event's sender; content.creator means nothing
    Case("v1-v10: content.creator makes the first join", creator_join_after_create(BOB, creator=BOB),
         versions=until("10")),
    Case("v11+: content.creator is no creator", creator_join_after_create(BOB, creator=BOB), "needs an invite",
         versions=since("11")),
    Case("v1-v10: the create event's sender is not the creator named", creator_join_after_create(ALICE, creator=BOB),
         "needs an invite", versions=until("10")),
    Case("v11+: the create event's sender is the creator", creator_join_after_create(ALICE, creator=BOB),
         versions=since("11")),
    Case("v12: an additional creator has no first-join right", creator_join_after_create(BOB, additional_creators=[BOB]),
         "needs an invite", versions=since("12")),
    # leaving
    Case("member leaves", member(BOB, BOB, "leave"), members=(BOB,)),
    Case("invited user rejects the invite", member(BOB, BOB, "leave"), setup=(member(ALICE, BOB, "invite"),)),
    Case("knocking user rescinds the knock", member(EVE, EVE, "leave"), join_rule="knock",
         setup=(member(EVE, EVE, "knock"),), versions=since("7")),
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
    # knocking (v7+; before it "knock" is no membership at all)
    Case("knock where the join rule allows it", member(EVE, EVE, "knock"), join_rule="knock", versions=since("7")),
    Case("v1-v6: knock is an unknown membership", member(EVE, EVE, "knock"), UNKNOWN_MEMBERSHIP, join_rule="knock",
         versions=until("6")),
    Case("knock_restricted allows knocking", member(EVE, EVE, "knock"), join_rule="knock_restricted",
         versions=since("10")),
    Case("v7-v9: no knocking on knock_restricted", member(EVE, EVE, "knock"), "does not allow knocking",
         join_rule="knock_restricted", versions=since("7")[:3]),
    Case("no knocking on an invite-only room", member(EVE, EVE, "knock"), "does not allow knocking",
         versions=since("7")),
    Case("no knocking on behalf of another", member(BOB, EVE, "knock"), "on behalf", join_rule="knock",
         members=(BOB,), versions=since("7")),
    Case("banned user cannot knock", member(EVE, EVE, "knock"), "membership 'ban'", join_rule="knock",
         setup=(member(ALICE, EVE, "ban"),), versions=since("7")),
    Case("joined user cannot knock", member(BOB, BOB, "knock"), "membership 'join'", join_rule="knock",
         members=(BOB,), versions=since("7")),
    # malformed membership events
    Case("unknown membership", member(ALICE, ALICE, "dance"), UNKNOWN_MEMBERSHIP),
    Case("membership missing", member(ALICE, ALICE, None), "content.membership"),
    Case("member event without state_key", member(ALICE, None, "join"), "state_key"),
    # power levels
    Case("admin raises a moderator to own level", pl(ALICE, users={MOD: 100})),
    Case("moderator cannot raise someone above own level", pl(MOD, users={BOB: 60}), "above your own level",
         members=(MOD, BOB)),
    Case("moderator can raise someone to own level", pl(MOD, users={BOB: 50}), members=(MOD, BOB)),
    Case("moderator cannot change a user at own level", pl(MOD, users={MOD2: 0}), "at or above your level",
         members=(MOD,)),
    Case("moderator cannot demote the admin", pl(MOD, users={ALICE: 0}), "at or above your level", members=(MOD,),
         versions=until("11")),
    Case("moderator cannot remove the admin's entry", pl(MOD, users={ALICE: None}), "at or above your level",
         members=(MOD,), versions=until("11")),
    Case("moderator may lower own level", pl(MOD, users={MOD: 10}), members=(MOD,)),
    Case("moderator cannot raise own level", pl(MOD, users={MOD: 51}), "above your own level", members=(MOD,)),
    Case("moderator lowers the kick level", pl(MOD, kick=40), members=(MOD,)),
    Case("moderator cannot set ban above own level", pl(MOD, ban=60), "above your own level", members=(MOD,)),
    Case("moderator cannot change a level above own", pl(MOD, events={"m.room.history_visibility": 50}),
         "at or above your level", members=(MOD,)),
    Case("moderator cannot add an events entry above own", pl(MOD, events={"m.room.history_visibility": 100,
         "org.example": 75}), "above your own level", members=(MOD,)),
    Case("v6+: moderator cannot set notifications above own", pl(MOD, notifications={"room": 75}),
         "above your own level", members=(MOD,), versions=since("6")),
    Case("v1-v5: notifications changes are not checked", pl(MOD, notifications={"room": 75}), members=(MOD,),
         versions=until("5")),
    Case("member below state_default cannot send power levels", pl(BOB), "needs power level 50", members=(BOB,)),
    Case("v10+: string power level rejected", pl(ALICE, ban="50"), "ban must be an integer", versions=since("10")),
    Case("v1-v9: an integer string is a level", pl(ALICE, ban=" +050 "), versions=until("9")),
    Case("v10+: string user level rejected", pl(ALICE, users={BOB: "10"}), "users values must be integers",
         versions=since("10")),
    Case("v1-v9: a user's level may be an integer string", pl(ALICE, users={BOB: "10"}), versions=until("9")),
    Case("v1-v9: a string that is no integer is no level", pl(ALICE, users={BOB: "10.5"}),
         "users values must be integers", versions=until("9")),
    Case("v1-v9: string levels count as their value", state(BOB, "m.room.topic", {"topic": "t"}), members=(BOB,),
         setup=(pl(ALICE, users={BOB: "50"}),), versions=until("9")),
    Case("v1-v9: a string level above the sender's is refused", pl(MOD, users={BOB: "51"}), "above your own level",
         members=(MOD,), versions=until("9")),
    Case("boolean is not a level", pl(ALICE, kick=True), "kick (must be an integer|is not a level)"),
    Case("v10+: events values must be integers", pl(ALICE, events={"m.room.name": "50"}), "must map to integers",
         versions=since("10")),
    Case("v1-v9: events values may be integer strings", pl(ALICE, events={"m.room.name": "50"}), versions=until("9")),
    Case("v10+: notifications must be an object", pl(ALICE, notifications=50), "must map to integers",
         versions=since("10")),
    Case("users keys must be user IDs", pl(ALICE, users={"bob": 0}), "not a user ID"),
    Case("users must be an object", Step(ALICE, "m.room.power_levels", {**BASE_PL, "users": [ALICE]}, ""),
         "users must be an object"),
    Case("first power levels event may set anything", first_power_levels, versions=until("11")),
    # v12 (MSC4289): creators have infinite power and no entry in users
    Case("v12: the creator cannot be given a level", pl(ALICE, users={ALICE: 0}), "creator", versions=since("12")),
    Case("v11: the creator may lower her own level", pl(ALICE, users={ALICE: 0}), versions=(V11,)),
    Case("v12: an additional creator cannot be given a level", pl(ALICE, users={BOB: 50}), "creator",
         create_extra={"additional_creators": [BOB]}, versions=since("12")),
    Case("v11: additional_creators means nothing", pl(ALICE, users={BOB: 50}),
         create_extra={"additional_creators": [BOB]}, versions=(V11,)),
    Case("v12: an additional creator holds a creator's power", pl(BOB, users={MOD: 100}), members=(BOB,),
         create_extra={"additional_creators": [BOB]}, versions=since("12")),
    Case("v11: an additional creator is an ordinary member", pl(BOB, users={MOD: 100}), "needs power level 50",
         members=(BOB,), create_extra={"additional_creators": [BOB]}, versions=(V11,)),
    Case("v12: the creator outranks the highest level", member(ALICE, MOD, "ban"), members=(MOD,),
         pl={"users": {ALICE: 100, MOD: MAX_SAFE_INTEGER}}, versions=since("12")),
    Case("v11: the creator is only as high as her level", member(ALICE, MOD, "ban"), "not below", members=(MOD,),
         pl={"users": {ALICE: 100, MOD: MAX_SAFE_INTEGER}}, versions=(V11,)),
    Case("v12: the first power levels event may not list the creator", first_power_levels, "creator",
         versions=since("12")),
    # redactions: from v3 only the level for the event type counts at auth time
    Case("member may send a redaction", redaction(BOB), members=(BOB,), versions=since("3")),
    Case("redaction type raised in events", redaction(BOB), "needs power level 50", members=(BOB,),
         pl={"events": {"m.room.redaction": 50}}),
    Case("non-member cannot redact", redaction(EVE), NOT_JOINED),
    # v1-v2 rule 11: below the redact level only events of the redaction's own server (by event ID)
    Case("v1-v2: redacting an event made on one's own server", redaction(BOB, "$x:b.test"), members=(BOB,)),
    Case("v1-v2: redacting another server's event needs the redact level", redaction(BOB, "$x:a.test"),
         "redact level", members=(BOB,), versions=until("2")),
    Case("v3+: any member may send a redaction of anything", redaction(BOB, "$x:a.test"), members=(BOB,),
         versions=since("3")),
    Case("v1-v2: the redact level redacts anything", redaction(MOD, "$x:c.test"), members=(MOD,)),
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
    Case("valid create event", create_event()),
    Case("create naming no room_version is a version 1 room's", create_event(content={"creator": ALICE}),
         "names room version '1'"),
    Case("second create (has prev_events)", create_event(prev=["$earlier:a.test"]), "no prev_events"),
    Case("create on another server's room ID", create_event(room_id="!new:b.test"), "different servers",
         versions=until("11")),
    Case("v12: a create event with a room_id", v12_create_with_room_id, "has a room_id", versions=since("12")),
    Case("v1-v10: create without creator", create_event(content=_named()), "no creator", versions=until("10")),
    Case("v11+: no creator needed", create_event(content=_named()), versions=since("11")),
    Case("create for an unknown room version", create_event(content={"creator": ALICE, "room_version": "99"}),
         "not recognised"),
    Case("create for another room version", create_event(content=lambda v: {
        "creator": ALICE, "room_version": "3" if v.identifier == "2" else "2"}), "names room version"),
    Case("v12: additional_creators must be user IDs", create_event(content=_named(additional_creators=["bob"])),
         "additional_creators", versions=since("12")),
    Case("v12: additional_creators must be a list", create_event(content=_named(additional_creators=BOB)),
         "additional_creators", versions=since("12")),
    Case("v12: additional creators on any server", create_event(content=_named(additional_creators=[BOB, EVE])),
         versions=since("12")),
    Case("v11: additional_creators is not checked", create_event(content=_named(additional_creators="junk")),
         versions=(V11,)),
    # auth events sanity and federation
    Case("auth state with an unexpected type", with_auth_state(msg(ALICE), lambda r, a: a.__setitem__(
        ("m.room.history_visibility", ""), r.state[("m.room.history_visibility", "")])), "may cite"),
    Case("auth state without the create event", with_auth_state(msg(ALICE), lambda r, a: a.pop(CREATE_KEY)),
         "create event"),
    Case("auth state entry holding another event", with_auth_state(msg(ALICE), lambda r, a: a.__setitem__(
        ("m.room.power_levels", ""), r.state[("m.room.join_rules", "")])), "holds a different event"),
    Case("create event of another room", with_auth_state(msg(ALICE), _other_room_create),
         "another room|not the ID of the create event"),
    Case("target's membership is allowed only for member events", with_auth_state(msg(ALICE), lambda r, a: a.__setitem__(
        ("m.room.member", BOB), r.state[("m.room.member", BOB)])), "may cite", members=(BOB,)),
    Case("v12: auth_events may not list the create event", listing_the_create_event, "list the create event",
         versions=since("12")),
    Case("v12: the room ID must be the create event's", in_a_room_with_another_id, "not the ID of the create event",
         versions=since("12")),
    Case("m.federate false: other servers cannot join", member(EVE, EVE, "join"), "does not federate",
         join_rule="public", create_extra={"m.federate": False}),
    Case("m.federate false: same server joins", member(DAVE, DAVE, "join"), join_rule="public",
         create_extra={"m.federate": False}),
]

RUNS = [(case, version) for case in CASES for version in case.versions]


def test_table_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    assert {v for c in CASES for v in c.versions} == set(ALL)


@pytest.mark.parametrize("case, version", RUNS, ids=[f"v{v.identifier}: {c.name}" for c, v in RUNS])
def test_auth_rules(case: Case, version: RoomVersion):
    room = Room.standard(case.join_rule, case.pl, case.create_extra, version)
    for user in case.members:
        room.add_member(user)
    for step in case.setup:
        room.send(adapt(step, version))
    if isinstance(case.attempt, Step):
        event = room.build(adapt(case.attempt, version))
        auth_state = room.auth_state(event)
        # The event's own auth events (and in v12 the create event the room ID names) give the
        # same map: the checks before and at receipt agree.
        listed = [room.events[event_id] for event_id in event.auth_events]
        implied = [room.create] if version.room_id_is_create_hash else []
        assert auth_state_from_events(event, [*listed, *implied], room_version=version) == auth_state
    else:
        event, auth_state = case.attempt(room)
    if case.error is None:
        check_auth(event, auth_state, room_version=version)
    else:
        with pytest.raises(AuthError, match=case.error) as info:
            check_auth(event, auth_state, room_version=version)
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


def test_auth_types_for_event_per_version():
    join_via = {"membership": "join", VIA: MOD}
    # v12 never selects the create event: the room ID names it
    assert auth_types_for_event("m.room.message", BOB, None, {}, room_version=V12) == [
        ("m.room.power_levels", ""), ("m.room.member", BOB)]
    assert auth_types_for_event("m.room.message", BOB, None, {}, room_version=V11)[0] == CREATE_KEY
    # the authorising user's membership only where restricted rooms exist (v8+), and only for joins
    assert ("m.room.member", MOD) in auth_types_for_event("m.room.member", BOB, BOB, join_via, room_version=KNOWN["8"])
    assert ("m.room.member", MOD) not in auth_types_for_event("m.room.member", BOB, BOB, join_via,
                                                              room_version=KNOWN["7"])
    assert ("m.room.member", MOD) not in auth_types_for_event("m.room.member", BOB, BOB,
                                                              {"membership": "leave", VIA: MOD}, room_version=V10)
    assert auth_types_for_event("m.room.create", ALICE, "", {}, room_version=V12) == []


def test_v12_auth_state_from_events_takes_the_create_event_the_room_id_names():
    room = Room.standard(version=V12)
    event = room.build(msg(ALICE))
    listed = [room.events[i] for i in event.auth_events]
    assert room.create.event_id not in event.auth_events and len(listed) == 2
    assert auth_state_from_events(event, [*listed, room.create], room_version=V12)[CREATE_KEY] == room.create
    # without the room's create event the map simply lacks it, and check_auth says so
    partial = auth_state_from_events(event, listed, room_version=V12)
    with pytest.raises(AuthError, match="create event"):
        check_auth(event, partial, room_version=V12)
    # another room's create event is an event the event does not list
    other = Room(V12)
    other_create = other.send(Step(ALICE, "m.room.create", create_content(V12, topic="x"), ""))
    with pytest.raises(AuthError, match="not among"):
        auth_state_from_events(event, [*listed, other_create], room_version=V12)
    # an event that lists its create event breaks v12's selection
    pdu = copy.deepcopy(event.pdu)
    pdu["auth_events"].append(room.create.event_id)
    with pytest.raises(AuthError, match="list the create event"):
        auth_state_from_events(Event.from_pdu(pdu, V12), [*listed, room.create], room_version=V12)


def test_v12_room_id_is_the_create_events_hash():
    room = Room.standard(version=V12)
    create = room.create
    assert "room_id" not in create.pdu
    assert create.room_id == "!" + create.event_id[1:] and len(create.room_id) == 44
    assert all(e.room_id == create.room_id for e in room.events.values())
    assert all(create.event_id not in e.auth_events for e in room.events.values())


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


def test_power_levels_per_version():
    # v11+: the create event's sender is the creator; content.creator is ignored
    for version, creator in ((V10, BOB), (V11, ALICE)):
        room = Room(version)
        create = room.send(Step(ALICE, "m.room.create", {**create_content(version), "creator": BOB}, ""))
        assert power_level_for_user(None, create, creator) == 100  # version read from the create event
        assert power_level_for_user(None, create, ({ALICE, BOB} - {creator}).pop()) == 0
        assert room_creators(create) == {creator}
    # v12: creators (sender and additional_creators) are above everything, whatever users says
    room = Room.standard(version=V12, create_extra={"additional_creators": [BOB]})
    create = room.create
    assert room_creators(create) == {ALICE, BOB}
    odd = Event.from_pdu({**create.pdu, "content": {**create.content, "additional_creators": [EVE, 5]}}, V12)
    assert room_creators(odd) == {ALICE, EVE}  # (auth refuses such a create event; reading it must not fail)
    levels = {"users": {ALICE: 0, BOB: 0}, "users_default": 0}
    assert power_level_for_user(levels, create, ALICE) == CREATOR_POWER_LEVEL > MAX_SAFE_INTEGER
    assert power_level_for_user(None, create, BOB) == CREATOR_POWER_LEVEL
    assert power_level_for_user(levels, create, MOD) == 0
    # the same create event read with v11 rules: the sender has only her level
    assert power_level_for_user(levels, create, ALICE, room_version=V11) == 0
    assert redaction_allowed(BOB, EVE, {"redact": 100}, create) is True
    assert redaction_allowed(BOB, EVE, {"redact": 100}, create, room_version=V11) is False
    # v1-v9 string levels are read as their value wherever levels are read
    assert power_level_for_user({"users": {BOB: " 42 "}}, None, BOB) == 42
    assert action_power_level({"kick": "+7"}, "kick") == 7
    assert required_power_level_for("x", True, {"events": {"x": "0030"}}) == 30


@settings(max_examples=50, deadline=None)
@given(
    extra=st.none() | st.lists(st.sampled_from([ALICE, BOB, EVE, 5, None, [BOB], {"u": BOB}]), max_size=4) | st.just(BOB),
    version=st.sampled_from([V10, V11, V12]),
)
def test_exactly_the_creators_have_the_creator_level(extra, version):
    """power_level_for_user finds creators without building room_creators' set (state resolution asks it
    once per sorted event): both must agree, whatever additional_creators holds."""
    content = {**create_content(version), **({} if extra is None else {"additional_creators": extra})}
    create = Event("$c", {"type": "m.room.create", "sender": ALICE, "state_key": "", "content": content})
    for user in (ALICE, BOB, EVE, MOD):
        at_top = power_level_for_user({"users": {user: 1}}, create, user, room_version=version) == CREATOR_POWER_LEVEL
        assert at_top is (version.privileged_creators and user in room_creators(create, version))


def test_v1_v5_float_power_levels_are_truncated():
    # build_event refuses floats (this server never writes them): edit a built event, as a v5 peer
    # could have sent it. check_auth does not look at hashes or signatures.
    room = Room.standard(version=V5)
    room.add_member(BOB)
    step = pl(ALICE, users={BOB: 50})
    pdu = copy.deepcopy(room.build(step).pdu)
    pdu["content"]["users"][BOB] = 50.9
    pdu["content"]["state_default"] = 5e1
    event = Event.from_pdu(pdu, V5)
    check_auth(event, room.auth_state(event), room_version=V5)
    room.apply(event)
    assert power_level_for_user(event.content, room.create, BOB) == 50
    room.send(state(BOB, "m.room.topic", {"topic": "t"}))  # 50 >= state_default 50.0
    # the same content in a v6+ room is not even an event (no canonical form), and v10 rules refuse it
    v9 = Room.standard(version=V9)
    pdu9 = copy.deepcopy(v9.build(pl(ALICE, users={BOB: 10})).pdu)
    pdu9["content"]["users"][BOB] = 50.9
    with pytest.raises(AuthError, match="users values"):
        check_auth(Event("$no-canonical-id", pdu9), v9.auth_state(v9.build(pl(ALICE))), room_version=V9)


def test_v1_v2_events_carry_their_id_and_hash_pairs():
    room = Room.standard(version=V2)
    room.add_member(BOB)
    message = room.send(msg(BOB))
    assert message.pdu["event_id"] == message.event_id and message.event_id.endswith(":b.test")
    pairs = message.pdu["auth_events"]
    assert all(isinstance(p, list) and set(p[1]) == {"sha256"} for p in pairs)
    assert message.auth_events == [p[0] for p in pairs] and message.prev_events == [message.pdu["prev_events"][0][0]]


# -- arbitrary content ------------------------------------------------------------------

_ROOMS: dict[str, Room] = {}


def _room_for(version: RoomVersion) -> Room:
    """One standard room per version with BOB joined (built once: rooms are only read below)."""
    if version.identifier not in _ROOMS:
        room = Room.standard(join_rule="knock" if version.knock else "invite", version=version)
        room.add_member(BOB)
        _ROOMS[version.identifier] = room
    return _ROOMS[version.identifier]


_LEVELISH = st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False) | st.sampled_from(
    [" 50 ", "+7", "-0", "1e3", "x", "", "٣"]) | st.lists(st.integers(0, 100), max_size=2)  # fmt: skip
_CONTENT = st.dictionaries(
    st.sampled_from(["membership", "users", "users_default", "events", "notifications", "ban", "kick", "invite",
                     "redact", "state_default", "join_rule", "allow", VIA, "third_party_invite", "creator",
                     "room_version", "additional_creators", "aliases", "redacts", "m.federate"]),
    _LEVELISH | st.sampled_from(["join", "invite", "leave", "ban", "knock", "public", BOB, ALICE, "12"])
    | st.dictionaries(st.sampled_from([ALICE, BOB, "bob", "m.room.name", "signed", "token", "mxid"]),
                      _LEVELISH | st.dictionaries(st.sampled_from(["mxid", "token", "signatures"]), _LEVELISH),
                      max_size=3),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from(ALL), content=_CONTENT, state_key=st.sampled_from([None, "", BOB, ALICE, "b.test"]),
       event_type=st.sampled_from(["m.room.member", "m.room.power_levels", "m.room.create", "m.room.join_rules",
                                   "m.room.aliases", "m.room.redaction", "m.room.third_party_invite", "m.room.message"]),
       sender=st.sampled_from([ALICE, BOB, EVE]))  # fmt: skip
def test_only_auth_errors_whatever_the_content(version, content, state_key, event_type, sender):
    # Content a peer could send (floats and all: check_auth sees no hashes or signatures, so the event
    # is edited after building), judged by the state its selection picks: allowed, or AuthError.
    room = _room_for(version)
    built = room.build(Step(sender, "m.room.message", {}))
    pdu = {**built.pdu, "type": event_type, "content": content}
    if state_key is None:
        pdu.pop("state_key", None)
    else:
        pdu["state_key"] = state_key
    event = Event(built.event_id, pdu)
    try:
        check_auth(event, room.auth_state(event), room_version=version)
    except AuthError:
        pass
