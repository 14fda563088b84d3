"""CoAP messages (RFC 7252) with blockwise (RFC 7959) and observe (RFC 7641) option values: parse and build.

Pure code, no I/O. The constants below are the contract every CoAP module
of the gateway uses; the codec itself follows them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lowband.codecs.errors import WireError

# Message types
CON, NON, ACK, RST = 0, 1, 2, 3

# Method codes (class 0)
GET, POST, PUT, DELETE = 0x01, 0x02, 0x03, 0x04
EMPTY = 0x00
METHODS = {GET: "GET", POST: "POST", PUT: "PUT", DELETE: "DELETE"}
METHOD_CODES = {name: code for code, name in METHODS.items()}


def code(klass: int, detail: int) -> int:
    """The code byte ``c.dd``: ``code(2, 5)`` is 0x45 (2.05 Content)."""
    return klass << 5 | detail


CREATED, DELETED, VALID, CHANGED, CONTENT = code(2, 1), code(2, 2), code(2, 3), code(2, 4), code(2, 5)
CONTINUE = code(2, 31)
BAD_REQUEST, UNAUTHORIZED, BAD_OPTION, FORBIDDEN, NOT_FOUND = code(4, 0), code(4, 1), code(4, 2), code(4, 3), code(4, 4)
METHOD_NOT_ALLOWED, NOT_ACCEPTABLE, REQUEST_ENTITY_INCOMPLETE = code(4, 5), code(4, 6), code(4, 8)
CONFLICT, PRECONDITION_FAILED, REQUEST_ENTITY_TOO_LARGE = code(4, 9), code(4, 12), code(4, 13)
UNSUPPORTED_CONTENT_FORMAT, TOO_MANY_REQUESTS = code(4, 15), code(4, 29)
INTERNAL_SERVER_ERROR, NOT_IMPLEMENTED, BAD_GATEWAY = code(5, 0), code(5, 1), code(5, 2)
SERVICE_UNAVAILABLE, GATEWAY_TIMEOUT = code(5, 3), code(5, 4)

# Option numbers
OPT_IF_MATCH = 1
OPT_URI_HOST = 3
OPT_ETAG = 4
OPT_OBSERVE = 6
OPT_URI_PORT = 7
OPT_LOCATION_PATH = 8
OPT_URI_PATH = 11
OPT_CONTENT_FORMAT = 12
OPT_MAX_AGE = 14
OPT_URI_QUERY = 15
OPT_ACCEPT = 17
OPT_BLOCK2 = 23
OPT_BLOCK1 = 27
OPT_SIZE2 = 28
OPT_SIZE1 = 60
#: MSC3079: the access token (like Uri-Query: critical? no — 256 is even, so elective), sticky per connection
OPT_AUTH = 256
#: MSC3079: the CBOR integer-key table version the client wants (uint), sticky per connection
OPT_CBOR_VERSION = 257
#: Lowband: compact mode (docs/coap.md), uint profile version, sticky per connection; in the experimental
#: range (65000-65535), even so elective: a server that does not know it ignores it and answers in MSC3079
OPT_PROFILE = 65000

# Content formats
FORMAT_TEXT = 0
FORMAT_LINK = 40
FORMAT_JSON = 50
FORMAT_CBOR = 60

DEFAULT_PORT = 5683

# ---------------------------------------------------------------------------------------------- the codec
#
# RFC 7252 §3: ``Ver(2) T(2) TKL(4) | Code(8) | Message ID(16) | Token(TKL) | Options | 0xFF Payload``.
# An option is ``delta(4) length(4) [ext delta] [ext length] value``; a nibble of 13 means one more
# byte (+13), 14 two more bytes (+269), 15 is reserved (only the 0xFF payload marker may hold it).

VERSION = 1
PAYLOAD_MARKER = 0xFF
MAX_TOKEN_LEN = 8
MAX_OPTION_NUMBER = 0xFFFF
#: the longest value the two-byte length extension can say (65535 + 269)
MAX_OPTION_VALUE_LEN = 0xFFFF + 269
#: more options than any real message carries (a long Uri-Path is ~10); a flood of them is refused
MAX_OPTIONS = 64
#: RFC 7252 §4.6 suggests 1152 bytes (1024 of payload); the extra room fits a long access-token option
#: (256) on a full 1024-byte block. Slow transports pass their own, smaller limit to :func:`parse`.
DEFAULT_MAX_SIZE = 1500
#: a Block option value is at most 3 bytes (RFC 7959 §2.2): NUM fits in 20 bits
MAX_BLOCK_NUM = (1 << 20) - 1


class CoapFormatError(WireError):
    """Bytes that are not a well-formed CoAP message, or a :class:`Message` / option value that cannot be one.

    Raised by :func:`parse`, :func:`encode`, :func:`uint_decode`, :meth:`Block.decode` and by the
    :class:`Message` helpers that interpret an option value (``path``, ``uint_opt``, ``block1`` …).
    """


def code_text(code_byte: int) -> str:
    """The ``c.dd`` form of a code byte: ``code_text(0x45) == "2.05"``."""
    return f"{code_byte >> 5}.{code_byte & 0x1F:02d}"


def uint_encode(value: int) -> bytes:
    """The minimal big-endian bytes of ``value`` (RFC 7252 §3.2 ``uint``): 0 is ``b""``.

    Raises :class:`CoapFormatError` for a negative value or one over 32 bits.
    """
    if value < 0 or value > 0xFFFFFFFF:
        raise CoapFormatError(f"uint option value out of range: {value}")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def uint_decode(value: bytes) -> int:
    """The integer of a ``uint`` option value (0-4 bytes; leading zeros are tolerated).

    Raises :class:`CoapFormatError` for more than 4 bytes.
    """
    if len(value) > 4:
        raise CoapFormatError(f"uint option value of {len(value)} bytes (at most 4)")
    return int.from_bytes(value, "big")


def block_size(szx: int) -> int:
    """The block size of a size exponent: ``16 << szx`` (16 to 1024 bytes for SZX 0-6)."""
    return 16 << szx


@dataclass(frozen=True)
class Block:
    """A Block1/Block2 option value (RFC 7959 §2.2): block number, more flag, size exponent (0-6)."""

    num: int
    more: bool
    szx: int

    def __post_init__(self) -> None:
        if not 0 <= self.szx <= 6:
            raise CoapFormatError(f"block SZX {self.szx} (0-6; 7 is reserved)")
        if not 0 <= self.num <= MAX_BLOCK_NUM:
            raise CoapFormatError(f"block number {self.num} out of range")

    @property
    def size(self) -> int:
        """Bytes per block."""
        return block_size(self.szx)

    @property
    def offset(self) -> int:
        """Where this block starts in the whole body."""
        return self.num * self.size

    def encode(self) -> bytes:
        """The option value (0-3 bytes, minimal)."""
        return uint_encode(self.num << 4 | (8 if self.more else 0) | self.szx)

    @classmethod
    def decode(cls, value: bytes) -> Block:
        """Parse an option value; raises :class:`CoapFormatError` for over 3 bytes or SZX 7."""
        if len(value) > 3:
            raise CoapFormatError(f"block option value of {len(value)} bytes (at most 3)")
        number = int.from_bytes(value, "big")
        if number & 7 == 7:
            raise CoapFormatError("block SZX 7 is reserved")
        return cls(number >> 4, bool(number & 8), number & 7)


Option = tuple[int, bytes]


@dataclass(frozen=True)
class Message:
    """One CoAP message.

    ``options`` holds ``(number, value)`` pairs in number order (repeats keep their order); the
    constructor sorts them stably and checks every field, raising :class:`CoapFormatError` for a
    value the wire format cannot hold (type 0-3, code and IDs in range, token 0-8 bytes, an Empty
    message with nothing but the header). ``mid`` and ``token`` default to 0 and empty: the
    message layer (``gateway/coap/messaging.py``) fills them.
    """

    mtype: int
    code: int
    mid: int = 0
    token: bytes = b""
    options: tuple[Option, ...] = ()
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.mtype <= 3:
            raise CoapFormatError(f"message type {self.mtype}")
        if not 0 <= self.code <= 0xFF:
            raise CoapFormatError(f"code {self.code}")
        if not 0 <= self.mid <= 0xFFFF:
            raise CoapFormatError(f"message ID {self.mid}")
        if len(self.token) > MAX_TOKEN_LEN:
            raise CoapFormatError(f"token of {len(self.token)} bytes (at most 8)")
        options = tuple(sorted(((int(n), bytes(v)) for n, v in self.options), key=lambda o: o[0]))
        for number, value in options:
            if not 0 <= number <= MAX_OPTION_NUMBER:
                raise CoapFormatError(f"option number {number}")
            if len(value) > MAX_OPTION_VALUE_LEN:
                raise CoapFormatError(f"option {number} value of {len(value)} bytes")
        if self.code == EMPTY and (self.token or options or self.payload):
            raise CoapFormatError("an Empty message (code 0.00) carries a token, options or payload")
        # Normalised copies: bytes, not bytearray/memoryview, so equality and hashing behave.
        object.__setattr__(self, "token", bytes(self.token))
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "payload", bytes(self.payload))

    @classmethod
    def request(
        cls,
        method: int,
        path: Sequence[str] = (),
        *,
        query: Sequence[str] = (),
        payload: bytes = b"",
        mtype: int = CON,
        options: Iterable[Option] = (),
    ) -> Message:
        """A request with Uri-Path and Uri-Query options built from ``path`` and ``query`` segments."""
        built = [(OPT_URI_PATH, s.encode()) for s in path] + [(OPT_URI_QUERY, q.encode()) for q in query]
        return cls(mtype, method, options=(*built, *options), payload=payload)

    def opt(self, number: int) -> bytes | None:
        """The first value of option ``number``, or None when absent."""
        for n, value in self.options:
            if n == number:
                return value
        return None

    def opts(self, number: int) -> list[bytes]:
        """Every value of option ``number``, in order."""
        return [value for n, value in self.options if n == number]

    def uint_opt(self, number: int) -> int | None:
        """The first value of ``uint`` option ``number``; None when absent; CoapFormatError over 4 bytes."""
        value = self.opt(number)
        return None if value is None else uint_decode(value)

    def _texts(self, number: int) -> tuple[str, ...]:
        try:
            return tuple(v.decode("utf-8") for v in self.opts(number))
        except UnicodeDecodeError:
            raise CoapFormatError(f"option {number} is not UTF-8") from None

    @property
    def path(self) -> tuple[str, ...]:
        """The Uri-Path segments as text; CoapFormatError when one is not UTF-8."""
        return self._texts(OPT_URI_PATH)

    @property
    def query(self) -> tuple[str, ...]:
        """The Uri-Query values as text (``"k=v"``); CoapFormatError when one is not UTF-8."""
        return self._texts(OPT_URI_QUERY)

    @property
    def observe(self) -> int | None:
        """The Observe option (RFC 7641), or None; CoapFormatError when malformed."""
        return self.uint_opt(OPT_OBSERVE)

    @property
    def block1(self) -> Block | None:
        """The Block1 option, or None; CoapFormatError when malformed."""
        value = self.opt(OPT_BLOCK1)
        return None if value is None else Block.decode(value)

    @property
    def block2(self) -> Block | None:
        """The Block2 option, or None; CoapFormatError when malformed."""
        value = self.opt(OPT_BLOCK2)
        return None if value is None else Block.decode(value)

    @property
    def is_request(self) -> bool:
        """Code class 0 other than Empty (GET, POST, … and the FETCH family)."""
        return 1 <= self.code <= 31

    @property
    def is_response(self) -> bool:
        """Code classes 2 to 5."""
        return 2 <= self.code >> 5 <= 5

    @property
    def is_empty(self) -> bool:
        """Code 0.00: an empty ACK or RST, or a CoAP ping (Empty CON)."""
        return self.code == EMPTY

    def with_option(self, number: int, value: bytes | int | str) -> Message:
        """A copy with one more option (an int becomes a minimal uint, a str UTF-8)."""
        raw = uint_encode(value) if isinstance(value, int) else value.encode() if isinstance(value, str) else value
        return dataclasses.replace(self, options=(*self.options, (number, raw)))

    def without_option(self, number: int) -> Message:
        """A copy with every value of option ``number`` removed."""
        return dataclasses.replace(self, options=tuple(o for o in self.options if o[0] != number))

    def replace_option(self, number: int, value: bytes | int | str) -> Message:
        """A copy where option ``number`` has exactly this one value."""
        return self.without_option(number).with_option(number, value)


def _nibble(value: int) -> tuple[int, bytes]:
    # The 4-bit field and its extension bytes for an option delta or length.
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def encode(msg: Message) -> bytes:
    """The datagram of ``msg`` (RFC 7252 §3). The payload marker is written only before a payload.

    A :class:`Message` is checked when built, so this raises nothing for one built normally.
    """
    out = bytearray((VERSION << 6 | msg.mtype << 4 | len(msg.token), msg.code))
    out += msg.mid.to_bytes(2, "big")
    out += msg.token
    previous = 0
    for number, value in msg.options:
        delta_nibble, delta_ext = _nibble(number - previous)
        length_nibble, length_ext = _nibble(len(value))
        out.append(delta_nibble << 4 | length_nibble)
        out += delta_ext
        out += length_ext
        out += value
        previous = number
    if msg.payload:
        out.append(PAYLOAD_MARKER)
        out += msg.payload
    return bytes(out)


def peek_header(data: bytes) -> tuple[int, int, int, bytes] | None:
    """``(mtype, code, mid, token)`` of a datagram whose fixed header is readable, else None.

    For answering a message that :func:`parse` refuses (a malformed CON is rejected with a RST that
    echoes its message ID, RFC 7252 §4.2). The token is ``b""`` when it cannot be read.
    """
    if len(data) < 4 or data[0] >> 6 != VERSION:
        return None
    tkl = data[0] & 0x0F
    token = bytes(data[4 : 4 + tkl]) if tkl <= MAX_TOKEN_LEN and len(data) >= 4 + tkl else b""
    return (data[0] >> 4) & 3, data[1], int.from_bytes(data[2:4], "big"), token


def _extended(nibble: int, data: bytes, pos: int, what: str) -> tuple[int, int]:
    # Resolve a delta/length nibble with its extension bytes: (value, new position).
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos + 1 > len(data):
            raise CoapFormatError(f"truncated option {what} extension")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            raise CoapFormatError(f"truncated option {what} extension")
        return int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
    raise CoapFormatError(f"option {what} nibble 15 outside the payload marker")


def parse(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """Parse one datagram into a :class:`Message`.

    Raises :class:`CoapFormatError` (the only error) for: a datagram over ``max_size`` bytes or under
    the 4-byte header, version other than 1, token length 9-15, anything truncated (token, option
    extension, option value), a nibble of 15 in an option header, a payload marker with no payload
    after it, option numbers over 65535, more than :data:`MAX_OPTIONS` options, and an Empty message
    (code 0.00) with anything after its header (RFC 7252 §4.1).
    """
    if len(data) > max_size:
        raise CoapFormatError(f"message of {len(data)} bytes over the limit of {max_size}")
    if len(data) < 4:
        raise CoapFormatError(f"truncated header ({len(data)} bytes)")
    first = data[0]
    if first >> 6 != VERSION:
        raise CoapFormatError(f"CoAP version {first >> 6}")
    tkl = first & 0x0F
    if tkl > MAX_TOKEN_LEN:
        raise CoapFormatError(f"token length {tkl} is reserved")
    mtype, code_byte = (first >> 4) & 3, data[1]
    mid = int.from_bytes(data[2:4], "big")
    if len(data) < 4 + tkl:
        raise CoapFormatError("truncated token")
    token = bytes(data[4 : 4 + tkl])
    pos = 4 + tkl
    if code_byte == EMPTY and len(data) != 4:
        raise CoapFormatError("an Empty message (code 0.00) has bytes after its header")
    options: list[Option] = []
    number = 0
    payload = b""
    end = len(data)
    while pos < end:
        head = data[pos]
        pos += 1
        if head == PAYLOAD_MARKER:
            if pos == end:
                raise CoapFormatError("payload marker with no payload")
            payload = bytes(data[pos:])
            break
        delta, pos = _extended(head >> 4, data, pos, "delta")
        length, pos = _extended(head & 0x0F, data, pos, "length")
        number += delta
        if number > MAX_OPTION_NUMBER:
            raise CoapFormatError(f"option number {number} over 65535")
        if pos + length > end:
            raise CoapFormatError(f"truncated value of option {number}")
        if len(options) == MAX_OPTIONS:
            raise CoapFormatError(f"more than {MAX_OPTIONS} options")
        options.append((number, bytes(data[pos : pos + length])))
        pos += length
    return Message(mtype, code_byte, mid, token, tuple(options), payload)
