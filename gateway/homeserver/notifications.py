"""Notifications: push rules applied to every new event, unread counts for /sync, ``GET /notifications``.

Rules:

* the evaluator follows the event stream from a position kept on disk
  (``push_evaluated``), whatever path stored the event (a local client, a
  device, a bridge, federation): each timeline event is judged for the
  room's joined local users other than the sender (and for a local user it
  invites) who can read notifications (:func:`notifiable`: people and
  guests; never the accounts an edge speaks as, such as device, BLE sensor,
  MQTT bridge and application-service users), with the room's state just
  before the event, and a row is
  stored for each user whose rules ask to notify. Rows and the position
  reached go in one write; the position alone is written every few seconds,
  and an event judged again after a crash makes no second row. History
  fetched later (backfill, below position 0) and events older than the
  first start of this version are not judged;
* the cost per event is bounded by the room's local members: one rule
  evaluation each (``push_eval``), conditions that do not depend on the user
  judged once per event, and no store read per user besides the cached rules,
  account owners and member events; an event with nobody to judge it for (a
  bridge's room where only edge accounts are joined) is not even read;
* ``/sync`` serves no event before it is judged, so an event and its counts
  always come in one response: it waits for judging (a few milliseconds) at
  most :data:`SETTLE_S`, and past that serves up to the position judged; the
  step that judges the rest wakes the long-polls. Rows therefore take no
  stream position and their write needs no fsync of its own (store/sqlite/
  push.py). While the evaluator is not running, /sync serves everything;
* a room's ``unread_notifications`` are the user's rows after their read
  receipt (``m.read`` or ``m.read.private``, the later one) in the room: a
  receipt clears them. Threads (spec v1.4): each row records the thread its
  event is in (:func:`thread_of`: ``main`` or a thread root); a row is read
  once the unthreaded receipt or its own thread's receipt reaches it. When
  the /sync filter sets ``room.timeline.unread_thread_notifications``,
  ``unread_notifications`` counts the main timeline and
  ``unread_thread_notifications`` each thread with a non-zero count (the
  object always present, so a client sees a thread drop to zero by its
  absence); without it, ``unread_notifications`` counts every thread;
* a failure on one event is logged and the event passed over: judging never
  stops behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lowband.gateway.homeserver import push_rules
from lowband.gateway.homeserver.guests import GUEST_OWNER
from lowband.gateway.homeserver.push_eval import PushContext, evaluate, outcome
from lowband.gateway.matrix import auth_rules
from lowband.gateway.store.interfaces import NotificationRow, StateMap, Store, TimelineRow, UserRow

if TYPE_CHECKING:
    from lowband.gateway.homeserver.pushers import PusherDelivery
    from lowband.gateway.homeserver.services import Services

__all__ = [
    "NAME",
    "CountsChanged",
    "NotificationEvaluator",
    "PushRuleBook",
    "PushRuntime",
    "is_read",
    "notifiable",
    "push_of",
    "read_position",
    "start_push",
    "thread_of",
    "unread_counts",
]

#: the thread ID of the main timeline (receipts and counts)
MAIN = "main"
#: relations followed from an event to find its thread (the spec recommends 3)
THREAD_HOPS = 3

log = logging.getLogger("lowband.push")

NAME = "push"
#: timeline events judged per step (one write each step)
BATCH = 200
#: how often the evaluated position alone is written (it is always written with notification rows)
CURSOR_WRITE_S = 5.0
#: how long a /sync waits at most for the counts of the events it is about to serve
SETTLE_S = 0.25
#: users whose ordered rules are kept in memory
RULE_CACHE = 10_000
#: ``users.owner`` values of accounts a person uses (None: a registered person)
PERSON_OWNERS = (None, GUEST_OWNER)


def notifiable(store: Store, user_id: str) -> bool:
    """Whether a local account can read notifications: a person's account or a guest's. The accounts an edge
    creates to speak as (``users.owner`` "device:NAME", "mqtt", a BLE sensor's, "appservice:ID") never read
    them, so no rows are made for them. An unknown user counts as a person."""
    return _owner_notifiable(store.get_user(user_id))


def _owner_notifiable(user: UserRow | None) -> bool:
    return user is None or user.get("owner") in PERSON_OWNERS


class PushRuleBook:
    """Each user's push rules: read, edited (``push_rules``), kept in order for evaluation in a bounded cache."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ordered: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    def document(self, user_id: str) -> dict[str, Any] | None:
        """The user's stored rule document (None: server-default rules only)."""
        return self.store.push.rules_doc(user_id)

    def ordered(self, user_id: str) -> list[dict[str, Any]]:
        """The user's rules in evaluation order (cached until the user edits them)."""
        found = self._ordered.get(user_id)
        if found is None:
            found = push_rules.ordered_rules(user_id, self.document(user_id))
            self._ordered[user_id] = found
            if len(self._ordered) > RULE_CACHE:
                self._ordered.popitem(last=False)
        else:
            self._ordered.move_to_end(user_id)
        return found

    async def edit(self, user_id: str, edit: Callable[[dict[str, Any] | None], dict[str, Any]]) -> None:
        """Apply one edit (it raises the spec's MatrixError for a refused one, and nothing changes)."""
        self._ordered.pop(user_id, None)
        await self.store.push.edit_rules(user_id, edit)
        self._ordered.pop(user_id, None)


def read_position(store: Store, user_id: str, room_id: str) -> int:
    """The stream position of the user's latest unthreaded read receipt (public or private) in the room; 0
    without one (pushers' badge counts: threaded receipts are not taken into account there)."""
    return store.read_positions(room_id, user_id).get("", 0)


def is_read(positions: dict[str, int], stream: int, thread_id: str) -> bool:
    """Whether a notification row at ``stream`` in ``thread_id`` is read, given the user's receipt positions in
    the room (``Store.read_positions``): the unthreaded receipt or the row's own thread's receipt reaches it."""
    return stream <= positions.get("", 0) or stream <= positions.get(thread_id, 0)


def thread_of(store: Store, event_id: str) -> str:
    """The thread an event is in: a thread root's event ID, or :data:`MAIN`. An event with an ``m.thread``
    relation is in its root's thread; one relating otherwise (an edit, a reaction, a reply relation) is in the
    thread of the event it relates to, followed at most :data:`THREAD_HOPS` relations (the spec's advice);
    a thread root itself, and everything else, is in the main timeline. Reads the relation index only."""
    current = event_id
    for _ in range(THREAD_HOPS):
        relation = store.relations.relation_of(current)
        if relation is None:
            return MAIN
        parent, rel_type = relation
        if rel_type == "m.thread":
            return parent
        current = parent
    return MAIN


def unread_counts(store: Store, user_id: str, room_id: str,
                  pending: dict[tuple[str, str], list[tuple[int, bool, str]]] | None = None,
                  threaded: bool = False) -> dict[str, Any]:  # fmt: skip
    """The counts of one joined room for /sync: ``{"unread_notifications": {...}}``, with
    ``"unread_thread_notifications": {root: {...}}`` too when ``threaded`` (the filter asked for per-thread
    counts; then ``unread_notifications`` is the main timeline's). A row counts when it is above both the
    user's unthreaded receipt and its own thread's receipt (``read_positions``). ``pending`` holds rows judged
    whose write has not committed yet (see :meth:`NotificationEvaluator.step`)."""
    positions = store.read_positions(room_id, user_id)
    unthreaded = positions.get("", 0)
    counts: dict[str, list[int]] = {}
    for thread, (count, highlight) in store.push.unread_by_thread(user_id, room_id, unthreaded, positions).items():
        found = counts.setdefault(thread if threaded else MAIN, [0, 0])
        found[0] += count
        found[1] += highlight
    waiting = pending.get((user_id, room_id)) if pending else None
    if waiting:
        stored = store.push.newest_notification(user_id, room_id)  # rows are written in stream order
        for stream, highlights, thread in waiting:
            if stream > stored and not is_read(positions, stream, thread):
                found = counts.setdefault(thread if threaded else MAIN, [0, 0])
                found[0] += 1
                found[1] += int(highlights)
    main = counts.pop(MAIN, [0, 0])
    out: dict[str, Any] = {"unread_notifications": {"notification_count": main[0], "highlight_count": main[1]}}
    if threaded:
        out["unread_thread_notifications"] = {
            root: {"notification_count": n, "highlight_count": h} for root, (n, h) in counts.items()
        }
    return out


class CountsChanged:
    """``SyncHandler.unread_changed``: whether a room's counts changed in (after, upto]; one query per /sync (the
    answer for every room of the user is kept until another user, or other positions, are asked about)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._key: tuple[str, int, int] | None = None
        self._rooms: set[str] = set()

    def __call__(self, user_id: str, room_id: str, after: int, upto: int) -> bool:
        key = (user_id, after, upto)
        if key != self._key:
            self._rooms, self._key = self.store.push.rooms_changed(user_id, after, upto), key
        return room_id in self._rooms


class NotificationEvaluator:
    """Follows the event stream and stores the notifications each event makes."""

    def __init__(self, services: Services, book: PushRuleBook,
                 on_notified: Callable[[set[str]], None] | None = None) -> None:  # fmt: skip
        self.services = services
        self.store = services.store
        self.book = book
        self.on_notified = on_notified
        found = self.store.push.evaluated()
        #: the stream is judged up to here (a new database starts at its head: history is not judged)
        self.position = self.store.persisted if found is None else found
        self._fresh = found is None
        self._saved = self.position
        self._progress = asyncio.Event()  # replaced after every step: set wakes those waiting in settle()
        self._held_back = False  # a /sync served less than was stored because judging lagged (settle)
        #: rows judged whose write has not committed yet, by (user, room): (stream, highlight, thread); /sync
        #: counts them
        self.pending: dict[tuple[str, str], list[tuple[int, bool, str]]] = {}
        self._saved_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        #: per state group: (joined members, joined local users who can be notified); messages share their
        #: room's group
        self._members: OrderedDict[int, tuple[int, list[str]]] = OrderedDict()
        #: local user → :func:`notifiable` (an owner only ever changes from guest to person: both notifiable)
        self._notifiable: OrderedDict[str, bool] = OrderedDict()
        self.evaluated_events = 0
        self.failed_events = 0

    def start(self) -> None:
        """Start following the stream."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop following (what is not judged yet is judged at the next start); the position reached is kept."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.position > self._saved:
            await self.store.push.add_notifications([], self.position)

    async def settle(self, timeout: float = SETTLE_S) -> int:
        """The stream position ``/sync`` may serve up to (it calls this first): everything stored, once judged,
        waiting at most ``timeout`` seconds for that; past it, the position judged so far, and the step that
        judges the rest wakes the long-polls. Everything stored while the evaluator is not running."""
        deadline = time.monotonic() + timeout
        while True:
            head = self.store.persisted
            if self.position >= head or self._task is None or self._task.done():
                return head
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._held_back = True
                return self.position
            progress = self._progress
            try:
                async with asyncio.timeout(remaining):
                    await progress.wait()
            except TimeoutError:
                pass

    def servable(self) -> int:
        """The position up to which every event is judged and its notifications committed: what a reader
        worker's /sync may serve (it counts from the store alone; ``pending`` is this process's)."""
        low = self.position
        for waiting in self.pending.values():
            low = min([low, *(stream - 1 for stream, _, _ in waiting)])
        return low

    async def _run(self) -> None:
        notifier = self.services.notifier
        while not notifier.closed:
            generation = notifier.generation
            try:
                wrote = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a store failure: try again shortly
                log.exception("push evaluation failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if wrote:
                notifier.notify()  # a /sync held events back until they were judged: they are now
            if self.position >= self.store.persisted:
                await notifier.wait(generation, 30.0)

    async def step(self) -> bool:
        """Judge the next events of the stream (at most :data:`BATCH`); whether a /sync held events back
        meanwhile (the long-polls are to look again).

        The position alone is written at most every :data:`CURSOR_WRITE_S` (and at stop): an event judged
        again after a crash makes no second row.
        """
        head = self.store.persisted
        if head <= self.position and not self._fresh:
            return False
        rows = self.store.push.timeline_after(self.position, head, BATCH)
        reached = head if len(rows) < BATCH else rows[-1].stream
        made: list[NotificationRow] = []
        for row in rows:
            try:
                made += self.judge(row)
                self.evaluated_events += 1
            except Exception:
                self.failed_events += 1
                log.exception("push rules could not be applied to %s; passed over", row.event_id)
        now = time.monotonic()
        # Judged: /sync may serve these events now, their counts taken from ``pending`` until the write commits
        # (a /sync does not wait for the commit; a failed write puts the position back and judges again).
        before, self.position = self.position, max(self.position, reached)
        for n in made:
            self.pending.setdefault((n.user_id, n.room_id), []).append((n.stream, n.highlight, n.thread_id))
        self._progress.set()
        self._progress = asyncio.Event()
        try:
            if made or self._fresh or now - self._saved_at >= CURSOR_WRITE_S:
                # One loop turn first: the /syncs these events woke build their answers before the write's Python
                # work in the writer thread competes with them for the GIL (it nearly doubled a /sync's time).
                await asyncio.sleep(0)
                await self.store.push.add_notifications(made, reached)
                self._saved, self._saved_at = reached, now
        except BaseException:
            self.position = before
            raise
        finally:
            for n in made:
                waiting = self.pending.get((n.user_id, n.room_id))
                if waiting:
                    waiting.remove((n.stream, n.highlight, n.thread_id))
                    if not waiting:
                        del self.pending[(n.user_id, n.room_id)]
            if self.position > before:
                self.services.notifier.moved()  # the reader workers serve up to servable() (worker_feed.py)
        self._fresh = False
        if made and self.on_notified is not None:
            self.on_notified({n.user_id for n in made})
        held_back, self._held_back = self._held_back, False
        return held_back

    def judge(self, row: TimelineRow) -> list[NotificationRow]:
        """The notifications one timeline event makes (sans-I/O besides cached reads)."""
        rooms = self.services.rooms
        suffix = ":" + self.services.server_name
        state = self.store.state_for_group(row.state_before) if row.state_before is not None else {}
        count, local = self._joined(row.state_before, state, suffix)
        targets = [user for user in local if user != row.sender]
        # Only a member event can add a target (an invite): anything else with nobody to judge it for is not read.
        invitee = row.state_key if row.type == "m.room.member" else None
        if invitee is not None and not (invitee.endswith(suffix) and invitee not in targets
                                        and self._may_notify(invitee)):  # fmt: skip
            invitee = None
        if not targets and invitee is None:
            return []
        event = rooms.event(row.event_id)
        if event is None:
            return []
        if invitee is not None and event.content.get("membership") == "invite":
            targets.append(invitee)
        if not targets:
            return []
        levels = rooms.state_content(state, "m.room.power_levels")
        create = rooms.event(state[("m.room.create", "")]) if ("m.room.create", "") in state else None
        sender_power = auth_rules.power_level_for_user(levels, create, event.sender)
        notification_levels = levels.get("notifications") if isinstance(levels, dict) else None
        pdu = event.pdu
        out: list[NotificationRow] = []
        memo: dict[tuple[Any, ...], bool] = {}  # conditions that do not depend on the user: judged once per event
        thread: str | None = None  # looked up once, for the first user notified
        for user_id in targets:
            member = rooms.state_content(state, "m.room.member", user_id) or {}
            name = member.get("displayname")
            ctx = PushContext(user_id, name if isinstance(name, str) else None, count, sender_power,
                              notification_levels if isinstance(notification_levels, dict) else {})  # fmt: skip
            actions = evaluate(self.book.ordered(user_id), pdu, ctx, memo)
            result = outcome(actions)
            if result.notify:
                if thread is None:
                    thread = thread_of(self.store, row.event_id)
                out.append(NotificationRow(user_id, row.stream, row.room_id, row.event_id, actions or [],
                                           result.highlight, event.origin_server_ts, thread))  # fmt: skip
        return out

    def _joined(self, group: int | None, state: StateMap, suffix: str) -> tuple[int, list[str]]:
        """(joined members, joined local users) of a state group (cached: a group never changes)."""
        found = self._members.get(group) if group is not None else None
        if found is None:
            rooms = self.services.rooms
            joined = [
                key for (kind, key) in state if kind == "m.room.member" and rooms.membership_in(state, key) == "join"
            ]
            found = (len(joined), [user for user in joined if user.endswith(suffix) and self._may_notify(user)])
            if group is not None:
                self._members[group] = found
                if len(self._members) > 256:
                    self._members.popitem(last=False)
        return found

    def _may_notify(self, user_id: str) -> bool:
        """:func:`notifiable`, cached (bounded)."""
        found = self._notifiable.get(user_id)
        if found is None:
            user = self.store.get_user(user_id)
            found = _owner_notifiable(user)
            if user is None:
                return found  # not kept: an account made later under this ID may be an edge's
            self._notifiable[user_id] = found
            if len(self._notifiable) > RULE_CACHE:
                self._notifiable.popitem(last=False)
        return found


@dataclass
class PushRuntime:
    """The running push machinery: rules, the evaluator and the pushers' delivery."""

    book: PushRuleBook
    evaluator: NotificationEvaluator | None = None
    delivery: PusherDelivery | None = None


def push_of(services: Services) -> PushRuntime:
    """The push runtime (a rule book alone when the component is not running, as in tools and some tests)."""
    found = services.components.get(NAME)
    if isinstance(found, PushRuntime):
        return found
    runtime = PushRuntime(PushRuleBook(services.store))
    services.components[NAME] = runtime
    return runtime


async def start_push(services: Services) -> Callable[[], Awaitable[None]]:
    """Component entry: judge new events, serve counts to /sync, deliver to pushers."""
    from lowband.gateway.homeserver.pushers import PusherDelivery

    runtime = push_of(services)
    delivery = PusherDelivery(services)
    evaluator = NotificationEvaluator(services, runtime.book, delivery.wake)
    runtime.evaluator, runtime.delivery = evaluator, delivery
    store = services.store
    services.sync.unread = lambda user_id, room_id, per_thread: unread_counts(store, user_id, room_id,
                                                                              evaluator.pending, per_thread)
    services.sync.unread_changed = CountsChanged(store)
    services.sync.settle = evaluator.settle
    services.sync.servable = evaluator.servable
    await delivery.start(evaluator)
    evaluator.start()

    async def stop() -> None:
        services.sync.unread = services.sync.unread_changed = None
        services.sync.settle = services.sync.servable = None
        await evaluator.stop()
        await delivery.stop()

    return stop
