"""Room lookups: each room's head, the events it points at, and questions about its state.

Heads are loaded from the store on first use and then kept in memory: the
sending path advances them under the room's lock (``sending.py``). Events
are cached by ID, state events only (auth events, memberships and power
levels are read again and again; messages would just fill memory).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from lowband.gateway.matrix import auth_rules, room_versions
from lowband.gateway.matrix.events import Event, reference_hash
from lowband.gateway.matrix.room_versions import RoomVersion
from lowband.gateway.matrix.server_acl import server_allowed
from lowband.gateway.matrix.signing import encode_base64
from lowband.gateway.store.interfaces import StateMap, Store

_EVENT_CACHE_SIZE = 5000


@dataclass
class RoomHead:
    """What the next event of a room builds on."""

    room_id: str
    creator: str
    state_group: int | None
    extremities: list[str]
    depth: int
    version: RoomVersion = room_versions.DEFAULT
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RoomLookups:
    """Heads, events and state of the rooms this gateway holds, cached in front of the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._heads: dict[str, RoomHead] = {}
        self._event_cache: dict[str, Event] = {}
        self._servers: OrderedDict[int, frozenset[str]] = OrderedDict()  # state group -> servers with joined members
        self._allowed: OrderedDict[int, frozenset[str]] = OrderedDict()  # the same, less those its ACL denies
        # v1-v2 rooms: reference hashes of recent events, which the next events cite before they commit
        self._reference_hashes: dict[str, str] = {}

    # ---------------------------------------------------------------- heads

    def head(self, room_id: str) -> RoomHead | None:
        """The room's head, loaded from the store on first use; None if unknown."""
        head = self._heads.get(room_id)
        if head is None:
            row = self.store.get_room(room_id)
            if row is None:
                return None
            head = RoomHead(room_id, row["creator"], row["state_group"], row["extremities"], row["depth"],
                            room_versions.get(row["room_version"]))  # fmt: skip
            self._heads[room_id] = head
        return head

    def room_version(self, room_id: str) -> RoomVersion:
        """The version of a room this server knows (``room_versions.DEFAULT`` for an unknown room)."""
        head = self.head(room_id)
        return head.version if head is not None else room_versions.DEFAULT

    def forget_cached(self) -> None:
        """Forget every head and state event held: a reader worker does at the start of each request, since
        another process moves heads and redacts events (api/http/workers.py)."""
        self._heads.clear()
        self._event_cache.clear()

    def add_head(self, head: RoomHead) -> None:
        """Hold the head of a room being created (before anything of it is stored)."""
        self._heads[head.room_id] = head

    def drop_head(self, room_id: str) -> None:
        """Forget a room's head, so the next use reloads what the store committed."""
        self._heads.pop(room_id, None)

    # --------------------------------------------------------------- events

    def event(self, event_id: str) -> Event | None:
        """An accepted or rejected event by ID (cached), or None."""
        cached = self._event_cache.get(event_id)
        if cached is not None:
            return cached
        row = self.store.get_event(event_id)
        if row is None:
            return None
        event = row["event"]
        self.remember(event)
        return event

    def remember(self, event: Event) -> None:
        """Cache a state event (others are ignored), e.g. one made but not yet committed."""
        if event.is_state:
            if len(self._event_cache) >= _EVENT_CACHE_SIZE:
                self._event_cache.pop(next(iter(self._event_cache)))
            self._event_cache[event.event_id] = event

    def event_hashes(self, version: RoomVersion, event_ids: list[str]) -> dict[str, str] | None:
        """Reference hashes of ``event_ids``, which v1-v2 events cite next to their IDs; None from v3."""
        if not version.events_carry_id:
            return None
        hashes: dict[str, str] = {}
        for event_id in event_ids:
            known = self._reference_hashes.get(event_id)
            event = self.event(event_id) if known is None else None
            if event is not None:
                known = self.remember_hash(event, version)
            if known is not None:
                hashes[event_id] = known
        return hashes

    def remember_hash(self, event: Event, version: RoomVersion) -> str:
        """Keep a v1-v2 event's reference hash: the next event cites it, maybe before it commits."""
        if len(self._reference_hashes) >= _EVENT_CACHE_SIZE:
            self._reference_hashes.pop(next(iter(self._reference_hashes)))
        digest = self._reference_hashes[event.event_id] = encode_base64(reference_hash(event.pdu, version))
        return digest

    # ---------------------------------------------------------------- state

    def current_state(self, room_id: str) -> StateMap:
        """Current state map of a room ({} when unknown)."""
        head = self.head(room_id)
        return self.store.state_for_group(head.state_group) if head else {}

    def state_event(self, room_id: str, event_type: str, state_key: str = "") -> Event | None:
        """Current state event of one (type, state_key), or None."""
        event_id = self.current_state(room_id).get((event_type, state_key))
        return self.event(event_id) if event_id else None

    def state_content(self, state: StateMap, event_type: str, state_key: str = "") -> dict[str, Any] | None:
        """Content of a state event in a given state map, or None."""
        event_id = state.get((event_type, state_key))
        event = self.event(event_id) if event_id else None
        return event.content if event else None

    def membership_in(self, state: StateMap, user_id: str) -> str | None:
        """A user's membership in a state map, or None."""
        content = self.state_content(state, "m.room.member", user_id)
        membership = content.get("membership") if content else None
        return membership if isinstance(membership, str) else None

    def servers_in_group(self, group: int | None) -> frozenset[str]:
        """The servers with a joined member in a state group (cached: groups never change)."""
        if group is None:
            return frozenset()
        found = self._servers.get(group)
        if found is None:
            state = self.store.state_for_group(group)
            servers = set()
            for event_type, user in state:
                if event_type == "m.room.member" and ":" in user and self.membership_in(state, user) == "join":
                    servers.add(user.split(":", 1)[1])
            found = self._servers[group] = frozenset(servers)
            if len(self._servers) > 4096:
                self._servers.popitem(last=False)
        return found

    def destinations(self, event: Event, state_before: int | None, state_after: int | None) -> set[str]:
        """The servers an event goes to: those with a joined member just before or just after it that the
        room's ``m.room.server_acl`` there allows (so a server learns of the ACL that denies it, and nothing
        after), and the server of a user elsewhere whose invite is withdrawn or whose knock is refused by it
        (that server has no member to learn it from, and its user would wait for ever)."""
        servers = set(self.allowed_servers_in_group(state_before)) | set(self.allowed_servers_in_group(state_after))
        target = event.state_key
        ends_pending = (event.type == "m.room.member" and target and ":" in target and target != event.sender
                        and event.content.get("membership") in ("leave", "ban"))  # fmt: skip
        if ends_pending and target:
            before = self.store.state_for_group(state_before) if state_before is not None else {}
            if self.membership_in(before, target) in ("invite", "knock"):
                servers.add(target.split(":", 1)[1])
        return servers

    def allowed_servers_in_group(self, group: int | None) -> frozenset[str]:
        """:meth:`servers_in_group` less those the group's ``m.room.server_acl`` denies (cached)."""
        servers = self.servers_in_group(group)
        if group is None or not servers:
            return servers
        found = self._allowed.get(group)
        if found is None:
            acl = self.state_content(self.store.state_for_group(group), "m.room.server_acl")
            found = servers if acl is None else frozenset(s for s in servers if server_allowed(acl, s))
            self._allowed[group] = found
            if len(self._allowed) > 4096:
                self._allowed.popitem(last=False)
        return found

    def joined_members(self, room_id: str) -> list[str]:
        """Users whose current membership is join."""
        state = self.current_state(room_id)
        return [k for (t, k) in state if t == "m.room.member" and self.membership_in(state, k) == "join"]

    def power_level(self, room_id: str, user_id: str) -> int:
        """A user's current power level in the room."""
        create = self.state_event(room_id, "m.room.create")
        levels = self.state_event(room_id, "m.room.power_levels")
        return auth_rules.power_level_for_user(levels.content if levels else None, create, user_id)

    def profile(self, user_id: str) -> dict[str, str]:
        """The displayname and avatar_url a local user's membership events carry ({} for others)."""
        row = self.store.get_user(user_id)
        if row is None:
            return {}
        profile: dict[str, str] = {}
        if row["displayname"]:
            profile["displayname"] = row["displayname"]
        if row["avatar_url"]:
            profile["avatar_url"] = row["avatar_url"]
        return profile
