"""Failed logins back off per account (found: only per address, about 25 guesses/s from many addresses)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from harness import Client, gateway_in_loop

from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver.ratelimit import LoginThrottle
from lowband.gateway.matrix.errors import MatrixError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused_ms(throttle: LoginThrottle, user: str) -> int | None:
    try:
        throttle.check(user)
    except MatrixError as exc:
        assert exc.status == 429 and exc.errcode == "M_LIMIT_EXCEEDED"
        return int(exc.extra["retry_after_ms"])
    return None


def test_the_wait_doubles_after_the_free_failures_and_a_success_clears_it():
    clock = Clock()
    throttle = LoginThrottle(free=5, first_s=1.0, longest_s=8.0, forget_s=3600.0, clock=clock)
    for _ in range(5):
        assert _refused_ms(throttle, "@a:x") is None
        throttle.failed("@a:x")
    waits = []
    for _ in range(5):
        waits.append(_refused_ms(throttle, "@a:x"))
        clock.now += waits[-1] / 1000
        assert _refused_ms(throttle, "@a:x") is None
        throttle.failed("@a:x")
    assert waits == [1001, 2001, 4001, 8001, 8001]  # doubling, capped at longest_s
    assert _refused_ms(throttle, "@b:x") is None  # per account
    clock.now += 9
    throttle.succeeded("@a:x")
    assert _refused_ms(throttle, "@a:x") is None
    throttle.failed("@a:x")
    assert _refused_ms(throttle, "@a:x") is None  # counting starts again


def test_old_failures_are_forgotten_and_memory_is_bounded():
    clock = Clock()
    throttle = LoginThrottle(free=1, forget_s=60.0, max_accounts=100, clock=clock)
    throttle.failed("@a:x")
    assert _refused_ms(throttle, "@a:x") is not None
    clock.now += 61
    assert _refused_ms(throttle, "@a:x") is None
    for i in range(1000):
        throttle.failed(f"@u{i}:x")
    assert len(throttle._failures) == 100


@pytest.mark.parametrize("user", ["alice", "nobody"])
def test_guessing_one_account_is_slowed_whether_it_exists_or_not(tmp_path, user):
    async def main():
        limits = RateLimits(enabled=True, per_ip_per_s=1000, per_ip_burst=1000)  # the address limit out of the way
        async with gateway_in_loop(tmp_path, rate_limits=limits) as base, aiohttp.ClientSession() as session:
            alice = Client(session, base)
            await alice.register("alice", "the-right-one")
            statuses = []
            for i in range(8):
                body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                        "password": f"guess{i}"}  # fmt: skip
                async with session.post(base + "/_matrix/client/v3/login", json=body) as resp:
                    statuses.append(resp.status)
            assert statuses[:5] == [403] * 5 and 429 in statuses[5:]
            # another account is not affected
            body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice" if user != "alice"
                    else "nobody"}, "password": "x"}  # fmt: skip
            async with session.post(base + "/_matrix/client/v3/login", json=body) as resp:
                assert resp.status == 403

    asyncio.run(main())
