"""Deterministic CBOR: RFC 8949 examples, strict decoding, hostile input."""

from __future__ import annotations

import cbor2
import pytest
from conftest import json_values
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.codecs import cbor
from lowband.codecs.errors import WireError

# Examples from RFC 8949 appendix A (values and their preferred encodings).
RFC_EXAMPLES = [
    (0, "00"), (23, "17"), (24, "1818"), (100, "1864"), (1000, "1903e8"), (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"), (18446744073709551615, "1bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"), (-18446744073709551616, "3bffffffffffffffff"),
    (0.0, "f90000"), (-0.0, "f98000"), (1.0, "f93c00"), (1.1, "fb3ff199999999999a"), (1.5, "f93e00"),
    (65504.0, "f97bff"), (100000.0, "fa47c35000"), (3.4028234663852886e38, "fa7f7fffff"),
    (1.0e300, "fb7e37e43c8800759c"), (5.960464477539063e-8, "f90001"), (0.00006103515625, "f90400"),
    (-4.0, "f9c400"), (-4.1, "fbc010666666666666"), (False, "f4"), (True, "f5"), (None, "f6"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ("\u00fc", "62c3bc"), ("\u6c34", "63e6b0b4"),
    (b"\x01\x02\x03\x04", "4401020304"), ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    ({}, "a0"), ({1: 2, 3: 4}, "a201020304"), ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "encoded"), RFC_EXAMPLES)
def test_rfc8949_examples(value, encoded):
    assert cbor.dumps(value).hex() == encoded
    decoded = cbor.loads(bytes.fromhex(encoded))
    assert decoded == value and type(decoded) is type(value)


def test_map_keys_sorted_bytewise_by_encoding():
    # Integers (major 0/1) sort before text (major 3); "b" (2 bytes) after 1000 (3 bytes).
    assert cbor.dumps({"b": 1, 1000: 2, -1: 3, 10: 4}).hex() == "a40a041903e8022003616201"


REFUSED = {
    "empty": "",
    "truncated_uint": "19 01",
    "truncated_text": "63 61 62",
    "truncated_map": "a1 01",
    "tag": "c1 1a 514b67b0",
    "indefinite_array": "9f 01 ff",
    "undefined": "f7",
    "simple_value": "e0",
    "break_alone": "ff",
    "reserved_info": "1c",
    "non_shortest_int": "18 17",
    "non_shortest_length": "78 01 61",
    "non_shortest_float": "fa 3f c0 00 00",
    "duplicate_key": "a2 01 02 01 03",
    "unsorted_keys": "a2 03 04 01 02",
    "bool_key": "a1 f5 01",
    "array_key": "a1 80 01",
    "invalid_utf8": "62 c3 28",
    "nan": "f9 7e 00",
    "infinity": "f9 7c 00",
    "length_beyond_input": "5b 00 00 00 01 00 00 00 00",
    "huge_array_claim": "9b 00 00 00 01 00 00 00 00 00",
    "trailing_bytes": "01 02",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_strict_decoder_refuses(name):
    with pytest.raises(WireError):
        cbor.loads(bytes.fromhex(REFUSED[name].replace(" ", "")))


def test_lenient_decoder_accepts_general_encoders_output():
    assert cbor.loads(bytes.fromhex("a203040102"), strict=False) == {3: 4, 1: 2}
    assert cbor.loads(bytes.fromhex("1817"), strict=False) == 23
    assert cbor.loads(bytes.fromhex("fa3fc00000"), strict=False) == 1.5
    with pytest.raises(WireError):
        cbor.loads(bytes.fromhex("a201020103"), strict=False)


def test_nesting_limit_both_ways():
    ok = "81" * (cbor.MAX_DEPTH - 1) + "80"
    assert cbor.loads(bytes.fromhex(ok)) is not None
    with pytest.raises(WireError, match="nesting"):
        cbor.loads(bytes.fromhex("81" * cbor.MAX_DEPTH + "80"))
    deep: list = []
    for _ in range(cbor.MAX_DEPTH):
        deep = [deep]
    with pytest.raises(WireError, match="nesting"):
        cbor.dumps(deep)
    with pytest.raises(WireError, match="nesting"):
        cbor.loads(bytes.fromhex("81" * 100000 + "00"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1 << 64, -(1 << 64) - 1, object(), {(1,): 2}, {True: 1}, "\ud800"])
def test_encoder_refuses(bad):
    with pytest.raises(WireError):
        cbor.dumps(bad)


@settings(max_examples=300, deadline=None)
@given(json_values())
def test_round_trip_and_agrees_with_cbor2(value):
    encoded = cbor.dumps(value)
    assert cbor.loads(encoded) == value
    assert cbor.dumps(cbor.loads(encoded)) == encoded
    # An independent decoder reads the same value.
    assert cbor2.loads(encoded) == value


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_wire_error(data):
    for strict in (True, False):
        try:
            cbor.loads(data, strict=strict)
        except WireError:
            pass


@settings(max_examples=300, deadline=None)
@given(json_values(), st.data())
def test_every_truncation_is_refused(value, data):
    encoded = cbor.dumps(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(WireError):
        cbor.loads(encoded[:cut])
