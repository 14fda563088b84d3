"""Identifiers: server names of user, room and event IDs, and version 12 room IDs (appendices, "Identifier Grammar").

Rules:

* user IDs (``@localpart:server``), room IDs of versions 1–11
  (``!opaque:server``) and event IDs of versions 1–2 (``$opaque:server``)
  name a server after their first ``:``; ports stay part of it;
* a version 12 room ID has no server: it is the room's create event ID
  with ``!`` for ``$`` (MSC4291), so ``!`` and 43 characters of URL-safe
  unpadded base64 (a sha256);
* every identifier is at most 255 bytes of UTF-8;
* a room alias is ``#localpart:server``; we also refuse control
  characters and surrogates in its localpart (the spec allows any code
  point but ``:`` and NUL there; a TAB or a newline in an alias only
  serves to mislead).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "MAX_ID_BYTES",
    "create_event_id_of_room",
    "is_hash_room_id",
    "is_room_alias",
    "is_room_id",
    "is_user_id",
    "room_id_of_create_event",
    "server_name_of",
]

MAX_ID_BYTES = 255

# The reference hash is sha256: 32 bytes are 43 characters of unpadded base64.
_HASH_ROOM_ID = re.compile(r"![A-Za-z0-9_-]{43}")


def server_name_of(identifier: str) -> str:
    """Return the server name of a user, room or v1/v2 event ID (everything after the first ``:``).

    Raises ``ValueError`` if there is no ``:`` or nothing after it. Ports
    stay part of the name (``@a:host:8448`` → ``host:8448``).
    """
    _, sep, server = identifier.partition(":")
    if not sep or not server:
        raise ValueError(f"identifier {identifier[:80]!r} has no server name")
    return server


def is_user_id(value: Any) -> bool:
    """Whether ``value`` is a string ``@localpart:server`` of at most 255 bytes (both parts non-empty)."""
    if not isinstance(value, str) or not value.startswith("@") or len(value.encode("utf-8", "replace")) > MAX_ID_BYTES:
        return False
    localpart, sep, server = value[1:].partition(":")
    return bool(localpart and sep and server)


_ALIAS_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def is_room_alias(value: Any) -> bool:
    """Whether ``value`` is ``#localpart:server`` of at most 255 bytes, the localpart free of ``:``, control
    characters and surrogates (both parts non-empty)."""
    if not isinstance(value, str) or not value.startswith("#") or _ALIAS_BAD.search(value):
        return False
    localpart, sep, server = value[1:].partition(":")
    return bool(localpart and sep and server) and len(value.encode("utf-8")) <= MAX_ID_BYTES


def is_hash_room_id(value: Any) -> bool:
    """Whether ``value`` has the version 12 room ID form: ``!`` + 43 URL-safe base64 characters."""
    return isinstance(value, str) and _HASH_ROOM_ID.fullmatch(value) is not None


def is_room_id(value: Any) -> bool:
    """Whether ``value`` is a room ID of some version: ``!opaque:server`` (v1–v11) or a v12 hash, ≤ 255 bytes."""
    if not isinstance(value, str) or not value.startswith("!"):
        return False
    if is_hash_room_id(value):
        return True
    _, sep, server = value[1:].partition(":")
    return bool(sep and server) and len(value.encode("utf-8", "replace")) <= MAX_ID_BYTES


def room_id_of_create_event(create_event_id: str) -> str:
    """The version 12 room ID of the room whose create event has this ID (``$x`` → ``!x``)."""
    return "!" + create_event_id[1:]


def create_event_id_of_room(room_id: str) -> str:
    """The create event ID of a version 12 room (``!x`` → ``$x``); meaningless for older room IDs."""
    return "$" + room_id[1:]
