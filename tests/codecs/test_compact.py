"""Compact profile: golden vectors, sizes, round trips, hostile input."""

from __future__ import annotations

import pytest
from conftest import json_values, load_json
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lowband.codecs import cbor, compact
from lowband.codecs.context import ContextError, parse_context
from lowband.codecs.errors import WireError

VECTORS = load_json("compact_vectors.json")["vectors"]
BY_NAME = {v["name"]: v for v in VECTORS}


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vectors_both_ways(ctx, vector):
    data = bytes.fromhex(vector["compact"])
    assert compact.encode(vector["event"], ctx, vector["ref_ts"]) == data
    assert compact.decode(data, ctx, vector["ref_ts"]) == vector["event"]
    form = compact.decode_form(data, ctx)
    assert form.kind == vector["form"]["kind"]
    assert compact.encode_form(form, ctx) == data


def test_reference_telemetry_is_at_most_12_bytes(ctx):
    vector = BY_NAME["telemetry_reference"]
    assert vector["compact"] == "11000718d71828190172"
    assert len(bytes.fromhex(vector["compact"])) <= 12
    content = vector["event"]["content"]
    assert content["body"] == "temperature 21.5 Cel, humidity 40 %RH, battery 3.70 V"
    assert [(r["n"], r["v"], r.get("scale_", 0)) for r in content[compact.SENML_KEY]] == [
        ("temperature", 215, -1), ("humidity", 40, 0), ("battery", 370, -2)]  # fmt: skip


def test_timestamps_are_deltas_from_the_reference(ctx):
    vector = BY_NAME["telemetry_backlog_second_room"]
    event = compact.decode(bytes.fromhex(vector["compact"]), ctx, vector["ref_ts"])
    assert event["origin_server_ts"] == vector["ref_ts"] - 90_000
    assert event["content"][compact.SENML_KEY][0]["bt"] == (vector["ref_ts"] - 90_000) // 1000
    later = compact.decode(bytes.fromhex(vector["compact"]), ctx, vector["ref_ts"] + 5000)
    assert later["origin_server_ts"] == vector["ref_ts"] - 85_000


def test_the_same_event_costs_more_when_it_fits_no_short_kind(ctx):
    text = BY_NAME["text_reference"]["event"]
    with_extra = dict(text, content=dict(text["content"], format="org.matrix.custom.html", formatted_body="<b>x</b>"))
    data = compact.encode(with_extra, ctx, ctx.epoch_ms)
    assert data[0] & 0x03 == compact.KIND_GENERIC
    assert compact.decode(data, ctx, ctx.epoch_ms) == with_extra


@pytest.mark.parametrize(
    ("mantissa", "scale", "text"),
    [(215, -1, "21.5"), (-45, -1, "-4.5"), (5, -2, "0.05"), (-5, -3, "-0.005"), (0, -2, "0.00"), (40, 0, "40"), (7, 2, "700"), (370, -2, "3.70")],
)
def test_format_reading_is_exact_decimal(mantissa, scale, text):
    assert compact.format_reading(mantissa, scale) == text


def test_version_mismatch_is_a_clear_context_error(ctx):
    data = bytes.fromhex(BY_NAME["telemetry_reference"]["compact"])
    other = parse_context(dict(ctx.to_json(), version=2))
    with pytest.raises(ContextError, match="message uses version 1, the context table is version 2"):
        compact.decode(data, other)
    with pytest.raises(ContextError, match="version 0"):
        compact.decode(b"\x01\x00\x01\x01", ctx)


BAD_MESSAGES = {
    "empty": "",
    "header_only_telemetry": "11",
    "reserved_kind": "13 00",
    "generic_with_room_flag": "18 01 a0",
    "room_index_out_of_range": "19 05 00 01 01",
    "sender_index_out_of_range": "15 09 00 01 01",
    "mask_zero": "11 00 00",
    "mask_unknown_channel": "11 00 08 01",
    "missing_value": "11 00 07 01 02",
    "trailing_byte": "11 00 01 01 00",
    "float_value": "11 00 01 f9 3c00",
    "text_body_not_text": "12 00 41 61",
    "negative_age": "12 20 60",
    "generic_two_items": "10 a0 a0",
    "generic_unknown_key": "10 a1 18 63 01",
    "generic_unknown_special": "10 a1 27 01",
    "generic_room_index_too_big": "10 a1 20 18 63",
    "generic_bytes": "10 41 00",
    "special_key_nested": "10 a1 00 a1 20 00",
    "age_before_1970": "12 1b 00 00 01 00 00 00 00 00 60",
    "room_index_zero_sent": "19 00 00 01 01",
    "sender_index_zero_sent": "15 00 00 01 01",
    "generic_nested_too_deep": "10" + "81" * 17 + "00",
}


@pytest.mark.parametrize("name", sorted(BAD_MESSAGES))
def test_bad_messages_raise_wire_error(ctx, name):
    with pytest.raises(WireError):
        compact.decode(bytes.fromhex(BAD_MESSAGES[name].replace(" ", "")), ctx, ctx.epoch_ms)


def test_every_truncation_of_every_vector_is_refused(ctx):
    for vector in VECTORS:
        data = bytes.fromhex(vector["compact"])
        for cut in range(len(data)):
            with pytest.raises(WireError):
                compact.decode(data[:cut], ctx, vector["ref_ts"])


def test_oversized_message_refused(ctx):
    with pytest.raises(WireError, match="exceeds"):
        compact.decode(b"\x10" + b"\x00" * compact.MAX_MESSAGE_BYTES, ctx)
    with pytest.raises(WireError, match="exceeds"):
        compact.encode({"body": "x" * compact.MAX_MESSAGE_BYTES}, ctx)


def test_string_key_wins_in_generic_form(ctx):
    data = b"\x10" + cbor.dumps({-1: 0, "room_id": "!literal:x", 2: "from key table", "body": "literal"})
    assert compact.decode(data, ctx) == {"room_id": "!literal:x", "body": "literal"}


_ROOMS = st.sampled_from(["!sensors:gw.example", "!alerts:gw.example", "!other:elsewhere"])
_SENDERS = st.sampled_from(["@dev.kitchen:gw.example", "@alice:gw.example", "@bob:elsewhere"])


@st.composite
def events(draw):
    event = draw(st.dictionaries(st.text(max_size=10), json_values(10), max_size=4))
    for key, strategy in (
        ("room_id", _ROOMS), ("sender", _SENDERS), ("type", st.sampled_from(["m.room.message", "m.reaction", "x.custom"])),
        ("origin_server_ts", st.integers(0, 1 << 50)), ("content", json_values(20)),
    ):  # fmt: skip
        if draw(st.booleans()):
            event[key] = draw(strategy | json_values(3))
    return event


def depth(value) -> int:
    """Nesting depth of arrays and maps (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(events(), st.integers(0, 1 << 50))
def test_any_event_round_trips(ctx, event, ref):
    assume(depth(event) <= compact.MAX_DEPTH)
    assert compact.decode(compact.encode(event, ctx, ref), ctx, ref) == event


@settings(max_examples=200, deadline=None)
@given(json_values())
def test_any_json_value_round_trips(ctx, value):
    assume(depth(value) <= compact.MAX_DEPTH)
    assert compact.decode(compact.encode(value, ctx), ctx) == value


def test_nesting_limit_is_the_device_limit(ctx):
    nested: list = []
    for _ in range(compact.MAX_DEPTH - 1):
        nested = [nested]
    assert depth(nested) == compact.MAX_DEPTH
    assert compact.decode(compact.encode(nested, ctx), ctx) == nested
    with pytest.raises(WireError, match="nesting"):
        compact.encode([nested], ctx)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(-(1 << 53) + 1, (1 << 53) - 1)), min_size=1, max_size=3,
             unique_by=lambda pair: pair[0]).map(sorted),
    st.integers(0, 10**6), st.integers(0, 1), st.integers(0, 1),
)  # fmt: skip
def test_any_reading_uses_the_telemetry_kind_and_round_trips(ctx, values, age, room, sender):
    ref = ctx.epoch_ms
    form = compact.CompactForm(kind=compact.KIND_TELEMETRY, room=room, sender=sender, age=age, values=values)
    event = compact.expand(form, ctx, ref)
    data = compact.encode(event, ctx, ref)
    assert data == compact.encode_form(form, ctx)
    assert data[0] & 0x03 == compact.KIND_TELEMETRY
    assert compact.decode(data, ctx, ref) == event


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=40))
def test_arbitrary_bytes_decode_or_raise_wire_error(ctx, data):
    try:
        compact.decode(bytes([0x10 | (data[0] & 0x0F)]) + data[1:] if data else data, ctx, ctx.epoch_ms)
    except WireError:
        pass
