"""The stored idempotency key of a client send (homeserver/sync.py: transaction_key) and reading the client's ID
back out of it, in both the current and the older JSON form."""

from __future__ import annotations

import base64
import hashlib

from lowband.gateway.homeserver.sync import client_transaction_id, transaction_key


def test_key_layout() -> None:
    key = transaction_key("!r:x", "m.room.message", "t1.2")
    scope = base64.urlsafe_b64encode(hashlib.sha256(b"!r:x\0m.room.message").digest()[:6]).decode()
    assert key == f"s.{scope}.t1.2" and len(scope) == 8
    assert client_transaction_id(key) == "t1.2"  # dots in the client's ID are its own


def test_scopes_differ_by_room_and_type() -> None:
    keys = {transaction_key(room, kind, "same") for room in ("!a:x", "!b:x") for kind in ("m.room.message", "m.x")}
    assert len(keys) == 4
    # the separator keeps ("!a:x", "b") and ("!a:xb", "") apart
    assert transaction_key("!a:x", "b", "t") != transaction_key("!a:xb", "", "t")


def test_older_json_keys_and_other_keys() -> None:
    assert client_transaction_id('["send", "!r:x", "m.room.message", "old-1"]') == "old-1"
    assert client_transaction_id('["send", "!r:x"]') is None
    assert client_transaction_id('["send", broken') is None
    assert client_transaction_id("p.0a1b2c") is None  # the MQTT bridge's keys: no client ID inside
    assert client_transaction_id("reading-7@!r:x") is None  # BLE's
    assert client_transaction_id("s.short") is None
