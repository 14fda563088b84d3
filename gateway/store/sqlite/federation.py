"""Federation's tables in the SQLite file: other servers' keys.

Kept apart from the room tables: a server's keys are cached per key ID with
the document they came in (a notary serves that document again) and how
long the key may verify signatures.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from lowband.gateway.store.sqlite.database import Database

FEDERATION_SCHEMA = [
    """
CREATE TABLE IF NOT EXISTS server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key BLOB NOT NULL,
    valid_until_ts INTEGER NOT NULL,  -- until when it may verify (capped, or expired_ts for an old key)
    fetched_ts INTEGER NOT NULL,
    document TEXT NOT NULL,           -- the key document it came in, as received
    PRIMARY KEY (server_name, key_id)
) WITHOUT ROWID
""",
]


class FederationTables:
    """Reads and writes of federation's tables, on the gateway's database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # one statement per execute: executescript would commit the writer's open transaction
        for statement in FEDERATION_SCHEMA:
            self.db.write_sync(lambda c, s=statement: c.execute(s))

    async def save_server_keys(self, server_name: str, fetched_ts: int, document: dict[str, Any],
                               keys: list[tuple[str, bytes, int]]) -> None:  # fmt: skip
        """Remember ``keys`` ((key_id, key, valid_until_ts)) of ``server_name`` from ``document``.

        A key already known keeps the later of the two validities.
        """
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))

        def fn(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT INTO server_keys VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " valid_until_ts = MAX(valid_until_ts, excluded.valid_until_ts), fetched_ts = excluded.fetched_ts,"
                " document = excluded.document",
                [(server_name, key_id, key, until, fetched_ts, text) for key_id, key, until in keys],
            )

        await self.db.write(fn)

    def server_keys(self, server_name: str) -> list[tuple[str, bytes, int, int, dict[str, Any]]]:
        """Every cached key of ``server_name``: (key_id, key, valid_until_ts, fetched_ts, document)."""
        rows = self.db.query(
            "SELECT key_id, verify_key, valid_until_ts, fetched_ts, document FROM server_keys WHERE server_name = ?",
            (server_name,),
        )
        return [(r[0], bytes(r[1]), int(r[2]), int(r[3]), json.loads(r[4])) for r in rows]
