"""The compact form of stored PDUs (store/sqlite/pdu_codec.py): byte layout, dictionaries, hostile input."""

from __future__ import annotations

import json
import sqlite3

import pytest
import zstandard

from lowband.gateway.matrix.events import compute_content_hash
from lowband.gateway.store.sqlite.pdu_codec import (
    FORMAT_ZSTD,
    FORMAT_ZSTD_NO_HASH,
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


def hashed(pdu: dict[str, object]) -> dict[str, object]:
    """``pdu`` with its true content hash (PDU's is a stand-in)."""
    return {**pdu, "hashes": {"sha256": compute_content_hash(pdu)}}


def _codec_with(dict_id: int, sample: bytes) -> PduCodec:
    samples = {dict_id: sample}
    codec = PduCodec(samples.get)
    codec.adopt(dict_id, 0, sample)
    return codec


def test_layout_byte_by_byte() -> None:
    """0x01, the dictionary ID as LEB128 (300 = ac 02), one Zstandard frame made with the dictionary."""
    sample = make_sample([canonical(PDU)])  # one event: too few to train on, a raw-content dictionary
    assert sample.startswith(SEED)
    codec = _codec_with(300, sample)
    stored = codec.encode(canonical(PDU))
    assert stored[:3] == bytes([FORMAT_ZSTD, 0xAC, 0x02])
    assert stored[3:7] == bytes.fromhex("28b52ffd")  # the frame's magic number (RFC 8878)
    zdict = zstandard.ZstdCompressionDict(sample, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    assert zstandard.ZstdDecompressor(dict_data=zdict).decompress(stored[3:], max_output_size=4096) == canonical(PDU)
    assert codec.decode(stored) == PDU
    # the same event again costs a few bytes: it is all in the dictionary
    assert len(stored) < 40 < len(canonical(PDU))


def test_a_trained_dictionary() -> None:
    events = [canonical({**PDU, "depth": n, "content": {"body": f"temperature {n % 30}.{n % 7} Cel"}})
              for n in range(400)]  # fmt: skip
    sample = make_sample(events)
    assert sample[:4] == bytes.fromhex("37a430ec")  # Zstandard's dictionary magic: trained, not raw content
    codec = _codec_with(1, sample)
    fresh = canonical({**PDU, "depth": 1000, "content": {"body": "temperature 4.5 Cel"}})
    stored = codec.encode(fresh)
    assert codec.decode(stored)["depth"] == 1000 and len(stored) < len(fresh) // 4


def test_format_2_leaves_the_content_hash_out_byte_by_byte() -> None:
    """0x02, the dictionary ID, where the hash member goes (varints), then the frame of the JSON without it;
    read back, the hash is computed again and the JSON is the original byte for byte."""
    pdu = hashed(PDU)
    text = canonical(pdu)
    member = b'"hashes":{"sha256":"' + str(pdu["hashes"]["sha256"]).encode() + b'"},'  # type: ignore[index]
    at = text.index(member)
    assert at == 120  # after auth_events, content and depth: one byte as a varint (two from 128 on)
    sample = make_sample([text])
    codec = _codec_with(3, sample)
    stored = codec.encode(text)
    assert stored[:3] == bytes([FORMAT_ZSTD_NO_HASH, 0x03, 120])
    zdict = zstandard.ZstdCompressionDict(sample, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    unhashed = zstandard.ZstdDecompressor(dict_data=zdict).decompress(stored[3:], max_output_size=4096)
    assert unhashed == text.replace(member, b"")
    assert codec.decode_bytes(stored) == text and codec.decode(stored) == pdu
    # a damaged offset past the signatures (where no hash member can be) is refused, not spliced in
    with pytest.raises(PduDecodeError, match="no content hash can go back at offset 2000"):
        codec.decode(stored[:2] + bytes([0xD0, 0x0F]) + stored[3:])
    # the form with the hash is kept for an event whose hash is not its content's: format 1, nothing computed
    assert codec.encode(canonical(PDU))[0] == FORMAT_ZSTD


def test_format_2_saves_the_hash_on_a_trained_dictionary() -> None:
    events = [canonical(hashed({**PDU, "depth": n, "content": {"body": f"temperature {n % 30}.{n % 7} Cel"}}))
              for n in range(400)]  # fmt: skip
    codec = _codec_with(1, make_sample(events))
    fresh = canonical(hashed({**PDU, "depth": 1000, "content": {"body": "temperature 4.5 Cel"}}))
    stored = codec.encode(fresh)
    with_hash = bytes([FORMAT_ZSTD, 1]) + zstandard.ZstdCompressor(
        level=3, dict_data=zstandard.ZstdCompressionDict(make_sample(events)), write_checksum=False,
        write_content_size=False, write_dict_id=False).compress(fresh)  # fmt: skip
    assert stored[0] == FORMAT_ZSTD_NO_HASH and codec.decode_bytes(stored) == fresh
    assert len(stored) <= len(with_hash) - 25  # 43 base64 characters of a SHA-256 do not compress below 32 bytes


@pytest.mark.parametrize(
    "pdu",
    [
        # an encrypted attachment's own "hashes":{"sha256":...} in the content, before the top-level one
        {**PDU, "content": {"file": {"hashes": {"sha256": "abc"}, "url": "mxc://x/y"}, "msgtype": "m.file"}},
        # two signing servers, two keys of one
        {**PDU, "signatures": {"a.example": {"ed25519:1": "s" * 86, "ed25519:2": "t" * 86}, "b.example": {"ed25519:x": "u" * 86}}},
        # a state event: members after signatures
        {**PDU, "state_key": "@sensor:example.org", "type": "m.room.member", "content": {"membership": "join"}},
        # a relation's "event_id" in the content (a room version 1 or 2 event has one at the top level)
        {**PDU, "content": {"m.relates_to": {"event_id": "$x", "rel_type": "m.thread"}, "depth": 3}},
        # "signatures" and "}}" inside the content
        {**PDU, "content": {"body": '"}},"signatures":{', "signatures": {"a": {"b": "c"}}}},
    ],
)
def test_format_2_reads_back_every_shape(pdu: dict[str, object]) -> None:
    text = canonical(hashed(pdu))
    codec = _codec_with(1, make_sample([text]))
    stored = codec.encode(text)
    assert stored[0] == FORMAT_ZSTD_NO_HASH and codec.decode_bytes(stored) == text


@pytest.mark.parametrize(
    "pdu",
    [
        {**PDU, "unsigned": {"age": 5}},  # the hash does not cover unsigned: left out, the hash would differ
        {k: v for k, v in PDU.items() if k != "signatures"},  # nothing to leave out of what is hashed
        {**PDU, "hashes": {"sha256": "x" * 43, "sha512": "y"}},  # another shape of the hashes member
        {**PDU, "event_id": "$abc:example.org"},  # room versions 1 and 2: the hash is what db check can verify
    ],
)
def test_what_format_2_cannot_give_back_keeps_its_hash(pdu: dict[str, object]) -> None:
    text = canonical(pdu if "sha512" in pdu.get("hashes", {}) else hashed(pdu))  # type: ignore[operator]
    codec = _codec_with(1, make_sample([text]))
    stored = codec.encode(text)
    assert stored[0] == FORMAT_ZSTD and codec.decode_bytes(stored) == text


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
        (b"\x03abc", "unknown form 0x03"),
        (b"\x01", "truncated dictionary ID"),
        (b"\x01\xff\xff\xff\xff\xff\xff", "truncated dictionary ID"),  # a varint longer than 5 bytes
        (b"\x01\x09" + b"\x00" * 10, "dictionary 9 is missing"),
        (b"\x01\x01\xff\xfe\xfd", "damaged"),
        (b"\x01\x01\x28\xb5\x2f\xfd\x00", "damaged or truncated"),  # a frame header, nothing after
        (b"\x02\x01", "truncated hash offset"),
        (b"\x02\x01\xff\xff\xff\xff\xff\xff", "truncated hash offset"),
        (b"\x02\x01\x05\x28\xb5\x2f\xfd\x00", "damaged or truncated"),
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
    with pytest.raises(PduDecodeError, match="truncated"):
        codec.decode(stored[:-4])


def test_a_decompression_bomb_is_refused() -> None:
    """A frame that would inflate past 256 KiB (no PDU is larger than 64 KiB) is refused, not inflated."""
    sample = make_sample([canonical(PDU)])
    codec = _codec_with(1, sample)
    zdict = zstandard.ZstdCompressionDict(sample, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    bomb = zstandard.ZstdCompressor(dict_data=zdict, write_content_size=False).compress(b"{" + b" " * 10_000_000)
    with pytest.raises(PduDecodeError, match="damaged or truncated"):
        codec.decode(b"\x01\x01" + bomb)


def test_dictionaries_are_trained_committed_and_found_by_a_reader(tmp_path) -> None:
    """train() writes a dictionary from the newest events; a second connection decodes with it."""
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    codec = PduCodec(lambda i: None)
    for n in range(3):
        pdu = {**PDU, "depth": n}
        conn.execute("INSERT INTO events (stream, event_id, type, sender, depth, origin_server_ts, pdu)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (n + 1, f"$e{n}", PDU["type"], PDU["sender"], n, 0,
                      codec.encode(canonical(pdu))))  # fmt: skip
    assert codec.current is None and codec.due(0)  # a store without a dictionary wants one at once
    made = codec.train(conn, 3)
    conn.commit()
    assert made[0] == 1 and made[1] == 3
    assert made[2].startswith(SEED) and made[2].endswith(canonical({**PDU, "depth": 2}))  # newest last
    codec.adopt(*made)
    assert not codec.due(3 + 49) and codec.due(3 + 50)  # the first ones are replaced soon, later ones seldom
    stored = codec.encode(canonical({**PDU, "depth": 99}))
    assert stored[:2] == b"\x01\x01"
    conn.execute("UPDATE events SET pdu = ? WHERE stream = 3", (stored,))
    conn.commit()
    other = sqlite3.connect(path)
    (value,) = other.execute("SELECT pdu FROM events WHERE stream = 3").fetchone()
    assert reader_codec(other).decode(value)["depth"] == 99
    codec.adopt(*codec.train(conn, 300))
    assert codec.current is not None and codec.current[0] == 2
    assert not codec.due(300 + 449) and codec.due(300 + 450)
    codec.adopt(*codec.train(conn, 800))
    assert codec.current is not None and codec.current[0] == 3
    assert not codec.due(800 + 9_999) and codec.due(800 + 10_000)


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
