"""Target for MQTT payload translation (gateway/bridges/mqtt/payload.py), both directions.

Inbound, any payload on any topic becomes event content or a
:class:`~lowband.gateway.bridges.mqtt.payload.Refusal` — never an
exception, which would leave the message unacknowledged and stall every
message after it on that broker connection (issue 15, finding 1). The
content becomes a room event, so it must also have a canonical JSON form.
Outbound, a room event becomes (topic, payload) or a Refusal, and the topic
is one a client may publish to.
"""

from __future__ import annotations

import json
from typing import Any

from lowband.gateway.bridges.mqtt.config import PAYLOAD_KINDS, FieldSpec, InboundMapping, OutboundMapping
from lowband.gateway.bridges.mqtt.payload import (
    Refusal,
    Translated,
    device_name,
    localpart_for,
    match_topic,
    outbound_message,
    route,
    translate,
)
from lowband.gateway.fuzz.target import ByteSource, Target, require
from lowband.gateway.homeserver.accounts import valid_localpart
from lowband.gateway.matrix.canonical_json import CanonicalJSONError, encode_canonical_json

_FIELDS = {"temp": FieldSpec("temperature", "Cel"), "hum": FieldSpec("humidity", "%RH"), "a.b": FieldSpec("nested")}
_INBOUND = tuple(
    InboundMapping(
        name=f"m{i}",
        broker="b",
        topic=topic,
        room="!r:example.org",
        payload=kind,
        fields=fields,
        only_fields=only,
        sender=sender,
    )
    for i, (topic, kind, fields, only, sender) in enumerate(
        [("sensors/+/state", kind, {}, False, "wildcard") for kind in PAYLOAD_KINDS]
        + [("zigbee2mqtt/#", "json", _FIELDS, False, "wildcard"), ("zigbee2mqtt/#", "auto", _FIELDS, True, "mapping")]
    )
)
_REFUSALS_IN = {"empty", "invalid_utf8", "malformed_json", "not_a_number", "malformed_senml", "no_values"}
_OUTBOUND = tuple(
    OutboundMapping(
        name=f"o{i}", broker="b", room="!r:example.org", topic=topic, format=fmt, msgtypes=("m.text", "m.notice")
    )
    for i, (topic, fmt) in enumerate(
        [
            ("cmd/{sender}/set", "body"),
            ("cmd/{device}/set", "body"),
            ("lab/{device}", "content"),
            ("lab/{sender}/{device}", "content"),
            ("state/x", "state"),
            ("senml/{sender}", "senml"),
        ]
    )
)
_REFUSALS_OUT = {"not_a_message", "msgtype", "edit", "bad_sender", "no_device", "bad_device", "no_telemetry"}
_CONTENT_KEYS = ("msgtype", "body", "m.relates_to", "rel_type", "org.lowband.senml", "n", "v", "vs", "vb", "vd",
                 "scale_", "bt", "u")  # fmt: skip
_TOPIC_LEVEL = "abc+#/$\x00 é"


def check_mqtt_payload(data: bytes) -> None:
    """translate gives Translated or a Refusal with a documented reason, for every payload,
    mapping kind and topic; Translated content has a canonical JSON form (it becomes a room
    event) and names a puppet with a valid localpart; outbound_message gives (topic,
    payload) with no wildcard or NUL in the topic and JSON where the format is JSON, or a
    Refusal with a documented reason; match_topic and route never raise."""
    source = ByteSource(data[:4])
    mapping = _INBOUND[source.below(len(_INBOUND))]
    level = source.byte()
    topic = ("sensors/kitchen/state", "zigbee2mqtt/hall sensor", "zigbee2mqtt/", "sensors/Ä/state")[level % 4]
    payload = data[4:]
    result = translate(payload, mapping, topic, 1_767_225_600_000, retained=bool(level & 4))
    if isinstance(result, Refusal):
        require(result.reason in _REFUSALS_IN, f"undocumented refusal reason {result.reason!r}")
    else:
        require(isinstance(result, Translated), f"translate returned {type(result).__name__}")
        try:
            encode_canonical_json(result.content)
        except CanonicalJSONError as exc:
            require(False, f"translated content has no canonical JSON form: {exc}")
        found = route(list(_INBOUND), topic)
        if found is not None:
            require(valid_localpart(localpart_for("mqtt_", device_name(*found))), "puppet localpart is not valid")

    rest = ByteSource(payload)
    match_topic(rest.text(12, _TOPIC_LEVEL), rest.text(12, _TOPIC_LEVEL))
    out = _OUTBOUND[rest.below(len(_OUTBOUND))]
    sender = "@" + rest.text(20) + ":example.org"
    content = rest.json_value(4, floats=False, keys=_CONTENT_KEYS)
    if not isinstance(content, dict):
        content = {"msgtype": "m.text", "body": content if isinstance(content, str) else json.dumps(content)}
    try:  # what a room holds passed canonical JSON (no lone surrogates, no floats)
        encode_canonical_json({"sender": sender, "content": content})
    except CanonicalJSONError:
        return
    answer = outbound_message(out, "m.room.message", sender, content)
    if isinstance(answer, Refusal):
        require(answer.reason in _REFUSALS_OUT, f"undocumented outbound refusal {answer.reason!r}")
        return
    topic_out, body = answer
    require(not any(c in topic_out for c in "+#\x00"), f"outbound topic {topic_out[:60]!r} has a wildcard or NUL")
    require(isinstance(body, bytes), "outbound payload is not bytes")
    if out.format != "body":
        _require_json(body)


def _require_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        require(False, f"outbound payload is not JSON: {body[:60]!r}")


MQTT_PAYLOAD = Target(
    name="mqtt_payload",
    summary="gateway/bridges/mqtt/payload.py: translate (every payload kind), outbound_message, match_topic",
    prop="Translated or Refusal, never an exception; content is canonical JSON; topics have no wildcard",
    errors=("none: Refusal values",),
    check=check_mqtt_payload,
    seeds=lambda: [
        b"\0\0\0\0" + p
        for p in (
            b"21.5",
            b'{"temp": 21.5, "hum": 40, "a": {"b": true}}',
            b'[{"bn": "dev/", "n": "t", "v": 1.5e3, "u": "Cel"}]',
            b"1e1000000",
            b"\xff\xfe",
            b'"text"',
        )
    ],
    max_len=1024,
)
