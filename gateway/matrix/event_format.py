"""The PDU format of each room version (server-server API definitions pdu_v1 … pdu_v12).

Rules:

* every version: an object with ``sender``, ``origin_server_ts``, ``type``,
  ``content``, ``prev_events``, ``auth_events``, ``depth``, ``hashes``
  (``sha256`` a string) and ``signatures`` (a map of maps of strings);
  ``state_key`` and ``unsigned`` optional; ``sender``, ``room_id``,
  ``type``, ``state_key`` and every event ID at most 255 bytes of UTF-8;
  at most 20 ``prev_events`` and 10 ``auth_events``; the whole PDU at most
  65536 bytes of canonical JSON;
* v1–v2: the PDU carries ``event_id`` (``$opaque:server``), and
  ``prev_events``/``auth_events`` hold ``[event_id, {"sha256": …}]`` pairs;
  v3+: plain event IDs, the ID is derived;
* v1–v5: numbers need not be canonical (any integer, finite floats) and
  ``depth`` may reach 2**63-1; v6+: strict canonical JSON, depth ≤ 2**53-1;
* v1–v10: ``redacts`` and ``origin``, when present, are strings; v11+ gives
  them no meaning at the top level and checks nothing there;
* ``room_id``: ``!opaque:server`` up to v11; in v12 ``!`` + a create event's
  hash, and absent from the create event (whose ``room_id``, if any, the
  auth rules reject).

Failing here means the event is dropped (checks on receipt, step 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from lowband.gateway.matrix.canonical_json import (
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    CanonicalJSONError,
    encode_canonical_json,
)
from lowband.gateway.matrix.identifiers import MAX_ID_BYTES, is_hash_room_id, server_name_of
from lowband.gateway.matrix.room_versions import RoomVersion

__all__ = ["MAX_AUTH_EVENTS", "MAX_PDU_BYTES", "MAX_PREV_EVENTS", "EventFormatError", "check_event_format"]

MAX_PDU_BYTES = 65536
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10

_REQUIRED_KEYS: Mapping[str, type] = {
    "sender": str,
    "origin_server_ts": int,
    "type": str,
    "content": dict,
    "prev_events": list,
    "auth_events": list,
    "depth": int,
    "hashes": dict,
    "signatures": dict,
}
_OPTIONAL_KEYS: Mapping[str, type] = {"room_id": str, "state_key": str, "unsigned": dict}
_OPTIONAL_KEYS_BEFORE_V11: Mapping[str, type] = {**_OPTIONAL_KEYS, "redacts": str, "origin": str}


class EventFormatError(ValueError):
    """A PDU does not have its room version's event format.

    Raised by :func:`check_event_format` (and by the event builder when
    asked to build such an event). The message names the field.
    """


def _utf8_len(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise EventFormatError("string is not valid Unicode") from None


def _check_sigil_id(name: str, value: str, sigil: str) -> None:
    if not value.startswith(sigil):
        raise EventFormatError(f"{name} must start with {sigil!r}")
    if _utf8_len(value) > MAX_ID_BYTES:
        raise EventFormatError(f"{name} is longer than {MAX_ID_BYTES} bytes")


def _check_server_id(name: str, value: str, sigil: str) -> None:
    _check_sigil_id(name, value, sigil)
    try:
        server_name_of(value)
    except ValueError:
        raise EventFormatError(f"{name} has no server name") from None


def _check_event_id_list(name: str, value: list[Any], limit: int) -> None:
    if len(value) > limit:
        raise EventFormatError(f"{name} has {len(value)} entries; at most {limit} allowed")
    for item in value:
        if not isinstance(item, str):
            raise EventFormatError(f"{name} entries must be event ID strings")
        _check_sigil_id(f"{name} entry", item, "$")


def _check_event_id_pairs(name: str, value: list[Any], limit: int) -> None:
    """v1-v2: ``[event_id, {"sha256": reference hash}]`` pairs."""
    if not all(isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict) for item in value):
        raise EventFormatError(f"{name} entries must be [event_id, hashes] pairs")
    _check_event_id_list(name, [item[0] for item in value], limit)


class _Profile(NamedTuple):
    """What the format check asks of a version, read once per version object (the send path is hot)."""

    version: RoomVersion
    optional: Mapping[str, type]
    carry_ids: bool
    hash_room_ids: bool
    strict: bool
    max_depth: int


_PROFILES: dict[str, _Profile] = {}


def _profile(version: RoomVersion) -> _Profile:
    found = _PROFILES.get(version.identifier)
    if found is None or found.version is not version:
        optional = _OPTIONAL_KEYS if version.msc2176_redaction else _OPTIONAL_KEYS_BEFORE_V11
        found = _Profile(version, optional, version.events_carry_id, version.room_id_is_create_hash,
                         version.strict_canonical_json, version.max_depth)  # fmt: skip
        _PROFILES[version.identifier] = found
    return found


def check_event_format(
    pdu: Any, room_version: RoomVersion, *, values_checked: bool = False, encoded: bytes | None = None
) -> bytes:
    """Check that ``pdu`` has ``room_version``'s PDU format (the module rules); return its canonical JSON.

    Raises :class:`EventFormatError` naming the first field that is wrong.

    ``encoded`` is the PDU's canonical JSON when the caller already has it
    (it is measured, not made again). ``values_checked=True`` skips
    re-checking that every value is canonical JSON (the size is still
    measured): for a PDU this process just built from checked values.
    """
    if not isinstance(pdu, dict):
        raise EventFormatError("a PDU must be a JSON object")
    profile = _profile(room_version)
    for key in _REQUIRED_KEYS:
        if key not in pdu:
            raise EventFormatError(f"missing required key {key!r}")
    for key, kind in (*_REQUIRED_KEYS.items(), *profile.optional.items()):
        if key in pdu:
            value = pdu[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise EventFormatError(f"{key!r} has the wrong JSON type")

    _check_server_id("sender", pdu["sender"], "@")
    if profile.hash_room_ids:
        # the create event has none (one it carries anyway is auth rule 1.2's to reject)
        if pdu["type"] != "m.room.create" and not is_hash_room_id(pdu.get("room_id")):
            raise EventFormatError("room_id must be '!' and a create event's hash in this room version")
    elif "room_id" not in pdu:
        raise EventFormatError("missing required key 'room_id'")
    else:
        _check_server_id("room_id", pdu["room_id"], "!")
    if profile.carry_ids:
        if not isinstance(pdu.get("event_id"), str):
            raise EventFormatError("missing required key 'event_id' (a string in this room version)")
        _check_server_id("event_id", pdu["event_id"], "$")
    if _utf8_len(pdu["type"]) > MAX_ID_BYTES:
        raise EventFormatError(f"type is longer than {MAX_ID_BYTES} bytes")
    if "state_key" in pdu and _utf8_len(pdu["state_key"]) > MAX_ID_BYTES:
        raise EventFormatError(f"state_key is longer than {MAX_ID_BYTES} bytes")
    if "redacts" in pdu and "redacts" in profile.optional:
        _check_sigil_id("redacts", pdu["redacts"], "$")
    check_ids = _check_event_id_pairs if profile.carry_ids else _check_event_id_list
    check_ids("prev_events", pdu["prev_events"], MAX_PREV_EVENTS)
    check_ids("auth_events", pdu["auth_events"], MAX_AUTH_EVENTS)

    # depth: the v6 schema says "less than 2**53 - 1" in prose but the limit is the
    # canonical JSON maximum itself (a room at the limit stays there); v1-v5 say 2**63 - 1.
    if not 0 <= pdu["depth"] <= profile.max_depth:
        raise EventFormatError(f"depth must be in [0, {profile.max_depth}]")
    strict = profile.strict
    if strict and not MIN_SAFE_INTEGER <= pdu["origin_server_ts"] <= MAX_SAFE_INTEGER:
        raise EventFormatError("origin_server_ts is outside the canonical integer range")
    if not isinstance(pdu["hashes"].get("sha256"), str):
        raise EventFormatError("hashes.sha256 must be a string")
    for server, sigs in pdu["signatures"].items():
        if not isinstance(sigs, dict) or not all(isinstance(s, str) for s in sigs.values()):
            raise EventFormatError(f"signatures for {server[:80]!r} must map key IDs to strings")

    if encoded is None:
        try:
            encoded = encode_canonical_json(pdu, checked=values_checked, strict=strict)
        except CanonicalJSONError as err:
            raise EventFormatError(f"not canonical JSON: {err}") from None
    if len(encoded) > MAX_PDU_BYTES:
        raise EventFormatError(f"PDU is {len(encoded)} bytes of canonical JSON; at most {MAX_PDU_BYTES} allowed")
    return encoded
