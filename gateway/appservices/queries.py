"""Asking bridges about names in their namespaces: ``GET /_matrix/app/v1/rooms/{alias}`` and ``/users/{userId}``.

When a client looks up a local alias or user that does not exist and a
bridge's namespace covers it, the bridge is asked first: a 2xx answer means
it has just made the room (and its alias) or the user through the client
API, so the caller looks again. Anything else — 404, another status, no
answer within :data:`QUERY_TIMEOUT_S` — is "not found", as if no bridge
had been asked.

Bounded: at most :data:`MAX_CONCURRENT` queries per bridge are in flight
(more wait for a place within the same timeout), identical questions asked
together share one request, a "no" is remembered for :data:`NEGATIVE_TTL_S`
(at most :data:`NEGATIVE_CACHE` names), and at most three bridges are asked
per name. A client cannot make a bridge do more than that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from lowband.gateway.appservices.client import BridgeClient, BridgeError, BridgeUnreachable, path_segment
from lowband.gateway.appservices.registration import AppService, AppServices
from lowband.gateway.homeserver.services import Services

__all__ = ["MAX_CONCURRENT", "QUERY_TIMEOUT_S", "BridgeQueries", "ask_bridges_for_alias", "ask_bridges_for_user"]

log = logging.getLogger("lowband.appservices")

QUERY_TIMEOUT_S = 10.0
MAX_CONCURRENT = 8
NEGATIVE_TTL_S = 5.0
NEGATIVE_CACHE = 10_000
_MAX_BRIDGES = 3


class BridgeQueries:
    """Asks the bridges whether an alias or a user in their namespaces should exist."""

    def __init__(self, bridges: AppServices, client: BridgeClient, *, timeout_s: float = QUERY_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.bridges = bridges
        self.client = client
        self.timeout_s = timeout_s
        self.clock = clock
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._asking: dict[tuple[str, str, str], asyncio.Future[bool]] = {}
        self._said_no: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        #: answers since start: "yes", "no" (a 4xx/5xx answer), "failed" (unreachable, timeout)
        self.counts = {"yes": 0, "no": 0, "failed": 0}

    async def alias(self, alias: str) -> bool:
        """Whether a bridge whose alias namespace covers ``alias`` says it exists now (it made it)."""
        covering = sorted((b for b in self.bridges.all if b.url and b.wants_alias(alias)), key=lambda b: not b.owns_alias(alias))
        return await self._ask_each(covering, "rooms", alias)

    async def user(self, user_id: str) -> bool:
        """Whether a bridge whose user namespace covers ``user_id`` says it exists now (it made it)."""
        covering = sorted((b for b in self.bridges.all if b.url and b.wants_user(user_id) and user_id != b.sender),
                          key=lambda b: not b.owns_user(user_id))  # fmt: skip
        return await self._ask_each(covering, "users", user_id)

    async def _ask_each(self, bridges: list[AppService], kind: str, name: str) -> bool:
        for bridge in bridges[:_MAX_BRIDGES]:
            if await self._ask(bridge, kind, name):
                return True
        return False

    async def _ask(self, bridge: AppService, kind: str, name: str) -> bool:
        key = (bridge.id, kind, name)
        until = self._said_no.get(key)
        if until is not None:
            if until > self.clock():
                return False
            del self._said_no[key]
        shared = self._asking.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        try:
            answer = await self._request(bridge, kind, name)
        except BaseException:
            future.set_result(False)
            raise
        finally:
            del self._asking[key]
        future.set_result(answer)
        if not answer:
            self._said_no[key] = self.clock() + NEGATIVE_TTL_S
            while len(self._said_no) > NEGATIVE_CACHE:
                self._said_no.popitem(last=False)
        return answer

    async def _request(self, bridge: AppService, kind: str, name: str) -> bool:
        slot = self._slots.setdefault(bridge.id, asyncio.Semaphore(MAX_CONCURRENT))
        started = self.clock()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with slot:
                    left = max(0.1, self.timeout_s - (self.clock() - started))
                    await self.client.request(bridge, "GET", f"/_matrix/app/v1/{kind}/{path_segment(name)}",
                                              timeout_s=left)  # fmt: skip
        except BridgeError as exc:
            if 200 <= exc.status < 300:  # a 2xx with an odd body is still a yes
                self.counts["yes"] += 1
                return True
            self.counts["no"] += 1
            return False
        except (BridgeUnreachable, TimeoutError) as exc:
            self.counts["failed"] += 1
            log.info("appservice %s: %s query for %s failed: %s", bridge.id, kind, name[:100], exc)
            return False
        self.counts["yes"] += 1
        return True


async def ask_bridges_for_alias(services: Services, alias: str) -> bool:
    """For the client API: True when a bridge just made local alias ``alias`` (look it up again); False otherwise."""
    from lowband.gateway.appservices.component import runtime_of  # the component imports this module

    runtime = runtime_of(services)
    return runtime is not None and runtime.queries is not None and await runtime.queries.alias(alias)


async def ask_bridges_for_user(services: Services, user_id: str) -> bool:
    """For the client API: True when a bridge just made local user ``user_id`` (look it up again); False otherwise."""
    from lowband.gateway.appservices.component import runtime_of

    runtime = runtime_of(services)
    return runtime is not None and runtime.queries is not None and await runtime.queries.user(user_id)
