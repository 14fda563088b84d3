"""MSC3079 path enums: every code of the v1 table, parameter counts, unknown codes, shorten/expand round trips."""

from __future__ import annotations

import re

import pytest

from lowband.gateway.coap.paths import PATHS_V1, PathError, expand, shorten

PARAMETER = re.compile(r"\{[A-Za-z]+\}")


def _parameters_of(template: str) -> list[str]:
    return PARAMETER.findall(template)


def test_the_table_is_the_msc_table() -> None:
    # 0-9, A-Z, a-u: 57 codes, one character each, every path under /_matrix/client
    codes = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstu"
    assert list(PATHS_V1) == list(codes)
    assert all(path.startswith("/_matrix/client/") for path in PATHS_V1.values())
    assert PATHS_V1["0"] == "/_matrix/client/versions"  # the one path without r0
    assert PATHS_V1["9"] == "/_matrix/client/r0/rooms/{roomId}/send/{eventType}/{txnId}"
    assert PATHS_V1["n"] == "/_matrix/client/r0/pushrules/"
    assert PATHS_V1["u"] == "/_matrix/client/r0/rooms/{roomId}/report/{eventId}"


@pytest.mark.parametrize("code", list(PATHS_V1))
def test_every_code_expands_with_its_parameters_in_order(code: str) -> None:
    names = _parameters_of(PATHS_V1[code])
    values = tuple(f"v{i}-{code}" for i in range(len(names)))
    full = expand((code, *values))
    rebuilt = PATHS_V1[code]
    for name, value in zip(names, values, strict=True):
        rebuilt = rebuilt.replace(name, value, 1)
    assert "/" + "/".join(full) == rebuilt
    assert shorten(full) == (code, *values)


@pytest.mark.parametrize("code", list(PATHS_V1))
def test_every_code_refuses_one_parameter_too_many_or_too_few(code: str) -> None:
    wanted = len(_parameters_of(PATHS_V1[code]))
    with pytest.raises(PathError) as too_many:
        expand((code, *["x"] * (wanted + 1)))
    assert not too_many.value.unknown
    if wanted:
        with pytest.raises(PathError) as too_few:
            expand((code, *["x"] * (wanted - 1)))
        assert not too_few.value.unknown


def test_the_msc_example() -> None:
    short = ("9", "!7mqP7DYBUOmwAweF:localhost", "m.room.message", "$.AAABeH6obLU")
    full = ("_matrix", "client", "r0", "rooms", "!7mqP7DYBUOmwAweF:localhost", "send", "m.room.message",
            "$.AAABeH6obLU")  # fmt: skip
    assert expand(short) == full
    assert shorten(full) == short


def test_pushrules_ends_with_an_empty_segment() -> None:
    assert expand(("n",)) == ("_matrix", "client", "r0", "pushrules", "")
    assert shorten(("_matrix", "client", "v3", "pushrules", "")) == ("n",)
    # without the trailing slash it is another path (GET /pushrules is not in the table)
    assert shorten(("_matrix", "client", "v3", "pushrules")) == ("_matrix", "client", "v3", "pushrules")


def test_an_empty_state_key_is_an_empty_last_parameter() -> None:
    full = expand(("8", "!r:x", "m.room.name", ""))
    assert full[-3:] == ("state", "m.room.name", "")
    assert shorten(full) == ("8", "!r:x", "m.room.name", "")


@pytest.mark.parametrize("path", [(), ("v",), ("z",), ("99",), ("sync",), ("_MATRIX", "client")])
def test_unknown_codes_are_not_found(path: tuple[str, ...]) -> None:
    with pytest.raises(PathError) as caught:
        expand(path)
    assert caught.value.unknown


def test_full_paths_pass_through() -> None:
    full = ("_matrix", "client", "v3", "rooms", "!r:x", "relations", "$e")
    assert expand(full) == full
    assert shorten(full) == full  # no template: stays the full path


def test_v3_paths_shorten_to_codes_that_name_the_same_handler() -> None:
    assert shorten(("_matrix", "client", "v3", "sync")) == ("7",)
    assert shorten(("_matrix", "client", "v3", "rooms", "!r:x", "messages")) == ("E", "!r:x")
    assert expand(("E", "!r:x")) == ("_matrix", "client", "r0", "rooms", "!r:x", "messages")
    # a version the HTTP API does not serve is not mistaken for r0
    assert shorten(("_matrix", "client", "v4", "sync")) == ("_matrix", "client", "v4", "sync")


def test_dot_segments_are_refused() -> None:
    for bad in (".", ".."):
        with pytest.raises(PathError) as caught:
            expand(("9", "!r:x", "m.room.message", bad))
        assert not caught.value.unknown
        with pytest.raises(PathError):
            expand(("_matrix", "client", bad, "sync"))


def test_shorten_leaves_non_matrix_paths_alone() -> None:
    assert shorten(()) == ()
    assert shorten(("health",)) == ("health",)
    assert shorten(("_matrix", "client", "r0", "rooms", "!r:x")) == ("_matrix", "client", "r0", "rooms", "!r:x")
