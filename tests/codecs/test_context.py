"""Context tables: the loader refuses every malformed file with ContextError."""

from __future__ import annotations

import json

import pytest
from conftest import DATA, json_values, load_json
from hypothesis import given, settings

from lowband.codecs.context import MAX_FILE_BYTES, ContextError, load_context, parse_context

GOOD = load_json("context_v1.json")


def test_reference_context_loads(ctx):
    assert ctx.version == 1 and ctx.rooms[0] == "!sensors:gw.example"
    assert [c.name for c in ctx.channels] == ["temperature", "humidity", "battery"]
    assert parse_context(ctx.to_json()) == ctx


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "format"),
        ({"version": 0}, "unknown context version 0"),
        ({"version": 16}, "unknown context version 16"),
        ({"version": "1"}, "unknown context version"),
        ({"version": True}, "unknown context version"),
        ({"rooms": None}, "'rooms' is missing"),
        ({"rooms": "!a:b"}, "list of strings"),
        ({"rooms": ["!a:b", "!a:b"]}, "twice"),
        ({"senders": [""]}, "non-empty"),
        ({"keys": [1]}, "non-empty strings"),
        ({"keys": ["k"] * 2}, "twice"),
        ({"keys": [f"k{i}" for i in range(1025)]}, "more than 1024"),
        ({"channels": [{"n": "t", "u": "Cel", "scale": 10}]}, "scale"),
        ({"channels": [{"n": "bad name", "u": "", "scale": 0}]}, "SenML name"),
        ({"channels": [{"n": "t", "extra": 1}]}, "'n', 'u' and 'scale'"),
        ({"channels": [{"n": "t"}, {"n": "t"}]}, "share a name"),
        ({"channels": [{"n": f"c{i}"} for i in range(33)]}, "at most 32"),
        ({"epoch_ms": -1}, "epoch_ms"),
        ({"surprise": 1}, "unknown context field"),
    ],
)
def test_malformed_tables_are_refused(change, message):
    with pytest.raises(ContextError, match=message):
        parse_context({**GOOD, **change})


def test_file_errors(tmp_path):
    with pytest.raises(ContextError, match="cannot read"):
        load_context(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ContextError, match="not valid JSON"):
        load_context(bad)
    bad.write_text("[" * 100000)
    with pytest.raises(ContextError):
        load_context(bad)
    bad.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    with pytest.raises(ContextError, match="larger than"):
        load_context(bad)
    bad.write_text(json.dumps([GOOD]))
    with pytest.raises(ContextError, match="JSON object"):
        load_context(bad)
    assert load_context(DATA / "context_v1.json").version == 1


@settings(max_examples=500, deadline=None)
@given(json_values())
def test_any_json_is_a_table_or_a_context_error(doc):
    try:
        parse_context(doc)
    except ContextError:
        pass


@settings(max_examples=300, deadline=None)
@given(json_values(8), json_values(8))
def test_hostile_field_values_never_escape_as_other_errors(value_a, value_b):
    for field in ("version", "rooms", "senders", "keys", "channels", "epoch_ms", "event_types"):
        try:
            parse_context({**GOOD, field: value_a, "channels": value_b} if field != "channels" else {**GOOD, field: value_a})
        except ContextError:
            pass
