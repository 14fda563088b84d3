"""The receive path, run: transactions in, PDUs through every step, EDUs to their handler.

Rules:

* at most 50 PDUs and 100 EDUs per transaction, else 400;
* one transaction per origin at a time; one more may wait for it, and a
  third is answered 429 M_LIMIT_EXCEEDED (:data:`MAX_WAITING_TRANSACTIONS`):
  a sender sends one transaction at a time, so only a flood meets this,
  and it cannot pile up work or memory;
* what a transaction's PDUs fetch from other servers (auth chains, missing
  events, the state at gaps, keys) is bounded in requests and time by one
  :class:`~lowband.gateway.federation.inbound.budget.FetchBudget`;
* fetching happens outside the room's lock; placing (steps 5–7) happens
  under it (the lock local sends take), one PDU at a time, in the order the
  transaction lists them. A slow or silent peer delays its own
  transaction, never a local send;
* a PDU that fails (dropped, or rejected by the auth rules and kept as
  rejected) is answered with its reason in the transaction's answer and
  never fails the transaction; a soft-failed one is accepted as far as the
  sender is concerned; an unexpected error in one PDU is logged and
  reported as that PDU's error;
* events fetched while filling a gap go through the same steps (without
  filling gaps of their own: their missing prev events make them gaps).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lowband.gateway.federation.client import FederationClient
from lowband.gateway.federation.inbound.auth_checks import verdict
from lowband.gateway.federation.inbound.budget import MAX_FETCHES_PER_TRANSACTION, TRANSACTION_DEADLINE_S, FetchBudget
from lowband.gateway.federation.inbound.check_server_acl import check_server_acl
from lowband.gateway.federation.inbound.check_signatures import check_signatures
from lowband.gateway.federation.inbound.dag import RoomDag, StateMap
from lowband.gateway.federation.inbound.errors import PduDropped
from lowband.gateway.federation.inbound.fetch_auth_events import fetch_auth_chain
from lowband.gateway.federation.inbound.fetch_prev_events import fill_gaps, in_timeline
from lowband.gateway.federation.inbound.parse_incoming_pdu import Incoming, parse_pdu
from lowband.gateway.federation.inbound.state_at_event import state_before
from lowband.gateway.federation.keyring import KeyRing
from lowband.gateway.matrix import room_versions
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.matrix.events import compute_event_id

__all__ = ["MAX_EDUS", "MAX_PDUS", "MAX_WAITING_TRANSACTIONS", "InboundPipeline"]

log = logging.getLogger("lowband.federation")

MAX_PDUS = 50
MAX_EDUS = 100
#: Transactions of one origin that may wait while another of its transactions is processed; more get 429.
MAX_WAITING_TRANSACTIONS = 1
#: What a 429 asks the sender to wait.
RETRY_AFTER_MS = 1000

EduHandler = Callable[[str, dict[str, Any]], Awaitable[None]]
#: (origin, raw PDU, budget) → (event ID, error) when it handled a PDU for a room we do not hold, else None
OutsideHandler = Callable[[str, Any, FetchBudget], Awaitable[tuple[str, None] | None]]


class InboundPipeline:
    """Runs received PDUs through the checks into the room DAG.

    ``max_fetches`` and ``deadline_s`` make each transaction's
    :class:`FetchBudget` (the module constants by default). A PDU for a
    room this server does not hold goes to ``outside`` first (an invite
    withdrawn, a knock refused), and is dropped unless it takes it.
    """

    def __init__(self, client: FederationClient, keyring: KeyRing, dag: RoomDag,
                 edu_handler: EduHandler | None = None, max_fetches: int = MAX_FETCHES_PER_TRANSACTION,
                 deadline_s: float = TRANSACTION_DEADLINE_S, outside: OutsideHandler | None = None) -> None:  # fmt: skip
        self.client = client
        self.keyring = keyring
        self.dag = dag
        self.edu_handler = edu_handler
        self.outside = outside
        self.max_fetches = max_fetches
        self.deadline_s = deadline_s
        self._origin_locks: dict[str, asyncio.Lock] = {}
        self._busy: dict[str, int] = {}  # origin → its transactions being processed or waiting
        self.stats = {"accepted": 0, "rejected": 0, "soft_failed": 0, "dropped": 0, "refused_transactions": 0}

    def budget(self) -> FetchBudget:
        """A fresh budget for one transaction (or one PDU received outside a transaction)."""
        return FetchBudget(self.max_fetches, self.deadline_s)

    async def receive_transaction(self, origin: str, body: Any) -> dict[str, Any]:
        """Handle one ``/send`` body from ``origin``; the answer (``{"pdus": {event_id: {} | {"error": …}}}``).

        MatrixError 400 for a body that is not a transaction, 429 when
        ``origin`` already has a transaction processed and one waiting.
        """
        if not isinstance(body, dict):
            raise MatrixError(400, "M_BAD_JSON", "a transaction must be a JSON object")
        pdus, edus = body.get("pdus", []), body.get("edus", [])
        if not isinstance(pdus, list) or not isinstance(edus, list):
            raise MatrixError(400, "M_BAD_JSON", "pdus and edus must be lists")
        if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
            raise MatrixError(400, "M_BAD_JSON", f"a transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs")
        busy = self._busy.get(origin, 0)
        if busy > MAX_WAITING_TRANSACTIONS:
            self.stats["refused_transactions"] += 1
            raise MatrixError(429, "M_LIMIT_EXCEEDED", "another transaction of this server is being processed",
                              retry_after_ms=RETRY_AFTER_MS)  # fmt: skip
        self._busy[origin] = busy + 1
        lock = self._origin_locks.setdefault(origin, asyncio.Lock())
        results: dict[str, dict[str, str]] = {}
        try:
            async with lock:
                budget = self.budget()
                for index, raw in enumerate(pdus):
                    event_id, error = await self.receive_pdu(origin, raw, budget)
                    results[event_id or f"pdu {index}"] = {"error": error} if error else {}
                for edu in edus:
                    if isinstance(edu, dict) and isinstance(edu.get("edu_type"), str) and self.edu_handler is not None:
                        try:
                            await self.edu_handler(origin, edu)
                        except Exception:  # an EDU is advisory: never fail the transaction for one
                            log.exception("EDU %s from %s failed", str(edu.get("edu_type"))[:50], origin)
        finally:
            self._busy[origin] -= 1
            if not self._busy[origin]:
                del self._busy[origin]
                self._origin_locks.pop(origin, None)
        return {"pdus": results}

    async def receive_pdu(self, origin: str, raw: Any, budget: FetchBudget | None = None) -> tuple[str | None, str | None]:
        """Run one PDU through the steps; (its event ID or None, the error or None)."""
        budget = budget or self.budget()
        event_id = None
        rejected = None
        try:
            if self.outside is not None and isinstance(raw, dict) and isinstance(raw.get("room_id"), str) \
                    and self.dag.room_version(raw["room_id"]) is None:  # fmt: skip
                handled = await self.outside(origin, raw, budget)
                if handled is not None:
                    return handled
            incoming = parse_pdu(raw, origin, self.dag)
            event_id = incoming.event.event_id
            check_server_acl(origin, incoming.event.room_id, self.dag)
            if in_timeline(event_id, self.dag):
                return event_id, None  # seen before: nothing to do
            incoming = await self._checked(incoming, budget)
            gaps = await fill_gaps(incoming, self.client, self.keyring, self.dag,
                                   lambda fetched: self._place_fetched(fetched, budget), budget)  # fmt: skip
            async with self.dag.room_lock(incoming.event.room_id):
                rejected = await self._place(incoming, gaps)
        except PduDropped as exc:
            self.stats["dropped"] += 1
            event_id = event_id or _best_effort_id(raw)
            log.info("dropped PDU %s from %s: %s", event_id or "?", origin, exc.reason)
            return event_id, exc.reason
        except Exception:
            self.stats["dropped"] += 1
            log.exception("PDU %s from %s could not be processed", event_id or "?", origin)
            return event_id, "internal error while processing the event"
        # A rejected event is kept (marked) but refused all the same: the sender is told why, as the spec's example.
        return event_id, (f"rejected: {rejected}" if rejected else None)

    async def _checked(self, incoming: Incoming, budget: FetchBudget) -> Incoming:
        """Steps 2–4 (signatures, content hash, auth events known): network, no lock held."""
        incoming = await check_signatures(incoming, self.keyring, budget)
        await fetch_auth_chain(incoming, self.client, self.keyring, self.dag, budget)
        return incoming

    async def _place(self, incoming: Incoming, gaps: dict[str, StateMap]) -> str | None:
        """Steps 5–7 with the room's lock held; why the event was rejected, or None."""
        if in_timeline(incoming.event.event_id, self.dag):
            return None
        before = state_before(incoming, self.dag, gaps)
        rejected, soft_failed = verdict(incoming, before, self.dag)
        await self.dag.store_remote(incoming.event.room_id, incoming.event, before, rejected, soft_failed)
        key = "rejected" if rejected else "soft_failed" if soft_failed else "accepted"
        self.stats[key] += 1
        if rejected or soft_failed:
            log.info("%s %s from %s: %s", key.replace("_", " "), incoming.event.event_id, incoming.origin,
                     rejected or "not allowed by the current state")  # fmt: skip
        return rejected

    async def _place_fetched(self, incoming: Incoming, budget: FetchBudget) -> None:
        """A missing event fetched for a gap: checked without the lock, placed (without gaps of its own) under it."""
        incoming = await self._checked(incoming, budget)
        async with self.dag.room_lock(incoming.event.room_id):
            await self._place(incoming, {})


def _best_effort_id(raw: Any) -> str | None:
    """The ID a dropped PDU would have in current room versions, to name it in the answer; None if none."""
    try:
        return compute_event_id(raw, room_versions.DEFAULT) if isinstance(raw, dict) else None
    except (ValueError, TypeError, RecursionError):
        return None
