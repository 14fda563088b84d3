"""Byte-stream framing for serial and LoRa links: COBS, CRC-16, 0x00 delimiter.

A frame on the wire is ``COBS(payload || CRC) || 0x00``:

* ``CRC`` is CRC-16/CCITT-FALSE of the payload, two bytes, big-endian.
* ``COBS`` is Consistent Overhead Byte Stuffing (blocks of at most 254
  non-zero bytes); its output never contains 0x00.
* A single 0x00 ends the frame. A sender may put one extra 0x00 *before* a
  frame (``lead=True``) so that a receiver flushes whatever line noise it has
  buffered instead of merging it with the frame.

Rules of :class:`FrameDecoder` (the receiving side, sans-I/O):

* every run of bytes up to a 0x00 is one candidate frame;
* an empty candidate (two delimiters in a row) is ignored and not counted;
* a candidate that grows beyond the largest COBS encoding of
  ``max_payload + 2`` bytes is abandoned at once (its bytes are not kept) and
  everything up to the next 0x00 is discarded;
* a candidate with invalid COBS, with fewer than 3 decoded bytes or with a
  wrong CRC is dropped;
* every drop is counted; no input ever raises.

Overhead: a payload of ``n`` bytes costs 2 (CRC) + 1 (delimiter) + the COBS
code bytes, which is 1 for ``n <= 252`` and at most ``ceil((n + 2) / 254)``
in general; so 4 bytes for ``n <= 252`` and at most 8 for ``n = 1024``.
See docs/protocol/framing.md for the byte-level description.
"""

from __future__ import annotations

import enum

from lowband.codecs.errors import WireError

__all__ = [
    "MAX_PAYLOAD",
    "FrameDecoder",
    "cobs_decode",
    "cobs_encode",
    "cobs_max_encoded_len",
    "crc16_ccitt_false",
    "decode_frame",
    "encode_frame",
]

#: Largest payload :func:`encode_frame` accepts and the default limit of
#: :class:`FrameDecoder`.
MAX_PAYLOAD = 1024

_DELIMITER = 0x00
_CRC_LEN = 2
_MIN_DECODED = 1 + _CRC_LEN  # one payload byte and the CRC
_COBS_BLOCK = 254  # non-zero data bytes per full block (code byte 0xFF)


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_ccitt_false(data: bytes, crc: int = 0xFFFF) -> int:
    """Return the CRC-16/CCITT-FALSE of ``data``.

    Parameters: poly 0x1021, init 0xFFFF, input and output not reflected,
    xorout 0x0000; ``crc16_ccitt_false(b"123456789") == 0x29B1``. Pass the
    previous result as ``crc`` to continue over several pieces. Never raises
    for bytes-like input.
    """
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def cobs_max_encoded_len(n: int) -> int:
    """Return the largest COBS encoding of ``n`` bytes this module accepts.

    That is ``n + n // 254 + 1``: one code byte per started block, plus the
    single trailing 0x01 block that some encoders emit after a final full
    (0xFF) block. :func:`cobs_encode` itself never produces more than
    ``n + max(1, ceil(n / 254))`` bytes.
    """
    return n + n // _COBS_BLOCK + 1


def cobs_encode(data: bytes) -> bytes:
    """Return the COBS encoding of ``data``; the result contains no 0x00.

    Canonical form: a block of 254 non-zero bytes gets code 0xFF and no
    implied zero, and when such a block ends the input no empty 0x01 block
    follows it (``cobs_encode(b"\\x01" * 254) == b"\\xff" + b"\\x01" * 254``).
    Empty input encodes to ``b"\\x01"``. Never raises for bytes-like input.
    """
    data = bytes(data)
    out = bytearray()
    n = len(data)
    pos = 0
    while True:
        end = min(pos + _COBS_BLOCK, n)
        zero = data.find(_DELIMITER, pos, end)
        if zero >= 0:
            # Block ended by a zero; the code byte stands for it.
            out.append(zero - pos + 1)
            out += data[pos:zero]
            pos = zero + 1
            continue
        out.append(end - pos + 1)
        out += data[pos:end]
        pos = end
        if pos == n:
            # A short block can only end here; a full block that ends the
            # input exactly gets no empty 0x01 block after it (canonical).
            break
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Return the bytes whose COBS encoding is ``data`` (without delimiter).

    Accepts the canonical form of :func:`cobs_encode` and also a trailing
    empty 0x01 block after a final 0xFF block. Raises :class:`WireError` if
    ``data`` is empty, contains 0x00, or a code byte announces more bytes
    than remain.
    """
    data = bytes(data)
    n = len(data)
    if n == 0:
        raise WireError("COBS: empty input")
    if data.find(_DELIMITER) >= 0:
        raise WireError("COBS: 0x00 inside encoded data")
    out = bytearray()
    pos = 0
    while pos < n:
        code = data[pos]
        end = pos + code
        if end > n:
            raise WireError(f"COBS: block of {code - 1} bytes truncated at {n - pos - 1}")
        out += data[pos + 1 : end]
        pos = end
        if code != 0xFF and pos < n:
            out.append(_DELIMITER)
    return bytes(out)


def encode_frame(payload: bytes, *, lead: bool = False) -> bytes:
    """Return the wire frame ``COBS(payload || CRC16-BE) || 0x00``.

    With ``lead=True`` one extra 0x00 comes first, so a receiver discards any
    noise it buffered before the frame. Raises :class:`WireError` if the
    payload is empty or longer than :data:`MAX_PAYLOAD` bytes.
    """
    payload = bytes(payload)
    if not payload:
        raise WireError("frame: empty payload")
    if len(payload) > MAX_PAYLOAD:
        raise WireError(f"frame: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = cobs_encode(payload + crc16_ccitt_false(payload).to_bytes(2, "big"))
    frame = body + b"\x00"
    return b"\x00" + frame if lead else frame


class _Verdict(enum.Enum):
    OK = "ok"
    COBS = "invalid COBS"
    SHORT = "shorter than 3 decoded bytes"
    OVERSIZE = "payload too large"
    CRC = "CRC mismatch"


def _check_body(body: bytes, max_payload: int) -> tuple[_Verdict, bytes]:
    """Classify one candidate (the bytes between delimiters, non-empty)."""
    if len(body) > cobs_max_encoded_len(max_payload + _CRC_LEN):
        return _Verdict.OVERSIZE, b""
    try:
        decoded = cobs_decode(body)
    except WireError:
        return _Verdict.COBS, b""
    if len(decoded) < _MIN_DECODED:
        return _Verdict.SHORT, b""
    if len(decoded) > max_payload + _CRC_LEN:
        return _Verdict.OVERSIZE, b""
    payload = decoded[:-_CRC_LEN]
    if crc16_ccitt_false(payload) != int.from_bytes(decoded[-_CRC_LEN:], "big"):
        return _Verdict.CRC, b""
    return _Verdict.OK, payload


def decode_frame(frame: bytes, *, max_payload: int = MAX_PAYLOAD) -> bytes:
    """Return the payload of exactly one complete frame.

    ``frame`` is what :func:`encode_frame` produced: optional leading 0x00
    bytes, the COBS body, then one 0x00. Raises :class:`WireError` if the
    trailing delimiter is missing, a 0x00 occurs inside the body, the COBS is
    invalid, fewer than 3 bytes decode, the payload exceeds ``max_payload``
    or the CRC does not match. Use :class:`FrameDecoder` for a stream.
    """
    frame = bytes(frame)
    if not frame or frame[-1] != _DELIMITER:
        raise WireError("frame: missing trailing 0x00 delimiter")
    body = frame[:-1].lstrip(b"\x00")
    if not body:
        raise WireError("frame: no body")
    if body.find(_DELIMITER) >= 0:
        raise WireError("frame: 0x00 inside frame body")
    verdict, payload = _check_body(body, max_payload)
    if verdict is not _Verdict.OK:
        raise WireError(f"frame: {verdict.value}")
    return payload


class FrameDecoder:
    """Sans-I/O receiver that cuts a byte stream into verified payloads.

    Feed it whatever the link delivers, in chunks of any size; it returns
    the payloads of the complete, valid frames and keeps the rest of an
    unfinished frame for the next call. Resynchronisation rules are in the
    module docstring. It never raises for any input bytes, and it never
    buffers more than ``cobs_max_encoded_len(max_payload + 2)`` bytes.

    Counters (plain ``int`` attributes, only ever increase):

    * ``frames_ok``: payloads returned;
    * ``crc_errors``: candidates whose CRC did not match;
    * ``cobs_errors``: candidates that were not valid COBS;
    * ``short_frames``: valid COBS but fewer than 3 decoded bytes;
    * ``oversize``: candidates too long for ``max_payload``;
    * ``bytes_discarded``: bytes of every dropped candidate (delimiters not
      included; empty candidates drop nothing).
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        """Create a decoder; raises ``ValueError`` if ``max_payload < 1``."""
        if max_payload < 1:
            raise ValueError("max_payload must be at least 1")
        self.max_payload = max_payload
        self._limit = cobs_max_encoded_len(max_payload + _CRC_LEN)
        self._buf = bytearray()
        self._skipping = False  # dropping an oversize candidate until 0x00
        self.frames_ok = 0
        self.crc_errors = 0
        self.cobs_errors = 0
        self.short_frames = 0
        self.oversize = 0
        self.bytes_discarded = 0

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished candidate currently held."""
        return len(self._buf)

    @property
    def buffer_limit(self) -> int:
        """Upper bound of :attr:`buffered`."""
        return self._limit

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data`` and return the payloads it completed, in order.

        Bytes after the last 0x00 are kept for the next call. Never raises
        for bytes-like input; bad candidates only move the counters.
        """
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n:
            zero = data.find(_DELIMITER, pos)
            end = n if zero < 0 else zero
            self._take(data, pos, end)
            if zero < 0:
                break
            self._end_candidate(out)
            pos = zero + 1
        return out

    def _take(self, data: bytes | bytearray, start: int, end: int) -> None:
        count = end - start
        if count == 0:
            return
        if self._skipping:
            self.bytes_discarded += count
        elif len(self._buf) + count > self._limit:
            self.oversize += 1
            self.bytes_discarded += len(self._buf) + count
            self._buf.clear()
            self._skipping = True
        else:
            self._buf += data[start:end]

    def _end_candidate(self, out: list[bytes]) -> None:
        if self._skipping:
            self._skipping = False
            return
        if not self._buf:
            return
        body = bytes(self._buf)
        self._buf.clear()
        verdict, payload = _check_body(body, self.max_payload)
        if verdict is _Verdict.OK:
            self.frames_ok += 1
            out.append(payload)
            return
        self.bytes_discarded += len(body)
        if verdict is _Verdict.CRC:
            self.crc_errors += 1
        elif verdict is _Verdict.COBS:
            self.cobs_errors += 1
        elif verdict is _Verdict.SHORT:
            self.short_frames += 1
        else:
            self.oversize += 1
