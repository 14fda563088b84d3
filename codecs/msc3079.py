"""MSC3079 profile: Matrix JSON ↔ CBOR with the v1 integer key table.

MSC3079 (low-bandwidth client-server API) lets CBOR maps use small
integers in place of well-known string keys, at every nesting level. The
rules carried over here:

* a key in the table may be sent as its integer; other keys stay strings;
* a string that looks like a number (``"8"``) is a plain string key;
* when a map holds a key both as integer and as string, the string wins;
* an integer key that is not in the table is an error.

Encoding is deterministic CBOR (see :mod:`lowband.codecs.cbor`); for the
MSC's published example it gives the MSC's bytes exactly. Decoding accepts
any well-formed CBOR within the limits of the CBOR decoder (maps in any
key order, non-shortest integers), because clients use general encoders.
"""

from __future__ import annotations

from typing import Any

from lowband.codecs import cbor
from lowband.codecs.errors import WireError

#: Largest CBOR or JSON document either direction accepts (bytes).
MAX_DOCUMENT_BYTES = 1 << 20

#: Version 1 of the MSC3079 key table (the MSC's appendix A), in order 1..104.
KEYS_V1: tuple[str, ...] = (
    "event_id", "type", "content", "state_key", "room_id", "sender", "user_id",
    "origin_server_ts", "unsigned", "prev_content", "state", "timeline", "events",
    "limited", "prev_batch", "transaction_id", "age", "redacted_because",
    "next_batch", "presence", "avatar_url", "account_data", "rooms", "join",
    "membership", "displayname", "body", "msgtype", "format", "formatted_body",
    "ephemeral", "invite_state", "leave", "third_party_invite", "is_direct",
    "hashes", "signatures", "depth", "prev_events", "prev_state", "auth_events",
    "origin", "creator", "join_rule", "history_visibility", "ban",
    "events_default", "kick", "redact", "state_default", "users",
    "users_default", "reason", "visibility", "room_alias_name", "name", "topic",
    "invite", "invite_3pid", "room_version", "creation_content", "initial_state",
    "preset", "servers", "identifier", "user", "medium", "address", "password",
    "token", "device_id", "initial_device_display_name", "access_token",
    "home_server", "well_known", "base_url", "device_lists", "to_device", "peek",
    "last_seen_ip", "display_name", "typing", "last_seen_ts", "algorithm",
    "sender_key", "session_id", "ciphertext", "one_time_keys", "timeout",
    "recent_rooms", "chunk", "m.fully_read", "device_keys", "failures",
    "device_display_name", "prev_sender", "replaces_state", "changed",
    "unstable_features", "versions", "devices", "errcode", "error", "room_alias",
)  # fmt: skip

_KEY_TO_INT = {name: number for number, name in enumerate(KEYS_V1, start=1)}
_INT_TO_KEY = {number: name for name, number in _KEY_TO_INT.items()}


def _compress(value: Any) -> Any:
    if isinstance(value, dict):
        return {_KEY_TO_INT.get(k, k): _compress(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compress(v) for v in value]
    return value


def _expand(value: Any) -> Any:
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, int):
                name = _INT_TO_KEY.get(key)
                if name is None:
                    raise WireError(f"integer key {key} is not in the MSC3079 v1 table")
                if name in value:
                    continue  # the string form of the same key wins
                result[name] = _expand(item)
            else:
                result[key] = _expand(item)
        return result
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, bytes):
        raise WireError("CBOR byte strings have no JSON form")
    return value


def encode(document: Any) -> bytes:
    """Encode a JSON value (as returned by ``json.loads``) to MSC3079 CBOR.

    Raises WireError for values outside the JSON model, integers beyond 64
    bits, nesting deeper than :data:`cbor.MAX_DEPTH` or output larger than
    :data:`MAX_DOCUMENT_BYTES`.
    """
    encoded = cbor.dumps(_compress(document))
    if len(encoded) > MAX_DOCUMENT_BYTES:
        raise WireError(f"document of {len(encoded)} bytes exceeds {MAX_DOCUMENT_BYTES}")
    return encoded


def decode(data: bytes) -> Any:
    """Decode MSC3079 CBOR to a JSON value; WireError for anything refused."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise WireError(f"input of {len(data)} bytes exceeds {MAX_DOCUMENT_BYTES}")
    if not data:
        raise WireError("empty input")
    return _expand(cbor.loads(data, strict=False))
