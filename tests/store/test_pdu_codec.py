"""The compact form of stored PDUs (store/sqlite/pdu_codec.py): byte layout, dictionaries, hostile input."""

from __future__ import annotations

import json
import sqlite3
import zlib

import pytest

from lowband.gateway.store.sqlite.pdu_codec import (
    FORMAT_DEFLATE,
    SEED,
    PduCodec,
    PduDecodeError,
    index_fields,
    make_sample,
    reader_codec,
)
from lowband.gateway.store.sqlite.schema import SCHEMA

PDU = {
    "auth_events": ["$create", "$power", "$member"],
    "content": {"body": "temperature 21.5 Cel", "msgtype": "m.notice"},
    "depth": 12,
    "hashes": {"sha256": "x" * 43},
    "origin_server_ts": 1_700_000_000_000,
    "prev_events": ["$prev"],
    "room_id": "!room:example.org",
    "sender": "@sensor:example.org",
    "signatures": {"example.org": {"ed25519:a": "s" * 86}},
    "type": "m.room.message",
}


def canonical(pdu: dict[str, object]) -> bytes:
    return json.dumps(pdu, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _codec_with(dict_id: int, sample: bytes) -> PduCodec:
    samples = {dict_id: zlib.compress(sample)}
    codec = PduCodec(samples.get)
    codec.adopt(dict_id, 0, sample)
    return codec


def test_layout_byte_by_byte() -> None:
    """0x01, the dictionary ID as LEB128 (300 = ac 02), raw DEFLATE with the dictionary preset."""
    sample = make_sample([canonical(PDU)])
    codec = _codec_with(300, sample)
    stored = codec.encode(canonical(PDU))
    assert stored[:3] == bytes([FORMAT_DEFLATE, 0xAC, 0x02])
    inflate = zlib.decompressobj(-15, sample)
    assert inflate.decompress(stored[3:]) == canonical(PDU) and inflate.eof
    assert codec.decode(stored) == PDU
    # the same event again costs a few bytes: it is all in the dictionary
    assert len(stored) < 40 < len(canonical(PDU))


def test_plain_forms_read_as_they_are() -> None:
    codec = PduCodec(lambda i: None)
    text = canonical(PDU).decode()
    assert codec.decode(text) == PDU  # TEXT: stores written before compression
    assert codec.decode(text.encode()) == PDU  # BYTEA on PostgreSQL after the upgrade
    assert codec.encode(canonical(PDU)) == canonical(PDU)  # no dictionary yet: stored as is


def test_an_event_that_does_not_shrink_is_kept_as_json() -> None:
    codec = _codec_with(1, SEED)
    tiny = b"{}"
    assert codec.encode(tiny) == tiny


@pytest.mark.parametrize(
    ("stored", "words"),
    [
        (b"", "empty"),
        (b"\x02abc", "unknown form 0x02"),
        (b"\x01", "truncated dictionary ID"),
        (b"\x01\xff\xff\xff\xff\xff\xff", "truncated dictionary ID"),  # a varint longer than 5 bytes
        (b"\x01\x09" + b"\x00" * 10, "dictionary 9 is missing"),
        (b"\x01\x01\xff\xfe\xfd", "damaged"),
        (b"{\"not json", "not JSON"),
        (b"[1, 2]", "unknown form 0x5b"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_hostile_stored_values_are_one_error(stored: bytes | str, words: str) -> None:
    codec = _codec_with(1, make_sample([canonical(PDU)]))
    with pytest.raises(PduDecodeError, match=words):
        codec.decode(stored)


def test_truncated_compressed_pdu() -> None:
    codec = _codec_with(1, make_sample([]))
    stored = codec.encode(canonical({**PDU, "content": {"body": "a fresh text " * 20}}))
    with pytest.raises(PduDecodeError, match="truncated|damaged"):
        codec.decode(stored[:-4])


def test_dictionaries_are_trained_committed_and_found_by_a_reader(tmp_path) -> None:
    """train() writes a dictionary from the newest events; a second connection decodes with it."""
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    codec = PduCodec(lambda i: None)
    for n in range(3):
        pdu = {**PDU, "depth": n}
        conn.execute("INSERT INTO events (stream, event_id, room_id, type, sender, depth, origin_server_ts, pdu)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (n + 1, f"$e{n}", PDU["room_id"], PDU["type"], PDU["sender"], n, 0,
                      codec.encode(canonical(pdu))))  # fmt: skip
    assert codec.current is None and codec.due(0)  # a store without a dictionary wants one at once
    made = codec.train(conn, 3)
    conn.commit()
    assert made[0] == 1 and made[1] == 3
    assert made[2].startswith(SEED) and made[2].endswith(canonical({**PDU, "depth": 2}))  # newest last
    codec.adopt(*made)
    assert not codec.due(3) and codec.due(3 + 200)  # the first one is replaced soon, later ones seldom
    stored = codec.encode(canonical({**PDU, "depth": 99}))
    assert stored[:2] == b"\x01\x01"
    conn.execute("UPDATE events SET pdu = ? WHERE stream = 3", (stored,))
    conn.commit()
    other = sqlite3.connect(path)
    (value,) = other.execute("SELECT pdu FROM events WHERE stream = 3").fetchone()
    assert reader_codec(other).decode(value)["depth"] == 99
    codec.adopt(*codec.train(conn, 300))
    assert codec.current is not None and codec.current[0] == 2
    assert not codec.due(300 + 9_999) and codec.due(300 + 10_000)


@pytest.mark.parametrize(
    ("kind", "state_key", "content", "expected"),
    [
        ("m.room.message", None, {"msgtype": "m.text", "body": "hi"}, {"body": "hi"}),
        # a device's reading: search never indexes its body, nothing else is read
        ("m.room.message", None, {"msgtype": "m.notice", "body": "21 Cel", "org.lowband.senml": []}, None),
        ("m.reaction", None, {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$a", "key": "+1"}},
         {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$a", "key": "+1"}}),
        ("m.room.encrypted", None, {"ciphertext": "abc", "algorithm": "x"}, None),
        ("m.room.member", "@a:x", {"membership": "join", "displayname": "A"}, {"membership": "join", "displayname": "A"}),
        ("m.room.name", "", {"name": "Kitchen"}, {"name": "Kitchen"}),
        ("m.room.message", None, "not an object", None),
    ],
)
def test_index_fields(kind: str, state_key: str | None, content: object, expected: dict[str, object] | None) -> None:
    got = index_fields(kind, state_key, content)
    assert (json.loads(got) if got is not None else None) == (None if expected is None else {"content": expected})
