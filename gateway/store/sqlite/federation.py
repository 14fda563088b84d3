"""Federation's tables in the SQLite file: other servers' keys, the outbound log, destinations.

* ``server_keys``: a server's keys, cached per key ID with the document they
  came in (a notary serves that document again) and how long the key may
  verify signatures;
* ``federation_log``: the stream position of every event this server must
  send out (its own, and joins/leaves/knocks it accepted as the resident
  server), written in the same transaction as the event — the durable
  backlog every destination reads with its own cursor;
* ``federation_destinations``: per peer, the cursor in that log, the
  transaction in flight (its ID, kept across retries and restarts, and the
  log position it covers) and the retry bookkeeping;
* ``federation_edu_outbox``: EDUs that must survive a restart (to-device
  messages), per destination, until the peer accepts a transaction holding them;
* ``federation_received_txns``: transactions already handled per origin, so
  a retried transaction is answered without being processed twice;
* ``federation_invites`` and ``federation_knocks``: our users' invites to,
  and knocks on, rooms this server does not hold, with the room's stripped
  state to show them (and, for a knock, the servers it went through, to
  rescind it through them).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from lowband.gateway.store.sqlite.database import Database

FEDERATION_SCHEMA = [
    """
CREATE TABLE IF NOT EXISTS federation_edu_outbox (
    id INTEGER PRIMARY KEY,           -- order of sending
    destination TEXT NOT NULL,
    edu_type TEXT NOT NULL,
    content TEXT NOT NULL             -- JSON
)
""",
    "CREATE INDEX IF NOT EXISTS federation_edu_outbox_dest ON federation_edu_outbox(destination, id)",
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
    """
CREATE TABLE IF NOT EXISTS federation_log (
    stream INTEGER PRIMARY KEY,       -- the event's stream position
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL
)
""",
    """
CREATE TABLE IF NOT EXISTS federation_destinations (
    destination TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,          -- everything in federation_log up to here was delivered
    txn_seq INTEGER NOT NULL,         -- the last transaction number used
    txn_upto INTEGER,                 -- the log position the transaction in flight covers, NULL when none
    failures INTEGER NOT NULL DEFAULT 0,
    last_ok_ts INTEGER
) WITHOUT ROWID
""",
    """
CREATE TABLE IF NOT EXISTS federation_received_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (origin, txn_id)
) WITHOUT ROWID
""",
    "CREATE INDEX IF NOT EXISTS federation_received_txns_ts ON federation_received_txns(ts)",
    """
CREATE TABLE IF NOT EXISTS federation_invites (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_version TEXT NOT NULL,
    stripped_state TEXT NOT NULL,     -- JSON list the inviting server sent (invite_room_state)
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID
""",
    """
CREATE TABLE IF NOT EXISTS federation_knocks (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_version TEXT NOT NULL,
    stripped_state TEXT NOT NULL,     -- JSON list of client stripped state (from knock_room_state)
    servers TEXT NOT NULL,            -- JSON list: the resident server that took the knock first
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID
""",
]


class FederationTables:
    """Reads and writes of federation's tables, on the gateway's database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # one statement per execute: executescript would commit the writer's open transaction
        def create(c: sqlite3.Connection) -> None:
            for statement in FEDERATION_SCHEMA:
                c.execute(statement)

        self.db.write_sync(create)

    async def save_server_keys(self, server_name: str, fetched_ts: int, document: dict[str, Any],
                               keys: list[tuple[str, bytes, int]]) -> None:  # fmt: skip
        """Remember ``keys`` ((key_id, key, valid_until_ts)) of ``server_name`` from ``document``.

        A key already known keeps the later of the two validities.
        """
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))

        def fn(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT INTO server_keys VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (server_name, key_id) DO UPDATE SET"
                " valid_until_ts = MAX(server_keys.valid_until_ts, excluded.valid_until_ts), fetched_ts = excluded.fetched_ts,"
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

    # ------------------------------------------------------------- outbound

    def log_after(self, cursor: int, upto: int, limit: int) -> list[tuple[int, str, str]]:
        """(stream, event_id, room_id) of logged events with cursor < stream <= upto, oldest first."""
        rows = self.db.query(
            "SELECT stream, event_id, room_id FROM federation_log WHERE stream > ? AND stream <= ?"
            " ORDER BY stream LIMIT ?",
            (cursor, upto, limit),
        )
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    @staticmethod
    def log_job(stream: int, event_id: str, room_id: str) -> Callable[[sqlite3.Connection], None]:
        """The write that logs one event for sending, to run in the event's own transaction."""

        def job(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO federation_log VALUES (?, ?, ?)", (stream, event_id, room_id))

        return job

    def log_head(self) -> int:
        """The last logged stream position (0 when the log is empty)."""
        row = self.db.query_one("SELECT MAX(stream) FROM federation_log")
        return int(row[0]) if row and row[0] is not None else 0

    def destinations(self) -> list[tuple[str, int, int, int | None]]:
        """Every known destination: (name, cursor, txn_seq, txn_upto)."""
        rows = self.db.query("SELECT destination, cursor, txn_seq, txn_upto FROM federation_destinations")
        return [(str(r[0]), int(r[1]), int(r[2]), r[3]) for r in rows]

    async def add_destination(self, destination: str, cursor: int) -> None:
        """Start delivering to ``destination`` from log position ``cursor`` on (no change if known)."""
        await self.db.write(lambda c: c.execute(
            "INSERT INTO federation_destinations (destination, cursor, txn_seq) VALUES (?, ?, 0)"
            " ON CONFLICT DO NOTHING", (destination, cursor)))  # fmt: skip

    async def begin_transaction(self, destination: str, txn_seq: int, upto: int) -> None:
        """Record the transaction about to be sent (its number and the log position it covers)."""
        await self.db.write(lambda c: c.execute(
            "UPDATE federation_destinations SET txn_seq = ?, txn_upto = ? WHERE destination = ?",
            (txn_seq, upto, destination)))  # fmt: skip

    async def end_transaction(self, destination: str, cursor: int, ts: int) -> None:
        """The transaction was accepted: the cursor moves to ``cursor``, nothing is in flight."""
        await self.db.write(lambda c: c.execute(
            "UPDATE federation_destinations SET cursor = ?, txn_upto = NULL, failures = 0, last_ok_ts = ?"
            " WHERE destination = ?", (cursor, ts, destination)))  # fmt: skip

    async def add_outbox(self, destination: str, edus: list[tuple[str, dict[str, Any]]]) -> None:
        """Keep EDUs that must reach ``destination`` even across a restart (to-device messages); committed on return."""
        rows = [(destination, kind, json.dumps(content, ensure_ascii=False, separators=(",", ":"))) for kind, content in edus]
        await self.db.write(lambda c: c.executemany(
            "INSERT INTO federation_edu_outbox (destination, edu_type, content) VALUES (?, ?, ?)", rows))

    def outbox(self, destination: str, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """The oldest kept EDUs for ``destination``: (id, edu_type, content)."""
        rows = self.db.query("SELECT id, edu_type, content FROM federation_edu_outbox WHERE destination = ? "
                             "ORDER BY id LIMIT ?", (destination, limit))  # fmt: skip
        return [(int(r[0]), str(r[1]), json.loads(r[2])) for r in rows]

    def outbox_destinations(self) -> list[str]:
        """Destinations with kept EDUs waiting."""
        return [str(r[0]) for r in self.db.query("SELECT DISTINCT destination FROM federation_edu_outbox")]

    async def drop_outbox(self, ids: list[int]) -> None:
        """The peer accepted these kept EDUs: forget them."""
        if ids:
            await self.db.write(lambda c: c.executemany("DELETE FROM federation_edu_outbox WHERE id = ?",
                                                        [(i,) for i in ids]))  # fmt: skip

    async def count_failure(self, destination: str) -> None:
        """One more failed attempt (kept for the status page and the logs)."""
        await self.db.write(lambda c: c.execute(
            "UPDATE federation_destinations SET failures = failures + 1 WHERE destination = ?", (destination,)))

    # ------------------------------------------------------------- inbound

    def received_txn(self, origin: str, txn_id: str) -> dict[str, Any] | None:
        """The answer already given to transaction ``txn_id`` of ``origin``, or None."""
        row = self.db.query_one("SELECT response FROM federation_received_txns WHERE origin = ? AND txn_id = ?",
                                (origin, txn_id))  # fmt: skip
        return json.loads(row[0]) if row else None

    async def remember_txn(self, origin: str, txn_id: str, response: dict[str, Any], ts: int) -> None:
        """Keep the answer to a handled transaction (a day's worth is kept; older ones are dropped)."""
        text = json.dumps(response, separators=(",", ":"))

        def fn(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO federation_received_txns VALUES (?, ?, ?, ?) ON CONFLICT (origin, txn_id)"
                      " DO UPDATE SET response = excluded.response, ts = excluded.ts", (origin, txn_id, text, ts))
            c.execute("DELETE FROM federation_received_txns WHERE ts < ?", (ts - 24 * 3600 * 1000,))

        await self.db.write(fn)

    # ------------------------------------------------------------- invites

    def invite_job(self, room_id: str, user_id: str, event_id: str, room_version: str,
                   stripped_state: list[Any]) -> Callable[[sqlite3.Connection], None]:  # fmt: skip
        """The write that keeps an invite to a room this server does not hold (with the event's own write)."""
        text = json.dumps(stripped_state, ensure_ascii=False, separators=(",", ":"))

        def job(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO federation_invites VALUES (?, ?, ?, ?, ?) ON CONFLICT (room_id, user_id) DO UPDATE"
                      " SET event_id = excluded.event_id, room_version = excluded.room_version,"
                      " stripped_state = excluded.stripped_state",
                      (room_id, user_id, event_id, room_version, text))  # fmt: skip

        return job

    async def save_invite(self, room_id: str, user_id: str, event_id: str, room_version: str,
                          stripped_state: list[Any]) -> None:  # fmt: skip
        """Keep an invite to a room this server does not hold, with the state the inviter showed."""
        await self.db.write(self.invite_job(room_id, user_id, event_id, room_version, stripped_state))

    def invite(self, room_id: str, user_id: str) -> tuple[str, str, list[Any]] | None:
        """(event_id, room_version, stripped state) of such an invite, or None."""
        row = self.db.query_one("SELECT event_id, room_version, stripped_state FROM federation_invites"
                                " WHERE room_id = ? AND user_id = ?", (room_id, user_id))  # fmt: skip
        return (str(row[0]), str(row[1]), json.loads(row[2])) if row else None

    # ------------------------------------------------------------- knocks

    async def save_knock(self, room_id: str, user_id: str, event_id: str, room_version: str,
                         stripped_state: list[Any], servers: list[str]) -> None:  # fmt: skip
        """Keep our user's knock on a room this server does not hold (the latest knock replaces one before)."""
        state = json.dumps(stripped_state, ensure_ascii=False, separators=(",", ":"))
        via = json.dumps(servers, ensure_ascii=False, separators=(",", ":"))

        def job(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO federation_knocks VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (room_id, user_id) DO UPDATE"
                      " SET event_id = excluded.event_id, room_version = excluded.room_version,"
                      " stripped_state = excluded.stripped_state, servers = excluded.servers",
                      (room_id, user_id, event_id, room_version, state, via))  # fmt: skip

        await self.db.write(job)

    def knock(self, room_id: str, user_id: str) -> tuple[str, str, list[Any], list[str]] | None:
        """(event_id, room_version, stripped state, servers) of such a knock, or None."""
        row = self.db.query_one("SELECT event_id, room_version, stripped_state, servers FROM federation_knocks"
                                " WHERE room_id = ? AND user_id = ?", (room_id, user_id))  # fmt: skip
        return (str(row[0]), str(row[1]), json.loads(row[2]), json.loads(row[3])) if row else None
