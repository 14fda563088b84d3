"""Room versions: what each version changes, as data the rest of the Matrix layer reads.

Rules:

* one frozen :class:`RoomVersion` per version the gateway knows; code asks
  a flag (``version.event_id_format``, ``version.knock`` …), never compares
  version strings;
* ``KNOWN`` holds every version this gateway can take part in; a room of
  another version is refused (M_UNSUPPORTED_ROOM_VERSION / M_INCOMPATIBLE_ROOM_VERSION);
* ``DEFAULT`` is what ``/createRoom`` makes without ``room_version``;
* a room's version is the ``room_version`` its ``m.room.create`` event names
  (``"1"`` when absent): :func:`of_create_content` reads it.

Sources: the room versions part of the Matrix spec (v1.16: content/rooms/v1.md
… v12.md and their fragments), the MSCs each version names, and the server-server
API ("Auth events selection", "Validating hashes and signatures"). Each flag says
which versions set it; tests/matrix/test_room_versions.py holds the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "DEFAULT",
    "EVENT_ID_V1",
    "EVENT_ID_V3",
    "EVENT_ID_V4",
    "KNOWN",
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "V6",
    "V7",
    "V8",
    "V9",
    "V10",
    "V11",
    "V12",
    "RoomVersion",
    "UnsupportedRoomVersion",
    "get",
    "of_create_content",
]

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
    #: ``m.room.aliases`` has its own auth rule and keeps ``aliases`` through redaction (v1–v5).
    special_case_aliases_auth: bool
    #: Event JSON must be strict canonical JSON: integers within ±(2**53-1), no floats (v6+).
    #: Before v6 power levels may be floats (truncated) and depth may reach 2**63-1.
    strict_canonical_json: bool
    #: Power level changes of ``notifications`` are checked like ``events`` (v6+).
    limit_notifications_power_levels: bool
    #: The ``knock`` join rule and membership (v7+).
    knock: bool
    #: The ``restricted`` join rule and ``join_authorised_via_users_server`` (v8+); redaction
    #: keeps ``m.room.join_rules``' ``allow`` from v8 on.
    restricted: bool
    #: Redaction keeps ``m.room.member``'s ``join_authorised_via_users_server`` (v9+: the v8 fix).
    redaction_keeps_authorising_user: bool
    #: The ``knock_restricted`` join rule (v10+).
    knock_restricted: bool
    #: Power levels must be integers, not strings (v10+; v1–v9 accept integer strings).
    integer_power_levels: bool
    #: Redaction keeps what MSC2176/MSC3821/MSC3989 say (v11+): the whole create content,
    #: power levels' ``invite``, a redaction's ``redacts`` in its content, a member event's
    #: ``third_party_invite.signed``; drops ``origin``, ``membership``, ``prev_state`` at the top level.
    msc2176_redaction: bool
    #: ``m.room.create`` has no ``creator``: the sender is the creator (MSC2175, v11+).
    implicit_room_creator: bool
    #: Redactions carry ``redacts`` in their content, not at the top level (MSC2174, v11+).
    redacts_in_content: bool
    #: The room ID is ``!`` + the create event's reference hash, with no server name; the create
    #: event has no ``room_id`` and is no auth event of the others (MSC4291, v12).
    room_id_is_create_hash: bool
    #: The creator and ``additional_creators`` have infinite power and never appear in power
    #: levels' ``users`` (MSC4289, v12).
    privileged_creators: bool

    @property
    def events_carry_id(self) -> bool:
        """Whether the PDU holds its own ``event_id`` and prev/auth events are ``[id, hashes]`` pairs (v1–v2).

        The same versions also need a signature from the event ID's server and
        judge ``m.room.redaction`` in the auth rules (rule 11), which v3 moved to
        "Handling redactions".
        """
        return self.event_id_format == EVENT_ID_V1

    @property
    def max_depth(self) -> int:
        """The largest ``depth`` an event may carry: 2**63-1 before v6, the canonical JSON limit after."""
        return 2**53 - 1 if self.strict_canonical_json else 2**63 - 1


V1 = RoomVersion(
    identifier="1", event_id_format=EVENT_ID_V1, state_res="v1", enforce_key_validity=False,
    special_case_aliases_auth=True, strict_canonical_json=False, limit_notifications_power_levels=False,
    knock=False, restricted=False, redaction_keeps_authorising_user=False, knock_restricted=False,
    integer_power_levels=False, msc2176_redaction=False, implicit_room_creator=False, redacts_in_content=False,
    room_id_is_create_hash=False, privileged_creators=False,
)  # fmt: skip
V2 = replace(V1, identifier="2", state_res="v2")
V3 = replace(V2, identifier="3", event_id_format=EVENT_ID_V3)
V4 = replace(V3, identifier="4", event_id_format=EVENT_ID_V4)
V5 = replace(V4, identifier="5", enforce_key_validity=True)
V6 = replace(V5, identifier="6", special_case_aliases_auth=False, strict_canonical_json=True,
             limit_notifications_power_levels=True)  # fmt: skip
V7 = replace(V6, identifier="7", knock=True)
V8 = replace(V7, identifier="8", restricted=True)
V9 = replace(V8, identifier="9", redaction_keeps_authorising_user=True)
V10 = replace(V9, identifier="10", knock_restricted=True, integer_power_levels=True)
V11 = replace(V10, identifier="11", msc2176_redaction=True, implicit_room_creator=True, redacts_in_content=True)
V12 = replace(V11, identifier="12", state_res="v2.1", room_id_is_create_hash=True, privileged_creators=True)

#: Every room version the gateway can join and serve. Version 1 needs state resolution v1,
#: which Lowband does not implement: such rooms are refused (``V1`` exists for the
#: event-level algorithms, which version 2 shares with it).
KNOWN: dict[str, RoomVersion] = {v.identifier: v for v in (V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12)}
#: The spec asks servers to create version 12 rooms by default; Lowband stays on 10 until the
#: version 12 paths (state resolution v2.1, create-less auth events) are measured on the busy paths.
DEFAULT = V10

_ALL: dict[str, RoomVersion] = {"1": V1, **KNOWN}


class UnsupportedRoomVersion(ValueError):
    """A room version this gateway does not implement; the message names it."""


def get(identifier: object) -> RoomVersion:
    """The room version called ``identifier``; :class:`UnsupportedRoomVersion` otherwise (also for "1")."""
    if isinstance(identifier, str) and identifier in KNOWN:
        return KNOWN[identifier]
    shown = identifier[:40] if isinstance(identifier, str) else type(identifier).__name__
    raise UnsupportedRoomVersion(f"room version {shown!r} is not supported (known: {', '.join(KNOWN)})")


def of_create_content(content: Mapping[str, Any]) -> RoomVersion | None:
    """The version a room's ``m.room.create`` content names (``"1"`` when it names none).

    ``None`` for a version this module does not describe. Version 1 is
    returned although it is not in ``KNOWN``: its event rules are those of
    version 2, which callers that only read levels or creators may use.
    """
    identifier = content.get("room_version", "1")
    return _ALL.get(identifier) if isinstance(identifier, str) else None
