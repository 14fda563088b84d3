"""The public room directory: one page of the rooms this server publishes, for clients and other servers.

The client API (``/publicRooms``) and the federation API (``/v1/publicRooms``)
answer from the same page, so a client that lists another Lowband server's
rooms (``?server=``) sees what that server's own clients see: largest rooms
first, ``limit`` and an offset ``since`` token, a search term over name,
topic, alias and ID, and a ``room_types`` filter.
"""

from __future__ import annotations

from typing import Any

from lowband.gateway.homeserver.rooms import RoomService
from lowband.gateway.matrix.errors import invalid_param
from lowband.gateway.matrix.numbers import parse_digits
from lowband.gateway.store.interfaces import Store

__all__ = ["MAX_PUBLIC_ROOMS", "public_rooms_page", "room_summary"]

#: The most rooms one page holds.
MAX_PUBLIC_ROOMS = 1000


def room_summary(rooms: RoomService, room_id: str) -> dict[str, Any]:
    """The public rooms chunk entry of a room."""
    state = rooms.current_state(room_id)

    def content(event_type: str) -> dict[str, Any]:
        return rooms.state_content(state, event_type) or {}

    entry: dict[str, Any] = {
        "room_id": room_id,
        "num_joined_members": len(rooms.joined_members(room_id)),
        "world_readable": content("m.room.history_visibility").get("history_visibility") == "world_readable",
        "guest_can_join": content("m.room.guest_access").get("guest_access") == "can_join",
        # Without a join rules event nobody may join uninvited; say so rather
        # than let the client assume the documented default of "public".
        "join_rule": content("m.room.join_rules").get("join_rule", "invite"),
    }
    optional = {
        "name": content("m.room.name").get("name"),
        "topic": content("m.room.topic").get("topic"),
        "canonical_alias": content("m.room.canonical_alias").get("alias"),
        "avatar_url": content("m.room.avatar").get("url"),
        "room_type": content("m.room.create").get("type"),
    }
    entry.update({k: v for k, v in optional.items() if isinstance(v, str) and v})
    return entry


def _matches(entry: dict[str, Any], term: str | None, room_types: list[Any] | None) -> bool:
    if room_types is not None and entry.get("room_type") not in room_types:
        return False
    if not term:
        return True
    term = term.casefold()
    return any(term in str(entry.get(k, "")).casefold() for k in ("name", "topic", "canonical_alias", "room_id"))


def public_rooms_page(rooms: RoomService, store: Store, limit: int | None, since: str | None, term: str | None,
                      room_types: list[Any] | None, room_ids: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """One page of the directory, largest rooms first; ``since`` is an offset token (M_INVALID_PARAM if not).

    ``room_ids``: the rooms to list instead of the server's own directory (a bridge's network).
    """
    start = parse_digits(since, 9) if since is not None else 0
    if start is None:
        raise invalid_param("invalid 'since' token")
    listed = store.public_rooms() if room_ids is None else room_ids
    entries = [room_summary(rooms, room_id) for room_id in listed]
    entries = [e for e in entries if _matches(e, term, room_types)]
    entries.sort(key=lambda e: (-e["num_joined_members"], e["room_id"]))
    size = min(limit if limit else MAX_PUBLIC_ROOMS, MAX_PUBLIC_ROOMS)
    page: dict[str, Any] = {"chunk": entries[start : start + size], "total_room_count_estimate": len(entries)}
    if start + size < len(entries):
        page["next_batch"] = str(start + size)
    if start > 0:
        page["prev_batch"] = str(max(0, start - size))
    return page
