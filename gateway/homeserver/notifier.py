"""Wakes long-polling /sync requests when something they may want arrives.

Deliberately coarse: every change wakes every waiter, and each waiter checks
for itself whether there is anything new for its user. With the handful of
clients a gateway serves this costs less than bookkeeping per user, and it
cannot miss a wake-up: a waiter first takes the current generation, then
checks, then waits for a later one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Notifier:
    """A generation counter with an awaitable "changed since" check."""

    def __init__(self) -> None:
        self.generation = 0
        self._changed = asyncio.Event()
        #: set when the gateway stops: long-polls answer at once instead of holding the shutdown
        self.closed = False
        #: told of every :meth:`notify` and :meth:`moved`: the reader workers' feed (worker_feed.py), which wakes
        #: the long-polls of other processes
        self.listeners: list[Callable[[], None]] = []

    def close(self) -> None:
        """The gateway is stopping: wake every waiter, and let none wait again."""
        self.closed = True
        self.notify()

    def notify(self) -> None:
        """Something changed: wake every waiter."""
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()
        self.moved()

    def moved(self) -> None:
        """A position other processes serve from moved, with nothing for this process's long-polls (the push
        rules' judging committed a step): only the listeners are told."""
        for listener in self.listeners:
            listener()

    async def wait(self, generation: int, timeout: float) -> bool:
        """Wait until the generation passes ``generation``; False on timeout."""
        if self.generation != generation or self.closed:
            return True
        event = self._changed
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that arrives as
            # the event is set, and the cancelled waiter then waits again (a gateway's stop hung 20 s on it)
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True
