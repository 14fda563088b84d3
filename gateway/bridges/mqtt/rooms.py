"""The bridge's side of rooms: the bot, bridged users and their memberships.

Rules:

* a mapping names its room by ID or alias; the room must exist on this
  gateway (the bridge never creates rooms);
* the bot (``@mqtt:server``) joins a public room by itself; for any other
  room an admin invites the bot, which then joins (the invite is noticed
  as it happens, and re-checked every few seconds);
* bridged users are created on first use with an unusable password and
  ``users.owner = "mqtt"`` (the same rule as device links: an edge speaks
  only as accounts it created, gateway/devices/account.py), and recorded in
  ``mqtt_users``; a user ID that exists with another owner is never used
  (someone registered it first);
* a bridged user joins a public room directly; otherwise the bot invites it
  first (the room's ``invite`` power level must allow the bot).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from lowband.gateway.bridges.mqtt.store import BridgeTables
from lowband.gateway.homeserver.rooms import RoomService
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.store.interfaces import Store, UserExists

log = logging.getLogger(__name__)
T = TypeVar("T")
#: ``users.owner`` of the accounts the bridge creates (store/sqlite/schema.py claims older ones by this value).
ACCOUNT_OWNER = "mqtt"


class UserTaken(Exception):
    """A bridged user ID already belongs to someone the bridge did not create."""


class RoomAccess:
    """Resolves rooms and keeps the bot and bridged users joined to them."""

    def __init__(
        self, rooms: RoomService, store: Store, tables: BridgeTables, server_name: str, bot: str
    ) -> None:
        self.rooms = rooms
        self.store = store
        self.tables = tables
        self.server_name = server_name
        self.bot = f"@{bot}:{server_name}"
        self.users: set[str] = set()
        self._joined: set[tuple[str, str]] = set()
        self._warned: set[str] = set()
        self._creating: dict[str, asyncio.Future[None]] = {}

    def user_id(self, localpart: str) -> str:
        """``@localpart:server``."""
        return f"@{localpart}:{self.server_name}"

    def is_bridged(self, user_id: str) -> bool:
        """Whether ``user_id`` is the bot or a user the bridge created (loop prevention)."""
        return user_id == self.bot or user_id in self.users

    async def start(self) -> None:
        """Load the bridge's users; create the bot on first start.

        Raises UserTaken when the bot's ID was registered by someone else.
        """
        self.users = self.tables.bridge_users()
        await self.ensure_user(self.bot, "MQTT bridge")

    async def ensure_user(self, user_id: str, displayname: str) -> None:
        """Create ``user_id`` if needed; UserTaken if it exists and is not the bridge's."""
        if user_id in self.users:
            return
        creating = self._creating.get(user_id)
        if creating is None:  # two mappings may want the same new user at once: create it once
            creating = self._creating[user_id] = asyncio.ensure_future(self._create_user(user_id, displayname))
            creating.add_done_callback(lambda _: self._creating.pop(user_id, None))
        await asyncio.shield(creating)

    async def _create_user(self, user_id: str, displayname: str) -> None:
        now = int(time.time() * 1000)
        try:
            # Not a hash any login accepts: bridged users cannot log in.
            await self.store.create_user(user_id, "!bridged-" + secrets.token_hex(16), False, now, owner=ACCOUNT_OWNER)
        except UserExists:
            user = self.store.get_user(user_id)
            if user is None or user.get("owner") != ACCOUNT_OWNER:
                raise UserTaken(f"{user_id} exists and was not created by the MQTT bridge") from None
            # Ours, made just before a crash kept it out of mqtt_users: record it now.
        await self.store.set_profile_field(user_id, "displayname", displayname[:200])
        await self.tables.add_bridge_user(user_id, now)
        self.users.add(user_id)

    def resolve(self, room: str) -> str | None:
        """The room ID of an ID or alias, or None when the room is not (yet) on this gateway."""
        room_id = room
        if room.startswith("#"):
            found = self.store.get_alias(room)
            if found is None:
                return None
            room_id = found[0]
        return room_id if self.rooms.head(room_id) is not None else None

    def _join_rule(self, room_id: str) -> str:
        content = self.rooms.state_content(self.rooms.current_state(room_id), "m.room.join_rules") or {}
        rule = content.get("join_rule")
        return rule if isinstance(rule, str) else "invite"

    async def prepare_room(self, room: str) -> str | None:
        """Room ID once the bot is joined; None while it waits (room unknown or no invite yet)."""
        room_id = self.resolve(room)
        if room_id is None:
            self._warn_once(room, "mqtt: room %s does not exist on this gateway yet; its mappings wait", room)
            return None
        if (self.bot, room_id) in self._joined:
            return room_id
        membership = self.store.membership(room_id, self.bot)
        try:
            if membership != "join":
                if membership == "invite" or self._join_rule(room_id) == "public":
                    await _shielded(self.rooms.set_membership(self.bot, room_id, self.bot, "join"))
                else:
                    self._warn_once(room_id, "mqtt: invite %s into %s; its mappings wait until then", self.bot, room)
                    return None
        except MatrixError as exc:
            self._warn_once(room_id, "mqtt: the bot cannot join %s (%s); its mappings wait", room, exc.message)
            return None
        self._joined.add((self.bot, room_id))
        log.info("mqtt: bridging room %s (%s)", room, room_id)
        return room_id

    async def join(self, user_id: str, room_id: str) -> None:
        """Make a bridged user a member of the room (invited by the bot unless the room is public).

        Raises MatrixError when the room refuses (a ban, power levels).
        """
        if (user_id, room_id) in self._joined:
            return
        membership = self.store.membership(room_id, user_id)
        if membership != "join":
            if membership != "invite" and self._join_rule(room_id) != "public":
                await _shielded(self.rooms.set_membership(self.bot, room_id, user_id, "invite"))
            await _shielded(self.rooms.set_membership(user_id, room_id, user_id, "join"))
        self._joined.add((user_id, room_id))

    def forget_membership(self, user_id: str, room_id: str) -> None:
        """Check the membership again next time (after the room refused an event)."""
        self._joined.discard((user_id, room_id))

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)


async def _shielded(awaitable: Awaitable[T]) -> T:
    """Await a room-service call that must finish even if the bridge is stopping.

    Cancelling a send half-way would cancel the database writer's future
    (and the room service would report the event lost).
    """
    return await asyncio.shield(awaitable)
