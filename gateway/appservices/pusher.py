"""Pushing to bridges: every event a bridge wants reaches it, in stream order, whatever happens.

Rules:

* the backlog is the store's event stream itself, read from each bridge's
  cursor (``store/sqlite/appservices.py``): a bridge away for days costs
  disk the events take anyway, never memory, and nothing is dropped;
* which events a bridge wants is :mod:`.interest`; one transaction holds at
  most :data:`MAX_EVENTS` of them in stream order, plus ephemeral events
  (``receive_ephemeral``) and, for an encrypted bridge (``org.matrix.msc3202``),
  to-device messages for its users' devices and device list changes;
* what a transaction holds, its number and the position it reaches are
  written before it is first sent; a retry — also after a restart or
  ``kill -9`` — sends the same transaction ID with the same events; a 2xx
  answer (whatever its body) moves the cursor, and only then is the next
  transaction made;
* a failure (no connection, a timeout of :attr:`AppServicePusher.timeout_s`,
  a non-2xx answer) backs the bridge off with ``homeserver.retry_schedule``
  (1 s doubling to a minute), so a bridge that comes back is caught up
  within a minute even after days;
* typing notices and read receipts are kept in memory only, at most
  :data:`EPHEMERAL_BACKLOG` per bridge (the oldest dropped, counted), and
  what a transaction in flight carries of them is lost with a restart:
  they describe the present, and a bridge that was away catches up with
  the rooms, not with who was typing. Only local users' typing and public
  receipts are pushed (what the homeserver's listeners report).

One attempt per bridge at a time; bridges are independent, so a slow one
delays no other.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lowband.gateway.aio import drive_schedule
from lowband.gateway.appservices.client import BridgeClient, BridgeError, BridgeUnreachable, path_segment
from lowband.gateway.appservices.interest import Interest
from lowband.gateway.appservices.registration import AppService
from lowband.gateway.homeserver.retry_schedule import DeliverySchedule
from lowband.gateway.homeserver.services import Services
from lowband.gateway.store.interfaces import AppServiceStore

__all__ = ["EPHEMERAL_BACKLOG", "MAX_EVENTS", "AppServicePusher"]

log = logging.getLogger("lowband.appservices")

MAX_EVENTS = 100
MAX_EPHEMERAL = 100
MAX_TO_DEVICE = 100
MAX_DEVICE_LISTS = 1000
#: timeline rows looked at per attempt when few concern the bridge (bounds the time one step holds the loop)
SCAN_ROWS = 2000
_SCAN_BATCH = 500
#: to-device rows looked at per attempt (most may be for other users' devices)
TO_DEVICE_SCAN = 1000
EPHEMERAL_BACKLOG = 1000
PUSH_TIMEOUT_S = 60.0
#: how often a cursor moved past events no bridge wanted is written (it is also written when caught up)
CURSOR_WRITE_S = 2.0
#: users and devices whose one-time key counts one transaction reports
_MAX_KEY_USERS = 100
_MAX_KEY_DEVICES = 100


@dataclass
class _Queue:
    bridge: AppService
    cursor: int
    prefix: str
    seq: int
    upto: int | None
    content: dict[str, Any] | None
    saved_cursor: int
    saved_at: float = 0.0
    ephemeral: OrderedDict[tuple[str, ...], dict[str, Any] | None] = field(default_factory=OrderedDict)
    in_flight_ephemeral: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0


class AppServicePusher:
    """Drains the event stream to every registered bridge with a URL."""

    def __init__(self, services: Services, bridges: list[AppService], client: BridgeClient, tables: AppServiceStore,
                 *, clock: Callable[[], float] = time.monotonic, schedule: DeliverySchedule | None = None,
                 timeout_s: float = PUSH_TIMEOUT_S) -> None:  # fmt: skip
        self.services = services
        self.bridges = [b for b in bridges if b.url is not None]  # url: null — the bridge only calls us
        self.client = client
        self.tables = tables
        self.clock = clock
        self.schedule = schedule or DeliverySchedule(base=1.0, cap=60.0)
        self.timeout_s = timeout_s
        self.interest = Interest(services, self.bridges)
        self._queues: dict[str, _Queue] = {}
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._attempts: set[asyncio.Task[None]] = set()
        #: counters since start (for tests and logs)
        self.sent_transactions = 0
        self.sent_events = 0
        self.failed_attempts = 0
        self.dropped_ephemeral = 0

    # ------------------------------------------------------------- life

    async def start(self) -> None:
        """Load (or start) each bridge's queue, resume what was in flight or behind, listen for changes."""
        store = self.services.store
        rows = self.tables.queues()
        for bridge in self.bridges:
            row = rows.get(bridge.id)
            if row is None:  # a new bridge gets what happens from now on, not the server's whole history
                row = await self.tables.add_queue(bridge.id, store.persisted, secrets.token_hex(4))
            queue = _Queue(bridge, row.cursor, row.txn_prefix, row.txn_seq, row.txn_upto, row.txn_content, row.cursor)
            self._queues[bridge.id] = queue
            if queue.upto is not None or queue.cursor < store.persisted:
                self.schedule.add_work(bridge.id)
        if any(b.receive_ephemeral for b in self.bridges):
            self.services.typing.listeners.append(self._typing)
            self.services.receipt_listeners.append(self._receipt)
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._watch())]

    async def stop(self) -> None:
        """Stop pushing; what is in flight is sent again after the next start. Keeps the cursors reached."""
        if self._typing in self.services.typing.listeners:
            self.services.typing.listeners.remove(self._typing)
        if self._receipt in self.services.receipt_listeners:
            self.services.receipt_listeners.remove(self._receipt)
        self._stopping = True  # a cancellation lost in a wait must not start another round
        tasks = [*self._tasks, *self._attempts]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for queue in self._queues.values():
            if queue.cursor > queue.saved_cursor and queue.upto is None:
                await self.tables.move_cursor(queue.bridge.id, queue.cursor)

    # ------------------------------------------------------------- input

    def wake(self) -> None:
        """The stream may have moved: give every bridge behind it (or with ephemeral events) a turn."""
        head = self.services.store.persisted
        for name, queue in self._queues.items():
            if queue.upto is not None or queue.cursor < head or queue.ephemeral:
                self.schedule.add_work(name)
        self._kick.set()

    def _queue_ephemeral(self, queue: _Queue, key: tuple[str, ...], edu: dict[str, Any] | None) -> None:
        queue.ephemeral.pop(key, None)  # a later one replaces it, and goes to the back
        queue.ephemeral[key] = edu
        if len(queue.ephemeral) > EPHEMERAL_BACKLOG:
            queue.ephemeral.popitem(last=False)
            self.dropped_ephemeral += 1
            if self.dropped_ephemeral in (1, 10, 100) or self.dropped_ephemeral % 1000 == 0:
                log.warning("appservice %s: ephemeral backlog full (%d), oldest dropped (%d in all)",
                            queue.bridge.id, EPHEMERAL_BACKLOG, self.dropped_ephemeral)  # fmt: skip
        self.schedule.add_work(queue.bridge.id)
        self._kick.set()

    def _typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> None:
        self._ephemeral_in(room_id, ("m.typing", room_id), None)  # who types is read when it is sent

    def _receipt(self, room_id: str, receipt_type: str, user_id: str, event_id: str, ts: int,
                 thread_id: str | None = None) -> None:  # fmt: skip
        data: dict[str, Any] = {"ts": ts} if thread_id is None else {"ts": ts, "thread_id": thread_id}
        edu = {"type": "m.receipt", "room_id": room_id, "content": {event_id: {receipt_type: {user_id: data}}}}
        self._ephemeral_in(room_id, ("m.receipt", room_id, receipt_type, user_id, thread_id or ""), edu)

    def _ephemeral_in(self, room_id: str, key: tuple[str, ...], edu: dict[str, Any] | None) -> None:
        # Called inside a client's typing or receipt request: a failure here is logged, never the client's.
        try:
            for queue in self._queues.values():
                if queue.bridge.receive_ephemeral and self.interest.wants_room_now(queue.bridge, room_id):
                    self._queue_ephemeral(queue, key, edu)
        except Exception:
            log.exception("appservices: an ephemeral event of %s was not queued", room_id)

    # ------------------------------------------------------------- loop

    async def _watch(self) -> None:
        """Follow the notifier: every committed event, receipt, to-device message or key change wakes it."""
        notifier = self.services.notifier
        while not notifier.closed and not self._stopping:
            generation = notifier.generation
            self.wake()
            await notifier.wait(generation, 30.0)

    async def _run(self) -> None:
        await drive_schedule(self.schedule, self._attempt, self._kick, self.clock, self._attempts)

    async def _attempt(self, name: str) -> None:
        queue = self._queues[name]
        try:
            more = await self._step(queue)
        except (BridgeUnreachable, BridgeError) as exc:
            await self._failed(queue, str(exc))
        except Exception as exc:  # our bug: logged with its trace, and the bridge is retried like any failure
            log.exception("appservice %s: unexpected failure", name)
            await self._failed(queue, f"{type(exc).__name__}: {exc}")
        else:
            if queue.failures:
                log.info("appservice %s reachable again after %d failed attempts", name, queue.failures)
                queue.failures = 0
            self.schedule.succeeded(name, more)
        self._kick.set()

    async def _failed(self, queue: _Queue, why: str) -> None:
        name = queue.bridge.id
        queue.failures += 1
        self.failed_attempts += 1
        when = self.schedule.failed(name, self.clock())
        level = logging.WARNING if queue.failures == 1 else logging.INFO
        log.log(level, "appservice %s: transaction %s.%d failed (%s); retrying in %.0f s", name, queue.prefix,
                queue.seq, why[:200], max(0.0, when - self.clock()))  # fmt: skip
        await self.tables.count_failure(name, why, int(time.time() * 1000))

    # ------------------------------------------------------------- one transaction

    async def _step(self, queue: _Queue) -> bool:
        """Send (or send again) one transaction; whether more work remains."""
        store = self.services.store
        bridge = queue.bridge
        if queue.upto is None:
            content, reached = self._build(queue)
            if bridge.receive_ephemeral and queue.ephemeral:
                queue.in_flight_ephemeral = [self._take_ephemeral(queue) for _ in range(min(MAX_EPHEMERAL,
                                                                                           len(queue.ephemeral)))]
            if not any(content.values()) and not queue.in_flight_ephemeral:
                queue.cursor = reached
                caught_up = reached >= store.persisted
                if queue.cursor > queue.saved_cursor and (caught_up or self.clock() - queue.saved_at > CURSOR_WRITE_S):
                    await self._save_cursor(queue)
                # read after the await: what came meanwhile (an event, a receipt) must not be lost to succeeded()
                return queue.cursor < store.persisted or bool(queue.ephemeral)
            queue.seq += 1
            await self.tables.begin_transaction(bridge.id, queue.seq, reached, content)
            queue.upto, queue.content = reached, content
        assert queue.upto is not None and queue.content is not None
        content = queue.content
        body = self._body(queue, content)
        txn_id = f"{queue.prefix}.{queue.seq}"
        try:
            await self.client.request(bridge, "PUT", f"/_matrix/app/v1/transactions/{path_segment(txn_id)}", body,
                                      timeout_s=self.timeout_s)  # fmt: skip
        except BridgeError as exc:
            if not 200 <= exc.status < 300:
                raise
            # A 2xx is the bridge's acknowledgement, even with a body too large or not JSON: it has the events.
            log.info("appservice %s acknowledged %s with an odd answer: %s", bridge.id, txn_id, exc.body[:100])
        upto = queue.upto
        await self.tables.end_transaction(bridge.id, upto, int(time.time() * 1000), len(body["events"]),
                                          list(content.get("to_device", [])))  # fmt: skip
        queue.cursor = queue.saved_cursor = upto
        queue.saved_at = self.clock()
        queue.upto, queue.content, queue.in_flight_ephemeral = None, None, []
        self.sent_transactions += 1
        self.sent_events += len(body["events"])
        return queue.cursor < store.persisted or bool(queue.ephemeral)

    async def _save_cursor(self, queue: _Queue) -> None:
        cursor = queue.cursor
        await self.tables.move_cursor(queue.bridge.id, cursor)
        queue.saved_cursor, queue.saved_at = max(queue.saved_cursor, cursor), self.clock()

    def _take_ephemeral(self, queue: _Queue) -> dict[str, Any]:
        key, edu = queue.ephemeral.popitem(last=False)
        if edu is None:  # typing: who types in the room as it leaves
            room_id = key[1]
            edu = {"type": "m.typing", "room_id": room_id,
                   "content": {"user_ids": self.services.typing.typing_users(room_id)}}  # fmt: skip
        return edu

    def _build(self, queue: _Queue) -> tuple[dict[str, Any], int]:
        """What the next transaction holds from the stream after the cursor, and the position it reaches.

        Reads only: at most :data:`SCAN_ROWS` timeline rows and :data:`TO_DEVICE_SCAN` to-device rows, so one
        step never holds the event loop for long however far behind the bridge is.
        """
        bridge = queue.bridge
        head = self.services.store.persisted
        events: list[tuple[int, str]] = []
        reached = queue.cursor
        scanned = 0
        while reached < head and len(events) < MAX_EVENTS and scanned < SCAN_ROWS:
            batch = min(_SCAN_BATCH, SCAN_ROWS - scanned)
            rows = self.tables.timeline_after(reached, head, batch)
            for row in rows:
                scanned += 1
                reached = row.stream
                if self.interest.wants_event(bridge, row):
                    events.append((row.stream, row.event_id))
                    if len(events) >= MAX_EVENTS:
                        break
            else:
                if len(rows) < batch:  # no timeline row is left up to head (the rest are receipts, keys …)
                    reached = head
        to_device: list[int] = []
        changed: list[str] = []
        if bridge.msc3202 and reached > queue.cursor:
            rows_td = self.tables.to_device_after(queue.cursor, reached, TO_DEVICE_SCAN)
            for stream, user_id, _device in rows_td:
                if user_id.endswith(":" + self.services.server_name) and bridge.id in self.interest.covering(user_id):
                    to_device.append(stream)
                    if len(to_device) >= MAX_TO_DEVICE:
                        reached = stream
                        break
            else:
                if len(rows_td) >= TO_DEVICE_SCAN:
                    reached = rows_td[-1][0]
            events = [(stream, event_id) for stream, event_id in events if stream <= reached]
            for user_id in self.services.store.e2ee.device_lists_changed(queue.cursor, reached, MAX_DEVICE_LISTS):
                if self.interest.wants_user_now(bridge, user_id):
                    changed.append(user_id)
        return {"events": [event_id for _, event_id in events], "to_device": to_device, "device_lists": changed}, reached

    def _body(self, queue: _Queue, content: dict[str, Any]) -> dict[str, Any]:
        """The JSON body of a transaction: events in client format as /sync shows them, and the extras."""
        svc = self.services
        bridge = queue.bridge
        events = []
        for event_id in content.get("events", []):
            row = svc.store.get_event(event_id)
            if row is not None:
                events.append(svc.sync.client_event(row))
        body: dict[str, Any] = {"events": events}
        if queue.in_flight_ephemeral:
            # The spec's field (v1.13), and MSC2409's for bridges registered with its unstable flag.
            body["ephemeral"] = body["de.sorunome.msc2409.ephemeral"] = queue.in_flight_ephemeral
        if bridge.msc3202:
            to_device = self.tables.to_device_at(list(content.get("to_device", [])))
            if to_device:
                body["de.sorunome.msc2409.to_device"] = to_device  # the name Synapse sends and bridges read
            if content.get("device_lists"):
                body["org.matrix.msc3202.device_lists"] = {"changed": content["device_lists"], "left": []}
            users = [bridge.sender, *sorted({m["to_user_id"] for m in to_device})][:_MAX_KEY_USERS]
            counts, fallback = self._key_counts(users)
            if counts:
                # MSC3202's name, and the misspelt one older Synapse sent (some bridges read only that)
                body["org.matrix.msc3202.device_one_time_keys_count"] = counts
                body["org.matrix.msc3202.device_one_time_key_counts"] = counts
            if fallback:
                body["org.matrix.msc3202.device_unused_fallback_key_types"] = fallback
        return body

    def _key_counts(self, users: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """MSC3202's per-user, per-device one-time key counts and unused fallback key types."""
        store = self.services.store
        counts: dict[str, dict[str, dict[str, int]]] = {}
        fallback: dict[str, dict[str, list[str]]] = {}
        for user_id in users:
            for device in store.user_devices(user_id)[:_MAX_KEY_DEVICES]:
                found = store.e2ee.one_time_key_counts(user_id, device.device_id)
                found.setdefault("signed_curve25519", 0)
                counts.setdefault(user_id, {})[device.device_id] = found
                fallback.setdefault(user_id, {})[device.device_id] = store.e2ee.unused_fallback_key_types(
                    user_id, device.device_id)
        return counts, fallback

    # ------------------------------------------------------------- status

    def status(self, appservice_id: str) -> dict[str, Any] | None:
        """Where one bridge's queue stands (for tests and ``lowband appservice``), or None if not pushed to."""
        queue = self._queues.get(appservice_id)
        if queue is None:
            return None
        return {"cursor": queue.cursor, "head": self.services.store.persisted, "in_flight": queue.upto is not None,
                "txn_id": f"{queue.prefix}.{queue.seq}", "ephemeral_waiting": len(queue.ephemeral),
                "failures": queue.failures}  # fmt: skip
