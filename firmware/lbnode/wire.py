"""The three compact messages a node needs, in the least code: telemetry and text out, text in.

Runs unchanged on CPython 3.11 and MicroPython. Format: docs/protocol/compact.md;
lbwire.compact is the device's full codec and the reference this module
must match byte for byte (tests/firmware/test_firmware_node.py checks both on
compact_vectors.json and on random messages).

Why a subset here: lbwire.compact imports all of lbwire.cbor (floats,
maps, the generic decoder); loaded as .mpy on the unix port the two take
about 13 KB of a 64 KB heap, where this takes about 2 KB. A board that
freezes its modules can use lbwire.compact at no RAM cost.

    message = header || CBOR sequence
    header  = version << 4 | ROOM (0x08) | SENDER (0x04) | kind
    telemetry (kind 1): age, mask, one int per set bit of mask (channel order)
    text (kind 2):      age, text string

Heads are written in their shortest form, and read_text() refuses any
other (as lbwire.cbor does), so a message has exactly one encoding.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


KIND_TELEMETRY = const(1)
KIND_TEXT = const(2)
_ROOM = const(0x08)
_SENDER = const(0x04)
_LIMIT = 1 << 64


def head_into(buf, pos, major, n):
    """Write the CBOR head (major type, argument n) at pos in its shortest form; returns the next position."""
    if not 0 <= n < _LIMIT:
        raise ValueError("wire: integer out of range")
    if n < 24:
        buf[pos] = (major << 5) | n
        return pos + 1
    size = 1 if n < 0x100 else 2 if n < 0x10000 else 4 if n < 0x100000000 else 8
    buf[pos] = (major << 5) | (24 + (0, 0, 1, 0, 2, 0, 0, 0, 3)[size])
    for i in range(size):
        buf[pos + size - i] = (n >> (8 * i)) & 0xFF
    return pos + 1 + size


def telemetry_into(buf, version, age, mask, mantissas):
    """Write a telemetry message (default room, the device as sender); returns its length.

    mask: bit i set for each channel i (0-31) present; mantissas: one int
    per set bit, in channel order. Raises ValueError for a version outside
    1-15, a mask outside channels 0-31, a count that does not match, an
    integer beyond 64 bits, and IndexError for a buffer too small.
    """
    if not 1 <= version <= 15 or not 0 < mask < (1 << 32):
        raise ValueError("wire: bad version or mask")
    bits = 0
    m = mask
    while m:
        bits += m & 1
        m >>= 1
    if bits != len(mantissas):
        raise ValueError("wire: one mantissa per mask bit")
    buf[0] = (version << 4) | KIND_TELEMETRY
    pos = head_into(buf, 1, 0, age)
    pos = head_into(buf, pos, 0, mask)
    for m in mantissas:
        pos = head_into(buf, pos, 0, m) if m >= 0 else head_into(buf, pos, 1, -1 - m)
    return pos


def text_into(buf, version, body, room=0):
    """Write a text message (age 0) to the room with context index room; returns its length.

    body: UTF-8 bytes. Raises ValueError for a bad version or room index,
    IndexError for a buffer too small.
    """
    if not 1 <= version <= 15 or room < 0:
        raise ValueError("wire: bad version or room")
    buf[0] = (version << 4) | KIND_TEXT | (_ROOM if room else 0)
    pos = head_into(buf, 1, 0, room) if room else 1
    pos = head_into(buf, pos, 0, 0)
    n = len(body)
    pos = head_into(buf, pos, 3, n)
    buf[pos : pos + n] = body
    return pos + n


def _head(data, pos, major):
    # The argument of the head of the given major type at pos, and the next position.
    if pos >= len(data) or data[pos] >> 5 != major:
        raise ValueError("wire: unexpected item")
    ai = data[pos] & 0x1F
    if ai < 24:
        return ai, pos + 1
    if ai > 27:
        raise ValueError("wire: indefinite or reserved length")
    size = 1 << (ai - 24)
    if pos + 1 + size > len(data):
        raise ValueError("wire: truncated")
    n = 0
    for i in range(size):
        n = (n << 8) | data[pos + 1 + i]
    if n < (24 if size == 1 else 1 << (4 * size)):
        raise ValueError("wire: head not in its shortest form")
    return n, pos + 1 + size


def read_text(data, version):
    """The (room index, text) of a text message for context `version`.

    Raises ValueError for anything else: another version (both named),
    another kind, a set flag with index 0, malformed or non-shortest CBOR,
    invalid UTF-8, trailing bytes.
    """
    if not data:
        raise ValueError("wire: empty message")
    h = data[0]
    if h >> 4 != version:
        raise ValueError("wire: message uses context version %d, device has version %d" % (h >> 4, version))
    if h & 0x03 != KIND_TEXT:
        raise ValueError("wire: not a text message")
    pos = 1
    room = 0
    if h & _ROOM:
        room, pos = _head(data, pos, 0)
    if h & _SENDER:
        sender, pos = _head(data, pos, 0)
        room = room if sender else -1
    if room < 0 or (h & _ROOM and not room):
        raise ValueError("wire: flag set with index 0")
    _, pos = _head(data, pos, 0)  # age
    n, pos = _head(data, pos, 3)
    if pos + n != len(data):
        raise ValueError("wire: trailing or missing bytes")
    try:
        return room, str(bytes(data[pos:]), "utf-8")
    except UnicodeError:
        raise ValueError("wire: text is not UTF-8")
