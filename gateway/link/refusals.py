"""Refused link frames: counters per kind, and when to say so in the log (sans-I/O).

A flood of forged or garbled frames must not become a flood of log lines.
:class:`RefusalLog` counts every refusal by kind (``bad_tag``,
``bad_handshake``, ``undecodable``, ...) and tells its owner when to write a
line:

* the first refusal of a kind gets a line at once (an operator sees the
  first forged frame, with its address);
* later ones of that kind are only counted until ``interval`` seconds have
  passed since that kind's last line; then one line says how many were
  refused meanwhile, and from which address the last one came;
* :meth:`RefusalLog.due` gives those summary lines when a flood stops in
  the middle of an interval (the runtime calls it at
  :meth:`RefusalLog.next_deadline`), so a count is never left unsaid.

So a kind makes at most one line per interval, however many frames come.
It never reads a clock: ``now`` is passed in. :attr:`RefusalLog.totals` is
the readable counter per kind since start (for a status page).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Seconds between two log lines about one kind of refusal on one link.
LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class RefusalLine:
    """One log line to write: ``count`` refusals of ``kind`` since the last line about it (``first``: none before)."""

    kind: str
    count: int
    total: int  # of this kind since start
    address: int | None  # of the last refused frame (None: no address could be read)
    seconds: float  # the period ``count`` covers (0 for the first line)
    first: bool
    interval: float  # the least time to the next line about this kind

    def text(self) -> str:
        """The line in words (without the link's name)."""
        where = "no readable address" if self.address is None else f"address {self.address}"
        if self.first:
            return (f"refused {self.count} frame(s) ({self.kind}), the last from {where}; further ones of this kind "
                    f"are counted and summarised every {self.interval:g} s at most")  # fmt: skip
        return (f"refused {self.count} more frame(s) ({self.kind}) in the last {self.seconds:.0f} s, the last from "
                f"{where}; {self.total} of this kind since start")  # fmt: skip


@dataclass
class _Kind:
    total: int = 0
    pending: int = 0  # counted since the last line
    last_line: float = -math.inf
    address: int | None = None


@dataclass
class RefusalLog:
    """Counts refusals per kind and rations the log lines about them: one per kind per ``interval``."""

    interval: float = LOG_INTERVAL
    _kinds: dict[str, _Kind] = field(default_factory=dict)

    def note(self, kind: str, address: int | None, now: float, count: int = 1) -> RefusalLine | None:
        """Count ``count`` refusals of ``kind``; the line to log now, or None (counted for a later line)."""
        state = self._kinds.setdefault(kind, _Kind())
        state.total += count
        state.pending += count
        state.address = address
        if now - state.last_line < self.interval:
            return None
        return self._line(kind, state, now)

    def due(self, now: float) -> list[RefusalLine]:
        """Summary lines of kinds with refusals not logged yet whose interval has passed (call at next_deadline)."""
        return [self._line(kind, state, now) for kind, state in self._kinds.items()
                if state.pending and now - state.last_line >= self.interval]  # fmt: skip

    def flush(self, now: float) -> list[RefusalLine]:
        """Lines for every kind with refusals not logged yet, interval or not (when the link stops)."""
        return [self._line(kind, state, now) for kind, state in self._kinds.items() if state.pending]

    def next_deadline(self) -> float | None:
        """When :meth:`due` next has a line to give (None: nothing is waiting)."""
        waiting = [state.last_line + self.interval for state in self._kinds.values() if state.pending]
        return min(waiting) if waiting else None

    @property
    def totals(self) -> dict[str, int]:
        """Refusals per kind since start (a copy)."""
        return {kind: state.total for kind, state in self._kinds.items()}

    def _line(self, kind: str, state: _Kind, now: float) -> RefusalLine:
        first = state.last_line == -math.inf
        line = RefusalLine(kind, state.pending, state.total, state.address, 0.0 if first else now - state.last_line,
                           first, self.interval)  # fmt: skip
        state.pending, state.last_line = 0, now
        return line


__all__ = ["LOG_INTERVAL", "RefusalLine", "RefusalLog"]
