"""codecs/coap.py: byte vectors written by hand from RFC 7252 / RFC 7959, a cross-check against aiocoap,
round trips, and every refusal of the parser."""

from __future__ import annotations

import aiocoap
import pytest
from aiocoap.optiontypes import OpaqueOption
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.codecs import coap
from lowband.codecs.coap import (
    ACK,
    CON,
    CONTENT,
    GET,
    NON,
    POST,
    RST,
    Block,
    CoapFormatError,
    Message,
    encode,
    parse,
    peek_header,
    uint_decode,
    uint_encode,
)
from lowband.codecs.errors import WireError

# ------------------------------------------------------------------ vectors written from the RFC text

# RFC 7252 §3 header: Ver=1 (01), T, TKL | Code | Message ID; options as delta/length nibbles.
VECTORS = [
    # Appendix A-style GET /temperature, CON, MID 0x7d34, no token: 0x40, GET, MID, option 11 (delta 11, len 11)
    (
        Message(CON, GET, 0x7D34, options=((11, b"temperature"),)),
        bytes([0x40, 0x01, 0x7D, 0x34, 0xBB]) + b"temperature",
    ),
    # the same with a 2-byte token (TKL 2)
    (
        Message(CON, GET, 0x7D34, b"\x01\x02", ((11, b"temperature"),)),
        bytes([0x42, 0x01, 0x7D, 0x34, 0x01, 0x02, 0xBB]) + b"temperature",
    ),
    # piggybacked 2.05 Content in the ACK, payload after 0xFF
    (
        Message(ACK, CONTENT, 0x7D34, b"\x01\x02", payload=b"22.3 C"),
        bytes([0x62, 0x45, 0x7D, 0x34, 0x01, 0x02, 0xFF]) + b"22.3 C",
    ),
    # Empty ACK and RST: the header alone
    (Message(ACK, 0, 0x7D34), bytes([0x60, 0x00, 0x7D, 0x34])),
    (Message(RST, 0, 0x0001), bytes([0x70, 0x00, 0x00, 0x01])),
    # NON POST with two Uri-Path segments (second delta 0), Content-Format 60 (delta 1, uint 1 byte)
    (
        Message(NON, POST, 0x0102, b"\xaa", ((11, b"a"), (11, b"bc"), (12, b"\x3c")), b"\xa0"),
        bytes([0x51, 0x02, 0x01, 0x02, 0xAA, 0xB1, 0x61, 0x02, 0x62, 0x63, 0x11, 0x3C, 0xFF, 0xA0]),
    ),
    # Content-Format 0 is the empty uint (delta 12, length 0); option 256 (delta 244: nibble 13, ext
    # 244-13 = 231), 257 (delta 1), 65000 (delta 64743: nibble 14, ext 64743-269 = 64474 = 0xFBDA)
    (
        Message(CON, GET, 0, options=((12, b""), (256, b"tok"), (257, b"\x01"), (65000, b"\x01"))),
        bytes([0x40, 0x01, 0x00, 0x00, 0xC0, 0xD3, 0xE7, 0x74, 0x6F, 0x6B, 0x11, 0x01, 0xE1, 0xFB, 0xDA, 0x01]),
    ),
    # value lengths 13 (nibble 13, ext 0) and 300 (nibble 14, ext 300-269=31)
    (
        Message(CON, GET, 0, options=((1, b"x" * 13), (4, b"y" * 300))),
        bytes([0x40, 0x01, 0, 0, 0x1D, 0x00]) + b"x" * 13 + bytes([0x3E, 0x00, 0x1F]) + b"y" * 300,
    ),
]


@pytest.mark.parametrize("msg, wire", VECTORS)
def test_vectors_encode_and_parse(msg, wire):
    assert encode(msg) == wire
    assert parse(wire) == msg


def test_message_helpers():
    msg = parse(VECTORS[5][1])
    assert msg.path == ("a", "bc")
    assert msg.opt(11) == b"a" and msg.opts(11) == [b"a", b"bc"] and msg.opt(99) is None and msg.opts(99) == []
    assert msg.uint_opt(coap.OPT_CONTENT_FORMAT) == coap.FORMAT_CBOR
    assert msg.is_request and not msg.is_response and not msg.is_empty
    resp = parse(VECTORS[2][1])
    assert resp.is_response and not resp.is_request
    assert parse(VECTORS[3][1]).is_empty
    req = Message.request(GET, ["_matrix", "client"], query=["a=1", "b=2"])
    assert req.path == ("_matrix", "client") and req.query == ("a=1", "b=2") and req.mtype == CON
    req = req.with_option(coap.OPT_AUTH, "secret").with_option(coap.OPT_CBOR_VERSION, 1)
    assert req.opt(256) == b"secret" and req.uint_opt(257) == 1
    assert [n for n, _ in req.options] == [11, 11, 15, 15, 256, 257]  # kept in number order
    assert req.replace_option(257, 0).opt(257) == b"" and req.without_option(11).path == ()
    assert Message(CON, GET, options=((11, b"\xff"),)).opt(11) == b"\xff"
    with pytest.raises(CoapFormatError):
        _ = Message(CON, GET, options=((11, b"\xff"),)).path
    with pytest.raises(CoapFormatError):
        Message(CON, GET, options=((6, b"12345"),)).uint_opt(6)
    assert coap.code_text(CONTENT) == "2.05" and coap.code_text(coap.NOT_FOUND) == "4.04"


def test_options_sorted_stably_and_repeats_kept():
    msg = Message(CON, GET, options=((15, b"q"), (11, b"a"), (11, b"b"), (4, b"e")))
    assert msg.options == ((4, b"e"), (11, b"a"), (11, b"b"), (15, b"q"))
    assert parse(encode(msg)) == msg


def test_coap_format_error_is_the_codec_error_type():
    assert issubclass(CoapFormatError, WireError) and issubclass(CoapFormatError, ValueError)


# ------------------------------------------------------------------ uint and Block


@pytest.mark.parametrize(
    "value, wire",
    [(0, b""), (1, b"\x01"), (255, b"\xff"), (256, b"\x01\x00"), (65535, b"\xff\xff"), (1 << 24, b"\x01\x00\x00\x00")],
)
def test_uint(value, wire):
    assert uint_encode(value) == wire
    assert uint_decode(wire) == value


def test_uint_refusals():
    assert uint_decode(b"\x00\x01") == 1  # leading zeros tolerated on receipt
    for bad in (-1, 1 << 32):
        with pytest.raises(CoapFormatError):
            uint_encode(bad)
    with pytest.raises(CoapFormatError):
        uint_decode(b"\x00\x00\x00\x00\x01")


@pytest.mark.parametrize(
    "block, wire",
    [
        (Block(0, False, 0), b""),  # NUM 0, M 0, SZX 0 is the empty uint
        (Block(0, True, 6), b"\x0e"),  # 1024-byte blocks, more follow
        (Block(1, False, 6), b"\x16"),
        (Block(15, True, 2), b"\xfa"),
        (Block(16, True, 2), b"\x01\x0a"),  # NUM 16 needs the second byte
        (Block(coap.MAX_BLOCK_NUM, False, 6), b"\xff\xff\xf6"),
    ],
)
def test_block_vectors(block, wire):
    assert block.encode() == wire
    assert Block.decode(wire) == block
    assert block.size == 16 << block.szx and block.offset == block.num * block.size


def test_block_refusals():
    with pytest.raises(CoapFormatError):
        Block.decode(b"\x0f")  # SZX 7 reserved
    with pytest.raises(CoapFormatError):
        Block.decode(b"\x00\x00\x00\x10")  # over 3 bytes
    with pytest.raises(CoapFormatError):
        Block(0, False, 7)
    with pytest.raises(CoapFormatError):
        Block(1 << 20, False, 0)
    assert coap.block_size(0) == 16 and coap.block_size(6) == 1024
    msg = Message(CON, GET).with_option(coap.OPT_BLOCK2, Block(3, False, 4).encode())
    assert msg.block2 == Block(3, False, 4) and msg.block1 is None
    with pytest.raises(CoapFormatError):
        _ = Message(CON, GET, options=((coap.OPT_BLOCK1, b"\x07"),)).block1


# ------------------------------------------------------------------ aiocoap, an independent implementation


def _aiocoap_message(msg: Message) -> aiocoap.Message:
    # Fields set after construction: aiocoap deprecates passing mtype/mid/token to the constructor.
    theirs = aiocoap.Message(code=aiocoap.Code(msg.code), payload=msg.payload)
    theirs.mtype = aiocoap.Type(msg.mtype)
    theirs.mid = msg.mid
    theirs.token = msg.token
    for number, value in msg.options:
        theirs.opt.add_option(OpaqueOption(number, value))
    return theirs


CROSS = [
    *(msg for msg, _ in VECTORS),
    Message(CON, GET, 1, b"12345678", ((11, b"_matrix"), (11, b"client"), (256, b"syt_abc"), (257, b"\x01"))),
    Message(NON, CONTENT, 65535, b"", ((6, b"\x05"), (12, b"\x3c"), (23, b"\x0e")), bytes(range(256)) * 4),
    Message(CON, POST, 4242, b"t", ((27, b"\x01\x0e"), (60, b"\x08\x00"), (65000, b"\x01")), b"x" * 1024),
    Message(ACK, coap.BAD_REQUEST, 7, b"\x00", ((8, b"loc"), (65000, b"")), b"bad"),
    Message(CON, GET, 9, options=((1, b"a" * 20), (3, b"h" * 270), (35, b""), (65535, b"z"))),
]


@pytest.mark.parametrize("msg", CROSS)
def test_aiocoap_encodes_the_same_bytes(msg):
    assert _aiocoap_message(msg).encode() == encode(msg)


@pytest.mark.parametrize("msg", CROSS)
def test_aiocoap_decodes_our_bytes(msg):
    theirs = aiocoap.Message.decode(encode(msg))
    assert (int(theirs.mtype), int(theirs.code), theirs.mid, theirs.token) == (msg.mtype, msg.code, msg.mid, msg.token)
    assert [(int(o.number), o.encode()) for o in theirs.opt.option_list()] == list(msg.options)
    assert theirs.payload == msg.payload


def test_aiocoap_built_request_parses():
    theirs = aiocoap.Message(code=aiocoap.GET, uri_path=("_matrix", "client", "versions"), uri_query=("a=b",))
    theirs.mtype, theirs.mid, theirs.token = aiocoap.CON, 0x1234, b"\xbe\xef"
    theirs.opt.observe = 0
    ours = parse(theirs.encode())
    assert ours.path == ("_matrix", "client", "versions") and ours.query == ("a=b",)
    assert ours.observe == 0 and ours.token == b"\xbe\xef" and ours.mid == 0x1234 and ours.mtype == CON


# ------------------------------------------------------------------ round trips

_options = st.lists(
    st.tuples(st.integers(0, 65535), st.binary(max_size=300)),
    max_size=8,
)
_messages = st.builds(
    lambda mtype, code, mid, token, options, payload: Message(mtype, code, mid, token, tuple(options), payload),
    st.integers(0, 3),
    st.integers(1, 255),
    st.integers(0, 65535),
    st.binary(max_size=8),
    _options,
    st.binary(max_size=300),
)


@settings(max_examples=400, deadline=None)
@given(_messages)
def test_round_trip(msg):
    wire = encode(msg)
    assert parse(wire, max_size=len(wire)) == msg
    assert _aiocoap_message(msg).encode() == wire
    assert peek_header(wire) == (msg.mtype, msg.code, msg.mid, msg.token)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_parse_gives_a_message_or_the_error(data):
    try:
        msg = parse(data)
    except CoapFormatError:
        return
    # Non-minimal option extensions (nibble 14 with a small extension) parse too; encode writes the
    # minimal form, which parses to the same message.
    assert parse(encode(msg)) == msg
    assert len(encode(msg)) <= len(data)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "truncated header"),
        (b"\x40\x01\x00", "truncated header"),
        (b"\x00\x01\x00\x00", "version 0"),
        (b"\x80\x01\x00\x00", "version 2"),
        (b"\xc0\x01\x00\x00", "version 3"),
        (b"\x49\x01\x00\x00" + b"x" * 9, "token length 9"),
        (b"\x4f\x01\x00\x00" + b"x" * 15, "token length 15"),
        (b"\x44\x01\x00\x00abc", "truncated token"),
        (b"\x40\x01\x00\x00\xff", "marker, no payload"),
        (b"\x40\x01\x00\x00\xb3ab", "truncated option value"),
        (b"\x40\x01\x00\x00\xd1", "truncated delta ext (13)"),
        (b"\x40\x01\x00\x00\xe1\x00", "truncated delta ext (14)"),
        (b"\x40\x01\x00\x00\x1d", "truncated length ext (13)"),
        (b"\x40\x01\x00\x00\x1e\x00", "truncated length ext (14)"),
        (b"\x40\x01\x00\x00\xf1a", "delta nibble 15"),
        (b"\x40\x01\x00\x00\x1fa", "length nibble 15"),
        (b"\x40\x01\x00\x00\xe0\xff\xff", "option number 65535+269"),
        (b"\x40\x01\x00\x00\xe0\xfd\xf2\xe0\x00\x00", "option numbers summing over 65535"),
        (b"\x60\x00\x00\x00\x00", "Empty message with more bytes"),
        (b"\x61\x00\x00\x00\x00", "Empty message with a token"),
        (b"\x70\x00\x00\x00\xff\x01", "Empty RST with payload"),
        (b"\x40\x00\x00\x00\xb1a", "Empty CON with an option"),
        (b"\x40\x01\x00\x00" + b"\x10" * 65, "too many options"),
    ],
)
def test_refusals(data, reason):
    with pytest.raises(CoapFormatError):
        parse(data)


def test_oversize_refused_and_limit_configurable():
    big = encode(Message(NON, CONTENT, 1, payload=b"p" * 2000))
    with pytest.raises(CoapFormatError, match="over the limit"):
        parse(big)
    assert parse(big, max_size=4096).payload == b"p" * 2000
    small = encode(Message(CON, GET, 1, payload=b"p" * 60))
    with pytest.raises(CoapFormatError):
        parse(small, max_size=64)
    assert len(encode(Message(NON, CONTENT, 1, payload=b"p" * 1024))) <= coap.DEFAULT_MAX_SIZE


def test_every_truncation_of_a_message_is_refused_or_a_prefix_message():
    msg = CROSS[5]
    wire = encode(msg)
    for cut in range(len(wire)):
        try:
            got = parse(wire[:cut])
        except CoapFormatError:
            continue
        # Cutting between options (or inside the payload) leaves a well-formed, different message.
        assert got != msg


def test_the_constructor_refuses_what_the_wire_cannot_hold():
    for kwargs in (
        {"mtype": 4, "code": 1},
        {"mtype": 0, "code": 256},
        {"mtype": 0, "code": 1, "mid": 65536},
        {"mtype": 0, "code": 1, "mid": -1},
        {"mtype": 0, "code": 1, "token": b"x" * 9},
        {"mtype": 0, "code": 1, "options": ((65536, b""),)},
        {"mtype": 0, "code": 1, "options": ((1, b"x" * (coap.MAX_OPTION_VALUE_LEN + 1)),)},
        {"mtype": 2, "code": 0, "token": b"t"},
        {"mtype": 3, "code": 0, "payload": b"p"},
    ):
        with pytest.raises(CoapFormatError):
            Message(**kwargs)


def test_peek_header_reads_what_parse_refuses():
    assert peek_header(b"\x42\x01\x12\x34ab\xff") == (CON, GET, 0x1234, b"ab")  # marker without payload
    assert peek_header(b"\x4f\x02\x00\x07") == (CON, POST, 7, b"")  # TKL 15: token unreadable
    assert peek_header(b"\x44\x02\x00\x07ab") == (CON, POST, 7, b"")  # truncated token
    assert peek_header(b"\x40\x01\x00") is None
    assert peek_header(b"\x80\x01\x00\x00") is None
