"""Matrix canonical JSON (appendices, "Canonical JSON"; room versions 6+).

Everything that is hashed or signed in a room is first encoded with this
one function, so two servers that hold the same value produce the same
bytes. The rules:

* UTF-8; object keys sorted by Unicode code point; no whitespace between
  tokens;
* characters outside ASCII are written literally, never as ``\\uXXXX``;
  the only escapes are ``\\"``, ``\\\\`` and those for the control
  characters below U+0020 (``\\b \\f \\n \\r \\t`` or ``\\u00xx``, lower-case
  hex);
* numbers are integers in ``[-(2**53)+1, (2**53)-1]``; floats are refused
  even when integral (``1.0``), because a room version 6+ event may not
  carry them at all;
* keys must be strings (Python's ``json`` module would quietly turn ``1``
  into ``"1"``, which would hash a value the peer never sent);
* strings must be valid Unicode (a lone surrogate has no UTF-8 form).

``tuple`` is accepted as an array, since it is how Python code tends to
write fixed lists; any other type is refused.

Room versions 1–5 predate the number rules, and their events must still
hash and verify as their senders hashed them: ``strict=False`` accepts any
integer and finite floats, written as Python's (and so Synapse's historical
``canonicaljson``) ``repr`` writes them (``50.5``, ``1e+16``). Everything
else stays canonical.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["CanonicalJSONError", "MAX_SAFE_INTEGER", "MIN_SAFE_INTEGER", "checked_copy", "encode_canonical_json"]

MAX_SAFE_INTEGER = 2**53 - 1
MIN_SAFE_INTEGER = -(2**53) + 1

# The C encoder already writes exactly the escapes canonical JSON allows when
# ensure_ascii is off (short forms for \b \f \n \r \t, lower-case \u00xx for
# the other control characters, nothing else), so the only work left to us is
# refusing the values it would accept but the grammar does not.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    check_circular=False,
    sort_keys=True,
    separators=(",", ":"),
)


class CanonicalJSONError(ValueError):
    """A value has no canonical JSON form (float, huge int, odd key, bad string).

    The message names the offending value's path, e.g. ``content.size``,
    and never the whole input, so it is safe to log.
    """


def encode_canonical_json(value: Any, *, checked: bool = False, strict: bool = True) -> bytes:
    """Return the canonical JSON encoding of ``value`` as UTF-8 bytes.

    ``value`` is made of ``dict`` (string keys), ``list``/``tuple``, ``str``,
    ``int`` (not ``bool``-as-number: booleans encode as ``true``/``false``),
    ``bool`` and ``None``. Raises :class:`CanonicalJSONError` for floats
    (including NaN and infinities), integers outside the safe range,
    non-string keys, strings containing lone surrogates, other types, and
    values nested too deeply for the interpreter's recursion limit.

    ``checked=True`` skips the value check for data already checked by an
    earlier call (the caller vouches for it; used on the hot path that
    hashes, signs and sizes the same event several times).

    ``strict=False`` is the room version 1–5 form (see the module
    docstring): integers of any size and finite floats pass.
    """
    try:
        if not checked:
            _check(value, "$", strict)
        text = _ENCODER.encode(value)
    except RecursionError:
        raise CanonicalJSONError("value is nested too deeply") from None
    except CanonicalJSONError:
        raise
    except ValueError:  # a NaN or an infinity that a checked=True caller let through
        raise CanonicalJSONError("NaN and infinities have no JSON form") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalJSONError("string contains a lone surrogate") from None


def checked_copy(value: Any, path: str = "$") -> Any:
    """A copy of ``value`` (new dicts and lists, tuples become lists) after the checks
    :func:`encode_canonical_json` makes; raises :class:`CanonicalJSONError` like it.

    Strings are not looked at (a lone surrogate fails when encoded).
    ``path`` names ``value`` in error messages. One walk does both, so a
    caller that keeps its own copy of an object it then hashes need not
    also deep-copy it.
    """
    try:
        return _copy(value)
    except _Refused:
        pass
    except RecursionError:
        raise CanonicalJSONError("value is nested too deeply") from None
    # Something unusual (a float, a huge integer, a subclass of dict or str...):
    # the slow check names the offending path, or passes and the copy goes through JSON.
    _check(value, path, True)
    result: Any = json.loads(_ENCODER.encode(value))
    return result


class _Refused(Exception):
    pass


def _copy(value: Any) -> Any:
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is int:
        if MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
        raise _Refused
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Refused
            out[key] = _copy(item)
        return out
    if kind is list or kind is tuple:
        return [_copy(item) for item in value]
    raise _Refused  # floats, other types, and subclasses (which _check judges)


def _check(value: Any, path: str, strict: bool) -> None:
    """Raise CanonicalJSONError if ``value`` holds anything outside the grammar (``strict``: v6+ numbers)."""
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if strict and not MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalJSONError(f"{path}: integer outside [-(2**53)+1, 2**53-1]")
        return
    if isinstance(value, float):
        if strict:
            raise CanonicalJSONError(f"{path}: floats are not allowed in canonical JSON")
        if not math.isfinite(value):
            raise CanonicalJSONError(f"{path}: NaN and infinities have no JSON form")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"{path}: object key {type(key).__name__} is not a string")
            _check(item, f"{path}.{key[:40]}", strict)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", strict)
        return
    raise CanonicalJSONError(f"{path}: {type(value).__name__} has no JSON form")
