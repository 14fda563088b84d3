"""Versioned schema changes: what a database made by an older Lowband needs, each applied once, in order.

Rules (both stores: the PostgreSQL store runs the same list through its dialect):

* ``schema.SCHEMA`` and each area's ``CREATE TABLE IF NOT EXISTS`` make a
  new database at the newest shape; :data:`MIGRATIONS` bring an older one
  there. Each has a number; ``schema_migrations`` records the numbers
  applied, with their name and when.
* When the store opens, every migration whose number is not recorded runs,
  in order, in the writer's transaction together with the rows recording
  it: all of them commit, or none (the open fails and the file is as it was).
* A migration checks what it changes before changing it, so a database made
  before this table existed (or a new one, already at the newest shape)
  records those it does not need without changing anything.
* A database recording a number this Lowband does not know was written by a
  newer one: opening it fails with :class:`SchemaTooNew` before anything is
  read or written, so an older gateway never writes rows a newer schema does
  not expect.
* Numbers are never reused or reordered, and a released migration is never
  edited: a fix is a new migration.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_ts INTEGER NOT NULL
)
"""


class SchemaTooNew(sqlite3.DatabaseError):
    """The database records schema migrations this Lowband does not know: a newer one wrote it."""


Migration = tuple[int, str, Callable[[Any], None]]


def _columns(conn: Any, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


def pending(conn: Any, migrations: list[Migration]) -> list[Migration]:
    """The migrations ``conn``'s database has not recorded, in order; SchemaTooNew if it records unknown ones."""
    conn.execute(TABLE)
    done = {int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations")}
    known = {number for number, _, _ in migrations}
    unknown = sorted(done - known)
    if unknown:
        raise SchemaTooNew(
            f"the database was written by a newer Lowband (schema migrations {', '.join(map(str, unknown))};"
            f" this one knows 1 to {max(known)}): run that version, or restore a backup made for this one"
        )
    return [m for m in migrations if m[0] not in done]


def apply(conn: Any, migrations: list[Migration]) -> list[str]:
    """Run and record the pending migrations (see the module rules); their names, in the order run."""
    ran = []
    for number, name, change in pending(conn, migrations):
        change(conn)
        conn.execute("INSERT INTO schema_migrations (version, name, applied_ts) VALUES (?, ?, ?)",
                     (number, name, int(time.time() * 1000)))  # fmt: skip
        ran.append(name)
    return ran


def newest(migrations: list[Migration]) -> int:
    """The schema version a database has once every migration ran."""
    return max(number for number, _, _ in migrations)


def has_columns(conn: Any, table: str, *names: str) -> bool:
    """Whether ``table`` exists with every one of ``names`` (a migration's check)."""
    columns = _columns(conn, table)
    return bool(columns) and all(name in columns for name in names)


def table_exists(conn: Any, table: str) -> bool:
    """Whether ``table`` exists (on PostgreSQL in the store's schema: the dialect answers PRAGMA table_info)."""
    return bool(_columns(conn, table))
