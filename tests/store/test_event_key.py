"""Event IDs unique through a 17-character key on SQLite (schema migration 10, store/sqlite/schema.py EVENT_KEY):
the key is what SQL and Python compute alike, every lookup by event ID reads the index, two IDs sharing a key are
one event only when they are computed IDs, and PostgreSQL keeps its unique index on the whole ID."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_schema import fresh_schema

from lowband.gateway.store.sqlite.schema import (
    BY_EVENT_ID,
    EVENT_KEY,
    NEW_ROOM_NUMBER,
    ROOM_NID,
    by_event_ids,
    event_ids_args,
    event_key,
    same_event,
)

HASHED = "$" + "A" * 16 + "b" * 27  # a room version 3+ ID: "$" and 43 base64 characters
IDS = [
    HASHED,
    "$" + "A" * 16 + "c" * 27,  # another computed ID with the same first 17 characters
    "$" + "A" * 16 + "b" * 26 + ":",  # 44 characters with a ":": not a computed ID, kept whole
    "$abc:example.org",  # room versions 1-2
    "$" + "é" * 43,  # 44 characters, not 44 bytes
    "$short",
]


def test_python_and_sql_give_the_same_key() -> None:
    conn = sqlite3.connect(":memory:")
    for event_id in IDS:
        (sql,) = conn.execute(f"SELECT {EVENT_KEY.format(c='?1')}", (event_id,)).fetchone()
        assert sql == event_key(event_id)
    assert event_key(HASHED) == HASHED[:17] and event_key(IDS[2]) == IDS[2] and event_key(IDS[3]) == IDS[3]


def _insert(c: Any, stream: int, event_id: str) -> None:
    c.execute(NEW_ROOM_NUMBER, ("!r:x", "!r:x"))
    c.execute(f"INSERT INTO events (stream, event_id, room_nid, type, sender, depth, origin_server_ts, pdu)"
              f" VALUES (?, ?, {ROOM_NID}, 'm.room.message', '@a:x', 1, 1, '{{}}')", (stream, event_id, "!r:x"))  # fmt: skip


@pytest.mark.sqlite_only
def test_a_new_sqlite_store_reads_events_by_the_key_index(tmp_path: Path) -> None:
    from lowband.gateway.store.sqlite.store import SQLiteStore

    store = SQLiteStore(tmp_path / "s.db")
    try:
        indexes = {row[1]: row[3] for row in store.db.query("PRAGMA index_list(events)")}
        assert indexes.get("events_event_key") == "c" and "u" not in indexes.values()  # no whole-ID index
        for n, event_id in enumerate([HASHED, IDS[3], IDS[2]], start=1):
            store.db.write_sync(lambda c, n=n, event_id=event_id: _insert(c, n, event_id))
        # the same computed ID again, or another computed one with its key: refused as the same event
        for taken in (HASHED, IDS[1]):
            with pytest.raises(sqlite3.IntegrityError):
                store.db.write_sync(lambda c, taken=taken: _insert(c, 9, taken))
        store.db.write_sync(lambda c: _insert(c, 10, "$" + "A" * 16 + ":b.example"))  # not computed: whole
        assert store.get_event(HASHED) is not None and store.get_event(IDS[1]) is None
        assert set(store.get_events([HASHED, IDS[1], IDS[2], IDS[3]])) == {HASHED, IDS[2], IDS[3]}
        plans = [
            (f"SELECT stream FROM events WHERE {BY_EVENT_ID}", (event_key(HASHED), HASHED)),
            (f"SELECT stream FROM events WHERE {by_event_ids(2)}", event_ids_args([HASHED, IDS[3]])),
            (f"SELECT stream FROM events WHERE {by_event_ids(1)}", event_ids_args([HASHED])),
            (f"DELETE FROM events WHERE {BY_EVENT_ID} AND outlier = 1", (event_key(HASHED), HASHED)),
            (f"UPDATE events SET redacted_by = 'x' WHERE {BY_EVENT_ID} AND room_nid = {ROOM_NID}",
             (event_key(HASHED), HASHED, "!r:x")),
            (f"SELECT e.stream FROM receipts r JOIN events e ON {same_event('e.event_id', 'r.event_id')}", ()),
        ]
        for sql, args in plans:
            plan = " ".join(str(row[3]) for row in store.db.query(f"EXPLAIN QUERY PLAN {sql}", args))
            assert "INDEX events_event_key" in plan, (sql, plan)
    finally:
        store.close()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    yield from fresh_schema("eventkey")


def test_postgres_keeps_the_whole_event_id_unique(pg_schema: str) -> None:
    from pg_schema import POSTGRES_URL

    from lowband.gateway.store.postgres.store import PostgresStore

    store = PostgresStore(POSTGRES_URL, schema=pg_schema)
    try:
        store.db.write_sync(lambda c: _insert(c, 1, HASHED))
        store.db.write_sync(lambda c: _insert(c, 2, IDS[1]))  # the whole ID is unique here, not its key
        with pytest.raises(Exception, match="unique|duplicate"):
            store.db.write_sync(lambda c: _insert(c, 3, HASHED))
        assert set(store.get_events([HASHED, IDS[1]])) == {HASHED, IDS[1]}
        indexes = {row[0] for row in store.db.query("SELECT indexname FROM pg_indexes WHERE schemaname = ?"
                                                    " AND tablename = 'events'", (pg_schema,))}  # fmt: skip
        assert "events_event_id_key" in indexes and "events_event_key" not in indexes
    finally:
        store.close()
