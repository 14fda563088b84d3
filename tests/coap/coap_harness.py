"""A gateway for the CoAP tests that look inside it (the mapping, compact mode, the in-process server).

General helpers (``in_loop``, ``free_udp_port``, ``gateway_in_loop``) are in
tests/harness.py; this adds only what several tests/coap files shared.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from harness import gateway_in_loop

from lowband.gateway.config import RateLimits


@contextlib.asynccontextmanager
async def gateway_services(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Any, str]]:
    """A gateway in this loop (``config`` passed on, rate limits off unless given); yields (its Services, base URL)."""
    found: list[Any] = []
    config.setdefault("rate_limits", RateLimits(enabled=False))
    async with gateway_in_loop(tmp_path, on_ready=found.append, **config) as url:
        yield found[0], url
