"""The iterative auth checks of state resolution v2.

Rules (room versions spec, v2 "Iterative auth checks" and "Rejected events"):

* events are taken in the given order; each is checked against the
  authorisation rules and, if allowed, replaces its key in the state;
  otherwise it is ignored;
* the state pairs the rules need (:func:`auth_types_for_event`) come from
  the state built so far; a pair missing there comes from the event's own
  ``auth_events``;
* rejected events are never used as auth events.

Lowband choices:

* an event this server rejected is not admitted either, even if it would pass
  here, so a rejected event never becomes state (Synapse does the same; the
  spec would re-check it);
* from version 12 the create event is not among ``auth_events``: it is added
  from the room ID (MSC4291), as the rules need it;
* an event that is not a state event is skipped (it can only be here through
  a malformed ``auth_events`` list; it can never be state).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lowband.gateway.matrix.auth_rules import CREATE, AuthError, StateKey, auth_types_for_event, check_auth
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.state_res.loader import EventLoader

__all__ = ["iterative_auth_checks"]


def iterative_auth_checks(
    loader: EventLoader, events: Iterable[str], initial_state: Mapping[StateKey, str]
) -> dict[StateKey, str]:
    """Apply the iterative auth checks to ``events`` (in order), starting from ``initial_state``.

    Returns the new state (``initial_state`` is not modified). Cost: each
    event, its auth events and the state events its rules need are loaded
    once per resolution; one rules check per event.
    """
    state = dict(initial_state)
    version = loader.room_version
    for event_id in events:
        event = loader.event(event_id)
        if event.state_key is None or loader.rejected(event_id):
            continue
        wanted = auth_types_for_event(event.type, event.sender, event.state_key, event.content, room_version=version)
        if version.room_id_is_create_hash and event.type != CREATE and (CREATE, "") not in wanted:
            wanted.append((CREATE, ""))  # the rules always need it; v12 events just do not cite it
        auth_state = _auth_state(loader, event, wanted, state)
        try:
            check_auth(event, auth_state, room_version=version)
        except AuthError:
            continue
        state[(event.type, event.state_key)] = event_id
    return state


def _auth_state(
    loader: EventLoader, event: Event, wanted: list[StateKey], state: Mapping[StateKey, str]
) -> dict[StateKey, Event]:
    """The state to check ``event`` against: ``wanted`` pairs from ``state``, else from its auth events."""
    from_auth_events: dict[StateKey, Event] = {}
    for auth_id in event.auth_events:
        auth_event = loader.event(auth_id)
        if auth_event.state_key is not None and not loader.rejected(auth_id):
            from_auth_events.setdefault((auth_event.type, auth_event.state_key), auth_event)
    if loader.room_version.room_id_is_create_hash and event.type != CREATE:
        create = loader.create_event(event)
        if create is not None and not loader.rejected(create.event_id):
            from_auth_events[(CREATE, "")] = create
    # The state holds no rejected event: resolve_state drops them from its
    # inputs and these checks never admit one.
    auth_state: dict[StateKey, Event] = {}
    for key in wanted:
        state_id = state.get(key)
        chosen = loader.event(state_id) if state_id is not None else from_auth_events.get(key)
        if chosen is not None:
            auth_state[key] = chosen
    return auth_state
