"""How a sent event remembers its transaction: the key a sender gives, and the 64-bit digest the store keeps.

A send is idempotent per ``(user, device, key)``: a client's key is
:func:`transaction_key` of its room, event type and transaction ID; an edge
(MQTT bridge, BLE, CoAP, retention summaries) uses keys of its own. The
store does not keep the triple: each event row holds :func:`txn_digest` of
it (a signed 64-bit integer under a unique index) and, for a client's send
only, the client's own transaction ID, which ``/sync`` gives back to the
sending device as ``unsigned.transaction_id``. docs/storage.md,
"Transaction keys", has the layout, byte examples and what a collision
would do.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import NamedTuple

#: the form of :func:`transaction_key` before 0.x (JSON ``["send", room, type, txn]``), still read in old rows
_LEGACY_KEY = '["send"'


class TxnMark(NamedTuple):
    """What an event row keeps of the transaction it was sent with."""

    digest: int  # txn_digest(user, device, key)
    client_id: str | None  # the client's own transaction ID (a client's send), None for an edge's key


def transaction_key(room_id: str, event_type: str, txn_id: str) -> str:
    """The idempotency key of a client send, scoped to room and event type as clients expect.

    ``s.``, 8 characters (base64url) of the SHA-256 of room ID and event type
    (48 bits: two scopes of one device meet only with the same transaction ID
    as well), ``.`` and the client's ID.
    """
    scope = hashlib.sha256(f"{room_id}\0{event_type}".encode("utf-8", "surrogatepass")).digest()[:6]
    return f"s.{base64.urlsafe_b64encode(scope).decode()}.{txn_id}"


def client_transaction_id(key: str) -> str | None:
    """The client's own transaction ID inside a key from :func:`transaction_key` (or its older JSON form), else
    None."""
    if key.startswith("s.") and len(key) >= 11 and key[10] == ".":
        return key[11:]
    if not key.startswith(_LEGACY_KEY):
        return None
    try:
        parts = json.loads(key)
    except ValueError:
        return None
    return parts[3] if isinstance(parts, list) and len(parts) == 4 and isinstance(parts[3], str) else None


def txn_digest(user_id: str, device_id: str, key: str) -> int:
    """The first 8 bytes of the SHA-256 of ``LEN:USER LEN:DEVICE KEY`` (lengths in characters, decimal), read
    as a signed big-endian integer: what fits SQLite's INTEGER and PostgreSQL's BIGINT. The lengths keep
    ``("a", "bc")`` and ``("ab", "c")`` apart."""
    text = f"{len(user_id)}:{user_id}{len(device_id)}:{device_id}{key}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big", signed=True)


def mark(user_id: str, device_id: str, key: str) -> TxnMark:
    """What the store keeps of a send with ``key`` by ``user_id``'s ``device_id``."""
    return TxnMark(txn_digest(user_id, device_id, key), client_transaction_id(key))


def is_senders(found: TxnMark, user_id: str, device_id: str, room_id: str, event_type: str) -> bool:
    """Whether the event with ``found`` was sent by a client's send of ``user_id``'s ``device_id`` (room and
    type are the event's own): what ``unsigned.transaction_id`` needs."""
    if found.client_id is None:
        return False
    return txn_digest(user_id, device_id, transaction_key(room_id, event_type, found.client_id)) == found.digest
