"""A room grown in memory from real signed events, in any room version (shared by the auth rule tests).

Every event is built with ``build_event`` for the room's version (v1–v2
with fresh ``$id:server`` IDs and ``[id, hash]`` pairs, v12 with the room
ID taken from its create event), its auth events are chosen by
``select_auth_state`` and it must pass ``check_auth`` before it joins the
state — as a server that made the room would do.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from lowband.gateway.matrix.auth_rules import check_auth, select_auth_state
from lowband.gateway.matrix.events import Event, add_signature, build_event, reference_hash, server_name_of
from lowband.gateway.matrix.room_versions import V10, RoomVersion
from lowband.gateway.matrix.signing import SigningKey, encode_base64

KEYS = {
    "a.test": SigningKey.from_seed(bytes([1]) * 32, "a_AAAA"),
    "b.test": SigningKey.from_seed(bytes([2]) * 32, "a_BBBB"),
    "c.test": SigningKey.from_seed(bytes([3]) * 32, "a_CCCC"),
}

ROOM_ID = "!room:a.test"  # versions 1-11; a version 12 room's ID comes from its create event
ALICE = "@alice:a.test"  # creator, 100 (v12: a creator, infinite)
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
CREATE_KEY = ("m.room.create", "")


@dataclass(frozen=True)
class Step:
    """An event to build: who sends what."""

    sender: str
    type: str
    content: dict[str, Any]
    state_key: str | None = None
    redacts: str | None = None


def create_content(version: RoomVersion, creator: str = ALICE, **extra: Any) -> dict[str, Any]:
    """What a server puts in a create event of ``version``: ``creator`` only before v11."""
    content: dict[str, Any] = {"room_version": version.identifier, **extra}
    if not version.implicit_room_creator:
        content["creator"] = creator
    return content


class Room:
    """A room's state and forward extremity, grown one authorised event at a time."""

    def __init__(self, version: RoomVersion = V10) -> None:
        self.version = version
        self.room_id: str | None = None if version.room_id_is_create_hash else ROOM_ID
        self.state: dict[tuple[str, str], Event] = {}
        self.events: dict[str, Event] = {}
        self.hashes: dict[str, str] = {}  # reference hashes, for v1-v2 [id, hash] pairs
        self.prev: list[str] = []
        self.depth = 0

    @classmethod
    def standard(
        cls,
        join_rule: str | None = "invite",
        pl: dict[str, Any] | None = None,
        create_extra: dict[str, Any] | None = None,
        version: RoomVersion = V10,
    ) -> Room:
        room = cls(version)
        room.send(Step(ALICE, "m.room.create", create_content(version, **(create_extra or {})), ""))
        room.send(member(ALICE, ALICE, "join"))
        levels = {**copy.deepcopy(BASE_PL), **(pl or {})}
        if version.privileged_creators:  # creators have no entry: they are above every level
            levels["users"].pop(ALICE, None)
        room.send(Step(ALICE, "m.room.power_levels", levels, ""))
        if join_rule is not None:
            room.send(Step(ALICE, "m.room.join_rules", {"join_rule": join_rule}, ""))
        room.send(Step(ALICE, "m.room.history_visibility", {"history_visibility": "shared"}, ""))
        return room

    @property
    def create(self) -> Event:
        return self.state[CREATE_KEY]

    def build(self, step: Step, *, prev: list[str] | None = None, cosign: tuple[str, ...] = ()) -> Event:
        auth = select_auth_state(self.state, step.type, step.sender, step.state_key, step.content,
                                 room_version=self.version)  # fmt: skip
        server = server_name_of(step.sender)
        event = build_event(
            room_id=None if self.room_id is None and step.type == "m.room.create" else self.room_id or "!none:a.test",
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
            room_version=self.version,
            event_hashes=self.hashes,
        )
        for other in cosign:
            event = Event(event.event_id, add_signature(event.pdu, other, KEYS[other], self.version))
        return event

    def auth_state(self, event: Event) -> dict:
        """The state the event is judged by: what the selection picks, plus (v12) the room's create event."""
        auth = select_auth_state(self.state, event.type, event.sender, event.state_key, event.content,
                                 room_version=self.version)  # fmt: skip
        if self.version.room_id_is_create_hash and event.type != "m.room.create" and CREATE_KEY in self.state:
            auth[CREATE_KEY] = self.state[CREATE_KEY]
        return auth

    def apply(self, event: Event) -> Event:
        check_auth(event, self.auth_state(event), room_version=self.version)
        self.events[event.event_id] = event
        self.hashes[event.event_id] = encode_base64(reference_hash(event.pdu, self.version))
        self.prev = [event.event_id]
        self.depth += 1
        if event.state_key is not None:
            self.state[(event.type, event.state_key)] = event
        if self.room_id is None:
            self.room_id = event.room_id  # the v12 create event names the room
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


def pl(sender: str, users: dict[str, Any] | None = None, **changes: Any) -> Step:
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


def adapt(step: Step, version: RoomVersion) -> Step:
    """``step`` as a server of ``version`` writes it: in v12 the creator's BASE_PL entry is implicit.

    Only ALICE's untouched entry (100) goes; a case that sets another level
    for her keeps it, and v12 refuses it.
    """
    users = step.content.get("users") if step.type == "m.room.power_levels" else None
    if version.privileged_creators and isinstance(users, dict) and users.get(ALICE) == 100:
        content = copy.deepcopy(step.content)
        del content["users"][ALICE]
        return Step(step.sender, step.type, content, step.state_key, step.redacts)
    return step
