"""``lowband bench wire``: what one event costs in bytes in each encoding.

Two reference events, both from one device into one room:

* telemetry: temperature 21.5 °C, humidity 40 %RH, battery 3.7 V;
* text message: ``{"msgtype": "m.text", "body": "temp 21.5 C"}``.

Encodings measured:

* ``http_json`` — the whole HTTP/1.1 request a Matrix client sends to post
  the event (``PUT /_matrix/client/v3/rooms/…/send/…``), request line,
  headers as matrix-nio over aiohttp sends them, and the JSON body;
* ``msc3079`` — the full event (type, room, sender, timestamp, content) as
  MSC3079 v1 CBOR;
* ``compact`` — the compact profile with the reference context table.

``compact_frame_bytes`` is the compact telemetry message in a serial frame
(COBS, CRC-16, delimiter), before encryption. Byte counts are exact and
deterministic, so this benchmark needs no anchor run: the HTTP request is
the anchor and each ratio is reported against it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from lowband.codecs import compact, framing, msc3079
from lowband.codecs.context import parse_context

ROOM = "!sensors:gw.example"
DEVICE = "@dev.kitchen:gw.example"
NOW_MS = 1767225600000

REFERENCE_CONTEXT = parse_context(
    {
        "format": "lowband-context",
        "version": 1,
        "epoch_ms": NOW_MS,
        "rooms": [ROOM],
        "senders": [DEVICE],
        "event_types": ["m.room.message"],
        "keys": ["content", "msgtype", "body"],
        "channels": [
            {"n": "temperature", "u": "Cel", "scale": -1},
            {"n": "humidity", "u": "%RH", "scale": 0},
            {"n": "battery", "u": "V", "scale": -2},
        ],
    }
)

# A Synapse-style access token of the usual length (syt_ + user + random + crc).
_TOKEN = "syt_ZGV2LmtpdGNoZW4_kQzVbRtXwYpLmNaHcEjD_2bW9fK"


def reference_events() -> dict[str, dict[str, Any]]:
    """The two reference events as the gateway would store them."""
    reading = compact.CompactForm(kind=compact.KIND_TELEMETRY, values=[(0, 215), (1, 40), (2, 370)])
    text = {
        "type": "m.room.message",
        "room_id": ROOM,
        "sender": DEVICE,
        "origin_server_ts": NOW_MS,
        "content": {"msgtype": "m.text", "body": "temp 21.5 C"},
    }
    return {"telemetry": compact.expand(reading, REFERENCE_CONTEXT, NOW_MS), "text_message": text}


def http_request(event: dict[str, Any], txn_id: str = "m1767225600000.0") -> bytes:
    """The HTTP/1.1 request a Matrix client sends to post ``event``'s content."""
    body = json.dumps(event["content"]).encode()  # matrix-nio's json.dumps defaults
    path = "/_matrix/client/v3/rooms/{}/send/{}/{}".format(
        quote(event["room_id"], safe=""), quote(event["type"], safe=""), quote(txn_id, safe="")
    )
    head = (
        f"PUT {path} HTTP/1.1\r\n"
        "Host: gw.example:8008\r\n"
        "User-Agent: nio\r\n"
        "Accept: */*\r\n"
        "Accept-Encoding: gzip, deflate\r\n"
        f"Authorization: Bearer {_TOKEN}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


def measure() -> dict[str, Any]:
    """Byte counts of both reference events in every encoding."""
    result: dict[str, Any] = {}
    for name, event in reference_events().items():
        packed = compact.encode(event, REFERENCE_CONTEXT, NOW_MS)
        result[name] = {
            "http_json": len(http_request(event)),
            "msc3079": len(msc3079.encode(event)),
            "compact": len(packed),
        }
        if name == "telemetry":
            result["compact_frame_bytes"] = len(framing.encode_frame(packed))
            result["telemetry_compact_hex"] = packed.hex()
    return result


def run() -> tuple[dict[str, Any], str]:
    """Result dict and a readable table with ratios against HTTP+JSON."""
    result = measure()
    lines = [f"{'event':<14}{'encoding':<12}{'bytes':>7}{'vs http_json':>15}"]
    for name in ("telemetry", "text_message"):
        anchor = result[name]["http_json"]
        for encoding in ("http_json", "msc3079", "compact"):
            n = result[name][encoding]
            lines.append(f"{name:<14}{encoding:<12}{n:>7}{n / anchor:>14.1%}")
    lines.append(f"compact telemetry in a serial frame (COBS+CRC-16, before encryption): {result['compact_frame_bytes']} bytes")
    lines.append(f"compact telemetry bytes: {result['telemetry_compact_hex']}")
    return result, "\n".join(lines)
