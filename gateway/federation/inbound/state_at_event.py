"""Step 5's input: the state before a PDU, resolved across its prev events."""

from __future__ import annotations

from lowband.gateway.federation.inbound.dag import RoomDag, StateMap
from lowband.gateway.federation.inbound.errors import PduDropped
from lowband.gateway.federation.inbound.parse_incoming_pdu import Incoming
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.state_res import StateResolutionError, resolve_state


def state_before(incoming: Incoming, dag: RoomDag, gaps: dict[str, StateMap]) -> StateMap:
    """The state before ``incoming``: the state after its one prev event, or the resolution of several.

    ``gaps`` holds the state after prev events we only know as outliers
    (fetched from the sender). PduDropped if a prev event's state is unknown.
    """
    states: list[StateMap] = []
    for prev in dict.fromkeys(incoming.event.prev_events):
        state = gaps.get(prev)
        if state is None:
            state = dag.state_after(prev)
        if state is None:
            raise PduDropped(f"the state after prev event {prev} is unknown")
        states.append(state)
    if not states:
        return {}  # the create event
    if len(states) == 1 or all(s == states[0] for s in states[1:]):
        return dict(states[0])
    def get_event(event_id: str) -> Event | None:
        known = dag.known(event_id)
        return known.event if known is not None else None

    def is_rejected(event_id: str) -> bool:
        known = dag.known(event_id)
        return known is not None and known.rejected is not None

    try:
        return dict(resolve_state(incoming.version, states, get_event, is_rejected=is_rejected))
    except StateResolutionError as exc:
        raise PduDropped(f"the state before it cannot be resolved: {exc}") from None
