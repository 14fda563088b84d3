"""Sans-I/O bookkeeping of BLE sensors: which advertisement becomes a reading.

:meth:`SensorTracker.feed` takes one advertisement and ``now`` (monotonic
seconds) and returns events — :class:`Reading`, :class:`Refused`,
:class:`Presence` — and :meth:`SensorTracker.tick` the presence changes that
time alone causes; :meth:`SensorTracker.next_deadline` says when to tick
next. No socket, no sleep, no loop.

Rules, per configured sensor (by address):

* an advertisement that does not decode is ``Refused`` (the decoder's kind)
  and changes nothing else;
* encrypted (the AES-CCM counter of BTHome v2 or MiBeacon v4/v5): a
  counter below the last accepted one is ``Refused("replay")``; the same
  counter with the same bytes is a repeat of the last packet (a sensor sends
  each packet many times) and counted as a duplicate — a recorded copy of
  the last packet is no different, and gives no event either; the same
  counter with other bytes is a replay. The counters live in memory; across
  a restart the reading's transaction ID (address, key, counter) maps a
  packet played back to the event it already made;
* a keyed sensor's plaintext packet is ``Refused("downgrade")``;
* with a packet id (BTHome object 0x00, the MiBeacon frame counter): the
  same id as the last packet, heard again within ``dedup_window_s`` of the
  last time it was heard, is a duplicate — one event per packet however
  often and long the sensor repeats it; ids wrap at 256, so the same id
  after a silence is a new packet;
* without a packet id: the same bytes as the last accepted packet are a
  duplicate until the sensor's ``interval_s`` has passed (an unchanged
  reading is posted at most once per interval; a change at once);
* presence: a sensor not heard (accepted or duplicate) for ``interval_s ×
  silent_factor`` is reported silent once, and returned when heard again;
  the clock starts when the tracker learns of the sensor;
* a sensor makes at most ``reading_burst`` readings at once and
  ``readings_per_s`` after that (a spoofed plaintext sensor with a new
  packet id in every advertisement cannot flood its rooms); the rest are
  ``Refused("rate_limited")``;
* any other address is an unknown device, kept (last seen, RSSI, name) in an
  LRU capped at ``unknown_cap`` entries — a flood of random addresses evicts
  the oldest, memory stays bounded — and never decoded here.

Every outcome is counted (:meth:`SensorTracker.stats`).
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lowband.gateway.ble.advert import Advertisement
from lowband.gateway.ble.decode import Decoded, Refusal, decode
from lowband.gateway.ble.registry import SensorConfig

DEFAULT_UNKNOWN_CAP = 1024
DEFAULT_DEDUP_WINDOW_S = 4.0
DEFAULT_SILENT_FACTOR = 3.0
#: Readings one sensor may make in a burst, and per second after it: a spoofed plaintext sensor sending a new
#: packet id in every advertisement makes at most this many room events (the rest: ``Refused("rate_limited")``).
DEFAULT_READING_BURST = 30
DEFAULT_READINGS_PER_S = 1.0

Decoder = Callable[[Advertisement, str, "bytes | None"], "Decoded | Refusal"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One new reading of sensor ``sensor``; ``txn`` is its transaction ID (stable for this reading)."""

    sensor: str
    address: str
    decoded: Decoded
    rssi: int | None
    wall_ms: int
    txn: str


@dataclass(frozen=True, slots=True)
class Refused:
    """An advertisement of a configured sensor that gives no reading, and why (``kind``: a counter name)."""

    sensor: str
    address: str
    kind: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Presence:
    """Sensor ``sensor`` went silent (``present`` False, after ``silent_s``) or was heard again (True)."""

    sensor: str
    present: bool
    silent_s: float
    wall_ms: int


Event = Reading | Refused | Presence


@dataclass(slots=True)
class UnknownDevice:
    """An address heard that is no configured sensor (what ``lowband ble scan`` and the status page list)."""

    address: str
    first_seen: float
    last_seen: float
    rssi: int | None
    local_name: str | None
    adverts: int = 1
    last: Advertisement | None = None


@dataclass(slots=True)
class SensorState:
    """What the tracker knows of one configured sensor."""

    config: SensorConfig
    key_tag: str
    last_heard: float
    present: bool = True
    ever_heard: bool = False
    rssi: int | None = None
    last_counter: int | None = None
    last_counter_payload: bytes = b""
    last_packet_id: int | None = None
    last_packet_time: float = 0.0
    last_payload: bytes = b""
    last_payload_time: float = 0.0
    readings: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    tokens: float = DEFAULT_READING_BURST
    tokens_at: float = 0.0


def _key_tag(key: bytes | None) -> str:
    """A short tag of a bindkey for transaction IDs: a re-keyed sensor's counters start afresh."""
    return hashlib.sha256(key).hexdigest()[:8] if key else "plain"


class SensorTracker:
    """Decides, advertisement by advertisement, what becomes a reading (see the module's rules)."""

    def __init__(
        self, sensors: Iterable[SensorConfig] = (), *, now: float = 0.0, unknown_cap: int = DEFAULT_UNKNOWN_CAP,
        dedup_window_s: float = DEFAULT_DEDUP_WINDOW_S, silent_factor: float = DEFAULT_SILENT_FACTOR,
        reading_burst: int = DEFAULT_READING_BURST, readings_per_s: float = DEFAULT_READINGS_PER_S,
        decoder: Decoder = decode,
    ) -> None:  # fmt: skip
        if unknown_cap < 0:
            raise ValueError("unknown_cap must be >= 0")
        self.unknown_cap = unknown_cap
        self.dedup_window_s = dedup_window_s
        self.silent_factor = silent_factor
        self.reading_burst = reading_burst
        self.readings_per_s = readings_per_s
        self.decoder = decoder
        self._sensors: dict[str, SensorState] = {}  # by address
        self._by_name: dict[str, SensorState] = {}
        self._unknown: OrderedDict[str, UnknownDevice] = OrderedDict()
        self.counts: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.set_sensors(sensors, now)

    # ------------------------------------------------------------ sensors

    def set_sensors(self, sensors: Iterable[SensorConfig], now: float) -> None:
        """Replace the configured sensors; a sensor that stays (same address and key) keeps its state."""
        fresh: dict[str, SensorState] = {}
        for config in sensors:
            tag = _key_tag(config.key)
            old = self._sensors.get(config.address)
            if old is not None and old.key_tag == tag:
                old.config = config
                fresh[config.address] = old
            else:
                fresh[config.address] = SensorState(config, tag, last_heard=now, tokens=self.reading_burst,
                                                     tokens_at=now)  # fmt: skip
            self._unknown.pop(config.address, None)
        self._sensors = fresh
        self._by_name = {state.config.name: state for state in fresh.values()}

    def sensor_states(self) -> list[SensorState]:
        """The configured sensors' states, by name."""
        return sorted(self._sensors.values(), key=lambda s: s.config.name)

    def unknown_devices(self) -> list[UnknownDevice]:
        """The unknown addresses tracked, most recently heard last."""
        return list(self._unknown.values())

    # ------------------------------------------------------------ input

    def feed(self, adv: Advertisement, now: float) -> list[Event]:
        """The events one advertisement causes (often none: a duplicate, an unknown device)."""
        self.counts["adverts"] += 1
        state = self._sensors.get(adv.address)
        if state is None:
            self._track_unknown(adv, now)
            return []
        config = state.config
        if config.format == "gatt":
            self._heard(state, adv.rssi, now)  # a connectable sensor advertising: it is in range
            return self._returned(state, now, adv.wall_ms)
        result = self.decoder(adv, config.format, config.key)
        if isinstance(result, Refusal):
            return [self._refuse(state, result.kind, result.detail)]
        return self._take(state, result, now, adv.wall_ms, adv.rssi)

    def feed_decoded(
        self, name: str, decoded: Decoded, now: float, wall_ms: int, rssi: int | None = None
    ) -> list[Event]:
        """The events of values already decoded for sensor ``name`` (an advertisement's or a GATT reading's).

        An unknown ``name`` gives ``Refused(kind="unknown_sensor")``.
        """
        state = self._by_name.get(name)
        if state is None:
            self.refusals["unknown_sensor"] += 1
            return [Refused(name, "", "unknown_sensor", "no configured sensor of that name")]
        return self._take(state, decoded, now, wall_ms, rssi)

    def _take(self, state: SensorState, decoded: Decoded, now: float, wall_ms: int, rssi: int | None) -> list[Event]:
        verdict = self._judge(state, decoded, now)
        if verdict == "duplicate":
            self.counts["duplicates"] += 1
            self._heard(state, rssi, now)
            return self._returned(state, now, wall_ms)
        if verdict:
            return [self._refuse(state, verdict, f"packet {decoded.payload.hex()[:48]}")]
        state.tokens = min(self.reading_burst, state.tokens + (now - state.tokens_at) * self.readings_per_s)
        state.tokens_at = now
        if state.tokens < 1:
            return [self._refuse(state, "rate_limited", f"more than {self.readings_per_s:g} readings/s")]
        state.tokens -= 1
        self._heard(state, rssi, now)
        events: list[Event] = list(self._returned(state, now, wall_ms))
        state.readings += 1
        self.counts["readings"] += 1
        events.append(Reading(state.config.name, state.config.address, decoded, rssi, wall_ms,
                              self._txn(state, decoded, wall_ms)))  # fmt: skip
        return events

    def _judge(self, state: SensorState, decoded: Decoded, now: float) -> str:
        """Empty to accept, "duplicate", or a refusal kind; updates the sensor's last packet on acceptance."""
        if state.config.key is not None and not decoded.encrypted and decoded.format != "gatt":
            return "downgrade"
        if decoded.counter is not None:
            last = state.last_counter
            if last is not None:
                if decoded.counter < last:
                    return "replay"
                if decoded.counter == last:
                    return "duplicate" if decoded.payload == state.last_counter_payload else "replay"
            state.last_counter = decoded.counter
            state.last_counter_payload = decoded.payload
            return ""
        if decoded.packet_id is not None:
            if decoded.packet_id == state.last_packet_id and now - state.last_packet_time < self.dedup_window_s:
                state.last_packet_time = now  # the window slides while the sensor repeats the packet
                return "duplicate"
            state.last_packet_id = decoded.packet_id
            state.last_packet_time = now
            return ""
        if decoded.format == "gatt":
            return ""  # each notification or read is a reading of its own
        if decoded.payload == state.last_payload and now - state.last_payload_time < state.config.interval_s:
            return "duplicate"
        state.last_payload = decoded.payload
        state.last_payload_time = now
        return ""

    def _txn(self, state: SensorState, decoded: Decoded, wall_ms: int) -> str:
        # An encryption counter numbers a packet for good (under one key): the same counter heard again after
        # a gateway restart maps to the event already made. Packet ids wrap at 256, so those readings carry
        # the time too.
        if decoded.counter is not None:
            return f"{state.config.address}/{state.key_tag}/c{decoded.counter}"
        if decoded.packet_id is not None:
            return f"{state.config.address}/p{decoded.packet_id}/{wall_ms}"
        return f"{state.config.address}/t{wall_ms}/{state.readings}"

    def _refuse(self, state: SensorState, kind: str, detail: str) -> Refused:
        self.refusals[kind] += 1
        state.refused[kind] += 1
        return Refused(state.config.name, state.config.address, kind, detail)

    def _heard(self, state: SensorState, rssi: int | None, now: float) -> None:
        state.last_heard = now
        state.ever_heard = True
        if rssi is not None:
            state.rssi = rssi

    def _returned(self, state: SensorState, now: float, wall_ms: int) -> list[Event]:
        if state.present:
            return []
        state.present = True
        self.counts["returned"] += 1
        return [Presence(state.config.name, True, 0.0, wall_ms)]

    def heard(self, name: str, now: float, wall_ms: int, rssi: int | None = None) -> list[Event]:
        """Sensor ``name`` is known to be there (a GATT connection came up): presence only."""
        state = self._by_name.get(name)
        if state is None:
            return []
        self._heard(state, rssi, now)
        return self._returned(state, now, wall_ms)

    def _track_unknown(self, adv: Advertisement, now: float) -> None:
        known = self._unknown.get(adv.address)
        if known is not None:
            known.last_seen = now
            known.rssi = adv.rssi
            known.local_name = adv.local_name or known.local_name
            known.adverts += 1
            known.last = adv
            self._unknown.move_to_end(adv.address)
            return
        self.counts["unknown_adverts"] += 1
        if self.unknown_cap == 0:
            return
        while len(self._unknown) >= self.unknown_cap:
            self._unknown.popitem(last=False)
            self.counts["unknown_evicted"] += 1
        self._unknown[adv.address] = UnknownDevice(adv.address, now, now, adv.rssi, adv.local_name, 1, adv)

    # ------------------------------------------------------------ time

    def tick(self, now: float, wall_ms: int) -> list[Event]:
        """Presence changes due by ``now``: each sensor silent for longer than ``interval_s × silent_factor``."""
        events: list[Event] = []
        for state in self._sensors.values():
            limit = state.config.interval_s * self.silent_factor
            if state.present and now - state.last_heard > limit:
                state.present = False
                self.counts["silent"] += 1
                events.append(Presence(state.config.name, False, now - state.last_heard, wall_ms))
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`tick` may next have something to say (None: no sensor is present)."""
        deadlines = [s.last_heard + s.config.interval_s * self.silent_factor
                     for s in self._sensors.values() if s.present]  # fmt: skip
        return min(deadlines) if deadlines else None

    # ------------------------------------------------------------ numbers

    def stats(self, now: float) -> dict[str, object]:
        """Counters and per-sensor health (plain JSON types)."""
        return {
            "adverts": self.counts["adverts"],
            "readings": self.counts["readings"],
            "duplicates": self.counts["duplicates"],
            "refused": dict(self.refusals),
            "unknown_tracked": len(self._unknown),
            "unknown_cap": self.unknown_cap,
            "unknown_adverts": self.counts["unknown_adverts"],
            "unknown_evicted": self.counts["unknown_evicted"],
            "sensors": {
                s.config.name: {
                    "address": s.config.address,
                    "format": s.config.format,
                    "present": s.present,
                    "last_seen_s_ago": round(now - s.last_heard, 1) if s.ever_heard else None,
                    "rssi": s.rssi,
                    "readings": s.readings,
                    "refused": dict(s.refused),
                }
                for s in self.sensor_states()
            },
        }
