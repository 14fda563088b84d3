"""Guest accounts: who is a guest, which endpoints a guest may use, which rooms a guest may join.

Rules (the spec's guest access module):
- ``POST /register?kind=guest`` makes an account with a random numeric localpart, no password and owner
  :data:`GUEST_OWNER`, when the config's ``registration.guests`` is on (off by default).
- A guest's token reaches only the endpoints of :data:`GUEST_ROUTES` (the spec's list, plus what a client
  needs to run at all: whoami, logout, capabilities, filters, its own account data, receipts, typing,
  presence, profiles, the room directory); everything else answers 403 ``M_GUEST_ACCESS_FORBIDDEN``.
  A guest sends only ``m.room.message`` events.
- A guest joins only rooms whose ``m.room.guest_access`` is ``can_join``; when a user of this server changes
  it to anything else, the guests of this server joined to the room are made to leave (as the spec asks).
  A change that comes from another server's user does not (only local events are watched).
- A guest becomes a full account through the ordinary registration (``client_auth.py``), naming itself by
  the ``guest_access_token`` parameter (the spec) or its token in the Authorization header: it keeps its user
  ID, rooms and devices; ``username`` must be its own localpart or absent. :meth:`Guests.upgraded` then
  forgets it was a guest.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import OrderedDict

from lowband.gateway.homeserver.rooms import RoomService
from lowband.gateway.homeserver.rooms.sending import Sent
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.store.interfaces import Store, UserExists

log = logging.getLogger(__name__)

GUEST_OWNER = "guest"

#: (method, path after /_matrix/client/{version}) templates a guest may use, as aiohttp names them
GUEST_ROUTES = frozenset({
    ("GET", "/rooms/{room_id}/state"),
    ("GET", "/rooms/{room_id}/state/{event_type}"),
    ("GET", "/rooms/{room_id}/state/{event_type}/"),
    ("GET", "/rooms/{room_id}/state/{event_type}/{state_key}"),
    ("GET", "/rooms/{room_id}/context/{event_id}"),
    ("GET", "/rooms/{room_id}/event/{event_id}"),
    ("GET", "/rooms/{room_id}/messages"),
    ("GET", "/rooms/{room_id}/members"),
    ("GET", "/rooms/{room_id}/joined_members"),
    ("GET", "/rooms/{room_id}/initialSync"),
    ("GET", "/sync"),
    ("GET", "/events"),
    ("POST", "/rooms/{room_id}/join"),
    ("POST", "/join/{room_or_alias}"),
    ("POST", "/rooms/{room_id}/leave"),
    ("PUT", "/rooms/{room_id}/send/{event_type}/{txn_id}"),
    ("PUT", "/sendToDevice/{event_type}/{txn_id}"),
    ("PUT", "/profile/{user_id}/{field:(?:displayname|avatar_url)}"),
    ("GET", "/profile/{user_id}/{field:(?:displayname|avatar_url)}"),
    ("GET", "/profile/{user_id}"),
    ("GET", "/devices"),
    ("GET", "/devices/{device_id}"),
    ("PUT", "/devices/{device_id}"),
    ("POST", "/keys/upload"),
    ("POST", "/keys/query"),
    ("POST", "/keys/claim"),
    ("GET", "/keys/changes"),
    ("GET", "/account/whoami"),
    ("POST", "/logout"),
    ("GET", "/capabilities"),
    ("POST", "/user/{user_id}/filter"),
    ("GET", "/user/{user_id}/filter/{filter_id}"),
    ("GET", "/user/{user_id}/account_data/{data_type}"),
    ("PUT", "/user/{user_id}/account_data/{data_type}"),
    ("GET", "/user/{user_id}/rooms/{room_id}/account_data/{data_type}"),
    ("PUT", "/user/{user_id}/rooms/{room_id}/account_data/{data_type}"),
    ("POST", "/rooms/{room_id}/receipt/{receipt_type}/{event_id}"),
    ("POST", "/rooms/{room_id}/read_markers"),
    ("PUT", "/rooms/{room_id}/typing/{user_id}"),
    ("GET", "/presence/{user_id}/status"),
    ("PUT", "/presence/{user_id}/status"),
    ("GET", "/publicRooms"),
    ("GET", "/pushrules/"),
    ("GET", "/pushrules"),
    ("GET", "/voip/turnServer"),
})  # fmt: skip

_CLIENT_PREFIX = re.compile(r"^/_matrix/client/\{version[^}]*\}")
_KNOWN_CAP = 10_000


def guest_route_allowed(method: str, template: str, event_type: str | None = None) -> bool:
    """Whether a guest may call ``method`` on the route ``template`` (aiohttp's canonical form, with the
    client prefix); a send only for ``m.room.message``."""
    tail = _CLIENT_PREFIX.sub("", template, count=1)
    if tail == template and not template.startswith("/_matrix/client/"):
        return False  # media, federation, admin: not for guests
    if (method, tail) not in GUEST_ROUTES:
        return False
    return tail != "/rooms/{room_id}/send/{event_type}/{txn_id}" or event_type == "m.room.message"


class Guests:
    """Which users are guests (a bounded memory of answers: an account never starts being one, and stops only
    through :meth:`upgraded`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: OrderedDict[str, bool] = OrderedDict()
        self._rooms: RoomService | None = None
        self._evictions: set[asyncio.Task[None]] = set()

    def watch(self, rooms: RoomService) -> None:
        """Make guests leave a room whose ``m.room.guest_access`` a local user sets to other than ``can_join``."""
        self._rooms = rooms
        rooms.add_listener(self._on_event)

    def _on_event(self, sent: Sent) -> None:
        event, rooms = sent.event, self._rooms
        if rooms is None or event.type != "m.room.guest_access" or event.state_key != "":
            return
        if event.content.get("guest_access") == "can_join":
            return
        guests = [u for u in rooms.joined_members(event.room_id) if self.is_guest(u)]
        if guests:
            task = asyncio.get_running_loop().create_task(self._evict(rooms, event.room_id, guests))
            self._evictions.add(task)
            task.add_done_callback(self._evictions.discard)

    async def _evict(self, rooms: RoomService, room_id: str, guests: list[str]) -> None:
        for user_id in guests:
            try:
                await rooms.set_membership(user_id, room_id, user_id, "leave")
            except MatrixError as exc:  # already gone, or the room went away: nothing left to do
                log.info("guest %s not made to leave %s: %s", user_id, room_id, exc.message)

    def is_guest(self, user_id: str) -> bool:
        """Whether ``user_id`` is a guest account of this server."""
        known = self._known.get(user_id)
        if known is not None:
            self._known.move_to_end(user_id)
            return known
        row = self.store.get_user(user_id)
        answer = row is not None and row["owner"] == GUEST_OWNER
        self._known[user_id] = answer
        if len(self._known) > _KNOWN_CAP:
            self._known.popitem(last=False)
        return answer

    def upgraded(self, user_id: str) -> None:
        """``user_id`` is a guest no more (its account was upgraded in the store)."""
        self._known[user_id] = False
        self._known.move_to_end(user_id)
        if len(self._known) > _KNOWN_CAP:
            self._known.popitem(last=False)

    async def create(self, server_name: str, now_ms: int) -> str:
        """Make a guest account (random numeric localpart, no usable password); its user ID."""
        for _ in range(8):
            user_id = f"@{secrets.randbelow(10**12):012d}:{server_name}"
            try:
                await self.store.create_user(user_id, "!guest-" + secrets.token_hex(16), False, now_ms,
                                             owner=GUEST_OWNER)  # fmt: skip
            except UserExists:
                continue
            self._known[user_id] = True
            return user_id
        raise RuntimeError("no free guest user ID after 8 tries")
