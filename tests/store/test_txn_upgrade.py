"""A store from before transaction digests (``txn_user``, ``txn_device`` and the whole key in ``txn_id``, under a
unique index on the three) opens upgraded (schema migration 7): every send is still found by its transaction,
the client's own ID is kept for ``unsigned.transaction_id``, the old columns and index are gone; on SQLite and on
PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_schema import fresh_schema, upgraded_postgres, upgraded_sqlite, with_room_ids

from lowband.gateway.store.txn_keys import TxnMark, is_senders, transaction_key, txn_digest

ROOM = "!old:x"

#: (stream, event ID, type, user, device, stored key): a client's send, an older JSON key, an MQTT key, a redaction
SENT = [
    (1, "$client", "m.room.message", "@a:x", "PHONE", transaction_key(ROOM, "m.room.message", "m17.3")),
    (2, "$legacy", "m.room.message", "@a:x", "PHONE", json.dumps(["send", ROOM, "m.room.message", "old-1"])),
    (3, "$mqtt", "m.room.message", "@mq:x", "mqtt", "p." + "ab" * 32),
    (4, "$redact", "m.room.redaction", "@a:x", "LAPTOP", transaction_key(ROOM, "m.room.redaction", "r1")),
]


def _insert_old(c: Any, placeholder: str = "?") -> None:
    with_room_ids(c)
    c.execute("DROP INDEX IF EXISTS events_txn_hash")
    c.execute("ALTER TABLE events ADD COLUMN txn_user TEXT")
    c.execute("ALTER TABLE events ADD COLUMN txn_device TEXT")
    c.execute("ALTER TABLE events DROP COLUMN txn_hash")
    c.execute("CREATE UNIQUE INDEX events_txn ON events(txn_user, txn_device, txn_id) WHERE txn_id IS NOT NULL")
    c.execute("DELETE FROM schema_migrations WHERE version = 7")
    for stream, event_id, kind, user, device, key in SENT:
        pdu = json.dumps({"type": kind, "room_id": ROOM, "sender": user, "content": {}, "depth": stream,
                          "origin_server_ts": stream}, separators=(",", ":"), sort_keys=True)  # fmt: skip
        values = ", ".join([placeholder] * 10)
        c.execute("INSERT INTO events (stream, event_id, room_id, type, sender, depth, origin_server_ts, pdu,"
                  f" txn_user, txn_device, txn_id) VALUES ({values}, {placeholder})",
                  (stream, event_id, ROOM, kind, user, stream, stream, pdu.encode() if placeholder != "?" else pdu,
                   user, device, key))  # fmt: skip


def _check_upgraded(store: Any) -> None:
    columns = {row[1] for row in store.db.query("PRAGMA table_info(events)")}
    assert {"txn_hash", "txn_id"} <= columns and not {"txn_user", "txn_device"} & columns
    # every send found by the same transaction; the older JSON key by the current form of the same send
    asked = [(user, device, key) for _, _, _, user, device, key in SENT]
    asked[1] = ("@a:x", "PHONE", transaction_key(ROOM, "m.room.message", "old-1"))
    found = store.events_for_txns(asked)
    assert found == dict(zip(asked, [event_id for _, event_id, *_ in SENT], strict=True))
    assert store.events_for_txns([("@a:x", "LAPTOP", SENT[0][5]), ("@b:x", "PHONE", SENT[0][5])]) == {}
    client = store.get_event("$client")["txn"]
    assert client == TxnMark(txn_digest("@a:x", "PHONE", SENT[0][5]), "m17.3")
    assert is_senders(client, "@a:x", "PHONE", ROOM, "m.room.message")
    assert is_senders(store.get_event("$legacy")["txn"], "@a:x", "PHONE", ROOM, "m.room.message")
    assert is_senders(store.get_event("$redact")["txn"], "@a:x", "LAPTOP", ROOM, "m.room.redaction")
    assert store.get_event("$mqtt")["txn"].client_id is None
    versions = [row[0] for row in store.db.query("SELECT version FROM schema_migrations ORDER BY version")]
    assert 7 in versions


def _check_collisions_refused(store: Any) -> None:
    """Rows made to carry another send's digest (what a collision would look like) are not taken for it."""
    other_client = ("@a:x", "PHONE", transaction_key(ROOM, "m.room.message", "other"))
    other_edge = ("@b:x", "mqtt", "p." + "cd" * 32)
    for event_id, txn in (("$client", other_client), ("$mqtt", other_edge)):
        store.db.write_sync(lambda c, e=event_id, t=txn: c.execute(
            "UPDATE events SET txn_hash = ? WHERE event_id = ?", (txn_digest(*t), e)))  # fmt: skip
    assert store.events_for_txns([other_client, other_edge]) == {}


@pytest.mark.sqlite_only
def test_a_sqlite_store_from_before_transaction_digests_is_upgraded(tmp_path: Path) -> None:
    with upgraded_sqlite(tmp_path / "lowband.db", _insert_old) as store:
        _check_upgraded(store)
        _check_collisions_refused(store)
        index = store.db.query_one("SELECT sql FROM sqlite_master WHERE name = 'events_txn_hash'")
        assert index is not None and "UNIQUE" in index[0]
        assert store.db.query_one("SELECT name FROM sqlite_master WHERE name = 'events_txn'") is None


@pytest.fixture
def pg_schema() -> Iterator[str]:
    yield from fresh_schema("txnup")


def test_a_postgres_store_from_before_transaction_digests_is_upgraded(pg_schema: str) -> None:
    with upgraded_postgres(pg_schema, lambda conn: _insert_old(conn, "%s")) as store:
        _check_upgraded(store)
        _check_collisions_refused(store)
        indexes = {row[0] for row in store.db.query("SELECT indexname FROM pg_indexes WHERE schemaname = ?",
                                                    (pg_schema,))}  # fmt: skip
        assert "events_txn_hash" in indexes and "events_txn" not in indexes
