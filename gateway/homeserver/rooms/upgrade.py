"""Room upgrades (``POST /rooms/{roomId}/upgrade``): a new room of another version takes the old room's place.

Rules, in the order the steps run:

* the new version must be one this gateway creates (``room_versions.KNOWN``,
  else M_UNSUPPORTED_ROOM_VERSION); the upgrader must be joined to the old
  room and allowed to send ``m.room.tombstone`` there (the auth rules judge a
  tombstone built, not stored, before anything is done);
* the new room is made in one commit, like ``/createRoom``: its create event
  names the ``predecessor`` (the old room and its latest event) and copies
  the room ``type`` and ``m.federate``; then the upgrader's join, the old
  room's power levels, and its join rules, history visibility, guest access,
  name, topic, avatar, encryption, server ACL, canonical alias, space
  children and bans (:data:`COPIED_TYPES`, :data:`MAX_COPIED_BANS`);
* the power levels are copied as the new version takes them: integers (a
  v1-v9 room may hold integer strings), creators left out of ``users`` in a
  version 12 room (their power is implicit), and the old room's creators
  given the highest level the room uses when a version 12 room becomes an
  older version. If the upgrader could not send the copied state with the
  copied levels, the room starts with the upgrader raised and ends with the
  copied levels as they were;
* the old room gets ``m.room.tombstone`` naming the new room; then its local
  aliases point at the new room, its canonical alias is emptied and it leaves
  the public directory for the new room; last, its ``events_default`` and
  ``invite`` levels are raised to ``max(50, users_default + 1)`` so that
  ordinary members stop talking there. Those last steps are best effort: a
  refusal by the auth rules is logged, the upgrade stands;
* one upgrade per old room at a time; a repeated request by the same user
  for the same version, once the room is replaced, answers the same new room
  (a client retrying after a lost response does not make a third room).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
from typing import Any

from lowband.gateway.homeserver.rooms.creation import RoomCreator, default_power_levels
from lowband.gateway.homeserver.rooms.lookups import RoomLookups
from lowband.gateway.homeserver.rooms.sending import EventSender, SendRequest
from lowband.gateway.matrix import auth_rules, room_versions
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden, not_found
from lowband.gateway.matrix.identifiers import is_user_id
from lowband.gateway.matrix.power_levels import parse_level, room_creators
from lowband.gateway.matrix.room_versions import RoomVersion
from lowband.gateway.store.interfaces import StateMap, Store

log = logging.getLogger(__name__)

#: State (type, every state key or only "") the new room takes over from the old one, in this order.
COPIED_TYPES: tuple[tuple[str, bool], ...] = (
    ("m.room.join_rules", False), ("m.room.history_visibility", False), ("m.room.guest_access", False),
    ("m.room.name", False), ("m.room.topic", False), ("m.room.avatar", False), ("m.room.encryption", False),
    ("m.room.server_acl", False), ("m.room.canonical_alias", False), ("m.space.child", True),
)  # fmt: skip
#: Bans carried into the new room at most (each is an event built and checked in the request).
MAX_COPIED_BANS = 1000
#: Space children carried over at most.
MAX_COPIED_CHILDREN = 200
#: ``additional_creators`` an upgrade to version 12 may name at most.
MAX_ADDITIONAL_CREATORS = 50
TOMBSTONE_BODY = "This room has been replaced"
_LEVEL_KEYS = ("users_default", "events_default", "state_default", "ban", "kick", "redact", "invite")


def _integer_levels(content: dict[str, Any]) -> dict[str, Any]:
    """A copy of power levels content with every level an integer (integer strings and floats of older versions
    converted; values that are no level at all dropped)."""
    levels = copy.deepcopy(content)
    for key in _LEVEL_KEYS:
        if key in levels:
            value = parse_level(levels[key])
            if value is None:
                del levels[key]
            else:
                levels[key] = value
    for table in ("users", "events", "notifications"):
        entries = levels.get(table)
        if isinstance(entries, dict):
            levels[table] = {k: v for k, raw in entries.items() if (v := parse_level(raw)) is not None}
        elif table in levels:
            del levels[table]
    return levels


def _needed_level(levels: dict[str, Any], plan: list[tuple[str, str, dict[str, Any]]]) -> int:
    """The level the upgrader needs to send ``plan`` (the copied state) with ``levels`` (integers) in force:
    each event's required level, and for a ban the ban level and more than the banned user's level."""
    needed = auth_rules.required_power_level_for("m.room.power_levels", True, levels)
    users = levels.get("users", {})
    for event_type, state_key, content in plan:
        needed = max(needed, auth_rules.required_power_level_for(event_type, True, levels))
        if event_type == "m.room.member" and content.get("membership") == "ban":
            target = users.get(state_key, levels.get("users_default", 0))
            needed = max(needed, auth_rules.action_power_level(levels, "ban"), target + 1)
    return needed


class RoomUpgrader:
    """Replaces rooms by rooms of another version, as their members ask with ``/upgrade``."""

    def __init__(self, store: Store, lookups: RoomLookups, sender: EventSender, creator: RoomCreator,
                 server_name: str) -> None:  # fmt: skip
        self.store = store
        self.lookups = lookups
        self.sender = sender
        self.creator = creator
        self.server_name = server_name
        self._locks: dict[str, asyncio.Lock] = {}

    async def upgrade(self, user_id: str, room_id: str, new_version: Any, additional_creators: Any = None) -> str:
        """Upgrade ``room_id`` to ``new_version`` as ``user_id``; returns the replacement room's ID.

        Raises MatrixError: 400 M_UNSUPPORTED_ROOM_VERSION for a version this
        gateway does not create, M_BAD_JSON for a malformed argument, 404
        M_NOT_FOUND for a room this gateway does not hold, 403 M_FORBIDDEN
        when the user is not joined or may not send ``m.room.tombstone``.
        """
        if not isinstance(new_version, str):
            raise bad_json("'new_version' must be a string naming a room version")
        try:
            version = room_versions.get(new_version)
        except room_versions.UnsupportedRoomVersion as exc:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", str(exc)) from None
        extra_creators = self._additional_creators(additional_creators, version, user_id)
        if self.lookups.head(room_id) is None:
            raise not_found(f"unknown room {room_id[:80]}")
        # One lock per room ever upgraded here: a handful of rooms, not worth an expiry.
        async with self._locks.setdefault(room_id, asyncio.Lock()):
            done = self._already_upgraded(user_id, room_id, version)
            if done is not None:
                return done
            return await self._upgrade(user_id, room_id, version, extra_creators)

    @staticmethod
    def _additional_creators(value: Any, version: RoomVersion, user_id: str) -> list[str]:
        if value is None:
            return []
        if not version.privileged_creators:
            raise bad_json("'additional_creators' is only for room versions with privileged creators (12)")
        if not isinstance(value, list) or not all(is_user_id(u) for u in value):
            raise bad_json("'additional_creators' must be a list of user IDs")
        if len(value) > MAX_ADDITIONAL_CREATORS:
            raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_ADDITIONAL_CREATORS} additional creators")
        return [u for u in dict.fromkeys(value) if u != user_id]

    def _already_upgraded(self, user_id: str, room_id: str, version: RoomVersion) -> str | None:
        """The replacement room when ``user_id`` already upgraded ``room_id`` to ``version``, else None."""
        tombstone = self.lookups.state_event(room_id, "m.room.tombstone")
        if tombstone is None or tombstone.sender != user_id:
            return None
        replacement = tombstone.content.get("replacement_room")
        if not isinstance(replacement, str) or self.lookups.head(replacement) is None:
            return None
        create = self.lookups.state_event(replacement, "m.room.create")
        predecessor = create.content.get("predecessor") if create is not None else None
        if (create is None or create.sender != user_id or create.content.get("room_version") != version.identifier
                or not isinstance(predecessor, dict) or predecessor.get("room_id") != room_id):  # fmt: skip
            return None
        return replacement

    async def _upgrade(self, user_id: str, room_id: str, version: RoomVersion, extra_creators: list[str]) -> str:
        head = self.lookups.head(room_id)
        if head is None:
            raise not_found(f"unknown room {room_id[:80]}")
        state = self.lookups.current_state(room_id)
        if self.lookups.membership_in(state, user_id) != "join":
            raise forbidden("you must be joined to the room to upgrade it")
        # The auth rules decide, on a tombstone built but not stored, whether the user may replace the room.
        placeholder = {"body": TOMBSTONE_BODY, "replacement_room": room_id}
        await self.sender.build_checked(room_id, SendRequest(user_id, "m.room.tombstone", placeholder, state_key=""))

        old_create = self.lookups.state_event(room_id, "m.room.create")
        old_version = head.version
        create_content: dict[str, Any] = {
            "room_version": version.identifier,
            "predecessor": {"room_id": room_id, **({"event_id": head.extremities[0]} if head.extremities else {})},
        }
        if old_create is not None:
            for key in ("type", "m.federate"):
                if key in old_create.content:
                    create_content[key] = old_create.content[key]
        if not version.implicit_room_creator:
            create_content["creator"] = user_id
        if version.privileged_creators and extra_creators:
            create_content["additional_creators"] = extra_creators
        if version.room_id_is_create_hash:
            create_content["io.lowband.nonce"] = secrets.token_urlsafe(6)

        copied = self._copied_state(state)
        old_levels = self.lookups.state_content(state, "m.room.power_levels")
        levels = _integer_levels(old_levels) if old_levels is not None else default_power_levels(user_id, version)
        users = levels.setdefault("users", {})
        new_creators = {user_id, *extra_creators} if version.privileged_creators else set()
        for creator in new_creators:
            users.pop(creator, None)
        if old_version.privileged_creators and not version.privileged_creators and old_create is not None:
            # Creators had an infinite level, which an older version cannot hold: the highest level in use.
            top = max([100, _needed_level(levels, copied), *(v for v in users.values() if isinstance(v, int))])
            for creator in room_creators(old_create, old_version) | {user_id}:
                users[creator] = max(top, users.get(creator, 0))
        final_levels = levels
        if not version.privileged_creators:
            needed = _needed_level(levels, copied)
            have = users.get(user_id, levels.get("users_default", 0))
            if have < needed:
                levels = copy.deepcopy(levels)
                levels["users"][user_id] = needed
        plan: list[tuple[str, str, dict[str, Any]]] = [
            ("m.room.create", "", create_content),
            ("m.room.member", user_id, {"membership": "join", **self.lookups.profile(user_id)}),
            ("m.room.power_levels", "", levels),
            *copied,
        ]
        if levels is not final_levels:
            plan.append(("m.room.power_levels", "", final_levels))
        new_room = await self.creator.create_from_plan(user_id, version, plan)
        log.info("%s upgraded %s (v%s) to %s (v%s)", user_id, room_id, old_version.identifier, new_room,
                 version.identifier)  # fmt: skip

        await self.sender.send(user_id, room_id, "m.room.tombstone",
                               {"body": TOMBSTONE_BODY, "replacement_room": new_room}, state_key="")  # fmt: skip
        await self._move_aliases(user_id, room_id, new_room)
        if room_id in self.store.public_rooms():
            await self.store.set_room_public(room_id, False)
            await self.store.set_room_public(new_room, True)
        await self._restrict_old_room(user_id, room_id)
        return new_room

    def _copied_state(self, state: StateMap) -> list[tuple[str, str, dict[str, Any]]]:
        """(type, state_key, content) of the old room's state the new room takes over, bans last."""
        copied: list[tuple[str, str, dict[str, Any]]] = []
        for event_type, any_key in COPIED_TYPES:
            keys = sorted(k for (t, k) in state if t == event_type) if any_key else [""]
            for state_key in keys[:MAX_COPIED_CHILDREN]:
                content = self.lookups.state_content(state, event_type, state_key)
                if content:  # an emptied event (a removed space child, a cleared name) is not carried over
                    copied.append((event_type, state_key, copy.deepcopy(content)))
        bans = sorted(k for (t, k) in state if t == "m.room.member" and self.lookups.membership_in(state, k) == "ban")
        for user in bans[:MAX_COPIED_BANS]:
            reason = (self.lookups.state_content(state, "m.room.member", user) or {}).get("reason")
            ban: dict[str, Any] = {"membership": "ban", **({"reason": reason} if isinstance(reason, str) else {})}
            copied.append(("m.room.member", user, ban))
        return copied

    async def _move_aliases(self, user_id: str, room_id: str, new_room: str) -> None:
        """Point the old room's local aliases at the new room and empty the old room's canonical alias."""
        for alias in self.store.aliases_for_room(room_id):
            found = self.store.get_alias(alias)
            if found is None or found[0] != room_id:
                continue
            await self.store.delete_alias(alias)
            if not await self.store.create_alias(alias, new_room, found[1]):
                log.warning("alias %s was taken while moving it to %s", alias, new_room)
        if self.lookups.state_content(self.lookups.current_state(room_id), "m.room.canonical_alias"):
            await self._best_effort(user_id, room_id, "m.room.canonical_alias", {})

    async def _restrict_old_room(self, user_id: str, room_id: str) -> None:
        """Raise the old room's ``events_default`` and ``invite`` so that ordinary members move on."""
        current = self.lookups.state_content(self.lookups.current_state(room_id), "m.room.power_levels")
        if current is None:
            return
        restricted = max(50, (parse_level(current.get("users_default", 0)) or 0) + 1)
        levels = dict(current)
        changed = False
        for key, default in (("events_default", 0), ("invite", 0)):
            level = parse_level(levels.get(key, default))
            if level is None or level < restricted:
                levels[key] = restricted
                changed = True
        if changed:
            await self._best_effort(user_id, room_id, "m.room.power_levels", levels)

    async def _best_effort(self, user_id: str, room_id: str, event_type: str, content: dict[str, Any]) -> None:
        try:
            await self.sender.send(user_id, room_id, event_type, content, state_key="")
        except MatrixError as exc:
            log.info("upgrade of %s: %s left unchanged (%s)", room_id, event_type, exc.message)
