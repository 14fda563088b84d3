"""Deterministic CBOR for the JSON data model (RFC 8949).

Encoding follows the core deterministic rules of RFC 8949 §4.2.1: shortest
integer and length forms, definite lengths only, map keys sorted by the
bytewise order of their encoded form, and floats in the shortest of half,
single and double precision that keeps the value exactly.

Decoding is strict, so that decode → encode gives the same bytes and so that
hostile input costs bounded time and memory:

* only major types 0–5 and the simple values false, true, null and floats;
  tags, ``undefined``, other simple values and indefinite lengths are refused;
* non-shortest integers and lengths are refused;
* a length larger than the bytes left is refused before anything is
  allocated (every item takes at least one byte);
* map keys must be integers or text strings, each at most once;
* nesting is limited to ``max_depth`` (default :data:`MAX_DEPTH`);
* NaN and infinities are refused (JSON has no place for them).

Everything refused raises :class:`~lowband.codecs.errors.WireError`.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from lowband.codecs.errors import WireError

#: Deepest nesting of arrays and maps a decoder accepts (the top level is 1).
MAX_DEPTH = 32

_INT_MAX = (1 << 64) - 1


def _head(major: int, value: int) -> bytes:
    """The initial byte(s) of an item: major type plus shortest argument."""
    mt = major << 5
    if value < 24:
        return bytes((mt | value,))
    if value < 0x100:
        return bytes((mt | 24, value))
    if value < 0x10000:
        return bytes((mt | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((mt | 26,)) + value.to_bytes(4, "big")
    return bytes((mt | 27,)) + value.to_bytes(8, "big")


def _encode_float(value: float) -> bytes:
    if math.isnan(value) or math.isinf(value):
        raise WireError("NaN and infinity cannot be encoded")
    for fmt, head in (("e", 0xF9), ("f", 0xFA)):
        try:
            packed = struct.pack(">" + fmt, value)
        except OverflowError:
            continue
        if struct.unpack(">" + fmt, packed)[0] == value:
            return bytes((head,)) + packed
    return b"\xfb" + struct.pack(">d", value)


def encode_int(value: int) -> bytes:
    """Encode an integer in its shortest form; WireError outside 64 bits."""
    if value >= 0:
        if value > _INT_MAX:
            raise WireError("integer too large for CBOR: more than 64 bits")
        return _head(0, value)
    if -1 - value > _INT_MAX:
        raise WireError("integer too small for CBOR: more than 64 bits")
    return _head(1, -1 - value)


def dumps(obj: Any, *, max_depth: int = MAX_DEPTH) -> bytes:
    """Encode ``obj`` as deterministic CBOR.

    Accepts None, bool, int, float, str, bytes, list/tuple and dict with
    int or str keys. Raises WireError for anything else, for integers
    outside 64 bits, for NaN or infinity and for arrays and maps nested
    deeper than ``max_depth``.
    """
    out = bytearray()
    _encode(obj, out, 0, max_depth)
    return bytes(out)


def _encode(obj: Any, out: bytearray, depth: int, max_depth: int) -> None:
    if isinstance(obj, (list, tuple, dict)) and depth >= max_depth:
        raise WireError(f"nesting deeper than {max_depth} levels")
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        out += encode_int(obj)
    elif isinstance(obj, float):
        out += _encode_float(obj)
    elif isinstance(obj, str):
        try:
            raw = obj.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError("text contains a lone surrogate, not valid UTF-8") from None
        out += _head(3, len(raw))
        out += raw
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj)
        out += _head(2, len(raw))
        out += raw
    elif isinstance(obj, (list, tuple)):
        out += _head(4, len(obj))
        for item in obj:
            _encode(item, out, depth + 1, max_depth)
    elif isinstance(obj, dict):
        pairs = []
        for key, value in obj.items():
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise WireError(f"map key of type {type(key).__name__} cannot be encoded")
            pairs.append((dumps(key), value))
        pairs.sort(key=lambda pair: pair[0])
        out += _head(5, len(pairs))
        for encoded_key, value in pairs:
            out += encoded_key
            _encode(value, out, depth + 1, max_depth)
    else:
        raise WireError(f"value of type {type(obj).__name__} cannot be encoded")


class _Reader:
    """Strict decoder state over one buffer."""

    __slots__ = ("data", "pos", "max_depth", "strict")

    def __init__(self, data: bytes, pos: int, max_depth: int, strict: bool) -> None:
        self.data = data
        self.pos = pos
        self.max_depth = max_depth
        self.strict = strict

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise WireError(f"truncated CBOR: need {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def argument(self, info: int) -> int:
        if info < 24:
            return info
        if info > 27:
            if info == 31:
                raise WireError("indefinite-length CBOR items are not accepted")
            raise WireError(f"reserved CBOR additional information {info}")
        size = 1 << (info - 24)
        value = int.from_bytes(self.take(size), "big")
        smallest = (0, 24, 0x100, 0x10000, 0x100000000)[info - 23]
        if self.strict and value < smallest:
            raise WireError("non-shortest CBOR integer or length")
        return value

    def length(self, info: int, per_item: int) -> int:
        n = self.argument(info)
        if n * per_item > len(self.data) - self.pos:
            raise WireError(f"truncated CBOR: length {n} exceeds the {len(self.data) - self.pos} bytes left")
        return n

    def item(self, depth: int) -> Any:
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 0:
            return self.argument(info)
        if major == 1:
            return -1 - self.argument(info)
        if major == 2:
            return self.take(self.length(info, 1))
        if major == 3:
            raw = self.take(self.length(info, 1))
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise WireError("CBOR text string is not valid UTF-8") from None
        if major in (4, 5):
            if depth >= self.max_depth:
                raise WireError(f"nesting deeper than {self.max_depth} levels")
            if major == 4:
                return [self.item(depth + 1) for _ in range(self.length(info, 1))]
            return self.map(self.length(info, 2), depth + 1)
        if major == 6:
            raise WireError("CBOR tags are not accepted")
        return self.simple(info)

    def map(self, count: int, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        previous = b""
        for _ in range(count):
            start = self.pos
            key = self.item(depth)
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise WireError("CBOR map keys must be integers or text strings")
            if key in result:
                raise WireError(f"duplicate CBOR map key {key!r:.40}")
            encoded = self.data[start : self.pos]
            if self.strict and encoded < previous:
                raise WireError("CBOR map keys are not in deterministic order")
            previous = encoded
            result[key] = self.item(depth)
        return result

    def simple(self, info: int) -> Any:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info in (25, 26, 27):
            fmt = {25: ">e", 26: ">f", 27: ">d"}[info]
            raw = self.take(struct.calcsize(fmt))
            value: float = struct.unpack(fmt, raw)[0]
            if math.isnan(value) or math.isinf(value):
                raise WireError("NaN and infinity are not accepted")
            if self.strict and _encode_float(value)[1:] != raw:
                raise WireError("float not in its shortest exact form")
            return value
        if info == 31:
            raise WireError("unexpected CBOR break byte")
        raise WireError(f"CBOR simple value {info} is not accepted")


def loads(data: bytes, *, max_depth: int = MAX_DEPTH, strict: bool = True) -> Any:
    """Decode exactly one CBOR item that fills ``data``; WireError otherwise.

    ``strict`` (the default) also refuses encodings that are well-formed but
    not deterministic: non-shortest integers, lengths and floats, and map
    keys out of order. Pass ``strict=False`` for CBOR from general-purpose
    encoders (MSC3079 clients); duplicate keys are refused either way.
    """
    value, end = decode_item(data, 0, max_depth=max_depth, strict=strict)
    if end != len(data):
        raise WireError(f"{len(data) - end} trailing bytes after the CBOR item")
    return value


def decode_item(
    data: bytes, offset: int, *, max_depth: int = MAX_DEPTH, strict: bool = True
) -> tuple[Any, int]:
    """Decode one item of a CBOR sequence at ``offset``.

    Returns the value and the offset just after it. Raises WireError.
    """
    reader = _Reader(bytes(data), offset, max_depth, strict)
    try:
        value = reader.item(0)
    except RecursionError:  # pragma: no cover - max_depth keeps us far from it
        raise WireError("nesting too deep") from None
    return value, reader.pos
