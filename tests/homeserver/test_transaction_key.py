"""The idempotency key of a client send (store/txn_keys.py: transaction_key), reading the client's ID back out
of it in both the current and the older JSON form, and the 64-bit digest the store keeps of a send."""

from __future__ import annotations

import base64
import hashlib

from lowband.gateway.store.txn_keys import client_transaction_id, is_senders, mark, transaction_key, txn_digest


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
    assert client_transaction_id('["send", "!r:x", "m.room.message", 7]') is None  # not a string


def test_digest_layout() -> None:
    # docs/storage.md, "Transaction keys": the first 8 bytes of SHA-256("LEN:USER" "LEN:DEVICE" KEY), signed
    text = b"6:@a:xyz3:DEVs.AAAAAAAA.t1"
    expected = int.from_bytes(hashlib.sha256(text).digest()[:8], "big", signed=True)
    assert txn_digest("@a:xyz", "DEV", "s.AAAAAAAA.t1") == expected
    assert -(2**63) <= expected < 2**63


def test_digests_keep_user_device_and_key_apart() -> None:
    digests = {txn_digest(u, d, k) for u, d, k in [
        ("@a:x", "D", "k"), ("@a:x", "E", "k"), ("@b:x", "D", "k"), ("@a:x", "D", "l"),
        ("@a:x", "Dk", ""), ("@a:xD", "", "k"), ("", "@a:xD", "k"),
    ]}  # fmt: skip
    assert len(digests) == 7


def test_the_mark_keeps_a_clients_id_only() -> None:
    key = transaction_key("!r:x", "m.room.message", "t-9")
    sent = mark("@a:x", "DEV", key)
    assert sent.client_id == "t-9" and sent.digest == txn_digest("@a:x", "DEV", key)
    assert mark("@mq:x", "mqtt", "p.0a1b").client_id is None
    assert is_senders(sent, "@a:x", "DEV", "!r:x", "m.room.message")
    assert not is_senders(sent, "@a:x", "OTHER", "!r:x", "m.room.message")  # another device of the same user
    assert not is_senders(sent, "@b:x", "DEV", "!r:x", "m.room.message")
    assert not is_senders(sent, "@a:x", "DEV", "!s:x", "m.room.message")  # the same ID in another room
    assert not is_senders(mark("@mq:x", "mqtt", "p.0a1b"), "@mq:x", "mqtt", "!r:x", "m.room.message")
