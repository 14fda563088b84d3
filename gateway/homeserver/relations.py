"""/relations and /threads: the events relating to an event, and a room's threads, as a user may see them.

Tokens are stream positions in the shape /messages uses (``s<position>``),
so a ``/messages`` or ``/sync`` token is accepted as ``from``/``to`` as the
spec allows. For /relations, ``dir=b`` from ``sN`` returns relations at
positions up to N and ``dir=f`` from ``sN`` those after N; ``next_batch``
continues in the same direction. For /threads, ``sN`` means "threads whose
latest reply is below N".

Bounds: a page holds at most :data:`MAX_LIMIT` events (default
:data:`DEFAULT_LIMIT`; a larger ``limit`` is lowered to it, below 1 is
refused); at most :data:`~lowband.gateway.homeserver.sync.MAX_SCAN_ROWS`
candidate events are read per request (the page then ends early with a
``next_batch``); ``recurse`` follows relations of relations up to
:data:`RECURSION_DEPTH` levels.

Visibility is the homeserver's (:meth:`SyncHandler.visible`): the parent must
be visible to the user (else 404 M_NOT_FOUND, as for an unknown event), and
so must each child; nothing past the moment a user left is listed. Events
(relations, thread roots) sent by users the reader ignores are not listed
(state events excepted, as in /sync), nor counted in ``m.relations``.
"""

from __future__ import annotations

from typing import Any

from lowband.gateway.homeserver.ignored import ignored_users
from lowband.gateway.homeserver.sync import HISTORY_FLOOR, MAX_SCAN_ROWS, SyncHandler, SyncToken
from lowband.gateway.matrix.errors import MatrixError, invalid_param
from lowband.gateway.store.interfaces import EventRow

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
#: how deep ``recurse=true`` follows relations (the spec leaves it to the server; three reaches an annotation
#: or an edit of a thread reply, which is what clients ask for)
RECURSION_DEPTH = 3
THREAD_FILTERS = ("all", "participated")


def page_limit(raw: str | None, default: int = DEFAULT_LIMIT, high: int = MAX_LIMIT, low: int = 1) -> int:
    """A ``limit`` query value: ``default`` when absent, lowered to ``high`` when above it; M_INVALID_PARAM when
    not an integer (ASCII digits, an optional ``-``) or below ``low``."""
    if raw is None:
        return default
    text = raw.removeprefix("-")
    if not text.isascii() or not text.isdigit():
        raise invalid_param("'limit' must be an integer")
    value = int(text[:19])  # 19 digits are past every bound already: longer ones are not converted
    value = -value if raw.startswith("-") else value
    if value < low:
        raise invalid_param(f"'limit' must be at least {low}")
    return min(value, high)


def position(token: str, name: str) -> int:
    """The stream position of a pagination token (``s<position>``, or a /sync token); M_INVALID_PARAM otherwise."""
    try:
        return SyncToken.parse(token, history=True).stream
    except MatrixError:
        raise invalid_param(f"'{name}' is not a pagination token") from None


class RelationsHandler:
    """Answers /relations and /threads for a user, with the visibility rules of ``sync``."""

    def __init__(self, sync: SyncHandler) -> None:
        self.sync = sync
        self.store = sync.store

    def relations(
        self, user_id: str, room_id: str, event_id: str, *, rel_type: str | None, event_type: str | None,
        from_token: str | None, to_token: str | None, direction: str, limit: int, recurse: bool | None,
        device_id: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        """The /relations response: visible events relating to ``event_id`` (directly, or up to
        :data:`RECURSION_DEPTH` levels with ``recurse``), one page in ``direction``.

        404 M_NOT_FOUND when the parent is unknown, in another room or not visible; 400 M_INVALID_PARAM for a
        bad ``dir`` or token."""
        if direction not in ("b", "f"):
            raise invalid_param("dir must be 'b' or 'f'")
        start = position(from_token, "from") if from_token else None
        bound = position(to_token, "to") if to_token else None
        self.sync.visible_row(user_id, room_id, event_id)
        ceiling, joined_now = self.sync.reader_ceiling(user_id, room_id)
        depth = RECURSION_DEPTH if recurse else 1
        backwards = direction == "b"
        if backwards:
            top = min(start, ceiling) if start is not None else ceiling
            low = bound if bound is not None else HISTORY_FLOOR
        else:
            low = start if start is not None else HISTORY_FLOOR
            top = min(bound, ceiling) if bound is not None else ceiling
        ignored = ignored_users(self.store, user_id)
        chunk: list[EventRow] = []
        scanned, exhausted = 0, False
        while len(chunk) < limit and not exhausted and scanned < MAX_SCAN_ROWS:
            want = min(limit - len(chunk), MAX_SCAN_ROWS - scanned)
            ids = self.store.relations.children(room_id, event_id, rel_type=rel_type, event_type=event_type,
                                                after=low, upto=top, backwards=backwards, limit=want,
                                                depth=depth)  # fmt: skip
            rows = self.store.get_events(ids)
            batch = [rows[i] for i in ids if i in rows]
            exhausted = len(ids) < want
            scanned += len(ids)
            if batch:
                if backwards:
                    top = batch[-1]["stream"] - 1
                else:
                    low = batch[-1]["stream"]
            chunk += [r for r in batch if _shown(r, ignored) and self.sync.visible(user_id, r, joined_now)]
        response: dict[str, Any] = {"chunk": self.sync.serve(user_id, chunk, ceiling, device=(user_id, device_id))}
        if not exhausted:
            response["next_batch"] = f"s{top if backwards else low}"
        if from_token:
            response["prev_batch"] = from_token
        if recurse is not None:
            response["recursion_depth"] = depth
        return response

    def threads(self, user_id: str, room_id: str, *, include: str, from_token: str | None, limit: int,
                device_id: str = "") -> dict[str, Any]:  # fmt: skip
        """The /threads response: roots of the room's threads the user may see, latest activity first, each with
        its ``m.thread`` summary; ``include="participated"`` keeps those the user started or replied to.

        403 when the user was never in the room; 400 M_INVALID_PARAM for a bad ``include`` or token."""
        if include not in THREAD_FILTERS:
            raise invalid_param("include must be 'all' or 'participated'")
        below = position(from_token, "from") if from_token else None
        ceiling, joined_now = self.sync.reader_ceiling(user_id, room_id)
        participant = user_id if include == "participated" else None
        ignored = ignored_users(self.store, user_id)
        chunk: list[EventRow] = []
        scanned, exhausted = 0, False
        while len(chunk) < limit and not exhausted and scanned < MAX_SCAN_ROWS:
            want = min(limit - len(chunk), MAX_SCAN_ROWS - scanned)
            found = self.store.relations.threads(room_id, below=below, limit=want, participant=participant)
            exhausted = len(found) < want
            scanned += len(found)
            if found:
                below = found[-1][1]
            rows = self.store.get_events([root for root, _ in found])
            for root, _ in found:
                row = rows.get(root)
                if (row is not None and row["event"].room_id == room_id and not row["rejected"]
                        and row["stream"] <= ceiling and _shown(row, ignored)
                        and self.sync.visible(user_id, row, joined_now)):  # fmt: skip
                    chunk.append(row)
        response: dict[str, Any] = {"chunk": self.sync.serve(user_id, chunk, ceiling, device=(user_id, device_id))}
        if not exhausted and below is not None:
            response["next_batch"] = f"s{below}"
        return response


def _shown(row: EventRow, ignored: frozenset[str]) -> bool:
    """Whether an event is listed to a reader ignoring ``ignored`` (their state events still are)."""
    event = row["event"]
    return event.is_state or event.sender not in ignored
