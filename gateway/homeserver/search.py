"""``POST /search``: server-side full-text search of room events (the ``room_events`` category).

The index (:mod:`lowband.gateway.store.sqlite.search`) holds message bodies,
room names and topics. A search looks in the rooms the user is joined to and
in those they left or were banned from, up to the moment they left; each hit
must be visible to them under the room's history visibility
(:meth:`~lowband.gateway.homeserver.sync.SyncHandler.visible`), so a search
tells nothing a ``/messages`` would not. Encrypted rooms have no text on the
server: their messages are never found.

Cost is bounded per request: the term is cut to
:data:`MAX_QUERY_WORDS` words (each a
quoted FTS5 string, no query syntax), at most :data:`MAX_SCAN` index entries
are read per page, a page holds at most :data:`MAX_PAGE` results, and the
event context at most :data:`MAX_CONTEXT` events on each side.

Ordering and pagination:

* ``recent``: newest first. The scan starts below the position in
  ``next_batch`` (``r<position>_<count>``) and reads at most :data:`MAX_SCAN`
  entries; ``next_batch`` goes on after the page's last result (or where the
  bound stopped the scan).
* ``rank`` (the default): the best matches (FTS5 bm25) among the
  :data:`MAX_SCAN` most recent matching entries at the time of the first
  page; ``next_batch`` (``k<position>_<offset>``) keeps that window, so later
  pages neither repeat nor skip results while new messages arrive.

``count`` is the number of results among the first page's scan (exact when
it reached the oldest match, a lower bound otherwise), the same on every
page; ``highlights`` are the words searched for.
"""

from __future__ import annotations

import re
from typing import Any

from lowband.gateway.homeserver.ignored import ignored_users
from lowband.gateway.homeserver.sync import EventFilter, SyncHandler
from lowband.gateway.matrix.errors import MatrixError, bad_json, invalid_param, required_text
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.numbers import parse_digits
from lowband.gateway.store.interfaces import EventRow, SearchHit

#: results per page at most (a larger ``filter.limit`` is lowered); the default
MAX_PAGE = 50
DEFAULT_PAGE = 10
#: index entries read per request at most
MAX_SCAN = 2000
#: the longest search term taken (characters)
MAX_TERM_CHARS = 1000
#: events of context on each side at most, and the default
MAX_CONTEXT = 20
DEFAULT_CONTEXT = 5
#: above every stream position
_TOP = 1 << 62
#: words of a search term used (the rest is ignored); each is a token a result must hold
MAX_QUERY_WORDS = 16
#: characters of one word used
MAX_WORD_CHARS = 64
#: event types indexed, and the content key of each (as the store's index has them)
SEARCHED_KEYS = {"m.room.message": "body", "m.room.name": "name", "m.room.topic": "topic"}
_WORD = re.compile(r"[^\W_]+")  # letters and digits: what the index's tokenizer keeps as a token
_KEYS = {f"content.{key}": event_type for event_type, key in SEARCHED_KEYS.items()}


def query_words(term: str) -> list[str]:
    """The words of a search term that are searched: runs of letters and digits, at most
    :data:`MAX_QUERY_WORDS` of :data:`MAX_WORD_CHARS` characters, lowercased, each once."""
    words: list[str] = []
    for match in _WORD.finditer(term):
        word = match.group(0)[:MAX_WORD_CHARS].lower()
        if word not in words:
            words.append(word)
        if len(words) == MAX_QUERY_WORDS:
            break
    return words


def _bool(doc: dict[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise bad_json(f"'{key}' must be true or false")
    return value


def _object(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise bad_json(f"'{key}' must be an object")
    return value


def _count(doc: dict[str, Any], key: str, default: int, high: int) -> int:
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise bad_json(f"'{key}' must be a non-negative integer")
    return min(value, high)


class SearchHandler:
    """Answers ``POST /search`` for a user, with the visibility rules of ``sync``."""

    def __init__(self, sync: SyncHandler) -> None:
        self.sync = sync
        self.store = sync.store

    def search(self, user_id: str, body: dict[str, Any], next_batch: str | None,
               device_id: str = "") -> dict[str, Any]:  # fmt: skip
        """The ``/search`` response. 400 M_BAD_JSON for a body of the wrong shape, M_MISSING_PARAM without a
        ``search_term``, M_INVALID_PARAM for a bad ``order_by``, ``keys``, ``group_by`` or ``next_batch``, or
        a term longer than :data:`MAX_TERM_CHARS`."""
        categories = body.get("search_categories")
        if not isinstance(categories, dict):
            raise MatrixError(400, "M_MISSING_PARAM" if categories is None else "M_BAD_JSON",
                              "'search_categories' must be an object")  # fmt: skip
        criteria = categories.get("room_events")
        if criteria is None:
            return {"search_categories": {}}
        if not isinstance(criteria, dict):
            raise bad_json("'room_events' must be an object")
        return {"search_categories": {"room_events": self._room_events(user_id, criteria, next_batch, device_id)}}

    # ----------------------------------------------------------- criteria

    def _room_events(self, user_id: str, criteria: dict[str, Any], next_batch: str | None,
                     device_id: str) -> dict[str, Any]:  # fmt: skip
        term = required_text(criteria, "search_term", MAX_TERM_CHARS)
        order = criteria.get("order_by", "rank")
        if order not in ("rank", "recent"):
            raise invalid_param("'order_by' must be 'rank' or 'recent'")
        keys = criteria.get("keys", list(_KEYS))
        if not isinstance(keys, list) or not keys or any(k not in _KEYS for k in keys):
            raise invalid_param(f"'keys' must be a non-empty list of {', '.join(_KEYS)}")
        filter_doc = _object(criteria, "filter")
        # the sender the reader ignores (m.ignored_user_list) is not found, as /sync and /messages leave them out
        event_filter = EventFilter(filter_doc, DEFAULT_PAGE, ignored=ignored_users(self.store, user_id))
        event_filter.limit = min(event_filter.limit, MAX_PAGE)
        context = criteria.get("event_context")
        if context is not None and not isinstance(context, dict):
            raise bad_json("'event_context' must be an object")
        group_keys = self._group_keys(_object(criteria, "groupings"))
        include_state = _bool(criteria, "include_state")
        words = query_words(term)
        types = [_KEYS[k] for k in dict.fromkeys(keys)]

        rooms = self._readable_rooms(user_id, event_filter)
        if order == "recent":
            below, count = self._paired_token(next_batch, "r")
        else:
            below, offset = self._paired_token(next_batch, "k")
        hits, highest, lowest, cut = self._scan(user_id, words, rooms, types, event_filter, below)
        if order == "rank":
            count = len(hits)
            hits.sort(key=lambda h: (-h.rank, -h.stream))
            page = hits[offset:offset + event_filter.limit]
            top = below if next_batch else highest + 1  # later pages rank the same window
            more = offset + event_filter.limit < len(hits)
            token = f"k{top}_{offset + event_filter.limit}" if more else None
        else:  # the first page's count goes on in the token: later pages scan only what is left below
            count = count if next_batch else len(hits)
            page = hits[:event_filter.limit]
            if len(hits) > event_filter.limit:
                token = f"r{page[-1].stream}_{count}"
            else:
                token = f"r{lowest}_{count}" if cut else None
        rows = self.store.get_events([h.event_id for h in page])
        served_rows = [rows[h.event_id] for h in page if h.event_id in rows]
        served = self._serve(user_id, served_rows, rooms, device_id)
        results: list[dict[str, Any]] = []
        for hit, row, event in zip([h for h in page if h.event_id in rows], served_rows, served, strict=True):
            result: dict[str, Any] = {"rank": hit.rank, "result": event}
            if context is not None:
                result["context"] = self._context(user_id, row, context, rooms[hit.room_id], device_id)
            results.append(result)
        answer: dict[str, Any] = {"results": results, "count": count, "highlights": words}
        if token is not None:
            answer["next_batch"] = token
        if group_keys:
            answer["groups"] = self._groups(group_keys, page, token)
        if include_state:
            answer["state"] = self._state({h.room_id for h in page}, rooms)
        return answer

    @staticmethod
    def _group_keys(groupings: dict[str, Any]) -> list[str]:
        group_by = groupings.get("group_by", [])
        if not isinstance(group_by, list):
            raise bad_json("'group_by' must be a list")
        keys = []
        for group in group_by:
            key = group.get("key") if isinstance(group, dict) else None
            if key not in ("room_id", "sender"):
                raise invalid_param("a group's 'key' must be 'room_id' or 'sender'")
            if key not in keys:
                keys.append(key)
        return keys

    @staticmethod
    def _token(text: str | None, prefix: str) -> int:
        if text is None:
            return _TOP
        body = text[1:] if text.startswith(prefix) else ""
        negative = body.startswith("-")
        value = parse_digits(body[1:] if negative else body)
        if value is None or value > _TOP:
            raise invalid_param("invalid 'next_batch'")
        return -value if negative else value

    @classmethod
    def _paired_token(cls, text: str | None, prefix: str) -> tuple[int, int]:
        """(position, number) of a ``next_batch`` ``<prefix><position>_<number>``; (top, 0) without one. The number
        is a rank page's offset or the count of a recent page's first page, both at most :data:`MAX_SCAN`."""
        if text is None:
            return _TOP, 0
        position, sep, number = text.rpartition("_")
        value = parse_digits(number)
        if not sep or value is None or value > MAX_SCAN:
            raise invalid_param("invalid 'next_batch'")
        return cls._token(position, prefix), value

    # ---------------------------------------------------------- the scan

    def _readable_rooms(self, user_id: str, event_filter: EventFilter) -> dict[str, tuple[int, bool]]:
        """Room → (highest readable position, joined now) for the rooms searched."""
        rooms: dict[str, tuple[int, bool]] = {}
        for room_id, membership, mstream, _ in self.store.rooms_for_user(user_id):
            if not event_filter.allows_room(room_id):
                continue
            if membership == "join":
                rooms[room_id] = (self.store.persisted, True)
            elif membership in ("leave", "ban"):
                rooms[room_id] = (mstream, False)
        return rooms

    def _scan(
        self, user_id: str, words: list[str], rooms: dict[str, tuple[int, bool]], types: list[str],
        event_filter: EventFilter, below: int,
    ) -> tuple[list[SearchHit], int, int, bool]:  # fmt: skip
        """The visible hits among at most :data:`MAX_SCAN` index entries below ``below``, newest first; the
        highest and lowest positions read; whether the bound cut the scan (older matches may be left)."""
        if not words or not rooms:
            return [], below - 1, below, False
        entries = self.store.search.matches(words, below=below, limit=MAX_SCAN)
        seen: dict[tuple[str, int | None], bool] = {}  # visibility depends only on the state before the event
        hits = []
        for hit in entries:
            room = rooms.get(hit.room_id)
            if room is None or hit.stream > room[0] or hit.type not in types:
                continue
            shape = {"type": hit.type, "sender": hit.sender, "room_id": hit.room_id}
            if hit.type != "m.room.message":  # names and topics are indexed only as room state
                shape["state_key"] = ""
            if not event_filter.allows(Event(hit.event_id, shape)):
                continue
            if hit.type == "m.room.message" and self.sync.expired_at(hit.room_id, hit.origin_server_ts):
                continue  # past the room's retention (names and topics are state: they never expire)
            key = (hit.room_id, hit.state_before)
            if key not in seen:
                stub: EventRow = {"event": Event(hit.event_id, {"type": hit.type, "sender": hit.sender}),
                                  "stream": hit.stream, "state_before": hit.state_before, "state_after": None,
                                  "rejected": None, "redacted_by": None, "txn": None, "outlier": False,
                                  "soft_failed": False}  # fmt: skip
                seen[key] = self.sync.visible(user_id, stub, room[1])
            # an erased sender's text is not found by a reader who would be served the event redacted
            if seen[key] and not self.sync.erased_for(user_id, hit.sender, hit.state_before):
                hits.append(hit)
        if not entries:
            return [], below - 1, below, False
        return hits, entries[0].stream, entries[-1].stream, len(entries) >= MAX_SCAN

    # ------------------------------------------------------------ answers

    def _serve(self, user_id: str, rows: list[EventRow], rooms: dict[str, tuple[int, bool]],
               device_id: str) -> list[dict[str, Any]]:  # fmt: skip
        """Client events, each with its ``m.relations`` up to what the reader may see of its room."""
        # one m.relations query per distinct ceiling: the joined rooms share one, a room left has its own
        by_ceiling: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            by_ceiling.setdefault(rooms[row["event"].room_id][0], []).append(index)
        served: list[dict[str, Any]] = [{} for _ in rows]
        for ceiling, indexes in by_ceiling.items():
            events = self.sync.serve(user_id, [rows[i] for i in indexes], ceiling, device=(user_id, device_id))
            for index, event in zip(indexes, events, strict=True):
                served[index] = event
        return served

    def _context(self, user_id: str, row: EventRow, spec: dict[str, Any], room: tuple[int, bool],
                 device_id: str) -> dict[str, Any]:  # fmt: skip
        before_limit = _count(spec, "before_limit", DEFAULT_CONTEXT, MAX_CONTEXT)
        after_limit = _count(spec, "after_limit", DEFAULT_CONTEXT, MAX_CONTEXT)
        include_profile = _bool(spec, "include_profile")
        ceiling, joined_now = room
        room_id = row["event"].room_id
        before = self._side(user_id, room_id, row["stream"] - 1, before_limit, joined_now, ceiling, backwards=True)
        after = self._side(user_id, room_id, row["stream"], after_limit, joined_now, ceiling, backwards=False)
        device = (user_id, device_id)
        answer: dict[str, Any] = {
            "events_before": self.sync.serve(user_id, before, ceiling, device=device),
            "events_after": self.sync.serve(user_id, after, ceiling, device=device),
            "start": f"s{before[-1]['stream'] - 1 if before else row['stream'] - 1}",
            "end": f"s{after[-1]['stream'] if after else row['stream']}",
        }
        if include_profile:
            profiles: dict[str, Any] = {}
            for each in (*before, row, *after):
                sender = each["event"].sender
                if sender in profiles:
                    continue
                state = self.store.state_for_group(each["state_after"] if each["state_after"] is not None
                                                   else each["state_before"])  # fmt: skip
                member = self.sync.rooms.state_content(state, "m.room.member", sender) or {}
                profiles[sender] = {k: member[k] for k in ("displayname", "avatar_url")
                                    if isinstance(member.get(k), str)}  # fmt: skip
            answer["profile_info"] = profiles
        return answer

    def _side(self, user_id: str, room_id: str, position: int, wanted: int, joined_now: bool, ceiling: int, *,
              backwards: bool) -> list[EventRow]:  # fmt: skip
        """Up to ``wanted`` visible events next to ``position``, nearest first, reading at most 4 × ``wanted``."""
        if wanted == 0:
            return []
        if backwards:
            batch = self.store.room_events(room_id, after=-_TOP, upto=position, limit=wanted * 4, backwards=True)
        else:
            batch = self.store.room_events(room_id, after=position, upto=ceiling, limit=wanted * 4, backwards=False)
        return [r for r in batch if self.sync.visible(user_id, r, joined_now)][:wanted]

    @staticmethod
    def _groups(keys: list[str], page: list[SearchHit], token: str | None) -> dict[str, Any]:
        """Results of this page grouped by room and/or sender, each group ordered by its best result."""
        groups: dict[str, Any] = {}
        for key in keys:
            found: dict[str, list[str]] = {}
            for hit in page:
                found.setdefault(hit.room_id if key == "room_id" else hit.sender, []).append(hit.event_id)
            groups[key] = {value: {"results": ids, "order": order, **({"next_batch": token} if token else {})}
                           for order, (value, ids) in enumerate(found.items(), start=1)}  # fmt: skip
        return groups

    def _state(self, room_ids: set[str], rooms: dict[str, tuple[int, bool]]) -> dict[str, list[dict[str, Any]]]:
        """The current state of the joined rooms among ``room_ids`` (a room the user left: not shown)."""
        state: dict[str, list[dict[str, Any]]] = {}
        for room_id in sorted(room_ids):
            if not rooms[room_id][1]:
                continue
            ids = list(self.sync.rooms.current_state(room_id).values())
            rows = self.store.get_events(ids)
            state[room_id] = [self.sync.client_event(rows[i]) for i in ids if i in rows]
        return state
