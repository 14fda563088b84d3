"""What receiving one transaction may cost in requests to other servers, and in time.

Rules:

* the PDUs of one transaction share :data:`MAX_FETCHES_PER_TRANSACTION`
  requests (``/event_auth``, ``/get_missing_events``, ``/state_ids``,
  ``/state``, ``/event``) and :data:`TRANSACTION_DEADLINE_S` seconds for
  every fetch, key fetches included;
* every request takes its timeout from the budget: at most what it would
  wait anyway, at most the time left. When requests or time run out, the
  PDU that needed one more is dropped with that reason, and so is each
  later PDU of the transaction that needs a fetch; PDUs that need none
  are still placed. A dropped event is not lost for good: a later event
  that cites it has it fetched then;
* so a peer that answers slowly, never, or with endless gaps costs at most
  that many requests and seconds per transaction, and (one transaction per
  origin at a time) per peer.

Sans-I/O: the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from lowband.gateway.federation.inbound.errors import PduDropped

__all__ = ["MAX_FETCHES_PER_TRANSACTION", "TRANSACTION_DEADLINE_S", "FetchBudget"]

#: Requests to other servers the PDUs of one transaction may cause, all together.
MAX_FETCHES_PER_TRANSACTION = 100
#: Seconds the fetches for one transaction may take, all together (under the 60 s a sender waits for its answer).
TRANSACTION_DEADLINE_S = 45.0


class FetchBudget:
    """Requests and seconds left for fetching what the PDUs of one transaction need."""

    def __init__(self, requests: int = MAX_FETCHES_PER_TRANSACTION, seconds: float = TRANSACTION_DEADLINE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.requests_left = requests
        self._clock = clock
        self._deadline = clock() + seconds
        self.spent = 0

    def seconds_left(self) -> float:
        """Time left before the deadline (0 when it has passed)."""
        return max(0.0, self._deadline - self._clock())

    def wait_at_most(self, wanted: float) -> float:
        """How long to wait for something that is not a request (a key fetch); PduDropped when no time is left."""
        left = self.seconds_left()
        if left <= 0:
            raise PduDropped("the time for fetching what this transaction's events need ran out")
        return min(wanted, left)

    def timeout(self, wanted: float) -> float:
        """Spend one request; the timeout it gets. PduDropped when no request or no time is left."""
        if self.requests_left <= 0:
            raise PduDropped(f"the {self.spent} requests this transaction's events may cost are spent")
        wait = self.wait_at_most(wanted)
        self.requests_left -= 1
        self.spent += 1
        return wait
