"""One advertisement → decoded sensor values, through the parser libraries. Pure code, no I/O.

The formats are decoded by the libraries Home Assistant uses, never by our
own byte parsing: ``bthome-ble`` (BTHome v1/v2, encrypted v2 with a
per-device bindkey: AES-CCM, 4-byte counter, 4-byte tag), ``xiaomi-ble``
(MiBeacon, plain and encrypted), ``govee-ble``, ``inkbird-ble`` and
``ruuvitag-ble``. Each takes home-assistant-bluetooth's
``BluetoothServiceInfoBleak``, built here from our
:class:`~lowband.gateway.ble.advert.Advertisement`.

Rules:

* every call uses a fresh parser object: the libraries keep per-device state
  (their own duplicate filter, a replay check that lets counters below 100
  through, the last advertisement), and all of that is the tracker's job
  here (``tracker.py``), written once and tested with vectors. What a call
  reads back are the parser's public results: the values, the units, and the
  ``packet_id`` / ``encryption_counter`` / ``encryption_scheme`` /
  ``downgrade_detected`` / ``bindkey_verified`` attributes bthome-ble
  documents;
* :func:`decode` never raises on remote input: a packet a library chokes on
  (empty, truncated, hostile) is a :class:`Refusal` whose ``kind`` is also the
  counter's name;
* the libraries log every odd packet at WARNING or ERROR; a flood of hostile
  advertisements would be a flood of log lines, so their loggers are set to
  CRITICAL here: refusals are counted and summarised by the component instead.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from lowband.gateway.ble.advert import Advertisement, full_uuid

#: Formats a sensor can be configured with; ``auto`` picks by what the advertisement carries.
FORMATS = ("auto", "bthome", "xiaomi", "govee", "inkbird", "ruuvitag")

BTHOME_UUIDS = frozenset(full_uuid(u) for u in (0xFCD2, 0x181C, 0x181E))
MIBEACON_UUID = full_uuid(0xFE95)
RUUVI_COMPANY = 0x0499

#: Values the libraries report that are not readings of the sensor.
_NOT_READINGS = frozenset({"signal_strength", "packet_id", "rssi"})
_SENML_NAME_BAD = re.compile(r"[^A-Za-z0-9:./_-]")

#: The libraries' units (sensor-state-data ``Units``) → SenML units (RFC 8428 §12.1 and RFC 8798).
_UNITS = {"°C": "Cel", "°F": "degF", "K": "K", "lx": "lx", "μs": "us", "µS/cm": "uS/cm", "m³": "m3", "µg": "ug",
          "µg/m³": "ug/m3", "μg/m³": "ug/m3", "ppm": "ppm", "W": "W", "kWh": "kWh", "Wh": "Wh", "V": "V", "mV": "mV",
          "A": "A", "mA": "mA", "Pa": "Pa", "hPa": "hPa", "kPa": "kPa", "dBm": "dBm", "s": "s", "ms": "ms",
          "m": "m", "mm": "mm", "cm": "cm", "kg": "kg", "g": "g", "Hz": "Hz", "L": "l", "mL": "ml", "m³/h": "m3/h",
          "°": "deg", "m/s": "m/s", "m/s²": "m/s2"}  # fmt: skip
#: Percentages say what of: SenML has %RH (humidity) and %EL (battery level).
_PERCENT_UNITS = {"humidity": "%RH", "moisture": "%", "battery": "%EL"}

_LIBRARY_LOGGERS = ("bthome_ble", "xiaomi_ble", "govee_ble", "inkbird_ble", "ruuvitag_ble",
                    "bluetooth_sensor_state_data", "sensor_state_data")  # fmt: skip
for _name in _LIBRARY_LOGGERS:
    logging.getLogger(_name).setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one advertisement (or one GATT notification) says.

    ``values`` by SenML name (binary sensors as 1/0), ``units`` SenML units
    for the values that have one. ``packet_id`` is the format's own packet
    number (BTHome object 0x00, the MiBeacon frame counter), ``counter`` the
    authenticated encryption counter of an encrypted packet (BTHome v2,
    MiBeacon v4/v5), ``payload`` the bytes
    the format was decoded from (to tell a repeat from a new packet).
    """

    values: dict[str, float]
    units: dict[str, str] = field(default_factory=dict)
    packet_id: int | None = None
    encrypted: bool = False
    counter: int | None = None
    format: str = ""
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an advertisement gives no reading; ``kind`` is the counter's name.

    Kinds: ``malformed`` (the library could not read it), ``no_values``
    (nothing we could post: unknown object ids only, an empty frame),
    ``unknown_format``, ``no_key`` (encrypted, and no key is configured),
    ``decrypt_failed`` (wrong key or a forged tag), ``downgrade`` (plaintext
    from a sensor that has a key); the tracker adds ``replay``.
    """

    kind: str
    detail: str = ""


def decode(adv: Advertisement, fmt: str = "auto", key: bytes | None = None) -> Decoded | Refusal:
    """Decode ``adv`` as format ``fmt`` (one of :data:`FORMATS`) with the sensor's bindkey ``key``.

    Never raises for anything the advertisement holds; a ``fmt`` not in
    :data:`FORMATS` is a local error (ValueError).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown BLE format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = guess_format(adv)
        if not fmt:
            return Refusal("unknown_format", "no known format's service data or company id")
    try:
        return _DECODERS[fmt](adv, key)
    except Exception as exc:  # noqa: BLE001 - a library broke on remote bytes: a value, never a crash of the pump
        return Refusal("malformed", f"{fmt}: {type(exc).__name__}: {exc}"[:200])


def guess_format(adv: Advertisement) -> str:
    """The format ``adv`` most likely carries ("" when none): by service data UUID, then company id, then name."""
    if any(u in BTHOME_UUIDS for u in adv.service_data):
        return "bthome"
    if MIBEACON_UUID in adv.service_data:
        return "xiaomi"
    if RUUVI_COMPANY in adv.manufacturer_data:
        return "ruuvitag"
    name = (adv.local_name or "").lower()
    if adv.manufacturer_data and (name.startswith(("gv", "govee", "ihoment", "minger")) or not name):
        return "govee"
    if adv.manufacturer_data and name in ("sps", "tps", "ibs-th", "ibs-th2") or name.startswith(("ith-", "iam-")):
        return "inkbird"
    return ""


# ----------------------------------------------------------------- libraries


def service_info(adv: Advertisement) -> Any:
    """home-assistant-bluetooth's ``BluetoothServiceInfoBleak`` for ``adv`` (what every parser takes)."""
    from bleak.backends.device import BLEDevice
    from home_assistant_bluetooth import BluetoothServiceInfoBleak

    name = adv.local_name or adv.address
    return BluetoothServiceInfoBleak(
        name=name, address=adv.address, rssi=adv.rssi if adv.rssi is not None else -127,
        manufacturer_data=dict(adv.manufacturer_data), service_data=dict(adv.service_data),
        service_uuids=list(adv.service_uuids), source="lowband", device=BLEDevice(adv.address, name, None),
        advertisement=None, connectable=False, time=adv.time, tx_power=None,
    )  # fmt: skip


def _bthome(adv: Advertisement, key: bytes | None) -> Decoded | Refusal:
    from bthome_ble import BTHomeBluetoothDeviceData
    from bthome_ble.parser import EncryptionScheme

    payload = next((adv.service_data[u] for u in adv.service_data if u in BTHOME_UUIDS), b"")
    if not payload:
        return Refusal("malformed", "BTHome service data is empty")
    parser = BTHomeBluetoothDeviceData(key)
    update = parser.update(service_info(adv))
    encrypted = parser.encryption_scheme is EncryptionScheme.BTHOME_BINDKEY
    if parser.downgrade_detected:
        return Refusal("downgrade", "plaintext BTHome from a sensor with a key")
    if encrypted and not parser.bindkey_verified:
        if key is None:
            return Refusal("no_key", "encrypted BTHome and no key configured")
        return Refusal("decrypt_failed", "encrypted BTHome does not decrypt with the configured key")
    values, units = _values(update)
    if not values:
        return Refusal("no_values", f"BTHome payload {payload.hex()[:64]} holds no known object")
    packet_id = int(parser.packet_id) if parser.packet_id is not None else None
    counter = int(parser.encryption_counter) if encrypted else None
    return Decoded(values, units, packet_id, encrypted, counter, "bthome", payload)


def _xiaomi(adv: Advertisement, key: bytes | None) -> Decoded | Refusal:
    from xiaomi_ble import XiaomiBluetoothDeviceData
    from xiaomi_ble.parser import EncryptionScheme

    payload = adv.service_data.get(MIBEACON_UUID, b"")
    if len(payload) < 5:
        return Refusal("malformed", "MiBeacon frame shorter than its 5-byte header")
    parser = XiaomiBluetoothDeviceData(key)
    update = parser.update(service_info(adv))
    encrypted = parser.encryption_scheme is not EncryptionScheme.NONE
    if key is not None and not encrypted:
        return Refusal("downgrade", "plaintext MiBeacon from a sensor with a key")
    if encrypted and not parser.bindkey_verified:
        if key is None:
            return Refusal("no_key", "encrypted MiBeacon and no key configured")
        return Refusal("decrypt_failed", "encrypted MiBeacon does not decrypt with the configured key")
    values, units = _values(update)
    if not values:
        return Refusal("no_values", f"MiBeacon frame {payload.hex()[:64]} holds no known object")
    # The MiBeacon frame counter (byte 4 of the frame header) numbers the packet. An encrypted v4/v5 frame also
    # carries a 3-byte extended counter before its tag: with the frame counter as low byte, the 32-bit counter
    # that the (now verified) nonce holds.
    counter = None
    if encrypted and payload[1] >> 4 >= 4 and len(payload) >= 12:
        counter = payload[4] | int.from_bytes(payload[-7:-4], "little") << 8
    return Decoded(values, units, payload[4], encrypted, counter, "xiaomi", payload)


def _simple(fmt: str, make: Callable[[], Any]) -> Callable[[Advertisement, bytes | None], Decoded | Refusal]:
    def decode_one(adv: Advertisement, key: bytes | None) -> Decoded | Refusal:
        if not adv.manufacturer_data:
            return Refusal("malformed", f"{fmt}: no manufacturer data")
        update = make().update(service_info(adv))
        values, units = _values(update)
        if not values:
            return Refusal("no_values", f"{fmt}: nothing decoded")
        raw = b"".join(k.to_bytes(2, "little") + v for k, v in sorted(adv.manufacturer_data.items()))
        return Decoded(values, units, None, False, None, fmt, raw)

    return decode_one


def _govee() -> Any:
    from govee_ble import GoveeBluetoothDeviceData

    return GoveeBluetoothDeviceData()


def _inkbird() -> Any:
    from inkbird_ble import INKBIRDBluetoothDeviceData

    return INKBIRDBluetoothDeviceData()


def _ruuvitag() -> Any:
    from ruuvitag_ble import RuuvitagBluetoothDeviceData

    return RuuvitagBluetoothDeviceData()


_DECODERS: dict[str, Callable[[Advertisement, bytes | None], Decoded | Refusal]] = {
    "bthome": _bthome,
    "xiaomi": _xiaomi,
    "govee": _simple("govee", _govee),
    "inkbird": _simple("inkbird", _inkbird),
    "ruuvitag": _simple("ruuvitag", _ruuvitag),
}


# ----------------------------------------------------------------- values


def _values(update: Any) -> tuple[dict[str, float], dict[str, str]]:
    """The numeric readings of a sensor-state-data ``SensorUpdate`` and their SenML units."""
    values: dict[str, float] = {}
    units: dict[str, str] = {}
    for device_key, value in update.entity_values.items():
        name = senml_name(device_key.key)
        number = value.native_value
        if not name or name in _NOT_READINGS or isinstance(number, bool) or not isinstance(number, (int, float)):
            continue
        if not math.isfinite(number):
            continue
        values[name] = number
        description = update.entity_descriptions.get(device_key)
        unit = getattr(description, "native_unit_of_measurement", None)
        senml = senml_unit(name, str(unit) if unit is not None else "")
        if senml:
            units[name] = senml
    for device_key, value in update.binary_entity_values.items():
        name = senml_name(device_key.key)
        if name and isinstance(value.native_value, bool):
            values[name] = 1 if value.native_value else 0
    return values, units


def senml_name(key: Any) -> str:
    """A library's value key as a SenML name ("" when nothing is left of it)."""
    text = _SENML_NAME_BAD.sub("_", str(key)).strip("_")[:64]
    return text if text and text[0].isalnum() else ""


def senml_unit(name: str, unit: str) -> str:
    """The SenML unit for a library unit of value ``name`` (``%`` depends on what is measured)."""
    if unit == "%":
        base = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
        return _PERCENT_UNITS.get(base, "%")
    return _UNITS.get(unit, unit)


#: Largest integer canonical JSON carries exactly.
_SAFE_INT = (1 << 53) - 1


def mantissa_scale(value: float) -> tuple[int, int] | None:
    """``value`` as (mantissa, scale) with ``mantissa × 10**scale`` its shortest decimal text.

    The scale stays within -9..9 (the compact telemetry channel's range):
    finer digits are rounded off, larger exponents are written out. None for
    a value that does not fit a JSON-safe mantissa.
    """
    try:
        number = Decimal(int(value)) if isinstance(value, int) else Decimal(repr(float(value)))
        number = number.normalize()
        if number == 0:
            return 0, 0
        exponent = number.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -9:  # finer than a nano-unit: rounded off
            number = number.quantize(Decimal("1e-9")).normalize()
            if number == 0:
                return 0, 0
            exponent = number.as_tuple().exponent
        if not isinstance(exponent, int):
            return None
        if exponent > 0:
            mantissa, scale = int(number), 0
        else:
            mantissa, scale = int(number.scaleb(-exponent)), exponent
    except (InvalidOperation, ValueError, OverflowError):
        return None
    if abs(mantissa) > _SAFE_INT:
        return None
    return mantissa, scale
