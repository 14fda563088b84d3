"""Two asyncio idioms the runtime layers share."""

from __future__ import annotations

import asyncio
import time


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
        await asyncio.wait_for(event.wait(), max(0.001, deadline - time.monotonic()))
    except TimeoutError:
        pass
