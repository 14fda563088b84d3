"""``lowband bench ble``: BLE advertisements → room events, 500 simulated sensors.

The sensors are simulated, their packets are not: each reading is a real
BTHome v2 service-data payload (object ids 0x00 packet id, 0x01 battery,
0x02 temperature, 0x03 humidity, in that order), one sensor in
``ENCRYPTED_EVERY`` encrypted with AES-CCM under its own bindkey as the
BTHome v2 spec says (nonce = MAC, UUID 0xFCD2, device-info byte, counter).
They are handed as :class:`~lowband.gateway.ble.advert.Advertisement`
objects to the real :class:`~lowband.gateway.ble.component.BleComponent` of
a real gateway running in this process (embedded SQLite in a temporary
directory, ``synchronous=FULL``), exactly as the bleak scanner hands them;
only the radio is left out. Every reading is advertised ``REPEATS`` times,
as sensors do, and must become one event.

* ``adverts_per_s`` — the flood phase: every sensor's readings handed over
  as fast as the component takes them (at most ``WINDOW`` not yet turned
  into events, so its bounded queue never drops one); adverts (repeats
  included) divided by the time from the first handed over to the last
  expected event committed;
* ``latency_ms_p50`` / ``latency_ms_p99`` — the paced phase: the sensors
  advertise at a steady rate (``PACED_PER_S`` readings/s over all of them);
  from the moment an advert is handed to the component to the moment its
  room event is committed and announced to the gateway's notifier (the
  instant a parked ``/sync`` wakes), seen through the room service's
  listener;
* ``events`` — room events carrying a simulated reading, both phases;
* ``lost`` — readings handed over without their event in the room: every
  reading carries a distinct humidity value, so each event is matched to
  the reading it came from (and a reading matched twice is ``duplicated``);
* anchor ``decode_only_per_s`` — the same adverts through the decoder alone
  (``gateway/ble/decode.py``: bthome-ble and the AES-CCM decryption, no
  tracker, no room), so ``ratio`` says what the gateway adds to the parser.

Progress goes to stderr; a phase that does not finish in time ends the run
with :class:`~lowband.gateway.bench.processes.BenchError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from lowband.gateway.bench.processes import BenchError, progress
from lowband.sim.ports import free_port

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
_UUID16_LE = b"\xd2\xfc"
_INFO_PLAIN = 0x40  # version 2 in bits 5-7, not encrypted, not trigger based
_INFO_ENCRYPTED = 0x41  # version 2, bit 0 set: encrypted


def bthome_objects(packet_id: int, battery: int, temperature_c: float, humidity_pct: float) -> bytes:
    """The BTHome v2 objects of one reading, in ascending object id order.

    Packet id (0x00, uint8), battery (0x01, uint8 %), temperature (0x02,
    sint16 × 0.01 °C), humidity (0x03, uint16 × 0.01 %). Raises
    ``struct.error`` for values the format cannot hold.
    """
    return struct.pack(
        "<BBBBBhBH", 0x00, packet_id & 0xFF, 0x01, battery, 0x02, round(temperature_c * 100), 0x03,
        round(humidity_pct * 100),
    )  # fmt: skip


def bthome_service_data(objects: bytes, *, address: str | None = None, key: bytes | None = None,
                        counter: int = 0) -> bytes:  # fmt: skip
    """The BTHome v2 service data (UUID 0xFCD2) carrying ``objects``.

    Without ``key``: the device-info byte 0x40 then the objects. With a
    16-byte ``key``: 0x41, the objects encrypted with AES-CCM (4-byte MIC)
    under the nonce MAC ‖ 0xD2 0xFC ‖ 0x41 ‖ counter (little endian), then
    the counter and the MIC. ``address`` (``AA:BB:..``) is needed to encrypt.
    """
    if key is None:
        return bytes([_INFO_PLAIN]) + objects
    if address is None:
        raise ValueError("an encrypted BTHome packet needs the sensor's address (it is part of the nonce)")
    mac = bytes.fromhex(address.replace(":", ""))
    count = struct.pack("<I", counter & 0xFFFFFFFF)
    nonce = mac + _UUID16_LE + bytes([_INFO_ENCRYPTED]) + count
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, objects, None)
    return bytes([_INFO_ENCRYPTED]) + sealed[:-4] + count + sealed[-4:]


@dataclass
class SimSensor:
    """One simulated BTHome v2 sensor: a name, an address, a bindkey or none, and its next packet id."""

    name: str
    address: str
    key: bytes | None
    serial: int  # tells its temperatures apart from the other sensors'
    sent: int = 0  # readings made so far

    def reading(self) -> tuple[tuple[float, float], bytes]:
        """The next reading: ((temperature, humidity) it carries, its service data).

        The humidity counts the sensor's readings in hundredths (10,000 distinct
        values), so within a run every reading of one sensor is told apart.
        """
        index = self.sent
        self.sent += 1
        temperature = round(-20 + (self.serial % 6000) / 100, 2)
        humidity = round((index % 10000) / 100, 2)
        objects = bthome_objects(index + 1, 50 + self.serial % 50, temperature, humidity)
        data = bthome_service_data(objects, address=self.address, key=self.key, counter=index + 1)
        return (temperature, humidity), data


def sim_sensors(count: int, *, encrypted_every: int = 5, seed: str = "lowband-bench-ble") -> list[SimSensor]:
    """``count`` sensors with fixed addresses and bindkeys derived from ``seed``; one in ``encrypted_every`` keyed."""
    sensors = []
    for i in range(count):
        digest = hashlib.sha256(f"{seed}/{i}".encode()).digest()
        address = ":".join(f"{b:02X}" for b in (0xC0 | (digest[0] & 0x3F), *digest[1:6]))  # static random address
        key = digest[16:32] if encrypted_every and i % encrypted_every == 0 else None
        sensors.append(SimSensor(f"s{i:04d}", address, key, i))
    return sensors



# ------------------------------------------------------------------ the bench

SENSORS = 500
ENCRYPTED_EVERY = 5
REPEATS = 2  # each packet advertised twice, the second a duplicate the tracker must drop
FLOOD_READINGS = 10  # per sensor, in the flood phase
WINDOW = 1000  # readings handed over and not yet in the room, at most, in the flood phase
PACED_PER_S = 100.0  # readings per second over all sensors in the paced phase
PACED_SECONDS = 10.0
SENSORS_PER_ROOM = 50
DRAIN_TIMEOUT_S = 60.0
SERVER_NAME = "localhost"


def _progress(text: str) -> None:
    progress("ble", text)


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank); ValueError for none."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


class SimScanner:
    """A scanner with no radio: the bench calls :meth:`hand_over` where bleak would deliver an advertisement."""

    def __init__(self, settings: Any, on_advertisement: Callable[[Any], None]) -> None:
        self.on_advertisement = on_advertisement
        self.running = False

    async def start(self) -> None:
        """Nothing to open."""
        self.running = True

    async def stop(self) -> None:
        """Nothing to close."""
        self.running = False


@dataclass
class Ledger:
    """Readings handed over and the events they became, keyed by (sensor user, humidity)."""

    handed: dict[tuple[str, float], float] = field(default_factory=dict)  # key → perf_counter when handed over
    arrived: dict[tuple[str, float], float] = field(default_factory=dict)  # key → perf_counter of its event
    duplicated: int = 0
    other_events: int = 0  # presence notices and anything else the sensors posted

    def on_sent(self, sent: Any) -> None:
        """Room service listener: match a committed sensor event to its reading."""
        event = sent.event
        if not event.sender.startswith("@ble_") or event.type != "m.room.message":
            return
        key = reading_key(event.sender, event.content)
        if key is None or key not in self.handed:
            self.other_events += 1
        elif key in self.arrived:
            self.duplicated += 1
        else:
            self.arrived[key] = time.perf_counter()

    @property
    def waiting(self) -> int:
        """Readings handed over whose event has not arrived."""
        return len(self.handed) - len(self.arrived)


def reading_key(sender: str, content: dict[str, Any]) -> tuple[str, float] | None:
    """(sender, humidity) of a telemetry event's SenML records; None for an event without a humidity."""
    records = content.get("org.lowband.senml")
    if not isinstance(records, list):
        return None
    base = ""
    for record in records:
        if not isinstance(record, dict):
            continue
        base = record.get("bn", base) if isinstance(record.get("bn", base), str) else base
        name = base + str(record.get("n", ""))
        value, scale = record.get("v"), record.get("scale_", 0)  # SenML "v" scaled by 10^scale_ (compact codec)
        if not name.endswith("humidity") or isinstance(value, bool) or isinstance(scale, bool):
            continue
        if isinstance(value, (int, float)) and isinstance(scale, int):
            return sender, round(float(value) * 10.0**scale, 2)
    return None


def _advert(sensor: SimSensor, data: bytes, wall_ms: int) -> Any:
    from lowband.gateway.ble.advert import Advertisement

    return Advertisement(sensor.address, -60 - sensor.serial % 30, None, MappingProxyType({BTHOME_UUID: data}),
                         MappingProxyType({}), (BTHOME_UUID,), time.monotonic(), wall_ms)  # fmt: skip


def decode_only(adverts: list[tuple[Any, bytes | None]]) -> float:
    """The anchor: adverts/s through ``decode`` alone (bthome-ble and AES-CCM), no tracker, no room."""
    from lowband.gateway.ble.decode import Decoded, decode

    start = time.perf_counter()
    for adv, key in adverts:
        if not isinstance(decode(adv, "bthome", key), Decoded):
            raise BenchError(f"the decoder refused a simulated packet of {adv.address}")
    return len(adverts) / (time.perf_counter() - start)


async def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _prepare(services: Any, root: Path, sensors: list[SimSensor], interval_s: float) -> tuple[Any, list[str]]:
    """Rooms (one per ``SENSORS_PER_ROOM`` sensors) and the sensor registry (outside the gateway's data dir,
    so the gateway's own BLE component does not start); returns (registry, room IDs)."""
    from lowband.gateway.ble.registry import FILE_FORMAT, FILE_VERSION, BleRegistry, make_sensor
    from lowband.gateway.homeserver.accounts import hash_password

    owner = f"@bench:{SERVER_NAME}"
    await services.store.create_user(owner, hash_password("bench-password-not-secret"), False, int(time.time() * 1000))
    rooms = []
    for i in range(max(1, math.ceil(len(sensors) / SENSORS_PER_ROOM))):
        rooms.append(await services.rooms.create_room(owner, {"preset": "public_chat", "room_alias_name": f"ble{i}"}))
    configs = [make_sensor(s.name, s.address, format="bthome", key=s.key, rooms=(rooms[i // SENSORS_PER_ROOM],),
                           interval_s=interval_s) for i, s in enumerate(sensors)]  # fmt: skip
    registry = BleRegistry(root / "bench-registry")
    registry.path.parent.mkdir(parents=True)
    doc = {"format": FILE_FORMAT, "version": FILE_VERSION, "sensors": [c.to_json() for c in configs]}
    registry.path.write_text(json.dumps(doc))
    return registry, rooms


async def _flood(component: Any, ledger: Ledger, sensors: list[SimSensor], readings: int) -> tuple[int, float, list[tuple[Any, bytes | None]]]:  # fmt: skip
    """Hand every sensor's ``readings`` over as fast as the component takes them; (adverts, seconds, adverts for
    the anchor). The clock stops when the last expected event is committed (or the drain times out)."""
    packets = []  # made before the clock starts: the sensors' own work is not the gateway's
    for _ in range(readings):
        for sensor in sensors:
            values, data = sensor.reading()
            packets.append((sensor, values[1], data))
    anchor: list[tuple[Any, bytes | None]] = []
    handed = 0
    start = time.perf_counter()
    for sensor, humidity, data in packets:
        while ledger.waiting >= WINDOW:
            await asyncio.sleep(0.001)
        wall_ms = int(time.time() * 1000)
        ledger.handed[(f"@ble_{sensor.name}:{SERVER_NAME}", humidity)] = time.perf_counter()
        for _ in range(REPEATS):
            adv = _advert(sensor, data, wall_ms)
            component.on_advertisement(adv)
            handed += 1
        if len(anchor) < 20000:
            anchor.append((adv, sensor.key))
        if handed % 200 == 0:
            await asyncio.sleep(0)  # let the component run, as a real scanner's callbacks would
    await _until(lambda: ledger.waiting == 0, DRAIN_TIMEOUT_S)
    end = max(ledger.arrived.values(), default=time.perf_counter())
    return handed, end - start, anchor


async def _paced(component: Any, ledger: Ledger, sensors: list[SimSensor], seconds: float) -> tuple[list[float], int]:
    """Readings at ``PACED_PER_S`` for ``seconds``, round robin over the sensors; (latencies in ms, adverts)."""
    count = max(1, int(PACED_PER_S * seconds))
    keys = []
    handed = 0
    start = time.perf_counter()
    for i in range(count):
        due = start + i / PACED_PER_S
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sensor = sensors[i % len(sensors)]
        values, data = sensor.reading()
        key = (f"@ble_{sensor.name}:{SERVER_NAME}", values[1])
        wall_ms = int(time.time() * 1000)
        ledger.handed[key] = time.perf_counter()
        keys.append(key)
        for _ in range(REPEATS):
            component.on_advertisement(_advert(sensor, data, wall_ms))
            handed += 1
    await _until(lambda: ledger.waiting == 0, DRAIN_TIMEOUT_S)
    latencies = [(ledger.arrived[k] - ledger.handed[k]) * 1000 for k in keys if k in ledger.arrived]
    return latencies, handed


async def _measure(root: Path, count: int, readings: int, seconds: float) -> dict[str, Any]:
    from lowband.gateway.app import run_gateway
    from lowband.gateway.ble.component import BleComponent
    from lowband.gateway.config import BleConfig, load_config

    config = load_config(None, data_dir=root / "gateway", server_name=SERVER_NAME, http_port=free_port())
    ready: list[Any] = []
    started, stop = asyncio.Event(), asyncio.Event()
    gateway = asyncio.create_task(run_gateway(config, started, stop, ready.append))
    waiter = asyncio.create_task(started.wait())
    done, _ = await asyncio.wait({gateway, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if gateway in done:
        waiter.cancel()
        gateway.result()  # raises what stopped it
        raise BenchError("the gateway stopped at start")
    if waiter not in done:
        gateway.cancel()
        raise BenchError("the gateway did not start within 60 s")
    services = ready[0]
    component = None
    try:
        sensors = sim_sensors(count, encrypted_every=ENCRYPTED_EVERY)
        # Long intervals: no sensor goes silent while the bench runs (presence is not what is measured here).
        registry, rooms = await _prepare(services, root, sensors, interval_s=24 * 3600)
        ledger = Ledger()
        services.rooms.add_listener(ledger.on_sent)
        settings = BleConfig(enabled=True, queue_size=max(4096, 4 * WINDOW * REPEATS))
        component = BleComponent(services, registry, SimScanner, settings)
        _progress(f"{count} sensors ({len(sensors[::ENCRYPTED_EVERY])} encrypted) in {len(rooms)} rooms; "
                  "joining them")  # fmt: skip
        await component.start()
        users = {f"@ble_{s.name}:{SERVER_NAME}" for s in sensors}
        if not await _until(lambda: sum(len(users & set(services.rooms.joined_members(r))) for r in rooms) == count,
                            120):  # fmt: skip
            raise BenchError("the sensors' users did not join their rooms within 120 s")
        _progress(f"flood: {readings} readings per sensor, each advertised {REPEATS} times")
        flood_adverts, flood_s, anchor = await _flood(component, ledger, sensors, readings)
        _progress(f"flood: {flood_adverts / flood_s:.0f} adverts/s; paced: {PACED_PER_S:g} readings/s for {seconds:g} s")
        latencies, paced_adverts = await _paced(component, ledger, sensors, seconds)
        await asyncio.sleep(0.5)  # an event posted twice would show up now
        stats = component.stats()
    finally:
        if component is not None:
            await component.stop()
        stop.set()
        await asyncio.wait_for(gateway, 60)
    _progress("anchor: the same adverts through the decoder alone")
    anchor_per_s = decode_only(anchor)
    return {"flood_adverts": flood_adverts, "flood_s": flood_s, "latencies": latencies, "ledger": ledger,
            "paced_adverts": paced_adverts, "anchor_per_s": anchor_per_s, "stats": stats}  # fmt: skip


def run(sensors: int = SENSORS, messages: int = FLOOD_READINGS, seconds: float = PACED_SECONDS) -> tuple[dict[str, Any], str]:  # fmt: skip
    """Run both phases; returns (result, table). ``sensors`` simulated, ``messages`` readings each in the flood
    phase, ``seconds`` of the paced phase."""
    if sensors <= 0 or messages <= 0 or seconds <= 0:
        raise BenchError("--sensors, --messages and --seconds must be positive")
    if messages + int(PACED_PER_S * seconds) // sensors + 2 > 250:
        raise BenchError("at most about 250 readings per sensor: BTHome packet ids wrap at 256")
    with tempfile.TemporaryDirectory(prefix="lowband-bench-ble-") as tmp:
        got = asyncio.run(_measure(Path(tmp), sensors, messages, seconds))
    ledger: Ledger = got["ledger"]
    latencies: list[float] = got["latencies"]
    adverts_per_s = got["flood_adverts"] / got["flood_s"]
    events = len(ledger.arrived)
    lost = len(ledger.handed) - events
    stats = got["stats"]
    refused = stats.get("refused", {}) if isinstance(stats, dict) else {}
    p50 = percentile(latencies, 0.5) if latencies else None
    p99 = percentile(latencies, 0.99) if latencies else None
    ratio = adverts_per_s / got["anchor_per_s"] if got["anchor_per_s"] else None
    result = {
        "adverts_per_s": round(adverts_per_s, 1), "latency_ms_p50": None if p50 is None else round(p50, 2),
        "latency_ms_p99": None if p99 is None else round(p99, 2), "events": events, "lost": lost,
        "duplicated": ledger.duplicated, "decode_only_per_s": round(got["anchor_per_s"], 1),
        "ratio": None if ratio is None else round(ratio, 3), "sensors": sensors,
        "adverts": got["flood_adverts"] + got["paced_adverts"], "refused": sum(refused.values()),
    }  # fmt: skip

    def show(value: float | None) -> str:
        return f"{'-':>12}" if value is None else f"{value:12.2f}"

    title = (f"BLE adverts → room events: {sensors} simulated BTHome v2 sensors (1 in {ENCRYPTED_EVERY} encrypted), "
             f"each packet advertised {REPEATS} times, SQLite synchronous=FULL")  # fmt: skip
    table = "\n".join([
        title,
        f"{'':34}{'measured':>12}",
        f"{'decode alone, adverts/s (anchor)':34}{got['anchor_per_s']:12.0f}",
        f"{'adverts/s to committed events':34}{adverts_per_s:12.0f}",
        f"{'ratio':34}{show(ratio)}",
        f"{'latency p50 ms (' + format(PACED_PER_S, 'g') + ' readings/s)':34}{show(p50)}",
        f"{'latency p99 ms':34}{show(p99)}",
        f"{'events':34}{events:12d}",
        f"{'lost':34}{lost:12d}",
        f"{'duplicated':34}{ledger.duplicated:12d}",
        f"{'refused by the gateway':34}{sum(refused.values()):12d}",
    ])  # fmt: skip
    return result, table


if __name__ == "__main__":  # pragma: no cover - manual runs
    res, text = run(int(sys.argv[1]) if len(sys.argv) > 1 else SENSORS)
    print(text)
    print(json.dumps(res))
