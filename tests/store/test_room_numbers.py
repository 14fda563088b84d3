"""Room numbers (schema migration 8): the room indexes on events hold a number per room instead of the room ID.
A store from before is upgraded (every room numbered, every event given its room's number, the old indexes
replaced); reads by room go through the new indexes; a new room is numbered with its first event. Migration 9:
the events rows no longer hold the room ID, only the number (an event the writer left without one is numbered
first), and the relations trigger reads the room through it. On SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_schema import fresh_schema, upgraded_postgres, upgraded_sqlite, with_room_ids

ROOMS = ("!north:x", "!south:x")
BIG = 10**9


def _make_old(c: Any, placeholder: str = "?") -> None:
    """Back to the shape before migration 8, holding 40 events of two rooms, interleaved (even streams in the
    first room, odd in the second)."""
    with_room_ids(c)
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
    by_room = store.db.query("SELECT n.room_id, COUNT(*) FROM events e JOIN room_numbers n ON n.nid = e.room_nid"
                             " GROUP BY n.room_id ORDER BY n.room_id")  # fmt: skip
    assert [tuple(r) for r in by_room] == [("!north:x", 20), ("!south:x", 20)]  # every event numbered
    assert "room_id" not in {row[1] for row in store.db.query("PRAGMA table_info(events)")}  # migration 9
    north = store.room_events("!north:x", after=0, upto=BIG, limit=3, backwards=True)
    assert _ids(north) == ["$e40", "$e38", "$e36"]
    assert _ids(store.room_events("!south:x", after=30, upto=36, limit=10, backwards=False)) == ["$e31", "$e33", "$e35"]
    assert store.room_events("!nowhere:x", after=0, upto=BIG, limit=10, backwards=True) == []
    near = store.room_events_near_ts("!south:x", 7500, forwards=True, upto=BIG, limit=2)
    assert _ids(near) == ["$e9", "$e11"]
    assert _ids(store.room_events_near_ts("!north:x", 7500, forwards=False, upto=BIG, limit=1)) == ["$e6"]
    versions = {row[0] for row in store.db.query("SELECT version FROM schema_migrations")}
    assert {8, 9} <= versions


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


def _make_v8(c: Any, placeholder: str = "?") -> None:
    """The shape before migration 9 (the room ID in each row beside its number), holding the same 40 events; the
    second room's events left without a number, as no writer since migration 8 leaves one."""
    with_room_ids(c)
    for stream in range(1, 41):
        room = ROOMS[stream % 2]
        pdu = json.dumps({"type": "m.room.message", "room_id": room, "sender": "@a:x", "depth": stream,
                          "content": {"body": str(stream)}, "origin_server_ts": 1000 * stream})  # fmt: skip
        p = placeholder
        c.execute(f"INSERT INTO room_numbers (room_id) SELECT {p} WHERE NOT EXISTS (SELECT 1 FROM room_numbers"
                  f" WHERE room_id = {p})", (room, room))  # fmt: skip
        c.execute("INSERT INTO events (stream, event_id, room_id, room_nid, type, sender, depth, origin_server_ts, pdu)"
                  f" VALUES ({p}, {p}, {p}, (SELECT nid FROM room_numbers WHERE room_id = {p}), {p}, {p}, {p}, {p}, {p})",
                  (stream, f"$e{stream}", room, room, "m.room.message", "@a:x", stream, 1000 * stream,
                   pdu if p == "?" else pdu.encode()))  # fmt: skip
    c.execute("UPDATE events SET room_nid = NULL WHERE room_id = '!south:x'")
    c.execute("DELETE FROM room_numbers WHERE room_id = '!south:x'")


def _check_room_id_dropped(store: Any) -> None:
    """Every event read by its room through its number, and the relations trigger made anew: a thread reply
    stored after the upgrade is indexed in its room."""
    from lowband.gateway.store.sqlite.schema import NEW_ROOM_NUMBER, ROOM_NID

    _check_upgraded(store)
    reply = json.dumps({"content": {"body": "r", "m.relates_to": {"rel_type": "m.thread", "event_id": "$e40"}}})

    def write(c: Any) -> None:
        c.execute(NEW_ROOM_NUMBER, ("!north:x", "!north:x"))
        c.execute("INSERT INTO events (stream, event_id, room_nid, type, sender, depth, origin_server_ts, pdu,"
                  f" index_fields) VALUES (41, '$reply', {ROOM_NID}, 'm.room.message', '@a:x', 41, 41000, ?, ?)",
                  ("!north:x", b"{}", reply))  # fmt: skip

    store.db.write_sync(write)
    assert [tuple(r) for r in store.db.query("SELECT room_id, root_id FROM event_threads")] == [("!north:x", "$e40")]
    assert [tuple(r) for r in store.db.query("SELECT room_id FROM event_relations")] == [("!north:x",)]


@pytest.mark.sqlite_only
def test_a_sqlite_store_from_before_migration_9_drops_the_room_id(tmp_path: Path) -> None:
    with upgraded_sqlite(tmp_path / "lowband.db", _make_v8) as store:
        _check_room_id_dropped(store)


def test_a_postgres_store_from_before_migration_9_drops_the_room_id(pg_schema: str) -> None:
    with upgraded_postgres(pg_schema, lambda conn: _make_v8(conn, "%s")) as store:
        _check_room_id_dropped(store)
