"""Typing notifications: ephemeral, in memory, expiring.

The serial is a millisecond clock value, so it keeps growing across
restarts and a client's sync token from before a restart stays comparable.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_TIMEOUT_MS = 120_000


class TypingTracker:
    """Who is typing in which room, until when."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._typing: dict[str, dict[str, float]] = {}
        self._changed: dict[str, int] = {}
        self.serial = int(clock() * 1000)
        #: told (room_id, user_id, typing, timeout_ms) of every change a local user makes (federation relays it)
        self.listeners: list[Callable[[str, str, bool, int], None]] = []
        #: told (room_id, user_id, until in clock seconds or None when stopped, serial) of every change, local,
        #: remote or expired: the reader workers' feed (worker_feed.py)
        self.watchers: list[Callable[[str, str, float | None, int], None]] = []

    def _bump(self, room_id: str) -> None:
        self.serial = max(self.serial + 1, int(self.clock() * 1000))
        self._changed[room_id] = self.serial

    def set_typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int, *, local: bool = True) -> None:
        """Start (for at most two minutes) or stop a user's typing notice.

        ``local``: a user of this server (the listeners are told); False for
        one another server told us about.
        """
        room = self._typing.setdefault(room_id, {})
        if typing:
            room[user_id] = self.clock() + min(max(timeout_ms, 0), MAX_TIMEOUT_MS) / 1000
        elif room.pop(user_id, None) is None:
            return
        self._bump(room_id)
        for watcher in self.watchers:
            watcher(room_id, user_id, room.get(user_id), self.serial)
        if local:
            for listener in self.listeners:
                listener(room_id, user_id, typing, timeout_ms)

    def expire(self) -> bool:
        """Drop notices whose time ran out; True if any did."""
        now = self.clock()
        changed = False
        for room_id, users in self._typing.items():
            gone = [u for u, until in users.items() if until <= now]
            for user in gone:
                del users[user]
            if gone:
                self._bump(room_id)
                changed = True
                for user in gone:
                    for watcher in self.watchers:
                        watcher(room_id, user, None, self.serial)
        return changed

    def apply(self, room_id: str, user_id: str, until: float | None, serial: int) -> None:
        """A change the main process made (a reader worker's copy, worker_feed.py): ``until`` in clock seconds,
        None when the user stopped; ``serial`` the main process's. Notices do not expire here: the main process
        sends their end."""
        room = self._typing.setdefault(room_id, {})
        if until is None:
            room.pop(user_id, None)
            if not room:
                del self._typing[room_id]
        else:
            room[user_id] = until
        self.apply_room_serial(room_id, serial)

    def reset(self, serial: int) -> None:
        """Forget every notice and take the main process's ``serial`` (a reader worker's copy starts again)."""
        self._typing.clear()
        self._changed.clear()
        self.serial = serial

    def notices(self) -> list[tuple[str, str, float]]:
        """Every notice now: (room_id, user_id, until in clock seconds)."""
        return [(room_id, user_id, until) for room_id, users in self._typing.items() for user_id, until in users.items()]

    def room_serials(self) -> dict[str, int]:
        """Each room's serial of its last change."""
        return dict(self._changed)

    def apply_room_serial(self, room_id: str, serial: int) -> None:
        """The main process's serial of a room's last change (a reader worker's copy)."""
        self._changed[room_id] = max(self._changed.get(room_id, 0), serial)
        self.serial = max(self.serial, serial)

    def next_expiry(self) -> float | None:
        """Earliest time a notice runs out, or None."""
        times = [t for users in self._typing.values() for t in users.values()]
        return min(times) if times else None

    def changed_since(self, room_id: str, serial: int) -> bool:
        """Whether the room's typing list changed after ``serial``."""
        return self._changed.get(room_id, 0) > serial

    def typing_users(self, room_id: str) -> list[str]:
        """Users typing in a room now."""
        return sorted(self._typing.get(room_id, {}))
