"""State resolution v2 (room versions 2-11) and v2.1 (version 12, MSC4297), pure and synchronous.

One function to call: :func:`resolve_state`. The modules follow the spec's
text in order: :mod:`.conflicts` (unconflicted map, conflicted set, auth
difference, conflicted state subgraph), :mod:`.ordering` (reverse
topological power ordering, mainline ordering), :mod:`.auth_checks`
(iterative auth checks), :mod:`.resolve` (the five steps). :mod:`.loader`
is the one place events are read, counted against the work budget, and
checked to be of one room.

No I/O: the caller hands over a ``get_event`` that answers from memory or a
store it has already filled.
"""

from lowband.gateway.matrix.state_res.errors import (
    InvalidStateError,
    MissingEventError,
    StateResolutionError,
    WorkLimitExceeded,
)
from lowband.gateway.matrix.state_res.resolve import DEFAULT_MAX_VISITS, resolve_state

__all__ = [
    "DEFAULT_MAX_VISITS",
    "InvalidStateError",
    "MissingEventError",
    "StateResolutionError",
    "WorkLimitExceeded",
    "resolve_state",
]
