"""Targets for what the HTTP side decodes: canonical JSON, and query and path parameters.

``http_params`` drives the parameter parsers of ``gateway/api/http`` with
what aiohttp would hand them: the input is the raw query string of a
request target, decoded by yarl exactly as aiohttp's HTTP parser builds
``request.query``. The request object is a stand-in with the three
attributes the parsers read (``query``, ``match_info``, ``app``); its store
answers filter look-ups from a dict. A parser may return a value or raise
:class:`~lowband.gateway.matrix.errors.MatrixError` (a 4xx answer);
anything else would be a 500 with a traceback (issue 15, finding 10).
"""

from __future__ import annotations

import json
from typing import Any

from multidict import MultiDictProxy
from yarl import URL

from lowband.gateway.api.http.base import SERVICES, query_int
from lowband.gateway.api.http.client_sync import _filter_for
from lowband.gateway.api.http.federation_query import _limit
from lowband.gateway.api.http.media import _MAX_THUMBNAIL_SIDE, _dimension
from lowband.gateway.fuzz.target import ByteSource, Target, require, same
from lowband.gateway.homeserver.sync import MAX_LIMIT, EventFilter, SyncToken
from lowband.gateway.matrix.canonical_json import CanonicalJSONError, checked_copy, encode_canonical_json
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.numbers import parse_digits

# ------------------------------------------------------------------ canonical JSON


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_canonical_json(data: bytes) -> None:
    """For any JSON the gateway accepts (json.loads, NaN and infinities refused — its own
    refusals are ValueError and RecursionError) and for a value built from the bytes:
    encode_canonical_json gives bytes or CanonicalJSONError, strict and not; its output is a
    fixed point (decoding and encoding it again gives the same bytes) and, strict, decodes to
    the value itself; checked_copy gives an equal copy exactly when the strict encoding
    succeeds (strings aside: it does not look at them), else CanonicalJSONError."""
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        value = None
    else:
        _check_canonical(value)
    _check_canonical(ByteSource(data).json_value(6))


def _check_canonical(value: Any) -> None:
    strict_ok = False
    for strict in (True, False):
        try:
            out = encode_canonical_json(value, strict=strict)
        except CanonicalJSONError:
            continue
        strict_ok = strict_ok or strict
        again = json.loads(out)
        require(encode_canonical_json(again, strict=strict) == out, "canonical JSON is not a fixed point")
        if strict:
            require(same(again, value) or _has_tuple(value), "strict canonical JSON does not decode to the value")
    try:
        copy = checked_copy(value)
    except CanonicalJSONError:
        require(not strict_ok, "checked_copy refused a value that encodes")
        return
    require(same(copy, value) or _has_tuple(value), "checked_copy changed the value")
    if not strict_ok:
        try:
            encode_canonical_json(copy)
        except CanonicalJSONError:
            return  # only strings differ (a lone surrogate): checked_copy does not look at them
        require(False, "checked_copy passed a value the encoder refuses")


def _has_tuple(value: Any) -> bool:
    if isinstance(value, tuple):
        return True
    if isinstance(value, list):
        return any(_has_tuple(v) for v in value)
    if isinstance(value, dict):
        return any(_has_tuple(v) for v in value.values())
    return False


CANONICAL_JSON = Target(
    name="canonical_json",
    summary="gateway/matrix/canonical_json.py: encode_canonical_json (strict and v1-5) and checked_copy on any JSON",
    prop="bytes or CanonicalJSONError; output is a fixed point; checked_copy agrees with the encoder",
    errors=("CanonicalJSONError",),
    check=check_canonical_json,
    seeds=lambda: [
        b'{"b":[1,2,{"c":null}],"a":"\\u00e9\\n","d":true}',
        b"[1.5, 1e400, -0, 9007199254740992]",
        b'"\\ud800"',
        b"[" * 40 + b"]" * 40,
    ],
    max_len=4096,
)

# ------------------------------------------------------------------ HTTP query and path parameters

_USER = "@fuzz:example.org"
_STORED_FILTERS: dict[int, dict[str, Any]] = {1: {"room": {"timeline": {"limit": 5}}}, 7: {"types": ["m.*"]}}
_EVENTS = tuple(
    Event(f"$e{i}", {"type": t, "sender": s, "room_id": "!r:example.org", "content": {}})
    for i, (t, s) in enumerate([("m.room.message", _USER), ("m.room.member", "@x:y"), ("", ""), ("m.*[", "@[")])
)


class _Store:
    def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        return _STORED_FILTERS.get(filter_id) if user_id == _USER else None


class _Services:
    store = _Store()


class _Request:
    """The part of ``aiohttp.web.Request`` the parameter parsers read."""

    def __init__(self, query: MultiDictProxy[str], match_info: dict[str, str]) -> None:
        self.query = query
        self.match_info = match_info
        self.app = {SERVICES: _Services()}


def _expect(call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(*args)``'s value, or ``MatrixError`` (the class) if it raised one."""
    try:
        return call(*args, **kwargs)
    except MatrixError as exc:
        require(400 <= exc.status < 500, f"a parameter error answered {exc.status}")
        return MatrixError


def check_http_params(data: bytes) -> None:
    """For any query string (decoded by yarl as aiohttp does) and any path segment: every
    parser gives a value in its range or raises MatrixError with a 4xx status — sync and
    pagination tokens (and str(token) parses back to the same token), integer parameters
    (within their bounds), filters (stored ID or inline JSON; the EventFilter made from one
    judges any event), thumbnail sizes, directory limits; parse_digits accepts exactly 1 to
    max_digits ASCII digits."""
    raw = data.decode("latin-1")
    query = URL.build(path="/", query_string=raw, encoded=True).query
    segment = query.get("path", raw[:40])
    request = _Request(query, {"filter_id": segment, "user_id": _USER})

    for text in [segment, *query.values()][:8]:
        for digits in (9, 18):
            got = parse_digits(text, digits)
            wanted = int(text) if 0 < len(text) <= digits and text.isascii() and text.isdigit() else None
            require(got == wanted, f"parse_digits({text[:30]!r}, {digits}) gave {got}")
        for history in (False, True):
            token = _expect(SyncToken.parse, text, history=history)
            if token is not MatrixError:
                require(history or token.stream >= 0, "a /sync token with a negative stream")
                require(SyncToken.parse(str(token), history=history) == token, "str(token) does not parse back")

    for key, default, low, high in (("limit", 10, 1, 1000), ("timeout", 0, 0, 300_000)):
        number = _expect(query_int, request, key, default, low=low, high=high)
        require(number is MatrixError or (type(number) is int and low <= number <= high), f"{key} out of bounds")
    for key in ("width", "height"):
        side = _expect(_dimension, request, key)
        require(side is MatrixError or 0 < side <= _MAX_THUMBNAIL_SIDE, f"thumbnail {key} out of bounds")
    limit = _expect(_limit, query.get("limit"))
    require(limit is None or limit is MatrixError or (type(limit) is int and limit >= 0), "directory limit invalid")

    spec = _expect(_filter_for, request, _USER)
    if spec is not MatrixError:
        require(isinstance(spec, dict), "a filter that is not an object")
        for part in (spec, spec.get("room", {}).get("timeline") if isinstance(spec.get("room"), dict) else None):
            event_filter = EventFilter(part)
            require(1 <= event_filter.limit <= MAX_LIMIT, "filter limit out of bounds")
            for event in _EVENTS:
                require(isinstance(event_filter.allows(event), bool), "filter verdict is not a bool")
                require(isinstance(event_filter.allows_room(event.room_id), bool), "room verdict is not a bool")


def _http_seeds() -> list[bytes]:
    return [b"since=s12_3&limit=50&timeout=30000", b"since=s-5_0&filter=1&path=7",
            b"filter=%7B%22types%22%3A%5B%22m.*%22%5D%2C%22limit%22%3A3%7D&width=64&height=64",
            b"filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22not_senders%22%3A%5B%22%40x%3Ay%22%5D%7D%7D%7D",
            b"since=s%C2%B2&limit=%C2%B2&path=%D9%A3"]  # fmt: skip


HTTP_PARAMS = Target(
    name="http_params",
    summary="gateway/api/http parameter parsers: sync/pagination tokens, query_int, filters, thumbnail sizes, "
    "directory limits, parse_digits",
    prop="value in range or MatrixError (4xx); tokens round-trip; parse_digits takes ASCII digits only",
    errors=("MatrixError (4xx)",),
    check=check_http_params,
    seeds=_http_seeds,
    max_len=4096,  # past a 1,000-deep inline filter; aiohttp's request line takes 8,190 bytes
)
