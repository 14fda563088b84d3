"""A PostgreSQL schema of one test's own, for the tests that open a PostgreSQL store themselves; a store of
either kind turned back to an older shape and opened again, for the tests of schema migrations.

The server is the suite's (``LOWBAND_TEST_DATABASE_URL``) or the development one at 127.0.0.1:5432; a test
using :func:`fresh_schema` is skipped, saying why, where none answers. The schema is named with the run's
prefix (conftest drops what a run left behind) and dropped when the test ends.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

POSTGRES_URL = os.environ.get("LOWBAND_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
_serial = itertools.count()


def unreachable() -> str | None:
    """Why PostgreSQL cannot be used here, or None."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed: {exc}"
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:  # nothing listening, refused, no such database
        return f"no PostgreSQL at {POSTGRES_URL}: {exc}"
    return None


def fresh_schema(tag: str) -> Iterator[str]:
    """A schema name not used before in this run (for a fixture to yield from); dropped afterwards."""
    reason = unreachable()
    if reason:
        pytest.skip(reason)
    import psycopg

    os.environ["LOWBAND_TEST_POSTGRES_USED"] = POSTGRES_URL  # conftest drops the run's schemas at the end too
    name = f"{os.environ.get('LOWBAND_TEST_SCHEMA_PREFIX', 't_')}{tag}_{os.getpid()}_{next(_serial)}"
    yield name
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def with_room_ids(conn: Any) -> None:
    """A store's events back to holding their room ID as text (the shape before schema migration 9), on either
    store; the relations trigger, which reads the room through its number now, is dropped (the store makes it
    anew when it opens)."""
    postgres = not isinstance(conn, sqlite3.Connection)
    conn.execute("DROP TRIGGER IF EXISTS event_relations_insert" + (" ON events" if postgres else ""))
    conn.execute("ALTER TABLE events ADD COLUMN room_id TEXT")
    conn.execute("UPDATE events SET room_id = (SELECT room_id FROM room_numbers n WHERE n.nid = events.room_nid)")
    conn.execute("DELETE FROM schema_migrations WHERE version = 9")


@contextlib.contextmanager
def upgraded_postgres(schema: str, make_old: Callable[[Any], None]) -> Iterator[Any]:
    """A PostgreSQL store in ``schema`` made at the newest shape, turned back to an older one by ``make_old``
    (given a connection whose search path is the schema), then opened again: upgraded by its migrations."""
    import psycopg

    from lowband.gateway.store.postgres.store import PostgresStore

    PostgresStore(POSTGRES_URL, schema=schema).close()
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"SET search_path TO {schema}")
        make_old(conn)
    store = PostgresStore(POSTGRES_URL, schema=schema)
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def upgraded_sqlite(path: Path, make_old: Callable[[sqlite3.Connection], None]) -> Iterator[Any]:
    """The same with a SQLite file at ``path``; its ``PRAGMA integrity_check`` must pass once the store closed."""
    from lowband.gateway.store.sqlite.store import SQLiteStore

    SQLiteStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        make_old(conn)
        conn.commit()
    store = SQLiteStore(path)
    try:
        yield store
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
