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
