"""parse_digits: ASCII decimal digits or None, for every number read from a request."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowband.gateway.federation.resolver import ServerNameError, parse_server_name
from lowband.gateway.matrix.numbers import parse_digits


@given(st.integers(min_value=0, max_value=10**18 - 1))
def test_ascii_digits_read_as_their_value(value):
    assert parse_digits(str(value)) == value
    assert parse_digits(str(value).zfill(18)) == value


@pytest.mark.parametrize("text", ["", "\u00b2", "\u0663", "1\u00b2", "\uff11", "+1", "-1", " 1", "1 ", "1\n", "1_000",
                                  "0x10", "1e3", "9" * 19, "9" * 5000])  # fmt: skip
def test_anything_else_is_none(text):
    assert parse_digits(text) is None


def test_the_limit_is_the_callers():
    assert parse_digits("12345", 5) == 12345 and parse_digits("123456", 5) is None


@pytest.mark.parametrize("name", ["example.org:\u00b2", "example.org:\u0663\u0663", "example.org:+80", "example.org:"])
def test_server_name_ports_are_ascii_digits(name):
    with pytest.raises(ServerNameError, match="bad port"):
        parse_server_name(name)
