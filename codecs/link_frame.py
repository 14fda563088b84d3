"""Link frames (docs/protocol/link.md §2): parse and build, no crypto.

``frame = header(1) || address(1) || body``; the header holds the type
(HS1, HS2, DATA), the ACK and FRAG flags (DATA only) and the session epoch.
On a serial line frames travel as ``COBS(frame) || 0x00`` without a CRC
(:func:`serial_encode`, :class:`SerialFramer`); on a packet radio a frame is
one packet.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowband.codecs.errors import WireError
from lowband.codecs.framing import cobs_decode, cobs_encode, cobs_max_encoded_len

TYPE_HS1 = 0
TYPE_HS2 = 1
TYPE_DATA = 2
FLAG_ACK = 0x10
FLAG_FRAG = 0x08
HANDSHAKE_LEN = 48
TAG_LEN = 8
MAX_FRAME = 255  # a LoRa packet's limit; serial frames keep to it too
MIN_ADDRESS, MAX_ADDRESS = 1, 254
_MAX_ENCODED = cobs_max_encoded_len(MAX_FRAME)  # 257: the longest COBS form of a frame


class LinkFrameError(ValueError):
    """Bytes that are not a well-formed link frame (the peer broke the format)."""


@dataclass(frozen=True)
class Frame:
    """One link frame. ``body`` is the Noise message (HS1/HS2) or ciphertext||tag (DATA)."""

    type: int
    epoch: int
    address: int
    body: bytes
    seq: int = 0
    ack: int | None = None
    frag: bool = False

    @property
    def header(self) -> int:
        """The header byte."""
        value = self.type << 5 | self.epoch
        if self.ack is not None:
            value |= FLAG_ACK
        if self.frag:
            value |= FLAG_FRAG
        return value

    @property
    def aad(self) -> bytes:
        """The clear bytes a DATA frame's tag covers: header, address, seq, ack."""
        out = bytes((self.header, self.address, self.seq))
        return out + bytes((self.ack,)) if self.ack is not None else out

    def encode(self) -> bytes:
        """The frame's bytes."""
        if self.type == TYPE_DATA:
            return self.aad + self.body
        return bytes((self.header, self.address)) + self.body


def parse_frame(data: bytes) -> Frame:
    """Parse one frame; LinkFrameError for anything malformed."""
    if len(data) < 2:
        raise LinkFrameError("frame shorter than its header")
    if len(data) > MAX_FRAME:
        raise LinkFrameError(f"frame of {len(data)} bytes is longer than {MAX_FRAME}")
    header, address = data[0], data[1]
    kind, epoch = header >> 5, header & 0x07
    if not MIN_ADDRESS <= address <= MAX_ADDRESS:
        raise LinkFrameError(f"address {address} is reserved")
    if kind in (TYPE_HS1, TYPE_HS2):
        if header & (FLAG_ACK | FLAG_FRAG):
            raise LinkFrameError("handshake frames carry no flags")
        if len(data) != 2 + HANDSHAKE_LEN:
            raise LinkFrameError(f"handshake frame of {len(data)} bytes, expected {2 + HANDSHAKE_LEN}")
        return Frame(kind, epoch, address, bytes(data[2:]))
    if kind != TYPE_DATA:
        raise LinkFrameError(f"frame type {kind} is reserved")
    has_ack = bool(header & FLAG_ACK)
    start = 4 if has_ack else 3
    if len(data) < start + TAG_LEN:
        raise LinkFrameError("DATA frame too short for its tag")
    return Frame(
        TYPE_DATA, epoch, address, bytes(data[start:]), seq=data[2],
        ack=data[3] if has_ack else None, frag=bool(header & FLAG_FRAG),
    )  # fmt: skip


def serial_encode(frame: bytes) -> bytes:
    """``COBS(frame) || 0x00`` — the serial form, without a CRC (the tag protects it)."""
    return cobs_encode(frame) + b"\x00"


class SerialFramer:
    """Splits a serial byte stream into link frames at 0x00 delimiters.

    Never raises: bytes between delimiters that are not valid COBS, or that
    grow beyond a frame's largest size, are dropped and counted. Whatever
    survives is checked by :func:`parse_frame` and then by the tag.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._overflow = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Frames completed by ``data``, in order; none longer than :data:`MAX_FRAME` bytes."""
        out = []
        for byte in data:
            if byte != 0:
                if len(self._buffer) >= _MAX_ENCODED:
                    self._overflow = True
                else:
                    self._buffer.append(byte)
                continue
            if self._buffer and not self._overflow:
                try:
                    frame = cobs_decode(bytes(self._buffer))
                except WireError:
                    self.dropped += 1
                else:
                    # Short COBS blocks decode to more bytes than they take: 257 bytes of 0x01 are 256 zeros.
                    if len(frame) > MAX_FRAME:
                        self.dropped += 1
                    else:
                        out.append(frame)
            elif self._overflow:
                self.dropped += 1
            self._buffer.clear()
            self._overflow = False
        return out
