"""Targets for the message codecs: deterministic CBOR, the compact profile, MSC3079, CoAP messages.

Each decodes the raw input (a value or :class:`~lowband.codecs.WireError`),
re-encodes what it accepted, and round-trips a value built from the same
bytes.
"""

from __future__ import annotations

from typing import Any

from lowband.codecs import cbor, coap, compact, msc3079
from lowband.codecs.context import default_context
from lowband.codecs.errors import WireError
from lowband.gateway.fuzz.target import ByteSource, Target, require, same

# ------------------------------------------------------------------ CBOR

_REFUSED = object()  # what a decode that raised the documented error gave


def check_cbor(data: bytes) -> None:
    """Strict decoding gives a value or WireError, and an accepted input is the value's
    deterministic encoding (``dumps(loads(d)) == d``); lenient decoding accepts at least what
    strict does, with the same value, and its value re-encodes and decodes strictly to
    itself; every item of a CBOR sequence decodes or raises WireError; a value built from
    the bytes round-trips (``loads(dumps(v)) == v``) or is refused by ``dumps`` with WireError."""
    try:
        strict: Any = cbor.loads(data)
    except WireError:
        strict = _REFUSED
    if strict is not _REFUSED:
        require(cbor.dumps(strict) == data, "strictly accepted CBOR is not the deterministic encoding of its value")
    try:
        loose = cbor.loads(data, strict=False)
    except WireError:
        require(strict is _REFUSED, "lenient decoding refused what strict decoding accepted")
    else:
        if strict is not _REFUSED:
            require(same(loose, strict), "lenient and strict decoding disagree")
        require(same(cbor.loads(cbor.dumps(loose)), loose), "a leniently decoded value does not round-trip")
    offset = 0
    for _ in range(8):  # a CBOR sequence, as the compact profile reads it
        if offset >= len(data):
            break
        try:
            _, end = cbor.decode_item(data, offset)
        except WireError:
            break
        require(offset < end <= len(data), "decode_item did not advance within the input")
        offset = end
    source = ByteSource(data)
    value = source.json_value(6)
    if source.flag():
        value = [value, source.blob(40)]  # byte strings are CBOR, not JSON
    try:
        encoded = cbor.dumps(value)
    except WireError:
        return
    require(same(cbor.loads(encoded), value), "loads(dumps(v)) != v")


def _cbor_seeds() -> list[bytes]:
    values: list[Any] = [0, 23, 24, 255, 256, 65536, 1 << 32, -1, -25, (1 << 64) - 1, -(1 << 64), 1.5, -0.0,
                         1e300, 5.960464477539063e-08, "", "text", "é☃😀", b"\x00\xff", [], [1, [2, [3]]], {},
                         {"a": 1, "b": [True, False, None]}, {1: "one", -2: "minus two", "k": {"n": 0.1}}]  # fmt: skip
    return [cbor.dumps(v) for v in values]


CBOR = Target(
    name="cbor",
    summary="codecs/cbor.py: loads (strict and lenient), decode_item, dumps",
    prop="value or WireError; strictly accepted bytes == dumps(value); loads(dumps(v)) == v",
    errors=("WireError",),
    check=check_cbor,
    seeds=_cbor_seeds,
    max_len=512,
)

# ------------------------------------------------------------------ compact

_CTX = default_context()
_REF_MS = _CTX.epoch_ms + 3_600_000
_EVENT_KEYS = ("type", "room_id", "sender", "origin_server_ts", "content", *_CTX.keys)


def _event_from(source: ByteSource) -> Any:
    """A JSON value shaped like a room event often enough to reach each compact kind."""
    kind = source.byte() % 4
    if kind == 0:
        return source.json_value(5, keys=_EVENT_KEYS)
    room = _CTX.rooms[source.below(len(_CTX.rooms))] if source.flag() else source.text(20)
    sender = _CTX.senders[source.below(len(_CTX.senders))] if source.flag() else source.text(20)
    ts = _REF_MS - 1000 * source.below(100_000) - (source.below(1000) if source.flag() else 0)
    content: Any
    if kind == 1:
        content = {"msgtype": "m.text", "body": source.text(40)}
    elif kind == 2:
        channels = sorted({source.below(len(_CTX.channels)) for _ in range(source.between(1, 3))})
        records: list[dict[str, Any]] = []
        words = []
        for index in channels:
            channel = _CTX.channels[index]
            mantissa = source.integer()
            record: dict[str, Any] = {"n": channel.name}
            if not records:
                record["bt"] = ts // 1000
            if channel.unit:
                record["u"] = channel.unit
            record["v"] = mantissa
            if channel.scale:
                record["scale_"] = channel.scale
            records.append(record)
            words.append(f"{channel.name} {compact.format_reading(mantissa, channel.scale)} {channel.unit}".rstrip())
        content = {"msgtype": "m.notice", "body": ", ".join(words), compact.SENML_KEY: records}
    else:
        content = source.json_value(4, keys=_EVENT_KEYS)
    return {"type": "m.room.message", "room_id": room, "sender": sender, "origin_server_ts": ts, "content": content}


def check_compact(data: bytes) -> None:
    """decode_form and decode give a value or WireError (ContextError is one); an accepted
    message is the deterministic encoding of its form (``encode_form(decode_form(d)) == d``);
    a decoded event, and an event built from the bytes, round-trip through encode and decode
    (``decode(encode(e)) == e``), or encode refuses them with WireError."""
    try:
        form = compact.decode_form(data, _CTX)
    except WireError:
        form = None
    if form is not None:
        require(compact.encode_form(form, _CTX) == data, "encode_form(decode_form(d)) != d")
    try:
        event = compact.decode(data, _CTX, _REF_MS)
    except WireError:
        event = None
    else:
        _round_trip_compact(event)
    _round_trip_compact(_event_from(ByteSource(data)))


def _round_trip_compact(event: Any) -> None:
    try:
        encoded = compact.encode(event, _CTX, _REF_MS)
    except WireError:
        return
    require(len(encoded) <= compact.MAX_MESSAGE_BYTES, "encode made a message over the size limit")
    require(same(compact.decode(encoded, _CTX, _REF_MS), event), "decode(encode(e)) != e")


def _compact_seeds() -> list[bytes]:
    telemetry = compact.CompactForm(kind=compact.KIND_TELEMETRY, room=1, sender=1, age=30,
                                    values=[(0, 215), (2, 371)])  # fmt: skip
    text = compact.CompactForm(kind=compact.KIND_TEXT, age=5, body="door open")
    generic = compact.encode({"type": "m.reaction", "content": {"m.relates_to": {"rel_type": "m.annotation",
                              "event_id": "$x", "key": "ok"}}}, _CTX, _REF_MS)  # fmt: skip
    return [compact.encode_form(telemetry, _CTX), compact.encode_form(text, _CTX), generic,
            compact.encode([1, "two", None], _CTX, _REF_MS)]  # fmt: skip


COMPACT = Target(
    name="compact",
    summary="codecs/compact.py: decode_form, decode (expand) and encode with the v1 context table",
    prop="value or WireError; encode_form(decode_form(d)) == d; decode(encode(e)) == e",
    errors=("WireError", "ContextError (a WireError)"),
    check=check_compact,
    seeds=_compact_seeds,
    max_len=512,
)

# ------------------------------------------------------------------ MSC3079


def check_msc3079(data: bytes) -> None:
    """decode gives a JSON value or WireError; a decoded document encodes, and decodes again
    to itself; a JSON value built from the bytes round-trips (``decode(encode(v)) == v``), or
    encode refuses it with WireError."""
    try:
        document = msc3079.decode(data)
    except WireError:
        pass
    else:
        require(same(msc3079.decode(msc3079.encode(document)), document), "a decoded document does not round-trip")
    value = ByteSource(data).json_value(6, keys=msc3079.KEYS_V1)
    try:
        encoded = msc3079.encode(value)
    except WireError:
        return
    require(same(msc3079.decode(encoded), value), "decode(encode(v)) != v")


MSC3079 = Target(
    name="msc3079",
    summary="codecs/msc3079.py: decode (any well-formed CBOR, integer keys) and encode",
    prop="JSON value or WireError; decode(encode(v)) == v",
    errors=("WireError",),
    check=check_msc3079,
    seeds=lambda: [
        msc3079.encode(
            {
                "type": "m.room.message",
                "content": {"msgtype": "m.text", "body": "hi"},
                "unsigned": {"age": 5},
                "8": "a string key",
            }
        )
    ],
    max_len=512,
)

# ------------------------------------------------------------------ CoAP


def check_coap(data: bytes) -> None:
    """parse gives a Message or CoapFormatError; an accepted datagram re-encodes to at most its
    own length and parses again to the same message, and peek_header agrees with it; the option
    helpers give values or CoapFormatError; a message built from the bytes round-trips."""
    try:
        msg = coap.parse(data)
    except coap.CoapFormatError:
        msg = None
    if msg is not None:
        wire = coap.encode(msg)
        require(len(wire) <= len(data), "encode(parse(d)) is longer than d")
        require(coap.parse(wire) == msg, "parse(encode(m)) != m")
        require(coap.peek_header(data) == (msg.mtype, msg.code, msg.mid, msg.token), "peek_header disagrees")
        for helper in (lambda: msg.path, lambda: msg.query, lambda: msg.observe, lambda: msg.block1,
                       lambda: msg.block2):  # fmt: skip
            try:
                helper()
            except coap.CoapFormatError:
                pass
    source = ByteSource(data)
    options = [(source.between(0, 300) if source.flag() else source.between(0, 65535), source.blob(20))
               for _ in range(source.below(6))]  # fmt: skip
    built = coap.Message(source.below(4), source.between(1, 255), source.between(0, 65535), source.blob(8),
                         tuple(options), source.blob(40))  # fmt: skip
    require(coap.parse(coap.encode(built)) == built, "parse(encode(m)) != m for a built message")


COAP = Target(
    name="coap",
    summary="codecs/coap.py: parse, encode, peek_header and the option helpers",
    prop="Message or CoapFormatError; parse(encode(m)) == m; encode(parse(d)) no longer than d",
    errors=("CoapFormatError (a WireError)",),
    check=check_coap,
    seeds=lambda: [
        coap.encode(coap.Message(coap.CON, coap.GET, 0x7D34, b"\x01\x02", ((11, b"temperature"), (256, b"tok")))),
        coap.encode(coap.Message(coap.ACK, coap.CONTENT, 1, b"t", ((6, b"\x05"), (23, b"\x0e")), b"payload")),
        coap.encode(coap.Message(coap.RST, coap.EMPTY, 9)),
    ],
    max_len=1500,
)
