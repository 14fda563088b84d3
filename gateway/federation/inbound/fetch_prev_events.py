"""Step 5's precondition: the prev events of a PDU known, or the state at each gap fetched.

First ``POST /get_missing_events`` asks the sender for up to
:data:`MISSING_EVENTS_LIMIT` events between our forward extremities and
the PDU; those go through the whole receive path, oldest first. A prev
event still unknown after that is a gap: the state before it comes from
``GET /state_ids`` (then ``/event`` for each state or auth event we lack,
up to :data:`FETCH_ONE_BY_ONE` of them, or ``GET /state`` when more are
missing), kept as outliers, and the state after it is that state plus the
prev event itself.

Bounds: a PDU has at most 20 prev events (the event format), so at most 20
gaps; the answers are capped (:data:`MAX_STATE_EVENTS` IDs,
:data:`MAX_STATE_IDS_BYTES`, :data:`MAX_STATE_BYTES`); every request is
paid from the transaction's
:class:`~lowband.gateway.federation.inbound.budget.FetchBudget`. Nothing
here holds the room's lock: a slow peer never delays local sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lowband.gateway.federation.client import FederationClient, FederationError, path_segment
from lowband.gateway.federation.inbound.budget import FetchBudget
from lowband.gateway.federation.inbound.dag import RoomDag, StateMap
from lowband.gateway.federation.inbound.errors import PduDropped
from lowband.gateway.federation.inbound.fetch_auth_events import store_checked_outliers
from lowband.gateway.federation.inbound.parse_incoming_pdu import Incoming, parse_for_room
from lowband.gateway.federation.keyring import KeyRing

log = logging.getLogger("lowband.federation")

MISSING_EVENTS_LIMIT = 10
#: Up to this many unknown state and auth events are fetched one by one; more, and /state sends them whole.
FETCH_ONE_BY_ONE = 20
#: The most state (and, separately, auth chain) IDs a ``/state_ids`` answer may list; more and the PDU is dropped.
MAX_STATE_EVENTS = 50_000
#: Answer sizes: ``/state_ids`` (MAX_STATE_EVENTS IDs of both kinds fit) and ``/state`` (whole events).
MAX_STATE_IDS_BYTES = 8 * 1024 * 1024
MAX_STATE_BYTES = 256 * 1024 * 1024
#: ``/get_missing_events`` (at most 20 events are used) and ``/event`` (one event of at most 64 KiB) answers.
MISSING_EVENTS_BYTES = 4 * 1024 * 1024
MAX_EVENT_BYTES = 256 * 1024

Process = Callable[[Incoming], Awaitable[None]]


def in_timeline(event_id: str, dag: RoomDag) -> bool:
    """Whether the event is placed in the DAG with a known state (not missing, not only an outlier)."""
    known = dag.known(event_id)
    return known is not None and not known.outlier


async def fill_gaps(incoming: Incoming, client: FederationClient, keyring: KeyRing, dag: RoomDag,
                    process: Process, budget: FetchBudget) -> dict[str, StateMap]:  # fmt: skip
    """Make the prev events of ``incoming`` placeable; the state after each one fetched as a gap.

    ``process`` runs the receive path on a fetched missing event (it takes
    the room's lock to place it). Raises PduDropped when a gap cannot be
    filled, or ``budget`` runs out.
    """
    event = incoming.event
    missing = [p for p in event.prev_events if not in_timeline(p, dag)]
    if not missing:
        return {}
    room_id = event.room_id
    body = {"earliest_events": dag.forward_extremities(room_id)[:20], "latest_events": [event.event_id],
            "limit": MISSING_EVENTS_LIMIT, "min_depth": 0}  # fmt: skip
    timeout = budget.timeout(60.0)
    try:
        answer = await client.request(incoming.origin, "POST",
                                      f"/_matrix/federation/v1/get_missing_events/{path_segment(room_id)}",
                                      body=body, timeout=timeout, max_bytes=MISSING_EVENTS_BYTES)  # fmt: skip
        found = answer.get("events") if isinstance(answer, dict) else None
    except FederationError as exc:
        log.info("get_missing_events from %s failed: %s", incoming.origin, exc)
        found = None
    for raw in sorted(found if isinstance(found, list) else [], key=_depth)[: MISSING_EVENTS_LIMIT * 2]:
        try:
            fetched = parse_for_room(raw, incoming.origin, incoming.version)
            if fetched.event.room_id == room_id and not in_timeline(fetched.event.event_id, dag):
                await process(fetched)
        except PduDropped as exc:
            log.info("a missing event from %s was dropped: %s", incoming.origin, exc.reason)
    gaps: dict[str, StateMap] = {}
    for prev in dict.fromkeys(event.prev_events):
        if not in_timeline(prev, dag):
            gaps[prev] = await state_after_gap(prev, incoming, client, keyring, dag, budget)
    return gaps


def _depth(raw: Any) -> int:
    depth = raw.get("depth") if isinstance(raw, dict) else None
    return depth if isinstance(depth, int) else 0


async def state_after_gap(prev: str, incoming: Incoming, client: FederationClient, keyring: KeyRing,
                          dag: RoomDag, budget: FetchBudget | None = None) -> StateMap:  # fmt: skip
    """The state after ``prev``, an event we do not have in the timeline, asked from the sender."""
    budget = budget or FetchBudget()
    room_id = incoming.event.room_id
    origin = incoming.origin
    query = {"event_id": prev}
    timeout = budget.timeout(60.0)
    try:
        ids = await client.request(origin, "GET", f"/_matrix/federation/v1/state_ids/{path_segment(room_id)}",
                                   query=query, timeout=timeout, max_bytes=MAX_STATE_IDS_BYTES)  # fmt: skip
    except FederationError as exc:
        raise PduDropped(f"the state at {prev} could not be fetched from {origin}: {exc}") from None
    state_ids = ids.get("pdu_ids") if isinstance(ids, dict) else None
    auth_ids = ids.get("auth_chain_ids") if isinstance(ids, dict) else None
    if not isinstance(state_ids, list) or not isinstance(auth_ids, list) or len(state_ids) > MAX_STATE_EVENTS \
            or len(auth_ids) > MAX_STATE_EVENTS:  # fmt: skip
        raise PduDropped(f"{origin} sent an unusable state for {prev} (more than {MAX_STATE_EVENTS} IDs?)")
    wanted = [e for e in dict.fromkeys([*state_ids, *auth_ids, prev]) if isinstance(e, str) and dag.known(e) is None]
    if len(wanted) > FETCH_ONE_BY_ONE:
        timeout = budget.timeout(120.0)
        try:
            full = await client.request(origin, "GET", f"/_matrix/federation/v1/state/{path_segment(room_id)}",
                                        query=query, timeout=timeout, max_bytes=MAX_STATE_BYTES)  # fmt: skip
        except FederationError as exc:
            raise PduDropped(f"the state at {prev} could not be fetched from {origin}: {exc}") from None
        raw = [*(full.get("auth_chain") or []), *(full.get("pdus") or [])] if isinstance(full, dict) else []
        if len(raw) > 2 * MAX_STATE_EVENTS + 1:
            raise PduDropped(f"{origin} sent more than {2 * MAX_STATE_EVENTS} events as the state at {prev}")
        wanted_prev = [] if dag.known(prev) else [prev]
        raw += await _fetch_each(wanted_prev, origin, client, budget)
    else:
        raw = await _fetch_each(wanted, origin, client, budget)
    await store_checked_outliers(raw, origin, incoming.version, room_id, keyring, dag, budget)
    state: StateMap = {}
    for event_id in state_ids:
        known = dag.known(event_id) if isinstance(event_id, str) else None
        if known is None or known.event.state_key is None:
            raise PduDropped(f"state event {str(event_id)[:80]} at {prev} could not be fetched")
        state[(known.event.type, known.event.state_key)] = event_id
    prev_known = dag.known(prev)
    if prev_known is None:
        raise PduDropped(f"prev event {prev} could not be fetched")
    if prev_known.event.state_key is not None and prev_known.rejected is None:
        state[(prev_known.event.type, prev_known.event.state_key)] = prev
    return state


async def _fetch_each(event_ids: list[str], origin: str, client: FederationClient, budget: FetchBudget) -> list[Any]:
    """``GET /event/{id}`` for each, ten at a time; the PDUs that came back."""
    out: list[Any] = []
    for start in range(0, len(event_ids), 10):
        chunk = event_ids[start:start + 10]
        timeouts = [budget.timeout(30.0) for _ in chunk]
        answers = await asyncio.gather(*(client.request(origin, "GET", f"/_matrix/federation/v1/event/{path_segment(e)}",
                                                        timeout=t, max_bytes=MAX_EVENT_BYTES)
                                         for e, t in zip(chunk, timeouts, strict=True)), return_exceptions=True)  # fmt: skip
        for answer in answers:
            pdus = answer.get("pdus") if isinstance(answer, dict) else None
            if isinstance(pdus, list) and pdus:
                out.append(pdus[0])
    return out
