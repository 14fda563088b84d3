"""Links at run time: serial transports, the link cores, rooms.

One :class:`LinkRuntime` per gateway. It

* keeps one transport per distinct ``link`` of the provisioned devices
  (``serial:/dev/ttyUSB0?bps=100``), reopening a port that disappears;
* feeds received frames to that link's :class:`GatewayLink` and carries out
  the actions in order — a ``Persist`` is durable before the ``Transmit``
  after it (a list whose action fails is abandoned there);
* counts refused frames per link and kind — the core's ``Refused`` and the
  bytes the serial framer could not decode (``undecodable``) — at once, not
  behind the queue of writes, and logs them through a
  :class:`~lowband.gateway.link.refusals.RefusalLog`: one line per kind per
  :data:`~lowband.gateway.link.refusals.LOG_INTERVAL` at most, saying how
  many; :meth:`LinkRuntime.refusal_counts` reads the counters;
* acknowledges after commit (gateway/homeserver/delivery.py): each
  ``Deliver`` becomes a room event sent as the device's Matrix user in a
  task of its own (a slow store holds up no other frame), and only then
  does the core get :meth:`GatewayLink.delivered` (committed, or refused as
  a value: acknowledged, logged, counted) or
  :meth:`GatewayLink.delivery_failed` (not acknowledged: the device sends
  it again). The link's message ID is the transaction ID, so a retry never
  makes a second event;
* speaks only as accounts it created (``users.owner`` = ``device:NAME``):
  a ``@dev.NAME`` account that exists and is someone else's is never
  adopted — an error in the log, a counter, ``lowband device show`` says
  how to fix it, and nothing is posted as that user;
* watches the rooms for commands: ``!NAME text`` from a member whose power
  level reaches the room's ``org.lowband.command`` level (default 50)
  queues ``text`` for device NAME, delivered at its next uplink;
* joins each device's user to its rooms, posts a notice when a device joins
  a room or gets a new key, and picks up ``lowband device`` changes within
  :data:`RECONCILE_SECONDS`;
* keeps figures per device (gateway/link/device_stats.py): the core counts
  frames, refusals, retransmissions, handshakes and time on air into each
  device's counters, the runtime adds the last reading (from the event it
  committed, no store read); :meth:`LinkRuntime.device_stats` reads them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from lowband.codecs import compact
from lowband.codecs.context import Context, parse_context
from lowband.codecs.link_frame import SerialFramer, serial_encode
from lowband.gateway.aio import cancel_and_wait
from lowband.gateway.devices.account import account_problem, device_owner
from lowband.gateway.devices.registry import DeviceRecord, Registry, fingerprint, load_or_create_link_key
from lowband.gateway.devices.uplink import deliver_uplink
from lowband.gateway.homeserver import delivery
from lowband.gateway.homeserver.commands import may_command, parse_command
from lowband.gateway.homeserver.rooms import Sent
from lowband.gateway.link import gateway_core as core
from lowband.gateway.link.device_stats import AIRTIME_WINDOW_S, AirtimeWindow, DeviceCounters, snapshot, wire_len
from lowband.gateway.link.refusals import RefusalLine, RefusalLog
from lowband.gateway.matrix.errors import MatrixError

log = logging.getLogger("lowband.link")
RECONCILE_SECONDS = 2.0


def reack_interval(bps: float) -> float:
    """Seconds between repeated answers to one device on a line of ``bps``.

    Ten times the time a pure ACK (14 bytes on a serial line, 10 bits a
    byte) takes on the air, so repeated answers hold at most a tenth of the
    line, and at least 0.2 s. At every rate it stays within the device's own
    retransmission timeout (sim/device_core.py ``rto_for_bps``: the same
    0.2 s floor, and 1,560 bit times against 1,400): without replays every
    retry of the device is answered, and a retry refused because of replays
    comes less than one interval after an answer that went out.
    """
    return max(core.REACK_INTERVAL, 10 * 14 * 10 / max(bps, 1))


def serial_airtime(bps: float) -> Callable[[int], float]:
    """Seconds a link frame of ``n`` bytes takes on a serial line of ``bps`` (10 bits a byte, COBS included)."""
    rate = max(float(bps), 1.0)
    return lambda n: wire_len(n) * 10 / rate


def parse_link(spec: str) -> tuple[str, str, dict[str, str]]:
    """``serial:/dev/ttyUSB0?bps=100`` → ("serial", "/dev/ttyUSB0", {"bps": "100"})."""
    kind, _, rest = spec.partition(":")
    path, _, query = rest.partition("?")
    return kind, path, {k: v[-1] for k, v in parse_qs(query).items()}


class SerialTransport:
    """A serial port (or pty) read through the event loop; reopened when it disappears."""

    def __init__(self, path: str, bps: int, on_bytes: Any) -> None:
        self.path = path
        self.bps = bps
        self.on_bytes = on_bytes
        self._port: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = asyncio.Event()

    def start(self) -> None:
        """Open the port now or keep trying in the background."""
        self._task = asyncio.create_task(self._keep_open())

    async def _keep_open(self) -> None:
        import serial  # pyserial

        delay = 0.2
        loop = asyncio.get_running_loop()
        while not self._closing:
            if self._port is None:
                try:
                    self._port = serial.Serial(self.path, baudrate=self.bps if self.bps >= 50 else 9600, timeout=0)
                    loop.add_reader(self._port.fileno(), self._readable)
                    self.connected.set()
                    log.info("link %s open", self.path)
                    delay = 0.2
                except (OSError, serial.SerialException) as exc:
                    log.debug("cannot open %s yet: %s", self.path, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
            await asyncio.sleep(1.0)

    def _readable(self) -> None:
        try:
            data = os.read(self._port.fileno(), 4096)
        except OSError as exc:
            data, error = b"", exc
        else:
            error = None
        if not data:
            log.warning("link %s went away (%s); reopening", self.path, error or "end of file")
            self._drop()
            return
        self.on_bytes(data)

    def _drop(self) -> None:
        if self._port is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._port.fileno())
            except (ValueError, OSError):
                pass
            try:
                self._port.close()
            except OSError:
                pass
        self._port = None
        self.connected.clear()

    def write(self, data: bytes) -> None:
        """Send bytes (dropped with a log line while the port is closed; the ARQ resends)."""
        if self._port is None:
            log.info("link %s closed; %d bytes not sent", self.path, len(data))
            return
        try:
            os.write(self._port.fileno(), data)
        except OSError as exc:
            log.warning("write to %s failed: %s", self.path, exc)
            self._drop()

    async def close(self) -> None:
        """Stop reopening and close the port."""
        self._closing = True
        await cancel_and_wait(self._task)
        self._drop()


@dataclass
class _Link:
    spec: str
    core: core.GatewayLink
    transport: Any  # SerialTransport or LoRaModemTransport
    framer: SerialFramer = field(default_factory=SerialFramer)
    queue: asyncio.Queue[list[Any]] = field(default_factory=asyncio.Queue)
    worker: asyncio.Task[None] | None = None
    refusals: RefusalLog = field(default_factory=RefusalLog)
    window_s: float = AIRTIME_WINDOW_S  # of the devices' airtime figures
    budget_s: float | None = None  # a device's duty-cycle budget per window (None: unlimited or not configured)


class LinkRuntime:
    """Every link of the gateway and the devices on them."""

    def __init__(self, services: Any, registry: Registry) -> None:
        self.services = services
        self.registry = registry
        self.key = load_or_create_link_key(services.config.data_dir / "link.key")
        self.links: dict[str, _Link] = {}
        self.devices: dict[str, DeviceRecord] = {}
        self.contexts: dict[str, Context] = {}
        self._version: tuple[int, int, int] | None = None
        self._reconciler: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # deliveries and notices in flight
        self.stats: dict[str, int] = {}
        #: Device name -> why the link will not speak as its account (someone else's); see devices/account.py.
        self.refused_accounts: dict[str, str] = {}
        self._own_users: set[str] = set()  # device accounts checked to be the link's own: the only ones it speaks as
        self._counters: dict[str, DeviceCounters] = {}  # device name -> its figures, kept across key rotations

    # ------------------------------------------------------------- life

    async def start(self) -> None:
        """Reconcile once, then keep watching the registry; listen to the rooms."""
        self.services.rooms.add_listener(self._on_room_event)
        await self.reconcile()
        self._reconciler = asyncio.create_task(self._reconcile_loop())
        self._reporter = asyncio.create_task(self._report_loop())

    async def stop(self) -> None:
        """Stop the workers and close every port."""
        if self._reconciler is not None:
            self._reconciler.cancel()
        await cancel_and_wait(self._reporter)
        self._log_refusals(time.monotonic(), final=True)
        for task in list(self._tasks):  # an event being stored stays unacknowledged: the device sends it again
            await cancel_and_wait(task)
        for link in self.links.values():
            if link.worker is not None:
                link.worker.cancel()
            await link.transport.close()

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            try:
                await self.reconcile()
            except Exception:
                log.exception("device reconciliation failed; retrying")

    async def _report_loop(self) -> None:
        while True:
            now = time.monotonic()
            deadlines = [d for d in (link.refusals.next_deadline() for link in self.links.values()) if d is not None]
            # A kind counted after this look has its deadline an interval after its own line, later than ours.
            await asyncio.sleep(max(0.05, min(deadlines) - now) if deadlines else RECONCILE_SECONDS)
            self._log_refusals(time.monotonic())

    def _log_refusals(self, now: float, final: bool = False) -> None:
        for link in self.links.values():
            for line in link.refusals.flush(now) if final else link.refusals.due(now):
                self._log_refusal(link, line)

    def _log_refusal(self, link: _Link, line: RefusalLine) -> None:
        log.info("link %s: %s", link.spec, line.text())

    def refusal_counts(self) -> dict[str, dict[str, int]]:
        """Frames refused since start, per link spec and kind (``bad_tag``, ``undecodable``, ...); a copy.

        The kinds are the core's ``Refused`` reasons (gateway_core.py) and
        ``undecodable`` for bytes the serial framer could not turn into a
        frame. Never raises.
        """
        return {spec: link.refusals.totals for spec, link in self.links.items()}

    def device_stats(self) -> dict[str, dict[str, Any]]:
        """Figures per provisioned device since start, by device name; JSON-ready copies. Never raises.

        Each value has exactly these keys: ``link``, ``address``,
        ``frames_in``, ``frames_out``, ``bytes_in``, ``bytes_out`` (link frame
        bytes), ``refused`` (kind -> count, frames attributable to the
        device), ``retransmissions`` (``retransmissions_in`` + ``_out``),
        ``handshakes``, ``session``, ``last_seen_ms`` (Unix ms of the last
        authenticated frame not refused), ``rssi_dbm``, ``snr_db``,
        ``battery``, ``last_reading``, ``airtime_s_window``,
        ``airtime_window_s``, ``duty_cycle_budget_s``, ``duty_cycle_left``,
        ``commands_pending``; unknowable ones are None (docs/metrics.md).
        """
        now, wall_now = time.monotonic(), time.time()
        out: dict[str, dict[str, Any]] = {}
        for name, record in list(self.devices.items()):
            link = self.links.get(record.link)
            counters = self._counters.get(name)
            if link is None or counters is None:
                continue
            out[name] = snapshot(counters, link=record.link, address=record.address,
                                 session=link.core.has_session(record.address),
                                 commands_pending=link.core.pending_commands(record.address),
                                 now=now, wall_now=wall_now, budget_s=link.budget_s)  # fmt: skip
        return out

    async def reconcile(self) -> None:
        """Bring links, users, memberships and notices in line with the registry."""
        version = self.registry.version()
        pending = [r for r in self.devices.values() if not self._settled(r)]
        if version == self._version and not pending:
            return
        self._version = version
        records = self.registry.devices(include_revoked=True)
        for record in records:
            if record.revoked:
                await self._retire(record)
                continue
            known = self.devices.get(record.name)
            link = self._link_for(record.link)
            if known is None or known.key_ts != record.key_ts:
                if known is not None and known.link in self.links:
                    self.links[known.link].core.remove_device(known.address)
                counters = self._counters.get(record.name)
                if counters is None or (known is not None and known.link != record.link):  # figures of one link
                    counters = self._counters[record.name] = DeviceCounters(airtime=AirtimeWindow(link.window_s))
                link.core.add_device(
                    core.DeviceEntry(record.address, record.name, record.static_public),
                    self.registry.session_state(record.name, record.key_ts), counters,
                )  # fmt: skip
                self.contexts[record.name] = parse_context(record.context)
                self.devices[record.name] = record
            await self._join_rooms(record)

    def _settled(self, record: DeviceRecord) -> bool:
        if record.name in self.refused_accounts:
            return False  # checked again every round: the operator may have fixed it
        return all(self.services.store.membership(r, record.user_id) == "join" for r in record.rooms)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _link_for(self, spec: str) -> _Link:
        link = self.links.get(spec)
        if link is not None:
            return link
        kind, path, query = parse_link(spec)
        bps = int(query.get("bps", "9600"))
        mtu = int(query.get("mtu", "253"))
        holder: dict[str, _Link] = {}
        transport: Any = SerialTransport(path, bps, lambda data: self._on_bytes(holder["link"], data))
        airtime, window_s, budget_s = serial_airtime(bps), AIRTIME_WINDOW_S, _serial_budget(spec, query)
        if kind == "lora":  # a transparent UART modem: same frames, within the duty cycle
            from lowband.gateway.link.lora_modem import (
                LoRaModemTransport,
                device_budget_s,
                frame_airtime,
                scheduler_for,
            )

            scheduler = scheduler_for(query)
            transport = LoRaModemTransport(transport, scheduler)
            mtu = min(mtu, scheduler.mtu)
            airtime, window_s, budget_s = frame_airtime(scheduler), scheduler.budget_window_s, device_budget_s(scheduler)
        gateway = core.GatewayLink(self.key, mtu=mtu, reack_interval=reack_interval(bps), airtime_s=airtime)
        link = _Link(spec, gateway, transport, window_s=window_s, budget_s=budget_s)
        holder["link"] = link
        self.links[spec] = link
        link.worker = asyncio.create_task(self._work(link))
        transport.start()
        log.info("link %s (%s) watching %s", spec, kind, path)
        return link

    async def _retire(self, record: DeviceRecord) -> None:
        known = self.devices.pop(record.name, None)
        self._counters.pop(record.name, None)
        if known is not None and known.link in self.links:
            self.links[known.link].core.remove_device(known.address)
            log.info("device %s revoked: its frames are refused", record.name)
            if not await self._own_account(record):
                return  # the account is not the link's: it neither posts nor leaves as it
            for room_id in known.rooms:
                if self.services.store.membership(room_id, record.user_id) == "join":
                    await self._notice(record.user_id, room_id, f"Device {record.name} was revoked and leaves the room.")
                    await self.services.rooms.set_membership(record.user_id, room_id, record.user_id, "leave")

    async def _own_account(self, record: DeviceRecord) -> bool:
        """Create the device's account if it is missing; whether the link may speak as it.

        An account the link did not create (registered by a person, or made
        before ``users.owner`` existed and not claimable, see
        store/sqlite/schema.py) is never adopted: logged as an error once,
        counted, kept in :attr:`refused_accounts` until the operator fixes it.
        """
        store = self.services.store
        owner = device_owner(record.name)
        user = store.get_user(record.user_id)
        if user is None:
            from lowband.gateway.store.interfaces import UserExists

            try:  # a device user never logs in: no password hash matches this one
                await store.create_user(record.user_id, "!device-" + secrets.token_hex(16), False,
                                        int(time.time() * 1000), owner=owner)  # fmt: skip
            except UserExists:
                pass  # someone registered it meanwhile: the owner check below refuses it
            user = store.get_user(record.user_id)
        problem = account_problem(record, user)
        if problem is None:
            self._own_users.add(record.user_id)
            if self.refused_accounts.pop(record.name, None) is not None:
                log.info("device %s: %s is the link's account now; its readings are posted again", record.name,
                         record.user_id)  # fmt: skip
            return True
        self._own_users.discard(record.user_id)
        if record.name not in self.refused_accounts:
            self._count("refused_account")
            log.error("device %s: %s", record.name, problem)
        self.refused_accounts[record.name] = problem
        return False

    async def _join_rooms(self, record: DeviceRecord) -> None:
        if not await self._own_account(record):
            return
        store = self.services.store
        for room_id in record.rooms:
            if store.membership(room_id, record.user_id) != "join":
                try:
                    await self.services.rooms.set_membership(record.user_id, room_id, record.user_id, "join")
                except MatrixError as exc:
                    log.warning("device %s cannot join %s yet (%s): invite %s to the room", record.name, room_id,
                                exc.message, record.user_id)  # fmt: skip
                    continue
            if not self.registry.announced(record.name, room_id, record.key_ts):
                what = "joined this room" if record.key_ts == record.created_ts else "has a NEW link key"
                await self._notice(record.user_id, room_id,
                                   f"Device {record.name} {what}: link address {record.address} on {record.link}, "
                                   f"key fingerprint {fingerprint(record.static_public)}.")  # fmt: skip
                await self.registry.mark_announced(record.name, room_id, record.key_ts)

    async def _notice(self, sender: str, room_id: str, text: str) -> None:
        if sender not in self._own_users:
            return  # never post as an account not checked to be the link's own
        try:
            await self.services.rooms.send(sender, room_id, "m.room.message", {"msgtype": "m.notice", "body": text})
        except MatrixError as exc:
            log.warning("cannot post a notice in %s: %s", room_id, exc.message)

    # ------------------------------------------------------------- frames

    def _on_bytes(self, link: _Link, data: bytes) -> None:
        now = time.monotonic()
        dropped = link.framer.dropped
        frames = link.framer.feed(data)
        if link.framer.dropped > dropped:  # not COBS, or longer than a frame: no address to name
            self._refused(link, "undecodable", None, now, link.framer.dropped - dropped)
        for frame in frames:
            actions: list[core.Action] = []
            for action in link.core.receive(frame, now):
                if isinstance(action, core.Refused):  # counted here: a flood of them never queues behind writes
                    self._refused(link, action.reason, action.address, now)
                else:
                    actions.append(action)
            if actions:
                link.queue.put_nowait(actions)

    def _refused(self, link: _Link, kind: str, address: int | None, now: float, count: int = 1) -> None:
        self._count(f"refused_{kind}", count)
        line = link.refusals.note(kind, address, now, count)
        if line is not None:
            self._log_refusal(link, line)

    async def _work(self, link: _Link) -> None:
        while True:
            actions = await link.queue.get()
            for action in actions:
                try:
                    await self._carry_out(link, action)
                except Exception:
                    # What follows in the list counted on this action: a Transmit after a Persist that
                    # failed would acknowledge what is not on disk. The device's retry brings it back.
                    log.exception("link %s: %s failed; the rest of its list is dropped", link.spec,
                                  type(action).__name__)  # fmt: skip
                    break

    def _device_at(self, link: _Link, address: int) -> DeviceRecord | None:
        for record in self.devices.values():
            if record.address == address and record.link == link.spec:
                return record
        return None

    async def _carry_out(self, link: _Link, action: Any) -> None:
        record = self._device_at(link, getattr(action, "address", -1) or -1)
        if isinstance(action, core.Transmit):
            link.transport.write(serial_encode(action.frame))
        elif isinstance(action, core.Persist) and record is not None:
            await self.registry.save_session(record.name, record.key_ts, action.state)
        elif isinstance(action, core.Deliver):
            self._spawn(self._uplink(link, record, action))
        elif isinstance(action, core.Refused):
            self._refused(link, action.reason, action.address, time.monotonic())
        elif isinstance(action, core.SessionStarted) and record is not None:
            log.info("device %s: new link session %s", record.name, action.session_id)
        elif isinstance(action, core.CommandAcked) and record is not None:
            self._count("commands_acked")
            log.info("device %s acknowledged a command", record.name)
        elif isinstance(action, core.CommandDropped) and record is not None:
            await self._notice(record.user_id, record.rooms[0],
                               f"Device {record.name} has too many waiting commands; the oldest was dropped.")  # fmt: skip

    def _count(self, key: str, count: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + count

    async def _uplink(self, link: _Link, record: DeviceRecord | None, action: core.Deliver) -> None:
        """Store one message and report the outcome to the core; its answer (the ACK) goes to the worker."""
        if record is None:  # revoked meanwhile: nothing may be posted; the core forgot the device anyway
            result = delivery.refused("device", "no such device")
        elif record.name in self.refused_accounts:
            result = delivery.refused("account", self.refused_accounts[record.name])
        elif record.user_id not in self._own_users:  # a frame before the account check ran: the device retries
            result = delivery.failed("account_unchecked", f"{record.user_id} is not checked yet")
        else:
            result = await deliver_uplink(
                self.services.rooms, user_id=record.user_id, rooms_allowed=record.rooms, ctx=self.contexts[record.name],
                edge="link", message_id=action.message_id, payload=action.payload,
                committed=self._reading_noter(record.name),
            )  # fmt: skip
        name = record.name if record is not None else f"at address {action.address}"
        now = time.monotonic()
        if result.outcome is delivery.Outcome.COMMITTED:
            self._count("readings")
            answer = link.core.delivered(action.token, now)
        elif result.outcome is delivery.Outcome.REFUSED:
            self._count(f"refused_{result.reason}")
            log.warning("device %s: message refused (%s), acknowledged so it does not block the next: %s", name,
                        result.reason, result.detail)  # fmt: skip
            answer = link.core.delivered(action.token, now)
        else:
            self._count("delivery_failed")
            log.warning("device %s: message not stored (%s: %s); not acknowledged, the device sends it again", name,
                        result.reason, result.detail)  # fmt: skip
            answer = link.core.delivery_failed(action.token, now)
        if result.acknowledge and not answer:
            log.info("device %s: %s done, but its session changed meanwhile: no acknowledgement", name, action.message_id)
        if answer:
            link.queue.put_nowait(answer)

    def _reading_noter(self, name: str) -> Callable[[dict[str, Any]], None]:
        """What keeps a committed event's values as the device's last reading (a text message changes nothing)."""

        def note(event: dict[str, Any]) -> None:
            counters = self._counters.get(name)
            ts = event.get("origin_server_ts")
            if counters is not None:
                counters.note_reading(event["content"], ts if isinstance(ts, int) else int(time.time() * 1000))

        return note

    # ------------------------------------------------------------- commands

    def _on_room_event(self, sent: Sent) -> None:
        event = sent.event
        if event.type != "m.room.message" or event.sender.startswith("@dev."):
            return
        command = parse_command(event.content.get("body"), "dev.")
        if command is None:
            return
        name, text = command
        record = self.devices.get(name)
        if record is None or event.room_id not in record.rooms:
            return
        allowed, needed = may_command(self.services.rooms, event.room_id, event.sender)
        if not allowed:
            log.info("%s may not command %s (power level below %d)", event.sender, name, needed)
            self._spawn(self._notice(record.user_id, event.room_id,
                                     f"{event.sender} may not command {name} (needs power level {needed})."))  # fmt: skip
            return
        ctx = self.contexts[name]
        room_index = ctx.rooms.index(event.room_id) if event.room_id in ctx.rooms else 0
        payload = compact.encode_form(compact.CompactForm(kind=compact.KIND_TEXT, room=room_index, body=text.strip()), ctx)
        link = self.links.get(record.link)
        if link is None:
            return
        drops = link.core.queue_command(record.address, payload)
        if drops:
            link.queue.put_nowait(drops)
        self._count("commands_queued")
        log.info("command for %s queued by %s (%d waiting)", name, event.sender, link.core.pending_commands(record.address))


def _serial_budget(spec: str, query: dict[str, str]) -> float | None:
    """A serial device's duty-cycle budget per window, from ``?duty=0.01`` in its link spec (None: no limit)."""
    text = query.get("duty")
    if text is None:
        return None
    try:
        duty = float(text)
    except ValueError:
        duty = -1.0
    if not 0 < duty <= 1:
        log.warning("link %s: duty=%s is not a fraction in (0, 1]; no duty-cycle budget", spec, text)
        return None
    return None if duty == 1 else duty * AIRTIME_WINDOW_S


async def start_links(services: Any) -> Any:
    """Component entry (see gateway/app.py); also watches for the first `lowband device add`."""
    runtime = LinkRuntime(services, Registry(services.store.link_devices))
    services.components["links"] = runtime
    await runtime.start()
    return runtime.stop
