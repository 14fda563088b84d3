"""The room-version-dependent calls of the receive path, in one place."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lowband.gateway.matrix import auth_rules, events
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.room_versions import RoomVersion

StateKey = tuple[str, str]


def check_format(pdu: Any, version: RoomVersion) -> bytes:
    """The PDU's canonical JSON if it has ``version``'s event format; EventFormatError otherwise."""
    return events.check_event_format(pdu)


def event_from_pdu(pdu: dict[str, Any], version: RoomVersion) -> Event:
    """The event with its ID computed as ``version`` says."""
    return Event(events.compute_event_id(pdu), pdu)


def verify(pdu: dict[str, Any], version: RoomVersion, lookup: Callable[[str, str], bytes | None]) -> None:
    """Signatures and content hash (SignatureError, then ContentHashError)."""
    events.verify_event(pdu, lookup)


def redacted(pdu: dict[str, Any], version: RoomVersion) -> dict[str, Any]:
    """``version``'s redaction of ``pdu``."""
    return events.redact(pdu)


def check_auth(event: Event, auth_state: Mapping[StateKey, Event], version: RoomVersion) -> None:
    """``version``'s auth rules; AuthError with the reason when they refuse."""
    auth_rules.check_auth(event, auth_state)


def auth_types(event: Event, version: RoomVersion) -> list[StateKey]:
    """The state pairs ``event``'s auth events are chosen from under ``version``."""
    return auth_rules.auth_types_for_event(event.type, event.sender, event.state_key, event.content)
