"""Home Assistant MQTT discovery payloads. Pure code.

Each bridged reading becomes one entity, announced with a retained config
message on ``<prefix>/<component>/<node_id>/<object_id>/config`` (the
single-component form of Home Assistant's MQTT discovery): ``sensor`` for
numbers and text, ``binary_sensor`` for booleans. Every entity names the
gateway's status topic as its availability topic, so Home Assistant shows it
unavailable when the gateway's last will fires. The gateway itself is one
``binary_sensor`` (device class ``connectivity``) on the same status topic.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

ONLINE = "online"
OFFLINE = "offline"

_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")

#: SenML units (RFC 8428 section 12.1) → Home Assistant units and device classes.
UNITS: dict[str, tuple[str, str | None]] = {
    "Cel": ("°C", "temperature"),
    "K": ("K", "temperature"),
    "%RH": ("%", "humidity"),
    "Pa": ("Pa", "pressure"),
    "hPa": ("hPa", "pressure"),
    "lx": ("lx", "illuminance"),
    "V": ("V", "voltage"),
    "A": ("A", "current"),
    "W": ("W", "power"),
    "Wh": ("Wh", "energy"),
    "kWh": ("kWh", "energy"),
    "%EL": ("%", "battery"),
    "dBm": ("dBm", "signal_strength"),
    "ppm": ("ppm", None),
    "Hz": ("Hz", "frequency"),
    "m": ("m", "distance"),
    "s": ("s", "duration"),
    "%": ("%", None),
}


def discovery_id(text: str) -> str:
    """``text`` with every character outside [a-zA-Z0-9_-] replaced by ``_``."""
    return _ID_BAD.sub("_", text)[:120] or "_"


@dataclass(frozen=True)
class Origin:
    """Who publishes the discovery messages (the gateway)."""

    server_name: str
    status_topic: str
    prefix: str
    sw_version: str = "0.1.0"

    @property
    def node_id(self) -> str:
        """The discovery node ID of this gateway."""
        return discovery_id(f"lowband_{self.server_name}")

    def origin(self) -> dict[str, str]:
        """The ``origin`` mapping of every payload."""
        return {"name": "Lowband", "sw_version": self.sw_version}

    def availability(self) -> dict[str, str]:
        """Availability keys shared by every entity."""
        return {"availability_topic": self.status_topic, "payload_available": ONLINE, "payload_not_available": OFFLINE}


def gateway_config(origin: Origin) -> tuple[str, bytes]:
    """The retained config of the gateway's own connectivity entity."""
    node = origin.node_id
    payload = {
        "name": "Gateway",
        "unique_id": f"{node}_status",
        "state_topic": origin.status_topic,
        "payload_on": ONLINE,
        "payload_off": OFFLINE,
        "device_class": "connectivity",
        "device": {"identifiers": [node], "name": f"Lowband {origin.server_name}", "manufacturer": "Lowband",
                   "model": "gateway", "sw_version": origin.sw_version},
        "origin": origin.origin(),
    }  # fmt: skip
    return f"{origin.prefix}/binary_sensor/{node}/status/config", _encode(payload)


def reading_config(
    origin: Origin,
    *,
    device: str,
    device_name: str,
    reading: str,
    state_topic: str,
    json_path: str | None,
    unit: str = "",
    kind: str = "number",
) -> tuple[str, bytes]:
    """The retained config of one bridged reading.

    ``json_path`` is the dotted path of the value in a JSON object payload,
    or None when the whole payload is the value. ``kind`` is ``number``,
    ``bool`` or ``text``.
    """
    node = origin.node_id
    object_id = discovery_id(f"{device}_{reading}")
    unique = f"{node}_{object_id}"
    if json_path is None:
        value = "value"
    else:
        value = "value_json" + "".join(f"[{json.dumps(part)}]" for part in json_path.split("."))
    payload: dict[str, Any] = {
        "name": reading,
        "unique_id": unique,
        "object_id": unique,
        "state_topic": state_topic,
        **origin.availability(),
        "device": {
            "identifiers": [discovery_id(f"{node}_{device}")],
            "name": device_name,
            "via_device": node,
        },
        "origin": origin.origin(),
    }
    if kind == "bool":
        component = "binary_sensor"
        payload["value_template"] = "{{ 'ON' if " + value + " in (true, 'true', 'ON', 'on', 1, '1') else 'OFF' }}"
        payload["payload_on"] = "ON"
        payload["payload_off"] = "OFF"
    else:
        component = "sensor"
        payload["value_template"] = "{{ " + value + " }}"
        if kind == "number":
            ha_unit, device_class = UNITS.get(unit, (unit, None))
            if ha_unit:
                payload["unit_of_measurement"] = ha_unit
            if device_class:
                payload["device_class"] = device_class
            payload["state_class"] = "total_increasing" if device_class == "energy" else "measurement"
    return f"{origin.prefix}/{component}/{node}/{object_id}/config", _encode(payload)


def record_kind(record: dict[str, Any]) -> str | None:
    """``number``, ``bool`` or ``text`` for a SenML record; None for binary data."""
    if "v" in record:
        return "number"
    if "vb" in record:
        return "bool"
    if "vs" in record:
        return "text"
    return None


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
