"""Step 1: a valid event of its room's version, or dropped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowband.gateway.federation.inbound import versioned
from lowband.gateway.federation.inbound.dag import RoomDag
from lowband.gateway.federation.inbound.errors import PduDropped
from lowband.gateway.matrix.canonical_json import CanonicalJSONError
from lowband.gateway.matrix.events import Event, EventFormatError
from lowband.gateway.matrix.room_versions import RoomVersion


@dataclass
class Incoming:
    """A received event on its way through the checks."""

    event: Event
    version: RoomVersion
    origin: str
    redacted: bool = False  # its content hash was wrong: the redacted form replaced it


def parse_pdu(raw: Any, origin: str, dag: RoomDag) -> Incoming:
    """Check ``raw`` against its room's event format; PduDropped if unusable.

    The room must be one this server takes part in (an event for another
    room is not ours to judge); its version decides the format and the ID.
    """
    if not isinstance(raw, dict):
        raise PduDropped("a PDU must be a JSON object")
    room_id = raw.get("room_id")
    if not isinstance(room_id, str):
        raise PduDropped("the PDU has no room_id")
    version = dag.room_version(room_id)
    if version is None:
        raise PduDropped(f"this server is not in room {room_id[:100]}")
    return parse_for_room(raw, origin, version)


def parse_for_room(raw: Any, origin: str, version: RoomVersion) -> Incoming:
    """Like :func:`parse_pdu` for a room whose version is known from elsewhere (joins, backfill)."""
    try:
        versioned.check_format(raw, version)
        event = versioned.event_from_pdu(raw, version)
    except (EventFormatError, CanonicalJSONError) as exc:
        raise PduDropped(f"not a valid room version {version.identifier} event: {exc}") from None
    return Incoming(event, version, origin)
