"""Presence of local users: kept in memory (and on disk), shown to users who share a room, in /sync's
``presence`` section.

Rules:
- States are ``online``, ``unavailable`` and ``offline``. ``PUT /presence/{userId}/status`` sets one, with an
  optional ``status_msg`` (at most :data:`MAX_STATUS_MSG` characters; absent clears it). Setting ``online``
  counts as activity.
- A /sync marks its user online (``set_presence`` absent or ``online``: activity), ``unavailable``
  (``set_presence=unavailable``) or leaves presence alone (``set_presence=offline``).
- An online user with no activity for ``idle_s`` becomes ``unavailable``; any user with none for
  ``offline_s`` becomes ``offline`` (:meth:`PresenceTracker.expire`, called by :func:`presence_loop`).
- Every change takes a new value of the *ephemeral serial*, the typing tracker's serial that sync tokens
  already carry (``s<stream>_<serial>``): /sync delivers the presence of users changed after its token's
  serial, and all known presence on an initial sync. Activity alone (an online user syncing again) is not a
  change: ``last_active_ago`` is computed when delivered.
- Who sees whom: a user sees the presence of users joined to a room they are joined to, and their own.
- Memory is bounded: at most ``max_users`` users are tracked, the least recently changed forgotten first
  (a forgotten user reads as offline).
- Presence survives a restart: the tracker notes whom a change or an activity touched, :func:`flush` hands
  those users' state, ``status_msg`` and last activity to the store in one batch (each round of
  :func:`presence_loop`, a few seconds apart, and when the gateway stops), and :meth:`PresenceTracker.restore`
  loads them at start. A request never waits for a write. Restored users take a new serial (so a /sync
  shows them once); the idle rules then apply to the stored last activity as to any other. A gateway
  killed outright loses at most the last round's changes.
- Other servers: a local user's change is told to :attr:`PresenceTracker.listeners` (the federation sends it
  as an ``m.presence`` EDU, ``federation/presence_edus.py``); what another server says of its own users comes
  in through :meth:`PresenceTracker.set_remote` and is never told back out. The idle rules apply to both.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lowband.gateway.homeserver.notifier import Notifier
from lowband.gateway.homeserver.typing import TypingTracker
from lowband.gateway.store.interfaces import PresenceRecord, PresenceStore, Store

STATES = ("online", "unavailable", "offline")
MAX_STATUS_MSG = 1024
#: "currently_active" means activity within this many seconds
ACTIVE_WINDOW_S = 60.0
#: at most this many presence events in one /sync response (the filter's limit may ask fewer)
MAX_EVENTS = 1000
#: an online user's activity reaches the reader workers at most this often (their ``last_active_ago``)
TOUCH_S = 10.0


@dataclass
class UserPresence:
    """One user's presence as tracked."""

    presence: str
    status_msg: str | None
    last_active: float
    serial: int
    #: a user of this server (False: what another server said)
    local: bool = True


class PresenceTracker:
    """Presence of local users, with the expiry rules of the module docstring; sans-I/O (``clock`` given)."""

    def __init__(self, serial_source: TypingTracker, *, idle_s: float = 300.0, offline_s: float = 1800.0,
                 max_users: int = 100_000, clock: Callable[[], float] = time.time,
                 on_change: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.serial_source = serial_source
        self.idle_s = idle_s
        self.offline_s = max(offline_s, idle_s)
        self.max_users = max_users
        self.clock = clock
        self.on_change = on_change
        #: told the user ID of every change of a local user's presence (federation sends it on)
        self.listeners: list[Callable[[str], None]] = []
        #: told the user ID of every change, local or remote, and of an online user's activity at most every
        #: :data:`TOUCH_S`: the reader workers' feed (worker_feed.py)
        self.watchers: list[Callable[[str], None]] = []
        #: the serial of the latest change (0: none yet), so a /sync with nothing new skips the room query
        self.latest = 0
        self._users: OrderedDict[str, UserPresence] = OrderedDict()
        #: users changed or active since the last :meth:`drain` (what :func:`flush` writes)
        self._dirty: set[str] = set()

    def _bump(self) -> int:
        """The next ephemeral serial (shared with typing, so one token position covers both)."""
        source = self.serial_source
        source.serial = max(source.serial + 1, int(self.clock() * 1000))
        return source.serial

    def _store(self, user_id: str, presence: str, status_msg: str | None, last_active: float,
               local: bool = True) -> None:  # fmt: skip
        self.latest = self._bump()
        self._put(user_id, UserPresence(presence, status_msg, last_active, self.latest, local))
        self._dirty.add(user_id)
        for watcher in self.watchers:
            watcher(user_id)
        if self.on_change is not None:
            self.on_change()
        if local:
            for listener in self.listeners:
                listener(user_id)

    def set_remote(self, user_id: str, presence: str, status_msg: str | None, last_active_ago: int) -> None:
        """What another server says of its user (checked by the caller: a state of :data:`STATES`, a
        ``status_msg`` within :data:`MAX_STATUS_MSG`); listeners are not told."""
        last_active = self.clock() - max(0, last_active_ago) / 1000
        self._store(user_id, presence, status_msg, last_active, local=False)

    def set_status(self, user_id: str, presence: str, status_msg: str | None) -> None:
        """An explicit PUT: ``presence`` one of :data:`STATES`; ValueError for another state or a too long
        ``status_msg``."""
        if presence not in STATES:
            raise ValueError("presence must be online, unavailable or offline")
        if status_msg is not None and len(status_msg) > MAX_STATUS_MSG:
            raise ValueError(f"status_msg is longer than {MAX_STATUS_MSG} characters")
        now = self.clock()
        known = self._users.get(user_id)
        last_active = now if presence == "online" or known is None else known.last_active
        self._store(user_id, presence, status_msg, last_active)

    def synced(self, user_id: str, set_presence: str) -> None:
        """A /sync with ``set_presence`` (``online``, ``unavailable`` or ``offline``: see the module rules)."""
        known = self._users.get(user_id)
        now = self.clock()
        if set_presence == "online":
            if known is not None and known.presence == "online":
                touched, known.last_active = known.last_active, now  # activity, not a change: no new serial,
                self._dirty.add(user_id)  # no wake-up, but kept on disk with the next batch
                if now - touched >= TOUCH_S:
                    for watcher in self.watchers:
                        watcher(user_id)
                return
            self._store(user_id, "online", known.status_msg if known else None, now)
        elif set_presence == "unavailable" and (known is None or known.presence != "unavailable"):
            self._store(user_id, "unavailable", known.status_msg if known else None,
                        known.last_active if known else now)  # fmt: skip

    def expire(self) -> bool:
        """Apply the idle rules at the clock's time; True when someone changed."""
        now = self.clock()
        changed = False
        for user_id, known in list(self._users.items()):
            idle = now - known.last_active
            if known.presence != "offline" and idle >= self.offline_s:
                self._store(user_id, "offline", known.status_msg, known.last_active, known.local)
                changed = True
            elif known.presence == "online" and idle >= self.idle_s:
                self._store(user_id, "unavailable", known.status_msg, known.last_active, known.local)
                changed = True
        return changed

    def drain(self) -> list[PresenceRecord]:
        """What changed (or was active) since the last call, to keep across a restart; forgets it."""
        records = []
        for user_id in sorted(self._dirty):
            known = self._users.get(user_id)
            if known is not None:  # a user forgotten meanwhile (max_users) keeps their last stored row
                records.append(PresenceRecord(user_id, known.presence, known.status_msg,
                                              int(known.last_active * 1000), known.local))  # fmt: skip
        self._dirty.clear()
        return records

    def restore(self, records: list[PresenceRecord]) -> None:
        """Load presence kept before a restart (oldest first), under the current ``max_users``; records with
        a state not in :data:`STATES` are skipped. Listeners are not told (nothing changed)."""
        for record in records[-self.max_users :] if self.max_users > 0 else []:
            if record.presence not in STATES or record.user_id in self._users:
                continue
            status = record.status_msg if record.status_msg is None else record.status_msg[:MAX_STATUS_MSG]
            self.latest = self._bump()
            self._users[record.user_id] = UserPresence(record.presence, status, record.last_active_ms / 1000,
                                                       self.latest, record.local)  # fmt: skip

    def _put(self, user_id: str, known: UserPresence) -> None:
        """Track ``known`` as the user's newest, forgetting the least recently changed past ``max_users``."""
        self._users[user_id] = known
        self._users.move_to_end(user_id)
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)

    def get(self, user_id: str) -> UserPresence | None:
        """What is tracked of a user, or None."""
        return self._users.get(user_id)

    def apply(self, user_id: str, known: UserPresence) -> None:
        """A user's presence as the main process tracks it (a reader worker's copy, worker_feed.py): kept in
        place of any before, nothing written, no listener told; ``on_change`` when its serial is new."""
        before = self._users.get(user_id)
        self._put(user_id, known)
        self.latest = max(self.latest, known.serial)
        self.serial_source.serial = max(self.serial_source.serial, known.serial)
        if (before is None or before.serial != known.serial) and self.on_change is not None:
            self.on_change()

    def reset(self) -> None:
        """Forget everyone (a reader worker's copy starts again from the main process's)."""
        self._users.clear()
        self._dirty.clear()
        self.latest = 0

    def users(self) -> list[tuple[str, UserPresence]]:
        """Every tracked user, least recently changed first."""
        return list(self._users.items())

    def next_expiry(self) -> float | None:
        """The clock time of the next idle transition, or None."""
        times = [p.last_active + (self.idle_s if p.presence == "online" else self.offline_s)
                 for p in self._users.values() if p.presence != "offline"]  # fmt: skip
        return min(times) if times else None

    def content(self, user_id: str) -> dict[str, Any]:
        """The ``m.presence`` content of a user (``offline`` when not tracked)."""
        known = self._users.get(user_id)
        if known is None:
            return {"presence": "offline"}
        ago = max(0, int((self.clock() - known.last_active) * 1000))
        content: dict[str, Any] = {
            "presence": known.presence,
            "last_active_ago": ago,
            "currently_active": known.presence == "online" and ago < ACTIVE_WINDOW_S * 1000,
        }
        if known.status_msg is not None:
            content["status_msg"] = known.status_msg
        return content

    def changed_since(self, users: set[str], serial: int | None) -> list[str]:
        """Users among ``users`` whose presence changed after ``serial`` (None: every tracked one)."""
        if len(users) < len(self._users):
            found = [u for u in users if u in self._users and (serial is None or self._users[u].serial > serial)]
        else:
            found = [u for u, p in self._users.items() if u in users and (serial is None or p.serial > serial)]
        return sorted(found)


def presence_section(tracker: PresenceTracker | None, store: Store, user_id: str, since_serial: int | None,
                     filter_spec: Any) -> list[dict[str, Any]]:  # fmt: skip
    """The events of /sync's ``presence`` section: changes after ``since_serial`` of users sharing a room with
    ``user_id`` (and their own), as the filter's ``presence`` part (types, senders, limit) keeps them."""
    if tracker is None:
        return []
    spec = filter_spec if isinstance(filter_spec, dict) else {}
    if not _type_allowed(spec) or (since_serial is not None and tracker.latest <= since_serial):
        return []
    users = store.users_sharing_rooms(user_id) | {user_id}
    senders, not_senders = spec.get("senders"), spec.get("not_senders")
    if isinstance(senders, list):
        users &= {s for s in senders if isinstance(s, str)}
    if isinstance(not_senders, list):
        users -= {s for s in not_senders if isinstance(s, str)}
    limit = spec.get("limit")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        limit = MAX_EVENTS
    changed = tracker.changed_since(users, since_serial)[: min(limit, MAX_EVENTS)]
    return [{"type": "m.presence", "sender": u, "content": tracker.content(u)} for u in changed]


def _type_allowed(spec: dict[str, Any]) -> bool:
    types, not_types = spec.get("types"), spec.get("not_types")
    if isinstance(not_types, list) and any(isinstance(p, str) and fnmatch.fnmatchcase("m.presence", p)
                                           for p in not_types):  # fmt: skip
        return False
    return not isinstance(types, list) or any(isinstance(p, str) and fnmatch.fnmatchcase("m.presence", p)
                                              for p in types)  # fmt: skip


def flush(tracker: PresenceTracker, store: PresenceStore | None) -> int:
    """Queue the store write of what changed since the last flush (no wait); the number of users written."""
    records = tracker.drain()
    if store is not None and records:
        store.save(records)
    return len(records)


async def presence_loop(tracker: PresenceTracker, notifier: Notifier, store: PresenceStore | None = None) -> None:
    """Background task: apply the idle rules on time and wake syncs when someone changed; each round, queue
    the changes for ``store`` (:func:`flush`)."""
    # A user who turns online after the sleep began is looked at on the next round: at most ``cap`` late.
    cap = min(5.0, tracker.idle_s / 2)
    while True:
        due = tracker.next_expiry()
        delay = cap if due is None else max(0.05, min(cap, due - tracker.clock()))
        await asyncio.sleep(delay)
        if tracker.expire():
            notifier.notify()
        flush(tracker, store)
