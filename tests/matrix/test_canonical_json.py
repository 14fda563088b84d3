"""Canonical JSON: the spec's examples, refusals, and a parse-back property."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
from conftest import json_values
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.gateway.matrix.canonical_json import (
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    CanonicalJSONError,
    checked_copy,
    encode_canonical_json,
)

# Appendices, "Canonical JSON" > "Examples": input text -> canonical output.
SPEC_EXAMPLES = [
    ("{}", "{}"),
    ('{\n    "one": 1,\n    "two": "Two"\n}', '{"one":1,"two":"Two"}'),
    ('{\n    "b": "2",\n    "a": "1"\n}', '{"a":"1","b":"2"}'),
    ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
    (
        """{
            "auth": {
                "success": true,
                "mxid": "@john.doe:example.com",
                "profile": {
                    "display_name": "John Doe",
                    "three_pids": [
                        {"medium": "email", "address": "john.doe@example.org"},
                        {"medium": "msisdn", "address": "123456789"}
                    ]
                }
            }
        }""",
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":'
        '[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},'
        '"success":true}}',
    ),
    ('{"a": "日本語"}', '{"a":"日本語"}'),
    ('{"本": 2, "日": 1}', '{"日":1,"本":2}'),
    ('{"a": "\\u65E5"}', '{"a":"日"}'),
    ('{"a": null}', '{"a":null}'),
]


@pytest.mark.parametrize("source, expected", SPEC_EXAMPLES)
def test_spec_examples(source, expected):
    assert encode_canonical_json(json.loads(source)) == expected.encode("utf-8")


def test_spec_example_negative_zero_and_exponent_as_integers():
    # The spec's last example is {"a": -0, "b": 1e10}. We refuse floats, so a
    # caller holding those values passes them as the integers they denote.
    assert encode_canonical_json({"a": -0, "b": 10**10}) == b'{"a":0,"b":10000000000}'
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(json.loads('{"a": -0, "b": 1e10}'))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\x00", '"\\u0000"'),
        ("\x08\x0c\n\r\t", '"\\b\\f\\n\\r\\t"'),
        ("\x1f", '"\\u001f"'),
        ('"\\', '"\\"\\\\"'),
        ("/", '"/"'),
        ("\x7f", '"\x7f"'),
        ("\u2028é😀", '"\u2028é😀"'),
    ],
)
def test_string_escapes_are_exactly_the_required_ones(text, expected):
    assert encode_canonical_json(text) == expected.encode("utf-8")


def test_keys_sort_by_code_point_not_utf16():
    # U+FB01 sorts before U+1F600 by code point but after it in UTF-16 units.
    assert encode_canonical_json({"😀": 1, "\ufb01": 2}) == '{"\ufb01":2,"😀":1}'.encode()


def test_integer_bounds_and_tuples():
    assert encode_canonical_json([MAX_SAFE_INTEGER, MIN_SAFE_INTEGER]) == b"[9007199254740991,-9007199254740991]"
    assert encode_canonical_json((1, True, False, None)) == b"[1,true,false,null]"


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        1.0,
        -0.0,
        float("nan"),
        float("inf"),
        {"a": [1, 2.5]},
        MAX_SAFE_INTEGER + 1,
        MIN_SAFE_INTEGER - 1,
        {"n": 2**63},
        {1: "int key"},
        {None: "null key"},
        {"s": "\ud800"},
        {"\udfff": 1},
        b"bytes",
        {1, 2},
        object(),
    ],
    ids=lambda v: type(v).__name__,
)
def test_refuses_values_outside_the_grammar(value):
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(value)


def test_deep_nesting_is_a_canonical_json_error():
    value: list = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(value)
    with pytest.raises(CanonicalJSONError):
        checked_copy(value)


@pytest.mark.parametrize("value", [1.5, {"a": [1, 2.5]}, MAX_SAFE_INTEGER + 1, {"n": 2**63}, {1: "int key"},
                                   {None: "null key"}, b"bytes", {1, 2}, object()],
                         ids=lambda v: type(v).__name__ if type(v) is object else repr(v))  # the same id in every process
def test_checked_copy_refuses_what_the_encoder_refuses_with_the_same_message(value):
    with pytest.raises(CanonicalJSONError) as encoded:
        encode_canonical_json({"x": value})
    with pytest.raises(CanonicalJSONError) as copied:
        checked_copy({"x": value})
    assert str(copied.value) == str(encoded.value)


def test_checked_copy_accepts_subclasses_as_the_encoder_does():
    class Text(str):
        pass

    value = OrderedDict([("b", (1, Text("t"))), ("a", True)])
    copy = checked_copy(value)
    assert copy == {"a": True, "b": [1, "t"]} and type(copy) is dict
    assert encode_canonical_json(copy) == encode_canonical_json(value)


_SAFE_INT = st.integers(min_value=MIN_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_VALUES = st.recursive(
    st.none() | st.booleans() | _SAFE_INT | _TEXT,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_TEXT, children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_parses_back_to_the_same_value(value):
    encoded = encode_canonical_json(value)
    assert json.loads(encoded.decode("utf-8")) == value
    # Canonical: re-encoding what was parsed gives the same bytes.
    assert encode_canonical_json(json.loads(encoded)) == encoded


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_checked_copy_is_an_equal_value_sharing_no_container(value):
    before = encode_canonical_json({"v": value})
    copy = checked_copy({"v": value})
    assert copy == {"v": value} and encode_canonical_json(copy) == before
    if isinstance(value, (dict, list)):
        assert copy["v"] is not value
        copy["v"].clear()
        assert encode_canonical_json({"v": value}) == before  # changing the copy leaves the original alone


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_TEXT, _SAFE_INT, max_size=8))
def test_key_order_does_not_matter(mapping):
    reordered = dict(reversed(list(mapping.items())))
    assert encode_canonical_json(mapping) == encode_canonical_json(reordered)


# -- room versions 1-5: numbers are not canonical ------------------------------------


@pytest.mark.parametrize("value, text", [
    ({"n": 2**63}, b'{"n":9223372036854775808}'),
    ({"n": -(2**60)}, b'{"n":-1152921504606846976}'),
    # floats as Python's repr writes them: what Synapse's canonicaljson hashed for years
    ({"level": 50.57}, b'{"level":50.57}'),
    ({"level": 1.0}, b'{"level":1.0}'),
    ({"level": 5.114698e4}, b'{"level":51146.98}'),
    ({"big": 1e16, "small": 1e-7}, b'{"big":1e+16,"small":1e-07}'),
])  # fmt: skip
def test_relaxed_encoding_keeps_numbers_as_they_came(value, text):
    assert encode_canonical_json(value, strict=False) == text
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(value)


@pytest.mark.parametrize("value", [{"x": float("nan")}, {"x": [float("inf")]}, {1: 2}, {"x": b"b"}], ids=repr)
def test_relaxed_encoding_still_refuses_what_json_cannot_hold(value):
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(value, strict=False)


def test_a_nan_let_through_unchecked_is_still_refused():
    with pytest.raises(CanonicalJSONError, match="NaN"):
        encode_canonical_json({"x": float("nan")}, strict=False, checked=True)


@settings(max_examples=200)
@given(json_values())
def test_relaxed_and_strict_agree_on_canonical_values(value):
    try:
        strict = encode_canonical_json(value)
    except CanonicalJSONError:
        return
    assert encode_canonical_json(value, strict=False) == strict
