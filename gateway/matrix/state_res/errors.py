"""What state resolution raises: one base type, three reasons.

All of them mean "this resolution cannot be done with what was given"; none
means a bug in the caller's Python. The federation receive path turns them
into a refused transaction entry (logged, counted), never a crash.
"""

from __future__ import annotations

__all__ = ["InvalidStateError", "MissingEventError", "StateResolutionError", "WorkLimitExceeded"]


class StateResolutionError(Exception):
    """State resolution could not run to the end; the message says why (one line)."""


class MissingEventError(StateResolutionError):
    """``get_event`` returned ``None`` for an event the resolution needs.

    The caller promised every event of the state sets and of their auth
    chains: fetch ``event_id`` (``/event``, ``/event_auth``) and resolve again.
    """

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event {event_id[:100]} is needed for state resolution but was not given")
        self.event_id = event_id


class WorkLimitExceeded(StateResolutionError):
    """The resolution would examine more than ``max_visits`` events.

    Raised as soon as the count passes the limit, so a hostile peer cannot make
    the gateway walk an auth DAG of millions of events. ``limit`` is the limit
    that was passed.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"state resolution needs more than {limit} event visits")
        self.limit = limit


class InvalidStateError(StateResolutionError):
    """The input is not a room state: an event of another room, a state set entry
    whose event is not a state event or has another ``(type, state_key)``."""
