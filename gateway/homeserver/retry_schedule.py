"""The retry schedule of durable outbound queues, sans-I/O (federation peers, appservices, …).

Rules:

* the backlog itself lives on disk (a cursor over a log); this core only
  decides *when* each destination is tried: it holds no payload, so memory
  stays bounded however long a peer is away;
* a destination with work is tried at once; after a failure it waits
  ``base · 2^(failures-1)`` seconds, capped at ``cap`` (a minute by default,
  so a peer that comes back is caught up within a minute even after weeks),
  or what the peer asked for (``retry_after``), whichever is longer, capped too;
* :meth:`DeliverySchedule.wake` makes a waiting destination due now (a request
  from that peer shows it is back; new work alone does not cut a backoff short);
* one attempt per destination at a time: a destination handed out by
  :meth:`due` is not handed out again until :meth:`succeeded` or :meth:`failed`.

Times are in seconds on the caller's clock (``now``), never read here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeliverySchedule", "DestinationState"]


@dataclass
class DestinationState:
    """Where one destination stands."""

    has_work: bool = False
    failures: int = 0
    retry_at: float = 0.0
    in_flight: bool = False


class DeliverySchedule:
    """When to try each destination."""

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base = base
        self.cap = cap
        self._states: dict[str, DestinationState] = {}

    def state(self, destination: str) -> DestinationState:
        """The state of ``destination`` (created on first use)."""
        found = self._states.get(destination)
        if found is None:
            found = self._states[destination] = DestinationState()
        return found

    def add_work(self, destination: str) -> None:
        """``destination`` has something to send."""
        self.state(destination).has_work = True

    def failures(self, destination: str) -> int:
        """Failed attempts since the last success (0 for a destination not waiting); adds no state."""
        state = self._states.get(destination)
        return 0 if state is None else state.failures

    def wake(self, destination: str) -> None:
        """``destination`` showed it is reachable: try it now if it has work."""
        state = self._states.get(destination)
        if state is not None:
            state.retry_at = 0.0

    def due(self, now: float) -> list[str]:
        """Destinations to try now (each marked in flight)."""
        out = []
        for name, state in self._states.items():
            if state.has_work and not state.in_flight and state.retry_at <= now:
                state.in_flight = True
                out.append(name)
        return out

    def next_deadline(self) -> float | None:
        """The earliest time a destination becomes due, or None when nothing waits."""
        times = [s.retry_at for s in self._states.values() if s.has_work and not s.in_flight]
        return min(times) if times else None

    def succeeded(self, destination: str, more: bool) -> None:
        """An attempt went through; ``more`` when the backlog is not empty yet."""
        state = self.state(destination)
        state.in_flight = False
        state.failures = 0
        state.retry_at = 0.0
        state.has_work = more
        if not more and destination in self._states:
            del self._states[destination]  # forget idle destinations: memory bounded by active ones

    def failed(self, destination: str, now: float, retry_after: float | None = None) -> float:
        """An attempt failed; returns when it will be tried again."""
        state = self.state(destination)
        state.in_flight = False
        state.failures += 1
        delay = min(self.cap, self.base * (2 ** min(state.failures - 1, 30)))
        if retry_after is not None:
            delay = min(self.cap, max(delay, retry_after))
        state.retry_at = now + delay
        return state.retry_at
