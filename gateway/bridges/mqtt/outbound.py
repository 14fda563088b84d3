"""Room events → MQTT, with the room itself as the durable queue.

Each ``[[mqtt.outbound]]`` mapping keeps a cursor (``mqtt_cursor``): the
stream position up to which the room's events were published and, at QoS 1,
acknowledged by the broker. A drainer reads the room's events after the
cursor in batches, publishes those that qualify, waits for every PUBACK and
only then moves the cursor. While the broker is unreachable nothing moves;
events keep arriving in the room and are published when it comes back,
including after a gateway restart or ``kill -9`` (delivery to the broker is
at least once: a crash between PUBACK and the cursor write publishes that
batch again).

Events from the bridge's own users never go out (loop prevention), and each
publish is remembered by the inbound side's echo guard.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lowband.gateway.bridges.mqtt.client import BrokerLink
from lowband.gateway.bridges.mqtt.config import OutboundMapping
from lowband.gateway.bridges.mqtt.ingest import Counters, EchoGuard
from lowband.gateway.bridges.mqtt.payload import Refusal, outbound_message, payload_digest
from lowband.gateway.bridges.mqtt.rooms import RoomAccess
from lowband.gateway.bridges.mqtt.session import BrokerSession
from lowband.gateway.bridges.mqtt.store import BridgeTables
from lowband.gateway.store.interfaces import RoomStore

log = logging.getLogger(__name__)

BATCH = 200
_QUIET_REASONS = ("not_a_message", "msgtype")  # ordinary room traffic, not worth a counter


@dataclass
class OutboundState:
    """One outbound mapping at run time."""

    mapping: OutboundMapping
    room_id: str | None = None
    cursor: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Outbound:
    """Drains the rooms of every outbound mapping to its broker."""

    def __init__(
        self,
        mappings: tuple[OutboundMapping, ...],
        sessions: Mapping[str, BrokerSession],
        store: RoomStore,
        tables: BridgeTables,
        access: RoomAccess,
        echo: EchoGuard,
        counters: Counters,
        on_published: Callable[[OutboundMapping, str, str, dict], None],
    ) -> None:
        self.states = [OutboundState(m) for m in mappings]
        self.sessions = sessions  # by broker name; filled when the bridge starts
        self.store = store
        self.tables = tables
        self.access = access
        self.echo = echo
        self.counters = counters
        self.on_published = on_published

    async def room_ready(self, room: str, room_id: str) -> None:
        """A room became usable: load or set the cursors of its mappings and wake them."""
        for state in self.states:
            if state.mapping.room != room or state.room_id is not None:
                continue
            cursor = self.tables.cursor(state.mapping.name, room_id)
            if cursor is None:  # first start: publish what comes from now on, not the history
                cursor = self.store.persisted
                await self.tables.set_cursor(state.mapping.name, room_id, cursor)
            state.cursor = cursor
            state.room_id = room_id
            state.wake.set()

    def event_in(self, room_id: str) -> None:
        """Something was sent in ``room_id`` by someone other than the bridge."""
        for state in self.states:
            if state.room_id == room_id:
                state.wake.set()

    def wake_all(self) -> None:
        """Look at every room again (the broker came back)."""
        for state in self.states:
            state.wake.set()

    async def run(self, state: OutboundState) -> None:
        """Drain one mapping forever (cancelled at stop)."""
        link = self.sessions[state.mapping.broker].link
        while True:
            try:
                await asyncio.wait_for(state.wake.wait(), 30.0)
            except TimeoutError:
                pass
            state.wake.clear()
            if state.room_id is None:
                continue
            try:
                while await self._drain_batch(state, link):
                    pass
            except ConnectionError as exc:
                log.info("mqtt outbound %s: %s; will retry", state.mapping.name, exc)
                await asyncio.sleep(1.0)
                state.wake.set()

    async def _drain_batch(self, state: OutboundState, link: BrokerLink) -> bool:
        """Publish the next batch after the cursor; False when there is nothing left."""
        await link.connected.wait()
        assert state.room_id is not None
        rows = self.store.room_events(state.room_id, after=state.cursor, upto=self.store.persisted, limit=BATCH,
                                      backwards=False)  # fmt: skip
        if not rows:
            return False
        mapping = state.mapping
        pending = []
        now = time.monotonic()
        for row in rows:
            event = row["event"]
            if row["redacted_by"] or self.access.is_bridged(event.sender):
                continue
            result = outbound_message(mapping, event.type, event.sender, event.content)
            if isinstance(result, Refusal):
                if result.reason not in _QUIET_REASONS:
                    self.counters.add(mapping.name, f"skipped.{result.reason}")
                continue
            topic, payload = result
            self.echo.published(topic, payload_digest(payload), now)
            pending.append(link.publish(topic, payload, mapping.qos, mapping.retain))
            self.on_published(mapping, topic, event.sender, event.content)
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise ConnectionError(str(failed[0]))
            self.counters.add(mapping.name, "published", len(pending))
        state.cursor = rows[-1]["stream"]
        await self.tables.set_cursor(mapping.name, state.room_id, state.cursor)
        return len(rows) == BATCH
