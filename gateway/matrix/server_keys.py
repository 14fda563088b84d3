"""Server signing keys as published and fetched (server-server API, "Retrieving server keys").

Rules:

* a server publishes ``{"server_name", "verify_keys", "old_verify_keys",
  "valid_until_ts", "signatures"}`` at ``/_matrix/key/v2/server``, signed by
  its current key(s);
* a fetched document is accepted only if it names the server we asked
  about, every verify key is 32 bytes of unpadded base64 under an
  ``ed25519:`` ID whose version matches ``[a-zA-Z0-9_]``, and it carries a
  valid self-signature by at least one of its verify keys (every such
  signature present must verify);
* for room versions with enforced key validity (v5+), a key counts as valid
  until the lesser of ``valid_until_ts`` and seven days after we fetched it
  (the spec's cap), and an old key until its ``expired_ts``.

Pure: fetching and caching are the key ring's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lowband.gateway.matrix.signing import (
    SignatureError,
    SigningKey,
    decode_base64,
    encode_base64,
    sign_json,
    verify_json,
)

__all__ = ["KeyResponseError", "ServerKeys", "key_document", "parse_key_document", "SEVEN_DAYS_MS"]

SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000
_KEY_ID = re.compile(r"ed25519:[a-zA-Z0-9_]{1,64}")
_MAX_KEYS = 32


class KeyResponseError(ValueError):
    """A key document is malformed, about another server, or not properly self-signed."""


@dataclass(frozen=True)
class ServerKeys:
    """What one key document says: current keys, old keys and how long to trust them."""

    server_name: str
    verify_keys: dict[str, bytes]
    valid_until_ts: int
    #: key ID → (key, expired_ts)
    old_verify_keys: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    #: the document as received (notaries serve it again, with their signature added)
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def key_valid_until(self, key_id: str, fetched_ts: int) -> int | None:
        """Until when ``key_id`` may verify event signatures (ms), or None if this document does not know it."""
        if key_id in self.verify_keys:
            return min(self.valid_until_ts, fetched_ts + SEVEN_DAYS_MS)
        old = self.old_verify_keys.get(key_id)
        return old[1] if old is not None else None

    def key(self, key_id: str) -> bytes | None:
        """The public key named ``key_id`` (current or old), or None."""
        if key_id in self.verify_keys:
            return self.verify_keys[key_id]
        old = self.old_verify_keys.get(key_id)
        return old[0] if old is not None else None


def key_document(server_name: str, key: SigningKey, valid_until_ts: int,
                 old_keys: dict[str, tuple[bytes, int]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Our own ``/_matrix/key/v2/server`` answer, signed with ``key``."""
    doc: dict[str, Any] = {
        "server_name": server_name,
        "verify_keys": {key.key_id: {"key": key.public_key_base64}},
        "old_verify_keys": {
            key_id: {"key": encode_base64(public), "expired_ts": expired}
            for key_id, (public, expired) in (old_keys or {}).items()
        },
        "valid_until_ts": valid_until_ts,
    }
    return sign_json(doc, server_name, key)


def _decode_key(key_id: Any, entry: Any, where: str) -> bytes:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise KeyResponseError(f"{where}: key ID {str(key_id)[:80]!r} is not ed25519:[a-zA-Z0-9_]+")
    raw = entry.get("key") if isinstance(entry, dict) else None
    if not isinstance(raw, str):
        raise KeyResponseError(f"{where}: {key_id} has no key")
    try:
        public = decode_base64(raw)
    except ValueError:
        raise KeyResponseError(f"{where}: {key_id} is not base64") from None
    if len(public) != 32:
        raise KeyResponseError(f"{where}: {key_id} is {len(public)} bytes, not 32")
    return public


def parse_key_document(doc: Any, expected_server: str) -> ServerKeys:
    """Check a fetched key document of ``expected_server``; :class:`KeyResponseError` if unusable."""
    if not isinstance(doc, dict):
        raise KeyResponseError("key document is not a JSON object")
    if doc.get("server_name") != expected_server:
        raise KeyResponseError(f"key document is about {str(doc.get('server_name'))[:100]!r}, not {expected_server!r}")
    valid_until = doc.get("valid_until_ts")
    if not isinstance(valid_until, int) or isinstance(valid_until, bool):
        raise KeyResponseError("valid_until_ts is missing or not an integer")
    verify = doc.get("verify_keys")
    old = doc.get("old_verify_keys", {})
    if not isinstance(verify, dict) or not isinstance(old, dict):
        raise KeyResponseError("verify_keys and old_verify_keys must be objects")
    if len(verify) + len(old) > _MAX_KEYS:
        raise KeyResponseError(f"more than {_MAX_KEYS} keys")
    keys = {key_id: _decode_key(key_id, entry, "verify_keys") for key_id, entry in verify.items()}
    old_keys: dict[str, tuple[bytes, int]] = {}
    for key_id, entry in old.items():
        expired = entry.get("expired_ts") if isinstance(entry, dict) else None
        if not isinstance(expired, int) or isinstance(expired, bool):
            raise KeyResponseError(f"old_verify_keys: {key_id} has no expired_ts")
        old_keys[key_id] = (_decode_key(key_id, entry, "old_verify_keys"), expired)
    signatures = doc.get("signatures")
    own = signatures.get(expected_server) if isinstance(signatures, dict) else None
    checked = 0
    for key_id, public in keys.items():
        if isinstance(own, dict) and key_id in own:
            try:
                verify_json(doc, expected_server, key_id, public)
            except SignatureError as exc:
                raise KeyResponseError(f"self-signature: {exc}") from None
            checked += 1
    if not checked:
        raise KeyResponseError("key document is not signed by any of its verify keys")
    return ServerKeys(expected_server, keys, valid_until, old_keys, doc)
