"""The configured BLE sensors, kept in one file in the gateway's data dir.

``lowband ble add|list|remove`` writes here whether the gateway runs or not;
a running gateway notices a change within seconds (the component polls
:meth:`BleRegistry.version`). The file holds bindkeys, so it is written
atomically with mode 0600::

    {"format": "lowband-ble-sensors", "version": 1, "sensors": [
      {"name": "kitchen", "address": "A4:C1:38:8D:18:B2", "format": "bthome",
       "key": "231d39c1d7cc1ab1aee224cd096db932", "rooms": ["!abc:gw.example"],
       "interval_s": 600, "gatt": null}]}

Every sensor speaks as ``@ble_NAME`` (:data:`USER_PREFIX`, reserved: registration
refuses it), an account the component creates with ``users.owner =
"ble:NAME"`` and never adopts when someone else made it (the rule of
gateway/devices/account.py).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lowband.gateway.ble.advert import full_uuid, normalise_address
from lowband.gateway.ble.decode import FORMATS
from lowband.gateway.homeserver.accounts import Reservation

USER_PREFIX = "ble_"
RESERVATION = Reservation("BLE sensors", prefix=USER_PREFIX)
FILE_FORMAT = "lowband-ble-sensors"
FILE_VERSION = 1
#: Environmental Sensing characteristics read by default: temperature, humidity, pressure.
ENVIRONMENTAL_SENSING = (full_uuid(0x2A6E), full_uuid(0x2A6F), full_uuid(0x2A6D))
DEFAULT_INTERVAL_S = 600.0
MAX_SENSORS = 4096

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_GATT_FORMAT = "gatt"


class BleRegistryError(ValueError):
    """A sensor cannot be added, found or stored (the message says why and how to fix it)."""


@dataclass(frozen=True)
class GattConfig:
    """A connectable sensor: the characteristics to read (or subscribe to) and where commands go."""

    characteristics: tuple[str, ...] = ENVIRONMENTAL_SENSING
    subscribe: bool = True
    poll_s: float = 60.0
    command: str | None = None


@dataclass(frozen=True)
class SensorConfig:
    """One configured sensor. ``format`` is a :data:`~lowband.gateway.ble.decode.FORMATS` name or ``gatt``."""

    name: str
    address: str
    format: str = "auto"
    key: bytes | None = None
    rooms: tuple[str, ...] = ()
    interval_s: float = DEFAULT_INTERVAL_S
    gatt: GattConfig | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        """The sensor as stored in the file."""
        gatt = None
        if self.gatt is not None:
            gatt = {"characteristics": list(self.gatt.characteristics), "subscribe": self.gatt.subscribe,
                    "poll_s": self.gatt.poll_s, "command": self.gatt.command}  # fmt: skip
        return {"name": self.name, "address": self.address, "format": self.format,
                "key": self.key.hex() if self.key else None, "rooms": list(self.rooms),
                "interval_s": self.interval_s, "gatt": gatt}  # fmt: skip


def user_id(name: str, server_name: str) -> str:
    """The Matrix user a sensor speaks as: ``@ble_NAME:server``."""
    return f"@{USER_PREFIX}{name}:{server_name}"


def account_owner(name: str) -> str:
    """The ``users.owner`` value of the account the component creates for sensor ``name``."""
    return f"ble:{name}"


def parse_key(text: str | None) -> bytes | None:
    """A bindkey from 32 hex digits (None for None or ""); BleRegistryError otherwise."""
    if not text:
        return None
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise BleRegistryError("a BLE bindkey is 32 hex digits (16 bytes)") from None
    if len(key) != 16:
        raise BleRegistryError(f"a BLE bindkey is 16 bytes (32 hex digits), not {len(key)}")
    return key


def make_sensor(
    name: str, address: str, *, format: str = "auto", key: str | bytes | None = None,
    rooms: Iterable[str] = (), interval_s: float = DEFAULT_INTERVAL_S, gatt: GattConfig | None = None,
) -> SensorConfig:  # fmt: skip
    """A validated :class:`SensorConfig`; BleRegistryError naming what is wrong."""
    if not _NAME.fullmatch(name):
        raise BleRegistryError("sensor names are 1-32 of a-z, 0-9, _ and -, starting with a letter or digit")
    try:
        address = normalise_address(address)
    except ValueError:
        raise BleRegistryError(f"{address!r} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)") from None
    if format not in FORMATS and format != _GATT_FORMAT:
        raise BleRegistryError(f"unknown format {format!r}; one of {', '.join((*FORMATS, _GATT_FORMAT))}")
    bindkey = parse_key(key) if isinstance(key, str) or key is None else key
    if bindkey is not None and len(bindkey) != 16:
        raise BleRegistryError("a BLE bindkey is 16 bytes")
    if bindkey is not None and format not in ("auto", "bthome", "xiaomi"):
        raise BleRegistryError(f"format {format!r} has no encryption: a key applies to bthome and xiaomi")
    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or not 1 <= interval_s <= 7 * 86400:
        raise BleRegistryError("interval_s must be 1 s to 7 days")
    room_list = tuple(rooms)
    for room in room_list:
        if not isinstance(room, str) or not room.startswith(("!", "#")) or ":" not in room:
            raise BleRegistryError(f"{room!r} is not a room ID (!id:server) or alias (#name:server)")
    if gatt is None and format == _GATT_FORMAT:
        gatt = GattConfig()
    if gatt is not None:
        try:
            gatt = replace(gatt, characteristics=tuple(full_uuid(c) for c in gatt.characteristics),
                           command=full_uuid(gatt.command) if gatt.command else None)  # fmt: skip
        except ValueError as exc:
            raise BleRegistryError(f"GATT characteristic: {exc}") from None
        if not gatt.characteristics:
            raise BleRegistryError("a GATT sensor needs at least one characteristic")
        if not 1 <= gatt.poll_s <= 86400:
            raise BleRegistryError("GATT poll_s must be 1 s to 1 day")
    return SensorConfig(name, address, format, bindkey, room_list, float(interval_s), gatt)


def _sensor_from_json(item: Any) -> SensorConfig:
    if not isinstance(item, dict):
        raise BleRegistryError("each sensor must be a JSON object")
    gatt_doc = item.get("gatt")
    gatt = None
    if isinstance(gatt_doc, dict):
        gatt = GattConfig(
            characteristics=tuple(gatt_doc.get("characteristics") or ENVIRONMENTAL_SENSING),
            subscribe=bool(gatt_doc.get("subscribe", True)),
            poll_s=float(gatt_doc.get("poll_s", 60.0)),
            command=gatt_doc.get("command"),
        )
    elif gatt_doc is not None:
        raise BleRegistryError("'gatt' must be an object or null")
    return make_sensor(
        str(item.get("name", "")), str(item.get("address", "")), format=str(item.get("format", "auto")),
        key=item.get("key"), rooms=item.get("rooms") or (), interval_s=item.get("interval_s", DEFAULT_INTERVAL_S),
        gatt=gatt,
    )  # fmt: skip


def sensors_path(data_dir: Path) -> Path:
    """Where the sensors file of ``data_dir`` lives."""
    return Path(data_dir) / "ble" / "sensors.json"


def has_sensors(data_dir: Path) -> bool:
    """Whether ``lowband ble add`` made a sensors file in ``data_dir`` (cheap: one stat, nothing parsed)."""
    return sensors_path(data_dir).exists()


class BleRegistry:
    """The sensors file of one data dir (``<data_dir>/ble/sensors.json``)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = sensors_path(data_dir)

    def version(self) -> tuple[int, int]:
        """Changes whenever the file does (cheap to poll): (mtime in ns, size); (0, 0) without a file."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def sensors(self) -> list[SensorConfig]:
        """Every configured sensor, by name; BleRegistryError when the file is unreadable or malformed."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BleRegistryError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise BleRegistryError(f"{self.path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
            raise BleRegistryError(f"{self.path} is not a {FILE_FORMAT} file")
        if doc.get("version") != FILE_VERSION:
            raise BleRegistryError(f"{self.path} has version {doc.get('version')!r}; this gateway reads {FILE_VERSION}")
        items = doc.get("sensors")
        if not isinstance(items, list):
            raise BleRegistryError(f"{self.path}: 'sensors' must be a list")
        try:
            sensors = [_sensor_from_json(item) for item in items]
        except BleRegistryError as exc:
            raise BleRegistryError(f"{self.path}: {exc}") from None
        return sorted(sensors, key=lambda s: s.name)

    def sensor(self, name: str) -> SensorConfig:
        """One sensor by name; BleRegistryError if there is none."""
        for sensor in self.sensors():
            if sensor.name == name:
                return sensor
        raise BleRegistryError(f"no BLE sensor named {name!r}")

    def add(self, sensor: SensorConfig, *, replace: bool = False) -> SensorConfig:
        """Store ``sensor`` (validated again); BleRegistryError if its name or address is taken (without ``replace``)."""
        sensor = make_sensor(sensor.name, sensor.address, format=sensor.format, key=sensor.key, rooms=sensor.rooms,
                             interval_s=sensor.interval_s, gatt=sensor.gatt)  # fmt: skip
        sensors = self.sensors()
        kept = []
        for other in sensors:
            if other.name == sensor.name:
                if not replace:
                    raise BleRegistryError(f"BLE sensor {sensor.name!r} exists; remove it first or replace it")
                continue
            if other.address == sensor.address:
                raise BleRegistryError(f"{sensor.address} is sensor {other.name!r} already")
            kept.append(other)
        if len(kept) >= MAX_SENSORS:
            raise BleRegistryError(f"at most {MAX_SENSORS} BLE sensors")
        self._write([*kept, sensor])
        return sensor

    def remove(self, name: str) -> SensorConfig:
        """Forget sensor ``name`` and return it; BleRegistryError if there is none."""
        sensors = self.sensors()
        gone = next((s for s in sensors if s.name == name), None)
        if gone is None:
            raise BleRegistryError(f"no BLE sensor named {name!r}")
        self._write([s for s in sensors if s.name != name])
        return gone

    def _write(self, sensors: list[SensorConfig]) -> None:
        doc = {"format": FILE_FORMAT, "version": FILE_VERSION,
               "sensors": [s.to_json() for s in sorted(sensors, key=lambda s: s.name)]}  # fmt: skip
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(doc, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
