"""Deterministic CBOR subset for devices (RFC 8949 section 4.2.1).

Runs unchanged on CPython 3.11 and MicroPython. Every decoder error is a
ValueError; nothing else escapes for any input bytes.

Encoded types: int (64-bit range), str, bytes/bytearray, list/tuple, dict
(int or str keys), True/False/None, float (finite only).

Rules, both ways:
- integers and lengths in their shortest head; definite lengths only;
- floats in the shortest of half/single/double that keeps the value exactly;
- map keys in the bytewise order of their encoded form, no duplicates;
- at most 16 nested arrays/maps (a top-level array is depth 1).

The decoder refuses anything the encoder would not produce (non-shortest
heads or floats, unsorted keys, tags, undefined and other simple values,
NaN/infinity), so decode followed by encode gives back the same bytes.
"""

import math
import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAX_DEPTH = const(16)

_UINT = const(0)
_NINT = const(1)
_BYTES = const(2)
_TEXT = const(3)
_ARRAY = const(4)
_MAP = const(5)
_TAG = const(6)
_SIMPLE = const(7)

_FALSE = const(0xF4)
_TRUE = const(0xF5)
_NULL = const(0xF6)
_F16 = const(0xF9)
_F32 = const(0xFA)
_F64 = const(0xFB)

_U64_MAX = const(0xFFFFFFFFFFFFFFFF)


# ---------------------------------------------------------------- floats


def _half_bits(x):
    """IEEE half bits of finite non-zero x, or -1 if x does not fit exactly.

    Works with float scaling only (no big ints, no struct 'e'): MicroPython
    1.29's struct 'e' packs some subnormal halves wrongly (1023 * 2**-24)
    and wraps on overflow (1e10 packs as -2.33).
    """
    sign = 0
    if x < 0:
        sign = 0x8000
        x = -x
    top = math.frexp(x)[1] - 1  # x in [2**top, 2**(top+1))
    if top > 15:
        return -1
    quantum = top - 10 if top >= -14 else -24
    s = math.ldexp(x, -quantum)  # exact: a power-of-two scaling
    m = int(s)
    if s != m:
        return -1
    if top >= -14:
        return sign | ((top + 15) << 10) | (m - 1024)
    return sign | m


def _fits_single(x):
    """True if finite non-zero x is exactly an IEEE single."""
    if x < 0:
        x = -x
    top = math.frexp(x)[1] - 1
    if top > 127:
        return False
    quantum = top - 23 if top >= -126 else -149
    s = math.ldexp(x, -quantum)
    return s == int(s)


def _float_head(x):
    """(width, half_bits) of the shortest exact encoding of float x.

    width is 2, 4 or 8 bytes; half_bits is meaningful only for width 2.
    Raises ValueError for NaN and infinities.
    """
    if x - x != 0:  # inf - inf and nan - nan are NaN
        raise ValueError("CBOR: NaN and infinity are not encodable")
    if x == 0:
        return 2, (0x8000 if struct.pack(">d", x)[0] & 0x80 else 0)
    h = _half_bits(x)
    if h >= 0:
        return 2, h
    if _fits_single(x):
        return 4, 0
    return 8, 0


def _half_value(h):
    """Float value of half bits h; ValueError for NaN/infinity."""
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 31:
        raise ValueError("CBOR: NaN or infinity")
    if exp == 0:
        v = math.ldexp(mant, -24)
    else:
        v = math.ldexp(mant + 1024, exp - 25)
    return -v if h & 0x8000 else v


# ---------------------------------------------------------------- encoding


def write_head(buf, pos, major, n):
    """Write a CBOR head (major type, argument n) into buf at pos.

    Returns the new position. Raises ValueError if n is outside 0..2**64-1
    or buf is too short. Does not allocate for n < 2**30.
    """
    if n < 0 or n > _U64_MAX:
        raise ValueError("CBOR: argument out of 64-bit range")
    mt = major << 5
    try:
        if n < 24:
            buf[pos] = mt | n
            return pos + 1
        if n < 0x100:
            buf[pos] = mt | 24
            buf[pos + 1] = n
            return pos + 2
        if n < 0x10000:
            buf[pos + 2] = 0  # bounds check before the first write
            buf[pos] = mt | 25
            struct.pack_into(">H", buf, pos + 1, n)
            return pos + 3
        if n < 0x100000000:
            buf[pos + 4] = 0
            buf[pos] = mt | 26
            struct.pack_into(">I", buf, pos + 1, n)
            return pos + 5
        buf[pos + 8] = 0
        buf[pos] = mt | 27
        struct.pack_into(">Q", buf, pos + 1, n)
        return pos + 9
    except IndexError:
        raise ValueError("CBOR: buffer too small")


def write_int(buf, pos, n):
    """Write integer n (major 0 or 1) at pos; returns the new position."""
    if n >= 0:
        return write_head(buf, pos, _UINT, n)
    return write_head(buf, pos, _NINT, -1 - n)


def _append_head(out, major, n):
    if n < 0 or n > _U64_MAX:
        raise ValueError("CBOR: integer out of 64-bit range")
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(struct.pack(">I", n))
    else:
        out.append(mt | 27)
        out.extend(struct.pack(">Q", n))


def _append_float(out, x):
    width, h = _float_head(x)
    if width == 2:
        out.append(_F16)
        out.append(h >> 8)
        out.append(h & 0xFF)
    elif width == 4:
        out.append(_F32)
        out.extend(struct.pack(">f", x))
    else:
        out.append(_F64)
        out.extend(struct.pack(">d", x))


def _encode(out, obj, depth):
    # bool before int: on CPython bool is an int subclass.
    if obj is False:
        out.append(_FALSE)
    elif obj is True:
        out.append(_TRUE)
    elif obj is None:
        out.append(_NULL)
    elif isinstance(obj, int):
        if obj >= 0:
            _append_head(out, _UINT, obj)
        else:
            _append_head(out, _NINT, -1 - obj)
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        _append_head(out, _TEXT, len(b))
        out.extend(b)
    elif isinstance(obj, (bytes, bytearray)):
        _append_head(out, _BYTES, len(obj))
        out.extend(obj)
    elif isinstance(obj, float):
        _append_float(out, obj)
    elif isinstance(obj, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise ValueError("CBOR: nesting deeper than 16")
        _append_head(out, _ARRAY, len(obj))
        for item in obj:
            _encode(out, item, depth + 1)
    elif isinstance(obj, dict):
        if depth >= MAX_DEPTH:
            raise ValueError("CBOR: nesting deeper than 16")
        pairs = []
        for k in obj:
            if k is True or k is False or not isinstance(k, (int, str)):
                raise ValueError("CBOR: map keys must be int or str")
            kb = bytearray()
            _encode(kb, k, depth + 1)
            pairs.append((bytes(kb), k))
        pairs.sort()  # encoded keys are unique, so the keys never compare
        _append_head(out, _MAP, len(pairs))
        for kb, k in pairs:
            out.extend(kb)
            _encode(out, obj[k], depth + 1)
    else:
        raise ValueError("CBOR: cannot encode this type")


def dumps(obj):
    """Deterministic CBOR encoding of obj as bytes.

    Raises ValueError for unsupported types, non-int/str map keys,
    integers outside the 64-bit range, NaN/infinity and nesting deeper
    than 16.
    """
    out = bytearray()
    _encode(out, obj, 0)
    return bytes(out)


class Writer:
    """Deterministic CBOR items written into a preallocated buffer.

    For the hot path (telemetry): no allocation for small ints and short
    strings. The caller writes maps' keys already in sorted order. Every
    writing method returns the new self.pos and raises ValueError when the buffer is full.
    """

    __slots__ = ("buf", "pos")

    def __init__(self, buf, pos=0):
        self.buf = buf
        self.pos = pos

    def reset(self, pos=0):
        self.pos = pos

    def uint(self, n):
        self.pos = write_head(self.buf, self.pos, _UINT, n)
        return self.pos

    def int(self, n):
        self.pos = write_int(self.buf, self.pos, n)
        return self.pos

    def array(self, count):
        self.pos = write_head(self.buf, self.pos, _ARRAY, count)
        return self.pos

    def map(self, count):
        self.pos = write_head(self.buf, self.pos, _MAP, count)
        return self.pos

    def _raw(self, major, data):
        n = len(data)
        end = write_head(self.buf, self.pos, major, n)
        if end + n > len(self.buf):
            raise ValueError("CBOR: buffer too small")
        self.buf[end:end + n] = data
        self.pos = end + n
        return self.pos

    def text(self, s):
        """Write a text string; pass bytes already UTF-8 to avoid encoding."""
        if isinstance(s, str):
            s = s.encode("utf-8")
        return self._raw(_TEXT, s)

    def bytes(self, b):
        return self._raw(_BYTES, b)

    def simple(self, value):
        """Write False, True or None."""
        if value is None:
            code = _NULL
        elif value is True:
            code = _TRUE
        elif value is False:
            code = _FALSE
        else:
            raise ValueError("CBOR: not a simple value")
        if self.pos >= len(self.buf):
            raise ValueError("CBOR: buffer too small")
        self.buf[self.pos] = code
        self.pos += 1
        return self.pos

    def float(self, x):
        width, h = _float_head(x)
        pos = self.pos
        if pos + 1 + width > len(self.buf):
            raise ValueError("CBOR: buffer too small")
        buf = self.buf
        if width == 2:
            buf[pos] = _F16
            buf[pos + 1] = h >> 8
            buf[pos + 2] = h & 0xFF
        elif width == 4:
            buf[pos] = _F32
            struct.pack_into(">f", buf, pos + 1, x)
        else:
            buf[pos] = _F64
            struct.pack_into(">d", buf, pos + 1, x)
        self.pos = pos + 1 + width
        return self.pos

    def item(self, obj):
        """Write any encodable object (allocates; not for the hot path)."""
        out = bytearray()
        _encode(out, obj, 0)
        return self._raw_copy(out)

    def _raw_copy(self, data):
        n = len(data)
        if self.pos + n > len(self.buf):
            raise ValueError("CBOR: buffer too small")
        self.buf[self.pos:self.pos + n] = data
        self.pos += n
        return self.pos


# ---------------------------------------------------------------- decoding


def _head(data, pos, end):
    """Read one head at pos; returns (major, argument, new_pos).

    For majors 0-6 the argument is the value (shortest form enforced). For
    major 7 it is the raw additional information; _simple reads the rest.
    """
    if pos >= end:
        raise ValueError("CBOR: truncated")
    ib = data[pos]
    major = ib >> 5
    ai = ib & 0x1F
    pos += 1
    if major == _SIMPLE:
        return major, ai, pos
    if ai < 24:
        return major, ai, pos
    if ai == 24:
        if pos + 1 > end:
            raise ValueError("CBOR: truncated")
        n = data[pos]
        if n < 24:
            raise ValueError("CBOR: non-shortest head")
        return major, n, pos + 1
    if ai == 25:
        if pos + 2 > end:
            raise ValueError("CBOR: truncated")
        n = (data[pos] << 8) | data[pos + 1]
        if n < 0x100:
            raise ValueError("CBOR: non-shortest head")
        return major, n, pos + 2
    if ai == 26:
        if pos + 4 > end:
            raise ValueError("CBOR: truncated")
        n = struct.unpack_from(">I", data, pos)[0]
        if n < 0x10000:
            raise ValueError("CBOR: non-shortest head")
        return major, n, pos + 4
    if ai == 27:
        if pos + 8 > end:
            raise ValueError("CBOR: truncated")
        n = struct.unpack_from(">Q", data, pos)[0]
        if n < 0x100000000:
            raise ValueError("CBOR: non-shortest head")
        return major, n, pos + 8
    if ai == 31:
        raise ValueError("CBOR: indefinite length")
    raise ValueError("CBOR: reserved additional information")


def _simple(data, ai, pos, end):
    if ai == 20:
        return False, pos
    if ai == 21:
        return True, pos
    if ai == 22:
        return None, pos
    if ai == 25:
        if pos + 2 > end:
            raise ValueError("CBOR: truncated")
        v = _half_value((data[pos] << 8) | data[pos + 1])
        width, pos = 2, pos + 2
    elif ai == 26:
        if pos + 4 > end:
            raise ValueError("CBOR: truncated")
        v = struct.unpack_from(">f", data, pos)[0]
        width, pos = 4, pos + 4
    elif ai == 27:
        if pos + 8 > end:
            raise ValueError("CBOR: truncated")
        v = struct.unpack_from(">d", data, pos)[0]
        width, pos = 8, pos + 8
    elif ai == 31:
        raise ValueError("CBOR: unexpected break")
    else:
        raise ValueError("CBOR: unsupported simple value")
    if _float_head(v)[0] != width:  # also refuses NaN/infinity
        raise ValueError("CBOR: non-shortest float")
    return v, pos


def _decode(data, pos, end, depth):
    major, n, pos = _head(data, pos, end)
    if major == _UINT:
        return n, pos
    if major == _NINT:
        return -1 - n, pos
    if major == _BYTES or major == _TEXT:
        if n > end - pos:
            raise ValueError("CBOR: length beyond input")
        raw = bytes(data[pos:pos + n])
        if major == _TEXT:
            try:
                raw = raw.decode("utf-8")
            except ValueError:  # UnicodeError on both runtimes
                raise ValueError("CBOR: invalid UTF-8")
        return raw, pos + n
    if major == _ARRAY:
        if depth >= MAX_DEPTH:
            raise ValueError("CBOR: nesting deeper than 16")
        if n > end - pos:
            raise ValueError("CBOR: length beyond input")
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos, end, depth + 1)
            items.append(item)
        return items, pos
    if major == _MAP:
        if depth >= MAX_DEPTH:
            raise ValueError("CBOR: nesting deeper than 16")
        if n > (end - pos) >> 1:
            raise ValueError("CBOR: length beyond input")
        result = {}
        prev = None
        for _ in range(n):
            kstart = pos
            if pos < end and (data[pos] >> 5) not in (_UINT, _NINT, _TEXT):
                raise ValueError("CBOR: map key not int or str")
            key, pos = _decode(data, pos, end, depth + 1)
            kb = bytes(data[kstart:pos])
            if prev is not None:
                if kb == prev:
                    raise ValueError("CBOR: duplicate map key")
                if kb < prev:
                    raise ValueError("CBOR: map keys not in deterministic order")
            prev = kb
            value, pos = _decode(data, pos, end, depth + 1)
            result[key] = value
        return result, pos
    if major == _TAG:
        raise ValueError("CBOR: tags are not supported")
    return _simple(data, n, pos, end)


def decode_seq(data, offset=0):
    """Decode one item of a CBOR sequence starting at offset.

    Returns (obj, new_offset). Raises ValueError for malformed, truncated,
    non-deterministic or unsupported input.
    """
    end = len(data)
    if offset < 0 or offset > end:
        raise ValueError("CBOR: offset outside input")
    return _decode(data, offset, end, 0)


def loads(data):
    """Decode exactly one CBOR item that spans all of data.

    Raises ValueError as decode_seq does, and for trailing bytes.
    """
    obj, pos = _decode(data, 0, len(data), 0)
    if pos != len(data):
        raise ValueError("CBOR: trailing bytes")
    return obj
