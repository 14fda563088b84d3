"""The room-version-dependent calls of the receive path, in one place."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lowband.gateway.matrix import auth_rules, events
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.identifiers import create_event_id_of_room
from lowband.gateway.matrix.room_versions import RoomVersion
from lowband.gateway.matrix.signing import ServerKey

StateKey = tuple[str, str]


def check_format(pdu: Any, version: RoomVersion) -> bytes:
    """The PDU's canonical JSON if it has ``version``'s event format; EventFormatError otherwise."""
    return events.check_event_format(pdu, version)


def event_from_pdu(pdu: dict[str, Any], version: RoomVersion) -> Event:
    """The event with its ID computed as ``version`` says."""
    return Event(events.compute_event_id(pdu, version), pdu)


def verify(pdu: dict[str, Any], version: RoomVersion,
           lookup: Callable[[str, str], bytes | ServerKey | None]) -> None:  # fmt: skip
    """Signatures and content hash (SignatureError, then ContentHashError)."""
    events.verify_event(pdu, version, lookup)


def redacted(pdu: dict[str, Any], version: RoomVersion) -> dict[str, Any]:
    """``version``'s redaction of ``pdu``."""
    return events.redact(pdu, version)


def check_auth(event: Event, auth_state: Mapping[StateKey, Event], version: RoomVersion) -> None:
    """``version``'s auth rules; AuthError with the reason when they refuse."""
    auth_rules.check_auth(event, auth_state, room_version=version)


def auth_types(event: Event, version: RoomVersion) -> list[StateKey]:
    """The state pairs ``event``'s auth events are chosen from under ``version`` (v12: the create event too,
    which the rules need though events do not cite it)."""
    wanted = auth_rules.auth_types_for_event(event.type, event.sender, event.state_key, event.content,
                                             room_version=version)  # fmt: skip
    if version.room_id_is_create_hash and event.type != "m.room.create" and ("m.room.create", "") not in wanted:
        wanted.append(("m.room.create", ""))
    return wanted


def auth_state_from(event: Event, auth_events: list[Event], version: RoomVersion,
                    create: Event | None = None) -> dict[StateKey, Event]:  # fmt: skip
    """The auth state an event's own auth events make (v12: with the room's create event added)."""
    if version.room_id_is_create_hash and create is not None and event.type != "m.room.create":
        auth_events = [*auth_events, create]
    return auth_rules.auth_state_from_events(event, auth_events, room_version=version)


def create_event_id(event: Event, version: RoomVersion) -> str | None:
    """The create event a v12 event's room ID names (None before v12)."""
    if not version.room_id_is_create_hash or event.type == "m.room.create":
        return None
    return create_event_id_of_room(event.room_id)
