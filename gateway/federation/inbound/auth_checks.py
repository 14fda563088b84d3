"""Step 6: authorised by its auth events and the state before it (else rejected), and by the current state (else soft-failed)."""

from __future__ import annotations

from lowband.gateway.federation.inbound import versioned
from lowband.gateway.federation.inbound.dag import RoomDag, StateMap
from lowband.gateway.federation.inbound.fetch_auth_events import rule4
from lowband.gateway.federation.inbound.parse_incoming_pdu import Incoming
from lowband.gateway.matrix.auth_rules import AuthError
from lowband.gateway.matrix.events import Event


def _auth_state(incoming: Incoming, state: StateMap, dag: RoomDag) -> dict[tuple[str, str], Event]:
    out: dict[tuple[str, str], Event] = {}
    for key in versioned.auth_types(incoming.event, incoming.version):
        event_id = state.get(key)
        known = dag.known(event_id) if event_id else None
        if known is not None and known.rejected is None:
            out[key] = known.event
    return out


def verdict(incoming: Incoming, before: StateMap, dag: RoomDag) -> tuple[str | None, bool]:
    """(why it is rejected, or None; whether it is soft-failed)."""
    reason = rule4(incoming.event, incoming.version, dag)
    if reason is not None:
        return f"auth events: {reason}", False
    try:
        versioned.check_auth(incoming.event, _auth_state(incoming, before, dag), incoming.version)
    except AuthError as exc:
        return f"state before the event: {exc.reason}", False
    current = dag.current_state(incoming.event.room_id)
    if current != before:
        try:
            versioned.check_auth(incoming.event, _auth_state(incoming, current, dag), incoming.version)
        except AuthError:
            return None, True
    return None, False
