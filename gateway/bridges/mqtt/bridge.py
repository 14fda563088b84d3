"""The MQTT bridge component: brokers ↔ rooms, with nothing lost.

``start_mqtt(services)`` is the gateway component (``server.COMPONENTS``);
it returns None when the config has no ``[mqtt]`` section.

Inbound path of one QoS 1 message (rules in ``mqtt_ingest``)::

    worker process (paho) ─on_message─▶ socket pair, batched ─▶ BrokerLink ─▶ link_messages
      (the worker stops reading while receive_maximum of them are unacknowledged)
      route by topic filter → size / loop / payload checks (refused: counted, acknowledged)
      → ingestion row claimed (a redelivery) or queued for writing (new)
      → the mapping's FIFO queue → pump: token bucket (delays, never drops)
      → the bridged user, created if new and the new-user limit allows (else refused, acknowledged)
      → rooms.send_batch(txn each) as the bridged users (several batches in flight)
      → committed → PUBACK in arrival order → barrier answered → row deleted

Sends are not awaited one by one: the pump takes what its queue holds (up
to ``_LAUNCH_BATCH``) and starts one ``send_batch`` for it, whose events are
created in order under the room's lock and written as one job; the store's
writer commits every job queued meanwhile in one transaction and one fsync.
While a batch commits, the next one gathers.

Memory under a flood: QoS 1 messages held are at most ``receive_maximum``
per broker (the worker stops reading beyond that); QoS 0 messages held
(queued or being sent) at most ``qos0_queue`` per mapping, more are
dropped and counted (``dropped.qos0_queue_full``) — the broker drops QoS 0
to a slow subscriber too, and there is no one to acknowledge to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from lowband.gateway.bridges.mqtt import discovery
from lowband.gateway.bridges.mqtt.client import ORIGIN_PROPERTY, BrokerLink, Received
from lowband.gateway.bridges.mqtt.config import InboundMapping, MqttConfig, OutboundMapping, parse_mqtt_config
from lowband.gateway.bridges.mqtt.ingest import Counters, Deduper, EchoGuard, PendingRow, Ticket, TokenBucket
from lowband.gateway.bridges.mqtt.outbound import Outbound
from lowband.gateway.bridges.mqtt.payload import (
    Refusal,
    Translated,
    device_name,
    localpart_for,
    payload_digest,
    route,
    translate,
)  # fmt: skip
from lowband.gateway.bridges.mqtt.rooms import RoomAccess, UserLimited, UserTaken
from lowband.gateway.bridges.mqtt.session import Barrier, BrokerSession
from lowband.gateway.bridges.mqtt.store import BridgeTables
from lowband.gateway.config import ConfigError
from lowband.gateway.homeserver.rooms import SendRequest, Sent
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError

log = logging.getLogger(__name__)

_ROOM_RETRY_S = 5.0
_SEND_RETRY_S = 1.0
_STOP_WAIT_S = 10.0
_CONNECT_WAIT_S = 5.0
_ROUTE_CACHE = 10_000  # topics whose mapping is remembered (the cache starts over when full)
_LAUNCH_BATCH = 512
_BARRIER_DELAY_S = 0.02
#: After a reconnect, rows of the old connection that no redelivery claimed
#: are deleted at the first barrier this long after the CONNACK.
_REDELIVERY_GRACE_S = 5.0
_UNAVAILABLE = Refusal("user_unavailable", "the bridged user cannot be used")
_LIMITED = Refusal("user_limit", "no new bridged user allowed yet (new_users_burst, new_users_per_hour)")


@dataclass(eq=False)
class Item:
    """One accepted message waiting in its mapping's queue."""

    broker: str
    topic: str
    ticket: Ticket | None  # None for QoS 0
    translated: Translated
    device: str
    txn_id: str | None = None  # from the ingestion row, or the publisher's message-id property
    redelivery: bool = False  # its row existed: the event may already be in the room
    delayed: bool = False


@dataclass
class InboundState:
    """One inbound mapping at run time."""

    mapping: InboundMapping
    bucket: TokenBucket
    queue: deque[Item] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    room_id: str | None = None
    room_ready: asyncio.Event = field(default_factory=asyncio.Event)
    flooding: bool = False
    held0: int = 0  # QoS 0 items queued or being sent (at most mapping.qos0_queue)


class MqttBridge:
    """Everything the ``[mqtt]`` section asks for, on one gateway."""

    def __init__(self, services: Services, config: MqttConfig) -> None:
        self.config = config
        self.rooms = services.rooms
        self.store = services.store
        self.server_name = services.config.server_name
        self.tables = BridgeTables(services.store.mqtt)
        now = time.monotonic()
        new_users = TokenBucket(config.new_users_per_hour / 3600.0, config.new_users_burst, now)
        self.access = RoomAccess(self.rooms, self.store, self.tables, self.server_name, config.bot,
                                 new_users=new_users, room_admins=config.room_admins)  # fmt: skip
        self.counters = Counters()
        self.echo = EchoGuard()
        self.origin = discovery.Origin(self.server_name, config.status_topic, config.discovery_prefix)
        self.inbound = {m.name: InboundState(m, TokenBucket(m.rate_per_s, m.burst, now)) for m in config.inbound}
        self.sessions: dict[str, BrokerSession] = {}  # by broker name, filled by start()
        self.outbound = Outbound(config.outbound, self.sessions, self.store, self.tables, self.access, self.echo,
                                 self.counters, self._announce_published)  # fmt: skip
        self._flush_scheduled = False
        self._sends: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._room_check = asyncio.Event()
        self._announced: set[tuple[str, str]] = set()
        self._stopped = False
        self._log_times: dict[tuple[str, str], float] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create users, resolve rooms, connect to every broker.

        Raises ConfigError when the bot's user ID belongs to someone else.
        A broker that is down is retried in the background.
        """
        try:
            await self.access.start()
        except UserTaken as exc:
            raise ConfigError(f"mqtt.bot: {exc}; choose another bot name") from None
        now_ms = int(time.time() * 1000)
        for broker in self.config.brokers:
            oldest = now_ms - broker.session_expiry_s * 1000
            await self.tables.purge_inflight(broker.name, oldest)
            routes = [m for m in self.config.inbound if m.broker == broker.name]
            link = BrokerLink(
                broker, self, will=(self.config.status_topic, discovery.OFFLINE.encode()),
                filters={m.topic: m.qos for m in routes}, known_filters=self.tables.subscriptions(broker.name),
                origin=self.server_name, barrier_topic=self.config.status_topic + "/barrier",
            )  # fmt: skip
            self.sessions[broker.name] = BrokerSession(link, Deduper(self.tables.inflight(broker.name, oldest)), routes)
        self.rooms.add_listener(self._on_event)
        await self._check_rooms()
        for state in self.inbound.values():
            self._tasks.append(asyncio.create_task(self._pump(state), name=f"mqtt-in-{state.mapping.name}"))
        for out in self.outbound.states:
            self._tasks.append(asyncio.create_task(self.outbound.run(out), name=f"mqtt-out-{out.mapping.name}"))
        self._tasks.append(asyncio.create_task(self._watch_rooms(), name="mqtt-rooms"))
        if self.config.stats_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._stats_loop(), name="mqtt-stats"))
        for session in self.sessions.values():
            session.link.start()
        # A gateway that says it is ready should be subscribed: give the brokers a moment (one that is
        # down is not waited for longer; its link keeps trying).
        waits = [asyncio.ensure_future(session.link.connected.wait()) for session in self.sessions.values()]
        _, slow = await asyncio.wait(waits, timeout=_CONNECT_WAIT_S)
        for waiter in slow:
            waiter.cancel()
        for name, session in self.sessions.items():
            if not session.link.connected.is_set():
                log.warning("mqtt broker %s is not reachable yet; the bridge keeps trying", name)

    async def stop(self) -> None:
        """Finish sends in flight (and acknowledge them), publish "offline", disconnect.

        Messages still queued are not acknowledged: the broker delivers them
        again on the next start.
        """
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sends:
            await asyncio.wait(set(self._sends), timeout=_STOP_WAIT_S)
        # One last barrier, so the rows of what was just acknowledged need not wait for the next start.
        deadline = time.monotonic() + 2.0
        for _ in range(2):  # one may be in flight already; it covers fewer PUBACKs than a new one
            for session in self.sessions.values():
                if session.barrier is None:
                    self._send_barrier(session)
            while any(s.barrier is not None for s in self.sessions.values()) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        self._flush_acked()
        offline = []
        for session in self.sessions.values():
            if session.link.connected.is_set():
                offline.append(session.link.publish(self.config.status_topic, discovery.OFFLINE.encode(), 1, True))
        if offline:
            await asyncio.wait(offline, timeout=2.0)
        await asyncio.gather(*(s.link.stop() for s in self.sessions.values()), return_exceptions=True)

    def stats(self) -> dict[str, dict[str, int]]:
        """Every counter, per mapping (``_bridge`` for messages no mapping took)."""
        return self.counters.snapshot()

    # ---------------------------------------------------------------- rooms

    async def _check_rooms(self) -> bool:
        """Prepare every room still waiting; True while some still wait."""
        waiting = False
        rooms = {s.mapping.room for s in self.inbound.values() if s.room_id is None}
        rooms |= {s.mapping.room for s in self.outbound.states if s.room_id is None}
        for room in sorted(rooms):
            room_id = await self.access.prepare_room(room)
            if room_id is None:
                waiting = True
                continue
            for state in self.inbound.values():
                if state.mapping.room == room and state.room_id is None:
                    state.room_id = room_id
                    state.room_ready.set()
            await self.outbound.room_ready(room, room_id)
        return waiting

    async def _watch_rooms(self) -> None:
        while await self._check_rooms():
            try:
                await asyncio.wait_for(self._room_check.wait(), _ROOM_RETRY_S)
            except TimeoutError:
                pass
            self._room_check.clear()

    def _on_event(self, sent: Sent) -> None:
        if self._stopped:
            return
        event = sent.event
        if event.type in ("m.room.member", "m.room.canonical_alias", "m.room.join_rules", "m.room.create"):
            self._room_check.set()
        if not self.access.is_bridged(event.sender):
            self.outbound.event_in(event.room_id)

    # ------------------------------------------------------------ link side

    def link_connected(self, link: BrokerLink, gen: int, session_present: bool) -> None:
        """A (re)connection: forget tickets of the old one, announce ourselves."""
        session = self.sessions[link.name]
        stale = session.sequencer.connected(gen)
        session.barrier = None
        session.connected_at = time.monotonic()
        session.old_rows = True
        loop = asyncio.get_running_loop()
        loop.call_later(_REDELIVERY_GRACE_S + 0.1, self._want_barrier, session)
        if session_present:
            # The broker sends every unacknowledged message again: drop the
            # copies not yet started, or they would be posted twice.
            for state in self.inbound.values():
                if state.mapping.broker == link.name and state.queue:
                    kept = deque(i for i in state.queue if i.ticket is None or i.ticket.gen >= gen)
                    self.counters.add(state.mapping.name, "requeued_by_broker", len(state.queue) - len(kept))
                    state.queue = kept
        else:
            # A new session: the broker kept nothing of the old one, so no row will be matched again.
            dead = session.deduper.older_than(gen)
            for row in dead:
                self._release(session, row)
            if stale or dead:
                log.warning("mqtt broker %s started a new session; %d unacknowledged messages of the old one "
                            "are still posted", link.name, len(stale))  # fmt: skip
        announcements = [(self.config.status_topic, discovery.ONLINE.encode())]
        if self.config.discovery:
            announcements.append(discovery.gateway_config(self.origin))
            announcements += self.tables.discovery(link.name)
        for topic, payload in announcements:
            link.publish(topic, payload, 1, True)
        self.outbound.wake_all()

    def link_disconnected(self, link: BrokerLink, reason: str) -> None:
        """The connection dropped; paho reconnects by itself."""
        if not self._stopped:
            log.warning("mqtt broker %s disconnected (%s); reconnecting", link.name, reason)

    def link_subscribed(self, link: BrokerLink, filters: set[str]) -> None:
        """Remember which filters the broker session holds."""
        self._background(self.tables.set_subscriptions(link.name, filters))

    def link_messages(self, link: BrokerLink, batch: list[tuple[int, Received]]) -> None:
        """Route, check and queue a batch of received messages (refused ones are acknowledged)."""
        session = self.sessions[link.name]
        sequencer = session.sequencer
        routes = session.routes
        routed = session.routed
        now_ms = int(time.time() * 1000)
        now = time.monotonic()
        woken: set[str] = set()
        new_rows: list[PendingRow] = []
        dedup = session.deduper
        for gen, message in batch:
            ticket = sequencer.received(gen, message.mid) if message.qos > 0 else None
            topic = message.topic
            if topic is None:
                self._refuse(session, "_bridge", ticket, "invalid_topic", "topic is not UTF-8", "?")
                continue
            if topic not in routed:
                if len(routed) >= _ROUTE_CACHE:
                    routed.clear()
                routed[topic] = route(routes, topic)
            found = routed[topic]
            if found is None:
                self._refuse(session, "_bridge", ticket, "unmapped", "no mapping takes this topic", topic)
                continue
            mapping, captured = found
            payload = message.payload
            self.counters.add(mapping.name, "received")
            state = self.inbound[mapping.name]
            if ticket is None and state.held0 >= mapping.qos0_queue:
                # Before translating: under a flood, dropping must cost less than taking.
                self.counters.add(mapping.name, "dropped.qos0_queue_full")
                self._log_limited(mapping.name, "qos0_queue_full", "mqtt: dropped QoS 0 messages on %s (mapping %s): "
                                  "%d are waiting already (qos0_queue)", topic, mapping.name, state.held0)  # fmt: skip
                continue
            if len(payload) > self.config.payload_limit(mapping):
                self._refuse(session, mapping.name, ticket, "oversize", f"{len(payload)} bytes", topic)
                continue
            if message.retain and not mapping.retained:
                self._refuse(session, mapping.name, ticket, "retained_skipped", "", topic, quiet=True)
                continue
            digest = payload_digest(payload)
            properties = message.user_properties
            if properties.get(ORIGIN_PROPERTY) == self.server_name or self.echo.is_echo(topic, digest, now):
                self._refuse(session, mapping.name, ticket, "loop", "published by this gateway", topic)
                continue
            try:
                translated = translate(payload, mapping, topic, now_ms, retained=bool(message.retain))
            except Exception as exc:  # a translation bug: refuse (and acknowledge) this message, never stall the rest
                log.exception("mqtt: translating a message on %s (mapping %s) failed", topic, mapping.name)
                translated = Refusal("translation_failed", type(exc).__name__)
            if isinstance(translated, Refusal):
                self._refuse(session, mapping.name, ticket, translated.reason, translated.detail, topic)
                continue
            item = Item(link.name, topic, ticket, translated, device_name(mapping, captured))
            if mapping.dedup_property and properties.get(mapping.dedup_property):
                key = json.dumps([link.name, topic, properties[mapping.dedup_property]])
                item.txn_id = "p." + payload_digest(key.encode()).hex()
            elif ticket is not None:
                # Claimed now, not when the send starts: a redelivery must find it even while this copy waits.
                row, is_new = dedup.assign(topic, digest, message.mid, bool(message.dup), gen, now_ms)
                ticket.row = row
                item.txn_id = row.txn_id
                if is_new:
                    new_rows.append(row)
                else:
                    item.redelivery = True
                    self.counters.add(mapping.name, "redelivered")
            if ticket is None:
                state.held0 += 1
            state.queue.append(item)
            woken.add(mapping.name)
        if new_rows:
            # Queued now, so committed no later than the events sent with these txn_ids.
            self.tables.add_inflight(link.name, new_rows)
        for name in woken:
            self.inbound[name].wake.set()

    def _refuse(self, session: BrokerSession, mapping: str, ticket: Ticket | None, reason: str, detail: str,
                topic: str, *, quiet: bool = False) -> None:  # fmt: skip
        self.counters.add(mapping, f"refused.{reason}")
        if not quiet:
            self._log_limited(mapping, reason, "mqtt: refused a message on %s (mapping %s): %s%s", topic, mapping,
                              reason, f" ({detail})" if detail else "")  # fmt: skip
        if ticket is not None:
            self._complete(session, ticket)

    def _log_limited(self, mapping: str, reason: str, message: str, *args: Any) -> None:
        """Log at most once a second per (mapping, reason), so a flood of bad input cannot flood the log."""
        now = time.monotonic()
        if now - self._log_times.get((mapping, reason), -10.0) >= 1.0:
            self._log_times[(mapping, reason)] = now
            log.warning(message, *args)

    # --------------------------------------------------------------- pumps

    async def _pump(self, state: InboundState) -> None:
        """Take a mapping's messages in order, at its rate, and start their sends."""
        while True:
            if not state.queue:
                state.wake.clear()
                await state.wake.wait()
                continue
            if state.room_id is None:
                await state.room_ready.wait()
                continue
            now = time.monotonic()
            batch: list[Item] = []
            wait = 0.0
            while state.queue and len(batch) < _LAUNCH_BATCH:
                wait = state.bucket.take(now)
                if wait > 0:
                    break
                batch.append(state.queue.popleft())
            if batch:
                await self._launch(state, batch)
                await asyncio.sleep(0)  # let the sends just started (and everything else) run
            if wait > 0 and state.queue:
                if not state.flooding:
                    state.flooding = True
                    log.warning("mqtt mapping %s is over %s messages/s; delaying (%d waiting)", state.mapping.name,
                                state.mapping.rate_per_s, len(state.queue))  # fmt: skip
                head = state.queue[0]
                if not head.delayed:
                    head.delayed = True
                    self.counters.add(state.mapping.name, "delayed")
                await asyncio.sleep(wait)
            elif not state.queue:
                state.flooding = False

    async def _launch(self, state: InboundState, batch: list[Item]) -> None:
        """Start sending a batch, in order (creating bridged users first when new)."""
        mapping = state.mapping
        assert state.room_id is not None
        senders: dict[str, str | Refusal] = {}
        items: list[Item] = []
        requests: list[SendRequest] = []
        for item in batch:
            if item.device not in senders:
                senders[item.device] = await self._sender(state, item)
            sender = senders[item.device]
            if isinstance(sender, Refusal):
                self._left(state, item)
                self._refuse(self.sessions[item.broker], mapping.name, item.ticket, sender.reason, sender.detail,
                             item.topic)  # fmt: skip
                continue
            txn = (sender, "mqtt", item.txn_id) if item.txn_id is not None else None
            items.append(item)
            requests.append(SendRequest(sender, "m.room.message", item.translated.content, txn=txn))
        if items:
            task = asyncio.create_task(self._send(state, items, requests))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _sender(self, state: InboundState, item: Item) -> str | Refusal:
        """The bridged user for an item, created and joined on first use; a refusal if it cannot be used, or is
        new and the new-user limit allows none now (``user_unavailable``, ``user_limit``)."""
        mapping = state.mapping
        if mapping.sender == "mapping":
            localpart = mapping.user or self.config.user_prefix + mapping.name
        else:
            localpart = localpart_for(self.config.user_prefix, item.device)
        user_id = self.access.user_id(localpart)
        assert state.room_id is not None
        try:
            await self.access.ensure_user(user_id, item.device, limited=True)
            await self.access.join(user_id, state.room_id)
        except UserLimited:
            return _LIMITED
        except UserTaken as exc:
            self._log_limited(mapping.name, "user_taken", "mqtt: %s", exc)
            return _UNAVAILABLE
        except MatrixError as exc:
            self._log_limited(mapping.name, "join", "mqtt: %s cannot join %s: %s", user_id, mapping.room, exc.message)
            return _UNAVAILABLE
        return user_id

    async def _send(self, state: InboundState, items: list[Item], requests: list[SendRequest]) -> None:
        """Send a batch as one room write; acknowledge what was posted or refused, retry what failed."""
        mapping = state.mapping
        assert state.room_id is not None
        while items:
            results = await self.rooms.send_batch(state.room_id, requests)
            retry_items: list[Item] = []
            retry_requests: list[SendRequest] = []
            for item, request, result in zip(items, requests, results, strict=True):
                if isinstance(result, MatrixError) and result.status >= 500 and not self._stopped:
                    retry_items.append(item)
                    retry_requests.append(request)
                    continue
                self._left(state, item)
                if isinstance(result, MatrixError):
                    if result.status == 403:
                        self.access.forget_membership(request.sender, state.room_id)
                    self._refuse(self.sessions[item.broker], mapping.name, item.ticket, "rejected_by_room",
                                 result.message, item.topic)  # fmt: skip
                    continue
                if not item.redelivery:
                    self.counters.add(mapping.name, "posted")
                if item.ticket is not None:
                    self._complete(self.sessions[item.broker], item.ticket)
                if self.config.discovery and mapping.discovery:
                    self._announce(mapping, item)
            items, requests = retry_items, retry_requests
            if items:
                await asyncio.sleep(_SEND_RETRY_S)

    @staticmethod
    def _left(state: InboundState, item: Item) -> None:
        """An item is done (posted or refused): a QoS 0 one no longer counts against ``qos0_queue``."""
        if item.ticket is None:
            state.held0 -= 1

    # ----------------------------------------------------------------- acks

    def _complete(self, session: BrokerSession, ticket: Ticket) -> None:
        link = session.link
        sent = False
        for ready in session.sequencer.complete(ticket):
            if link.ack(ready.gen, ready.mid):
                sent = True
                session.ack_no += 1
                if ready.row is not None:
                    session.deduper.acked(ready.row, ready.gen, session.ack_no)
        if sent:
            self._want_barrier(session)

    def _want_barrier(self, session: BrokerSession) -> None:
        """Ask for a barrier soon (at most one in flight per broker, a few per second under load)."""
        if session.barrier_due or self._stopped:
            return
        session.barrier_due = True
        asyncio.get_running_loop().call_later(_BARRIER_DELAY_S, self._send_barrier, session)

    def _send_barrier(self, session: BrokerSession) -> None:
        session.barrier_due = False
        if session.barrier is not None:
            return  # the one in flight asks for the next when it completes
        sent = session.link.barrier()
        if sent is not None:
            session.barrier = Barrier(sent[0], sent[1], session.ack_no)

    def link_barrier(self, link: BrokerLink, gen: int, mid: int) -> None:
        """A barrier came back: rows whose PUBACK the broker has processed can go."""
        session = self.sessions[link.name]
        barrier = session.barrier
        if barrier is None or barrier.ident != mid:
            return
        session.barrier = None
        if barrier.gen != gen:
            return
        settled = time.monotonic() - session.connected_at >= _REDELIVERY_GRACE_S
        purge_older = settled and session.old_rows
        for row in session.deduper.confirm(gen, barrier.ack_no, purge_older):
            self._drop_row(session, row)
        if purge_older:
            session.old_rows = False
        if session.ack_no > barrier.ack_no or session.old_rows:
            self._want_barrier(session)

    def _release(self, session: BrokerSession, row: PendingRow) -> None:
        if session.deduper.release(row):
            self._drop_row(session, row)

    def _drop_row(self, session: BrokerSession, row: PendingRow) -> None:
        session.dropped.append(row.txn_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acked)

    def _flush_acked(self) -> None:
        self._flush_scheduled = False
        for session in self.sessions.values():
            if session.dropped:
                txn_ids, session.dropped = session.dropped, []
                self.tables.drop_inflight(session.name, txn_ids)

    # ------------------------------------------------------------ discovery

    def _announce(self, mapping: InboundMapping, item: Item) -> None:
        translated = item.translated
        if translated.kind == "pack":
            return
        records = translated.content.get("org.lowband.senml", [])
        for (name, path), record in zip(translated.paths, records, strict=False):
            self._announce_reading(mapping.broker, item.topic, item.device, name,
                                   path if translated.kind == "object" else None, record)  # fmt: skip

    def _announce_published(self, mapping: OutboundMapping, topic: str, sender: str, content: dict[str, Any]) -> None:
        """Discovery for device telemetry republished by a ``state`` outbound mapping."""
        if mapping.format != "state" or not (self.config.discovery and mapping.discovery):
            return
        records = content.get("org.lowband.senml")
        device = sender[1:].split(":", 1)[0]
        for record in records if isinstance(records, list) else []:
            if isinstance(record, dict) and isinstance(record.get("n"), str):
                self._announce_reading(mapping.broker, topic, device, record["n"], record["n"], record)

    def _announce_reading(self, broker: str, state_topic: str, device: str, name: str, json_path: str | None,
                          record: dict[str, Any]) -> None:  # fmt: skip
        """Publish (once per topic and reading) the discovery config of one SenML record, if HA can show it."""
        kind = discovery.record_kind(record)
        if kind is None or (state_topic, name) in self._announced:
            return
        self._announced.add((state_topic, name))
        topic, payload = discovery.reading_config(
            self.origin, device=device, device_name=device, reading=name, state_topic=state_topic,
            json_path=json_path, unit=str(record.get("u", "")), kind=kind,
        )  # fmt: skip
        self._publish_discovery(broker, topic, payload)

    def _publish_discovery(self, broker: str, topic: str, payload: bytes) -> None:
        link = self.sessions[broker].link
        if link.connected.is_set():
            link.publish(topic, payload, 1, True)
        self._background(self.tables.add_discovery(broker, topic, payload))

    # ---------------------------------------------------------------- misc

    def _background(self, awaitable: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("mqtt: background write failed")

        task = asyncio.ensure_future(run())
        self._sends.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._sends.discard)  # type: ignore[arg-type]

    async def _stats_loop(self) -> None:
        last = None
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            snapshot = self.counters.snapshot()
            if snapshot == last:
                continue
            last = snapshot
            payload = json.dumps(snapshot, sort_keys=True).encode()
            log.info("mqtt counters: %s", payload.decode())
            for session in self.sessions.values():
                if session.link.connected.is_set():
                    session.link.publish(self.config.stats_topic, payload, 0, False)


async def start_mqtt(services: Services) -> Callable[[], Awaitable[None]] | None:
    """Gateway component: start the bridge the ``[mqtt]`` section describes.

    Returns the bridge's ``stop`` (its ``__self__`` is the :class:`MqttBridge`),
    or None without an ``[mqtt]`` section. Raises ConfigError for a bad section.
    """
    config = parse_mqtt_config(services.config.components.get("mqtt"), services.config.server_name)
    if config is None:
        return None
    bridge = MqttBridge(services, config)
    await bridge.start()
    services.components["mqtt"] = bridge  # read by the metrics (api/http/metrics.py) through stats()
    return bridge.stop
