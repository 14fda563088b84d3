"""Presence kept across restarts: one row per user whose presence the gateway tracks.

The homeserver's tracker (``homeserver/presence.py``) holds presence in
memory and hands over what changed in batches (a few seconds apart, and
once more when the gateway stops), so a /sync marking its user active
costs no write of its own. Writes are not synced to disk on their own
(``durable=False``): presence lost to a power cut is a few seconds of
"last active", rebuilt by the next activity.
"""

from __future__ import annotations

from collections.abc import Sequence

from lowband.gateway.store.interfaces import PresenceRecord
from lowband.gateway.store.sqlite.database import Database

PRESENCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS presence (
    user_id TEXT PRIMARY KEY,
    presence TEXT NOT NULL,         -- online, unavailable or offline
    status_msg TEXT,
    last_active_ms INTEGER NOT NULL,
    local INTEGER NOT NULL          -- 1: a user of this server; 0: what another server said of its user
) WITHOUT ROWID
"""


class PresenceTables:
    """Reads and writes of ``presence`` on the gateway's database (a ``PresenceStore``)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.db.write_sync(lambda c: c.execute(PRESENCE_SCHEMA))

    def save(self, records: Sequence[PresenceRecord]) -> None:
        """Queue an upsert of these users' presence in one transaction; returns at once (the store's close
        commits what is queued)."""
        if not records:
            return
        rows = [(r.user_id, r.presence, r.status_msg, r.last_active_ms, int(r.local)) for r in records]
        self.db.submit(lambda c: c.executemany(
            "INSERT INTO presence VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET presence ="
            " excluded.presence, status_msg = excluded.status_msg, last_active_ms = excluded.last_active_ms,"
            " local = excluded.local", rows), durable=False)  # fmt: skip

    def load(self, limit: int) -> list[PresenceRecord]:
        """At most ``limit`` stored records, the most recently active last (the order a tracker keeps them).
        Older rows are deleted (queued), so the table holds at most ``limit`` users plus those written since."""
        bound = max(0, limit)
        self.db.submit(lambda c: c.execute(
            "DELETE FROM presence WHERE user_id NOT IN (SELECT user_id FROM presence ORDER BY last_active_ms DESC,"
            " user_id LIMIT ?)", (bound,)), durable=False)  # fmt: skip
        rows = self.db.query("SELECT user_id, presence, status_msg, last_active_ms, local FROM (SELECT * FROM presence"
                             " ORDER BY last_active_ms DESC, user_id LIMIT ?) ORDER BY last_active_ms, user_id",
                             (bound,))  # fmt: skip
        return [PresenceRecord(str(r[0]), str(r[1]), None if r[2] is None else str(r[2]), int(r[3]), bool(r[4]))
                for r in rows]  # fmt: skip
