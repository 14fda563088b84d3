"""Targets for what cuts a byte stream into messages: framing, fragmentation, link frames.

The stream receivers (:class:`~lowband.codecs.framing.FrameDecoder`,
:class:`~lowband.codecs.fragment.Reassembler`,
:class:`~lowband.codecs.link_frame.SerialFramer`) document that they never
raise: bad input moves a counter. The targets feed them the fuzz bytes in
chunks the bytes choose, check their bounds, and then check that a good
message sent after the garbage still comes through.
"""

from __future__ import annotations

from lowband.codecs import framing, link_frame
from lowband.codecs.errors import WireError
from lowband.codecs.fragment import MAX_FRAGMENTS, Reassembler, fragment
from lowband.gateway.fuzz.target import ByteSource, Target, require


def _chunks(data: bytes, source: ByteSource) -> list[bytes]:
    """``data`` cut at points the source chooses (1 to 64 bytes a piece)."""
    out = []
    pos = 0
    while pos < len(data):
        size = 1 + source.below(64)
        out.append(data[pos : pos + size])
        pos += size
    return out


# ------------------------------------------------------------------ framing


def check_framing(data: bytes) -> None:
    """decode_frame and cobs_decode give bytes or WireError; COBS round-trips; FrameDecoder
    never raises, never buffers past its limit, returns only payloads of 1..max_payload bytes
    and counts each; a frame sent with a leading 0x00 after any garbage is recovered."""
    try:
        payload = framing.decode_frame(data)
    except WireError:
        pass
    else:
        require(0 < len(payload) <= framing.MAX_PAYLOAD, "decode_frame returned a payload out of bounds")
        require(framing.decode_frame(framing.encode_frame(payload)) == payload, "a decoded payload does not round-trip")
    try:
        plain = framing.cobs_decode(data)
    except WireError:
        pass
    else:
        require(framing.cobs_decode(framing.cobs_encode(plain)) == plain, "COBS does not round-trip a decoded value")
    encoded = framing.cobs_encode(data)
    require(b"\x00" not in encoded, "COBS output contains 0x00")
    require(len(encoded) <= len(data) + max(1, -(-len(data) // 254)), "COBS output longer than promised")
    require(framing.cobs_decode(encoded) == data, "cobs_decode(cobs_encode(x)) != x")

    source = ByteSource(data[-8:])
    max_payload = (16, 64, framing.MAX_PAYLOAD)[source.below(3)]
    decoder = framing.FrameDecoder(max_payload)
    got: list[bytes] = []
    for piece in _chunks(data, source):
        got += decoder.feed(piece)
        require(decoder.buffered <= decoder.buffer_limit, "FrameDecoder buffered past its limit")
    require(all(0 < len(p) <= max_payload for p in got), "FrameDecoder returned a payload out of bounds")
    require(decoder.frames_ok == len(got), "frames_ok does not count the payloads returned")
    wanted = data[:max_payload] or b"\x01"
    for piece in _chunks(framing.encode_frame(wanted, lead=True), source):
        got += decoder.feed(piece)
    require(bool(got) and got[-1] == wanted, "a good frame after garbage was lost")


FRAMING = Target(
    name="framing",
    summary="codecs/framing.py: decode_frame, cobs_decode/cobs_encode, FrameDecoder over chunked input",
    prop="bytes or WireError; FrameDecoder never raises, stays bounded, recovers the next good frame",
    errors=("WireError",),
    check=check_framing,
    seeds=lambda: [
        framing.encode_frame(b"hello"),
        framing.encode_frame(bytes(300), lead=True),
        framing.cobs_encode(b"\x01" * 254),
    ],
    max_len=1100,  # a frame of the largest payload (1024) is at most 1034 bytes
)

# ------------------------------------------------------------------ fragmentation

_MAX_MESSAGES = 4
_MAX_MESSAGE_BYTES = 600


def check_fragment(data: bytes) -> None:
    """Reassembler.feed never raises for any fragments from any sources at any times, returns
    None or a message of 1..max_message_bytes, holds at most max_messages buffers and has a
    deadline exactly when it holds one; fragment() gives pieces or WireError; the pieces of a
    message fed in any order, with duplicates, give the message back exactly once, at the
    piece that completes it."""
    source = ByteSource(data)
    reassembler = Reassembler(max_messages=_MAX_MESSAGES, max_message_bytes=_MAX_MESSAGE_BYTES, max_age=60.0)
    now = 0.0
    for _ in range(source.below(24)):
        piece = source.blob(40)
        now += source.below(40)
        out = reassembler.feed(source.below(3), piece, now)
        require(out is None or 0 < len(out) <= _MAX_MESSAGE_BYTES, "Reassembler returned a message out of bounds")
        require(reassembler.pending <= _MAX_MESSAGES, "Reassembler holds more buffers than allowed")
        require((reassembler.next_deadline() is None) == (reassembler.pending == 0), "deadline and buffers disagree")

    mtu = source.between(1, 80)
    msg_id = source.between(-1, 256)
    payload = source.blob(700)
    try:
        pieces = fragment(payload, msg_id, mtu)
    except WireError:
        return
    require(0 < len(pieces) <= MAX_FRAGMENTS and all(len(p) <= mtu for p in pieces), "fragment() broke its bounds")
    if len(payload) > _MAX_MESSAGE_BYTES:
        return
    order = list(range(len(pieces)))
    for i in range(len(order) - 1, 0, -1):  # a shuffle the bytes choose
        j = source.below(i + 1)
        order[i], order[j] = order[j], order[i]
    fresh = Reassembler(max_messages=_MAX_MESSAGES, max_message_bytes=_MAX_MESSAGE_BYTES, max_age=60.0)
    results = []
    for position, index in enumerate(order):
        results.append(fresh.feed("device", pieces[index], now))
        if position < len(order) - 1 and source.flag():  # an exact duplicate before completion is ignored
            results.append(fresh.feed("device", pieces[index], now))
    require(results[-1] == payload, "the completing piece did not return the message")
    require(sum(r is not None for r in results) == 1, "a message came out more than once")


FRAGMENT = Target(
    name="fragment",
    summary="codecs/fragment.py: Reassembler.feed (any fragments, sources, times) and fragment()",
    prop="Reassembler never raises and stays bounded; fragments in any order give the message once",
    errors=("WireError (fragment() only)",),
    check=check_fragment,
    seeds=lambda: [bytes([3, 0, 5, 1, 2, 3, 4, 5, 0, 30, 20, 0, 1, 2, 3])],
    max_len=1024,
)

# ------------------------------------------------------------------ link frames


def check_link_frame(data: bytes) -> None:
    """parse_frame gives a Frame or LinkFrameError, and an accepted frame encodes back to the
    same bytes with an address in 1..254; SerialFramer never raises, returns frames of at most
    MAX_FRAME bytes, and a frame sent after any garbage and a 0x00 comes through."""
    try:
        frame = link_frame.parse_frame(data)
    except link_frame.LinkFrameError:
        pass
    else:
        require(frame.encode() == data, "parse_frame(d).encode() != d")
        require(link_frame.MIN_ADDRESS <= frame.address <= link_frame.MAX_ADDRESS, "address out of range")
        require(frame.type != link_frame.TYPE_DATA or len(frame.body) >= link_frame.TAG_LEN, "DATA frame without a tag")
    source = ByteSource(data[-8:])
    framer = link_frame.SerialFramer()
    got: list[bytes] = []
    for piece in _chunks(data, source):
        got += framer.feed(piece)
    require(all(len(f) <= link_frame.MAX_FRAME for f in got), "SerialFramer returned a frame longer than MAX_FRAME")
    wanted = data[: link_frame.MAX_FRAME]
    for piece in _chunks(b"\x00" + link_frame.serial_encode(wanted), source):
        got += framer.feed(piece)
    require(bool(got) and got[-1] == wanted, "a good serial frame after garbage was lost")


def _link_seeds() -> list[bytes]:
    data = link_frame.Frame(link_frame.TYPE_DATA, 3, 7, bytes(12), seq=9, ack=4, frag=True)
    hs1 = link_frame.Frame(link_frame.TYPE_HS1, 1, 200, bytes(range(48)))
    return [data.encode(), hs1.encode(), link_frame.serial_encode(data.encode())]


LINK_FRAME = Target(
    name="link_frame",
    summary="codecs/link_frame.py: parse_frame and SerialFramer over chunked input",
    prop="Frame or LinkFrameError; parse_frame(d).encode() == d; SerialFramer never raises, recovers",
    errors=("LinkFrameError",),
    check=check_link_frame,
    seeds=_link_seeds,
    max_len=1024,
)
