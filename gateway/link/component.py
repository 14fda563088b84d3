"""The device link component: starts the link runtime once a device exists.

A gateway with no provisioned device has no link to watch, so it should not
carry the runtime's dependencies (noise, cryptography: about 20 MiB resident).
:func:`start_links` only polls the device registry — one cheap SQLite query
every :data:`WATCH_SECONDS` on a table that is empty — until the first ``lowband device add``, then
imports :mod:`lowband.gateway.link.runtime` and starts it; from then on the
runtime itself follows the registry. A gateway that already has devices
starts the runtime at once, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lowband.gateway.aio import cancel_and_wait
from lowband.gateway.devices.registry import Registry

log = logging.getLogger("lowband.link")

#: How often the registry is polled while no device exists (the runtime's own reconcile interval).
WATCH_SECONDS = 2.0

Stop = Callable[[], Awaitable[None]]


async def _start_runtime(services: Any) -> Stop:
    from lowband.gateway.link.runtime import start_links as start_runtime

    stop: Stop = await start_runtime(services)
    return stop


class LinkWatch:
    """Waits for the first device, then runs the link runtime until stopped."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.registry = Registry(services.store.link_devices)
        self._runtime_stop: Stop | None = None
        self._task: asyncio.Task[None] | None = None

    def has_devices(self) -> bool:
        """Whether a device that is not revoked is provisioned (a revoked one needs no link)."""
        return bool(self.registry.devices())

    async def start(self) -> None:
        """Start the runtime now if a device exists, else watch for the first one."""
        if self.has_devices():
            self._runtime_stop = await _start_runtime(self.services)
        else:
            self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                if not self.has_devices():
                    continue
                log.info("first device provisioned: starting the link runtime")
                self._runtime_stop = await _start_runtime(self.services)
                return
            except Exception:  # a broken link key or registry: the HTTP API keeps running, the log says why
                log.exception("cannot start the link runtime; devices stay unreachable until the gateway restarts")
                return

    async def stop(self) -> None:
        """Stop watching, and stop the runtime if it runs."""
        await cancel_and_wait(self._task)
        if self._runtime_stop is not None:
            await self._runtime_stop()


async def start_links(services: Any) -> Stop:
    """Component entry (see ``gateway/app.py``): the link runtime, started with the first device."""
    watch = LinkWatch(services)
    await watch.start()
    return watch.stop
