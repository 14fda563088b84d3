"""Step 4's precondition: every auth event of a PDU known, fetched from the sender's server if needed.

Fetched auth events go through steps 1–3 themselves and are checked
against their own auth events (rule-4 only: they are not placed in the
timeline), then kept as outliers — rejected ones marked rejected. The
chain fetched for one PDU is bounded (:data:`MAX_AUTH_CHAIN` events,
:data:`MAX_AUTH_CHAIN_BYTES`), and so are its requests and time (the
transaction's :class:`~lowband.gateway.federation.inbound.budget.FetchBudget`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lowband.gateway.federation.client import FederationClient, FederationError, path_segment
from lowband.gateway.federation.inbound import versioned
from lowband.gateway.federation.inbound.budget import FetchBudget
from lowband.gateway.federation.inbound.check_signatures import check_signatures
from lowband.gateway.federation.inbound.dag import RoomDag
from lowband.gateway.federation.inbound.errors import PduDropped
from lowband.gateway.federation.inbound.parse_incoming_pdu import Incoming, parse_for_room
from lowband.gateway.federation.keyring import KeyRing
from lowband.gateway.matrix.auth_rules import AuthError
from lowband.gateway.matrix.events import Event

log = logging.getLogger("lowband.federation")

#: The most events an ``/event_auth`` answer may hold (more: the PDU is dropped), and its size in bytes.
MAX_AUTH_CHAIN = 2000
MAX_AUTH_CHAIN_BYTES = 16 * 1024 * 1024
#: Events checked between two turns of the event loop (a check is CPU: canonical JSON, hashes, ed25519).
YIELD_EVERY = 50


def missing_auth_events(event: Event, dag: RoomDag) -> list[str]:
    """Auth events of ``event`` this server does not hold."""
    return [e for e in event.auth_events if dag.known(e) is None]


def rule4(event: Event, version: Any, dag: RoomDag, extra: dict[str, tuple[Event, str | None]] | None = None) -> str | None:
    """Why ``event`` fails the auth rules against its own auth events, or None when it passes.

    An auth event that is missing or was rejected fails it too.
    """
    auth: list[Event] = []
    for event_id in event.auth_events:
        found = extra.get(event_id) if extra else None
        if found is None:
            known = dag.known(event_id)
            found = (known.event, known.rejected) if known is not None else None
        if found is None:
            return f"auth event {event_id} is unknown"
        if found[1] is not None:
            return f"auth event {event_id} was rejected"
        auth.append(found[0])
    create = None
    create_id = versioned.create_event_id(event, version)
    if create_id is not None:
        found = extra.get(create_id) if extra else None
        known = dag.known(create_id) if found is None else None
        if found is None and known is not None:
            found = (known.event, known.rejected)
        if found is None:
            return f"the create event {create_id} is unknown"
        if found[1] is not None:
            return f"the create event {create_id} was rejected"
        create = found[0]
    try:
        versioned.check_auth(event, versioned.auth_state_from(event, auth, version, create), version)
    except AuthError as exc:
        return exc.reason
    return None


async def fetch_auth_chain(incoming: Incoming, client: FederationClient, keyring: KeyRing, dag: RoomDag,
                           budget: FetchBudget | None = None) -> None:  # fmt: skip
    """Make every auth event of ``incoming`` known (one ``/event_auth``, within ``budget``); PduDropped when that fails."""
    if not missing_auth_events(incoming.event, dag):
        return
    budget = budget or FetchBudget()
    room_id = incoming.event.room_id
    path = f"/_matrix/federation/v1/event_auth/{path_segment(room_id)}/{path_segment(incoming.event.event_id)}"
    try:
        answer = await client.request(incoming.origin, "GET", path, timeout=budget.timeout(60.0),
                                      max_bytes=MAX_AUTH_CHAIN_BYTES)  # fmt: skip
    except FederationError as exc:
        raise PduDropped(f"its auth events are unknown here and {incoming.origin} did not send them: {exc}") from None
    chain = answer.get("auth_chain") if isinstance(answer, dict) else None
    if not isinstance(chain, list) or len(chain) > MAX_AUTH_CHAIN:
        raise PduDropped(f"the auth chain from {incoming.origin} is unusable (more than {MAX_AUTH_CHAIN} events?)")
    await store_checked_outliers(chain, incoming.origin, incoming.version, room_id, keyring, dag, budget)
    still = missing_auth_events(incoming.event, dag)
    if still:
        raise PduDropped(f"auth event {still[0]} could not be found")


async def store_checked_outliers(raw_events: list[Any], origin: str, version: Any, room_id: str, keyring: KeyRing,
                                 dag: RoomDag, budget: FetchBudget | None = None) -> list[Event]:  # fmt: skip
    """Check events fetched as auth chain or state (steps 1–4) and keep them as outliers; the kept events.

    Events that are malformed or badly signed are left out; the others are
    checked in depth order against their own auth events, and kept with
    their rejection reason (None when they pass). Checking many events is
    CPU work: the loop gets a turn every :data:`YIELD_EVERY` events, so the
    gateway keeps serving meanwhile.
    """
    parsed: dict[str, Event] = {}
    for index, raw in enumerate(raw_events):
        if index % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
        try:
            incoming = await check_signatures(parse_for_room(raw, origin, version), keyring, budget)
        except PduDropped as exc:
            log.info("dropped a fetched event from %s: %s", origin, exc.reason)
            continue
        if incoming.event.room_id != room_id:
            continue
        if dag.known(incoming.event.event_id) is None:
            parsed[incoming.event.event_id] = incoming.event
    decided: dict[str, tuple[Event, str | None]] = {}
    # Auth events come before what they authorise: order by depth, then settle any stragglers.
    pending = sorted(parsed.values(), key=lambda e: (e.depth, e.event_id))
    for _ in range(len(pending) + 1):
        progress = []
        for index, event in enumerate(pending):
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if all(a in decided or dag.known(a) is not None for a in event.auth_events):
                decided[event.event_id] = (event, rule4(event, version, dag, decided))
                progress.append(event)
        pending = [e for e in pending if e.event_id not in decided]
        if not pending or not progress:
            break
    for event in pending:  # an auth event nobody could provide
        decided[event.event_id] = (event, "its auth events could not be found")
    if decided:
        await dag.store_outliers(room_id, list(decided.values()))
    return [event for event, _ in decided.values()]
