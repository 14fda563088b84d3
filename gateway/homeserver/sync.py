"""/sync and /messages: what a user may see, from which position.

Positions: one stream counter orders events, account data and receipts
(see :mod:`lowband.gateway.store.interfaces`); typing has its
own serial. A sync token is ``s<stream>_<typing>``, a pagination token
``s<stream>`` ("after event N"); either parses as a pagination token.

History visibility (room version 10 rules as the spec describes them): an
event is visible to a user when the room's ``history_visibility`` at the
event is ``world_readable``; or the user's membership at the event was
``join``; or it was ``invite`` and visibility is ``invited``; or visibility
is ``shared`` and the user is joined now. A user's own membership events are
always visible to them. "At the event" means the state before it.

Erasure (``POST /account/deactivate`` with ``erase``): an event sent by an
erased user (:attr:`SyncHandler.erased`) is served redacted, by the room
version's algorithm, to every reader who was not joined at the event (later
joiners, ``world_readable`` readers); members of that moment still see it whole.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from lowband.gateway.homeserver import lazy_members
from lowband.gateway.homeserver.event_fields import EventShape
from lowband.gateway.homeserver.ignored import ignored_users
from lowband.gateway.homeserver.lazy_members import NO_LAZY, LazyOptions, SentMembers
from lowband.gateway.homeserver.notifier import Notifier
from lowband.gateway.homeserver.presence import PresenceTracker, presence_section
from lowband.gateway.homeserver.relation_bundles import summaries
from lowband.gateway.homeserver.rooms import RoomService
from lowband.gateway.homeserver.to_device import e2ee_sync
from lowband.gateway.homeserver.typing import TypingTracker
from lowband.gateway.matrix.errors import MatrixError, forbidden, invalid_param
from lowband.gateway.matrix.events import Event, redact
from lowband.gateway.matrix.numbers import parse_digits
from lowband.gateway.store.interfaces import EventRow, StateMap, Store
from lowband.gateway.store.txn_keys import is_senders

DEFAULT_TIMELINE_LIMIT = 10
MAX_LIMIT = 1000
#: Events one /sync room or /messages page reads at most, whatever its filter leaves (then it says where to go on).
MAX_SCAN_ROWS = 5000
_STRIPPED_TYPES = ("m.room.create", "m.room.join_rules", "m.room.name", "m.room.canonical_alias", "m.room.avatar",
                   "m.room.encryption", "m.room.topic")  # fmt: skip


#: Below every stream position: backfilled history is stored at negative positions.
_HISTORY_FLOOR = -(1 << 62)
#: the same, for the other readers of the event stream (relations, context)
HISTORY_FLOOR = _HISTORY_FLOOR


@dataclass(frozen=True)
class SyncToken:
    """A position in the event stream plus the typing serial."""

    stream: int
    typing: int = 0
    #: where to-device delivery stopped when a response could not carry every waiting message (None: at stream)
    to_device: int | None = None

    def __str__(self) -> str:
        tail = "" if self.to_device is None else f"_{self.to_device}"
        return f"s{self.stream}_{self.typing}{tail}"

    @classmethod
    def parse(cls, text: str, *, history: bool = False) -> SyncToken:
        """Parse ``s<stream>[_<typing>[_<to-device>]]``; M_INVALID_PARAM otherwise.

        ``history``: a ``/messages`` token, whose stream may be negative
        (backfilled history lies below 0); a ``/sync`` token never is, nor has it
        a to-device part above its stream.
        """
        body = text[1:] if text.startswith("s") else ""
        parts = body.split("_")
        negative = history and parts[0].startswith("-")
        values = [parse_digits(parts[0][1:] if negative else parts[0]), *(parse_digits(p) for p in parts[1:3])]
        if not body or len(parts) > 3 or None in values or (history and len(parts) > 2):
            raise invalid_param(f"invalid token {text[:40]!r}")
        stream = values[0] or 0
        to_device = values[2] if len(values) == 3 else None
        if to_device is not None and to_device > stream:
            raise invalid_param(f"invalid token {text[:40]!r}")
        return cls(-stream if negative else stream, (values[1] or 0) if len(values) >= 2 else 0, to_device)


class EventFilter:
    """The RoomEventFilter subset Lowband applies: types, senders, limit, rooms."""

    def __init__(self, spec: dict[str, Any] | None, default_limit: int = DEFAULT_TIMELINE_LIMIT,
                 ignored: frozenset[str] = frozenset()) -> None:  # fmt: skip
        spec = spec if isinstance(spec, dict) else {}
        #: senders the reader ignores (``homeserver/ignored.py``): their non-state events are left out
        self.ignored = ignored
        self.types = _string_list(spec.get("types"))
        self.not_types = _string_list(spec.get("not_types")) or []
        self.senders = _string_list(spec.get("senders"))
        self.not_senders = _string_list(spec.get("not_senders")) or []
        self.rooms = _string_list(spec.get("rooms"))
        self.not_rooms = _string_list(spec.get("not_rooms")) or []
        #: a timeline filter's request for per-thread counts (spec v1.4; MSC3773's unstable name too)
        self.thread_counts = (spec.get("unread_thread_notifications") is True
                              or spec.get("org.matrix.msc3773.unread_thread_notifications") is True)  # fmt: skip
        limit = spec.get("limit", default_limit)
        #: the filter names a limit itself (what :meth:`keep` cuts at; room events always have one)
        self.explicit_limit = isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
        self.limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else default_limit
        self.limit = min(self.limit, MAX_LIMIT)

    def allows_room(self, room_id: str) -> bool:
        """Whether the filter keeps events of this room."""
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def allows(self, event: Event) -> bool:
        """Whether the filter keeps this event."""
        if self.ignored and event.sender in self.ignored and not event.is_state:
            return False
        return self.allows_kind(event.type, event.sender)

    def allows_kind(self, event_type: str, sender: str | None) -> bool:
        """Whether the filter keeps an event of this type and sender (None: an event with no sender, such as
        account data, typing or receipts, which the sender rules do not concern)."""
        if any(fnmatch.fnmatchcase(event_type, p) for p in self.not_types):
            return False
        if self.types is not None and not any(fnmatch.fnmatchcase(event_type, p) for p in self.types):
            return False
        if sender is None:
            return True
        if sender in self.not_senders:
            return False
        return self.senders is None or sender in self.senders

    def keep(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events that are not room events (account data, typing, receipts) the filter keeps, in order:
        by type (and sender, for those that have one), at most ``limit`` when the filter names one."""
        kept = [e for e in events
                if self.allows_kind(str(e.get("type", "")), e["sender"] if isinstance(e.get("sender"), str) else None)]  # fmt: skip
        return kept[: self.limit] if self.explicit_limit else kept


def _string_list(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [v for v in value if isinstance(v, str)]


class ErasedInStore(set[str]):
    """:attr:`SyncHandler.erased` in a reader worker (api/http/workers.py): the main process records erasures,
    so each sender asked about is looked up in the store, the answer kept until :meth:`forget` (the worker
    forgets at the start of each request: a few distinct senders per request, one indexed lookup each)."""

    def __init__(self, is_erased: Callable[[str], bool]) -> None:
        super().__init__()
        self._is_erased = is_erased
        self._asked: dict[str, bool] = {}

    def __contains__(self, user_id: object) -> bool:
        if not isinstance(user_id, str):
            return False
        known = self._asked.get(user_id)
        if known is None:
            known = self._asked[user_id] = self._is_erased(user_id)
        return known

    def forget(self) -> None:
        """Ask the store again from now on."""
        self._asked.clear()


class SyncHandler:
    """Answers /sync, /messages and single-event reads for a user."""

    def __init__(self, store: Store, rooms: RoomService, typing: TypingTracker, notifier: Notifier) -> None:
        self.store = store
        self.rooms = rooms
        self.typing = typing
        self.notifier = notifier
        #: set by the push component (homeserver/notifications.py): each joined room's unread_notifications
        #: (and unread_thread_notifications when the filter asks), ``unread(user, room, per_thread)``, and whether
        #: they changed in (since, upto], ``unread_changed(user, room, a, b)``
        self.unread: Callable[[str, str, bool], dict[str, Any]] | None = None
        self.unread_changed: Callable[[str, str, int, int], bool] | None = None
        #: also the push component's: the position a /sync may serve up to, once every stored event is judged
        #: (waiting briefly), else the position judged: an event and its counts come in one response
        self.settle: Callable[[], Awaitable[int]] | None = None
        #: also the push component's: the position up to which events are judged and their counts committed,
        #: what a reader worker may serve (worker_feed.py); None when push rules are not judged
        self.servable: Callable[[], int] | None = None
        #: a reader worker's (worker_feed.py): called before each round of a /sync (what the main process wrote
        #: since is read again), and awaited first with the token, until this process has caught up with it
        self.before_round: Callable[[], None] | None = None
        self.catch_up: Callable[[SyncToken], Awaitable[None]] | None = None
        #: member events (and summaries) each device was sent, for lazy loading (lazy_members.py)
        self.sent_members = SentMembers()
        #: presence of local users (presence.py); None: presence is off in the config
        self.presence: PresenceTracker | None = None
        #: users deactivated with ``erase`` (loaded from the store by Services, grown by deactivation): their
        #: events are served redacted to readers who were not joined when they were sent
        self.erased: set[str] = set()
        #: set by the retention component (retention_job.py): a room's cutoff, the ``origin_server_ts`` below
        #: which its non-state events are expired and left out of every read (None: nothing expires)
        self.retention: Callable[[str], int | None] | None = None

    # -------------------------------------------------------- visibility

    def visible(self, user_id: str, row: EventRow, joined_now: bool) -> bool:
        """Whether ``user_id`` may see the stored event ``row`` (never one past its room's retention)."""
        event: Event = row["event"]
        if self.expired(event):
            return False
        if event.type == "m.room.member" and event.state_key == user_id:
            return True
        state = self.store.state_for_group(row["state_before"])
        visibility = (self.rooms.state_content(state, "m.room.history_visibility") or {}).get("history_visibility", "shared")
        if visibility == "world_readable":
            return True
        membership = self.rooms.membership_in(state, user_id)
        if membership == "join":
            return True
        if visibility == "invited" and membership == "invite":
            return True
        return visibility == "shared" and joined_now

    def expired(self, event: Event) -> bool:
        """Whether ``event`` is past its room's retention (MSC1763, retention.py): a non-state event older than
        the room's cutoff; never while the retention component is off."""
        ts = event.pdu.get("origin_server_ts")
        if self.retention is None or event.is_state or not isinstance(ts, int):
            return False  # (a search stub has no timestamp: search judges its hits by theirs)
        return self.expired_at(event.room_id, ts)

    def expired_at(self, room_id: str, origin_server_ts: int) -> bool:
        """Whether a non-state event of ``room_id`` sent at ``origin_server_ts`` is past the room's retention."""
        cutoff = self.retention(room_id) if self.retention is not None else None
        return cutoff is not None and origin_server_ts < cutoff

    def erased_for(self, user_id: str, sender: str, state_before: int | None) -> bool:
        """Whether an event of ``sender`` whose state before is the group ``state_before`` is served redacted
        to ``user_id``: the sender was erased and the reader was not joined at the event."""
        if sender not in self.erased:
            return False
        state = self.store.state_for_group(state_before) if state_before is not None else {}
        return self.rooms.membership_in(state, user_id) != "join"

    def client_event(
        self, row: EventRow, *, with_room_id: bool = True, device: tuple[str, str] | None = None,
        relations: dict[str, Any] | None = None, reader: str | None = None,
    ) -> dict[str, Any]:
        """The client-format event of a stored row, redacted if it was redacted.

        ``device`` = (user_id, device_id) of the reader: the device that sent
        the event gets its ``transaction_id`` back in ``unsigned``.
        ``relations``: the event's ``m.relations`` (see :meth:`serve`).
        ``reader``: who reads it; an erased sender's event comes redacted (without ``redacted_because``)
        unless the reader was joined at the event (:meth:`erased_for`).
        """
        event: Event = row["event"]
        if reader is not None and not row.get("redacted_by") and self.erased_for(reader, event.sender,
                                                                                 row.get("state_before")):
            event = Event(event.event_id, redact(event.pdu, self.rooms.room_version(event.room_id)))
            relations = None  # an erased event shows nothing of what hangs off it either
        unsigned: dict[str, Any] = {"age": max(0, self.rooms.now_ms() - event.origin_server_ts)}
        if relations:
            unsigned["m.relations"] = relations
        sent = row.get("txn")
        if sent is not None and device is not None and is_senders(sent, *device, event.room_id, event.type):
            unsigned["transaction_id"] = sent.client_id
        redacted_by = row.get("redacted_by")
        if redacted_by:
            redaction = self.rooms.event(redacted_by)
            event = Event(event.event_id, redact(event.pdu, self.rooms.room_version(event.room_id)))
            if redaction is not None:
                unsigned["redacted_because"] = redaction.to_client()
        result = event.to_client(unsigned=unsigned)
        if not with_room_id:
            result.pop("room_id", None)
        return result

    def serve(
        self, user_id: str, rows: list[EventRow], upto: int, *, with_room_id: bool = True,
        device: tuple[str, str] | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The client format of ``rows`` as ``user_id`` reads them, each with its ``m.relations`` (threads,
        references, edits at positions up to ``upto``), in two queries whatever the number of rows."""
        return self._serve_groups(user_id, [rows], upto, with_room_id=with_room_id, device=device)[0]

    def _serve_groups(
        self, user_id: str, groups: list[list[EventRow]], upto: int, *, with_room_id: bool,
        device: tuple[str, str] | None,
    ) -> list[list[dict[str, Any]]]:  # fmt: skip
        """:meth:`serve` for several lists at once (the timelines of every room of a /sync): one bundle query."""
        rows = [row for group in groups for row in group]
        bundled = summaries(self.store, rows, user_id, upto,
                            lambda r: self.client_event(r, with_room_id=with_room_id, device=device,
                                                        reader=user_id))  # fmt: skip
        if self.retention is not None:  # a thread's latest reply or an edit past retention is not bundled either
            room_of = {r["event"].event_id: r["event"].room_id for r in rows}
            bundled = {parent: kept for parent, summary in bundled.items()
                       if (kept := {kind: value for kind, value in summary.items()
                                    if not self._expired_bundle(room_of[parent], value)})}  # fmt: skip
        return [[self.client_event(r, with_room_id=with_room_id, device=device,
                                   relations=bundled.get(r["event"].event_id), reader=user_id) for r in group]
                for group in groups]  # fmt: skip

    def _expired_bundle(self, room_id: str, value: dict[str, Any]) -> bool:
        """Whether a bundled relation of an event of ``room_id`` (``m.thread`` with its ``latest_event``, or an
        ``m.replace`` event) shows an event past the room's retention."""
        shown = value.get("latest_event", value)
        ts = shown.get("origin_server_ts")
        return "state_key" not in shown and isinstance(ts, int) and self.expired_at(room_id, ts)

    def reader_ceiling(self, user_id: str, room_id: str) -> tuple[int, bool]:
        """(the highest position ``user_id`` may read in the room, whether they are joined now); 403 when they
        were never in it (joined, left or banned) and it is not ``world_readable``, or it is unknown here."""
        membership_row = [r for r in self.store.rooms_for_user(user_id) if r[0] == room_id]
        membership, mstream = (membership_row[0][1], membership_row[0][2]) if membership_row else (None, 0)
        if self.rooms.head(room_id) is None:
            raise forbidden("you are not a member of this room")
        world = (self.rooms.state_content(self.rooms.current_state(room_id), "m.room.history_visibility") or {}).get(
            "history_visibility") == "world_readable"  # fmt: skip
        if membership not in ("join", "leave", "ban") and not world:
            raise forbidden("you are not a member of this room")
        return (self.store.persisted if membership == "join" or world else mstream), membership == "join"

    # ---------------------------------------------------------------- sync

    async def sync(
        self, user_id: str, since: SyncToken | None, timeout_ms: int, full_state: bool, filter_doc: dict[str, Any],
        device_id: str = "",
    ) -> dict[str, Any]:
        """The /sync response; long-polls up to ``timeout_ms`` when nothing is new."""
        deadline = time.monotonic() + max(0, min(timeout_ms, 300_000)) / 1000
        if since is not None and self.catch_up is not None:
            await self.catch_up(since)
        while True:
            generation = self.notifier.generation
            if self.before_round is not None:
                self.before_round()
            # the push component holds back events not judged yet (their counts come with them)
            upto = await self.settle() if self.settle is not None else self.store.persisted
            response, empty = self._sync_once(user_id, since, full_state, filter_doc, device_id, upto)
            fields, delivered, fresh = await e2ee_sync(self.store, user_id, device_id, since.stream if since else None,
                                                       since.to_device if since else None, upto)  # fmt: skip
            response.update(fields)
            if delivered is not None:
                response["next_batch"] = str(replace(SyncToken.parse(response["next_batch"]), to_device=delivered))
            empty = empty and not fresh
            remaining = deadline - time.monotonic()
            if since is None or full_state or not empty or remaining <= 0 or self.notifier.closed:
                return response
            if not await self.notifier.wait(generation, remaining):
                return response

    def _sync_once(
        self, user_id: str, since: SyncToken | None, full_state: bool, filter_doc: dict[str, Any], device_id: str,
        upto: int,
    ) -> tuple[dict[str, Any], bool]:
        device = (user_id, device_id)
        typing_serial = self.typing.serial
        room_doc = filter_doc.get("room")
        room_filter: dict[str, Any] = room_doc if isinstance(room_doc, dict) else {}
        ignored = ignored_users(self.store, user_id)
        timeline_filter = EventFilter(room_filter.get("timeline"), ignored=ignored)
        state_filter = EventFilter(room_filter.get("state"), MAX_LIMIT)
        lazy = LazyOptions.of(room_filter.get("state"))
        # the filters of the sections that hold no room events (their rooms/not_rooms too)
        sections = (EventFilter(room_filter.get("ephemeral"), MAX_LIMIT), EventFilter(room_filter.get("account_data"),
                                                                                      MAX_LIMIT))  # fmt: skip
        rooms_only = EventFilter(room_filter)
        include_leave = room_filter.get("include_leave") is True
        join: dict[str, Any] = {}
        invite: dict[str, Any] = {}
        knock: dict[str, Any] = {}
        leave: dict[str, Any] = {}
        since_stream = since.stream if since else 0
        for room_id, membership, mstream, member_event in self.store.rooms_for_user(user_id):
            if mstream > upto or not rooms_only.allows_room(room_id):
                continue
            fresh = since is None or mstream > since_stream
            if membership == "join":
                room = self._joined_room(user_id, room_id, since, fresh, full_state, upto,
                                         timeline_filter, state_filter, device, lazy, sections)  # fmt: skip
                if room is not None:
                    join[room_id] = room
            elif membership == "invite" and fresh:
                if ignored and self._invited_by(member_event) in ignored:
                    continue  # an invite from an ignored user is not shown
                invite[room_id] = {"invite_state": {"events": self._stripped_state(room_id, user_id, "invite")}}
            elif membership == "knock" and fresh:
                knock[room_id] = {"knock_state": {"events": self._stripped_state(room_id, user_id, "knock")}}
            elif membership in ("leave", "ban") and (fresh if since is not None else include_leave):
                leave[room_id] = self._left_room(user_id, room_id, since_stream, mstream, timeline_filter, member_event)
        # The joined rooms' timelines hold stored rows so far: one m.relations query serves them all.
        timelines = [room["timeline"] for room in join.values()]
        served = self._serve_groups(user_id, [t["events"] for t in timelines], upto, with_room_id=False, device=device)
        for timeline, events in zip(timelines, served, strict=True):
            timeline["events"] = events
        account_data = EventFilter(filter_doc.get("account_data"), MAX_LIMIT).keep([
            {"type": t, "content": c} for r, t, c in self.store.account_data_since(user_id, since_stream, upto) if r == ""
        ])  # fmt: skip
        response: dict[str, Any] = {
            "next_batch": str(SyncToken(upto, typing_serial)),
            "rooms": {"join": join, "invite": invite, "leave": leave, "knock": knock},
            "account_data": {"events": account_data},
            "presence": {"events": presence_section(self.presence, self.store, user_id, since.typing if since else None,
                                                    filter_doc.get("presence"))},
        }
        empty = not (join or invite or knock or leave or account_data or response["presence"]["events"])
        # event_fields, event_format (event_fields.py)
        EventShape.of(filter_doc).sync_response(response, lambda ids: self.raw_events(ids, user_id))
        return response, empty

    def _joined_room(
        self, user_id: str, room_id: str, since: SyncToken | None, initial: bool, full_state: bool, upto: int,
        timeline_filter: EventFilter, state_filter: EventFilter, device: tuple[str, str],
        lazy: LazyOptions = NO_LAZY, sections: tuple[EventFilter, EventFilter] | None = None,
    ) -> dict[str, Any] | None:  # fmt: skip
        """One joined room of a /sync, or None when nothing in it is new; ``sections``: the filters of its
        ``ephemeral`` and ``account_data`` (none: everything)."""
        after = 0 if initial or since is None else since.stream
        rows, limited, resume = self._visible_events(user_id, room_id, after, upto, timeline_filter, joined_now=True)
        if initial or full_state:
            state_at_start = self._state_at_start(room_id, rows, upto)
            state_ids = state_at_start
            previous: StateMap = {}
        elif limited:
            state_ids = self._state_at_start(room_id, rows, upto)
            previous = self._state_at(room_id, after)
        else:
            state_ids, previous = {}, {}
        acknowledged = None if initial or full_state or since is None else since.stream
        if lazy.enabled and (state_ids or rows):  # members of the timeline's senders only (lazy_members.py)
            start = state_ids if state_ids else self._state_at_start(room_id, rows, upto)
            state_ids = lazy_members.pick_state(lazy, self.sent_members, device, room_id, rows, start,
                                                previous if state_ids else start, acknowledged)  # fmt: skip
            previous = {}
        state_events = []
        for key, event_id in sorted(state_ids.items()):
            if previous.get(key) == event_id:
                continue
            row = self.store.get_event(event_id)
            if row is not None and state_filter.allows(row["event"]):
                state_events.append(self.client_event(row, with_room_id=False, reader=user_id))
        ephemeral_filter, data_filter = sections if sections is not None else (EventFilter(None, MAX_LIMIT),) * 2
        ephemeral = (ephemeral_filter.keep(self._ephemeral(user_id, room_id, since, initial, upto,
                                                           timeline_filter.ignored))
                     if ephemeral_filter.allows_room(room_id) else [])  # fmt: skip
        room_account_data = data_filter.keep([
            {"type": t, "content": c} for r, t, c in self.store.account_data_since(user_id, after, upto) if r == room_id
        ]) if data_filter.allows_room(room_id) else []  # fmt: skip
        counts_changed = self.unread_changed is not None and self.unread_changed(user_id, room_id, after, upto)
        # retention (retention_job.py): a purge of the room since the token is told, with its cutoff
        purge = self.store.last_purge(room_id) if self.retention is not None else None
        purged = {"purged_before_ts": purge[1]} if purge is not None and after < purge[0] <= upto else None
        if not (initial or full_state or rows or state_events or ephemeral or room_account_data or counts_changed
                or purged):  # fmt: skip
            return None
        if lazy.enabled:
            lazy_members.note_sent(self.sent_members, device, room_id, state_events, rows, upto)
        summary = self._summary(user_id, room_id, rows, state_events, acknowledged, upto, device)
        prev_batch = f"s{resume}"
        return {
            "timeline": {
                "events": rows,  # served by _sync_once, with every other room's
                "limited": limited,
                "prev_batch": prev_batch,
            },
            "state": {"events": state_events},
            "ephemeral": {"events": ephemeral},
            "account_data": {"events": room_account_data},
            **({"unread_notifications": {"notification_count": 0, "highlight_count": 0}} if self.unread is None
               else self.unread(user_id, room_id, timeline_filter.thread_counts)),
            "summary": summary,
            **({"org.lowband.retention": purged} if purged else {}),
        }

    def _summary(self, user_id: str, room_id: str, rows: list[EventRow], state: list[dict[str, Any]],
                 acknowledged: int | None, upto: int, device: tuple[str, str]) -> dict[str, Any]:  # fmt: skip
        """The room ``summary`` when it may have changed since what the device acknowledged, else ``{}``."""
        if acknowledged is not None and not lazy_members.summary_wanted(rows, state):
            return {}
        current = self.rooms.current_state(room_id)
        named = bool((self.rooms.state_content(current, "m.room.name") or {}).get("name")) or bool(
            (self.rooms.state_content(current, "m.room.canonical_alias") or {}).get("alias"))  # fmt: skip
        summary = lazy_members.room_summary(self.store, room_id, user_id, upto, named)
        if self.sent_members.summary_unchanged(device, room_id, summary, acknowledged):
            return {}
        self.sent_members.note_summary(device, room_id, summary, upto)
        return summary

    def _left_room(self, user_id: str, room_id: str, after: int, leave_stream: int, timeline_filter: EventFilter,
                   member_event: str) -> dict[str, Any]:  # fmt: skip
        if self.rooms.head(room_id) is None:
            # A room held elsewhere (a rejected or withdrawn invite, a rescinded or refused knock): the timeline
            # is the member event that ended it, which is all this server has of the room.
            row = self.store.get_event(member_event)
            rows = [row] if row is not None and timeline_filter.allows(row["event"]) else []
            limited, resume = False, after
        else:
            rows, limited, resume = self._visible_events(user_id, room_id, after, leave_stream, timeline_filter,
                                                         joined_now=False)  # fmt: skip
        return {
            "timeline": {"events": self.serve(user_id, rows, leave_stream, with_room_id=False), "limited": limited,
                         "prev_batch": f"s{resume}"},
            "state": {"events": []},
            "account_data": {"events": []},
        }  # fmt: skip

    def _visible_events(
        self, user_id: str, room_id: str, after: int, upto: int, event_filter: EventFilter, *, joined_now: bool
    ) -> tuple[list[EventRow], bool, int]:
        """Newest ``limit`` visible events in (after, upto], oldest first; whether more may be left out; and the
        position a client pages back from (``prev_batch``).

        At most :data:`MAX_SCAN_ROWS` events are read: a filter that matches little cannot make one request
        read a whole room. When the bound stops the scan, the answer is ``limited`` and pages back from
        where it stopped.
        """
        wanted = event_filter.limit
        picked: list[EventRow] = []
        top = upto
        limited = False
        scanned = 0
        while len(picked) <= wanted:
            batch = self.store.room_events(room_id, after=after, upto=top, limit=wanted * 2 + 1, backwards=True)
            scanned += len(batch)
            for row in batch:
                if event_filter.allows(row["event"]) and self.visible(user_id, row, joined_now):
                    picked.append(row)
            if len(batch) < wanted * 2 + 1:
                break
            top = batch[-1]["stream"] - 1
            if scanned >= MAX_SCAN_ROWS and len(picked) <= wanted:
                limited = True
                break
        if len(picked) > wanted:
            picked = picked[:wanted]
            limited = True
        picked.reverse()
        resume = picked[0]["stream"] - 1 if picked else (top if limited else after)
        return picked, limited, resume

    def _state_at(self, room_id: str, position: int) -> StateMap:
        rows = self.store.room_events(room_id, after=0, upto=position, limit=1, backwards=True)
        return self.store.state_for_group(rows[0]["state_after"]) if rows else {}

    def _state_at_start(self, room_id: str, rows: list[EventRow], upto: int) -> StateMap:
        if rows:
            return self.store.state_for_group(rows[0]["state_before"])
        return self._state_at(room_id, upto)

    def _ephemeral(
        self, user_id: str, room_id: str, since: SyncToken | None, initial: bool, upto: int,
        ignored: frozenset[str] = frozenset(),
    ) -> list[dict[str, Any]]:
        """Typing and receipts of the room; nothing of the users ``user_id`` ignores (ignored.py)."""
        events: list[dict[str, Any]] = []
        if initial or since is None or self.typing.changed_since(room_id, since.typing):
            users = [u for u in self.typing.typing_users(room_id) if u not in ignored]
            if users or not initial:
                events.append({"type": "m.typing", "content": {"user_ids": users}})
        receipts = self.store.receipts_since(room_id, 0 if initial or since is None else since.stream, upto)
        content: dict[str, Any] = {}
        if receipts:
            for receipt_type, user, event_id, ts, thread_id in receipts:
                if (receipt_type == "m.read.private" and user != user_id) or user in ignored:
                    continue  # private receipts are shown to their owner only
                # One entry per (event, type, user): an unthreaded and a threaded receipt on the same event
                # cannot both be written in this shape; the one stored last wins (both read the same event).
                content.setdefault(event_id, {}).setdefault(receipt_type, {})[user] = (
                    {"ts": ts} if thread_id is None else {"ts": ts, "thread_id": thread_id})
        if content:
            events.append({"type": "m.receipt", "content": content})
        return events

    def _invited_by(self, member_event: str) -> str | None:
        """The sender of an invite event, or None when it is not stored."""
        row = self.store.get_event(member_event)
        return row["event"].sender if row is not None else None

    def _stripped_state(self, room_id: str, user_id: str, membership: str) -> list[dict[str, Any]]:
        if self.rooms.head(room_id) is None:  # an invite to, or a knock on, a room held elsewhere
            if membership == "knock":
                knocked = self.store.federation.knock(room_id, user_id)
                return knocked[2] if knocked is not None else []
            found = self.store.federation.invite(room_id, user_id)
            return found[2] if found is not None else []
        state = self.rooms.current_state(room_id)
        keys = [(t, "") for t in _STRIPPED_TYPES] + [("m.room.member", user_id)]
        out = []
        for key in keys:
            event = self.rooms.event(state[key]) if key in state else None
            if event is not None:
                out.append({"type": event.type, "state_key": event.state_key, "content": event.content,
                            "sender": event.sender})  # fmt: skip
        return out

    # ------------------------------------------------------------ messages

    def messages(
        self, user_id: str, room_id: str, from_token: str | None, to_token: str | None, direction: str, limit: int,
        filter_doc: dict[str, Any] | None, device_id: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        """The /messages response: a page of visible events in one direction."""
        if direction not in ("b", "f"):
            raise invalid_param("dir must be 'b' or 'f'")
        ceiling, joined_now = self.reader_ceiling(user_id, room_id)
        event_filter = EventFilter(filter_doc, limit, ignored=ignored_users(self.store, user_id))
        start = SyncToken.parse(from_token, history=True).stream if from_token else (ceiling if direction == "b" else 0)
        bound = SyncToken.parse(to_token, history=True).stream if to_token else None
        chunk: list[EventRow] = []
        exhausted = False
        position = min(start, ceiling)
        if direction == "f" and not from_token:
            position = _HISTORY_FLOOR
        scanned = 0
        while len(chunk) < event_filter.limit and not exhausted and scanned < MAX_SCAN_ROWS:
            want = min(event_filter.limit - len(chunk), MAX_SCAN_ROWS - scanned)
            if direction == "b":
                lower = bound if bound is not None else _HISTORY_FLOOR
                batch = self.store.room_events(room_id, after=lower, upto=position, limit=want, backwards=True)
                if batch:
                    position = batch[-1]["stream"] - 1
            else:
                upper = min(ceiling, bound) if bound is not None else ceiling
                batch = self.store.room_events(room_id, after=position, upto=upper, limit=want, backwards=False)
                if batch:
                    position = batch[-1]["stream"]
            exhausted = len(batch) < want
            scanned += len(batch)
            chunk += [r for r in batch if event_filter.allows(r["event"]) and self.visible(user_id, r, joined_now)]
        response: dict[str, Any] = {
            "start": from_token or f"s{min(start, ceiling)}",
            "chunk": self.serve(user_id, chunk, ceiling, device=(user_id, device_id)),
            "state": [self.client_event(r, reader=user_id) for r in lazy_members.chunk_members(self.store, chunk,
                                                                                LazyOptions.of(filter_doc))],
        }
        if not exhausted:
            response["end"] = f"s{position}"
        shape = EventShape.of(filter_doc)  # event_fields, event_format (event_fields.py)
        response["chunk"] = shape.room_events(response["chunk"], lambda ids: self.raw_events(ids, user_id))
        response["state"] = shape.room_events(response["state"], lambda ids: self.raw_events(ids, user_id))
        return response

    def raw_events(self, event_ids: list[str], reader: str) -> dict[str, dict[str, Any]]:
        """The federation form of stored events by ID as ``reader`` may see them (one read): the PDU, redacted
        when it was redacted or its sender erased (as :meth:`client_event` serves it), with ``event_id``;
        unknown IDs are left out."""
        rows = self.store.get_events(event_ids)
        out: dict[str, dict[str, Any]] = {}
        for event_id, row in rows.items():
            event: Event = row["event"]
            hidden = row.get("redacted_by") or self.erased_for(reader, event.sender, row.get("state_before"))
            pdu = redact(event.pdu, self.rooms.room_version(event.room_id)) if hidden else event.pdu
            out[event_id] = {**pdu, "event_id": event_id}
        return out

    def get_event(self, user_id: str, room_id: str, event_id: str, device_id: str = "") -> dict[str, Any]:
        """One event the user may see, with its ``m.relations``; M_NOT_FOUND otherwise (no hint whether it exists)."""
        row = self.visible_row(user_id, room_id, event_id)
        membership = self.store.membership(room_id, user_id)
        upto = self.store.persisted
        if membership in ("leave", "ban"):  # relations up to the moment they left, as /messages shows them
            found = [r for r in self.store.rooms_for_user(user_id) if r[0] == room_id]
            upto = found[0][2] if found else upto
        return self.serve(user_id, [row], upto, device=(user_id, device_id))[0]

    def visible_row(self, user_id: str, room_id: str, event_id: str) -> EventRow:
        """The stored row of an event of ``room_id`` the user may see; M_NOT_FOUND otherwise (no hint whether it
        exists, is in another room or is hidden)."""
        row = self.store.get_event(event_id)
        if row is None or row["event"].room_id != room_id or row["rejected"]:
            raise MatrixError(404, "M_NOT_FOUND", "event not found")
        joined_now = self.store.membership(room_id, user_id) == "join"
        if not self.visible(user_id, row, joined_now):
            raise MatrixError(404, "M_NOT_FOUND", "event not found")
        return row


async def typing_expiry_loop(typing: TypingTracker, notifier: Notifier) -> None:
    """Background task: expire typing notices on time and wake syncs."""
    while True:
        next_expiry = typing.next_expiry()
        delay = 1.0 if next_expiry is None else max(0.05, min(1.0, next_expiry - time.time()))
        await asyncio.sleep(delay)
        if typing.expire():
            notifier.notify()
