"""MQTT payloads ↔ room event content, and topic routing. Pure code, no I/O.

Inbound, a payload becomes the telemetry content devices already use
(``lowband.codecs.compact``)::

    {"msgtype": "m.notice", "body": "temperature 21.5 Cel, humidity 40 %RH",
     "org.lowband.senml": [{"n": "temperature", "bt": 1700000000, "u": "Cel", "v": 215, "scale_": -1},
                           {"n": "humidity", "u": "%RH", "v": 40}],
     "org.lowband.mqtt": {"topic": "zigbee2mqtt/kitchen"}}

Numbers keep their exact decimal digits as an integer mantissa and a
``scale_`` (canonical JSON has no floats); booleans, strings and binary
become the RFC 8428 ``vb``, ``vs`` and ``vd`` (base64url, no padding)
values. Anything that cannot be translated is a :class:`Refusal` with a
short reason that names a counter — never an exception.

Outbound, :func:`outbound_message` turns a room event into (topic, payload)
for an ``[[mqtt.outbound]]`` mapping.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from lowband.codecs.compact import SENML_KEY, format_reading
from lowband.gateway.bridges.mqtt.config import FieldSpec, InboundMapping, OutboundMapping

#: Content key with the MQTT origin of a bridged event.
MQTT_KEY = "org.lowband.mqtt"

_SAFE_INT = (1 << 53) - 1
_MAX_SCALE = 99
_MAX_RECORDS = 256
_MAX_DEPTH = 4
_NAME_BAD = re.compile(r"[^-:./_A-Za-z0-9]")
_LOCALPART_BAD = re.compile(r"[^a-z0-9._=\-]")


@dataclass(frozen=True)
class Refusal:
    """Why a message is not bridged; ``reason`` is also the counter's name."""

    reason: str
    detail: str = ""


# ------------------------------------------------------------------ topics


def match_topic(topic_filter: str, topic: str) -> tuple[str, ...] | None:
    """The levels the wildcards of ``topic_filter`` matched in ``topic``, or None.

    Each ``+`` captures one level; ``#`` captures the rest joined with ``/``
    (possibly empty, since ``a/#`` also matches ``a``). Topics starting
    with ``$`` never match a filter starting with a wildcard (MQTT 4.7.2).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return None
    want = topic_filter.split("/")
    have = topic.split("/")
    captured: list[str] = []
    for index, level in enumerate(want):
        if level == "#":
            captured.append("/".join(have[index:]))
            return tuple(captured)
        if index >= len(have):
            return None
        if level == "+":
            captured.append(have[index])
        elif level != have[index]:
            return None
    return tuple(captured) if len(have) == len(want) else None


def route(mappings: list[InboundMapping], topic: str) -> tuple[InboundMapping, tuple[str, ...]] | None:
    """The first mapping whose filter matches ``topic`` and whose excludes do not."""
    for mapping in mappings:
        captured = match_topic(mapping.topic, topic)
        if captured is None:
            continue
        if any(match_topic(excluded, topic) is not None for excluded in mapping.exclude):
            continue
        return mapping, captured
    return None


def device_name(mapping: InboundMapping, captured: tuple[str, ...]) -> str:
    """The device a message comes from: its wildcard levels, or the mapping."""
    if mapping.sender == "mapping" or not captured or not any(captured):
        return mapping.name
    return ".".join(level.replace("/", ".") for level in captured if level)


def localpart_for(prefix: str, name: str) -> str:
    """A Matrix localpart for a device name.

    Lower-cased; characters Matrix does not allow become ``_``. When that
    changed the name, a short hash of the original is appended so that
    ``Kitchen`` and ``kitchen`` stay two users.
    """
    clean = _LOCALPART_BAD.sub("_", name.lower())[:180]
    if clean != name:
        clean += "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    return prefix + clean


@functools.lru_cache(maxsize=4096)
def _default_spec(key: str) -> FieldSpec:
    """The record spec of a JSON key no mapping names (made once per key, not per message)."""
    return FieldSpec(field_name(key))


def field_name(key: str) -> str:
    """An RFC 8428 record name for a JSON key (bad characters become ``_``)."""
    name = _NAME_BAD.sub("_", key)[:64]
    return name if name[:1].isalnum() else "f" + name


# ------------------------------------------------------------------ numbers


def mantissa_scale(value: int | Decimal) -> tuple[int, int] | None:
    """(mantissa, scale) with value == mantissa × 10**scale exactly; None if out of range."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if abs(value) <= _SAFE_INT:
            return value, 0
        value = Decimal(value)
    if not value.is_finite():
        return None
    # Trailing zeros move into the exponent, as normalize() would do; but normalize() works in a context
    # whose exponent limits a payload such as 1e1000000 exceeds (decimal.Overflow), and it rounds past 28
    # digits, which would not be exact.
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    kept = len(digits)
    while kept > 1 and digits[kept - 1] == 0:
        kept -= 1
    exponent += len(digits) - kept
    if kept > len(str(_SAFE_INT)):
        return None
    mantissa = int("".join(map(str, digits[:kept])) or "0")
    if mantissa == 0:
        return 0, 0
    if 0 < exponent <= _MAX_SCALE and mantissa * 10**exponent <= _SAFE_INT:
        mantissa, exponent = mantissa * 10**exponent, 0
    if mantissa > _SAFE_INT or not -_MAX_SCALE <= exponent <= _MAX_SCALE:
        return None
    return (-mantissa if sign else mantissa), exponent


def _parse_number(text: str) -> Decimal | None:
    text = text.strip()
    if not text or len(text) > 64 or not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# ------------------------------------------------------------------ inbound


class _Records:
    """Collects SenML records and the words of the readable body."""

    def __init__(self, mapping: InboundMapping) -> None:
        self.mapping = mapping
        self.records: list[dict[str, Any]] = []
        self.words: list[str] = []
        self.paths: list[tuple[str, str]] = []  # (record name, JSON path) for discovery

    def spec(self, key: str) -> FieldSpec | None:
        spec = self.mapping.fields.get(key)
        if spec is None and self.mapping.only_fields:
            return None
        return spec or _default_spec(key)

    def add(self, key: str, value: Any, path: str = "") -> None:
        if len(self.records) >= _MAX_RECORDS:
            return
        spec = self.spec(key)
        if spec is None:
            return
        record: dict[str, Any] = {"n": spec.n}
        if spec.u:
            record["u"] = spec.u
        if isinstance(value, bool):
            record["vb"] = value
            text = "true" if value else "false"
        elif isinstance(value, (int, Decimal)):
            pair = mantissa_scale(value)
            if pair is None:
                return
            record["v"] = pair[0]
            if pair[1]:
                record["scale_"] = pair[1]
            text = format_reading(*pair)
        elif isinstance(value, str):
            record["vs"] = value
            text = value
        elif isinstance(value, bytes):
            record["vd"] = base64.urlsafe_b64encode(value).rstrip(b"=").decode()
            text = f"({len(value)} bytes)"
        else:
            return
        self.records.append(record)
        self.paths.append((spec.n, path or key))
        self.words.append(f"{spec.n} {text} {spec.u}" if spec.u else f"{spec.n} {text}")

    def add_object(self, obj: dict[str, Any], prefix: str = "", depth: int = 0) -> None:
        for key, value in obj.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                if depth + 1 < _MAX_DEPTH:
                    self.add_object(value, path + ".", depth + 1)
            elif value is not None and not isinstance(value, list):
                self.add(path, value)


@dataclass(frozen=True)
class Translated:
    """Content for the room plus what discovery needs to know about it."""

    content: dict[str, Any]
    kind: str  # "object", "value" or "pack"
    paths: tuple[tuple[str, str], ...]  # (SenML name, JSON path) of each record


def translate(
    payload: bytes, mapping: InboundMapping, topic: str, now_ms: int, retained: bool = False
) -> Translated | Refusal:
    """Content of the event one MQTT message becomes, or why it is refused.

    Refusal reasons: ``empty``, ``invalid_utf8``, ``malformed_json``,
    ``not_a_number``, ``malformed_senml``, ``no_values``.
    """
    if not payload:
        return Refusal("empty", "empty payload (clears a retained message)")
    single = field_name(topic.rsplit("/", 1)[-1] or mapping.name)
    records = _Records(mapping)
    kind = "value"
    if mapping.payload == "binary":
        records.add(single, bytes(payload))
    else:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Refusal("invalid_utf8", f"byte {exc.start} is not UTF-8")
        if mapping.payload == "text":
            records.add(single, text)
        elif mapping.payload == "number":
            number = _parse_number(text)
            if number is None:
                return Refusal("not_a_number", "payload is not a decimal number")
            records.add(single, number)
        else:
            parsed, error = _parse_json(text)
            if error is not None:
                if mapping.payload == "json":
                    return Refusal("malformed_json", error)
                number = _parse_number(text)
                records.add(single, number if number is not None else text)
            elif isinstance(parsed, dict):
                kind = "object"
                records.add_object(parsed)
            elif isinstance(parsed, list):
                refusal = _add_pack(records, parsed)
                if refusal is not None:
                    if mapping.payload == "json":
                        return refusal
                    records.add(single, text)
                else:
                    kind = "pack"
            elif parsed is None:
                return Refusal("no_values", "payload is JSON null")
            else:
                records.add(single, parsed)
    if not records.records:
        return Refusal("no_values", "no field could be bridged")
    records.records[0] = {"n": records.records[0]["n"], "bt": now_ms // 1000,
                          **{k: v for k, v in records.records[0].items() if k != "n"}}  # fmt: skip
    origin: dict[str, Any] = {"topic": topic}
    if retained:
        origin["retained"] = True
    body = ", ".join(records.words)
    content = {"msgtype": mapping.msgtype, "body": body, SENML_KEY: records.records, MQTT_KEY: origin}
    return Translated(content, kind, tuple(records.paths))


#: One decoder for every payload (json.loads with options would build a new one per call).
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def _parse_json(text: str) -> tuple[Any, str | None]:
    try:
        return _DECODER.decode(text), None
    except RecursionError:
        return None, "JSON nested too deeply"
    except (ValueError, ArithmeticError) as exc:  # Decimal refuses some exponents (1.5e3333…) with InvalidOperation
        return None, f"not JSON: {str(exc)[:80]}"


def _add_pack(records: _Records, pack: list[Any]) -> Refusal | None:
    """Add the records of an RFC 8428 JSON pack (base name and base unit resolved)."""
    if not pack or not all(isinstance(r, dict) for r in pack):
        return Refusal("malformed_senml", "a JSON array must be a SenML pack of objects")
    base_name, base_unit = "", ""
    staged: list[tuple[str, Any, str]] = []
    for record in pack:
        if isinstance(record.get("bn"), str):
            base_name = record["bn"]
        if isinstance(record.get("bu"), str):
            base_unit = record["bu"]
        name = base_name + (record.get("n") if isinstance(record.get("n"), str) else "")
        values = [k for k in ("v", "vs", "vb", "vd") if k in record]
        if not name or len(values) != 1 or _NAME_BAD.search(name) or not name[:1].isalnum():
            return Refusal("malformed_senml", "each SenML record needs a valid name and exactly one value")
        value = record[values[0]]
        if values[0] == "v" and (isinstance(value, bool) or not isinstance(value, (int, Decimal))):
            return Refusal("malformed_senml", f"{name}: 'v' must be a number")
        if values[0] == "vs" and not isinstance(value, str):
            return Refusal("malformed_senml", f"{name}: 'vs' must be a string")
        if values[0] == "vb" and not isinstance(value, bool):
            return Refusal("malformed_senml", f"{name}: 'vb' must be a boolean")
        if values[0] == "vd":
            if not isinstance(value, str):
                return Refusal("malformed_senml", f"{name}: 'vd' must be a string")
            try:
                value = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            except ValueError:
                return Refusal("malformed_senml", f"{name}: 'vd' is not base64url")
        unit = record.get("u", base_unit)
        staged.append((name, value, unit if isinstance(unit, str) else ""))
    for name, value, unit in staged:
        before = len(records.records)
        records.add(name, value)
        if unit and len(records.records) > before and "u" not in records.records[-1]:
            records.records[-1] = {"n": records.records[-1]["n"], "u": unit,
                                   **{k: v for k, v in records.records[-1].items() if k != "n"}}  # fmt: skip
            records.words[-1] += f" {unit}"
    return None


def payload_digest(payload: bytes) -> bytes:
    """The 16-byte digest that identifies a payload in the ingestion table."""
    return hashlib.sha256(payload).digest()[:16]


# ------------------------------------------------------------------ outbound


def reading_text(record: dict[str, Any]) -> str | None:
    """A SenML record's value as JSON text (numbers exact), or None."""
    if "v" in record and isinstance(record["v"], int) and not isinstance(record["v"], bool):
        scale = record.get("scale_", 0)
        return format_reading(record["v"], scale if isinstance(scale, int) and not isinstance(scale, bool) else 0)
    if isinstance(record.get("vb"), bool):
        return "true" if record["vb"] else "false"
    if isinstance(record.get("vs"), str):
        return json.dumps(record["vs"], ensure_ascii=False)
    if isinstance(record.get("vd"), str):
        return json.dumps(record["vd"])
    return None


def _one_topic_level(text: str) -> bool:
    """Whether ``text`` may stand in a topic a client publishes to (no wildcard, no NUL, at most 128 bytes)."""
    return not any(c in text for c in "+#\x00") and len(text.encode("utf-8", "surrogatepass")) <= 128


def outbound_message(
    mapping: OutboundMapping, event_type: str, sender: str, content: dict[str, Any]
) -> tuple[str, bytes] | Refusal:
    """(topic, payload) for one room event, or why it is not published.

    Refusal reasons: ``not_a_message``, ``msgtype``, ``edit``, ``bad_sender``
    (a sender whose localpart cannot be a topic level), ``no_device``,
    ``bad_device``, ``no_telemetry``.
    """
    if event_type != "m.room.message":
        return Refusal("not_a_message")
    if content.get("msgtype") not in mapping.msgtypes:
        return Refusal("msgtype")
    relates = content.get("m.relates_to")
    if isinstance(relates, dict) and relates.get("rel_type") == "m.replace":
        return Refusal("edit", "edits are not published")
    localpart = sender[1:].split(":", 1)[0]
    topic = mapping.topic.replace("{sender}", localpart.replace("/", "_"))
    if "{sender}" in mapping.topic and not _one_topic_level(localpart):
        return Refusal("bad_sender", f"{localpart[:40]!r} cannot be a topic level (+, #, NUL or too long)")
    body = content.get("body")
    if mapping.format in ("body", "content"):
        if "{device}" in topic:
            text = body if isinstance(body, str) else ""
            device, _, rest = text.strip().partition(" ")
            if not device or not rest.strip():
                return Refusal("no_device", "the body must start with a device name, then the payload")
            if "/" in device or not _one_topic_level(device):
                return Refusal("bad_device", f"{device[:40]!r} is not a single topic level")
            topic = topic.replace("{device}", device)
            body = rest.strip()
        if mapping.format == "body":
            if not isinstance(body, str):
                return Refusal("msgtype", "the event has no text body")
            return topic, body.encode("utf-8", "surrogatepass")
        if "{device}" in mapping.topic:
            content = {**content, "body": body}
        text = json.dumps(content, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return topic, text.encode("utf-8", "surrogatepass")
    records = content.get(SENML_KEY)
    if not isinstance(records, list):
        return Refusal("no_telemetry", "the event carries no SenML records")
    pairs = []
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("n"), str):
            text = reading_text(record)
            if text is not None:
                pairs.append((record, text))
    if not pairs:
        return Refusal("no_telemetry", "no SenML record has a value")
    if mapping.format == "state":
        state = ",".join(f"{json.dumps(r['n'], ensure_ascii=False)}:{text}" for r, text in pairs)
        return topic, ("{" + state + "}").encode()
    items = []
    for record, text in pairs:
        key = {"vb": "vb", "vs": "vs", "vd": "vd"}.get(next((k for k in ("vb", "vs", "vd") if k in record), "v"), "v")
        fields = [f'"n":{json.dumps(record["n"], ensure_ascii=False)}']
        if isinstance(record.get("bt"), int):
            fields.append(f'"bt":{record["bt"]}')
        if isinstance(record.get("u"), str):
            fields.append(f'"u":{json.dumps(record["u"])}')
        fields.append(f'"{key}":{text}')
        items.append("{" + ",".join(fields) + "}")
    return topic, ("[" + ",".join(items) + "]").encode()
