"""Token-bucket rate limits keyed by user or IP."""

from __future__ import annotations

import time
from typing import Any

from lowband.gateway.matrix.errors import MatrixError


class RateLimiter:
    """Token buckets keyed by user or IP; refusals carry the wait in ms."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: str) -> None:
        """Take one token for ``key``; M_LIMIT_EXCEEDED (429) when empty."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            retry = int((1.0 - tokens) / self.rate * 1000) + 1
            self._buckets[key] = (tokens, now)
            raise MatrixError(429, "M_LIMIT_EXCEEDED", "too many requests", retry_after_ms=retry)
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:  # forget idle keys rather than grow without bound
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 3600}


class LoginThrottle:
    """Failed logins per account: after ``free`` failures, each further attempt waits, doubling to ``longest``.

    Keyed on the user ID whether or not the account exists, so the answer
    says nothing about which do. A success clears the account's count;
    failures older than ``forget_s`` are forgotten. At most ``max_accounts``
    are tracked (the oldest dropped first), so a sweep over names costs
    bounded memory.
    """

    def __init__(self, free: int = 5, first_s: float = 1.0, longest_s: float = 900.0, forget_s: float = 3600.0,
                 max_accounts: int = 100_000, clock: Any = time.monotonic) -> None:  # fmt: skip
        self.free, self.first_s, self.longest_s, self.forget_s = free, first_s, longest_s, forget_s
        self.max_accounts = max_accounts
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # user ID -> (failures, time of the last one)

    def check(self, user_id: str) -> None:
        """M_LIMIT_EXCEEDED (429, with the wait) while ``user_id`` must wait before its next attempt."""
        found = self._failures.get(user_id)
        if found is None:
            return
        count, last = found
        now = self.clock()
        if now - last > self.forget_s:
            del self._failures[user_id]
            return
        if count < self.free:
            return
        wait = min(self.longest_s, self.first_s * 2 ** (count - self.free))
        if now - last < wait:
            raise MatrixError(429, "M_LIMIT_EXCEEDED", "too many failed logins for this account; wait",
                              retry_after_ms=int((wait - (now - last)) * 1000) + 1)  # fmt: skip

    def failed(self, user_id: str) -> None:
        """One more failed attempt for ``user_id``."""
        count, _ = self._failures.pop(user_id, (0, 0.0))
        self._failures[user_id] = (count + 1, self.clock())
        while len(self._failures) > self.max_accounts:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, user_id: str) -> None:
        """A correct password: the account starts afresh."""
        self._failures.pop(user_id, None)
