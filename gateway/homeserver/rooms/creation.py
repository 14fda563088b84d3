"""Room creation: presets, the initial state a /createRoom body asks for, all committed at once.

Rules:

* the whole initial state (create, the creator's join, power levels,
  alias, join rules, history visibility, guest access, initial_state,
  name, topic, invites — in that order) is built and authorised in memory
  first: a room that would be refused half-way is never stored, and its
  alias stays free;
* then the events are queued in one write under the new head's lock and
  announced after the commit; the room is published in the directory last.

Every room version of ``room_versions.KNOWN`` (``room_versions.DEFAULT``
unless the body asks for another); a v12 room is named by its create event.
"""

from __future__ import annotations

import secrets
from typing import Any

from lowband.gateway.homeserver.rooms.lookups import RoomHead, RoomLookups
from lowband.gateway.homeserver.rooms.sending import EventSender, Sent
from lowband.gateway.matrix import auth_rules, room_versions
from lowband.gateway.matrix.auth_rules import AuthError
from lowband.gateway.matrix.errors import MatrixError, bad_json
from lowband.gateway.matrix.events import Event, EventFormatError, build_event, reference_hash
from lowband.gateway.matrix.identifiers import is_room_alias
from lowband.gateway.matrix.room_versions import RoomVersion
from lowband.gateway.matrix.signing import SigningKey, encode_base64
from lowband.gateway.store.interfaces import Store

#: What one /createRoom may carry: each invite and state event is an event built, checked and stored in the
#: request (20,000 invites took 25 s and held the loop for 18 s).
MAX_CREATE_INVITES = 100
MAX_INITIAL_STATE = 100

PRESETS: dict[str, dict[str, str]] = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "trusted_private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden"},
}


def default_power_levels(creator: str, version: RoomVersion = room_versions.DEFAULT) -> dict[str, Any]:
    """Power levels a new room starts with: the creator at 100 (v12: above all levels, with no entry,
    and m.room.tombstone at 150 so that only creators upgrade the room by default, as MSC4289 asks)."""
    levels: dict[str, Any] = {
        "users": {} if version.privileged_creators else {creator: 100},
        "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
            "m.room.server_acl": 100, "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "notifications": {"room": 50},
    }  # fmt: skip
    if version.privileged_creators:
        levels["events"]["m.room.tombstone"] = 150
    return levels


class RoomCreator:
    """Creates rooms as local users ask with /createRoom."""

    def __init__(self, store: Store, lookups: RoomLookups, sender: EventSender, server_name: str,
                 signing_key: SigningKey) -> None:  # fmt: skip
        self.store = store
        self.lookups = lookups
        self.sender = sender
        self.server_name = server_name
        self.signing_key = signing_key

    def new_room_id(self) -> str:
        """A fresh room ID on this server."""
        return "!" + secrets.token_urlsafe(13).replace("-", "x").replace("_", "y") + ":" + self.server_name

    async def create_room(self, creator: str, body: dict[str, Any]) -> str:
        """Create a room as the /createRoom body asks; returns its ID.

        Raises MatrixError (M_BAD_JSON for wrong types, M_ROOM_IN_USE for a
        taken alias, M_UNSUPPORTED_ROOM_VERSION for a version not in ``room_versions.KNOWN``).
        """
        try:
            version = room_versions.get(body.get("room_version", room_versions.DEFAULT.identifier))
        except room_versions.UnsupportedRoomVersion as exc:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", str(exc)) from None
        visibility = body.get("visibility", "private")
        if visibility not in ("public", "private"):
            raise bad_json("'visibility' must be 'public' or 'private'")
        preset_name = body.get("preset") or ("public_chat" if visibility == "public" else "private_chat")
        if not isinstance(preset_name, str) or preset_name not in PRESETS:
            raise bad_json(f"unknown preset {preset_name!r}")
        preset = PRESETS[preset_name]
        invites = body.get("invite", [])
        if not isinstance(invites, list) or not all(isinstance(u, str) for u in invites):
            raise bad_json("'invite' must be a list of user IDs")
        if len(invites) > MAX_CREATE_INVITES:
            raise MatrixError(400, "M_LIMIT_EXCEEDED", f"a new room takes at most {MAX_CREATE_INVITES} invites; "
                              "invite the others afterwards")  # fmt: skip
        for user in invites:
            if not user.startswith("@") or ":" not in user or len(user.encode()) > 255:
                raise MatrixError(400, "M_INVALID_PARAM", f"{user[:80]!r} is not a user ID")
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list) or not all(isinstance(e, dict) for e in initial_state):
            raise bad_json("'initial_state' must be a list of state events")
        if len(initial_state) > MAX_INITIAL_STATE:
            raise MatrixError(400, "M_LIMIT_EXCEEDED", f"a new room takes at most {MAX_INITIAL_STATE} initial state "
                              "events; send the others afterwards")  # fmt: skip
        creation_content = body.get("creation_content", {})
        if not isinstance(creation_content, dict):
            raise bad_json("'creation_content' must be an object")
        alias = None
        alias_name = body.get("room_alias_name")
        if alias_name is not None:
            alias = f"#{alias_name}:{self.server_name}" if isinstance(alias_name, str) else ""
            if not alias_name or ":" in alias_name or not is_room_alias(alias):
                raise MatrixError(400, "M_INVALID_PARAM", "'room_alias_name' must be the local part of an alias: "
                                  "no ':' or control characters, the whole alias at most 255 bytes")  # fmt: skip
            if self.store.get_alias(alias) is not None:
                raise MatrixError(400, "M_ROOM_IN_USE", f"alias {alias} is taken")

        levels = default_power_levels(creator, version)
        create_content: dict[str, Any] = {**creation_content, "room_version": version.identifier}
        if not version.implicit_room_creator:
            create_content["creator"] = creator
        if preset_name == "trusted_private_chat":
            if version.privileged_creators:  # MSC4289: the invitees become creators, as levels cannot list them
                extra = create_content.get("additional_creators", [])
                if not isinstance(extra, list):
                    raise bad_json("'additional_creators' must be a list of user IDs")
                create_content["additional_creators"] = list(dict.fromkeys([*extra, *invites]))
            else:
                for user in invites:
                    levels["users"][user] = 100
        if version.room_id_is_create_hash:
            # The room ID is the create event's hash: two rooms made by one user in one
            # millisecond would collide without something random (MSC4291 suggests this).
            create_content.setdefault("io.lowband.nonce", secrets.token_urlsafe(6))
        override = body.get("power_level_content_override")
        if override is not None:
            if not isinstance(override, dict):
                raise bad_json("'power_level_content_override' must be an object")
            levels.update(override)
        plan: list[tuple[str, str, dict[str, Any]]] = [
            ("m.room.create", "", create_content),
            ("m.room.member", creator, {"membership": "join", **self.lookups.profile(creator)}),
            ("m.room.power_levels", "", levels),
        ]
        if alias is not None:
            plan.append(("m.room.canonical_alias", "", {"alias": alias}))
        plan += [
            ("m.room.join_rules", "", {"join_rule": preset["join_rule"]}),
            ("m.room.history_visibility", "", {"history_visibility": preset["history_visibility"]}),
            ("m.room.guest_access", "", {"guest_access": preset["guest_access"]}),
        ]
        for item in initial_state:
            event_type, state_key, content = item.get("type"), item.get("state_key", ""), item.get("content")
            if not isinstance(event_type, str) or not isinstance(state_key, str) or not isinstance(content, dict):
                raise bad_json("each initial_state entry needs type, state_key and content")
            if event_type in ("m.room.create", "m.room.member"):
                raise bad_json(f"initial_state cannot hold {event_type} events")
            plan.append((event_type, state_key, content))
        for key, event_type in (("name", "m.room.name"), ("topic", "m.room.topic")):
            if key in body:
                if not isinstance(body[key], str):
                    raise bad_json(f"'{key}' must be a string")
                plan.append((event_type, "", {key: body[key]}))
        for user in invites:
            plan.append(("m.room.member", user, {"membership": "invite", **({"is_direct": True} if body.get("is_direct") is True else {})}))

        room_id = await self.create_from_plan(creator, version, plan, alias)
        if visibility == "public":
            await self.store.set_room_public(room_id, True)
        return room_id

    async def create_from_plan(self, creator: str, version: RoomVersion, plan: list[tuple[str, str, dict[str, Any]]],
                               alias: str | None = None) -> str:  # fmt: skip
        """Build, authorise and commit a new room's first events, ``plan`` = (type, state_key, content) in order
        (the create event first); returns the room ID. ``alias`` is taken for the room before the commit.

        Raises MatrixError: M_INVALID_ROOM_STATE when the auth rules refuse an event (nothing is stored),
        M_BAD_JSON for a malformed event, M_ROOM_IN_USE when ``alias`` is taken meanwhile.
        """
        # v12: the create event names the room, and _dry_run sets the ID once it has built it
        room_id = "" if version.room_id_is_create_hash else self.new_room_id()
        head = RoomHead(room_id, creator, None, [], 0, version)
        # Build and authorise every event in memory first: a room that would
        # be refused half-way is never stored, and its alias stays free.
        events = self._dry_run(head, creator, plan)
        room_id = head.room_id
        if alias is not None and not await self.store.create_alias(alias, room_id, creator):
            raise MatrixError(400, "M_ROOM_IN_USE", f"alias {alias} is taken")
        self.lookups.add_head(head)
        async with head.lock:
            writes = [self.sender.advance(head, event, None) for event in events]
            committed = self.store.persist_events(writes, self.sender.room_row(head))
        await committed
        for write in writes:
            self.sender.announce(Sent(write.event, write.position))
        return room_id

    def _dry_run(self, head: RoomHead, sender: str, plan: list[tuple[str, str, dict[str, Any]]]) -> list[Event]:
        """Build and authorise a new room's first events without storing anything."""
        state: dict[tuple[str, str], Event] = {}
        events: list[Event] = []
        version = head.version
        hashes: dict[str, str] = {}  # v1-v2 events cite their prev and auth events' reference hashes
        for event_type, state_key, content in plan:
            selected = auth_rules.auth_types_for_event(event_type, sender, state_key, content, room_version=version)
            auth = {key: state[key] for key in selected if key in state}
            first = version.room_id_is_create_hash and event_type == "m.room.create"
            try:
                event = build_event(
                    room_id=None if first else head.room_id, sender=sender, type=event_type, content=content,
                    prev_events=[events[-1].event_id] if events else [],
                    auth_events=[e.event_id for e in auth.values()], depth=len(events) + 1,
                    origin_server_ts=self.sender.now_ms(), server_name=self.server_name, signing_key=self.signing_key,
                    state_key=state_key, room_version=version, event_hashes=hashes,
                )  # fmt: skip
            except EventFormatError as exc:
                raise bad_json(str(exc)) from None
            if first:
                head.room_id = event.room_id
            elif version.room_id_is_create_hash and ("m.room.create", "") in state:
                auth[("m.room.create", "")] = state[("m.room.create", "")]  # named by the room ID
            try:
                auth_rules.check_auth(event, auth, room_version=version)
            except AuthError as exc:
                raise MatrixError(400, "M_INVALID_ROOM_STATE", f"{event_type}: {exc}") from None
            state[(event_type, state_key)] = event
            events.append(event)
            if version.events_carry_id:
                hashes[event.event_id] = encode_base64(reference_hash(event.pdu, version))
        return events
