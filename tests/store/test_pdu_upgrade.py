"""A store written before compact events (JSON in ``events.pdu``, index triggers reading it) opens, upgraded: its
events read back, stay searchable and related, leave the index when redacted; on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_schema import fresh_schema, upgraded_postgres, with_room_ids

ROOM = "!old:x"
BIG = 10**9


def _old_events() -> list[tuple[int, str, str | None, dict[str, Any]]]:
    """(stream, event ID, state key, content) of the events the old store holds."""
    return [
        (1, "$name", "", {"name": "Lighthouse keepers"}),
        (2, "$msg", None, {"msgtype": "m.text", "body": "the lighthouse lamp is out"}),
        (3, "$reply", None, {"msgtype": "m.text", "body": "fixing it", "m.relates_to": {
            "rel_type": "m.thread", "event_id": "$msg"}}),  # fmt: skip
        (4, "$reading", None, {"msgtype": "m.notice", "body": "lamp 0 W", "org.lowband.senml": []}),
    ]


def _pdu(stream: int, state_key: str | None, content: dict[str, Any]) -> str:
    kind = "m.room.name" if state_key is not None else "m.room.message"
    doc = {"type": kind, "room_id": ROOM, "sender": "@a:x", "content": content, "origin_server_ts": stream,
           "depth": stream}  # fmt: skip
    if state_key is not None:
        doc["state_key"] = state_key
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _insert_old(c: Any, placeholder: str = "?") -> None:
    for stream, event_id, state_key, content in _old_events():
        kind = "m.room.name" if state_key is not None else "m.room.message"
        values = ", ".join([placeholder] * 7)
        c.execute("INSERT INTO events (stream, event_id, room_id, type, state_key, sender, depth, origin_server_ts,"
                  f" pdu) VALUES ({values}, 1, {placeholder})",
                  (stream, event_id, ROOM, kind, state_key, "@a:x", stream, _pdu(stream, state_key, content)))  # fmt: skip


def _check_upgraded(store: Any) -> None:
    """What an upgraded store must do with the old rows."""
    row = store.get_event("$msg")
    assert row is not None and row["event"].pdu["content"]["body"] == "the lighthouse lamp is out"
    found = [h.event_id for h in store.search.matches(["lighthouse"], below=BIG, limit=10)]
    assert found == ["$msg", "$name"]
    assert store.search.matches(["lamp", "0"], below=BIG, limit=10) == []  # the reading: never indexed
    assert store.relations.threads(ROOM, below=None, limit=5, participant=None) == [("$msg", 3)]
    assert [c for c in store.relations.children(ROOM, "$msg", rel_type=None, event_type=None, after=-1, upto=BIG,
                                                backwards=False, limit=10, depth=1)] == ["$reply"]  # fmt: skip
    # a redaction takes it out of search by its old text (a contentless index forgets a row by repeating it)
    store.db.write_sync(lambda c: c.execute("UPDATE events SET redacted_by = '$red' WHERE event_id = '$msg'"))
    assert [h.event_id for h in store.search.matches(["lighthouse"], below=BIG, limit=10)] == ["$name"]
    assert store.search.matches(["lamp"], below=BIG, limit=10) == []
    fields = store.db.query_one("SELECT index_fields FROM events WHERE event_id = '$reading'")[0]
    assert json.loads(fields)["content"]["org.lowband.senml"] == []  # old rows: their whole content


@pytest.mark.sqlite_only
def test_a_sqlite_store_from_before_compact_events_is_upgraded(tmp_path: Path) -> None:
    from lowband.gateway.store.sqlite.relations import RELATIONS_SCHEMA
    from lowband.gateway.store.sqlite.schema import ROOM_OF, SCHEMA
    from lowband.gateway.store.sqlite.search import SEARCH_SCHEMA
    from lowband.gateway.store.sqlite.store import SQLiteStore

    # The schema as it was: pdu TEXT, no index_fields, no dictionaries; triggers reading pdu.
    old = re.sub(r"\n\s*index_fields TEXT[^\n]*", "", SCHEMA).replace("pdu BLOB NOT NULL", "pdu TEXT NOT NULL")
    old = old.replace("soft_failed INTEGER NOT NULL DEFAULT 0,", "soft_failed INTEGER NOT NULL DEFAULT 0")
    # before migrations 9 and 10: the room ID in the row, the event ID unique by the column's own index
    old = old.replace("    event_id TEXT NOT NULL,         -- unique:", "    event_id TEXT NOT NULL UNIQUE, room_id TEXT NOT NULL, --")
    old = re.sub(r"CREATE TABLE IF NOT EXISTS pdu_dictionaries \(.*?\);", "", old, flags=re.DOTALL)
    path = tmp_path / "lowband.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(old)
        for statement in SEARCH_SCHEMA + RELATIONS_SCHEMA:
            # the triggers as they were: reading pdu, and the room ID from the row (before migration 9)
            conn.execute(statement.replace("index_fields", "pdu").replace(ROOM_OF.format(e="NEW"), "NEW.room_id"))
        _insert_old(conn)
        conn.commit()
        assert "index_fields" not in {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    store = SQLiteStore(path)
    try:
        _check_upgraded(store)
        assert isinstance(store.db.query_one("SELECT pdu FROM events WHERE event_id = '$name'")[0], str)  # kept
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("INSERT INTO event_search (event_search) VALUES ('integrity-check')")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    yield from fresh_schema("pduup")


def _back_to_json_pdus(conn: Any) -> None:
    """The PostgreSQL shape before compact events: pdu TEXT, no index_fields; the old rows are indexed by the
    backfill on open."""
    with_room_ids(conn)
    for trigger in ("event_search_insert", "event_search_update", "event_search_delete",
                    "event_relations_insert"):  # fmt: skip
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger} ON events")
    conn.execute("ALTER TABLE events DROP COLUMN index_fields")
    conn.execute("DROP TABLE schema_migrations")  # older stores had none: each migration checks the schema
    conn.execute("ALTER TABLE events ALTER COLUMN pdu TYPE text USING convert_from(pdu, 'UTF8')")
    _insert_old(conn, "%s")
    conn.execute("UPDATE search_backfill SET below = 100")
    conn.execute("UPDATE relations_backfill SET below = 100")


def test_a_postgres_store_from_before_compact_events_is_upgraded(pg_schema: str) -> None:
    with upgraded_postgres(pg_schema, _back_to_json_pdus) as store:
        assert not store.search.older.pending() and not store.relations.older.pending()
        _check_upgraded(store)
        assert bytes(store.db.query_one("SELECT pdu FROM events WHERE event_id = '$name'")[0]).startswith(b"{")
