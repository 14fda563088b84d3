"""Outbound transactions: every event we must send reaches every server in its room, whatever happens.

Rules:

* the backlog is ``federation_log`` on disk (events logged in their own
  commit); each destination reads it with its own cursor, so a peer away
  for a month costs disk, not memory, and nothing is dropped;
* an event goes to the servers ``RoomLookups.destinations`` names: those
  with a joined member in the room just before or just after it (so a
  kicked server still gets its kick) that the room's ACL there allows, and
  the server of a user whose invite or knock it ends; never to us;
* a transaction holds at most 50 PDUs and 100 EDUs, and EDUs only while
  its body stays under 4 MiB (:data:`MAX_TXN_BYTES`). Its number and the log
  position it covers are written before it is sent; a retry, also after a
  restart or ``kill -9``, sends the same transaction ID with the same PDUs;
* when the peer accepts it (200, whatever it thinks of each PDU) the cursor
  moves; on a failure the destination backs off (``homeserver.retry_schedule``:
  1 s doubling to a minute) and any request from that peer wakes it at once;
* EDUs (typing, receipts) are kept in memory only, a bounded number per
  destination (oldest dropped first): they describe the present, and a peer
  that was away catches up with the room, not with who was typing. To-device
  messages are kept on disk instead (``send_kept_edus``, the
  ``federation_edu_outbox`` table) and dropped only when the peer accepted a
  transaction holding them; after a crash they go out again in a later
  transaction (the receiver deduplicates them by ``message_id``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lowband.gateway.aio import drive_schedule
from lowband.gateway.federation.client import FederationClient, FederationError, path_segment
from lowband.gateway.homeserver.retry_schedule import DeliverySchedule
from lowband.gateway.store.interfaces import FederationStore

__all__ = ["FederationSender", "MAX_EDUS", "MAX_PDUS"]

log = logging.getLogger("lowband.federation")

MAX_PDUS = 50
MAX_EDUS = 100
_SCAN = 500  # log rows looked at per transaction when few concern the destination
_EDU_BACKLOG = 1000
#: a transaction's body stays under this many bytes (another server refuses a larger one, and the same
#: transaction would be retried for ever): EDUs that do not fit wait for the next one
MAX_TXN_BYTES = 4 * 1024 * 1024

#: servers(event_id) -> the servers that must receive it (joined just before or after it)
ServersOf = Callable[[str], set[str]]
#: pdu(event_id) -> the PDU as stored, or None if the event is gone
PduOf = Callable[[str], dict[str, Any] | None]


@dataclass
class _Destination:
    name: str
    cursor: int
    txn_seq: int
    txn_upto: int | None
    edus: OrderedDict[tuple[str, ...], dict[str, Any]] = field(default_factory=OrderedDict)
    in_flight_edus: list[tuple[tuple[str, ...], dict[str, Any]]] = field(default_factory=list)
    #: ids of kept EDUs (``federation_edu_outbox``) in the transaction in flight
    in_flight_kept: list[int] = field(default_factory=list)


class FederationSender:
    """Drains ``federation_log`` to every destination, and carries EDUs."""

    def __init__(self, server_name: str, txn_prefix: str, client: FederationClient, tables: FederationStore,
                 servers_of: ServersOf, pdu_of: PduOf, clock: Callable[[], float] = time.monotonic,
                 schedule: DeliverySchedule | None = None) -> None:  # fmt: skip
        self.server_name = server_name
        self.txn_prefix = txn_prefix
        self.client = client
        self.tables = tables
        self.servers_of = servers_of
        self.pdu_of = pdu_of
        self.clock = clock
        self.schedule = schedule or DeliverySchedule()
        self._destinations: dict[str, _Destination] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self.sent_transactions = 0

    # ------------------------------------------------------------- life

    async def start(self) -> None:
        """Load every destination and resume what was in flight or behind."""
        head = self.tables.log_head()
        for name, cursor, seq, upto in self.tables.destinations():
            self._destinations[name] = _Destination(name, cursor, seq, upto)
            if upto is not None or cursor < head:
                self.schedule.add_work(name)
        for name in self.tables.outbox_destinations():
            self._known(name)
            self.schedule.add_work(name)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sending (what is in flight is retried after the next start)."""
        tasks = [t for t in (self._task, *self._attempts) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------- input

    async def event_logged(self, stream: int, event_id: str) -> None:
        """A logged event committed at ``stream``: wake (and first meet) the servers that need it."""
        for server in self.servers_of(event_id):
            if server == self.server_name:
                continue
            if server not in self._destinations:
                # A new peer starts just before this event: what came before was not meant for it. Known in
                # memory before the write is awaited, so the next event logged meanwhile does not move its start.
                self._destinations[server] = _Destination(server, stream - 1, 0, None)
                await self.tables.add_destination(server, stream - 1)
            self.schedule.add_work(server)
        self._kick.set()

    def _known(self, destination: str) -> _Destination:
        dest = self._destinations.get(destination)
        if dest is None:
            dest = self._destinations[destination] = _Destination(destination, self.tables.log_head(), 0, None)
            asyncio.ensure_future(self.tables.add_destination(destination, dest.cursor))
        return dest

    async def send_kept_edus(self, destination: str, edus: list[tuple[str, dict[str, Any]]]) -> None:
        """Queue EDUs that must survive a restart (to-device messages): on disk when this returns, sent in
        order, dropped only when the peer accepted a transaction holding them."""
        if destination == self.server_name or not edus:
            return
        await self.tables.add_outbox(destination, edus)
        self._known(destination)
        self.schedule.add_work(destination)
        self._kick.set()

    def send_edu(self, destination: str, edu_type: str, content: dict[str, Any], key: tuple[str, ...] = ()) -> None:
        """Queue an EDU; a later one with the same ``key`` (e.g. room and user) replaces it."""
        if destination == self.server_name:
            return
        dest = self._known(destination)
        slot = (edu_type, *key) if key else (edu_type, str(id(content)))
        dest.edus.pop(slot, None)
        dest.edus[slot] = {"edu_type": edu_type, "content": content}
        while len(dest.edus) > _EDU_BACKLOG:
            dest.edus.popitem(last=False)
        self.schedule.add_work(destination)
        self._kick.set()

    def peer_is_back(self, server: str) -> None:
        """``server`` just contacted us: retry it now instead of waiting out its backoff."""
        self.schedule.wake(server)
        self._kick.set()

    # ------------------------------------------------------------- loop

    async def _run(self) -> None:
        await drive_schedule(self.schedule, self._attempt, self._kick, self.clock, self._attempts)

    async def _attempt(self, name: str) -> None:
        dest = self._destinations[name]
        try:
            more = await self._send_one(dest)
        except FederationError as exc:
            await self.tables.count_failure(name)
            retry_after = exc.retry_after_ms / 1000 if exc.retry_after_ms else None
            when = self.schedule.failed(name, self.clock(), retry_after)
            log.info("federation to %s failed (%s); retrying in %.0f s", name, exc, max(0.0, when - self.clock()))
        except Exception:
            log.exception("federation to %s: unexpected failure", name)
            self.schedule.failed(name, self.clock())
        else:
            self.schedule.succeeded(name, more)
        self._kick.set()

    def _pdus_between(self, dest: _Destination, cursor: int, upto: int) -> tuple[list[dict[str, Any]], int]:
        """The PDUs for ``dest`` in (cursor, upto], at most MAX_PDUS; and the position they reach."""
        pdus: list[dict[str, Any]] = []
        reached = cursor
        while reached < upto and len(pdus) < MAX_PDUS:
            rows = self.tables.log_after(reached, upto, _SCAN)
            if not rows:
                return pdus, upto
            for stream, event_id, _room in rows:
                if dest.name in self.servers_of(event_id):
                    pdu = self.pdu_of(event_id)
                    if pdu is not None:
                        pdus.append(pdu)
                reached = stream
                if len(pdus) >= MAX_PDUS:
                    break
        return pdus, reached

    async def _send_one(self, dest: _Destination) -> bool:
        """Send (or resend) one transaction; whether more work remains."""
        head = self.tables.log_head()
        if dest.txn_upto is None:
            pdus, upto = self._pdus_between(dest, dest.cursor, head)
            kept = [((f"kept.{i}",), {"edu_type": kind, "content": content})
                    for i, kind, content in self.tables.outbox(dest.name, MAX_EDUS)]
            chosen = _edus_within(kept + list(dest.edus.items())[: MAX_EDUS - len(kept)], MAX_TXN_BYTES - _size(pdus))
            dest.in_flight_kept = [int(slot[0][5:]) for slot, _ in chosen if slot[0].startswith("kept.")]
            dest.in_flight_edus = [(slot, edu) for slot, edu in chosen if not slot[0].startswith("kept.")]
            for slot, _ in dest.in_flight_edus:
                del dest.edus[slot]
            dest.in_flight_edus = chosen
            if not pdus and not dest.in_flight_edus:
                if upto != dest.cursor:
                    await self.tables.end_transaction(dest.name, upto, int(time.time() * 1000))
                    dest.cursor = upto
                return dest.cursor < head
            dest.txn_seq += 1
            await self.tables.begin_transaction(dest.name, dest.txn_seq, upto)
            dest.txn_upto = upto
        else:  # a retry: the same PDUs as the first attempt (the log between cursor and upto is immutable)
            pdus, _ = self._pdus_between(dest, dest.cursor, dest.txn_upto)
        body = {
            "origin": self.server_name,
            "origin_server_ts": int(time.time() * 1000),
            "pdus": pdus,
            "edus": [edu for _, edu in dest.in_flight_edus],
        }
        txn_id = f"{self.txn_prefix}.{dest.txn_seq}"
        answer = await self.client.request(dest.name, "PUT", f"/_matrix/federation/v1/send/{path_segment(txn_id)}",
                                           body=body, timeout=60.0)  # fmt: skip
        refused = {k: v for k, v in (answer.get("pdus") or {}).items() if isinstance(v, dict) and v.get("error")} \
            if isinstance(answer, dict) and isinstance(answer.get("pdus"), dict) else {}  # fmt: skip
        for event_id, verdict in list(refused.items())[:5]:
            log.warning("%s refused %s: %s", dest.name, event_id, str(verdict.get("error"))[:200])
        upto = dest.txn_upto
        await self.tables.drop_outbox(dest.in_flight_kept)
        await self.tables.end_transaction(dest.name, upto, int(time.time() * 1000))
        dest.cursor, dest.txn_upto, dest.in_flight_edus, dest.in_flight_kept = upto, None, [], []
        self.sent_transactions += 1
        return dest.cursor < self.tables.log_head() or bool(dest.edus) or bool(self.tables.outbox(dest.name, 1))


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def _edus_within(edus: list[tuple[tuple[str, ...], dict[str, Any]]],
                 budget: int) -> list[tuple[tuple[str, ...], dict[str, Any]]]:  # fmt: skip
    """The first EDUs that fit in ``budget`` bytes, in order; always the first (an EDU is far below the limit)."""
    chosen: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    for item in edus:
        cost = _size(item[1]) + 1
        if chosen and cost > budget:
            break
        chosen.append(item)
        budget -= cost
    return chosen
