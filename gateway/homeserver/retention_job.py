"""Retention (MSC1763) at run time: the read-time filter and the purge job (the ``retention`` component).

* **Read time.** While the component runs, :attr:`SyncHandler.retention
  <lowband.gateway.homeserver.sync.SyncHandler.retention>` gives each room's
  cutoff: every client read (``/sync``, ``/messages``, ``/context``,
  ``/event``, ``/relations``, search, ``timestamp_to_event``) leaves out a
  non-state event older than it, before any purge has run.
* **Purge.** Every ``[retention] interval_s`` (and at start), each room with
  a cutoff has its expired non-state events deleted through
  :meth:`Store.purge_history`, keeping the room's forward extremities (new
  events still have ``prev_events`` this server holds, so the room goes on
  and federates). One run deletes at most ``purge_batch`` events in all,
  in slices of at most 500 per write, so the one writer is never held long;
  what is left waits for the next run.
* **Summaries first.** With ``telemetry_summaries``, a telemetry room's expired readings become one
  summary event per (sender, hour) before the purge deletes them (:meth:`Retention.summarise`,
  retention_summary.py).
* **Clients told.** A purge that deleted something is recorded at a stream
  position; the next ``/sync`` of each member carries the room with
  ``org.lowband.retention`` = ``{"purged_before_ts": ts, "max_lifetime": ms}``
  (sync.py), and the room's ``m.room.retention`` state reaches clients as
  any state does.

A room's policy is cached by its current state group (a new state event
makes a new group, so a changed policy is seen at once); its kind
(``telemetry``: an account an edge owns is joined) is judged from the
joined members when the group changes.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lowband.gateway.aio import cancel_and_wait
from lowband.gateway.homeserver.retention import (
    KEEP_FOREVER,
    KIND_DEFAULT,
    KIND_TELEMETRY,
    RETENTION_EVENT,
    RetentionPolicy,  # fmt: skip
    effective_policy,
)
from lowband.gateway.homeserver.retention_summary import SUMMARY_DEVICE, hour_floor, plan_summaries, summary_content
from lowband.gateway.homeserver.rooms.sending import SendRequest
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError

log = logging.getLogger(__name__)

#: events one purge write deletes at most
SLICE = 500
#: rooms whose policy is cached
_CACHE = 4096


class Retention:
    """Policies of the rooms, the read-time cutoff and the purge runs (see the module rules)."""

    def __init__(self, services: Services, now_ms: Callable[[], int] | None = None) -> None:
        self.services = services
        self.config = services.config.retention
        #: the clock of expiry (tests move it); default: the room service's
        self.now_ms: Callable[[], int] = now_ms or services.rooms.now_ms
        self._policies: dict[str, tuple[int | None, RetentionPolicy]] = {}
        #: events deleted since start (metrics, tests)
        self.purged_total = 0
        #: the room the next run starts with (where the last one ran out of budget)
        self._resume: str | None = None
        #: summary events made (a repeated transaction counts again: it is the same event) and refused
        self.summaries_sent = 0
        self.summaries_refused = 0

    def kind(self, room_id: str) -> str:
        """:data:`KIND_TELEMETRY` when an account an edge owns (``users.owner`` set) is joined, else the default."""
        store = self.services.store
        for member in self.services.rooms.joined_members(room_id):
            user = store.get_user(member)
            if user is not None and user["owner"]:
                return KIND_TELEMETRY
        return KIND_DEFAULT

    def policy(self, room_id: str) -> RetentionPolicy:
        """The room's effective policy (:func:`effective_policy`); :data:`KEEP_FOREVER` for a room not held here."""
        head = self.services.rooms.head(room_id)
        if head is None:
            return KEEP_FOREVER
        cached = self._policies.get(room_id)
        if cached is not None and cached[0] == head.state_group:
            return cached[1]
        rooms = self.services.rooms
        content = rooms.state_content(rooms.current_state(room_id), RETENTION_EVENT)
        found = effective_policy(content, self.kind(room_id), self.config)
        if len(self._policies) >= _CACHE:
            self._policies.pop(next(iter(self._policies)))
        self._policies[room_id] = (head.state_group, found)
        return found

    def cutoff(self, room_id: str) -> int | None:
        """The ``origin_server_ts`` below which the room's non-state events are expired now (None: none are)."""
        return self.policy(room_id).cutoff(self.now_ms())

    async def run_once(self, budget: int | None = None) -> int:
        """One purge run over every room held, at most ``budget`` (default ``purge_batch``) events deleted;
        returns how many were. Rooms are taken in order of ID, from the room where the last run ran out of
        budget, so every room gets its turn."""
        left = self.config.purge_batch if budget is None else budget
        store, rooms = self.services.store, self.services.rooms
        deleted_total = 0
        ids = store.all_room_ids()
        start = bisect.bisect_left(ids, self._resume) if self._resume is not None else 0
        self._resume = None
        for room_id in ids[start:] + ids[:start]:
            try:
                before = self.cutoff(room_id)
                head = rooms.head(room_id)
                if before is None or head is None:
                    continue
                if self.config.telemetry_summaries and self.kind(room_id) == KIND_TELEMETRY:
                    before = await self.summarise(room_id, before, left)  # summaries first, then the purge
                while left > 0:
                    limit = min(SLICE, left)
                    deleted = await store.purge_history(room_id, before, keep=list(head.extremities), limit=limit)
                    rooms.dag.forget_events(deleted)
                    left -= len(deleted)
                    deleted_total += len(deleted)
                    if len(deleted) < limit:
                        break
            except Exception:  # one room that cannot be purged (a broken state group) does not stop the others
                log.exception("retention: purging %s failed", room_id)
            if left <= 0:
                self._resume = room_id  # the budget ran out: the next run starts in this room, no room starves
                break
        if deleted_total:
            self.purged_total += deleted_total
            self.services.notifier.notify()  # members' /sync tells them (org.lowband.retention)
            log.info("retention: purged %d expired events", deleted_total)
        return deleted_total

    async def summarise(self, room_id: str, before: int, budget: int) -> int:
        """Send the hourly summaries (retention_summary.py) of the room's oldest expired readings; returns the
        cutoff the purge may use: ``before`` lowered to an hour boundary (an hour is summarised whole, or not
        yet), and, once about ``budget`` events were looked at, to the next hour boundary after the first hour
        (so a run reads at least one whole hour, however many readings it holds, and then stops at an hour's
        end). Summaries are sent as each reading's sender with the transaction ID (sender,
        ``org.lowband.summary``, ``room|hour``): a re-run or a retry after a crash returns the first event.
        A summary the room refuses (4xx: the sender left) is logged and its readings are purged anyway (the
        room's policy wins); any other failure raises, so nothing of the room is purged in this run."""
        before = hour_floor(before)
        store = self.services.store
        events: list[tuple[str, int, Any]] = []
        seen: set[str] = set()
        since, first_hour = 0, None
        while True:  # pages of the room's oldest events, by origin_server_ts (state events are there too)
            rows = store.room_events_near_ts(room_id, since, forwards=True, upto=_UPTO, limit=_PAGE)
            fresh = [r["event"] for r in rows if r["event"].event_id not in seen]
            for event in fresh:
                seen.add(event.event_id)
                ts = event.pdu.get("origin_server_ts")
                if event.is_state or event.type != "m.room.message" or not isinstance(ts, int) or ts >= before:
                    continue
                events.append((event.sender, ts, event.pdu.get("content")))
                first_hour = hour_floor(ts) if first_hour is None else first_hour
            last = rows[-1]["event"].pdu.get("origin_server_ts", 0) if rows else 0
            if len(rows) < _PAGE or not isinstance(last, int) or last >= before:
                break  # every expired event of the room was seen
            if len(seen) >= budget + _MARGIN and first_hour is not None and hour_floor(last) > first_hour:
                before = hour_floor(last)  # enough for one run: stop at the start of the hour the page ended in
                break
            # the next page starts at the last timestamp (its events seen are skipped); a page of one timestamp
            # only moves on by 1 ms (more than _PAGE events in one millisecond: the rest is not summarised)
            since = last if fresh and last > since else last + 1
        plan = plan_summaries(events, before)
        if not plan:
            return before
        requests = [SendRequest(s.sender, "m.room.message", summary_content(s),
                                txn=(s.sender, SUMMARY_DEVICE, s.txn_id(room_id))) for s in plan]  # fmt: skip
        for summary, result in zip(plan, await self.services.rooms.send_batch(room_id, requests), strict=True):
            if isinstance(result, MatrixError):
                if 400 <= result.status < 500 and result.status != 429:
                    self.summaries_refused += 1
                    log.warning("retention: summary of %s at %d in %s refused: %s", summary.sender,
                                summary.start_ms, room_id, result.errcode)  # fmt: skip
                    continue
                raise result
            self.summaries_sent += 1
        return before


#: events one page of the summaries' scan reads; events looked at beyond the budget (state events and kept
#: extremities sit at the old end too)
_PAGE = 1000
_MARGIN = 256
_UPTO = 1 << 62


async def _loop(retention: Retention, interval_s: float) -> None:
    while True:
        try:
            await retention.run_once()
        except Exception:  # a failed run (a full disk, a locked file) is retried at the next interval
            log.exception("retention: purge run failed")
        await asyncio.sleep(interval_s)


#: where the running component is kept (tests drive :meth:`Retention.run_once` through it)
RETENTION = "retention"


async def start_retention(services: Services) -> Callable[[], Awaitable[None]]:
    """Component entry (``[retention] enabled = true``): install the read-time cutoff, run the purge job."""
    retention = Retention(services)
    services.components[RETENTION] = retention
    services.sync.retention = retention.cutoff
    task = asyncio.create_task(_loop(retention, services.config.retention.interval_s))

    async def stop() -> None:
        services.sync.retention = None
        services.components.pop(RETENTION, None)
        await cancel_and_wait(task)

    return stop
