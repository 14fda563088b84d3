"""Tests of lowband.codecs.framing: golden vectors, COBS and CRC edges, resync."""

from __future__ import annotations

import binascii
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowband.codecs.errors import WireError
from lowband.codecs.framing import (
    MAX_PAYLOAD,
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    cobs_max_encoded_len,
    crc16_ccitt_false,
    decode_frame,
    encode_frame,
)

VECTORS = json.loads((Path(__file__).parent.parent / "data" / "framing_vectors.json").read_text())
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_cobs(data: bytes) -> bytes:
    """Byte-at-a-time COBS written independently of the module (canonical form)."""
    out = bytearray([0])
    code_at, code = 0, 1
    for i, byte in enumerate(data):
        if byte:
            out.append(byte)
            code += 1
        if byte == 0 or code == 0xFF:
            out[code_at] = code
            code = 1
            code_at = len(out)
            if byte == 0 or i + 1 < len(data):
                out.append(0)  # room for the next code byte
            else:
                code_at = -1  # full block ended the input: no empty block
    if code_at >= 0:
        out[code_at] = code
    return bytes(out)


def split_candidates(stream: bytes) -> list[bytes]:
    """Oracle for the decoder: every non-empty run between 0x00, one-shot decoded."""
    good = []
    for body in stream.split(b"\x00")[:-1]:
        if body:
            try:
                good.append(decode_frame(body + b"\x00"))
            except WireError:
                pass
    return good


# --- golden vectors -------------------------------------------------------


def test_vector_file_header() -> None:
    assert VECTORS["crc"] == "CRC-16/CCITT-FALSE"
    assert len(VECTORS["vectors"]) >= 10


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector_encodes_exactly(vec: dict) -> None:
    payload, frame = bytes.fromhex(vec["payload"]), bytes.fromhex(vec["frame"])
    assert vec["frame"] == vec["frame"].lower()
    assert encode_frame(payload) == frame
    assert encode_frame(payload, lead=True) == b"\x00" + frame


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector_decodes_back(vec: dict) -> None:
    payload, frame = bytes.fromhex(vec["payload"]), bytes.fromhex(vec["frame"])
    assert decode_frame(frame) == payload
    # Independent check of the layout: COBS of payload || CRC big-endian.
    crc = binascii.crc_hqx(payload, 0xFFFF).to_bytes(2, "big")
    assert frame == reference_cobs(payload + crc) + b"\x00"
    # Byte by byte through the stream decoder.
    dec = FrameDecoder()
    got = [p for b in frame for p in dec.feed(bytes([b]))]
    assert got == [payload]
    assert dec.frames_ok == 1 and dec.bytes_discarded == 0


def test_worked_example_from_docs() -> None:
    payload = bytes.fromhex("11220033")
    assert crc16_ccitt_false(payload) == 0x0745
    assert encode_frame(payload).hex(" ") == "03 11 22 04 33 07 45 00"


# --- CRC ------------------------------------------------------------------


def test_crc_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert crc16_ccitt_false(b"") == 0xFFFF


def test_crc_continues_over_pieces() -> None:
    assert crc16_ccitt_false(b"6789", crc16_ccitt_false(b"12345")) == 0x29B1


@FAST
@given(st.binary(max_size=300))
def test_crc_matches_binascii(data: bytes) -> None:
    assert crc16_ccitt_false(data) == binascii.crc_hqx(data, 0xFFFF)


# --- COBS -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (b"", b"\x01"),
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x00", b"\x02\x11\x01"),
        (bytes(range(1, 254)), b"\xfe" + bytes(range(1, 254))),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
        (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
        (b"\x00" + bytes(range(1, 255)), b"\x01\xff" + bytes(range(1, 255))),
        (bytes(range(1, 255)) + b"\x00", b"\xff" + bytes(range(1, 255)) + b"\x01\x01"),
    ],
)
def test_cobs_edge_cases(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


def test_cobs_decode_accepts_trailing_empty_block_after_full_block() -> None:
    # Some C encoders emit FF <254> 01; it means the same bytes.
    assert cobs_decode(b"\xff" + b"\x07" * 254 + b"\x01") == b"\x07" * 254


@pytest.mark.parametrize("bad", [b"", b"\x05\x01\x02", b"\x02\x00", b"\xff\x01"])
def test_cobs_decode_rejects(bad: bytes) -> None:
    with pytest.raises(WireError):
        cobs_decode(bad)


@FAST
@given(st.binary(max_size=800))
def test_cobs_round_trip_and_bound(data: bytes) -> None:
    enc = cobs_encode(data)
    assert b"\x00" not in enc
    assert enc == reference_cobs(data)
    assert cobs_decode(enc) == data
    assert len(enc) <= cobs_max_encoded_len(len(data))


# --- encode_frame / decode_frame -----------------------------------------


def test_encode_refuses_empty_and_oversize() -> None:
    with pytest.raises(WireError):
        encode_frame(b"")
    with pytest.raises(WireError):
        encode_frame(bytes(MAX_PAYLOAD + 1))
    assert decode_frame(encode_frame(bytes(MAX_PAYLOAD))) == bytes(MAX_PAYLOAD)


def test_overhead_is_four_bytes_up_to_252() -> None:
    for n in (1, 100, 252):
        assert len(encode_frame(b"\x5a" * n)) == n + 4
    # Beyond that a 254-byte run of non-zero bytes costs another code byte.
    assert len(encode_frame(b"\x5a" * 254)) == 254 + 5
    assert len(encode_frame(b"\x5a" * 1024)) <= 1024 + 8


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x00",
        b"\x04\x42\x89\x76",  # no delimiter
        b"\x04\x42\x89\x77\x00",  # CRC off by one bit
        b"\x09\x42\x89\x76\x00",  # COBS block longer than body
        b"\x03\x42\x89\x00",  # only 2 decoded bytes
        b"\x04\x42\x00\x76\x00",  # 0x00 inside body
    ],
)
def test_decode_frame_rejects(bad: bytes) -> None:
    with pytest.raises(WireError):
        decode_frame(bad)


def test_decode_frame_respects_max_payload() -> None:
    frame = encode_frame(b"\x01" * 20)
    assert decode_frame(frame, max_payload=20) == b"\x01" * 20
    with pytest.raises(WireError):
        decode_frame(frame, max_payload=19)


@FAST
@given(st.binary(min_size=1, max_size=MAX_PAYLOAD), st.booleans())
def test_frame_round_trip(payload: bytes, lead: bool) -> None:
    frame = encode_frame(payload, lead=lead)
    assert b"\x00" not in frame.strip(b"\x00")
    assert frame.endswith(b"\x00") and frame.startswith(b"\x00") == lead
    assert decode_frame(frame) == payload
    assert FrameDecoder().feed(frame) == [payload]


# --- FrameDecoder: counters and resync -----------------------------------


def test_decoder_buffers_across_calls() -> None:
    frame = encode_frame(b"hello")
    dec = FrameDecoder()
    assert dec.feed(frame[:3]) == []
    assert dec.buffered == 3
    assert dec.feed(frame[3:] + frame[:1]) == [b"hello"]
    assert dec.feed(frame[1:]) == [b"hello"]
    assert dec.buffered == 0


def test_decoder_ignores_empty_candidates() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00\x00" + encode_frame(b"a", lead=True) + b"\x00") == [b"a"]
    assert (dec.bytes_discarded, dec.crc_errors, dec.cobs_errors) == (0, 0, 0)


def test_decoder_counts_each_kind_of_drop() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x04\x42\x89\x77\x00") == []  # CRC
    assert (dec.crc_errors, dec.bytes_discarded) == (1, 4)
    assert dec.feed(b"\x09\x42\x00") == []  # COBS
    assert (dec.cobs_errors, dec.bytes_discarded) == (1, 6)
    assert dec.feed(b"\x03\x42\x89\x00") == []  # 2 decoded bytes
    assert (dec.short_frames, dec.bytes_discarded) == (1, 9)
    assert dec.feed(b"\x01\x00") == []  # 0 decoded bytes
    assert (dec.short_frames, dec.bytes_discarded) == (2, 10)
    assert dec.feed(encode_frame(b"ok")) == [b"ok"]
    assert dec.frames_ok == 1


def test_garbage_without_delimiter_swallows_next_frame_lead_saves_it() -> None:
    frame = encode_frame(b"payload")
    dec = FrameDecoder()
    assert dec.feed(b"\x13\x37" + frame) == []  # merged: one bad candidate
    assert dec.feed(b"\x13\x37" + encode_frame(b"payload", lead=True)) == [b"payload"]


def test_cut_frame_is_dropped_and_next_lead_frame_recovered() -> None:
    first, second = encode_frame(b"first frame"), encode_frame(b"second", lead=True)
    dec = FrameDecoder()
    assert dec.feed(first[:6] + second) == [b"second"]
    assert dec.crc_errors + dec.cobs_errors + dec.short_frames == 1


def test_oversize_candidate_is_skipped_until_delimiter() -> None:
    dec = FrameDecoder(max_payload=10)
    limit = dec.buffer_limit
    assert limit == cobs_max_encoded_len(12)
    junk = b"\x01" * (limit + 50)
    for i in range(0, len(junk), 7):
        assert dec.feed(junk[i : i + 7]) == []
        assert dec.buffered <= limit
    assert dec.oversize == 1
    assert dec.feed(b"\x00" + encode_frame(b"0123456789")) == [b"0123456789"]
    assert dec.bytes_discarded == len(junk)
    assert dec.oversize == 1


def test_decoder_drops_decoded_payload_over_max() -> None:
    dec = FrameDecoder(max_payload=4)
    assert dec.feed(encode_frame(b"12345") + encode_frame(b"1234")) == [b"1234"]
    assert dec.oversize == 1


def test_decoder_rejects_bad_limit() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_payload=0)


# --- properties over noisy streams ---------------------------------------

garbage = st.one_of(
    st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\x00", b"\x5a")),
    st.binary(min_size=1, max_size=40),
)


@st.composite
def noisy_stream(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """Garbage, cut frames and intact lead=True frames, in random order."""
    stream = bytearray()
    intact: list[bytes] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["garbage", "cut", "intact"]))
        if kind == "garbage":
            stream += draw(garbage)
        else:
            payload = draw(st.binary(min_size=1, max_size=300))
            if kind == "cut":
                # Lose at least the delimiter and the last body byte.
                frame = encode_frame(payload, lead=draw(st.booleans()))
                stream += frame[: draw(st.integers(1, len(frame) - 2))]
            else:
                stream += encode_frame(payload, lead=True)
                intact.append(payload)
    return bytes(stream), intact


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


def is_subsequence(needles: list[bytes], hay: list[bytes]) -> bool:
    it = iter(hay)
    return all(any(n == h for h in it) for n in needles)


@FAST
@given(noisy_stream(), st.lists(st.integers(1, 64), max_size=8))
def test_noisy_stream_recovers_every_intact_frame(
    case: tuple[bytes, list[bytes]], sizes: list[int]
) -> None:
    stream, intact = case
    dec = FrameDecoder()
    got = [p for chunk in chunked(stream, sizes) for p in dec.feed(chunk)]
    # Guarantee: every frame preceded by a delimiter comes out, in order.
    assert is_subsequence(intact, got)
    # Chunking never matters: the stream decoder equals the one-shot oracle,
    # which only accepts candidates with valid COBS and CRC. (Garbage could in
    # principle forge a CRC-16, so the output is not asserted to be *only*
    # the intact frames.)
    assert got == split_candidates(stream)
    assert dec.frames_ok == len(got)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=10), st.integers(1, 64))
def test_arbitrary_bytes_never_raise_and_stay_bounded(chunks: list[bytes], max_payload: int) -> None:
    dec = FrameDecoder(max_payload=max_payload)
    for chunk in chunks:
        for payload in dec.feed(chunk):
            assert 1 <= len(payload) <= max_payload
        assert dec.buffered <= dec.buffer_limit
    # Whatever came before, a lead=True frame is received.
    assert dec.feed(encode_frame(b"k", lead=True)) == [b"k"]
