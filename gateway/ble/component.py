"""BLE sensors at run time: advertisements in, room events out.

One :class:`BleComponent` per gateway. It

* takes advertisements from a scanner (``on_advertisement``, sync, never
  blocks: a bounded queue, overflow dropped and counted) and GATT readings
  (``on_gatt_reading``) and runs them through the sans-I/O
  :class:`~lowband.gateway.ble.tracker.SensorTracker`;
* speaks only as accounts it created: sensor NAME is ``@ble_NAME``
  (reserved), made with ``users.owner = "ble:NAME"``; an account of that ID
  someone else made is never adopted (logged, counted, nothing posted);
* joins each sensor's user to its rooms (a public room, or one it was
  invited to; otherwise it says in the log whom to invite) and says so in the
  room once, when it joins;
* posts each reading exactly once into each of its rooms as the telemetry
  event a device posts — the compact codec's own expansion
  (:func:`lowband.codecs.compact.expand`), so the body and the SenML records
  are built by the same code — under a transaction ID made from the
  sensor's address and packet id or encryption counter
  (gateway/homeserver/delivery.py: a failed commit is retried under the same
  ID, so a retry never makes a second event);
* posts a notice when a sensor goes silent and when it is back;
* writes ``!NAME text`` from a room member with the command power level to
  the sensor's command characteristic (GATT sensors that have one);
* picks up ``lowband ble add/remove`` within :data:`RELOAD_SECONDS`;
* counts everything (:meth:`BleComponent.stats`, for /metrics and the
  status page) and logs refusals summarised, one line per kind per minute.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from lowband.codecs import compact
from lowband.codecs.context import Channel, Context
from lowband.gateway.aio import cancel_and_wait
from lowband.gateway.ble.advert import Advertisement
from lowband.gateway.ble.decode import Decoded, mantissa_scale, senml_name
from lowband.gateway.ble.metrics import metric_families
from lowband.gateway.ble.registry import BleRegistry, BleRegistryError, SensorConfig, account_owner, user_id
from lowband.gateway.ble.tracker import Event, Presence, Reading, Refused, SensorTracker
from lowband.gateway.config import BleConfig
from lowband.gateway.homeserver import delivery
from lowband.gateway.homeserver.commands import may_command, parse_command
from lowband.gateway.matrix.errors import MatrixError

log = logging.getLogger(__name__)

#: How often the sensors file is checked for ``lowband ble`` changes.
RELOAD_SECONDS = 2.0
#: Readings being committed at once; past it the pump waits (and the advertisement queue absorbs the burst).
MAX_IN_FLIGHT = 256
#: A reading whose commit failed (store or room unavailable) is tried again this many times, same transaction ID.
POST_ATTEMPTS = 5
#: The transaction IDs' edge name (``(user_id, edge, id)``).
EDGE = "ble"
#: The room's power level event key for who may command devices and sensors (the link's too).
#: A summary line per refusal kind at most this often.
REFUSAL_LOG_INTERVAL = 60.0

Stop = Callable[[], Awaitable[None]]


class Scanner(Protocol):
    """What a scanner factory returns: started and stopped by the component."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


#: ``factory(settings, on_advertisement)`` → a :class:`Scanner` that calls ``on_advertisement`` in the loop thread.
ScannerFactory = Callable[[BleConfig, Callable[[Advertisement], None]], Scanner]


class GattLink(Protocol):
    """One connectable sensor (gateway/ble/gatt.py): its readings go to ``on_gatt_reading``/``on_gatt_state``.

    ``start`` returns at once (it connects in the background, with back-off);
    ``write_command`` raises with a readable reason when it cannot write.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def write_command(self, data: bytes) -> None: ...


#: ``factory(sensor, settings, component)`` → the sensor's :class:`GattLink`.
GattFactory = Callable[[SensorConfig, BleConfig, "BleComponent"], GattLink]


class SensorObserver(Protocol):
    """Told about sensors, their committed readings and presence (the app wires HA discovery to it).

    Called in the event loop; must not block. An observer that raises is logged, never fails the component.
    """

    def ble_sensor(self, name: str, address: str, user_id: str) -> None: ...

    def ble_reading(self, name: str, senml: list[dict[str, Any]]) -> None: ...

    def ble_presence(self, name: str, online: bool) -> None: ...

    def ble_removed(self, name: str) -> None: ...


def telemetry_content(decoded: Decoded, sender: str, room_id: str, wall_ms: int) -> tuple[dict[str, Any], int] | None:
    """The content of the telemetry event ``decoded`` becomes, and its ``origin_server_ts``; None without values.

    Built by the compact codec's own expansion of a telemetry form, with a
    context table made for this reading (one channel per value, its unit and
    decimal scale), so a BLE reading's body and SenML records are exactly a
    link device's.
    """
    channels: list[Channel] = []
    values: list[tuple[int, int]] = []
    for name, value in decoded.values.items():
        pair = mantissa_scale(value)
        clean = senml_name(name)
        if pair is None or not clean or len(channels) >= 32:
            continue
        channels.append(Channel(clean, decoded.units.get(name, ""), pair[1]))
        values.append((len(values), pair[0]))
    if not values:
        return None
    ctx = Context(version=1, rooms=(room_id,), senders=(sender,), event_types=(), keys=(), channels=tuple(channels))
    form = compact.CompactForm(kind=compact.KIND_TELEMETRY, values=values)
    event = compact.expand(form, ctx, wall_ms)
    return event["content"], event["origin_server_ts"]


class BleComponent:
    """The BLE component of one gateway (see the module's docstring)."""

    def __init__(
        self, services: Any, registry: BleRegistry, scanner_factory: ScannerFactory | None = None,
        settings: BleConfig | None = None, *, gatt_factory: GattFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.services = services
        self.registry = registry
        self.settings = settings if settings is not None else services.config.ble
        self.scanner_factory = scanner_factory
        self.gatt_factory = gatt_factory
        self.clock = clock
        self.server_name: str = services.config.server_name
        self.tracker = SensorTracker(now=clock(), unknown_cap=self.settings.unknown_cap,
                                     dedup_window_s=self.settings.dedup_window_s,
                                     silent_factor=self.settings.silent_factor)  # fmt: skip
        self.sensors: dict[str, SensorConfig] = {}
        self.counts: Counter[str] = Counter()
        self.refused_accounts: dict[str, str] = {}
        self.scanner: Scanner | None = None
        self.gatt_links: dict[str, tuple[SensorConfig, GattLink]] = {}
        self._queue: deque[Advertisement] = deque()
        self._wake = asyncio.Event()
        self._own_users: set[str] = set()
        self._joined: dict[str, list[str]] = {}  # sensor name → room IDs it is joined to
        self._last_readings: dict[str, Reading] = {}  # sensor name → its newest reading (for the status page)
        self._observers: list[SensorObserver] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._version: tuple[int, int] | None = None
        self._refusal_log: dict[str, tuple[float, int]] = {}
        self._stopping = False
        self._warned: set[str] = set()
        self._reloading = asyncio.Lock()  # one reload (account, joins, GATT links) at a time

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        """Load the sensors, create and join their users, start the scanner and the GATT manager."""
        await self.reload()
        self.services.rooms.add_listener(self._on_room_event)
        self._workers = [asyncio.create_task(self._pump(), name="ble-pump"),
                         asyncio.create_task(self._clock_loop(), name="ble-clock")]  # fmt: skip
        await self._update_gatt()
        if self.scanner_factory is not None:
            self.scanner = self.scanner_factory(self.settings, self.on_advertisement)
            await self._start_part("scanner", self.scanner.start)

    async def _start_part(self, what: str, start: Callable[[], Awaitable[None]]) -> None:
        try:
            await start()
        except Exception as exc:  # noqa: BLE001 - no adapter, no BlueZ: the gateway runs on, and says why
            self.counts[f"{what.replace(' ', '_').lower()}_failed"] += 1
            log.error("ble: the %s did not start (%s: %s); BLE sensors are not heard until the gateway restarts "
                      "with a working adapter", what, type(exc).__name__, exc)  # fmt: skip

    async def stop(self) -> None:
        """Stop scanning, finish the readings being committed, stop the workers."""
        self._stopping = True
        parts: list[Scanner | GattLink | None] = [self.scanner, *(link for _, link in self.gatt_links.values())]
        self.gatt_links.clear()
        for part in parts:
            if part is not None:
                try:
                    await part.stop()
                except Exception:
                    log.exception("ble: stopping %r failed", part)
        for task in self._workers:
            await cancel_and_wait(task)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)
        for task in list(self._tasks):
            await cancel_and_wait(task)

    def add_observer(self, observer: SensorObserver) -> None:
        """Tell ``observer`` about every sensor now and later, and about readings and presence from now on."""
        self._observers.append(observer)
        for sensor in self.sensors.values():
            self._observe(observer.ble_sensor, sensor.name, sensor.address, user_id(sensor.name, self.server_name))

    # ------------------------------------------------------------ input (sync, never raises)

    def on_advertisement(self, adv: Advertisement) -> None:
        """Queue one advertisement (call in the event loop's thread). Never blocks, never raises."""
        if len(self._queue) >= self.settings.queue_size:
            self.counts["queue_full"] += 1
            return
        self._queue.append(adv)
        self._wake.set()

    def on_gatt_reading(self, name: str, values: dict[str, float], units: dict[str, str],
                        wall_ms: int | None = None) -> None:  # fmt: skip
        """One reading of GATT sensor ``name`` (a notification or a read): posted once. Never raises."""
        try:
            decoded = Decoded(dict(values), dict(units), None, False, None, "gatt", b"")
            wall = wall_ms if wall_ms is not None else int(time.time() * 1000)
            self._handle(self.tracker.feed_decoded(name, decoded, self.clock(), wall))
        except Exception:
            log.exception("ble: a GATT reading of %s could not be handled", name)

    def on_gatt_state(self, name: str, connected: bool) -> None:
        """GATT sensor ``name`` connected (heard: presence) or disconnected (silence is left to the clock)."""
        self.counts["gatt_connects" if connected else "gatt_disconnects"] += 1
        if connected:
            try:
                self._handle(self.tracker.heard(name, self.clock(), int(time.time() * 1000)))
            except Exception:
                log.exception("ble: GATT state of %s could not be handled", name)

    # ------------------------------------------------------------ workers

    async def _pump(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = 0
            while self._queue and batch < 256:
                adv = self._queue.popleft()
                batch += 1
                try:
                    events = self.tracker.feed(adv, self.clock())
                except Exception:  # the tracker and decoders are meant never to raise: count it, go on
                    self.counts["internal_errors"] += 1
                    log.exception("ble: advertisement from %s could not be handled", adv.address)
                    continue
                if events:
                    self._handle(events)
                    if self._in_flight.locked():
                        await self._in_flight.acquire()  # back-pressure: wait for a commit slot
                        self._in_flight.release()
            await asyncio.sleep(0)

    async def _clock_loop(self) -> None:
        next_reload = 0.0
        while True:
            now = self.clock()
            self._handle(self.tracker.tick(now, int(time.time() * 1000)))
            if now >= next_reload:
                next_reload = now + RELOAD_SECONDS
                try:
                    if self.registry.version() != self._version:
                        await self.reload()
                    else:  # rooms made, invites sent or accounts fixed since: join them now
                        await self._settle()
                except Exception:
                    log.exception("ble: reloading the sensors failed")
            deadline = self.tracker.next_deadline()
            wait = min(RELOAD_SECONDS, max(0.05, (deadline - now) if deadline is not None else RELOAD_SECONDS))
            await asyncio.sleep(wait)

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Reading):
                self._last_readings[event.sensor] = event  # a reference: the status summary formats it when asked
                self._spawn(self._post_reading(event))
            elif isinstance(event, Presence):
                self._spawn(self._post_presence(event))
            elif isinstance(event, Refused):
                self._log_refusal(event)

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _log_refusal(self, event: Refused) -> None:
        now = self.clock()
        last, suppressed = self._refusal_log.get(event.kind, (-REFUSAL_LOG_INTERVAL, 0))
        if now - last >= REFUSAL_LOG_INTERVAL:
            more = f" (and {suppressed} more since the last line)" if suppressed else ""
            log.warning("ble: refused %s from sensor %s (%s): %s%s", event.kind, event.sensor, event.address,
                        event.detail, more)  # fmt: skip
            self._refusal_log[event.kind] = (now, 0)
        else:
            self._refusal_log[event.kind] = (last, suppressed + 1)

    # ------------------------------------------------------------ rooms

    async def _post_reading(self, reading: Reading) -> None:
        if self._reloading.locked():  # its sensor may be joining its rooms right now
            async with self._reloading:
                pass
        async with self._in_flight:
            sensor = self.sensors.get(reading.sensor)
            sender = user_id(reading.sensor, self.server_name)
            if sensor is None or sender not in self._own_users:
                self.counts["not_posted_account"] += 1
                return
            rooms = self._joined.get(sensor.name, [])
            if not rooms:
                self.counts["not_posted_no_room"] += 1
                return
            senml: list[dict[str, Any]] | None = None
            for room_id in rooms:
                built = telemetry_content(reading.decoded, sender, room_id, reading.wall_ms)
                if built is None:
                    self.counts["not_posted_no_values"] += 1
                    return
                content, ts = built
                result = await self._commit(sender, room_id, content, ts, f"{reading.txn}@{room_id}")
                if result.outcome is delivery.Outcome.COMMITTED:
                    self.counts["posted"] += 1
                    senml = content[compact.SENML_KEY]
                elif result.outcome is delivery.Outcome.REFUSED:
                    self.counts["post_refused"] += 1
                    log.warning("ble: %s's reading refused in %s: %s", sensor.name, room_id, result.detail)
                else:
                    self.counts["post_failed"] += 1
                    log.error("ble: %s's reading not stored in %s after %d tries: %s", sensor.name, room_id,
                              POST_ATTEMPTS, result.detail)  # fmt: skip
            if senml is not None:
                for observer in self._observers:
                    self._observe(observer.ble_reading, sensor.name, senml)

    async def _commit(self, sender: str, room_id: str, content: dict[str, Any], ts: int, txn: str) -> delivery.Delivery:
        result = delivery.failed("not_tried", "")
        for attempt in range(POST_ATTEMPTS):
            result = await asyncio.shield(delivery.commit_event(
                self.services.rooms, sender, room_id, "m.room.message", content,
                txn=(sender, EDGE, txn), origin_server_ts=ts))  # fmt: skip
            if result.acknowledge or self._stopping:
                return result
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        return result

    async def _post_presence(self, event: Presence) -> None:
        sensor = self.sensors.get(event.sensor)
        if sensor is None:
            return
        if event.present:
            text = f"BLE sensor {sensor.name} is back."
        else:
            minutes = event.silent_s / 60
            text = (f"BLE sensor {sensor.name} went silent: not heard for {minutes:.0f} min "
                    f"(it reports every {sensor.interval_s / 60:g} min).")  # fmt: skip
        self.counts["presence_notices"] += 1
        for observer in self._observers:
            self._observe(observer.ble_presence, sensor.name, event.present)
        for room_id in self._joined.get(sensor.name, []):
            await self._notice(user_id(sensor.name, self.server_name), room_id, text)

    async def _notice(self, sender: str, room_id: str, text: str) -> None:
        if sender not in self._own_users:
            return
        try:
            await asyncio.shield(self.services.rooms.send(sender, room_id, "m.room.message",
                                                          {"msgtype": "m.notice", "body": text}))  # fmt: skip
        except MatrixError as exc:
            log.warning("ble: cannot post a notice in %s: %s", room_id, exc.message)

    def _observe(self, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            log.exception("ble: an observer failed")

    # ------------------------------------------------------------ sensors

    async def reload(self) -> None:
        """Read the sensors file again: new sensors get accounts and rooms, removed ones are forgotten."""
        async with self._reloading:
            await self._reload()

    async def _settle(self) -> None:
        """Join the rooms not joined yet (made, or the sensor invited, since the last try)."""
        async with self._reloading:
            for sensor in list(self.sensors.values()):
                if len(self._joined.get(sensor.name, [])) < len(sensor.rooms):
                    await self._prepare(sensor)

    async def _reload(self) -> None:
        self._version = self.registry.version()
        try:
            sensors = self.registry.sensors()
        except BleRegistryError as exc:
            self.counts["registry_errors"] += 1
            log.error("ble: %s; keeping the sensors loaded before", exc)
            return
        new = {s.name: s for s in sensors}
        added = [s for s in sensors if s.name not in self.sensors]
        removed = [s for name, s in self.sensors.items() if name not in new]
        # The tracker takes the new sensors at once; a reading it makes meanwhile waits for this reload to finish
        # (``_post_reading``), so it is posted into the rooms being joined now, not lost.
        self.sensors = new
        self.tracker.set_sensors(sensors, self.clock())
        for sensor in removed:
            await self._retire(sensor)
            for observer in self._observers:
                self._observe(observer.ble_removed, sensor.name)
        for sensor in sensors:
            await self._prepare(sensor)
        for sensor in added:
            for observer in self._observers:
                self._observe(observer.ble_sensor, sensor.name, sensor.address, user_id(sensor.name, self.server_name))
        if self._workers:  # after start(): links of new, changed and removed GATT sensors
            await self._update_gatt()

    async def _update_gatt(self) -> None:
        """One running GATT link per GATT sensor: new ones started, removed or changed ones stopped (and remade)."""
        if self.gatt_factory is None or self._stopping:
            return
        wanted = {s.name: s for s in self.sensors.values() if s.gatt is not None}
        for name, (config, link) in list(self.gatt_links.items()):
            if wanted.get(name) != config:
                del self.gatt_links[name]
                try:
                    await link.stop()
                except Exception:
                    log.exception("ble: stopping the GATT link of %s failed", name)
        for name, sensor in wanted.items():
            if name not in self.gatt_links:
                link = self.gatt_factory(sensor, self.settings, self)
                self.gatt_links[name] = (sensor, link)
                await self._start_part(f"GATT link of {name}", link.start)

    async def _retire(self, sensor: SensorConfig) -> None:
        """A removed sensor says so and leaves its rooms (only as an account of ours)."""
        uid = user_id(sensor.name, self.server_name)
        for room_id in self._joined.pop(sensor.name, []):
            await self._notice(uid, room_id, f"BLE sensor {sensor.name} was removed and leaves the room.")
            if uid in self._own_users:
                try:
                    await asyncio.shield(self.services.rooms.set_membership(uid, room_id, uid, "leave"))
                except MatrixError as exc:
                    log.warning("ble: sensor %s cannot leave %s: %s", sensor.name, room_id, exc.message)
        self._own_users.discard(uid)
        self._last_readings.pop(sensor.name, None)
        log.info("ble: sensor %s removed", sensor.name)

    async def _prepare(self, sensor: SensorConfig) -> None:
        """The sensor's account (created if missing, never adopted) and its rooms (joined where allowed)."""
        uid = user_id(sensor.name, self.server_name)
        if not await self._own_account(sensor, uid):
            self._joined[sensor.name] = []
            return
        store = self.services.store
        joined: list[str] = []
        for room in sensor.rooms:
            room_id = room
            if room.startswith("#"):
                found = store.get_alias(room)
                if found is None:
                    self._warn_once(f"{sensor.name} {room}", "ble: sensor %s: room alias %s does not exist here",
                                    sensor.name, room)  # fmt: skip
                    continue
                room_id = found[0]
            if store.membership(room_id, uid) != "join":
                try:
                    await asyncio.shield(self.services.rooms.set_membership(uid, room_id, uid, "join"))
                except MatrixError as exc:
                    self._warn_once(f"{sensor.name} {room}", "ble: sensor %s cannot join %s yet (%s): invite %s to the "
                                    "room", sensor.name, room, exc.message, uid)  # fmt: skip
                    continue
                keyed = "encrypted, with its key" if sensor.key else "not encrypted"
                await self._notice(uid, room_id, f"BLE sensor {sensor.name} joined this room: address "
                                   f"{sensor.address}, format {sensor.format}, {keyed}.")  # fmt: skip
            joined.append(room_id)
        self._joined[sensor.name] = joined

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    async def _own_account(self, sensor: SensorConfig, uid: str) -> bool:
        store = self.services.store
        owner = account_owner(sensor.name)
        user = store.get_user(uid)
        if user is None:
            from lowband.gateway.store.interfaces import UserExists

            try:  # a sensor never logs in: no password hash matches this one
                await store.create_user(uid, "!ble-" + secrets.token_hex(16), False, int(time.time() * 1000),
                                        owner=owner)  # fmt: skip
                await store.set_profile_field(uid, "displayname", f"BLE sensor {sensor.name}")
            except UserExists:
                pass  # registered meanwhile: the owner check below refuses it
            user = store.get_user(uid)
        if user is not None and user.get("owner") == owner:
            self._own_users.add(uid)
            self.refused_accounts.pop(sensor.name, None)
            return True
        self._own_users.discard(uid)
        if sensor.name not in self.refused_accounts:
            self.counts["refused_account"] += 1
            log.error("ble: sensor %s: %s exists and was not created for this sensor; nothing is posted as it. "
                      "Remove the sensor and add it under another name", sensor.name, uid)  # fmt: skip
        self.refused_accounts[sensor.name] = f"{uid} belongs to someone else"
        return False

    # ------------------------------------------------------------ commands

    def _on_room_event(self, sent: Any) -> None:
        event = sent.event
        if self._stopping or event.type != "m.room.message" or event.sender in self._own_users:
            return
        command = parse_command(event.content.get("body"), "ble_")
        if command is None:
            return
        name, text = command
        sensor = self.sensors.get(name)
        if sensor is None or sensor.gatt is None or sensor.gatt.command is None:
            return
        if event.room_id not in self._joined.get(sensor.name, []):
            return
        allowed, needed = may_command(self.services.rooms, event.room_id, event.sender)
        if not allowed:
            refusal = f"{event.sender} may not command {sensor.name} (needs power level {needed})."
            self._spawn(self._notice(user_id(sensor.name, self.server_name), event.room_id, refusal))
            return
        self._spawn(self._command(sensor, event.room_id, text))

    async def _command(self, sensor: SensorConfig, room_id: str, text: str) -> None:
        uid = user_id(sensor.name, self.server_name)
        entry = self.gatt_links.get(sensor.name)
        if entry is None:
            await self._notice(uid, room_id, f"BLE sensor {sensor.name} cannot take commands: no GATT link.")
            return
        data = text.encode()
        if text.lower().startswith("0x"):  # `!name 0x0102`: bytes as hex
            try:
                data = bytes.fromhex(text[2:])
            except ValueError:
                await self._notice(uid, room_id, f"Command to {sensor.name}: {text!r} is not hex bytes.")
                return
        try:
            await entry[1].write_command(data)
        except Exception as exc:  # noqa: BLE001 - the device refused or is gone: said in the room
            self.counts["commands_failed"] += 1
            await self._notice(uid, room_id, f"Command to {sensor.name} failed: {exc}")
            return
        self.counts["commands_written"] += 1

    # ------------------------------------------------------------ numbers

    def joined_rooms(self, name: str) -> list[str]:
        """The room IDs sensor ``name`` is joined to and posts into (empty for no such sensor)."""
        return list(self._joined.get(name, []))

    def metrics(self) -> list[Any]:
        """The ``lowband_ble_*`` Prometheus families, read at scrape time (see :func:`metric_families`)."""
        return metric_families(self.stats(), time.time())

    def stats(self) -> dict[str, Any]:
        """Counters and per-sensor health, JSON-ready (for /metrics and the status page)."""
        stats = self.tracker.stats(self.clock())
        stats.update({
            "queue": len(self._queue),
            "queue_size": self.settings.queue_size,
            "queue_full": self.counts["queue_full"],
            "posted": self.counts["posted"],
            "post_failed": self.counts["post_failed"],
            "post_refused": self.counts["post_refused"],
            "presence_notices": self.counts["presence_notices"],
            "commands_written": self.counts["commands_written"],
            "commands_failed": self.counts["commands_failed"],
            "refused_accounts": dict(self.refused_accounts),
            "scanning": self.scanner is not None and not self.counts["scanner_failed"],
        })  # fmt: skip
        sensors = stats.get("sensors")
        if isinstance(sensors, dict):
            for name, entry in sensors.items():
                entry["user_id"] = user_id(name, self.server_name)
                entry["rooms"] = list(self._joined.get(name, []))
                config = self.sensors.get(name)
                entry["interval_s"] = config.interval_s if config is not None else None
                entry["last_reading"] = _reading_summary(self._last_readings.get(name))
                link = self.gatt_links.get(name)
                link_stats = getattr(link[1], "stats", None) if link is not None else None
                if callable(link_stats):
                    try:
                        entry["gatt"] = link_stats()
                    except Exception:
                        log.exception("ble: GATT stats of %s failed", name)
        scanner_stats = getattr(self.scanner, "stats", None)
        if callable(scanner_stats):
            try:
                stats["scanner"] = scanner_stats()
            except Exception:
                log.exception("ble: scanner stats failed")
        return stats


def _reading_summary(reading: Reading | None) -> dict[str, Any] | None:
    """``{"ts_ms", "values", "units"}`` of a reading, by the SenML names its room event has; None without one."""
    if reading is None:
        return None
    values: dict[str, float] = {}
    units: dict[str, str] = {}
    for name, value in reading.decoded.values.items():
        pair, clean = mantissa_scale(value), senml_name(name)
        if pair is None or not clean or len(values) >= 32:
            continue  # left out of the room event too (telemetry_content)
        values[clean] = pair[0] if pair[1] == 0 else float(f"{pair[0]}e{pair[1]}")  # the value the event holds
        unit = reading.decoded.units.get(name)
        if unit:
            units[clean] = unit
    return {"ts_ms": reading.wall_ms, "values": values, "units": units}


# ------------------------------------------------------------------ entry


def default_scanner_factory() -> ScannerFactory | None:
    """``make_scanner`` of gateway/ble/scanner.py (bleak), or None where it is not there."""
    try:
        module = importlib.import_module("lowband.gateway.ble.scanner")
    except ImportError as exc:
        log.error("ble: no scanner (%s): advertisements are not heard", exc)
        return None
    factory: ScannerFactory | None = getattr(module, "make_scanner", None)
    return factory


def default_gatt_factory() -> GattFactory | None:
    """``make_gatt_link`` of gateway/ble/gatt.py (bleak), or None where it is not there."""
    try:
        module = importlib.import_module("lowband.gateway.ble.gatt")
    except ImportError:
        return None
    factory: GattFactory | None = getattr(module, "make_gatt_link", None)
    return factory


#: ``Services.components`` key of the running component.
COMPONENT_KEY = "ble"


async def start_ble(
    services: Any, *, scanner_factory: ScannerFactory | None = None, gatt_factory: GattFactory | None = None
) -> Stop:
    """Component entry (gateway/app.py): start the BLE component; returns its stop.

    Without factories, the bleak scanner and GATT manager of
    gateway/ble/scanner.py and gatt.py are used. The component is kept in
    ``services.components["ble"]``.
    """
    registry = BleRegistry(services.config.data_dir)
    component = BleComponent(
        services, registry, scanner_factory or default_scanner_factory(), services.config.ble,
        gatt_factory=gatt_factory or default_gatt_factory(),
    )  # fmt: skip
    await component.start()
    services.components[COMPONENT_KEY] = component
    log.info("ble: %d sensor(s), %s scanning%s", len(component.sensors), component.settings.mode,
             f" on {component.settings.adapter}" if component.settings.adapter else "")  # fmt: skip

    async def stop() -> None:
        services.components.pop(COMPONENT_KEY, None)
        await component.stop()

    return stop
