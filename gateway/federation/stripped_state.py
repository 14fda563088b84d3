"""The state that lets someone outside a room recognise it: sent with a knock's answer, shown to the knocker.

Rules:

* a resident server answers ``send_knock`` with the room's create, name,
  avatar, topic, join rules, canonical alias and encryption events as they
  are in the current state, whole PDUs (the spec asks for PDUs formatted for
  the room version since v1.16, ``m.room.create`` included; a server
  expecting the older stripped events finds their four fields in them);
* what another server sends is cut down to the client API's stripped state
  events (``type``, ``state_key``, ``content``, ``sender``), entries of the
  wrong shape or of another room dropped, at most :data:`MAX_STRIPPED`.
"""

from __future__ import annotations

from typing import Any

from lowband.gateway.federation.inbound.dag import RoomDag

__all__ = ["MAX_STRIPPED", "STRIPPED_TYPES", "room_state_pdus", "to_client"]

STRIPPED_TYPES = ("m.room.create", "m.room.name", "m.room.avatar", "m.room.topic", "m.room.join_rules",
                  "m.room.canonical_alias", "m.room.encryption")  # fmt: skip
MAX_STRIPPED = 50
_MAX_STRING = 255


def room_state_pdus(dag: RoomDag, room_id: str) -> list[dict[str, Any]]:
    """The room's identifying state events as PDUs, create event first."""
    state = dag.current_state(room_id)
    out = []
    for event_type in STRIPPED_TYPES:
        event_id = state.get((event_type, ""))
        known = dag.known(event_id) if event_id else None
        if known is not None:
            out.append(known.event.pdu)
    return out


def to_client(raw: Any, room_id: str) -> list[dict[str, Any]]:
    """Stripped state events for a client from what a server sent (anything malformed is left out)."""
    out: list[dict[str, Any]] = []
    for entry in raw[:MAX_STRIPPED] if isinstance(raw, list) else []:
        if not isinstance(entry, dict):
            continue
        kind, key, content, sender = (entry.get(k) for k in ("type", "state_key", "content", "sender"))
        if not (isinstance(kind, str) and isinstance(key, str) and isinstance(content, dict)
                and isinstance(sender, str)) or len(kind) > _MAX_STRING or len(key) > _MAX_STRING:  # fmt: skip
            continue
        if entry.get("room_id", room_id) != room_id:
            continue
        out.append({"type": kind, "state_key": key, "content": content, "sender": sender[:_MAX_STRING]})
    return out
