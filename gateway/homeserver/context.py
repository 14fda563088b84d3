"""/context/{eventId}: an event with the visible events around it and the room state at the end of the window.

``limit`` (default :data:`DEFAULT_LIMIT`, at most :data:`MAX_LIMIT`) counts
the events before and after together: ``limit // 2`` before, the rest after
(0 is allowed: the event alone). The filter is a RoomEventFilter (the types
and senders rules of :class:`~lowband.gateway.homeserver.sync.EventFilter`,
and ``lazy_load_members``). ``start`` and ``end`` are /messages tokens: ``dir=b``
from ``start`` continues before ``events_before``, ``dir=f`` from ``end``
after ``events_after``. At most
:data:`~lowband.gateway.homeserver.sync.MAX_SCAN_ROWS` events are read on each
side (a filter matching little makes a shorter window, never a long scan).

``state`` is the room's state after the last event of the window, the
filter applied to it too (as the spec says); with ``lazy_load_members`` its
member events are only those of the window's senders (and the reader's own).
"""

from __future__ import annotations

from typing import Any

from lowband.gateway.homeserver.event_fields import EventShape
from lowband.gateway.homeserver.ignored import ignored_users
from lowband.gateway.homeserver.sync import HISTORY_FLOOR, MAX_SCAN_ROWS, EventFilter, SyncHandler
from lowband.gateway.store.interfaces import EventRow

DEFAULT_LIMIT = 10
MAX_LIMIT = 100


class ContextHandler:
    """Answers /context for a user, with the visibility rules of ``sync``."""

    def __init__(self, sync: SyncHandler) -> None:
        self.sync = sync
        self.store = sync.store

    def context(self, user_id: str, room_id: str, event_id: str, limit: int, filter_doc: dict[str, Any] | None,
                device_id: str = "") -> dict[str, Any]:  # fmt: skip
        """The /context response; 404 M_NOT_FOUND when the event is unknown, elsewhere or not visible, 403 when
        the user was never in the room."""
        row = self.sync.visible_row(user_id, room_id, event_id)
        ceiling, joined_now = self.sync.reader_ceiling(user_id, room_id)
        event_filter = EventFilter(filter_doc, ignored=ignored_users(self.store, user_id))
        before_limit = limit // 2
        before, start = self._side(user_id, room_id, row["stream"] - 1, before_limit, event_filter, joined_now,
                                   backwards=True, ceiling=ceiling)  # fmt: skip
        after, end = self._side(user_id, room_id, row["stream"], limit - before_limit, event_filter, joined_now,
                                backwards=False, ceiling=ceiling)  # fmt: skip
        device = (user_id, device_id)
        window = [*reversed(before), row, *after]
        served = self.sync.serve(user_id, window, ceiling, device=device)
        last = window[-1]
        lazy = isinstance(filter_doc, dict) and filter_doc.get("lazy_load_members") is True
        shape = EventShape.of(filter_doc)  # event_fields, event_format (event_fields.py)
        served = shape.room_events(served, lambda ids: self.sync.raw_events(ids, user_id))
        state = self._state(user_id, last, event_filter, {r["event"].sender for r in window} if lazy else None)
        return {
            "event": served[len(before)],
            "events_before": list(reversed(served[: len(before)])),
            "events_after": served[len(before) + 1:],
            "start": f"s{start}",
            "end": f"s{end}",
            "state": shape.room_events(state, lambda ids: self.sync.raw_events(ids, user_id)),
        }

    def _side(
        self, user_id: str, room_id: str, position: int, wanted: int, event_filter: EventFilter, joined_now: bool,
        *, backwards: bool, ceiling: int,
    ) -> tuple[list[EventRow], int]:  # fmt: skip
        """Up to ``wanted`` visible, filtered events on one side of ``position`` (nearest first) and the token
        position to go on from."""
        picked: list[EventRow] = []
        scanned = 0
        while len(picked) < wanted and scanned < MAX_SCAN_ROWS:
            want = min(wanted - len(picked), MAX_SCAN_ROWS - scanned)
            if backwards:
                batch = self.store.room_events(room_id, after=HISTORY_FLOOR, upto=position, limit=want, backwards=True)
            else:
                batch = self.store.room_events(room_id, after=position, upto=ceiling, limit=want, backwards=False)
            scanned += len(batch)
            for candidate in batch:
                if len(picked) < wanted and event_filter.allows(candidate["event"]) and self.sync.visible(
                        user_id, candidate, joined_now):  # fmt: skip
                    picked.append(candidate)
            if batch:
                position = batch[-1]["stream"] - 1 if backwards else batch[-1]["stream"]
            if len(batch) < want:
                break
        return picked, position

    def _state(self, user_id: str, last: EventRow, event_filter: EventFilter,
               senders: set[str] | None) -> list[dict[str, Any]]:  # fmt: skip
        """The state after ``last`` the filter keeps (the spec applies it to ``state`` too); members only of
        ``senders`` and the reader when ``senders`` is given."""
        state = self.store.state_for_group(last["state_after"] if last["state_after"] is not None
                                           else last["state_before"])  # fmt: skip
        keep = [event_id for (event_type, state_key), event_id in sorted(state.items())
                if senders is None or event_type != "m.room.member" or state_key in senders
                or state_key == user_id]  # fmt: skip
        rows = self.store.get_events(keep)
        return [self.sync.client_event(rows[i], reader=user_id) for i in keep
                if i in rows and event_filter.allows(rows[i]["event"])]  # fmt: skip
