"""Compact profile: the fewest bytes for a room event, given a context table.

A compact message is one header byte followed by a CBOR sequence (RFC 8742)
in deterministic encoding. The header::

    bit  7 6 5 4 | 3    | 2      | 1 0
         version | ROOM | SENDER | kind

``version`` is the context table version (1–15). ROOM and SENDER say that a
room index and then a sender index follow as CBOR unsigned integers; without
them the default room and sender (index 0) apply. Kinds:

* 0 generic — one CBOR item: the event with its keys replaced from the
  context (any JSON value round-trips; ROOM and SENDER must be clear);
* 1 telemetry — age in seconds, a channel bit mask, one integer mantissa per
  channel set; expands to an ``m.room.message``/``m.notice`` event with a
  readable body and the readings as SenML records;
* 2 text — age in seconds and a text string; expands to an ``m.text``
  message;
* 3 reserved.

Expansion needs a reference time ``ref_ms`` (milliseconds since the Unix
epoch): the link layer passes the time it received the message; offline
tools use the context's ``epoch_ms``. The event's ``origin_server_ts`` is
``ref_ms - 1000 × age``. :func:`encode` picks the smallest kind whose
expansion gives back exactly the event it was given, so
``decode(encode(e)) == e`` for every JSON value ``e``.

The byte-level description with examples is ``docs/protocol/compact.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lowband.codecs import cbor
from lowband.codecs.context import Context, ContextError
from lowband.codecs.errors import WireError

KIND_GENERIC = 0
KIND_TELEMETRY = 1
KIND_TEXT = 2

FLAG_ROOM = 0x08
FLAG_SENDER = 0x04

#: Largest compact message accepted or produced (the Matrix event size limit).
MAX_MESSAGE_BYTES = 65536

#: Deepest nesting of a generic message (the device codec's limit too).
MAX_DEPTH = 16

#: Content key under which telemetry events carry their SenML records.
SENML_KEY = "org.lowband.senml"

# Generic-form keys that stand for whole top-level fields.
_ROOM_KEY, _SENDER_KEY, _TYPE_KEY, _TS_KEY = -1, -2, -3, -4
_SPECIAL = {_ROOM_KEY: "room_id", _SENDER_KEY: "sender", _TYPE_KEY: "type", _TS_KEY: "origin_server_ts"}
_SAFE_INT = (1 << 53) - 1  # canonical JSON's integer range


@dataclass
class CompactForm:
    """A compact message before expansion (what travels on the link).

    ``values`` holds (channel, mantissa) pairs in ascending channel order for
    telemetry; ``body`` the text for text messages; ``item`` the CBOR item
    of a generic message, keys still as integers.
    """

    kind: int
    room: int = 0
    sender: int = 0
    age: int = 0
    values: list[tuple[int, int]] = field(default_factory=list)
    body: str = ""
    item: Any = None


# ---------------------------------------------------------------- decoding


def decode_form(data: bytes, ctx: Context) -> CompactForm:
    """Parse a compact message without expanding it.

    Raises ContextError when its version is not the context's, WireError for
    anything else that is wrong (truncation, bad kind, trailing bytes, an
    index outside the context table, a mask naming an unknown channel).
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"compact message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if not data:
        raise WireError("empty compact message")
    header = data[0]
    version = header >> 4
    if version != ctx.version:
        raise ContextError(
            f"context version mismatch: message uses version {version}, "
            f"the context table is version {ctx.version}"
        )
    kind = header & 0x03
    form = CompactForm(kind=kind)
    pos = 1

    def next_item() -> Any:
        nonlocal pos
        if pos >= len(data):
            raise WireError("compact message is truncated")
        value, pos = cbor.decode_item(data, pos, max_depth=MAX_DEPTH)
        return value

    def next_uint(what: str, limit: int | None = None) -> int:
        value = next_item()
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise WireError(f"compact {what} must be an unsigned integer")
        if limit is not None and value >= limit:
            raise WireError(f"compact {what} {value} is not in the context table")
        return value

    if kind == 3:
        raise WireError("compact kind 3 is reserved")
    if kind == KIND_GENERIC:
        if header & (FLAG_ROOM | FLAG_SENDER):
            raise WireError("a generic compact message cannot carry room or sender flags")
        form.item = next_item()
    else:
        if header & FLAG_ROOM:
            form.room = next_uint("room index", len(ctx.rooms))
            if form.room == 0:
                raise WireError("room index 0 is implied and must not be sent")
        elif not ctx.rooms:
            raise WireError("context has no default room")
        if header & FLAG_SENDER:
            form.sender = next_uint("sender index", len(ctx.senders))
            if form.sender == 0:
                raise WireError("sender index 0 is implied and must not be sent")
        elif not ctx.senders:
            raise WireError("context has no default sender")
        form.age = next_uint("age")
        if kind == KIND_TELEMETRY:
            mask = next_uint("channel mask")
            if mask == 0 or mask >> len(ctx.channels):
                raise WireError(f"telemetry mask {mask:#x} names channels the context lacks")
            for channel in range(len(ctx.channels)):
                if mask >> channel & 1:
                    value = next_item()
                    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > _SAFE_INT:
                        raise WireError("telemetry values must be integers within ±(2**53-1)")
                    form.values.append((channel, value))
        else:
            body = next_item()
            if not isinstance(body, str):
                raise WireError("text message body must be a text string")
            form.body = body
    if pos != len(data):
        raise WireError(f"{len(data) - pos} trailing bytes after the compact message")
    return form


def expand(form: CompactForm, ctx: Context, ref_ms: int | None = None) -> Any:
    """The full event (or JSON value) a compact form stands for.

    Raises WireError when the form does not fit the context or the age
    reaches back before 1970.
    """
    ref = ctx.epoch_ms if ref_ms is None else ref_ms
    if form.kind == KIND_GENERIC:
        return _expand_generic(form.item, ctx, ref, top=True)
    ts = ref - 1000 * form.age
    if ts < 0:
        raise WireError("compact age reaches back before 1970")
    if form.kind == KIND_TELEMETRY:
        content = _telemetry_content(form.values, ctx, ts)
    elif form.kind == KIND_TEXT:
        content = {"msgtype": "m.text", "body": form.body}
    else:
        raise WireError(f"compact kind {form.kind} is not defined")
    return {
        "type": "m.room.message",
        "room_id": ctx.rooms[form.room],
        "sender": ctx.senders[form.sender],
        "origin_server_ts": ts,
        "content": content,
    }


def decode(data: bytes, ctx: Context, ref_ms: int | None = None) -> Any:
    """Decode a compact message to its full JSON event; see decode_form/expand."""
    return expand(decode_form(data, ctx), ctx, ref_ms)


def format_reading(mantissa: int, scale: int) -> str:
    """``mantissa × 10**scale`` as exact decimal text (no float rounding)."""
    if scale >= 0:
        return str(mantissa * 10**scale)
    digits = str(abs(mantissa)).rjust(1 - scale, "0")
    sign = "-" if mantissa < 0 else ""
    return f"{sign}{digits[:scale]}.{digits[scale:]}"


def _telemetry_content(values: list[tuple[int, int]], ctx: Context, ts: int) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    words = []
    for channel_index, mantissa in values:
        channel = ctx.channels[channel_index]
        record: dict[str, Any] = {"n": channel.name}
        if not records:
            record["bt"] = ts // 1000
        if channel.unit:
            record["u"] = channel.unit
        record["v"] = mantissa
        if channel.scale:
            record["scale_"] = channel.scale
        records.append(record)
        text = f"{channel.name} {format_reading(mantissa, channel.scale)}"
        words.append(f"{text} {channel.unit}" if channel.unit else text)
    return {"msgtype": "m.notice", "body": ", ".join(words), SENML_KEY: records}


def _expand_generic(value: Any, ctx: Context, ref: int, *, top: bool) -> Any:
    if isinstance(value, list):
        return [_expand_generic(v, ctx, ref, top=False) for v in value]
    if isinstance(value, bytes):
        raise WireError("CBOR byte strings have no JSON form")
    if not isinstance(value, dict):
        return value
    result: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(key, str):
            result[key] = _expand_generic(item, ctx, ref, top=False)
            continue
        if key < 0:
            name = _SPECIAL.get(key) if top else None
            if name is None:
                raise WireError(f"compact key {key} is not defined here")
            if name in value:
                continue  # the string key wins
            result[name] = _expand_special(key, item, ctx, ref)
            continue
        if key >= len(ctx.keys):
            raise WireError(f"compact key {key} is not in the context table")
        name = ctx.keys[key]
        if name in value:
            continue  # the string key wins
        if top and any(_SPECIAL.get(k) == name for k in value if isinstance(k, int)):
            raise WireError(f"compact message gives {name!r} twice")
        result[name] = _expand_generic(item, ctx, ref, top=False)
    return result


def _expand_special(key: int, item: Any, ctx: Context, ref: int) -> Any:
    if isinstance(item, bool) or not isinstance(item, int):
        raise WireError(f"compact {_SPECIAL[key]} must be an integer")
    if key == _TS_KEY:
        return ref - item
    table = {_ROOM_KEY: ctx.rooms, _SENDER_KEY: ctx.senders, _TYPE_KEY: ctx.event_types}[key]
    if not 0 <= item < len(table):
        raise WireError(f"compact {_SPECIAL[key]} index {item} is not in the context table")
    return table[item]


# ---------------------------------------------------------------- encoding


def encode_form(form: CompactForm, ctx: Context) -> bytes:
    """Serialise a compact form; WireError if it does not fit the context."""
    header = ctx.version << 4 | form.kind
    parts = bytearray()
    if form.kind != KIND_GENERIC:
        if form.room:
            header |= FLAG_ROOM
            parts += cbor.encode_int(form.room)
        if form.sender:
            header |= FLAG_SENDER
            parts += cbor.encode_int(form.sender)
        parts += cbor.encode_int(form.age)
    if form.kind == KIND_TELEMETRY:
        channels = [c for c, _ in form.values]
        if not channels or channels != sorted(set(channels)) or channels[-1] >= len(ctx.channels):
            raise WireError("telemetry needs distinct known channels in ascending order")
        parts += cbor.encode_int(sum(1 << c for c in channels))
        for _, mantissa in form.values:
            parts += cbor.encode_int(mantissa)
    elif form.kind == KIND_TEXT:
        parts += cbor.dumps(form.body)
    elif form.kind == KIND_GENERIC:
        parts += cbor.dumps(form.item, max_depth=MAX_DEPTH)
    else:
        raise WireError(f"compact kind {form.kind} is not defined")
    message = bytes((header,)) + bytes(parts)
    if len(message) > MAX_MESSAGE_BYTES:
        raise WireError(f"compact message of {len(message)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return message


def encode(event: Any, ctx: Context, ref_ms: int | None = None) -> bytes:
    """Encode a JSON value (normally a room event) in the compact profile.

    Uses the telemetry or text kind when its expansion reproduces ``event``
    exactly, and the generic kind otherwise. Raises WireError for values
    outside the JSON model, nesting beyond the CBOR limit, or a result
    larger than :data:`MAX_MESSAGE_BYTES`.
    """
    ref = ctx.epoch_ms if ref_ms is None else ref_ms
    for candidate in (_telemetry_form(event, ctx, ref), _text_form(event, ctx, ref)):
        if candidate is not None and _same_json(expand(candidate, ctx, ref), event):
            return encode_form(candidate, ctx)
    item = _compress_generic(event, ctx, ref, top=True)
    return encode_form(CompactForm(kind=KIND_GENERIC, item=item), ctx)


def _same_json(a: Any, b: Any) -> bool:
    # json.dumps tells 1 from 1.0 and True, which == does not.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _message_header(event: Any, ctx: Context, ref: int) -> tuple[int, int, int] | None:
    """(room, sender, age) for a m.room.message that a short kind may carry."""
    if not isinstance(event, dict) or set(event) != {"type", "room_id", "sender", "origin_server_ts", "content"}:
        return None
    if event["type"] != "m.room.message" or not isinstance(event["content"], dict):
        return None
    room = ctx.index(ctx.rooms, event["room_id"])
    sender = ctx.index(ctx.senders, event["sender"])
    ts = event["origin_server_ts"]
    if room is None or sender is None or isinstance(ts, bool) or not isinstance(ts, int):
        return None
    age, rest = divmod(ref - ts, 1000)
    if rest or age < 0:
        return None
    return room, sender, age


def _telemetry_form(event: Any, ctx: Context, ref: int) -> CompactForm | None:
    header = _message_header(event, ctx, ref)
    if header is None:
        return None
    records = event["content"].get(SENML_KEY)
    if not isinstance(records, list) or not records:
        return None
    names = [c.name for c in ctx.channels]
    values = []
    for record in records:
        if not isinstance(record, dict) or record.get("n") not in names:
            return None
        mantissa = record.get("v")
        if isinstance(mantissa, bool) or not isinstance(mantissa, int) or abs(mantissa) > _SAFE_INT:
            return None
        values.append((names.index(record["n"]), mantissa))
    channels = [c for c, _ in values]
    if channels != sorted(set(channels)):
        return None
    room, sender, age = header
    return CompactForm(kind=KIND_TELEMETRY, room=room, sender=sender, age=age, values=values)


def _text_form(event: Any, ctx: Context, ref: int) -> CompactForm | None:
    header = _message_header(event, ctx, ref)
    if header is None or not isinstance(event["content"].get("body"), str):
        return None
    room, sender, age = header
    return CompactForm(kind=KIND_TEXT, room=room, sender=sender, age=age, body=event["content"]["body"])


def _compress_generic(value: Any, ctx: Context, ref: int, *, top: bool) -> Any:
    if isinstance(value, list):
        return [_compress_generic(v, ctx, ref, top=False) for v in value]
    if not isinstance(value, dict):
        if isinstance(value, (bytes, bytearray)):
            raise WireError("byte strings are not part of the JSON model")
        return value
    result: dict[Any, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise WireError("JSON object keys must be strings")
        if top:
            special = _compress_special(key, item, ctx, ref)
            if special is not None:
                result[special[0]] = special[1]
                continue
        index = ctx.index(ctx.keys, key)
        result[key if index is None else index] = _compress_generic(item, ctx, ref, top=False)
    return result


def _compress_special(key: str, item: Any, ctx: Context, ref: int) -> tuple[int, int] | None:
    if key == "origin_server_ts":
        if isinstance(item, bool) or not isinstance(item, int):
            return None
        return _TS_KEY, ref - item
    tables = {"room_id": (_ROOM_KEY, ctx.rooms), "sender": (_SENDER_KEY, ctx.senders), "type": (_TYPE_KEY, ctx.event_types)}
    if key not in tables:
        return None
    code, table = tables[key]
    index = ctx.index(table, item)
    return None if index is None else (code, index)
