"""Room events of versions 1–12: hashes, event IDs, building, signing and verifying.

Rules (room versions spec, "Event IDs", "Event format"; server-server API,
"Signing Events"):

* the *reference hash* is sha256 over the canonical JSON of the redacted PDU
  without ``signatures``, ``unsigned`` and ``age_ts``;
* the event ID is ``event_id`` in the PDU in v1–v2 (``$opaque:server``),
  ``"$" + unpadded base64(reference hash)`` in v3 and the URL-safe
  alphabet from v4 on;
* v12 (MSC4291): the create event has no ``room_id``; the room ID is its
  event ID with ``!`` for ``$``, and other events' ``auth_events`` do not
  list it;
* ``hashes.sha256`` is the *content hash*: sha256 over the canonical JSON of
  the whole PDU without ``unsigned``, ``signatures`` and ``hashes``;
* the sender's server signs the redacted PDU (which keeps ``hashes``), so
  the signature still checks after a redaction, and the content hash tells
  whether the full content is the one signed. A received PDU that fails the
  signature check is dropped; one whose content hash is wrong is used only
  in redacted form.

Functions whose algorithm differs by version take the :class:`RoomVersion`
(``room_versions.V10`` …). :class:`Event` accessors read every version's
shapes (``prev_events``/``auth_events`` as plain IDs, the v12 create
event's derived ``room_id``), so an ``Event`` needs no version of its own.

Everything here is pure computation over dicts; nothing reads a clock or the
network (``build_event`` takes ``origin_server_ts`` from the caller).
"""

from __future__ import annotations

import copy
import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from lowband.gateway.matrix.canonical_json import CanonicalJSONError, checked_copy, encode_canonical_json
from lowband.gateway.matrix.event_format import (
    MAX_AUTH_EVENTS,
    MAX_PDU_BYTES,
    MAX_PREV_EVENTS,
    EventFormatError,
    check_event_format,
)
from lowband.gateway.matrix.identifiers import room_id_of_create_event, server_name_of
from lowband.gateway.matrix.redaction import content_keys, kept_content, redact, redacted_view
from lowband.gateway.matrix.room_versions import EVENT_ID_V1, EVENT_ID_V3, V10, RoomVersion
from lowband.gateway.matrix.signing import (
    ServerKey,
    SignatureError,
    SigningKey,
    decode_base64,
    encode_base64,
    encode_base64_urlsafe,
    sign_json,
    verify_ed25519,
)

__all__ = [
    "MAX_AUTH_EVENTS",
    "MAX_PDU_BYTES",
    "MAX_PREV_EVENTS",
    "ContentHashError",
    "Event",
    "EventFormatError",
    "KeyLookup",
    "add_signature",
    "build_event",
    "check_event_format",
    "compute_content_hash",
    "compute_event_id",
    "content_hash_matches",
    "redact",
    "reference_hash",
    "server_name_of",
    "verify_event",
]

#: ``(server_name, key_id)`` → the key's 32 public bytes, or a :class:`ServerKey` that also says
#: until when the key is valid (enforced from room version 5), or None when unknown.
KeyLookup = Callable[[str, str], "bytes | ServerKey | None"]

_CREATE = "m.room.create"


class ContentHashError(SignatureError):
    """The sender's signature is good but ``hashes.sha256`` does not match.

    Per the spec the event is then not dropped: use ``redact(pdu, room_version)``
    in place of the received PDU.
    """


def _event_ids(value: Any) -> list[str]:
    """Plain event IDs from ``prev_events``/``auth_events`` of any version (v1–v2 pairs give their first item)."""
    if not isinstance(value, list):
        return []
    return [item if isinstance(item, str) else str(item[0]) for item in value]


@dataclass(frozen=True)
class Event:
    """A room event: its ID and its federation-format PDU.

    ``pdu`` is the object as hashed and signed (in v3+ without ``event_id``;
    it may carry ``unsigned``). Treat it as read-only: the ID is derived
    from it. Accessors assume the PDU passed :func:`check_event_format` for
    its room version, and read the shapes of every version.
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
    def from_pdu(cls, pdu: dict[str, Any], room_version: RoomVersion = V10) -> Event:
        """Wrap a PDU, computing its event ID for ``room_version`` (no format or signature check)."""
        return cls(compute_event_id(pdu, room_version), pdu)

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
        """The room ID; a v12 create event has none in its PDU: ``!`` + its own hash."""
        value = self.pdu.get("room_id")
        if value is None and self.pdu.get("type") == _CREATE:
            return room_id_of_create_event(self.event_id)
        return str(value)

    @property
    def content(self) -> dict[str, Any]:
        value = self.pdu.get("content")
        return value if isinstance(value, dict) else {}

    @property
    def depth(self) -> int:
        return int(self.pdu["depth"])

    @property
    def prev_events(self) -> list[str]:
        return _event_ids(self.pdu.get("prev_events"))

    @property
    def auth_events(self) -> list[str]:
        return _event_ids(self.pdu.get("auth_events"))

    @property
    def origin_server_ts(self) -> int:
        return int(self.pdu["origin_server_ts"])

    @property
    def redacts(self) -> str | None:
        """The event an ``m.room.redaction`` redacts: ``content.redacts`` (v11+), else top-level ``redacts``.

        Read without the room version: a v1–v10 redaction names its target
        at the top level and a v11+ one in its content, and a PDU that
        carries both with different values is crafted; the content wins
        then (it is what v11+ means, and the target's server or power
        level is checked before a redaction is applied either way).
        """
        if self.pdu.get("type") == "m.room.redaction":
            value = self.content.get("redacts")
            if isinstance(value, str):
                return value
        value = self.pdu.get("redacts")
        return value if isinstance(value, str) else None

    def to_client(self, unsigned: dict[str, Any] | None = None) -> dict[str, Any]:
        """Return the client-server API form of this event.

        Keys: ``event_id``, ``type``, ``content``, ``sender``,
        ``origin_server_ts``, ``room_id``; ``state_key`` for state events;
        ``redacts`` when present; ``unsigned`` when given and non-empty.
        ``content`` and ``unsigned`` are shared, not copied, except that a
        redaction's content gets ``redacts`` too (v11 asks servers to serve
        it in both places whatever the room version).
        """
        content = self.content
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "type": self.type,
            "content": content,
            "sender": self.sender,
            "origin_server_ts": self.origin_server_ts,
            "room_id": self.room_id,
        }
        if self.state_key is not None:
            out["state_key"] = self.state_key
        redacts = self.redacts
        if redacts is not None:
            out["redacts"] = redacts
            if self.type == "m.room.redaction" and content.get("redacts") != redacts:
                out["content"] = {**content, "redacts": redacts}
        if unsigned:
            out["unsigned"] = unsigned
        return out


# -- hashes and IDs -----------------------------------------------------------


def compute_content_hash(pdu: Mapping[str, Any]) -> str:
    """Return the unpadded base64 sha256 content hash of ``pdu``.

    Covers everything but ``unsigned``, ``signatures`` and ``hashes``.
    Numbers are encoded the room version 1–5 way (any integer, finite
    floats), which for a v6+ PDU that passes its format check is byte for
    byte the strict form. Raises :class:`CanonicalJSONError` if the PDU has
    no JSON form (NaN, non-string keys …).
    """
    body = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    return encode_base64(hashlib.sha256(encode_canonical_json(body, strict=False)).digest())


def content_hash_matches(pdu: Mapping[str, Any]) -> bool:
    """Return whether ``pdu["hashes"]["sha256"]`` is the PDU's content hash.

    ``False`` also for a missing or non-base64 hash, or a PDU with no
    JSON form; never raises.
    """
    hashes = pdu.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(claimed, str):
        return False
    try:
        body = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
        actual = hashlib.sha256(encode_canonical_json(body, strict=False)).digest()
        return decode_base64(claimed) == actual
    except ValueError:
        return False


def _reference_text(pdu: Mapping[str, Any], room_version: RoomVersion) -> bytes:
    """Canonical JSON of the redacted PDU without signatures, unsigned and age_ts: hashed for IDs, signed."""
    pruned = redacted_view(pdu, room_version)
    pruned.pop("signatures", None)
    pruned.pop("unsigned", None)  # redaction already drops both; the spec lists them
    pruned.pop("age_ts", None)
    return encode_canonical_json(pruned, strict=room_version.strict_canonical_json)


def reference_hash(pdu: Mapping[str, Any], room_version: RoomVersion) -> bytes:
    """Return the 32-byte reference hash of ``pdu`` (what v3+ event IDs encode; v1–v2 pairs carry it).

    Raises :class:`CanonicalJSONError` if the PDU has no canonical form for
    its version.
    """
    return hashlib.sha256(_reference_text(pdu, room_version)).digest()


def _encode_event_id(digest: bytes, room_version: RoomVersion) -> str:
    if room_version.event_id_format == EVENT_ID_V3:
        return "$" + encode_base64(digest)
    return "$" + encode_base64_urlsafe(digest)


def compute_event_id(pdu: Mapping[str, Any], room_version: RoomVersion) -> str:
    """Return the event ID of ``pdu`` in a room of ``room_version``.

    v1–v2: the PDU's own ``event_id`` (``ValueError`` if it has none);
    v3: ``$`` + unpadded base64 of the reference hash; v4+: the same in
    the URL-safe alphabet. Raises :class:`CanonicalJSONError` if the PDU
    has no canonical form for its version.
    """
    if room_version.events_carry_id:
        event_id = pdu.get("event_id")
        if not isinstance(event_id, str):
            raise ValueError("a room version 1-2 PDU carries its event_id, and this one has none")
        return event_id
    return _encode_event_id(reference_hash(pdu, room_version), room_version)


# -- building and verifying ---------------------------------------------------


def build_event(
    *,
    room_id: str | None,
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
    room_version: RoomVersion = V10,
    event_hashes: Mapping[str, str] | None = None,
) -> Event:
    """Build, hash and sign an event of this server in a ``room_version`` room, and compute its ID.

    ``content`` is deep-copied. The content hash goes in ``hashes.sha256``;
    the signature is made over the redacted PDU by ``server_name`` with
    ``signing_key``. ``unsigned`` (if non-empty) is stored in the PDU but is
    covered by neither.

    Per version: ``redacts`` goes to the top level before v11 and into
    ``content`` from v11; a v12 ``m.room.create`` takes ``room_id=None`` (its
    ID is derived: ``event.room_id``) and every other event its room's ID;
    v1–v2 events get a fresh ``$random:server_name`` ID and need
    ``event_hashes``, the unpadded base64 reference hash
    (:func:`reference_hash`) of every prev and auth event.

    Raises :class:`EventFormatError` if the result would not pass
    :func:`check_event_format` (e.g. over 65536 bytes, a float in
    ``content``, too many ``prev_events``) or the arguments do not fit the
    version (a room ID for a v12 create event, a missing reference hash).

    With ``sign_later`` (and no ``unsigned``) everything but the signature
    is done: the event ID, the content hash, every check (the size counted
    with a signature of the real length). ``signatures`` holds a stand-in
    and ``event.sign()`` signs (it releases the interpreter lock, so another
    thread may run it), puts the signature in the PDU and returns the PDU's
    canonical JSON. Do not let the event be seen before then.
    """
    # No `origin` key: v1-v10 tolerate one, but it is deprecated, covered by
    # nothing the receiver checks, and only costs bytes on slow links.
    try:
        content = checked_copy(content, "$.content")
    except CanonicalJSONError as err:
        raise EventFormatError(f"not canonical JSON: {err}") from None
    if redacts is not None and room_version.redacts_in_content:
        content["redacts"] = redacts
        redacts = None
    id_format = room_version.event_id_format
    event_id: str | None = None
    if id_format == EVENT_ID_V1:
        event_id = f"${secrets.token_urlsafe(12)}:{server_name}"
        prev: list[Any] = _with_hashes(prev_events, event_hashes)
        auth: list[Any] = _with_hashes(auth_events, event_hashes)
    else:
        prev, auth = list(prev_events), list(auth_events)
    pdu: dict[str, Any] = {
        "auth_events": auth,
        "content": content,
        "depth": depth,
        "origin_server_ts": origin_server_ts,
        "prev_events": prev,
        "room_id": room_id,
        "sender": sender,
        "type": type,
    }
    names_room = room_version.room_id_is_create_hash and type == _CREATE
    if room_id is None:
        if not names_room:
            raise EventFormatError("room_id is required")
        del pdu["room_id"]
    elif names_room:
        raise EventFormatError("a room version 12 create event has no room_id: the room ID is its hash")
    if event_id is not None:
        pdu["event_id"] = event_id
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
    reference = _redacted_text(hashed, pdu, room_version)
    if event_id is None:
        digest = hashlib.sha256(reference).digest()
        event_id = "$" + (encode_base64(digest) if id_format == EVENT_ID_V3 else encode_base64_urlsafe(digest))
    marker = b',"state_key":' if "state_key" in pdu else b',"type":'

    def sign() -> bytes:
        signature = encode_base64(signing_key.sign(reference))
        pdu["signatures"] = {server_name: {signing_key.key_id: signature}}
        return _insert(hashed, marker, _signatures_member(server_name, signing_key.key_id, signature))

    if sign_later and not unsigned:
        # Checked with a stand-in of the signature's exact length; sign() puts the real one in.
        pdu["signatures"] = {server_name: {signing_key.key_id: _SIGNATURE_STAND_IN}}
        stand_in = _signatures_member(server_name, signing_key.key_id, _SIGNATURE_STAND_IN)
        check_event_format(pdu, room_version, values_checked=True, encoded=_insert(hashed, marker, stand_in))
        return Event(event_id, pdu, sign=sign)
    encoded = sign()
    if unsigned:
        pdu["unsigned"] = copy.deepcopy(unsigned)
        encoded = check_event_format(pdu, room_version)  # unsigned was not part of the hashed, checked body
    else:
        check_event_format(pdu, room_version, values_checked=True, encoded=encoded)
    return Event(event_id, pdu, encoded)


def _with_hashes(event_ids: list[str], event_hashes: Mapping[str, str] | None) -> list[list[Any]]:
    """v1-v2 ``[event_id, {"sha256": reference hash}]`` pairs."""
    pairs: list[list[Any]] = []
    for event_id in event_ids:
        digest = event_hashes.get(event_id) if event_hashes is not None else None
        if not isinstance(digest, str):
            raise EventFormatError(f"room versions 1-2 need the reference hash of {event_id[:80]}")
        pairs.append([event_id, {"sha256": digest}])
    return pairs


_SIGNATURE_STAND_IN = "A" * 86  # an Ed25519 signature is 64 bytes: 86 characters of unpadded base64


# build_event makes the canonical JSON of the whole PDU and of its redacted form
# from that of the hashed body, instead of encoding the content three times.
# Top-level keys sort as auth_events, content, depth, [event_id,] hashes,
# origin_server_ts, prev_events, [redacts,] [room_id,] sender, signatures,
# [state_key,] type. Members before content hold event IDs (v1-v2: with
# hashes objects whose only key is "sha256") and members after it integers
# and strings, whose quotes are escaped: so the first ``,"content":`` and the
# last ``,"depth":``, ``,"origin_server_ts":``, ``,"state_key":`` and
# ``,"type":`` in the text are the top-level ones.
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
    encoded: str = encode_basestring(text)
    return encoded.encode("utf-8")


def _redacted_text(hashed: bytes, pdu: dict[str, Any], room_version: RoomVersion) -> bytes:
    """Canonical JSON of the redacted PDU, from that of the PDU with hashes and without signatures."""
    if "redacts" in pdu or not isinstance(pdu["content"], dict) or not isinstance(pdu["type"], str):
        # v1-v10 redaction drops redacts (rare: not worth splicing); a malformed PDU fails its format check later
        return encode_canonical_json(redacted_view(pdu, room_version), checked=True)
    # most events (messages, readings) keep no content: no need to build an empty dict for them
    event_type = pdu["type"]
    content = kept_content(event_type, pdu["content"], room_version) if event_type in content_keys(room_version) else {}
    start = hashed.index(b',"content":') + len(b',"content":')
    end = hashed.rindex(b',"depth":')
    return hashed[:start] + (encode_canonical_json(content, checked=True) if content else b"{}") + hashed[end:]


def add_signature(
    pdu: dict[str, Any], server_name: str, signing_key: SigningKey, room_version: RoomVersion
) -> dict[str, Any]:
    """Return a copy of ``pdu`` that also carries ``server_name``'s signature.

    Used by a resident server to co-sign a restricted join it authorised
    (``join_authorised_via_users_server``). The event ID does not change.
    Raises :class:`CanonicalJSONError` if the PDU has no canonical form.
    """
    signed = sign_json(redact(pdu, room_version), server_name, signing_key)
    out = dict(pdu)
    out["signatures"] = signed["signatures"]
    return out


def _check_server_signature(
    signatures: Any, data: bytes, server: str, key_lookup: KeyLookup, valid_at: int | None
) -> None:
    server_sigs = signatures.get(server) if isinstance(signatures, dict) else None
    if not isinstance(server_sigs, dict):
        raise SignatureError(f"event is not signed by {server}")
    checked = False
    for key_id, encoded in server_sigs.items():
        if not key_id.startswith("ed25519:"):
            continue  # algorithms we do not know are ignored, per the spec
        found = key_lookup(server, key_id)
        if isinstance(found, ServerKey):
            if valid_at is not None and found.valid_until_ts is not None and found.valid_until_ts < valid_at:
                continue  # v5+: a key that expired before the event was made counts as unknown
            found = found.key
        if found is None:
            continue
        try:
            signature = decode_base64(encoded) if isinstance(encoded, str) else b""
        except ValueError:
            signature = b""
        if not verify_ed25519(found, data, signature):
            raise SignatureError(f"signature by {server} with {key_id} does not verify")
        checked = True
    if not checked:
        raise SignatureError(f"no known, valid ed25519 key of {server} signed the event")


def verify_event(pdu: dict[str, Any], room_version: RoomVersion, key_lookup: KeyLookup) -> None:
    """Check the signatures and the content hash of a received PDU of a ``room_version`` room.

    Signatures are checked on the redacted PDU. These servers must each
    have signed with at least one ed25519 key that ``key_lookup(server_name,
    key_id)`` knows, and every signature of theirs made with a known key
    must verify:

    * the sender's server;
    * v1–v2: the server of the ``event_id``;
    * v8+: for an ``m.room.member`` event whose content names
      ``join_authorised_via_users_server``, that user's server (auth rule
      4.2; the check lives here because it needs keys).

    From v5 a key the lookup gives as a :class:`ServerKey` whose
    ``valid_until_ts`` is before the event's ``origin_server_ts`` counts as
    unknown (the caller caps ``valid_until_ts`` at 7 days after it fetched
    the key, as the spec asks). Unknown key IDs are skipped.

    Raises :class:`SignatureError` if a signature is missing or wrong (drop
    the event), then :class:`ContentHashError` (a subclass) if signatures
    are good but the content hash is not (use ``redact(pdu, room_version)``
    instead). The PDU should have passed :func:`check_event_format` first.
    """
    try:
        redacted = redacted_view(pdu, room_version)
        signatures = redacted.get("signatures")
        data = encode_canonical_json(
            {k: v for k, v in redacted.items() if k not in ("signatures", "unsigned")},
            strict=room_version.strict_canonical_json,
        )
        servers = [server_name_of(str(pdu.get("sender", "")))]
        if room_version.events_carry_id:
            servers.append(server_name_of(str(pdu.get("event_id", ""))))
        content = pdu.get("content")
        if room_version.restricted and pdu.get("type") == "m.room.member" and isinstance(content, dict):
            # Which servers must sign is read from the event as sent: v8's redaction drops this key.
            via = content.get("join_authorised_via_users_server")
            if isinstance(via, str):
                servers.append(server_name_of(via))
        ts = pdu.get("origin_server_ts")
        valid_at = ts if room_version.enforce_key_validity and isinstance(ts, int) else None
        for server in dict.fromkeys(servers):
            _check_server_signature(signatures, data, server, key_lookup, valid_at)
    except SignatureError:
        raise
    except ValueError as err:  # no server name, no canonical form
        raise SignatureError(f"cannot check signatures: {err}") from None
    if not content_hash_matches(pdu):
        raise ContentHashError("content hash does not match; the event must be redacted")
