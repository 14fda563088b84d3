"""Sans-I/O part of the GATT sensors: characteristic values, reading assembly, back-off.

Nothing here opens a connection or sleeps; ``gatt.py`` (bleak) and
``scanner.py`` feed it bytes and ``now`` and act on what it returns.

* :func:`parse_characteristic` turns the bytes of an Environmental Sensing
  characteristic (GATT Specification Supplement 3.204 Temperature 0x2A6E:
  sint16, 0.01 degC; 3.124 Humidity 0x2A6F: uint16, 0.01 %; 3.181 Pressure
  0x2A6D: uint32, 0.1 Pa) into a named value, or a :class:`GattRefusal` for
  a wrong length or the "value is not known" code. It never raises on
  remote input.
* :class:`ReadingAssembler` merges the notifications of one burst (a sensor
  notifies temperature, humidity and pressure one after the other) into one
  reading, so a room gets one event per sample, not three.
* :class:`Backoff` is the reconnect schedule: ``initial`` doubled up to
  ``maximum``, with bounded jitter from an injected random source.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"


def _sig(short: int) -> str:
    return f"{short:08x}{_BASE_UUID_TAIL}"


TEMPERATURE_UUID = _sig(0x2A6E)
HUMIDITY_UUID = _sig(0x2A6F)
PRESSURE_UUID = _sig(0x2A6D)
ENVIRONMENTAL_SENSING_SERVICE = _sig(0x181A)


@dataclass(frozen=True, slots=True)
class _Format:
    name: str  # SenML name, as decode.py names the same quantity
    unit: str  # SenML unit
    layout: struct.Struct
    scale: float
    unknown: int | None  # the "value is not known" code, if the characteristic has one


# Pressure is carried in hPa, the unit decode.py gives advertised pressure, so a room
# cannot tell a GATT barometer from an advertising one.
_FORMATS: dict[str, _Format] = {
    TEMPERATURE_UUID: _Format("temperature", "Cel", struct.Struct("<h"), 0.01, -0x8000),
    HUMIDITY_UUID: _Format("humidity", "%RH", struct.Struct("<H"), 0.01, 0xFFFF),
    PRESSURE_UUID: _Format("pressure", "hPa", struct.Struct("<I"), 0.001, None),
}

#: The characteristics :func:`parse_characteristic` understands (full lower-case UUIDs).
SUPPORTED_CHARACTERISTICS = tuple(_FORMATS)


@dataclass(frozen=True, slots=True)
class GattValue:
    """One decoded characteristic value."""

    name: str
    unit: str
    value: float


@dataclass(frozen=True, slots=True)
class GattRefusal:
    """A characteristic value that carries no reading; ``kind`` is a counter name."""

    kind: str  # "length", "unknown_value", "unsupported"
    detail: str = ""


def supported(uuid: str) -> bool:
    """Whether :func:`parse_characteristic` can decode characteristic ``uuid`` (full UUID)."""
    return uuid.lower() in _FORMATS


def value_name(uuid: str) -> str | None:
    """The value name characteristic ``uuid`` carries ("temperature"...), or None when unsupported."""
    fmt = _FORMATS.get(uuid.lower())
    return None if fmt is None else fmt.name


def parse_characteristic(uuid: str, data: bytes) -> GattValue | GattRefusal:
    """Decode the value of characteristic ``uuid`` (full UUID); never raises on ``data``."""
    fmt = _FORMATS.get(uuid.lower())
    if fmt is None:
        return GattRefusal("unsupported", uuid.lower())
    if len(data) != fmt.layout.size:
        return GattRefusal("length", f"{fmt.name}: {len(data)} bytes, expected {fmt.layout.size}")
    (raw,) = fmt.layout.unpack(data)
    if fmt.unknown is not None and raw == fmt.unknown:
        return GattRefusal("unknown_value", fmt.name)
    return GattValue(fmt.name, fmt.unit, round(raw * fmt.scale, 3))


@dataclass(frozen=True, slots=True)
class Reading:
    """Values of one sample, ready for the component (one room event)."""

    values: dict[str, float]
    units: dict[str, str]


class ReadingAssembler:
    """Merges the values of one notification burst into one :class:`Reading`.

    Rules: a pending reading is flushed (returned) when every expected
    characteristic has reported, when ``settle_s`` has passed since its first
    value (:meth:`poll` with ``now``), or before a value for a name it already
    holds is added (the old value is never overwritten, so nothing is lost).
    """

    def __init__(self, expected: Iterable[str], settle_s: float = 0.3) -> None:
        """``expected``: the value names a full sample has (e.g. temperature, humidity, pressure)."""
        if settle_s < 0:
            raise ValueError("settle_s must be >= 0")
        self.expected = frozenset(expected)
        self.settle_s = settle_s
        self._values: dict[str, float] = {}
        self._units: dict[str, str] = {}
        self._started: float | None = None

    def add(self, value: GattValue, now: float) -> list[Reading]:
        """Add one value; returns the readings now complete (zero, one or two)."""
        out: list[Reading] = []
        if value.name in self._values:
            out.extend(self.flush())
        if self._started is None:
            self._started = now
        self._values[value.name] = value.value
        self._units[value.name] = value.unit
        if self.expected and self.expected <= self._values.keys():
            out.extend(self.flush())
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`poll` must next be called, or None when nothing is pending."""
        return None if self._started is None else self._started + self.settle_s

    def poll(self, now: float) -> list[Reading]:
        """The pending reading once its settle time has passed."""
        deadline = self.next_deadline()
        if deadline is not None and now >= deadline:
            return self.flush()
        return []

    def flush(self) -> list[Reading]:
        """The pending reading now, whatever it holds (e.g. when the connection drops)."""
        if not self._values:
            self._started = None
            return []
        reading = Reading(self._values, self._units)
        self._values, self._units, self._started = {}, {}, None
        return [reading]


class Backoff:
    """Reconnect delays: ``initial`` x ``factor`` ** n, capped at ``maximum``, +- ``jitter`` (a fraction).

    :meth:`next_delay` returns the delay before the next attempt and moves on;
    :meth:`reset` after a success starts again from ``initial``.
    """

    def __init__(self, initial: float = 1.0, maximum: float = 60.0, factor: float = 2.0, jitter: float = 0.1,
                 rand: Callable[[], float] = random.random) -> None:  # fmt: skip
        """``rand`` returns floats in [0, 1) (injected so tests are exact)."""
        if not 0 < initial <= maximum:
            raise ValueError("need 0 < initial <= maximum")
        if factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rand = rand
        self.attempts = 0

    def base(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (0-based) without jitter."""
        return min(self.maximum, self.initial * self.factor ** min(attempt, 64))

    def next_delay(self) -> float:
        """The delay before the next attempt (jittered, never above ``maximum``)."""
        base = self.base(self.attempts)
        self.attempts += 1
        spread = base * self.jitter * (2 * self._rand() - 1)
        return min(self.maximum, max(0.0, base + spread))

    def reset(self) -> None:
        """A success: the next failure waits ``initial`` again."""
        self.attempts = 0
