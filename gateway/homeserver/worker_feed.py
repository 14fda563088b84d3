"""The main process's feed to its reader workers: what a worker needs to answer ``/sync`` itself.

A reader worker (api/http/workers.py, docs/scaling.md) reads stored events, state and to-device messages from
PostgreSQL. Four things a ``/sync`` needs live only in the main process's memory: how far the stream is committed
and judged by the push rules (``persisted``, ``servable``), who is typing, everyone's presence, and the moment
something changed (the long-polls' wake-up). The main process sends them to each worker over one long HTTP
response on its loopback port, one line of JSON per message (``\\n`` after each, UTF-8):

``hello``
    first line: ``{"k":"hello","v":1,"serial":S}``. ``serial`` is the main process's ephemeral serial (typing
    and presence, the second part of a sync token).
``room``
    ``{"k":"room","room":R,"serial":N}``: the serial of the last typing change in room R (snapshot only).
``typing``
    ``{"k":"typing","room":R,"user":U,"until":MS,"serial":N}``: U types in R until MS (Unix milliseconds);
    ``"until":null``: U stopped (or the notice ran out). Notices never run out in a worker: the main process
    sends their end.
``presence``
    ``{"k":"presence","user":U,"state":"online","status":S,"active":MS,"serial":N,"local":B}``: a user's
    presence as the main process tracks it (``status`` null when none, ``active``: last activity, Unix ms).
``pos``
    ``{"k":"pos","persisted":P,"servable":S}``: every stream position up to P is committed, and up to S also
    judged by the push rules with its notifications committed (S = P without push rules). Sent after anything
    the main process's long-polls would wake for, once per turn of its event loop, and every
    :data:`HEARTBEAT_S` seconds when nothing else is sent. A worker wakes its long-polls when P or S grew:
    everything a /sync serves besides typing and presence lies at a stream position.
``ready``
    ``{"k":"ready"}``: the snapshot (``hello``, every ``room``, ``typing``, ``presence``, one ``pos``) is complete;
    every later line is a change.

The main process writes lines in the order it makes the changes, on one connection per worker, so a worker's
copy is the main process's as of the last line read; applying a line is idempotent (serials only grow). A line
that does not parse as one of these is refused as a value (:class:`FeedError`, counted by the worker, the line
skipped). When a worker reads too slowly (:data:`MAX_QUEUED_BYTES` waiting) the main process ends its feed: the
worker stops and is started again, with a new snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from lowband.gateway.homeserver.notifier import Notifier
from lowband.gateway.homeserver.presence import STATES, PresenceTracker, UserPresence
from lowband.gateway.homeserver.services import Services
from lowband.gateway.homeserver.sync import SyncToken

log = logging.getLogger(__name__)

VERSION = 1
#: the longest line either side writes or reads (a presence line with a 1,024-character status is under 5 KiB)
MAX_LINE = 64 * 1024
#: what the main process lets wait for one worker before it ends that worker's feed
MAX_QUEUED_BYTES = 8 * 1024 * 1024
#: a ``pos`` line at least this often: a worker that hears nothing for :data:`SILENCE_S` gives up on the feed
HEARTBEAT_S = 10.0
SILENCE_S = 45.0
#: how long a worker's /sync waits for the push rules' judging to reach what is stored (as the main process does)
SETTLE_S = 0.25
#: how long a worker's /sync waits for its copy to reach a token another process gave (then it serves as it is)
CATCH_UP_S = 5.0
#: an online user's /syncs in a worker are told to the main process at most this often (presence activity)
TELL_EVERY_S = 10.0
_MAX_INT = (1 << 63) - 1
_MAX_ID = 255
_MAX_STATUS = 1024


class FeedError(ValueError):
    """A feed line that is not one of the messages of the module docstring."""


def encode(message: dict[str, Any]) -> bytes:
    """One feed line: compact JSON and a newline."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _int(message: dict[str, Any], key: str, *, null: bool = False) -> int | None:
    value = message.get(key)
    if value is None and null and key in message:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_INT:
        raise FeedError(f"{key} is not a non-negative integer")
    return value


def _str(message: dict[str, Any], key: str, limit: int = _MAX_ID, *, null: bool = False) -> str | None:
    value = message.get(key)
    if value is None and null and key in message:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise FeedError(f"{key} is not a string of 1 to {limit} characters")
    return value


def _bool(message: dict[str, Any], key: str) -> bool:
    value = message.get(key)
    if not isinstance(value, bool):
        raise FeedError(f"{key} is not true or false")
    return value


def parse(line: bytes) -> dict[str, Any]:
    """A feed line checked against its kind's fields; FeedError otherwise (nothing is applied)."""
    if len(line) > MAX_LINE:
        raise FeedError(f"a line of {len(line)} bytes (at most {MAX_LINE})")
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        raise FeedError("not JSON") from None
    if not isinstance(message, dict):
        raise FeedError("not a JSON object")
    kind = message.get("k")
    if kind == "hello":
        if _int(message, "v") != VERSION:
            raise FeedError(f"feed version {message.get('v')!r}, this worker reads {VERSION}")
        _int(message, "serial")
    elif kind == "room":
        _str(message, "room")
        _int(message, "serial")
    elif kind == "typing":
        _str(message, "room")
        _str(message, "user")
        _int(message, "until", null=True)
        _int(message, "serial")
    elif kind == "presence":
        _str(message, "user")
        if message.get("state") not in STATES:
            raise FeedError("state is not online, unavailable or offline")
        _str(message, "status", _MAX_STATUS, null=True)
        _int(message, "active")
        _int(message, "serial")
        _bool(message, "local")
    elif kind == "pos":
        if _int(message, "servable") > _int(message, "persisted"):  # type: ignore[operator]
            raise FeedError("servable is above persisted")
    elif kind != "ready":
        raise FeedError(f"unknown kind {str(kind)[:20]!r}")
    return message


def presence_line(user_id: str, known: UserPresence) -> bytes:
    """The ``presence`` line of a tracked user."""
    return encode({"k": "presence", "user": user_id, "state": known.presence, "status": known.status_msg,
                   "active": max(0, int(known.last_active * 1000)), "serial": known.serial, "local": known.local})  # fmt: skip


class FeedSubscriber:
    """One worker's queue of lines (the main process's side)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: bytes allowed above ``limit`` until the next :meth:`take` (the snapshot's)
        self.allowance = 0
        self.lines: deque[bytes] = deque()
        self.size = 0
        #: set when a line waits
        self.waiting = asyncio.Event()
        #: the worker fell :data:`MAX_QUEUED_BYTES` behind: its feed ends
        self.overflowed = False

    def put(self, line: bytes) -> None:
        if self.overflowed:
            return
        self.lines.append(line)
        self.size += len(line)
        if self.size > self.limit + self.allowance:
            self.overflowed = True
            self.lines.clear()
            self.size = 0
        self.waiting.set()

    def take(self) -> bytes:
        """Every waiting line, at once."""
        out = b"".join(self.lines)
        self.lines.clear()
        self.size = self.allowance = 0
        self.waiting.clear()
        return out


class FeedSource:
    """The main process's side: watches its notifier, typing and presence, and queues lines for each worker."""

    def __init__(self, services: Services, *, limit: int = MAX_QUEUED_BYTES) -> None:
        self.services = services
        self.limit = limit
        self.subscribers: set[FeedSubscriber] = set()
        self._pos_due = False
        self.overflows = 0
        services.notifier.listeners.append(self._moved)
        services.typing.watchers.append(self._typing)
        if services.sync.presence is not None:
            services.sync.presence.watchers.append(self._presence)

    def position(self) -> tuple[int, int]:
        """(persisted, servable) of the module docstring."""
        persisted = self.services.store.persisted
        judged = self.services.sync.servable
        return persisted, persisted if judged is None else max(0, min(persisted, judged()))

    def pos_line(self) -> bytes:
        persisted, servable = self.position()
        return encode({"k": "pos", "persisted": persisted, "servable": servable})

    def subscribe(self) -> FeedSubscriber:
        """A new worker's queue, the snapshot in it."""
        sub = FeedSubscriber(self.limit)
        sub.allowance = 1 << 62  # a snapshot of 100,000 users' presence is ~12 MB: the limit counts from its end
        typing = self.services.typing
        presence = self.services.sync.presence
        sub.put(encode({"k": "hello", "v": VERSION, "serial": typing.serial}))
        serials = typing.room_serials()
        for room_id, serial in serials.items():
            sub.put(encode({"k": "room", "room": room_id, "serial": serial}))
        for room_id, user_id, until in typing.notices():
            sub.put(encode({"k": "typing", "room": room_id, "user": user_id, "until": int(until * 1000),
                            "serial": serials.get(room_id, 0)}))  # fmt: skip
        if presence is not None:
            for user_id, known in presence.users():
                sub.put(presence_line(user_id, known))
        sub.put(self.pos_line())
        sub.put(encode({"k": "ready"}))
        sub.allowance = sub.size
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: FeedSubscriber) -> None:
        self.subscribers.discard(sub)

    def _put(self, line: bytes) -> None:
        for sub in self.subscribers:
            was = sub.overflowed
            sub.put(line)
            if sub.overflowed and not was:
                self.overflows += 1
                log.warning("a reader worker fell %d bytes behind the main process's feed: its feed ends (it is "
                            "started again)", self.limit)  # fmt: skip

    def _moved(self) -> None:
        if not self.subscribers or self._pos_due:
            return
        self._pos_due = True
        try:
            asyncio.get_running_loop().call_soon(self._send_pos)
        except RuntimeError:  # not on the event loop's thread: at once
            self._send_pos()

    def _send_pos(self) -> None:
        self._pos_due = False
        self._put(self.pos_line())

    def _typing(self, room_id: str, user_id: str, until: float | None, serial: int) -> None:
        if self.subscribers:
            self._put(encode({"k": "typing", "room": room_id, "user": user_id,
                              "until": None if until is None else int(until * 1000), "serial": serial}))  # fmt: skip

    def _presence(self, user_id: str) -> None:
        presence = self.services.sync.presence
        known = presence.get(user_id) if presence is not None else None
        if self.subscribers and known is not None:
            self._put(presence_line(user_id, known))


class FeedMirror:
    """A reader worker's copy of what the feed carries; sets the worker's /sync hooks (:class:`SyncHandler`)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        #: the snapshot is complete (``ready`` read)
        self.ready = False
        self.persisted = 0
        self.servable = 0
        #: lines refused (:class:`FeedError`)
        self.refused = 0
        #: moves when a line changed what the waits below look at
        self._changes = Notifier()

    def apply(self, line: bytes) -> None:
        """Apply one line; FeedError when it is refused (nothing changed)."""
        message = parse(line)
        kind = message["k"]
        services = self.services
        presence = services.sync.presence
        moved = False
        if kind == "hello":
            services.typing.reset(message["serial"])
            if presence is not None:
                presence.reset()
        elif kind == "room":
            services.typing.apply_room_serial(message["room"], message["serial"])
        elif kind == "typing":
            until = message["until"]
            services.typing.apply(message["room"], message["user"], None if until is None else until / 1000,
                                  message["serial"])  # fmt: skip
        elif kind == "presence" and presence is not None:
            presence.apply(message["user"], UserPresence(message["state"], message["status"], message["active"] / 1000,
                                                         message["serial"], message["local"]))  # fmt: skip
        elif kind == "pos":
            moved = message["persisted"] > self.persisted or message["servable"] > self.servable
            self.persisted = max(self.persisted, message["persisted"])
            self.servable = max(self.servable, message["servable"])
            services.store.mark_committed(self.persisted)
        elif kind == "ready":
            self.ready = True
        # a heartbeat, or a line applied before, wakes nothing; presence wakes through the tracker's on_change
        if kind in ("typing", "ready") or (kind == "pos" and moved):
            services.notifier.notify()
            self._changes.notify()

    async def _wait(self, reached: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            generation = self._changes.generation
            if reached():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.services.notifier.closed:
                return False
            await self._changes.wait(generation, remaining)

    async def settle(self) -> int:
        """``SyncHandler.settle`` in a worker: what is committed in the store, once the main process says it is
        judged (waiting at most :data:`SETTLE_S`, as the main process waits), else what it said is judged."""
        store = self.services.store
        store.see_committed_events()
        head = store.persisted
        await self._wait(lambda: self.servable >= head, SETTLE_S)
        return self.servable

    async def catch_up(self, since: SyncToken) -> None:
        """``SyncHandler.catch_up``: wait (at most :data:`CATCH_UP_S`) until this copy reaches a token that
        another process may have given (its stream judged, its typing serial known), so a token never goes back."""
        await self._wait(lambda: self.servable >= since.stream and self.services.typing.serial >= since.typing,
                         CATCH_UP_S)  # fmt: skip

    def before_round(self) -> None:
        """``SyncHandler.before_round``: room heads, state events and erasures are read again."""
        self.services.rooms.lookups.forget_cached()
        forget = getattr(self.services.sync.erased, "forget", None)
        if forget is not None:
            forget()


def must_tell(tracker: PresenceTracker, user_id: str, set_presence: str, now: float) -> bool:
    """Whether a worker's /sync with ``set_presence`` changes what the main process tracks of ``user_id`` (see
    :meth:`PresenceTracker.synced`): a change of state, or an online user's activity :data:`TELL_EVERY_S` after
    the last activity the worker knows of. An activity told is noted in the worker's copy at once."""
    known = tracker.get(user_id)
    if set_presence == "online":
        if known is None or known.presence != "online":
            return True
        if now - known.last_active < TELL_EVERY_S:
            return False
        known.last_active = now
        return True
    return set_presence == "unavailable" and (known is None or known.presence != "unavailable")
