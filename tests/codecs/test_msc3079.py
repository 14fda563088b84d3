"""MSC3079 profile: the MSC's example byte for byte, the key rules, hostile input."""

from __future__ import annotations

import pytest
from conftest import json_values, load_json
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.codecs import cbor, msc3079
from lowband.codecs.errors import WireError

VECTORS = load_json("msc3079_vectors.json")["vectors"]
HELLO_WORLD_HEX = (
    "a5026e6d2e726f6f6d2e6d65737361676503a2181b6b48656c6c6f20576f726c64181c666d2e74657874056e21666f6f3a6c6f6361"
    "6c686f7374067040616c6963653a6c6f63616c686f737409a26a626f6f6c5f76616c7565f56a6e756c6c5f76616c7565f6"
)


def test_table_is_the_msc_v1_table():
    assert len(msc3079.KEYS_V1) == 104
    assert msc3079.KEYS_V1[0] == "event_id" and msc3079.KEYS_V1[7] == "origin_server_ts"
    assert msc3079.KEYS_V1[26] == "body" and msc3079.KEYS_V1[103] == "room_alias"


def test_msc_hello_world_example_is_byte_exact():
    event = {
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": "Hello World"},
        "sender": "@alice:localhost",
        "room_id": "!foo:localhost",
        "unsigned": {"bool_value": True, "null_value": None},
    }
    assert msc3079.encode(event).hex() == HELLO_WORLD_HEX
    assert msc3079.decode(bytes.fromhex(HELLO_WORLD_HEX)) == event


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vectors(vector):
    assert msc3079.encode(vector["json"]).hex() == vector["cbor"]
    assert msc3079.decode(bytes.fromhex(vector["cbor"])) == vector["json"]


def test_string_key_wins_over_integer_key():
    data = cbor.dumps({2: "m.from.integer", "type": "m.from.string"})
    assert msc3079.decode(data) == {"type": "m.from.string"}


def test_numeric_looking_string_keys_stay_strings():
    assert msc3079.decode(cbor.dumps({"8": 1, 8: 2})) == {"8": 1, "origin_server_ts": 2}


def test_unknown_integer_key_is_an_error():
    with pytest.raises(WireError, match="105"):
        msc3079.decode(cbor.dumps({105: 1}))


def test_keys_compressed_at_every_level_but_values_untouched():
    doc = {"content": {"body": "body", "nested": [{"sender": "type"}]}}
    assert cbor.loads(msc3079.encode(doc)) == {3: {27: "body", "nested": [{6: "type"}]}}


def test_accepts_non_deterministic_cbor_from_other_encoders():
    # Keys out of order and a non-shortest integer, as a general encoder may send.
    assert msc3079.decode(bytes.fromhex("a2081903e80261")[:6] + b"\x61x") == {"origin_server_ts": 1000, "type": "x"}


@pytest.mark.parametrize(
    "hex_input",
    ["", "a1", "c0f6", "a1 18 69 01", "42 0102", "9f ff", "62 c3 28", "81" * 40 + "00"],
)
def test_bad_input_raises_wire_error(hex_input):
    with pytest.raises(WireError):
        msc3079.decode(bytes.fromhex(hex_input.replace(" ", "")))


def test_oversized_input_refused_before_decoding():
    with pytest.raises(WireError, match="exceeds"):
        msc3079.decode(b"\x60" * (msc3079.MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(WireError, match="exceeds"):
        msc3079.encode({"body": "x" * msc3079.MAX_DOCUMENT_BYTES})


@settings(max_examples=300, deadline=None)
@given(json_values())
def test_any_json_round_trips(value):
    assert msc3079.decode(msc3079.encode(value)) == value


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(msc3079.KEYS_V1) | st.text(max_size=8), json_values(10), max_size=8))
def test_events_with_table_keys_round_trip_and_shrink(event):
    encoded = msc3079.encode(event)
    assert msc3079.decode(encoded) == event
    assert len(encoded) <= len(cbor.dumps(event))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_decode_or_raise_wire_error(data):
    try:
        msc3079.decode(data)
    except WireError:
        pass
