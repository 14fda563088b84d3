"""Push rules, notifications and pushers in the SQLite file (a ``PushStore``).

* ``push_rule_docs``: one JSON document per user holding their own rules and
  their changes to server-default ones (``homeserver/push_rules.py``); an
  edit is a function run inside the write, so two edits never lose one;
* ``push_notifications``: one row per (user, event) whose push rules asked
  to notify, with the actions and whether it highlights; a user keeps
  about :data:`MAX_NOTIFICATIONS_PER_USER` (the oldest go: a user is trimmed
  back to it once every :data:`TRIM_EVERY` writes that gave them rows, so at
  most that many more wait in between). Unread counts are
  the rows after the user's read receipt in the room: a receipt clears them
  without a write here. Each row keeps the thread its event is in ('main'
  or a thread root), so a threaded receipt clears its own thread's rows;
* ``push_evaluated``: how far the event stream has been evaluated, written
  with the rows it produced (one write), so a restart skips no event (one
  judged again after a crash makes no second row);
* rows and the position judged up to are written together without an fsync
  of their own (``Database.write(durable=False)``): they are derived from the
  event stream, and a power loss rolls both back to a point the evaluator
  judges again from. A row takes no stream position: ``/sync`` serves no
  event before it is judged (homeserver/notifications.py), so an event and
  its counts always come in one response (``written`` holds the event's
  position, kept for databases made before this rule);
* ``pushers``: the users' HTTP pushers, each with its cursor over the
  user's notification rows (what the push gateway has acknowledged).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from lowband.gateway.store.interfaces import NotificationRow, PusherRow, TimelineRow, TooManyPushers
from lowband.gateway.store.sqlite.database import Database
from lowband.gateway.store.sqlite.schema import TIMELINE_COLUMNS

PUSH_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS push_rule_docs (user_id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID",
    (
        "CREATE TABLE IF NOT EXISTS push_evaluated (id INTEGER PRIMARY KEY CHECK (id = 0), stream INTEGER NOT NULL,"
        " written INTEGER NOT NULL DEFAULT 0)"
    ),
    """
CREATE TABLE IF NOT EXISTS push_notifications (
    user_id TEXT NOT NULL,
    stream INTEGER NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    actions TEXT NOT NULL,     -- JSON list, as the rule gave it
    highlight INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    written INTEGER NOT NULL,  -- the stream position of the write that made the row
    thread_id TEXT NOT NULL DEFAULT 'main',  -- 'main' or the event's thread root (see below)
    PRIMARY KEY (user_id, stream)
) WITHOUT ROWID
""",
    "CREATE INDEX IF NOT EXISTS push_notifications_room ON push_notifications (user_id, room_id, stream)",
    "CREATE INDEX IF NOT EXISTS push_notifications_written ON push_notifications (user_id, written)",
    """
CREATE TABLE IF NOT EXISTS pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,        -- JSON: the pusher as GET /pushers shows it
    device_id TEXT,
    cursor INTEGER NOT NULL,   -- notification rows up to here were delivered (or skipped)
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
) WITHOUT ROWID
""",
    "CREATE INDEX IF NOT EXISTS pushers_key ON pushers (app_id, pushkey)",
]

MAX_NOTIFICATIONS_PER_USER = 1000
#: threads with their own read receipt taken into one count query (SQLite binds at most 32,766 values)
MAX_THREAD_POSITIONS = 1000
#: writes with rows for a user between two trims of their rows (a trim reads MAX_NOTIFICATIONS_PER_USER index
#: entries: trimming at every write made it most of the cost of storing one message's notifications)
TRIM_EVERY = 100

_TIMELINE = (
    f"SELECT {TIMELINE_COLUMNS} FROM events WHERE stream > ?"
    " AND stream <= ? AND rejected IS NULL AND outlier = 0 AND soft_failed = 0 ORDER BY stream LIMIT ?"
)
_NOTIFICATION_COLUMNS = "user_id, stream, room_id, event_id, actions, highlight, ts, thread_id"
_PUSHER_COLUMNS = "user_id, app_id, pushkey, kind, body, device_id, cursor, failures, last_error"


def _notification(row: tuple[Any, ...]) -> NotificationRow:
    return NotificationRow(str(row[0]), int(row[1]), str(row[2]), str(row[3]), json.loads(row[4]), bool(row[5]),
                           int(row[6]), str(row[7]))  # fmt: skip


def _pusher(row: tuple[Any, ...]) -> PusherRow:
    return PusherRow(str(row[0]), str(row[1]), str(row[2]), str(row[3]), json.loads(row[4]), row[5], int(row[6]),
                     int(row[7]), row[8])  # fmt: skip


class PushTables:
    """Reads and writes of the push tables on the gateway's database. Reads see committed writes only."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: per user, writes with rows for them since their last trim (read and written by the writer thread only)
        self._untrimmed: dict[str, int] = {}

        def create(c: sqlite3.Connection) -> None:  # one statement per execute (executescript would commit)
            for statement in PUSH_SCHEMA:  # an older table gained thread_id in schema.MIGRATIONS
                c.execute(statement)

        self.db.write_sync(create)

    # ------------------------------------------------------------ rules

    def rules_doc(self, user_id: str) -> dict[str, Any] | None:
        """The user's push rule document, or None (only server-default rules, unchanged)."""
        row = self.db.query_one("SELECT doc FROM push_rule_docs WHERE user_id = ?", (user_id,))
        return json.loads(row[0]) if row else None

    async def edit_rules(self, user_id: str,
                         edit: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
        """Replace the user's document by ``edit(current)`` inside one write; what ``edit`` raises is raised
        and nothing is written. Returns the new document."""

        def fn(c: sqlite3.Connection) -> dict[str, Any]:
            row = c.execute("SELECT doc FROM push_rule_docs WHERE user_id = ?", (user_id,)).fetchone()
            doc = edit(json.loads(row[0]) if row else None)
            c.execute("INSERT INTO push_rule_docs VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET doc = excluded.doc",
                      (user_id, json.dumps(doc, separators=(",", ":"))))  # fmt: skip
            return doc

        return await self.db.write(fn)

    # ------------------------------------------------------------ evaluation

    def evaluated(self) -> int | None:
        """How far the event stream was evaluated (None: never, a new database or one made before push)."""
        row = self.db.query_one("SELECT stream FROM push_evaluated WHERE id = 0")
        return int(row[0]) if row else None

    def timeline_after(self, cursor: int, upto: int, limit: int) -> list[TimelineRow]:
        """Timeline events (not rejected, outlier or soft-failed) with cursor < stream <= upto, oldest first."""
        rows = self.db.query(_TIMELINE, (cursor, upto, limit))
        return [TimelineRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], str(r[5]), r[6]) for r in rows]

    def highest_position(self) -> int:
        """The highest stream position a write of rows took in versions that gave rows positions (0: none)."""
        row = self.db.query_one("SELECT written FROM push_evaluated WHERE id = 0")
        return int(row[0]) if row else 0

    async def add_notifications(self, rows: list[NotificationRow], evaluated: int) -> None:
        """Store the rows an evaluation made and move the evaluated position, in one write without an fsync of
        its own (see the module rules); trims users given a row back to :data:`MAX_NOTIFICATIONS_PER_USER`
        every :data:`TRIM_EVERY` writes."""

        def fn(c: sqlite3.Connection) -> None:
            c.executemany(
                f"INSERT OR IGNORE INTO push_notifications ({_NOTIFICATION_COLUMNS}, written)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                [(r.user_id, r.stream, r.room_id, r.event_id, json.dumps(r.actions, separators=(",", ":")),
                  int(r.highlight), r.ts, r.thread_id, r.stream) for r in rows],
            )  # fmt: skip
            for user_id in self._due_for_trim({r.user_id for r in rows}):
                cut = c.execute("SELECT stream FROM push_notifications WHERE user_id = ? ORDER BY stream DESC"
                                " LIMIT 1 OFFSET ?", (user_id, MAX_NOTIFICATIONS_PER_USER)).fetchone()  # fmt: skip
                if cut is not None:
                    c.execute("DELETE FROM push_notifications WHERE user_id = ? AND stream <= ?", (user_id, cut[0]))
            c.execute("INSERT INTO push_evaluated VALUES (0, ?, 0) ON CONFLICT (id) DO UPDATE SET stream = excluded.stream",
                      (evaluated,))  # fmt: skip

        await self.db.write(fn, durable=False)

    def _due_for_trim(self, users: set[str]) -> list[str]:
        """The users among ``users`` whose rows are to be trimmed in this write (every TRIM_EVERY-th write)."""
        due = []
        for user_id in users:
            count = self._untrimmed.get(user_id, 0) + 1
            if count >= TRIM_EVERY:
                due.append(user_id)
                count = 0
            self._untrimmed[user_id] = count
        if len(self._untrimmed) > 100_000:  # bounded: forgetting only delays a trim
            self._untrimmed.clear()
        return due

    def rooms_changed(self, user_id: str, after: int, upto: int) -> set[str]:
        """The rooms where the user has rows for events at positions in (after, upto]."""
        rows = self.db.query("SELECT DISTINCT room_id FROM push_notifications WHERE user_id = ? AND stream > ?"
                             " AND stream <= ?", (user_id, after, upto))  # fmt: skip
        return {str(r[0]) for r in rows}

    def unread_counts(self, user_id: str, room_id: str, after: int) -> tuple[int, int]:
        """(notifications, highlights) of the user in the room at positions above ``after``."""
        row = self.db.query_one("SELECT COUNT(*), COALESCE(SUM(highlight), 0) FROM push_notifications"
                                " WHERE user_id = ? AND room_id = ? AND stream > ?", (user_id, room_id, after))  # fmt: skip
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def unread_by_thread(self, user_id: str, room_id: str, after: int,
                         read_upto: dict[str, int]) -> dict[str, tuple[int, int]]:  # fmt: skip
        """Per thread ('main' or a root), (notifications, highlights) of the user's rows in the room above
        ``after`` and above that thread's own ``read_upto`` position (threads missing from it: ``after`` only).
        One query; only the entries of ``read_upto`` above ``after`` are sent (at most
        :data:`MAX_THREAD_POSITIONS`, the highest first: a thread left out counts from ``after``)."""
        marks = sorted(((t, p) for t, p in read_upto.items() if p > after), key=lambda tp: -tp[1])
        marks = marks[:MAX_THREAD_POSITIONS]
        where = "n.user_id = ? AND n.room_id = ? AND n.stream > ?"
        if marks:
            values = ", ".join("(?, ?)" for _ in marks)
            sql = (f"WITH marks(thread_id, upto) AS (VALUES {values}) SELECT n.thread_id, COUNT(*),"
                   f" COALESCE(SUM(n.highlight), 0) FROM push_notifications n LEFT JOIN marks m"
                   f" ON m.thread_id = n.thread_id WHERE {where} AND n.stream > COALESCE(m.upto, 0)"
                   f" GROUP BY n.thread_id")  # fmt: skip
            args: tuple[Any, ...] = (*[x for mark in marks for x in mark], user_id, room_id, after)
        else:
            sql = (f"SELECT n.thread_id, COUNT(*), COALESCE(SUM(n.highlight), 0) FROM push_notifications n"
                   f" WHERE {where} GROUP BY n.thread_id")  # fmt: skip
            args = (user_id, room_id, after)
        return {str(r[0]): (int(r[1]), int(r[2])) for r in self.db.query(sql, args)}

    def newest_notification(self, user_id: str, room_id: str) -> int:
        """The stream position of the user's newest row in the room (0: none)."""
        row = self.db.query_one("SELECT MAX(stream) FROM push_notifications WHERE user_id = ? AND room_id = ?",
                                (user_id, room_id))  # fmt: skip
        return int(row[0]) if row and row[0] is not None else 0

    def notification_rooms(self, user_id: str) -> list[str]:
        """The rooms the user has notification rows in."""
        return [str(r[0]) for r in self.db.query("SELECT DISTINCT room_id FROM push_notifications WHERE user_id = ?",
                                                 (user_id,))]  # fmt: skip

    def notifications(self, user_id: str, below: int | None, limit: int, only_highlight: bool) -> list[NotificationRow]:
        """The user's notification rows below position ``below`` (None: all), newest first, at most ``limit``."""
        where = " AND highlight = 1" if only_highlight else ""
        rows = self.db.query(f"SELECT {_NOTIFICATION_COLUMNS} FROM push_notifications WHERE user_id = ?"
                             f" AND stream < ?{where} ORDER BY stream DESC LIMIT ?",
                             (user_id, (1 << 62) if below is None else below, limit))  # fmt: skip
        return [_notification(r) for r in rows]

    def notifications_after(self, user_id: str, cursor: int, limit: int) -> list[NotificationRow]:
        """The user's notification rows above ``cursor``, oldest first (what a pusher has still to send)."""
        rows = self.db.query(f"SELECT {_NOTIFICATION_COLUMNS} FROM push_notifications WHERE user_id = ?"
                             " AND stream > ? ORDER BY stream LIMIT ?", (user_id, cursor, limit))  # fmt: skip
        return [_notification(r) for r in rows]

    # ------------------------------------------------------------ pushers

    def pushers(self, user_id: str | None = None) -> list[PusherRow]:
        """The user's pushers (every user's with None), oldest first."""
        if user_id is None:
            rows = self.db.query(f"SELECT {_PUSHER_COLUMNS} FROM pushers ORDER BY created_ts")
        else:
            rows = self.db.query(f"SELECT {_PUSHER_COLUMNS} FROM pushers WHERE user_id = ? ORDER BY created_ts",
                                 (user_id,))  # fmt: skip
        return [_pusher(r) for r in rows]

    async def set_pusher(self, pusher: PusherRow, *, append: bool, limit: int, ts: int) -> list[PusherRow]:
        """Add or replace the pusher (user, app_id, pushkey); without ``append``, other users' pushers with the
        same app_id and pushkey go (the spec's rule). A replaced pusher keeps its cursor. TooManyPushers when
        the user would have more than ``limit``. Returns the pushers removed."""

        def fn(c: sqlite3.Connection) -> list[PusherRow]:
            removed: list[PusherRow] = []
            if not append:
                removed = [_pusher(r) for r in c.execute(
                    f"SELECT {_PUSHER_COLUMNS} FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id != ?",
                    (pusher.app_id, pusher.pushkey, pusher.user_id))]  # fmt: skip
                c.execute("DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id != ?",
                          (pusher.app_id, pusher.pushkey, pusher.user_id))  # fmt: skip
            exists = c.execute("SELECT 1 FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
                               (pusher.user_id, pusher.app_id, pusher.pushkey)).fetchone()  # fmt: skip
            if exists is None:
                count = c.execute("SELECT COUNT(*) FROM pushers WHERE user_id = ?", (pusher.user_id,)).fetchone()[0]
                if count >= limit:
                    raise TooManyPushers(limit)
            c.execute("INSERT INTO pushers (user_id, app_id, pushkey, kind, body, device_id, cursor, created_ts)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind,"
                      " body = excluded.body, device_id = excluded.device_id",
                      (pusher.user_id, pusher.app_id, pusher.pushkey, pusher.kind, json.dumps(pusher.body),
                       pusher.device_id, pusher.cursor, ts))  # fmt: skip
            return removed

        return await self.db.write(fn)

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> bool:
        """Remove one pusher; False when there was none."""
        return bool(await self.db.write(lambda c: c.execute(
            "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
            (user_id, app_id, pushkey)).rowcount))  # fmt: skip

    async def move_pusher_cursor(self, user_id: str, app_id: str, pushkey: str, cursor: int) -> None:
        """A pusher delivered (or passed) the rows up to ``cursor``: its failures are reset."""
        await self.db.write(lambda c: c.execute(
            "UPDATE pushers SET cursor = MAX(cursor, ?), failures = 0, last_error = NULL"
            " WHERE user_id = ? AND app_id = ? AND pushkey = ?", (cursor, user_id, app_id, pushkey)))  # fmt: skip

    async def count_pusher_failure(self, user_id: str, app_id: str, pushkey: str, error: str) -> None:
        """Record a failed delivery attempt."""
        await self.db.write(lambda c: c.execute(
            "UPDATE pushers SET failures = failures + 1, last_error = ? WHERE user_id = ? AND app_id = ? AND pushkey = ?",
            (error[:500], user_id, app_id, pushkey)))  # fmt: skip
