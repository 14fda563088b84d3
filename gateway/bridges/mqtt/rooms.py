"""The bridge's side of rooms: the bot, bridged users and their memberships.

Rules:

* a mapping names its room by ID or alias. A room ID is the operator's
  choice and is used as it is. An alias binds the mapping only if the bot
  or a server admin made it (``aliases.creator``): anyone on the server
  may create an alias that does not exist yet, and the bridge would
  otherwise post readings into, and publish commands from, the room of
  whoever took the name first. An alias of this server that does not
  exist is created by the bridge itself, with a private room the bot owns
  (``room_admins`` invited at power level 100). An alias made by anyone
  else is refused with one log line, and its mappings wait;
* the bot (``@mqtt:server``) joins a public room by itself; for any other
  room an admin invites the bot, which then joins (the invite is noticed
  as it happens, and re-checked every few seconds);
* new bridged users are rate-limited (``new_users_burst``,
  ``new_users_per_hour``): a publisher can invent topics without end, and
  each would otherwise become an account. :meth:`RoomAccess.ensure_user`
  raises :class:`UserLimited` when a new one is not allowed yet;
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

from lowband.gateway.bridges.mqtt.ingest import TokenBucket
from lowband.gateway.bridges.mqtt.store import BridgeTables
from lowband.gateway.homeserver.rooms import RoomService
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.matrix.identifiers import server_name_of
from lowband.gateway.store.interfaces import Store, UserExists

log = logging.getLogger(__name__)
T = TypeVar("T")
#: ``users.owner`` of the accounts the bridge creates (store/sqlite/schema.py claims older ones by this value).
ACCOUNT_OWNER = "mqtt"


class UserTaken(Exception):
    """A bridged user ID already belongs to someone the bridge did not create."""


class UserLimited(Exception):
    """A new bridged user is needed, and the new-user rate limit does not allow one yet."""


class RoomAccess:
    """Resolves rooms and keeps the bot and bridged users joined to them."""

    def __init__(
        self, rooms: RoomService, store: Store, tables: BridgeTables, server_name: str, bot: str, *,
        new_users: TokenBucket | None = None, room_admins: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.rooms = rooms
        self.store = store
        self.tables = tables
        self.server_name = server_name
        self.bot = f"@{bot}:{server_name}"
        self.new_users = new_users  # None: no limit (the bot itself is never limited)
        self.room_admins = room_admins
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

    async def ensure_user(self, user_id: str, displayname: str, *, limited: bool = False) -> None:
        """Create ``user_id`` if needed; UserTaken if it exists and is not the bridge's.

        With ``limited``, a user not created yet takes a token of the
        new-user limit first; UserLimited (nothing created) when none is left.
        """
        if user_id in self.users:
            return
        creating = self._creating.get(user_id)
        if creating is None and limited and self.new_users is not None and self.new_users.take(time.monotonic()) > 0:
            raise UserLimited(f"{user_id} would be a new bridged user, and the new-user limit is reached")
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

    async def resolve(self, room: str) -> str | None:
        """The room ID a mapping may use, or None while there is none (see the module's rules).

        A room ID is taken as it is; an alias only if the bot or a server
        admin made it; a missing alias of this server is created (with a
        new room) by the bot. None when the room is not on this gateway, or
        the alias is someone else's (logged once), or creating it failed.
        """
        room_id = room
        if room.startswith("#"):
            found = self.store.get_alias(room)
            if found is None:
                return await self._create_room(room)
            room_id, creator = found
            if creator != self.bot and not self._is_admin(creator):
                self._warn_once(f"{room} taken", "mqtt: alias %s was created by %s, who is not a server admin; the "
                                "bridge does not use it (its mappings wait). Delete the alias to let the bridge create "
                                "the room, have an admin create it, or name the room by ID", room, creator)  # fmt: skip
                return None
        if self.rooms.head(room_id) is None:
            self._warn_once(room, "mqtt: room %s does not exist on this gateway yet; its mappings wait", room)
            return None
        return room_id

    def _is_admin(self, user_id: str) -> bool:
        user = self.store.get_user(user_id)
        return bool(user is not None and user["admin"] and not user["deactivated"])

    async def _create_room(self, alias: str) -> str | None:
        """Create a private room owned by the bot under ``alias`` (of this server); None if it cannot."""
        if server_name_of(alias) != self.server_name:
            self._warn_once(alias, "mqtt: alias %s is not on this server and does not resolve here; name the room by "
                            "ID (its mappings wait)", alias)  # fmt: skip
            return None
        body = {"preset": "trusted_private_chat", "room_alias_name": alias[1:].split(":", 1)[0],
                "name": alias, "invite": list(self.room_admins)}  # fmt: skip
        try:
            room_id = await _shielded(self.rooms.create_room(self.bot, body))
        except MatrixError as exc:  # the alias was taken meanwhile, or a room admin's ID was refused
            self._warn_once(f"{alias} create", "mqtt: cannot create %s (%s); its mappings wait", alias, exc.message)
            return None
        log.info("mqtt: created room %s (%s) for the mappings that name it; invited %s", alias, room_id,
                 ", ".join(self.room_admins) or "nobody (set mqtt.room_admins)")  # fmt: skip
        return room_id

    def _join_rule(self, room_id: str) -> str:
        content = self.rooms.state_content(self.rooms.current_state(room_id), "m.room.join_rules") or {}
        rule = content.get("join_rule")
        return rule if isinstance(rule, str) else "invite"

    async def prepare_room(self, room: str) -> str | None:
        """Room ID once the bot is joined; None while it waits (room unknown or no invite yet)."""
        room_id = await self.resolve(room)
        if room_id is None:
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
