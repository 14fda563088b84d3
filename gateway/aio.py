"""The asyncio idioms the runtime layers share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def wait_until(event: asyncio.Event, deadline: float | None) -> None:
    """Wait for ``event`` or until ``deadline`` (``time.monotonic()``; None: no deadline).

    Clears the event first, so a caller re-checks its state after every
    wake-up, whichever came first.
    """
    event.clear()
    if deadline is None:
        await event.wait()
        return
    try:
        async with asyncio.timeout(max(0.001, deadline - time.monotonic())):  # see drive_schedule
            await event.wait()
    except TimeoutError:
        pass


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set; True when ``stop`` is set (the caller should end), else False."""
    try:
        async with asyncio.timeout(seconds):  # see drive_schedule
            await stop.wait()
    except TimeoutError:
        return False
    return True


class Schedule(Protocol):
    """What :func:`drive_schedule` needs of a delivery schedule (``homeserver.retry_schedule.DeliverySchedule``)."""

    def due(self, now: float) -> list[str]: ...

    def next_deadline(self) -> float | None: ...


async def drive_schedule(schedule: Schedule, attempt: Callable[[str], Coroutine[Any, Any, None]], kick: asyncio.Event,
                         clock: Callable[[], float], running: set[asyncio.Task[None]]) -> None:  # fmt: skip
    """The loop of every durable outbound queue (federation destinations, bridges): start an attempt for each
    destination that is due, then sleep until the next deadline or until ``kick`` is set. Runs until cancelled;
    the attempts in flight are kept in ``running`` (so the caller can cancel them at stop)."""
    while True:
        for name in schedule.due(clock()):
            task: asyncio.Task[None] = asyncio.create_task(attempt(name))
            running.add(task)
            task.add_done_callback(running.discard)
        deadline = schedule.next_deadline()
        kick.clear()
        timeout = None if deadline is None else max(0.0, deadline - clock())
        try:
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancellation
                await kick.wait()
        except TimeoutError:
            pass
