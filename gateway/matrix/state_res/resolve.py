"""State resolution v2 and v2.1: the algorithm, step by step as the spec numbers it.

Rules (room versions spec, v2 "Algorithm"; v12 and MSC4297 for v2.1):

0. Split the state sets into the unconflicted state map and the conflicted
   state set; with no conflict the unconflicted map is the answer. The full
   conflicted set is the conflicted state set, the auth difference and, in
   v2.1, the conflicted state subgraph (:mod:`.conflicts`).
1. X = the power events of the full conflicted set, with the events of their
   auth chains that are in the full conflicted set; sorted by the reverse
   topological power ordering (:mod:`.ordering`).
2. Iterative auth checks of X (:mod:`.auth_checks`), starting from the
   unconflicted state map (v2) or from an empty map (v2.1): the partially
   resolved state.
3. The rest of the full conflicted set, sorted by the mainline ordering based
   on the partially resolved state's power levels.
4. Iterative auth checks of those, starting from the partially resolved state.
5. The unconflicted state map laid over the result.

Reading chosen in step 1, as Synapse and ruma do: X grows along
``auth_events`` edges that stay inside the full conflicted set, and the
topological order uses those edges. The spec's words ("the events in the
auth chain of P which also belong to the full conflicted set") would also take
an event of the set reached only through events outside it; servers must agree,
so Lowband follows the deployed servers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from lowband.gateway.matrix.auth_rules import POWER_LEVELS, StateKey
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.room_versions import RoomVersion, UnsupportedRoomVersion
from lowband.gateway.matrix.state_res.auth_checks import iterative_auth_checks
from lowband.gateway.matrix.state_res.conflicts import (
    auth_difference,
    conflicted_subgraph,
    full_auth_chains,
    split_state_sets,
)
from lowband.gateway.matrix.state_res.errors import InvalidStateError
from lowband.gateway.matrix.state_res.loader import EventLoader
from lowband.gateway.matrix.state_res.ordering import is_power_event, mainline_order, reverse_topological_power_order

__all__ = ["DEFAULT_MAX_VISITS", "resolve_state"]

#: Default work budget: about a second of Python. A room whose resolution
#: needs more (tens of thousands of members on each side) passes a larger one.
DEFAULT_MAX_VISITS = 1_000_000


def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    get_event: Callable[[str], Event | None],
    *,
    is_rejected: Callable[[str], bool] | None = None,
    auth_chain: Callable[[str], Collection[str]] | None = None,
    max_visits: int = DEFAULT_MAX_VISITS,
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` (maps of ``(type, state_key)`` to event ID) into one state.

    ``room_version.state_res`` picks v2 (versions 2-11) or v2.1 (version 12).
    Pure and synchronous: every event comes from ``get_event``, which
    returns the :class:`Event` or ``None``, and should not raise; the caller
    fetches what is missing *before* resolving: every
    event of the state sets and of their auth chains (for version 12, also
    the create event the room ID names).

    ``is_rejected(event_id)``: whether this server rejected the event. A
    rejected event is dropped from the state sets (as if the set did not
    hold its key), never used as an auth event and never admitted by the
    auth checks, so the result never holds one. ``get_event`` must still
    return rejected events (other events' auth chains pass through them).
    Without ``is_rejected`` no event counts as rejected.

    ``auth_chain(event_id)``: the IDs of all auth ancestors of the event
    (not the event itself), e.g. kept by the store since the event was
    persisted; used for the auth difference instead of walking ``auth_events``
    through ``get_event``. It must be exact: a wrong chain gives a wrong,
    unconverged state.

    ``max_visits`` bounds the work: one unit per event fetched, one per event
    ID examined while computing auth chains or the conflicted subgraph. The
    cost of a resolution is linear in the size of the state sets plus
    O(max_visits) (each fetched event is handled a bounded number of times,
    its ``auth_events`` list is at most 10 long) plus sorting (n log n in
    the events fetched). About 0.1 s for 1,000 conflicted memberships.

    Returns a new dict. Raises :class:`MissingEventError` if a needed event
    is not given, :class:`InvalidStateError` if a conflicted entry is not a
    state event of its key, or an event is of another room,
    :class:`WorkLimitExceeded` past ``max_visits`` (all three are
    :class:`StateResolutionError`), and :class:`UnsupportedRoomVersion` for
    a room version whose algorithm is neither v2 nor v2.1.
    """
    if room_version.state_res not in ("v2", "v2.1"):
        raise UnsupportedRoomVersion(f"state resolution {room_version.state_res!r} is not implemented")
    loader = EventLoader(room_version, get_event, is_rejected, max_visits)
    sets = [_without_rejected(loader, state_set) for state_set in state_sets]

    # Step 0: what is in conflict.
    unconflicted, conflicted = split_state_sets(sets)
    if not conflicted:
        return unconflicted
    conflicted_events: set[str] = set()
    for key, event_ids in conflicted.items():
        for event_id in event_ids:
            _check_entry(loader, key, event_id)
        conflicted_events |= event_ids
    full_conflicted = conflicted_events | auth_difference(full_auth_chains(loader, sets, auth_chain))
    if room_version.state_res == "v2.1":
        full_conflicted |= conflicted_subgraph(loader, conflicted_events)

    # Step 1: the power events and their conflicted auth ancestors, by reverse topological power ordering.
    power_events = {e for e in full_conflicted if is_power_event(loader.event(e))}
    first_pass = _with_ancestors_within(loader, power_events, full_conflicted)
    sorted_first = reverse_topological_power_order(loader, first_pass)

    # Step 2: replay them on the unconflicted state (v2) or on nothing (v2.1).
    initial = {} if room_version.state_res == "v2.1" else unconflicted
    partial = iterative_auth_checks(loader, sorted_first, initial)

    # Step 3: everything else, by mainline ordering on the partially resolved power levels.
    sorted_rest = mainline_order(loader, full_conflicted - first_pass, partial.get((POWER_LEVELS, "")))

    # Step 4: replay those on the partially resolved state.
    resolved = iterative_auth_checks(loader, sorted_rest, partial)

    # Step 5: the unconflicted state wins wherever it has a key.
    resolved.update(unconflicted)
    return resolved


def _without_rejected(loader: EventLoader, state_set: Mapping[StateKey, str]) -> Mapping[StateKey, str]:
    """``state_set`` without the events this server rejected (the same object when there are none)."""
    if not any(loader.rejected(event_id) for event_id in state_set.values()):
        return state_set
    return {key: event_id for key, event_id in state_set.items() if not loader.rejected(event_id)}


def _check_entry(loader: EventLoader, key: StateKey, event_id: str) -> None:
    """A state set entry must name a state event of its own key (the room is checked on loading)."""
    event = loader.event(event_id)
    if event.state_key is None or (event.type, event.state_key) != key:
        raise InvalidStateError(
            f"state entry {key[0][:80]} {key[1][:80]!r} names event {event_id[:100]} of another key"
        )


def _with_ancestors_within(loader: EventLoader, events: set[str], within: set[str]) -> set[str]:
    """``events`` and the auth ancestors reachable from them through events of ``within``."""
    found = set(events)
    stack = list(events)
    while stack:
        for auth_id in loader.auth_ids(stack.pop()):
            if auth_id in within and auth_id not in found:
                found.add(auth_id)
                stack.append(auth_id)
    return found
