"""Compact profile: a room event squeezed with a provisioned context table.

Runs unchanged on CPython 3.11 and MicroPython.

Message = header byte || CBOR sequence (RFC 8742).
Header: bits 7-4 context version (1-15), bit 3 ROOM flag, bit 2 SENDER
flag, bits 1-0 kind (0 generic event, 1 telemetry, 2 text, 3 reserved).
Then a room index (uint) if ROOM, a sender index (uint) if SENDER; an
absent index is 0 (the default room; the device itself). A flag is set
exactly when its index is non-zero, so a set flag with index 0 is refused.
Generic events carry no flags.
  kind 1: age (uint s), mask (uint, channels 0-31, non-zero), one signed
          int mantissa per set bit in ascending channel order;
  kind 2: age (uint s), body (text);
  kind 0: exactly one CBOR item.
Nothing may follow. Every decoding error is a ValueError.

decode() returns a 5-tuple (kind, room, sender, age, payload):
  kind 1: payload = list of (channel, mantissa) in channel order;
  kind 2: payload = body (str);
  kind 0: room = sender = 0, age = None, payload = the decoded item.
encode(version, message) turns such a tuple back into the same bytes.
"""

from . import cbor

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


KIND_EVENT = const(0)
KIND_TELEMETRY = const(1)
KIND_TEXT = const(2)
MAX_CHANNELS = const(32)

_ROOM = const(0x08)
_SENDER = const(0x04)
_KIND = const(0x03)
_HEAD_MAX = const(9)  # longest CBOR head


def _is_int(x):
    # CBOR false/true decode to bools, which CPython counts as ints.
    return isinstance(x, int) and x is not True and x is not False


def _prefix(buf, version, kind, room, sender):
    """Write header byte and indexes into buf; returns the position."""
    if not 1 <= version <= 15:
        raise ValueError("compact: context version must be 1-15")
    if room < 0 or sender < 0:
        raise ValueError("compact: room and sender indexes are unsigned")
    h = (version << 4) | kind
    if room:
        h |= _ROOM
    if sender:
        h |= _SENDER
    if len(buf) < 1:
        raise ValueError("compact: buffer too small")
    buf[0] = h
    pos = 1
    if room:
        pos = cbor.write_head(buf, pos, 0, room)
    if sender:
        pos = cbor.write_head(buf, pos, 0, sender)
    return pos


def encode_telemetry_into(buf, version, age, mask, mantissas, room=0, sender=0):
    """Write a telemetry message into buf; returns its length.

    mask has bit i set for each channel i (0-31) present; mantissas holds
    one int per set bit in ascending channel order. Allocates nothing for
    small ints (below 2**30 on a 32-bit board). Raises ValueError for a bad version, index, age,
    mask, mantissa count or range, or a buffer that is too small.
    """
    if mask <= 0 or mask >> MAX_CHANNELS:
        raise ValueError("compact: mask must select channels 0-31")
    pos = _prefix(buf, version, KIND_TELEMETRY, room, sender)
    pos = cbor.write_head(buf, pos, 0, age)
    pos = cbor.write_head(buf, pos, 0, mask)
    j = 0
    n = len(mantissas)
    for ch in range(MAX_CHANNELS):
        if (mask >> ch) & 1:
            if j >= n:
                raise ValueError("compact: fewer mantissas than mask bits")
            pos = cbor.write_int(buf, pos, mantissas[j])
            j += 1
    if j != n:
        raise ValueError("compact: more mantissas than mask bits")
    return pos


def encode_telemetry(version, age, values, room=0, sender=0):
    """Telemetry message as bytes; values is a sequence of (channel, mantissa).

    Channels may come in any order but not twice. Raises ValueError as
    encode_telemetry_into does, and for a repeated or out-of-range channel.
    """
    mask = 0
    ordered = sorted(values)
    mantissas = []
    for ch, m in ordered:
        if not 0 <= ch < MAX_CHANNELS:
            raise ValueError("compact: channel must be 0-31")
        if (mask >> ch) & 1:
            raise ValueError("compact: channel given twice")
        mask |= 1 << ch
        mantissas.append(m)
    buf = bytearray(1 + _HEAD_MAX * (4 + len(mantissas)))
    n = encode_telemetry_into(buf, version, age, mask, mantissas, room, sender)
    return bytes(buf[:n])


def encode_text_into(buf, version, age, body, room=0, sender=0):
    """Write a text message into buf; returns its length.

    body is a str or its UTF-8 bytes; with bytes nothing is allocated.
    Raises ValueError for bad fields or a buffer that is too small.
    """
    if isinstance(body, str):
        body = body.encode("utf-8")
    pos = _prefix(buf, version, KIND_TEXT, room, sender)
    pos = cbor.write_head(buf, pos, 0, age)
    n = len(body)
    pos = cbor.write_head(buf, pos, 3, n)
    if pos + n > len(buf):
        raise ValueError("compact: buffer too small")
    for i in range(n):  # a slice would allocate
        buf[pos + i] = body[i]
    return pos + n


def encode_text(version, age, body, room=0, sender=0):
    """Text message as bytes. Raises ValueError for bad fields."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    buf = bytearray(1 + _HEAD_MAX * 4 + len(raw))
    n = encode_text_into(buf, version, age, raw, room, sender)
    return bytes(buf[:n])


def encode_event(version, obj):
    """Generic event: header and one deterministic CBOR item, as bytes.

    Raises ValueError for a bad version or an object CBOR cannot encode.
    """
    head = bytearray(1)
    _prefix(head, version, KIND_EVENT, 0, 0)
    return bytes(head) + cbor.dumps(obj)


def encode(version, message):
    """Encode a (kind, room, sender, age, payload) tuple as decode gives it."""
    kind, room, sender, age, payload = message
    if kind == KIND_TELEMETRY:
        return encode_telemetry(version, age, payload, room, sender)
    if kind == KIND_TEXT:
        return encode_text(version, age, payload, room, sender)
    if kind == KIND_EVENT:
        if room or sender:
            raise ValueError("compact: generic events carry no indexes")
        return encode_event(version, payload)
    raise ValueError("compact: unknown kind")


def _uint(data, pos, what):
    value, pos = cbor.decode_seq(data, pos)
    if not _is_int(value) or value < 0:
        raise ValueError("compact: %s must be an unsigned integer" % what)
    return value, pos


def decode(data, version):
    """Decode a compact message for a device holding context `version`.

    Returns (kind, room, sender, age, payload) as described in the module
    docstring. Raises ValueError for a version mismatch (naming both), the
    reserved kind, flags on a generic event, malformed CBOR, missing or
    wrongly typed fields and trailing bytes.
    """
    end = len(data)
    if end == 0:
        raise ValueError("compact: empty message")
    h = data[0]
    got = h >> 4
    if got == 0:
        raise ValueError("compact: context version 0 is invalid")
    if got != version:
        raise ValueError(
            "compact: message uses context version %d, device has version %d"
            % (got, version)
        )
    kind = h & _KIND
    if kind == 3:
        raise ValueError("compact: reserved kind 3")
    if kind == KIND_EVENT and h & (_ROOM | _SENDER):
        raise ValueError("compact: generic event with ROOM or SENDER flag")
    pos = 1
    room = sender = 0
    if h & _ROOM:
        room, pos = _uint(data, pos, "room index")
        if room == 0:
            raise ValueError("compact: ROOM flag with the default room index")
    if h & _SENDER:
        sender, pos = _uint(data, pos, "sender index")
        if sender == 0:
            raise ValueError("compact: SENDER flag with the default sender index")
    if kind == KIND_EVENT:
        payload, pos = cbor.decode_seq(data, pos)
        age = None
    elif kind == KIND_TELEMETRY:
        age, pos = _uint(data, pos, "age")
        mask, pos = _uint(data, pos, "mask")
        if mask == 0 or mask >> MAX_CHANNELS:
            raise ValueError("compact: mask must select channels 0-31")
        payload = []
        for ch in range(MAX_CHANNELS):
            if (mask >> ch) & 1:
                m, pos = cbor.decode_seq(data, pos)
                if not _is_int(m):
                    raise ValueError("compact: mantissa must be an integer")
                payload.append((ch, m))
    else:  # KIND_TEXT
        age, pos = _uint(data, pos, "age")
        payload, pos = cbor.decode_seq(data, pos)
        if not isinstance(payload, str):
            raise ValueError("compact: body must be a text string")
    if pos != end:
        raise ValueError("compact: trailing bytes")
    return kind, room, sender, age, payload
