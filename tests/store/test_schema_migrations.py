"""Versioned schema migrations (store/sqlite/migrations.py, schema.MIGRATIONS): recorded once each, skipped after,
an older database brought up, a newer one refused with the file left as it was."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from lowband.gateway.store.sqlite import migrations
from lowband.gateway.store.sqlite.schema import MIGRATIONS


def _recorded(store: Any) -> list[tuple[int, str]]:
    return [(int(r[0]), str(r[1])) for r in store.db.query("SELECT version, name FROM schema_migrations ORDER BY 1")]


def test_numbers_are_one_to_n_in_order() -> None:
    assert [number for number, _, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len({name for _, name, _ in MIGRATIONS}) == len(MIGRATIONS)


def test_a_new_store_records_every_migration_and_runs_none_again(tmp_path: Path) -> None:
    from lowband.gateway.app import open_store

    store = open_store(tmp_path / "lowband.db")
    try:
        assert _recorded(store) == [(n, name) for n, name, _ in MIGRATIONS]
        assert store.db.write_sync(lambda c: migrations.pending(c, MIGRATIONS)) == []
    finally:
        store.close()
    store = open_store(tmp_path / "lowband.db")  # a second open: nothing pending, nothing new recorded
    try:
        assert len(_recorded(store)) == len(MIGRATIONS)
    finally:
        store.close()


def test_apply_runs_pending_ones_in_order_and_records_them() -> None:
    conn = sqlite3.connect(":memory:")
    ran: list[int] = []
    steps: list[migrations.Migration] = [(n, f"step {n}", lambda c, n=n: ran.append(n)) for n in (1, 2, 3)]
    assert migrations.apply(conn, steps[:2]) == ["step 1", "step 2"]
    assert migrations.apply(conn, steps) == ["step 3"] and ran == [1, 2, 3]
    assert migrations.apply(conn, steps) == []


def test_a_failing_migration_leaves_nothing_recorded(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("BEGIN")

    def broken(c: Any) -> None:
        c.execute("CREATE TABLE made_by_two (x)")
        raise sqlite3.OperationalError("disk full, say")

    with pytest.raises(sqlite3.OperationalError):
        migrations.apply(conn, [(1, "one", lambda c: None), (2, "two", broken)])
    conn.execute("ROLLBACK")  # what the writer does with a failed job
    assert conn.execute("SELECT name FROM sqlite_master WHERE name IN ('schema_migrations', 'made_by_two')"
                        ).fetchall() == []  # fmt: skip


@pytest.mark.sqlite_only
def test_a_database_from_a_newer_lowband_is_refused_untouched(tmp_path: Path) -> None:
    from lowband.gateway.app import open_store
    from lowband.gateway.config import ConfigError

    path = tmp_path / "lowband.db"
    open_store(path).close()
    newer = migrations.newest(MIGRATIONS) + 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', 0)", (newer,))
        conn.commit()
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=rf"newer Lowband \(schema migrations {newer}; this one knows 1 to"):
        open_store(path)
    assert path.read_bytes() == before


def test_an_unversioned_older_database_gets_the_changes_it_lacks(tmp_path: Path) -> None:
    """A file from before schema_migrations (and before users.owner and the thread_id columns): the checks run,
    the changes it needs are made, all are recorded."""
    from lowband.gateway.store.sqlite.store import SQLiteStore

    path = tmp_path / "lowband.db"
    SQLiteStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(
            "DROP TABLE schema_migrations;"
            "ALTER TABLE users DROP COLUMN owner;"
            "ALTER TABLE push_notifications DROP COLUMN thread_id;"
            "INSERT INTO users (user_id, password_hash, created_ts) VALUES ('@mq:x', 'h', 1);"
            "INSERT INTO mqtt_users (user_id, created_ms) VALUES ('@mq:x', 1);"
        )
    store = SQLiteStore(path)
    try:
        assert len(_recorded(store)) == len(MIGRATIONS)
        assert store.db.query_one("SELECT owner FROM users WHERE user_id = '@mq:x'") == ("mqtt",)
        assert "thread_id" in {r[1] for r in store.db.query("PRAGMA table_info(push_notifications)")}
    finally:
        store.close()
