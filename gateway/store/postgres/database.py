"""A PostgreSQL database with the writing and reading rules of the SQLite one (``store/sqlite/database.py``).

Same contract, other engine:

* one writer thread owns the connection that writes; every job waiting in the queue runs in one transaction,
  each in its own savepoint (a failing job rolls back alone and its caller gets the exception), and its future
  resolves after COMMIT returned;
* ``durable=False`` jobs alone commit with ``synchronous_commit = off`` (the WAL record is written, not
  flushed: safe against a crashed gateway, not against a crashed database server); a durable job in the batch
  makes the whole commit wait for the flush;
* reads run on the caller's thread on a second connection in autocommit mode: every statement sees what was
  committed when it started.

The table modules hand both databases SQLite's SQL and catch ``sqlite3``'s errors: :class:`PgConnection`
translates the statements (:mod:`.dialect`) and raises psycopg's errors as the ``sqlite3`` ones with the same
meaning (a unique or foreign key violation is :class:`sqlite3.IntegrityError`, a missing table
:class:`sqlite3.OperationalError`, the rest :class:`sqlite3.DatabaseError`), the original chained.

Each store lives in one PostgreSQL schema (``search_path``), so one database can hold several gateways (and
the test suite one store per test).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.adapt import Dumper, Loader

from lowband.gateway.store.postgres.dialect import split_script, translate
from lowband.gateway.store.sqlite.database import GroupCommit

log = logging.getLogger(__name__)

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class _BoolAsInteger(Dumper):
    """Python's True and False as 1 and 0: the schema keeps flags in integer columns, as SQLite does."""

    oid = psycopg.postgres.types["int8"].oid

    def dump(self, obj: bool) -> bytes:
        return b"1" if obj else b"0"


class _NumericAsNumber(Loader):
    """``numeric`` (what SUM of integers gives) as an int when whole, else a float: SQLite's answer."""

    def load(self, data: Any) -> int | float:
        value = Decimal(bytes(data).decode("ascii"))
        return int(value) if value == value.to_integral_value() else float(value)


def _sqlite_error(exc: psycopg.Error) -> sqlite3.Error:
    if isinstance(exc, psycopg.errors.IntegrityError):
        err: sqlite3.Error = sqlite3.IntegrityError(str(exc).strip())
    elif isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
        err = sqlite3.OperationalError(str(exc).strip())
    else:
        err = sqlite3.DatabaseError(str(exc).strip())
    err.__cause__ = exc
    return err


#: what a NUL character in a looked-up text becomes on the reader: PostgreSQL's text cannot hold NUL, so no stored
#: value has one and the lookup must find nothing; these two noncharacters stand in for it
_NUL_IN_LOOKUP = "\uffff\ufffe"


class PgConnection:
    """The part of :class:`sqlite3.Connection` the table modules use, on a psycopg connection.

    Text with a NUL character: PostgreSQL cannot store it. On the reader (``lookups_only``) it is looked up as
    text no row holds; on the writer the statement is refused with :class:`sqlite3.DataError` (the HTTP API
    refuses NUL in paths before it gets here; docs/storage.md).
    """

    def __init__(self, conn: psycopg.Connection[Any], *, lookups_only: bool = False) -> None:
        self.raw = conn
        self.lookups_only = lookups_only

    def _args(self, args: Sequence[Any]) -> tuple[Any, ...]:
        values = tuple(args)
        if not any(type(v) is str and "\x00" in v for v in values):
            return values
        if not self.lookups_only:
            raise sqlite3.DataError("text with a NUL character cannot be stored in PostgreSQL")
        return tuple(v.replace("\x00", _NUL_IN_LOOKUP) if type(v) is str else v for v in values)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        values = self._args(args)
        cursor = self.raw.cursor()
        try:
            cursor.execute(translate(sql), values)
        except psycopg.Error as exc:
            raise _sqlite_error(exc) from exc
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        batch = [self._args(r) for r in rows]
        try:
            if batch:
                cursor.executemany(translate(sql), batch)
        except psycopg.Error as exc:
            raise _sqlite_error(exc) from exc
        return cursor

    def executescript(self, script: str) -> None:
        for statement in split_script(script):
            self.execute(statement)

    def close(self) -> None:
        self.raw.close()


def connect(url: str, schema: str) -> psycopg.Connection[Any]:
    """A connection in autocommit mode whose ``search_path`` is ``schema`` (created when missing)."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema name {schema!r}: lower-case letters, digits and _, at most 63")
    conn = psycopg.connect(url, autocommit=True, connect_timeout=10, options=f"-c search_path={schema}")
    conn.adapters.register_dumper(bool, _BoolAsInteger)
    conn.adapters.register_loader("numeric", _NumericAsNumber)
    return conn


def open_reader(url: str, schema: str) -> PgConnection:
    """A reading connection to an existing store's schema (for tools beside a running gateway); close with
    ``close()``. sqlite3.OperationalError when the schema does not exist."""
    conn = connect(url, schema)
    if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
        conn.close()
        raise sqlite3.OperationalError(f"no store in schema {schema}")
    return PgConnection(conn, lookups_only=True)


class PostgresDatabase(GroupCommit):
    """One schema of a PostgreSQL database with one group-committing writer and one reader."""

    dialect = "postgresql"

    def __init__(self, url: str, schema: str, script: str) -> None:
        writer = connect(url, schema)
        try:
            with writer.transaction():
                # two processes opening one new store at once: one creates, the other waits and sees it made
                writer.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (schema,))
                writer.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                conn = PgConnection(writer)
                conn.executescript(script)
        except BaseException:
            writer.close()
            raise
        self.url = url
        self.schema = schema
        self._writer_conn = PgConnection(writer)
        self.reader = PgConnection(connect(url, schema), lookups_only=True)
        self._start_writer()

    def _close_writer(self) -> None:
        self._writer_conn.close()

    def _commit_batch(self, batch: list[Any]) -> None:
        conn = self._writer_conn
        raw = conn.raw
        results: list[tuple[Future[Any], bool, Any]] = []
        alive = {id(future): future.set_running_or_notify_cancel() for _, future, _ in batch}
        try:
            raw.execute("BEGIN")
            if not any(durable for _, _, durable in batch):
                raw.execute("SET LOCAL synchronous_commit = off")
            # A job alone in its transaction needs no savepoint (two round trips fewer): if it fails, the
            # transaction is rolled back whole.
            alone = len(batch) == 1
            failed = False
            for fn, future, _ in batch:
                if not alone:
                    raw.execute("SAVEPOINT job")
                try:
                    value = fn(conn)
                except BaseException as exc:  # the caller gets it; the batch goes on
                    if not alone:
                        raw.execute("ROLLBACK TO SAVEPOINT job")
                        raw.execute("RELEASE SAVEPOINT job")
                    failed = alone
                    results.append((future, False, exc))
                else:
                    if not alone:
                        raw.execute("RELEASE SAVEPOINT job")
                    results.append((future, True, value))
            raw.execute("ROLLBACK" if failed else "COMMIT")
            self.commits += 1
        except psycopg.Error as exc:
            log.error("database commit failed: %s", exc)
            try:
                raw.execute("ROLLBACK")
            except psycopg.Error:
                pass
            self._failed(batch, alive, _sqlite_error(exc))
            return
        self._deliver(results, alive)

    def close(self) -> None:
        """Finish queued writes, then close both connections."""
        self._stop_writer()
        self.reader.close()
