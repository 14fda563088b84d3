"""Which events state resolution replays: the spec's definitions up to the full conflicted set.

Rules (room versions spec, v2 "State resolution" definitions; v12 and MSC4297):

* a key held by every state set with the same event is *unconflicted*; any
  other event of any state set is in the *conflicted state set* (a key that
  some set lacks is conflicted too, with the events the other sets hold);
* the *auth difference* is the union minus the intersection of the state
  sets' full auth chains;
* v2.1 only: the *conflicted state subgraph* is every event on an
  ``auth_events`` path from one conflicted event to another, ends included;
* the *full conflicted set* is the union of those.

Reading chosen where the spec is loose: the full auth chain of a state set
holds the set's own events as well as their auth chains. Synapse computes it
so (its store and its test store both do); taken literally the spec would
leave a state set's events out unless another event cites them, and replay an
unconflicted event that only some sets' events cite. Servers must agree
here, so Lowband reads it as the deployed servers do.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from lowband.gateway.matrix.auth_rules import StateKey
from lowband.gateway.matrix.state_res.loader import EventLoader

__all__ = ["auth_difference", "conflicted_subgraph", "full_auth_chains", "split_state_sets"]


def split_state_sets(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split the state sets into the unconflicted state map and the conflicted state set.

    Returns ``(unconflicted, conflicted)``: ``unconflicted`` maps each key
    that every set holds with the same event to that event; ``conflicted``
    maps every other key to the events the sets hold for it (a set without
    the key adds nothing). Cost: linear in the total size of the sets.
    """
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    keys: set[StateKey] = set()
    for state_set in state_sets:
        keys.update(state_set)
    for key in keys:
        values = {state_set.get(key) for state_set in state_sets}
        held = {value for value in values if value is not None}
        if len(values) == 1 and len(held) == 1:
            unconflicted[key] = held.pop()
        else:
            conflicted[key] = held
    return unconflicted, conflicted


def full_auth_chains(
    loader: EventLoader,
    state_sets: Sequence[Mapping[StateKey, str]],
    auth_chain: Callable[[str], Collection[str]] | None = None,
) -> list[set[str]]:
    """Return each state set's full auth chain: its events and all their auth ancestors.

    With ``auth_chain`` (the caller's precomputed auth chain of one event,
    without the event itself) the chains are unions of its answers, each
    event ID of an answer one unit of work; without it, ``auth_events`` are
    walked through ``loader``, one unit per event reached. An event already
    in a chain brings its whole auth chain with it, so it is not expanded
    again.
    """
    chains: list[set[str]] = []
    for state_set in state_sets:
        chain: set[str] = set()
        for event_id in state_set.values():
            if event_id in chain:
                continue
            chain.add(event_id)
            if auth_chain is not None:
                ancestors = auth_chain(event_id)
                loader.spend(len(ancestors) + 1)
                chain.update(ancestors)
            else:
                _walk_into(loader, event_id, chain)
        chains.append(chain)
    return chains


def _walk_into(loader: EventLoader, start: str, chain: set[str]) -> None:
    """Add the auth ancestors of ``start`` to ``chain``, not expanding what is already there."""
    stack = [start]
    while stack:
        for auth_id in loader.auth_ids(stack.pop()):
            if auth_id not in chain:
                loader.spend()
                chain.add(auth_id)
                stack.append(auth_id)


def auth_difference(chains: Sequence[set[str]]) -> set[str]:
    """The events in some but not all of ``chains`` (the union minus the intersection)."""
    if not chains:
        return set()
    union = set().union(*chains)
    return union - set(chains[0]).intersection(*chains[1:])


def conflicted_subgraph(loader: EventLoader, conflicted_events: Collection[str]) -> set[str]:
    """The v2.1 conflicted state subgraph of ``conflicted_events``.

    Every event reachable from a conflicted event by ``auth_events`` edges
    that itself reaches a conflicted event by such edges, plus the
    conflicted events themselves. One depth-first walk over the auth
    ancestors of the conflicted events: each is visited once (one unit of
    work) and learns whether a conflicted event lies below it.
    """
    targets = set(conflicted_events)
    reaches: dict[str, bool] = {}  # event -> a conflicted event is among its auth ancestors
    for start in targets:
        if start in reaches:
            continue
        # Iterative post-order: an event is decided once all its auth events are.
        stack: list[tuple[str, bool]] = [(start, False)]
        while stack:
            event_id, expanded = stack.pop()
            if expanded:
                reaches[event_id] = any(a in targets or reaches.get(a, False) for a in loader.auth_ids(event_id))
                continue
            if event_id in reaches:
                continue
            loader.spend()
            reaches[event_id] = False  # marks it on the way (the graph is acyclic; a cycle just stops here)
            stack.append((event_id, True))
            stack.extend((a, False) for a in loader.auth_ids(event_id) if a not in reaches)
    return targets | {event_id for event_id, below in reaches.items() if below}
