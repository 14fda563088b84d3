"""Filter validation: a filter a client stores or sends inline is checked against the spec's shapes before use.

Rules (client-server API, "Filtering": Filter, EventFilter, RoomFilter,
StateFilter, RoomEventFilter):

* a known key with a value of the wrong type is 400 ``M_BAD_JSON`` naming
  the key's path (``room.timeline.limit``), as is a list entry that is not a
  string, a sender that is not a user ID or a room that is not a room ID;
* ``limit`` is an integer from 0 to 2**53-1 (``M_INVALID_PARAM`` outside;
  0 is taken although the spec asks for more than 0, because bots send it and
  were served before: it means the default limit); ``event_format`` is ``client`` or
  ``federation`` (``M_INVALID_PARAM``);
* unknown keys are kept: the spec does not make filter objects closed, and
  clients send newer fields (``org.matrix.msc3773.unread_thread_notifications``,
  ``unread_thread_notifications``) that an older server must not refuse;
* each list holds at most :data:`MAX_LIST` entries (``M_INVALID_PARAM``); the
  filter's whole size is bounded where it enters (16 KiB).
"""

from __future__ import annotations

from typing import Any

from lowband.gateway.matrix.errors import bad_json, invalid_param
from lowband.gateway.matrix.identifiers import is_room_id, is_user_id

MAX_LIST = 1000
MAX_LIMIT_VALUE = 2**53 - 1

_EVENT_LISTS = ("types", "not_types", "senders", "not_senders")
_ROOM_EVENT_FLAGS = ("contains_url", "include_redundant_members", "lazy_load_members", "unread_thread_notifications")


def check_filter(doc: Any) -> dict[str, Any]:
    """Check a Filter (``POST /user/{userId}/filter``, ``/sync?filter=``); returns it unchanged.

    Raises MatrixError 400 (M_BAD_JSON for a wrong type or a malformed ID,
    M_INVALID_PARAM for a value out of range) naming the offending key.
    """
    _object(doc, "the filter")
    _event_shape(doc)
    for key in ("presence", "account_data"):
        if key in doc:
            _event_filter(doc[key], key)
    if "room" in doc:
        _room_filter(doc["room"], "room")
    return doc


def check_room_event_filter(doc: Any, path: str = "filter") -> dict[str, Any]:
    """Check a RoomEventFilter (``/messages``, ``/context``); returns it unchanged. MatrixError as :func:`check_filter`."""
    _room_event_filter(doc, path)
    _event_shape(doc)  # not the spec's RoomEventFilter keys, but honoured there too (event_fields.py)
    return dict(doc)


def _event_shape(doc: dict[str, Any]) -> None:
    _strings(doc, "event_fields", "event_fields")
    if "event_format" in doc and doc["event_format"] not in ("client", "federation"):
        raise invalid_param("event_format must be 'client' or 'federation'")


def _object(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise bad_json(f"{path} must be a JSON object")


def _strings(doc: dict[str, Any], key: str, path: str, kind: str = "") -> None:
    if key not in doc:
        return
    value = doc[key]
    if not isinstance(value, list):
        raise bad_json(f"{path} must be a list of strings")
    if len(value) > MAX_LIST:
        raise invalid_param(f"{path} holds at most {MAX_LIST} entries")
    for entry in value:
        if not isinstance(entry, str):
            raise bad_json(f"{path} must be a list of strings")
        if kind == "user" and not is_user_id(entry):
            raise bad_json(f"{path}: {entry[:80]!r} is not a user ID")
        if kind == "room" and not is_room_id(entry):
            raise bad_json(f"{path}: {entry[:80]!r} is not a room ID")


def _event_filter(doc: Any, path: str) -> None:
    _object(doc, path)
    if "limit" in doc:
        limit = doc["limit"]
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise bad_json(f"{path}.limit must be an integer")
        if not 0 <= limit <= MAX_LIMIT_VALUE:
            raise invalid_param(f"{path}.limit must be between 0 and {MAX_LIMIT_VALUE}")
    for key in _EVENT_LISTS:
        _strings(doc, key, f"{path}.{key}", "user" if key.endswith("senders") else "")


def _room_event_filter(doc: Any, path: str) -> None:
    _event_filter(doc, path)
    for key in ("rooms", "not_rooms"):
        _strings(doc, key, f"{path}.{key}", "room")
    for key in _ROOM_EVENT_FLAGS:
        if key in doc and not isinstance(doc[key], bool):
            raise bad_json(f"{path}.{key} must be true or false")


def _room_filter(doc: Any, path: str) -> None:
    _object(doc, path)
    for key in ("rooms", "not_rooms"):
        _strings(doc, key, f"{path}.{key}", "room")
    if "include_leave" in doc and not isinstance(doc["include_leave"], bool):
        raise bad_json(f"{path}.include_leave must be true or false")
    for key in ("account_data", "ephemeral", "state", "timeline"):
        if key in doc:
            _room_event_filter(doc[key], f"{path}.{key}")


__all__ = ["MAX_LIST", "check_filter", "check_room_event_filter"]
