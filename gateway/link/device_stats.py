"""Figures per device on a link: what went in and out, what was refused, airtime, the last reading (sans-I/O).

Rules:

* one :class:`DeviceCounters` per device name, made by the runtime and
  handed to the link core (:meth:`GatewayLink.add_device`), which bumps its
  plain integers as frames come and go: no allocation per frame, no clock
  read (``now`` is the core's monotonic time);
* the object outlives a key rotation (the core forgets the old entry, the
  runtime hands the same counters to the new one); figures are since the
  gateway started, memory only;
* "seen" means a frame that authenticated and was not refused: it sets
  ``last_seen`` and, when the link knows its rate, adds the frame's time on
  air to the device's :class:`AirtimeWindow`. A replayed old frame opens
  with a valid tag but is refused, so it never makes a silent device look
  alive nor spends its budget;
* :func:`snapshot` turns the counters into the JSON-ready dictionary of
  ``LinkRuntime.device_stats()`` (the shape in docs/metrics.md and the
  status page); a figure that cannot be known is ``None``, never made up.

Signal quality: the LoRa link speaks through a transparent UART modem
(gateway/link/lora_modem.py), which hands over the packet's bytes and
nothing else, and a serial line has no such figure; so ``rssi_dbm`` and
``snr_db`` stay ``None`` on every link Lowband drives today.
:meth:`DeviceCounters.note_signal` is where a modem driver that reports
them (an AT-command modem's ``+RCV=addr,len,data,rssi,snr``) records them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Seconds of the sliding airtime window (the duty-cycle window of EU868 and of the shipped regions).
AIRTIME_WINDOW_S = 3600.0
#: Buckets of the window: airtime older than the window leaves it a bucket (a minute) at a time.
AIRTIME_BUCKETS = 60
#: Channel units of a battery reading, as SenML writes them, and the unit the figures give.
_BATTERY_UNITS = {"V": "V", "%": "%", "%EL": "%"}
_BATTERY_NAMES = ("battery", "bat", "batt")
#: Counted per device by the core beside its refusals, but not refusals: the frame was answered or is waiting.
NOT_REFUSALS = frozenset({"duplicate", "awaiting_commit", "delivery_failed"})


def wire_len(frame_len: int) -> int:
    """Bytes a link frame of ``frame_len`` bytes takes on a serial line or in a modem packet (COBS and delimiter).

    Exact for a frame under 254 bytes (it grows by 2, codecs/link_frame.py
    ``serial_encode``); for a longer one, the most it can take (a run of 254
    bytes without a zero costs a code byte more).
    """
    return frame_len + max(1, -(-frame_len // 254)) + 1


class AirtimeWindow:
    """Seconds on air in the last ``window_s`` seconds, kept in fixed buckets (no allocation as it fills).

    The total covers the current bucket and the ``buckets - 1`` before it, so
    it reaches back between ``window_s - window_s / buckets`` and ``window_s``.
    """

    __slots__ = ("_bucket_s", "_seconds", "_slots", "window_s")

    def __init__(self, window_s: float = AIRTIME_WINDOW_S, buckets: int = AIRTIME_BUCKETS) -> None:
        """Raises ValueError for a window or a bucket count that is not positive."""
        if not window_s > 0 or buckets < 1:
            raise ValueError(
                f"an airtime window needs a positive length and bucket count, got {window_s!r}, {buckets!r}"
            )
        self.window_s = float(window_s)
        self._bucket_s = self.window_s / buckets
        self._seconds = [0.0] * buckets
        self._slots = [-1] * buckets  # the bucket number (now // bucket length) each entry holds

    def add(self, seconds: float, now: float) -> None:
        """Count ``seconds`` on air at monotonic time ``now`` (seconds)."""
        slot = int(now // self._bucket_s)
        index = slot % len(self._slots)
        if self._slots[index] != slot:
            self._slots[index], self._seconds[index] = slot, 0.0
        self._seconds[index] += seconds

    def total(self, now: float) -> float:
        """Seconds on air counted within the window that ends at ``now``."""
        slot = int(now // self._bucket_s)
        oldest = slot - len(self._slots)
        return sum(s for s, k in zip(self._seconds, self._slots, strict=True) if oldest < k <= slot)


@dataclass(slots=True)
class DeviceCounters:
    """What one device did on its link since the gateway started; the core and the runtime bump it."""

    frames_in: int = 0  # frames parsed with the device's address, refused or not
    frames_out: int = 0
    bytes_in: int = 0  # link frame bytes (before COBS: see wire_len)
    bytes_out: int = 0
    retransmissions_in: int = 0  # the device's latest frame again (its retry, or a copy of it)
    retransmissions_out: int = 0  # frames the gateway sent again (a repeated ACK or HS2, an unacked command)
    handshakes: int = 0  # valid HS1 answered with a new HS2
    refused: dict[str, int] = field(default_factory=dict)
    last_seen: float | None = None  # the core's monotonic now of the last authenticated frame not refused
    rssi_dbm: float | None = None
    snr_db: float | None = None
    airtime: AirtimeWindow = field(default_factory=AirtimeWindow)
    last_reading: dict[str, Any] | None = None
    battery: dict[str, Any] | None = None

    def note_signal(self, rssi_dbm: float | None, snr_db: float | None) -> None:
        """Record the signal of the device's latest frame, from a radio that reports it."""
        self.rssi_dbm, self.snr_db = rssi_dbm, snr_db

    def note_reading(self, content: dict[str, Any], ts_ms: int) -> bool:
        """Keep the values of a telemetry event's content (``org.lowband.senml``); whether it held any.

        Content without a SenML pack of numbers (a text message, a generic
        event) changes nothing. Never raises on odd content.
        """
        reading = reading_from_content(content, ts_ms)
        if reading is None:
            return False
        self.last_reading = reading
        self.battery = battery_of(reading)
        return True


def reading_from_content(content: dict[str, Any], ts_ms: int) -> dict[str, Any] | None:
    """``{"ts_ms", "values": {name: float}, "units": {name: unit}}`` from a telemetry event's content, or None.

    Reads the ``org.lowband.senml`` records the compact codec writes
    (docs/protocol/compact.md, kind 1): value = ``v × 10**scale_``; a
    channel without a unit has the unit ``""``. Records that are not a
    named number are skipped; None when none is left.
    """
    records = content.get("org.lowband.senml")
    if not isinstance(records, list):
        return None
    values: dict[str, float] = {}
    units: dict[str, str] = {}
    for record in records:
        if not isinstance(record, dict):
            continue
        name, mantissa, scale = record.get("n"), record.get("v"), record.get("scale_", 0)
        if not isinstance(name, str) or isinstance(mantissa, bool) or not isinstance(mantissa, int | float):
            continue
        if isinstance(scale, bool) or not isinstance(scale, int) or not -9 <= scale <= 9:
            continue
        values[name] = mantissa / 10**-scale if scale < 0 else float(mantissa * 10**scale)
        unit = record.get("u", "")
        units[name] = unit if isinstance(unit, str) else ""
    if not values:
        return None
    return {"ts_ms": ts_ms, "values": values, "units": units}


def battery_of(reading: dict[str, Any]) -> dict[str, Any] | None:
    """``{"value", "unit": "V" | "%"}`` from a reading's battery channel, or None when it has none.

    A battery channel is one named ``battery`` (or ``bat``, ``batt``) in
    volts or percent, or any channel in SenML's ``%EL`` (energy level).
    """
    units = reading["units"]
    for name, value in reading["values"].items():
        unit = units.get(name, "")
        if unit == "%EL" or (name in _BATTERY_NAMES and unit in _BATTERY_UNITS):
            return {"value": value, "unit": _BATTERY_UNITS[unit]}
    return None


def snapshot(counters: DeviceCounters, *, link: str, address: int, session: bool, commands_pending: int,
             now: float, wall_now: float, budget_s: float | None) -> dict[str, Any]:  # fmt: skip
    """The JSON-ready figures of one device (the shape of ``LinkRuntime.device_stats()``).

    ``now`` is the core's monotonic clock and ``wall_now`` the wall clock
    (Unix seconds) read at the same moment: they turn ``last_seen`` into
    Unix milliseconds. ``budget_s`` is the device's duty-cycle budget in
    seconds per window (None: unlimited or unknown, and ``duty_cycle_left``
    is None too).
    """
    used = counters.airtime.total(now)
    last_seen = None if counters.last_seen is None else round((wall_now - (now - counters.last_seen)) * 1000)
    left = None if budget_s is None else max(0.0, min(1.0, 1.0 - used / budget_s)) if budget_s > 0 else 0.0
    return {
        "link": link, "address": address,
        "frames_in": counters.frames_in, "frames_out": counters.frames_out,
        "bytes_in": counters.bytes_in, "bytes_out": counters.bytes_out,
        "refused": dict(counters.refused),
        "retransmissions": counters.retransmissions_in + counters.retransmissions_out,
        "retransmissions_in": counters.retransmissions_in, "retransmissions_out": counters.retransmissions_out,
        "handshakes": counters.handshakes, "session": session,
        "last_seen_ms": last_seen,
        "rssi_dbm": counters.rssi_dbm, "snr_db": counters.snr_db,
        "battery": None if counters.battery is None else dict(counters.battery),
        "last_reading": _copy_reading(counters.last_reading),
        "airtime_s_window": round(used, 6), "airtime_window_s": int(counters.airtime.window_s),
        "duty_cycle_budget_s": budget_s, "duty_cycle_left": left,
        "commands_pending": commands_pending,
    }  # fmt: skip


def _copy_reading(reading: dict[str, Any] | None) -> dict[str, Any] | None:
    if reading is None:
        return None
    return {"ts_ms": reading["ts_ms"], "values": dict(reading["values"]), "units": dict(reading["units"])}


__all__ = [
    "AIRTIME_BUCKETS", "AIRTIME_WINDOW_S", "NOT_REFUSALS", "AirtimeWindow", "DeviceCounters", "battery_of",
    "reading_from_content", "snapshot", "wire_len",
]  # fmt: skip
