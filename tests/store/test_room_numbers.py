"""Room numbers (schema migration 8): the room indexes on events hold a number per room instead of the room ID.
A store from before is upgraded (every room numbered, every event given its room's number, the old indexes
replaced); reads by room go through the new indexes; a new room is numbered with its first event. On SQLite and
on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_schema import fresh_schema, upgraded_postgres, upgraded_sqlite

ROOMS = ("!north:x", "!south:x")
BIG = 10**9


def _make_old(c: Any, placeholder: str = "?") -> None:
    """Back to the shape before migration 8, holding 40 events of two rooms, interleaved (even streams in the
    first room, odd in the second)."""
    for index in ("events_room_nid_stream", "events_room_nid_ts"):
        c.execute(f"DROP INDEX IF EXISTS {index}")
    c.execute("ALTER TABLE events DROP COLUMN room_nid")
    c.execute("DELETE FROM room_numbers")
    c.execute("CREATE INDEX events_room_stream ON events(room_id, stream)")
    c.execute("CREATE INDEX events_room_ts ON events(room_id, origin_server_ts)")
    c.execute("DELETE FROM schema_migrations WHERE version = 8")
    for stream in range(1, 41):
        room = ROOMS[stream % 2]
        pdu = json.dumps({"type": "m.room.message", "room_id": room, "sender": "@a:x", "depth": stream,
                          "content": {"body": str(stream)}, "origin_server_ts": 1000 * stream})  # fmt: skip
        values = ", ".join([placeholder] * 7)
        c.execute("INSERT INTO events (stream, event_id, room_id, type, sender, depth, origin_server_ts, pdu)"
                  f" VALUES ({values}, {placeholder})",
                  (stream, f"$e{stream}", room, "m.room.message", "@a:x", stream, 1000 * stream,
                   pdu if placeholder == "?" else pdu.encode()))  # fmt: skip


def _ids(rows: list[Any]) -> list[str]:
    return [row["event"].event_id for row in rows]


def _check_upgraded(store: Any) -> None:
    numbers = dict(store.db.query("SELECT room_id, nid FROM room_numbers"))
    assert set(numbers) == set(ROOMS) and len(set(numbers.values())) == 2
    by_room = store.db.query("SELECT room_id, COUNT(*) FROM events GROUP BY room_id, room_nid ORDER BY room_id")
    assert [tuple(r) for r in by_room] == [("!north:x", 20), ("!south:x", 20)]  # one number per room
    assert store.db.query_one("SELECT COUNT(*) FROM events e JOIN room_numbers n ON n.nid = e.room_nid"
                              " WHERE n.room_id <> e.room_id")[0] == 0  # fmt: skip
    north = store.room_events("!north:x", after=0, upto=BIG, limit=3, backwards=True)
    assert _ids(north) == ["$e40", "$e38", "$e36"]
    assert _ids(store.room_events("!south:x", after=30, upto=36, limit=10, backwards=False)) == ["$e31", "$e33", "$e35"]
    assert store.room_events("!nowhere:x", after=0, upto=BIG, limit=10, backwards=True) == []
    near = store.room_events_near_ts("!south:x", 7500, forwards=True, upto=BIG, limit=2)
    assert _ids(near) == ["$e9", "$e11"]
    assert _ids(store.room_events_near_ts("!north:x", 7500, forwards=False, upto=BIG, limit=1)) == ["$e6"]
    versions = {row[0] for row in store.db.query("SELECT version FROM schema_migrations")}
    assert 8 in versions


@pytest.mark.sqlite_only
def test_a_sqlite_store_from_before_room_numbers_is_upgraded_and_reads_through_the_new_indexes(tmp_path: Path) -> None:
    from lowband.gateway.store.sqlite.schema import ROOM_NID

    with upgraded_sqlite(tmp_path / "lowband.db", _make_old) as store:
        _check_upgraded(store)
        indexes = {row[1] for row in store.db.query("PRAGMA index_list(events)")}
        assert {"events_room_nid_stream", "events_room_nid_ts"} <= indexes
        assert not {"events_room_stream", "events_room_ts"} & indexes
        plan = " ".join(str(row[3]) for row in store.db.query(
            f"EXPLAIN QUERY PLAN SELECT stream FROM events WHERE room_nid = {ROOM_NID} AND stream > ?"
            " ORDER BY stream DESC LIMIT 5", ("!north:x", 0)))  # fmt: skip
        assert "USING INDEX events_room_nid_stream" in plan or "USING COVERING INDEX events_room_nid_stream" in plan
        assert "TEMP B-TREE" not in plan  # no sort: the index gives the order
        plan = " ".join(str(row[3]) for row in store.db.query(
            f"EXPLAIN QUERY PLAN SELECT stream FROM events WHERE room_nid = {ROOM_NID} AND origin_server_ts < ?"
            " ORDER BY origin_server_ts LIMIT 5", ("!north:x", 0)))  # fmt: skip
        assert "events_room_nid_ts" in plan and "TEMP B-TREE" not in plan


@pytest.fixture
def pg_schema() -> Iterator[str]:
    yield from fresh_schema("roomnid")


def test_a_postgres_store_from_before_room_numbers_is_upgraded(pg_schema: str) -> None:
    with upgraded_postgres(pg_schema, lambda conn: _make_old(conn, "%s")) as store:
        _check_upgraded(store)
        indexes = {row[0] for row in store.db.query("SELECT indexname FROM pg_indexes WHERE schemaname = ?"
                                                    " AND tablename = 'events'", (pg_schema,))}  # fmt: skip
        assert {"events_room_nid_stream", "events_room_nid_ts"} <= indexes
        assert not {"events_room_stream", "events_room_ts"} & indexes
