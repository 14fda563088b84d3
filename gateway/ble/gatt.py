"""Connectable sensors over GATT (bleak): readings in, commands out.

One :class:`GattLink` per sensor with a ``gatt`` section (registry.py
``GattConfig``); the BLE component makes them with :func:`make_gatt_link`
(component.py ``GattFactory``) and starts, stops and remakes them as
sensors are added and removed. :class:`GattSensors` does the same for a
program without the component (a list of sensors, commands by name).

A link connects (bleak ``BleakClient``; with the ``BLEDevice`` the scanner
last heard when there is one, see scanner.py ``SEEN_DEVICES``), then

1. reads every configured characteristic once: one reading;
2. with ``subscribe`` (the default) turns notifications on and hands the
   component one reading per notification burst (values merged by the
   sans-I/O :class:`~lowband.gateway.ble.gatt_core.ReadingAssembler`);
   without it, reads them all every ``poll_s``;
3. when the device disconnects, flushes what it holds, tells the component
   (``on_gatt_state(name, False)``) and connects again after
   :class:`~lowband.gateway.ble.gatt_core.Backoff` (1 s doubling to 60 s,
   back to 1 s after a success).

The initial read comes before notifications are on: bluetoothd reports a
read value as a notification to a client that subscribed, which would make
one sample two readings. Values are decoded by gatt_core.py; a value that
cannot be decoded (wrong length, "unknown") is counted, never raised.
Commands (``!name text`` in a room) are written to the sensor's command
characteristic, with response where the characteristic allows writes with
response, without where it allows only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakDeviceNotFoundError, BleakError

from lowband.gateway.aio import cancel_and_wait, sleep_unless
from lowband.gateway.ble.gatt_core import (
    Backoff,
    GattRefusal,
    GattValue,
    Reading,
    ReadingAssembler,
    parse_characteristic,
    value_name,
)
from lowband.gateway.ble.registry import GattConfig, SensorConfig
from lowband.gateway.ble.scanner import SEEN_DEVICES
from lowband.gateway.config import BleConfig

__all__ = ["GattCommandError", "GattLink", "GattSensors", "GattSink", "make_gatt_link"]

log = logging.getLogger(__name__)

_IO_ERRORS = (BleakError, TimeoutError, OSError, EOFError)


class GattSink(Protocol):
    """Where readings and connection state go (the BLE component)."""

    def on_gatt_reading(self, name: str, values: dict[str, float], units: dict[str, str],
                        wall_ms: int | None = None) -> None: ...  # fmt: skip

    def on_gatt_state(self, name: str, connected: bool) -> None: ...


class GattCommandError(RuntimeError):
    """A command could not be written; the message says why (for the room)."""


class GattLink:
    """One GATT sensor: connect, read, subscribe, reconnect with back-off, write commands."""

    def __init__(self, sensor: SensorConfig, sink: GattSink, *, adapter: str | None = None,
                 backoff: Backoff | None = None, connect_timeout: float = 20.0, io_timeout: float = 10.0,
                 settle_s: float = 0.3, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        """``sensor.gatt`` must be set; ``adapter`` None lets BlueZ pick."""
        if sensor.gatt is None:
            raise ValueError(f"sensor {sensor.name} has no gatt section")
        self.sensor = sensor
        self.gatt: GattConfig = sensor.gatt
        self.sink = sink
        self.adapter = adapter
        self.backoff = backoff or Backoff(initial=1.0, maximum=60.0)
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.clock = clock
        expected = [n for n in (value_name(u) for u in self.gatt.characteristics) if n is not None]
        unsupported = [u for u in self.gatt.characteristics if value_name(u) is None]
        if unsupported:
            log.warning("ble: GATT sensor %s: characteristics %s carry no value Lowband decodes (it reads 0x2A6E "
                        "temperature, 0x2A6F humidity, 0x2A6D pressure); their values are refused and counted",
                        sensor.name, ", ".join(unsupported))  # fmt: skip
        self.assembler = ReadingAssembler(expected, settle_s)
        self.connected = False
        self.last_error = ""
        self.counts: Counter[str] = Counter()
        self._client: BleakClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._logged_error = ""

    # --- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background; returns at once."""
        if self._task is None:
            self._stopping = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name=f"ble-gatt-{self.sensor.name}")

    async def stop(self) -> None:
        """Disconnect and stop reconnecting."""
        self._stopping.set()
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def stats(self) -> dict[str, Any]:
        """Connection state and counters."""
        return {"connected": self.connected, "last_error": self.last_error, "attempts": self.backoff.attempts,
                **self.counts}  # fmt: skip

    async def write_command(self, data: bytes) -> None:
        """Write ``data`` to the command characteristic. Raises :class:`GattCommandError` (readable)."""
        uuid = self.gatt.command
        if uuid is None:
            raise GattCommandError(f"{self.sensor.name} has no command characteristic configured")
        client = self._client
        if client is None or not client.is_connected:
            why = f" ({self.last_error})" if self.last_error else ""
            raise GattCommandError(f"{self.sensor.name} is not connected{why}")
        char = client.services.get_characteristic(uuid)
        if char is None:
            raise GattCommandError(f"{self.sensor.name} has no characteristic {uuid}")
        if "write" in char.properties:
            response = True
        elif "write-without-response" in char.properties:
            response = False
        else:
            raise GattCommandError(f"characteristic {uuid} of {self.sensor.name} is not writable")
        try:
            async with asyncio.timeout(self.io_timeout):
                await client.write_gatt_char(char, data, response=response)
        except _IO_ERRORS as exc:
            raise GattCommandError(f"writing to {self.sensor.name} failed: {type(exc).__name__}: {exc}") from exc
        self.counts["commands"] += 1

    # --- the connection loop -----------------------------------------------------------------

    def _note_error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.counts["connect_failures"] += 1
        if self.last_error != self._logged_error:
            self._logged_error = self.last_error
            log.warning("ble: GATT sensor %s: %s (retrying with back-off)", self.sensor.name, self.last_error)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._session()
            except _IO_ERRORS as exc:
                self._note_error(exc)
            except Exception as exc:  # a bleak or D-Bus surprise must not end reconnecting for good
                log.exception("ble: GATT sensor %s: unexpected error", self.sensor.name)
                self._note_error(exc)
            if await sleep_unless(self._stopping, self.backoff.next_delay()):
                return

    async def _session(self) -> None:
        disconnected = asyncio.Event()
        target = SEEN_DEVICES.get(self.sensor.address) or self.sensor.address
        bluez: Any = {"adapter": self.adapter} if self.adapter else {}
        client = BleakClient(target, disconnected_callback=lambda _c: disconnected.set(),
                             timeout=self.connect_timeout, bluez=bluez)  # fmt: skip
        try:
            await client.connect()
        except BleakDeviceNotFoundError:
            SEEN_DEVICES.forget(self.sensor.address)  # a stale object path: find it by address next time
            raise
        self._client = client
        self.connected = True
        self.last_error = ""
        self._logged_error = ""
        self.backoff.reset()
        self.counts["connects"] += 1
        log.info("ble: GATT sensor %s connected", self.sensor.name)
        self.sink.on_gatt_state(self.sensor.name, True)
        try:
            chars = self._characteristics(client)
            await self._read_all(client, chars)
            if self.gatt.subscribe and any(self._notifies(c) for c in chars):
                for char in chars:
                    if self._notifies(char):
                        async with asyncio.timeout(self.io_timeout):
                            await client.start_notify(char, self._on_notify)
                await disconnected.wait()
            else:
                while not disconnected.is_set():
                    try:
                        async with asyncio.timeout(self.gatt.poll_s):
                            await disconnected.wait()
                    except TimeoutError:
                        await self._read_all(client, chars)
        finally:
            self._cancel_flush()
            self._deliver(self.assembler.flush())
            self._client = None
            self.connected = False
            self.counts["disconnects"] += 1
            self.sink.on_gatt_state(self.sensor.name, False)
            if client.is_connected:
                with contextlib.suppress(*_IO_ERRORS):
                    async with asyncio.timeout(self.io_timeout):
                        await client.disconnect()
            log.info("ble: GATT sensor %s disconnected", self.sensor.name)

    @staticmethod
    def _notifies(char: BleakGATTCharacteristic) -> bool:
        return "notify" in char.properties or "indicate" in char.properties

    def _characteristics(self, client: BleakClient) -> list[BleakGATTCharacteristic]:
        chars = []
        for uuid in self.gatt.characteristics:
            char = client.services.get_characteristic(uuid)
            if char is None:
                self.counts["missing_characteristics"] += 1
                log.warning("ble: GATT sensor %s has no characteristic %s", self.sensor.name, uuid)
            else:
                chars.append(char)
        return chars

    async def _read_all(self, client: BleakClient, chars: list[BleakGATTCharacteristic]) -> None:
        values: dict[str, float] = {}
        units: dict[str, str] = {}
        for char in chars:
            if "read" not in char.properties:
                continue
            async with asyncio.timeout(self.io_timeout):
                data = await client.read_gatt_char(char)
            value = self._decode(char.uuid, bytes(data))
            if value is not None:
                values[value.name] = value.value
                units[value.name] = value.unit
        if values:
            self._deliver([Reading(values, units)])

    def _decode(self, uuid: str, data: bytes) -> GattValue | None:
        value = parse_characteristic(uuid, data)
        if isinstance(value, GattRefusal):
            self.counts[f"refused_{value.kind}"] += 1
            return None
        return value

    def _on_notify(self, char: BleakGATTCharacteristic, data: bytearray) -> None:
        value = self._decode(char.uuid, bytes(data))
        if value is None:
            return
        self.counts["notifications"] += 1
        self._deliver(self.assembler.add(value, self.clock()))
        self._arm_flush()

    def _arm_flush(self) -> None:
        self._cancel_flush()
        deadline = self.assembler.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - self.clock())
            self._flush_handle = asyncio.get_running_loop().call_later(delay, self._flush_due)

    def _cancel_flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def _flush_due(self) -> None:
        self._flush_handle = None
        self._deliver(self.assembler.poll(self.clock()))
        self._arm_flush()

    def _deliver(self, readings: list[Reading]) -> None:
        for reading in readings:
            self.counts["readings"] += 1
            try:
                self.sink.on_gatt_reading(self.sensor.name, dict(reading.values), dict(reading.units))
            except Exception:
                log.exception("ble: the component refused a GATT reading of %s", self.sensor.name)


class GattSensors:
    """The component's GATT manager: one :class:`GattLink` per sensor with a ``gatt`` section."""

    def __init__(self, sensors: list[SensorConfig], sink: GattSink, *, adapter: str | None = None,
                 link_factory: Callable[[SensorConfig], GattLink] | None = None) -> None:  # fmt: skip
        """``link_factory`` makes a link per sensor (tests give shorter back-off)."""
        self.sink = sink
        self.adapter = adapter
        self.link_factory = link_factory or (lambda s: GattLink(s, sink, adapter=adapter))
        self.links: dict[str, GattLink] = {}
        self._wanted = {s.name: s for s in sensors if s.gatt is not None}
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start a link per sensor (each connects in the background)."""
        self._running = True
        for sensor in self._wanted.values():
            link = self.links[sensor.name] = self.link_factory(sensor)
            await link.start()

    async def stop(self) -> None:
        """Stop every link."""
        self._running = False
        links, self.links = list(self.links.values()), {}
        await asyncio.gather(*(link.stop() for link in links), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    def update(self, sensors: list[SensorConfig]) -> None:
        """The sensor list changed (``lowband ble add/remove``): start, stop or restart links to match."""
        wanted = {s.name: s for s in sensors if s.gatt is not None}
        self._wanted = wanted
        if not self._running:
            return
        for name, link in list(self.links.items()):
            if wanted.get(name) != link.sensor:
                del self.links[name]
                self._spawn(link.stop())
        for name, sensor in wanted.items():
            if name not in self.links:
                link = self.links[name] = self.link_factory(sensor)
                self._spawn(link.start())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def write(self, name: str, data: bytes) -> None:
        """Write a command to sensor ``name``. Raises :class:`GattCommandError`."""
        link = self.links.get(name)
        if link is None:
            raise GattCommandError(f"{name} is not a GATT sensor")
        await link.write_command(data)

    def stats(self) -> dict[str, Any]:
        """Per-sensor link state."""
        return {name: link.stats() for name, link in self.links.items()}


def make_gatt_link(sensor: SensorConfig, settings: BleConfig, sink: GattSink) -> GattLink:
    """The component's ``gatt_factory`` (component.py ``GattFactory``): one link on the ``[ble]`` adapter."""
    return GattLink(sensor, sink, adapter=settings.adapter)
