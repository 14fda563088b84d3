"""Room version 10 events: format, hashes, event IDs, redaction, signing.

Rules (room versions spec, v10, which keeps the v4 event format and the v9
redaction algorithm; server-server API, "Signing Events"):

* A PDU is a JSON object *without* ``event_id``; the ID is derived from it:
  ``"$" + urlsafe_unpadded_b64(sha256(canonical(redact(pdu) - signatures,
  unsigned, age_ts)))`` (the *reference hash*).
* ``hashes.sha256`` is the *content hash*: sha256 over the canonical JSON of
  the whole PDU without ``unsigned``, ``signatures`` and ``hashes``.
* The sender's server signs ``redact(pdu)`` (which keeps ``hashes``), so the
  signature still checks after a redaction, and the content hash tells
  whether the full content is the one signed.
* A received PDU that fails the signature check is dropped; one whose
  content hash is wrong is used only in redacted form.

Everything here is pure computation over dicts; nothing reads a clock or the
network (``build_event`` takes ``origin_server_ts`` from the caller).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from lowband.gateway.matrix.canonical_json import (
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    CanonicalJSONError,
    checked_copy,
    encode_canonical_json,
)
from lowband.gateway.matrix.signing import (
    SignatureError,
    SigningKey,
    decode_base64,
    encode_base64,
    encode_base64_urlsafe,
    sign_json,
    verify_ed25519,
)

__all__ = [
    "ROOM_VERSION",
    "ContentHashError",
    "Event",
    "EventFormatError",
    "add_signature",
    "build_event",
    "check_event_format",
    "compute_content_hash",
    "compute_event_id",
    "content_hash_matches",
    "redact",
    "server_name_of",
    "verify_event",
]

ROOM_VERSION = "10"

MAX_PDU_BYTES = 65536
MAX_ID_BYTES = 255
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10

# v9 redaction algorithm (unchanged in v10): top-level keys that survive.
_KEPT_TOP_LEVEL = frozenset(
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
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    }
)

# ... and the content keys that survive, per event type. Note what v10 does
# NOT keep (v11 changed these): the whole create content, power levels'
# `invite`, and the redaction's `redacts`.
_KEPT_CONTENT: Mapping[str, frozenset[str]] = {
    "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
    "m.room.create": frozenset({"creator"}),
    "m.room.join_rules": frozenset({"join_rule", "allow"}),
    "m.room.power_levels": frozenset(
        {"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"}
    ),
    "m.room.history_visibility": frozenset({"history_visibility"}),
}

_REQUIRED_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "room_id": str,
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
_OPTIONAL_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "state_key": str,
    "redacts": str,
    "unsigned": dict,
    "origin": str,
}


class EventFormatError(ValueError):
    """A PDU does not have the room version 10 event format.

    Raised by :func:`check_event_format` (and by :func:`build_event` when
    asked to build such an event). The message names the field.
    """


class ContentHashError(SignatureError):
    """The sender's signature is good but ``hashes.sha256`` does not match.

    Per the spec the event is then not dropped: use ``redact(pdu)`` in
    place of the received PDU.
    """


@dataclass(frozen=True)
class Event:
    """A v10 room event: its ID and its federation-format PDU.

    ``pdu`` is the object as hashed and signed, without ``event_id``
    (it may carry ``unsigned``). Treat it as read-only: the ID is derived
    from it. Accessors assume the PDU passed :func:`check_event_format`.
    """

    event_id: str
    pdu: dict[str, Any]
    #: The PDU's canonical JSON when this process built it (what the store writes), else None.
    canonical: bytes | None = field(default=None, compare=False, repr=False)
    #: Built with ``sign_later``: signs, completes the PDU and returns its canonical JSON (see build_event).
    sign: Callable[[], bytes] | None = field(default=None, compare=False, repr=False)

    def __hash__(self) -> int:
        return hash(self.event_id)

    @classmethod
    def from_pdu(cls, pdu: dict[str, Any]) -> Event:
        """Wrap a PDU, computing its event ID (no format or signature check)."""
        return cls(compute_event_id(pdu), pdu)

    @property
    def type(self) -> str:
        return str(self.pdu["type"])

    @property
    def state_key(self) -> str | None:
        value = self.pdu.get("state_key")
        return value if isinstance(value, str) else None

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def sender(self) -> str:
        return str(self.pdu["sender"])

    @property
    def room_id(self) -> str:
        return str(self.pdu["room_id"])

    @property
    def content(self) -> dict[str, Any]:
        value = self.pdu.get("content")
        return value if isinstance(value, dict) else {}

    @property
    def depth(self) -> int:
        return int(self.pdu["depth"])

    @property
    def prev_events(self) -> list[str]:
        return list(self.pdu.get("prev_events", []))

    @property
    def auth_events(self) -> list[str]:
        return list(self.pdu.get("auth_events", []))

    @property
    def origin_server_ts(self) -> int:
        return int(self.pdu["origin_server_ts"])

    @property
    def redacts(self) -> str | None:
        value = self.pdu.get("redacts")
        return value if isinstance(value, str) else None

    def to_client(self, unsigned: dict[str, Any] | None = None) -> dict[str, Any]:
        """Return the client-server API form of this event.

        Keys: ``event_id``, ``type``, ``content``, ``sender``,
        ``origin_server_ts``, ``room_id``; ``state_key`` for state events;
        ``redacts`` when present; ``unsigned`` when given and non-empty.
        ``content`` and ``unsigned`` are shared, not copied.
        """
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "type": self.type,
            "content": self.content,
            "sender": self.sender,
            "origin_server_ts": self.origin_server_ts,
            "room_id": self.room_id,
        }
        if self.state_key is not None:
            out["state_key"] = self.state_key
        if self.redacts is not None:
            out["redacts"] = self.redacts
        if unsigned:
            out["unsigned"] = unsigned
        return out


def server_name_of(identifier: str) -> str:
    """Return the server name of a user or room ID (everything after the first ``:``).

    Raises ``ValueError`` if there is no ``:``. Ports stay part of the name
    (``@a:host:8448`` → ``host:8448``).
    """
    _, sep, server = identifier.partition(":")
    if not sep or not server:
        raise ValueError(f"identifier {identifier[:80]!r} has no server name")
    return server


# -- hashes and IDs -----------------------------------------------------------


def compute_content_hash(pdu: Mapping[str, Any]) -> str:
    """Return the unpadded base64 sha256 content hash of ``pdu``.

    Covers everything but ``unsigned``, ``signatures`` and ``hashes``.
    Raises :class:`CanonicalJSONError` if the PDU has no canonical form.
    """
    body = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    return encode_base64(hashlib.sha256(encode_canonical_json(body)).digest())


def content_hash_matches(pdu: Mapping[str, Any]) -> bool:
    """Return whether ``pdu["hashes"]["sha256"]`` is the PDU's content hash.

    ``False`` also for a missing or non-base64 hash, or a PDU with no
    canonical form; never raises.
    """
    hashes = pdu.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(claimed, str):
        return False
    try:
        body = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
        actual = hashlib.sha256(encode_canonical_json(body)).digest()
        return decode_base64(claimed) == actual
    except ValueError:
        return False


def compute_event_id(pdu: Mapping[str, Any]) -> str:
    """Return the v10 event ID: ``$`` + URL-safe unpadded base64 reference hash.

    Raises :class:`CanonicalJSONError` if the PDU has no canonical form.
    """
    pruned = _redacted_view(pdu)
    pruned.pop("signatures", None)
    pruned.pop("unsigned", None)  # redaction already drops both; the spec lists them
    pruned.pop("age_ts", None)
    return "$" + encode_base64_urlsafe(hashlib.sha256(encode_canonical_json(pruned)).digest())


def redact(pdu: Mapping[str, Any]) -> dict[str, Any]:
    """Return a redacted deep copy of ``pdu`` per the v10 (= v9) algorithm.

    Top-level keys outside the kept list go; ``content`` keeps only the
    keys listed for its event type (none for other types). A ``content``
    that is not an object becomes ``{}``. ``pdu`` is not modified.
    """
    return copy.deepcopy(_redacted_view(pdu))


def _redacted_view(pdu: Mapping[str, Any]) -> dict[str, Any]:
    """The redacted form sharing values with ``pdu``: for hashing only, never mutate."""
    out = {k: v for k, v in pdu.items() if k in _KEPT_TOP_LEVEL}
    content = pdu.get("content")
    event_type = pdu.get("type")
    kept = _KEPT_CONTENT.get(event_type, frozenset()) if isinstance(event_type, str) else frozenset()
    if isinstance(content, dict):
        out["content"] = {k: v for k, v in content.items() if k in kept}
    elif "content" in out:
        out["content"] = {}
    return out


# -- format -------------------------------------------------------------------


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


def _check_event_id_list(name: str, value: list[Any], limit: int) -> None:
    if len(value) > limit:
        raise EventFormatError(f"{name} has {len(value)} entries; at most {limit} allowed")
    for item in value:
        if not isinstance(item, str):
            raise EventFormatError(f"{name} entries must be event ID strings")
        _check_sigil_id(f"{name} entry", item, "$")


def check_event_format(pdu: Any, *, values_checked: bool = False, encoded: bytes | None = None) -> bytes:
    """Check that ``pdu`` has the room version 10 PDU format.

    Checks: an object; the required keys (``room_id``, ``sender``,
    ``origin_server_ts``, ``type``, ``content``, ``prev_events``,
    ``auth_events``, ``depth``, ``hashes``, ``signatures``) with their JSON
    types, and the optional ones (``state_key``, ``redacts``, ``unsigned``,
    ``origin``); ``sender`` ``@…:server``, ``room_id`` ``!…:server``;
    ``sender``, ``room_id``, ``type``, ``state_key`` and every event ID at
    most 255 bytes of UTF-8; at most 20 ``prev_events`` and 10
    ``auth_events``, each a ``$`` event ID; ``depth`` an integer in
    ``[0, 2**53-1]``; ``hashes.sha256`` a string; ``signatures`` a map of
    maps of strings; the whole PDU valid canonical JSON (so integers only)
    of at most 65536 bytes. Returns that canonical JSON. Raises
    :class:`EventFormatError`.

    ``encoded`` is the PDU's canonical JSON when the caller already has it
    (it is measured, not made again).

    ``values_checked=True`` skips re-checking that every value is canonical
    JSON (the size is still measured): for a PDU this process just built
    from checked values.
    """
    if not isinstance(pdu, dict):
        raise EventFormatError("a PDU must be a JSON object")
    for key in _REQUIRED_KEYS:
        if key not in pdu:
            raise EventFormatError(f"missing required key {key!r}")
    for key, kind in (*_REQUIRED_KEYS.items(), *_OPTIONAL_KEYS.items()):
        if key in pdu:
            value = pdu[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise EventFormatError(f"{key!r} has the wrong JSON type")

    _check_sigil_id("sender", pdu["sender"], "@")
    _check_sigil_id("room_id", pdu["room_id"], "!")
    for key in ("sender", "room_id"):
        try:
            server_name_of(pdu[key])
        except ValueError:
            raise EventFormatError(f"{key} has no server name") from None
    if _utf8_len(pdu["type"]) > MAX_ID_BYTES:
        raise EventFormatError(f"type is longer than {MAX_ID_BYTES} bytes")
    if "state_key" in pdu and _utf8_len(pdu["state_key"]) > MAX_ID_BYTES:
        raise EventFormatError(f"state_key is longer than {MAX_ID_BYTES} bytes")
    if "redacts" in pdu:
        _check_sigil_id("redacts", pdu["redacts"], "$")
    _check_event_id_list("prev_events", pdu["prev_events"], MAX_PREV_EVENTS)
    _check_event_id_list("auth_events", pdu["auth_events"], MAX_AUTH_EVENTS)

    # depth: the schema says "less than 2**53 - 1" in prose but the limit is
    # the canonical JSON maximum itself (a room at the limit stays there).
    if not 0 <= pdu["depth"] <= MAX_SAFE_INTEGER:
        raise EventFormatError("depth must be in [0, 2**53-1]")
    if not MIN_SAFE_INTEGER <= pdu["origin_server_ts"] <= MAX_SAFE_INTEGER:
        raise EventFormatError("origin_server_ts is outside the canonical integer range")
    if not isinstance(pdu["hashes"].get("sha256"), str):
        raise EventFormatError("hashes.sha256 must be a string")
    for server, sigs in pdu["signatures"].items():
        if not isinstance(sigs, dict) or not all(isinstance(s, str) for s in sigs.values()):
            raise EventFormatError(f"signatures for {server[:80]!r} must map key IDs to strings")

    if encoded is None:
        try:
            encoded = encode_canonical_json(pdu, checked=values_checked)
        except CanonicalJSONError as err:
            raise EventFormatError(f"not canonical JSON: {err}") from None
    if len(encoded) > MAX_PDU_BYTES:
        raise EventFormatError(f"PDU is {len(encoded)} bytes of canonical JSON; at most {MAX_PDU_BYTES} allowed")
    return encoded


# -- building and verifying ---------------------------------------------------


def build_event(
    *,
    room_id: str,
    sender: str,
    type: str,
    content: dict[str, Any],
    prev_events: list[str],
    auth_events: list[str],
    depth: int,
    origin_server_ts: int,
    server_name: str,
    signing_key: SigningKey,
    state_key: str | None = None,
    redacts: str | None = None,
    unsigned: dict[str, Any] | None = None,
    sign_later: bool = False,
) -> Event:
    """Build, hash and sign a v10 event of this server, and compute its ID.

    ``content`` is deep-copied. The content hash goes in ``hashes.sha256``;
    the signature is made over the redacted PDU by ``server_name`` with
    ``signing_key``. ``unsigned`` (if non-empty) is stored in the PDU but is
    covered by neither. Raises :class:`EventFormatError` if the result
    would not pass :func:`check_event_format` (e.g. over 65536 bytes, a
    float in ``content``, too many ``prev_events``).

    With ``sign_later`` (and no ``unsigned``) everything but the signature
    is done: the event ID, the content hash, every check (the size counted
    with a signature of the real length). ``signatures`` holds a stand-in
    and ``event.sign()`` signs (it releases the interpreter lock, so another
    thread may run it), puts the signature in the PDU and returns the PDU's
    canonical JSON. Do not let the event be seen before then.
    """
    # No `origin` key: v10 still tolerates one, but it is deprecated, covered
    # by nothing the receiver checks, and only costs bytes on slow links.
    try:
        content = checked_copy(content, "$.content")
    except CanonicalJSONError as err:
        raise EventFormatError(f"not canonical JSON: {err}") from None
    pdu: dict[str, Any] = {
        "auth_events": list(auth_events),
        "content": content,
        "depth": depth,
        "origin_server_ts": origin_server_ts,
        "prev_events": list(prev_events),
        "room_id": room_id,
        "sender": sender,
        "type": type,
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    if redacts is not None:
        pdu["redacts"] = redacts
    try:
        # content is checked; the other values are strings, integers and lists check_event_format checks
        body = encode_canonical_json(pdu, checked=True)
    except CanonicalJSONError as err:
        raise EventFormatError(f"not canonical JSON: {err}") from None
    content_hash = encode_base64(hashlib.sha256(body).digest())
    pdu["hashes"] = {"sha256": content_hash}
    # base64 needs no escaping: the member is written directly
    hashed = _insert(body, b',"origin_server_ts":', b'"hashes":{"sha256":"' + content_hash.encode("ascii") + b'"}')
    # The signed bytes and the reference hash cover the same thing: the
    # redacted PDU without signatures (none yet) and unsigned (not kept by
    # redaction); its values were checked just above.
    reference = _redacted_text(hashed, pdu)
    event_id = "$" + encode_base64_urlsafe(hashlib.sha256(reference).digest())
    marker = b',"state_key":' if "state_key" in pdu else b',"type":'

    def sign() -> bytes:
        signature = encode_base64(signing_key.sign(reference))
        pdu["signatures"] = {server_name: {signing_key.key_id: signature}}
        return _insert(hashed, marker, _signatures_member(server_name, signing_key.key_id, signature))

    if sign_later and not unsigned:
        # Checked with a stand-in of the signature's exact length; sign() puts the real one in.
        pdu["signatures"] = {server_name: {signing_key.key_id: _SIGNATURE_STAND_IN}}
        stand_in = _signatures_member(server_name, signing_key.key_id, _SIGNATURE_STAND_IN)
        check_event_format(pdu, values_checked=True, encoded=_insert(hashed, marker, stand_in))
        return Event(event_id, pdu, sign=sign)
    encoded = sign()
    if unsigned:
        pdu["unsigned"] = copy.deepcopy(unsigned)
        encoded = check_event_format(pdu)  # unsigned was not part of the hashed, checked body
    else:
        check_event_format(pdu, values_checked=True, encoded=encoded)
    return Event(event_id, pdu, encoded)


_SIGNATURE_STAND_IN = "A" * 86  # an Ed25519 signature is 64 bytes: 86 characters of unpadded base64


# build_event makes the canonical JSON of the whole PDU and of its redacted form
# from that of the hashed body, instead of encoding the content three times.
# Top-level keys sort as auth_events, content, depth, hashes,
# origin_server_ts, prev_events, [redacts,] room_id, sender, signatures,
# [state_key,] type. Members before content hold event IDs and members after
# it integers and strings, whose quotes are escaped: so the first
# ``,"content":`` and the last ``,"depth":``, ``,"origin_server_ts":``,
# ``,"state_key":`` and ``,"type":`` in the text are the top-level ones.
# tests/matrix/test_events.py holds the results to encode_canonical_json.


def _insert(text: bytes, before: bytes, member: bytes) -> bytes:
    """``text`` with ``member`` (``"name":value``, encoded) added in front of the top-level member ``before``."""
    at = text.rindex(before)
    return text[:at] + b"," + member + text[at:]


def _signatures_member(server_name: str, key_id: str, signature: str) -> bytes:
    """``"signatures":{server_name:{key_id:signature}}`` as canonical JSON (one key per level: no sorting)."""
    return b'"signatures":{%s:{%s:%s}}' % (_json_string(server_name), _json_string(key_id), _json_string(signature))


def _json_string(text: str) -> bytes:
    """A string as canonical JSON writes it (non-ASCII as UTF-8, as the canonical encoder does)."""
    return encode_basestring(text).encode("utf-8")


def _redacted_text(hashed: bytes, pdu: dict[str, Any]) -> bytes:
    """Canonical JSON of the redacted PDU, from that of the PDU with hashes and without signatures."""
    if "redacts" in pdu or not isinstance(pdu["content"], dict) or not isinstance(pdu["type"], str):
        # v10 redaction drops redacts (rare: not worth splicing); a malformed PDU fails its format check later
        return encode_canonical_json(_redacted_view(pdu), checked=True)
    kept = _KEPT_CONTENT.get(pdu["type"])
    content = {k: v for k, v in pdu["content"].items() if k in kept} if kept else {}
    start = hashed.index(b',"content":') + len(b',"content":')
    end = hashed.rindex(b',"depth":')
    return hashed[:start] + (encode_canonical_json(content, checked=True) if content else b"{}") + hashed[end:]


def add_signature(pdu: dict[str, Any], server_name: str, signing_key: SigningKey) -> dict[str, Any]:
    """Return a copy of ``pdu`` that also carries ``server_name``'s signature.

    Used by a resident server to co-sign a restricted join it authorised
    (``join_authorised_via_users_server``). The event ID does not change.
    Raises :class:`CanonicalJSONError` if the PDU has no canonical form.
    """
    signed = sign_json(redact(pdu), server_name, signing_key)
    out = dict(pdu)
    out["signatures"] = signed["signatures"]
    return out


def _check_server_signature(
    redacted: dict[str, Any],
    server: str,
    verify_key_lookup: Callable[[str, str], bytes | None],
) -> None:
    signatures = redacted.get("signatures")
    server_sigs = signatures.get(server) if isinstance(signatures, dict) else None
    if not isinstance(server_sigs, dict):
        raise SignatureError(f"event is not signed by {server}")
    data = encode_canonical_json({k: v for k, v in redacted.items() if k not in ("signatures", "unsigned")})
    checked = False
    for key_id, encoded in server_sigs.items():
        if not key_id.startswith("ed25519:"):
            continue  # algorithms we do not know are ignored, per the spec
        key = verify_key_lookup(server, key_id)
        if key is None:
            continue
        try:
            signature = decode_base64(encoded) if isinstance(encoded, str) else b""
        except ValueError:
            signature = b""
        if not verify_ed25519(key, data, signature):
            raise SignatureError(f"signature by {server} with {key_id} does not verify")
        checked = True
    if not checked:
        raise SignatureError(f"no known ed25519 key of {server} signed the event")


def verify_event(pdu: dict[str, Any], verify_key_lookup: Callable[[str, str], bytes | None]) -> None:
    """Check the signatures and the content hash of a received v10 PDU.

    Signatures are checked on ``redact(pdu)``: the sender's server must
    have signed with at least one ed25519 key that ``verify_key_lookup
    (server_name, key_id)`` knows, and every signature of that server made
    with a known key must verify. For an ``m.room.member`` event whose
    content names ``join_authorised_via_users_server``, that user's server
    must have signed too (auth rule 4.2 of v10; the check lives here
    because it needs keys). Unknown key IDs are skipped.

    Raises :class:`SignatureError` if a signature is missing or wrong (drop
    the event), then :class:`ContentHashError` (a subclass) if signatures
    are good but the content hash is not (use ``redact(pdu)`` instead).
    The PDU should have passed :func:`check_event_format` first.
    """
    try:
        redacted = redact(pdu)
        sender_server = server_name_of(str(pdu.get("sender", "")))
        servers = [sender_server]
        if pdu.get("type") == "m.room.member":
            via = redacted.get("content", {}).get("join_authorised_via_users_server")
            if isinstance(via, str) and server_name_of(via) not in servers:
                servers.append(server_name_of(via))
        for server in servers:
            _check_server_signature(redacted, server, verify_key_lookup)
    except SignatureError:
        raise
    except ValueError as err:  # no server name, no canonical form
        raise SignatureError(f"cannot check signatures: {err}") from None
    if not content_hash_matches(pdu):
        raise ContentHashError("content hash does not match; the event must be redacted")
