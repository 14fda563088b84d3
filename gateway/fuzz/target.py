"""What a fuzz target is, and the helpers the targets share. Needs no atheris.

A target's ``check(data)`` returns ``None`` for every input: the decoder
gave a value (and the value passed the checks) or raised its documented
error, which ``check`` catches. Anything else leaves ``check``: an
unexpected exception from the decoder, or :class:`PropertyViolation` when
the decoder answered but broke its contract (a round trip that differs, a
value outside its range). Both are crashes.

:class:`ByteSource` turns fuzz bytes into choices (numbers, lengths,
strings, JSON values) deterministically, so the same input always builds
the same value, under libFuzzer and in the regression-vector test alike.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ByteSource", "PropertyViolation", "Target", "require", "same"]


class PropertyViolation(AssertionError):
    """A decoder answered, but not as its contract says (the message says how)."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`PropertyViolation` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise PropertyViolation(message)


@dataclass(frozen=True)
class Target:
    """One fuzz target.

    ``check`` is the property function (see the module docstring);
    ``errors`` the documented error types it accepts from the decoder (for
    the listing and the docs; ``check`` itself does the catching);
    ``seeds`` valid inputs to start the corpus from; ``max_len`` the largest
    input libFuzzer builds. ``hidden`` targets exist for the CLI's own tests
    and are not listed.
    """

    name: str
    summary: str
    prop: str
    errors: tuple[str, ...]
    check: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    max_len: int = 4096
    hidden: bool = False


def same(a: Any, b: Any) -> bool:
    """Structural equality that also tells ``1`` from ``1.0`` and ``True``, ``0.0`` from ``-0.0``,
    and a list from a tuple is not made (both are sequences of equal items)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, float) and isinstance(b, float)):
            return False
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        if not isinstance(b, dict) or len(a) != len(b):
            return False
        return all(key in b and type(key) is type(_key_of(b, key)) and same(value, b[key]) for key, value in a.items())
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return False
        return all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _key_of(mapping: dict[Any, Any], key: Any) -> Any:
    # The key object stored in ``mapping`` that equals ``key`` (1 and True are one dict key).
    for stored in mapping:
        if stored == key and hash(stored) == hash(key):
            return stored
    return None  # pragma: no cover - only called for keys that are present


class ByteSource:
    """Deterministic choices read from fuzz bytes; past the end every read gives zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    def __bool__(self) -> bool:
        """Whether unread bytes remain."""
        return self.pos < len(self.data)

    def byte(self) -> int:
        """The next byte (0 past the end)."""
        if self.pos >= len(self.data):
            return 0
        value = self.data[self.pos]
        self.pos += 1
        return value

    def below(self, n: int) -> int:
        """A number in ``0 .. n-1`` (``n`` at least 1), from as many bytes as ``n`` needs."""
        value = 0
        span = 1
        while span < n:
            value = value << 8 | self.byte()
            span <<= 8
        return value % n

    def between(self, low: int, high: int) -> int:
        """A number in ``low .. high`` inclusive."""
        return low + self.below(high - low + 1)

    def flag(self) -> bool:
        """One bit of choice (a whole byte is read)."""
        return self.byte() & 1 == 1

    def take(self, n: int) -> bytes:
        """Up to ``n`` next bytes (fewer at the end)."""
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def blob(self, max_len: int) -> bytes:
        """A length-prefixed byte string of at most ``max_len`` bytes."""
        return self.take(self.below(max_len + 1))

    def rest(self) -> bytes:
        """Every byte not read yet."""
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def text(self, max_len: int, alphabet: str | None = None) -> str:
        """A string of at most ``max_len`` characters: from ``alphabet``, or any code point but
        weighted towards ASCII, with the occasional lone surrogate (which must stay refusable)."""
        length = self.below(max_len + 1)
        chars = []
        for _ in range(length):
            if alphabet is not None:
                chars.append(alphabet[self.below(len(alphabet))])
                continue
            kind = self.byte()
            if kind < 0xC0:
                chars.append(chr(kind & 0x7F))
            elif kind < 0xF0:
                chars.append(chr(self.between(0x80, 0xFFFF)))
            else:
                chars.append(chr(self.between(0x10000, 0x10FFFF)))
        return "".join(chars)

    def integer(self) -> int:
        """An integer, mostly small, sometimes near or past the 53- and 64-bit edges."""
        kind = self.byte() % 8
        if kind < 4:
            return self.between(-30, 300)
        if kind == 4:
            return int.from_bytes(self.take(4), "big", signed=True)
        if kind == 5:
            return (1 << 53) - 2 + self.below(4) - (self.byte() & 1) * ((1 << 54) - 4)
        if kind == 6:
            return int.from_bytes(self.take(8), "big", signed=True)
        return (1 << 64) - 2 + self.below(4) - (self.byte() & 1) * ((1 << 65) + 1)

    def real(self) -> float:
        """A finite float: small halves, exact decimals, or any finite double."""
        kind = self.byte() % 3
        if kind == 0:
            return self.between(-2000, 2000) / 4
        if kind == 1:
            return self.between(-(10**6), 10**6) / 1000
        value: float = struct.unpack(">d", self.take(8).ljust(8, b"\0"))[0]
        return value if math.isfinite(value) else 0.5

    def json_value(self, depth: int, *, floats: bool = True, keys: tuple[str, ...] = ()) -> Any:
        """A JSON value (dict, list, str, int, bool, None and, if ``floats``, float) at most ``depth``
        containers deep; object keys are drawn from ``keys`` half of the time."""
        kind = self.byte() % (8 if floats else 7)
        if depth <= 0 and kind in (5, 6):
            kind = 2
        if kind == 0:
            return None
        if kind == 1:
            return self.flag()
        if kind == 2:
            return self.integer()
        if kind in (3, 4):
            return self.text(12)
        if kind == 5:
            return [self.json_value(depth - 1, floats=floats, keys=keys) for _ in range(self.below(4))]
        if kind == 6:
            result: dict[str, Any] = {}
            for _ in range(self.below(5)):
                key = keys[self.below(len(keys))] if keys and self.flag() else self.text(8)
                result[key] = self.json_value(depth - 1, floats=floats, keys=keys)
            return result
        return self.real()
