"""The application services' push queue in the SQLite file: a cursor per bridge over the event stream.

* the backlog is the store's own event stream (``events``, timeline rows
  only: accepted, not outliers, not soft-failed; backfilled history has
  negative positions and is never in range) and, for encrypted bridges,
  ``to_device_inbox``: nothing is copied per bridge, so a bridge away for
  a month costs no more disk than the events themselves;
* ``appservice_queue`` holds, per bridge, the stream position delivered up
  to (``cursor``) and the transaction in flight: its number, the position
  it covers and what it holds (event IDs, to-device positions, device list
  changes), written before it is first sent, so a retry — also after a
  restart or ``kill -9`` — carries the same transaction ID and the same
  events. Its end moves the cursor and deletes the to-device messages it
  delivered, in one write;
* the delivery bookkeeping (consecutive failures, last success, last
  error, totals) lives in the same row for ``lowband appservice``, which
  reads it from another process with :func:`read_queue_status`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from lowband.gateway.store.interfaces import AppServiceQueueRow, TimelineRow
from lowband.gateway.store.sqlite.database import Database
from lowband.gateway.store.sqlite.schema import TIMELINE_COLUMNS

APPSERVICE_SCHEMA = [
    """
CREATE TABLE IF NOT EXISTS appservice_queue (
    appservice_id TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,          -- everything up to this stream position was delivered (or not wanted)
    txn_prefix TEXT NOT NULL,         -- transaction IDs are <prefix>.<seq>: unique per database
    txn_seq INTEGER NOT NULL,         -- the last transaction number used
    txn_upto INTEGER,                 -- the position the transaction in flight covers, NULL when none
    txn_content TEXT,                 -- JSON: {"events": [...], "to_device": [...], "device_lists": [...]}
    failures INTEGER NOT NULL DEFAULT 0,   -- consecutive failed attempts
    last_ok_ts INTEGER,
    last_error TEXT,
    last_error_ts INTEGER,
    sent_txns INTEGER NOT NULL DEFAULT 0,
    sent_events INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
""",
]


_QUEUE_COLUMNS = ("appservice_id, cursor, txn_prefix, txn_seq, txn_upto, txn_content, failures, last_ok_ts,"
                  " last_error, last_error_ts, sent_txns, sent_events")  # fmt: skip


def _queue_row(r: tuple[Any, ...]) -> AppServiceQueueRow:
    return AppServiceQueueRow(str(r[0]), int(r[1]), str(r[2]), int(r[3]), r[4], json.loads(r[5]) if r[5] else None,
                    int(r[6]), r[7], r[8], r[9], int(r[10]), int(r[11]))  # fmt: skip


class AppServiceTables:
    """Reads and writes of the push queue, on the gateway's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

        def create(c: sqlite3.Connection) -> None:
            for statement in APPSERVICE_SCHEMA:  # one at a time: executescript would commit the writer's transaction
                c.execute(statement)

        self.db.write_sync(create)

    # ------------------------------------------------------------- queue rows

    def queues(self) -> dict[str, AppServiceQueueRow]:
        """Every bridge's row, by appservice ID."""
        return {row.appservice_id: row for row in map(_queue_row, self.db.query(
            f"SELECT {_QUEUE_COLUMNS} FROM appservice_queue"))}  # fmt: skip

    async def add_queue(self, appservice_id: str, cursor: int, txn_prefix: str) -> AppServiceQueueRow:
        """Start delivering to a bridge from stream position ``cursor`` on; the row (the existing one if known)."""

        def fn(c: sqlite3.Connection) -> AppServiceQueueRow:
            c.execute("INSERT INTO appservice_queue (appservice_id, cursor, txn_prefix, txn_seq) VALUES (?, ?, ?, 0)"
                      " ON CONFLICT DO NOTHING", (appservice_id, cursor, txn_prefix))  # fmt: skip
            return _queue_row(c.execute(f"SELECT {_QUEUE_COLUMNS} FROM appservice_queue WHERE appservice_id = ?",
                                        (appservice_id,)).fetchone())  # fmt: skip

        row: AppServiceQueueRow = await self.db.write(fn)
        return row

    async def move_cursor(self, appservice_id: str, cursor: int) -> None:
        """Nothing the bridge wants lies up to ``cursor``: skip past it (no transaction)."""
        await self.db.write(lambda c: c.execute(
            "UPDATE appservice_queue SET cursor = MAX(cursor, ?) WHERE appservice_id = ?", (cursor, appservice_id)))

    async def begin_transaction(self, appservice_id: str, txn_seq: int, upto: int, content: dict[str, Any]) -> None:
        """Record the transaction about to be sent first: its number, the position it covers, what it holds."""
        text = json.dumps(content, separators=(",", ":"))
        await self.db.write(lambda c: c.execute(
            "UPDATE appservice_queue SET txn_seq = ?, txn_upto = ?, txn_content = ? WHERE appservice_id = ?",
            (txn_seq, upto, text, appservice_id)))  # fmt: skip

    async def end_transaction(self, appservice_id: str, upto: int, ts: int, events: int,
                              to_device: list[int]) -> None:  # fmt: skip
        """The bridge accepted the transaction: the cursor moves to ``upto`` and the to-device messages it
        carried (their stream positions) are gone from the inbox, in one write."""

        def fn(c: sqlite3.Connection) -> None:
            c.execute("UPDATE appservice_queue SET cursor = MAX(cursor, ?), txn_upto = NULL, txn_content = NULL,"
                      " failures = 0, last_ok_ts = ?, sent_txns = sent_txns + 1, sent_events = sent_events + ?"
                      " WHERE appservice_id = ?", (upto, ts, events, appservice_id))  # fmt: skip
            for start in range(0, len(to_device), 500):
                part = to_device[start:start + 500]
                c.execute(f"DELETE FROM to_device_inbox WHERE stream IN ({','.join('?' * len(part))})", part)

        await self.db.write(fn)

    async def count_failure(self, appservice_id: str, error: str, ts: int) -> None:
        """One more failed attempt, and why (kept for ``lowband appservice``)."""
        await self.db.write(lambda c: c.execute(
            "UPDATE appservice_queue SET failures = failures + 1, last_error = ?, last_error_ts = ?"
            " WHERE appservice_id = ?", (error[:500], ts, appservice_id)))  # fmt: skip

    # ------------------------------------------------------------- the stream

    def timeline_after(self, cursor: int, upto: int, limit: int) -> list[TimelineRow]:
        """Timeline events with cursor < stream <= upto, oldest first, at most ``limit``.

        Outliers, soft-failed and rejected events are not in the timeline and never listed. ``stream`` is the
        table's rowid: one range scan.
        """
        rows = self.db.query(
            f"SELECT {TIMELINE_COLUMNS} FROM events WHERE stream > ? AND stream <= ? AND rejected IS NULL"
            " AND outlier = 0 AND soft_failed = 0 ORDER BY stream LIMIT ?", (cursor, upto, limit))  # fmt: skip
        return [TimelineRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], str(r[5]), r[6]) for r in rows]

    def to_device_after(self, cursor: int, upto: int, limit: int) -> list[tuple[int, str, str]]:
        """(stream, user_id, device_id) of waiting to-device messages with cursor < stream <= upto, oldest first."""
        rows = self.db.query("SELECT stream, user_id, device_id FROM to_device_inbox WHERE stream > ? AND stream <= ?"
                             " ORDER BY stream LIMIT ?", (cursor, upto, limit))  # fmt: skip
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def to_device_at(self, positions: list[int]) -> list[dict[str, Any]]:
        """The to-device messages still waiting at ``positions``, oldest first, as MSC2409 pushes them."""
        found: list[tuple[int, dict[str, Any]]] = []
        for start in range(0, len(positions), 500):
            part = positions[start:start + 500]
            rows = self.db.query("SELECT stream, user_id, device_id, sender, type, content FROM to_device_inbox"
                                 f" WHERE stream IN ({','.join('?' * len(part))})", tuple(part))  # fmt: skip
            found += [(int(r[0]), {"type": r[4], "sender": r[3], "to_user_id": r[1], "to_device_id": r[2],
                                   "content": json.loads(r[5])}) for r in rows]  # fmt: skip
        return [message for _, message in sorted(found, key=lambda item: item[0])]


# ----------------------------------------------------------------- read-only


@dataclass(frozen=True)
class QueueStatus:
    """What ``lowband appservice`` shows of one bridge's queue, read from another process."""

    row: AppServiceQueueRow
    #: timeline events after the cursor not yet looked at (some may not concern the bridge)
    events_behind: int
    #: events in the transaction in flight
    in_flight_events: int


def read_queue_status(conn: Any) -> tuple[int, dict[str, QueueStatus]]:
    """(the newest timeline position, each bridge's queue by ID) of a gateway's database, on a read-only
    connection to it (``app.open_reader``: sqlite3's or PostgreSQL's, closed here).

    A database the gateway never pushed from has no rows (an empty dict). sqlite3.OperationalError when the
    file is missing or not a database.
    """
    try:
        head_row = conn.execute("SELECT MAX(stream) FROM events").fetchone()
        head = int(head_row[0]) if head_row and head_row[0] is not None else 0
        try:
            rows = [_queue_row(r) for r in conn.execute(f"SELECT {_QUEUE_COLUMNS} FROM appservice_queue")]
        except sqlite3.OperationalError:  # a gateway that never ran with a bridge has no such table
            return head, {}
        found = {}
        for row in rows:
            behind = conn.execute("SELECT COUNT(*) FROM events WHERE stream > ? AND rejected IS NULL AND outlier = 0"
                                  " AND soft_failed = 0", (row.cursor,)).fetchone()[0]  # fmt: skip
            in_flight = len((row.txn_content or {}).get("events", []))
            found[row.appservice_id] = QueueStatus(row, int(behind), in_flight)
        return head, found
    finally:
        conn.close()
