"""Room versions: what each version changes, as data the rest of the Matrix layer reads.

Rules:

* one frozen :class:`RoomVersion` per version the gateway knows; code asks
  a flag (``version.event_id_format``, ``version.knock`` …), never compares
  version strings;
* ``KNOWN`` holds every version this gateway can take part in; a room of
  another version is refused (M_UNSUPPORTED_ROOM_VERSION / M_INCOMPATIBLE_ROOM_VERSION);
* ``DEFAULT`` is what ``/createRoom`` makes without ``room_version``.

Sources: the room versions part of the Matrix spec (v1.16), one page per
version, and the MSCs each version names.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT", "KNOWN", "RoomVersion", "UnsupportedRoomVersion", "get"]

#: Event ID formats: "v1" — ``$random:server`` carried in the PDU (versions 1–2);
#: "v3" — reference hash, standard unpadded base64 (version 3);
#: "v4" — reference hash, URL-safe unpadded base64 (versions 4 and later).
EVENT_ID_V1, EVENT_ID_V3, EVENT_ID_V4 = "v1", "v3", "v4"


@dataclass(frozen=True)
class RoomVersion:
    """The rules of one room version, as flags."""

    identifier: str
    #: EVENT_ID_V1, EVENT_ID_V3 or EVENT_ID_V4 (see above).
    event_id_format: str
    #: State resolution algorithm: "v1", "v2" or "v2.1" (v2 with MSC4297, version 12).
    state_res: str
    #: Signing keys must be valid (``valid_until_ts``) at the event's ``origin_server_ts`` (v5+).
    enforce_key_validity: bool
    #: ``m.room.aliases`` has its own auth rule (v1–v5).
    special_case_aliases_auth: bool
    #: Event JSON must be strict canonical JSON: integers within ±(2**53-1), no floats (v6+).
    strict_canonical_json: bool
    #: Power level changes of ``notifications`` are checked like the other keys (v6+).
    limit_notifications_power_levels: bool
    #: The ``knock`` join rule and membership (v7+).
    knock: bool
    #: The ``restricted`` join rule (v8+).
    restricted: bool
    #: The ``knock_restricted`` join rule (v10+).
    knock_restricted: bool
    #: Power levels must be integers, not strings (v10+).
    integer_power_levels: bool
    #: Redaction keeps what MSC2176/MSC3821/MSC3989 say (v11+): the whole create content,
    #: power levels' ``invite``, a redaction's ``redacts`` in its content; drops ``origin``,
    #: ``membership``, ``prev_state`` at the top level.
    msc2176_redaction: bool
    #: ``m.room.create`` has no ``creator``: the sender is the creator (MSC2175, v11+).
    implicit_room_creator: bool
    #: Redactions carry ``redacts`` in their content (MSC2174, v11+).
    redacts_in_content: bool
    #: The room ID is ``!`` + the create event's reference hash, with no server name; the create
    #: event has no ``room_id`` and is no auth event of the others (MSC4291, v12).
    room_id_is_create_hash: bool
    #: The creator and ``additional_creators`` have infinite power and never appear in power
    #: levels' ``users`` (MSC4289, v12).
    privileged_creators: bool

    @property
    def events_carry_id(self) -> bool:
        """Whether the PDU holds its own ``event_id`` and prev/auth events are ``[id, hashes]`` pairs."""
        return self.event_id_format == EVENT_ID_V1


def _version(identifier: str, base: RoomVersion | None = None, **changes: object) -> RoomVersion:
    fields = dict(base.__dict__) if base is not None else {}
    fields.update(changes, identifier=identifier)
    return RoomVersion(**fields)  # type: ignore[arg-type]


V1 = RoomVersion(
    identifier="1", event_id_format=EVENT_ID_V1, state_res="v1", enforce_key_validity=False,
    special_case_aliases_auth=True, strict_canonical_json=False, limit_notifications_power_levels=False,
    knock=False, restricted=False, knock_restricted=False, integer_power_levels=False, msc2176_redaction=False,
    implicit_room_creator=False, redacts_in_content=False, room_id_is_create_hash=False, privileged_creators=False,
)  # fmt: skip
V2 = _version("2", V1, state_res="v2")
V3 = _version("3", V2, event_id_format=EVENT_ID_V3)
V4 = _version("4", V3, event_id_format=EVENT_ID_V4)
V5 = _version("5", V4, enforce_key_validity=True)
V6 = _version("6", V5, special_case_aliases_auth=False, strict_canonical_json=True,
              limit_notifications_power_levels=True)  # fmt: skip
V7 = _version("7", V6, knock=True)
V8 = _version("8", V7, restricted=True)
V9 = _version("9", V8)  # v8 with the restricted-join redaction fix (join_authorised_via_users_server kept)
V10 = _version("10", V9, knock_restricted=True, integer_power_levels=True)
V11 = _version("11", V10, msc2176_redaction=True, implicit_room_creator=True, redacts_in_content=True)
V12 = _version("12", V11, state_res="v2.1", room_id_is_create_hash=True, privileged_creators=True)

#: Every room version the gateway can join and serve. Version 1 needs state resolution v1,
#: which Lowband does not implement: such rooms are refused.
KNOWN: dict[str, RoomVersion] = {v.identifier: v for v in (V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12)}
DEFAULT = V10


class UnsupportedRoomVersion(ValueError):
    """A room version this gateway does not implement; the message names it."""


def get(identifier: object) -> RoomVersion:
    """The room version called ``identifier``; :class:`UnsupportedRoomVersion` otherwise."""
    if isinstance(identifier, str) and identifier in KNOWN:
        return KNOWN[identifier]
    shown = identifier[:40] if isinstance(identifier, str) else type(identifier).__name__
    raise UnsupportedRoomVersion(f"room version {shown!r} is not supported (known: {', '.join(KNOWN)})")
