"""The redaction algorithm of every room version (room versions spec, "Redactions").

Rules — what survives a redaction:

* top-level keys: ``event_id``, ``type``, ``room_id``, ``sender``,
  ``state_key``, ``content``, ``hashes``, ``signatures``, ``depth``,
  ``prev_events``, ``auth_events``, ``origin_server_ts``; before v11 also
  ``prev_state``, ``origin`` and ``membership`` (MSC2176, MSC3989);
* ``content`` keys, by event type (nothing for other types):

  ======================== ==================================================
  m.room.member            ``membership``; ``join_authorised_via_users_server``
                           from v9; ``third_party_invite.signed`` from v11
  m.room.create            ``creator`` before v11; everything from v11
  m.room.join_rules        ``join_rule``; ``allow`` from v8
  m.room.power_levels      ``ban events events_default kick redact
                           state_default users users_default``; ``invite``
                           from v11
  m.room.history_visibility ``history_visibility``
  m.room.aliases           ``aliases`` in v1–v5 only
  m.room.redaction         ``redacts`` from v11
  ======================== ==================================================

* a ``content`` that is not an object becomes ``{}``.

The event ID (v3+), the signatures and the reference hash of every version
cover the redacted form, so this table decides event IDs: a key kept here
that the sender's server dropped (or the reverse) gives another event ID.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from lowband.gateway.matrix.room_versions import RoomVersion

__all__ = ["EVERYTHING", "content_keys", "kept_content", "redact", "redacted_view"]

_TOP_LEVEL = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)
_TOP_LEVEL_BEFORE_V11 = _TOP_LEVEL | {"prev_state", "origin", "membership"}

_POWER_LEVELS = frozenset(
    {"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"}
)

#: Marks an event type whose whole content survives (v11+ m.room.create).
EVERYTHING: frozenset[str] = frozenset({"*every key*"})

#: identifier -> (version, content keys kept by type), made once per version object: the hot
#: path (local v10 sends) looks up a string here instead of hashing a dataclass of 17 flags.
_TABLES: dict[str, tuple[RoomVersion, Mapping[str, frozenset[str]]]] = {}


def content_keys(version: RoomVersion) -> Mapping[str, frozenset[str]]:
    """Event type -> the content keys redaction keeps (:data:`EVERYTHING` for all); a type not
    listed keeps none. Read-only."""
    entry = _TABLES.get(version.identifier)
    if entry is not None and entry[0] is version:
        return entry[1]
    member = {"membership"}
    if version.redaction_keeps_authorising_user:
        member.add("join_authorised_via_users_server")
    table: dict[str, frozenset[str]] = {
        "m.room.member": frozenset(member),
        "m.room.join_rules": frozenset({"join_rule", "allow"} if version.restricted else {"join_rule"}),
        "m.room.power_levels": _POWER_LEVELS | {"invite"} if version.msc2176_redaction else _POWER_LEVELS,
        "m.room.history_visibility": frozenset({"history_visibility"}),
    }
    if version.msc2176_redaction:
        table["m.room.create"] = EVERYTHING
        table["m.room.redaction"] = frozenset({"redacts"})
    else:
        table["m.room.create"] = frozenset({"creator"})
    if version.special_case_aliases_auth:
        table["m.room.aliases"] = frozenset({"aliases"})
    _TABLES[version.identifier] = (version, table)
    return table


def kept_content(event_type: Any, content: Any, room_version: RoomVersion) -> dict[str, Any]:
    """The part of ``content`` that redaction keeps for ``event_type`` (a new dict sharing the values).

    A ``content`` that is not an object gives ``{}``; so does an event type
    that is not a string.
    """
    if not isinstance(content, dict) or not isinstance(event_type, str):
        return {}
    kept = content_keys(room_version).get(event_type)
    if kept is None:
        return {}
    if kept is EVERYTHING:
        return dict(content)
    out = {k: v for k, v in content.items() if k in kept}
    if event_type == "m.room.member" and room_version.msc2176_redaction:
        # MSC3821: the identity server's signed block is what auth checks; the rest
        # (display_name) goes. An object without `signed` stays as {} (as Synapse does).
        invite = content.get("third_party_invite")
        if isinstance(invite, dict):
            out["third_party_invite"] = {"signed": invite["signed"]} if "signed" in invite else {}
    return out


def redacted_view(pdu: Mapping[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """The redacted form of ``pdu``, sharing values with it: for hashing and signing only, never mutate."""
    top = _TOP_LEVEL if room_version.msc2176_redaction else _TOP_LEVEL_BEFORE_V11
    out = {k: v for k, v in pdu.items() if k in top}
    if "content" in out:
        out["content"] = kept_content(pdu.get("type"), out["content"], room_version)
    return out


def redact(pdu: Mapping[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """Return a redacted deep copy of ``pdu`` per ``room_version``'s algorithm (see the module rules).

    ``pdu`` is not modified. Never raises for a mapping.
    """
    return copy.deepcopy(redacted_view(pdu, room_version))
