"""Retention purges (MSC1763) in the SQLite file: expired history deleted with everything derived from it.

What one purge of a room deletes, in one transaction:

* up to ``limit`` of its **non-state** events (``state_key IS NULL``) whose
  ``origin_server_ts`` is below the cutoff, oldest first, except the events
  the caller keeps (the room's forward extremities: the next event's
  ``prev_events`` must name events this server holds, so the room goes on
  and federates). State events stay: they are the room's state and the
  auth chain of every later event; state groups are untouched;
* through the ``events`` triggers of :mod:`.relations` and :mod:`.search`:
  each event's ``event_relations`` row (as a child) and its full-text entry;
* ``push_notifications`` rows of the deleted events (unread counts drop them);
* ``event_threads``: a thread whose root is gone is dropped; one whose
  latest reply is gone points at its latest remaining reply, or is dropped;
* the room's row in ``retention_purges`` (position and cutoff of its last
  purge, what ``/sync`` tells clients, see ``homeserver/retention_job.py``).

Left as they are, on purpose: read receipts (a user's marker, whatever it
points at; unread counts skip receipts on events no longer stored),
``redacted_by`` of a kept event whose redaction went (it stays redacted),
relations whose parent went (the child is a live event), and
``federation_log`` (positions; the sender skips events it no longer has).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from lowband.gateway.store.sqlite.database import Database
from lowband.gateway.store.sqlite.schema import ROOM_NID

RETENTION_SCHEMA = [
    ("CREATE TABLE IF NOT EXISTS retention_purges (room_id TEXT PRIMARY KEY, stream INTEGER NOT NULL,"
     " before_ts INTEGER NOT NULL) WITHOUT ROWID"),
]
_CHUNK = 500


class RetentionTables:
    """Purges and their record on the gateway's database; the record is kept in memory too (one row a room)."""

    def __init__(self, db: Database) -> None:
        self.db = db

        def create(c: sqlite3.Connection) -> None:
            for statement in RETENTION_SCHEMA:
                c.execute(statement)

        db.write_sync(create)
        rows = db.query("SELECT room_id, stream, before_ts FROM retention_purges")
        self._last: dict[str, tuple[int, int]] = {str(r[0]): (int(r[1]), int(r[2])) for r in rows}

    def candidates(self, room_id: str, before_ts: int, keep: set[str], limit: int) -> list[tuple[int, str]]:
        """(stream, event_id) of up to ``limit`` expired non-state events of the room not in ``keep``, oldest
        first (one range of the ``events_room_nid_ts`` index)."""
        rows = self.db.query(
            f"SELECT stream, event_id FROM events WHERE room_nid = {ROOM_NID} AND origin_server_ts < ? AND state_key IS NULL"
            " ORDER BY origin_server_ts, stream LIMIT ?",
            (room_id, before_ts, limit + len(keep)),
        )
        return [(int(r[0]), str(r[1])) for r in rows if r[1] not in keep][:limit]

    def purge_job(self, room_id: str, before_ts: int, keep: set[str], limit: int,
                  position: int) -> Any:  # fmt: skip
        """The write that purges (see the module rules) and records the purge at ``position``; it returns the
        deleted event IDs, oldest first (candidates are chosen again inside the transaction)."""

        def job(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                f"SELECT stream, event_id FROM events WHERE room_nid = {ROOM_NID} AND origin_server_ts < ? AND state_key IS NULL"
                " ORDER BY origin_server_ts, stream LIMIT ?",
                (room_id, before_ts, limit + len(keep)),
            ).fetchall()
            picked = [(int(r[0]), str(r[1])) for r in rows if r[1] not in keep][:limit]
            for start in range(0, len(picked), _CHUNK):
                part = picked[start:start + _CHUNK]
                streams = tuple(p[0] for p in part)
                ids = tuple(p[1] for p in part)
                marks = ",".join("?" * len(part))
                c.execute(f"DELETE FROM events WHERE stream IN ({marks})", streams)
                c.execute(f"DELETE FROM push_notifications WHERE room_id = ? AND event_id IN ({marks})",
                          (room_id, *ids))  # fmt: skip
                c.execute(f"DELETE FROM event_threads WHERE room_id = ? AND root_id IN ({marks})", (room_id, *ids))
                # a thread whose latest reply went: its latest remaining reply (the relation rows of the deleted
                # replies are already gone, by trigger), or no thread at all
                latest = ("(SELECT MAX(child_stream) FROM event_relations r WHERE r.parent_id = event_threads.root_id"
                          " AND r.rel_type = 'm.thread')")  # fmt: skip
                c.execute(f"DELETE FROM event_threads WHERE room_id = ? AND latest_stream IN ({marks})"
                          f" AND {latest} IS NULL", (room_id, *streams))  # fmt: skip
                c.execute(f"UPDATE event_threads SET latest_stream = {latest} WHERE room_id = ?"
                          f" AND latest_stream IN ({marks})", (room_id, *streams))  # fmt: skip
            if picked:
                c.execute("INSERT INTO retention_purges VALUES (?, ?, ?) ON CONFLICT (room_id) DO UPDATE SET"
                          " stream = excluded.stream, before_ts = MAX(retention_purges.before_ts, excluded.before_ts)",
                          (room_id, position, before_ts))  # fmt: skip
            return [p[1] for p in picked]

        return job

    def noted(self, room_id: str, position: int, before_ts: int) -> None:
        """Remember a committed purge (called after its write)."""
        old = self._last.get(room_id)
        self._last[room_id] = (position, max(before_ts, old[1]) if old else before_ts)

    def last_purge(self, room_id: str) -> tuple[int, int] | None:
        """(stream position, cutoff ts) of the room's last purge that deleted something, or None (no I/O)."""
        return self._last.get(room_id)
