"""Moving a stopped gateway's store from its SQLite file to PostgreSQL (``lowband db migrate``).

Rules:

* the source is checked before anything is written anywhere: a SQLite file whose header and size agree
  (a truncated copy is refused), that passes ``PRAGMA quick_check`` and has Lowband's tables. It is held
  with an exclusive lock for the whole run (``locking_mode=EXCLUSIVE``): a gateway that has the file open —
  even idle, WAL keeps a shared lock — makes the lock fail and the migration refuse, and no gateway can
  start on the file while the copy runs. Nothing in the source is changed (closing the connection may
  fold the WAL into the file, SQLite's own checkpoint: the same content);
* the destination is one schema of a PostgreSQL database, created by opening a
  :class:`~lowband.gateway.store.postgres.store.PostgresStore` (its tables, the index triggers). A schema
  that already holds users or events is refused: a migration never merges two stores;
* every table both sides have is copied column by column by name, in source order (events by stream
  position; a table a foreign key points at before the table holding it, and ``room_numbers`` before
  ``events``, whose relations trigger reads it), with one ``COPY`` per :data:`BATCH` rows, all tables in
  **one** transaction: a copy
  that fails leaves the destination as empty as it found it, so it can be retried as is. Both sides must
  have the same columns (a source made by an older Lowband is upgraded by starting that gateway once with
  this version; one made by a newer Lowband is refused);
* derived tables are not copied (:data:`DERIVED`): SQLite's FTS5 index and the relations index with their
  backfill markers. The PostgreSQL store's triggers rebuild its own indexes as the events are inserted;
* identity columns (SQLite's ``INTEGER PRIMARY KEY``) get their sequences set past the copied maximum;
* the verification reads both sides after the commit: every copied table's row count, and a SHA-256 over
  every event's (stream, event_id, pdu) in stream order; then the PostgreSQL store must open;
* values PostgreSQL cannot hold as SQLite held them are adapted and counted (:class:`TableCopy.adapted`):
  a NUL character in text (dropped: PostgreSQL text cannot hold it), bytes in a text column (UTF-8
  decoded), text in a bytea column (UTF-8 encoded), a fractional number in an integer column (rounded,
  as the PostgreSQL store does when it is handed one).

Errors: :class:`MigrationRefused` when the migration cannot start (nothing was written), :class:`CopyFailed`
when the copy failed (rolled back). Progress goes through an ``advance(rows, note)`` callback; this module
prints nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: rows read from SQLite (and streamed to COPY) at a time
BATCH = 5_000
#: the SQLite file in a data dir, and what it is renamed to once the data dir is served from PostgreSQL
DB_NAME = "lowband.db"
MIGRATED_SUFFIX = ".migrated"
#: tables every Lowband store has: a SQLite file without them is not one
LOWBAND_TABLES = frozenset({"users", "events", "rooms", "state_groups"})
#: indexes derived from the events, rebuilt on PostgreSQL by triggers as the events are inserted: not copied
DERIVED = frozenset({"event_relations", "event_threads", "relations_backfill", "search_backfill"})
#: SQLite's FTS5 table and its shadow tables (event_search_data, _idx, _docsize, _config, _content)
DERIVED_PREFIX = "event_search"
#: how long the source's exclusive lock is waited for before a running gateway is assumed
LOCK_TIMEOUT_S = 1.0

_SQLITE_MAGIC = b"SQLite format 3\x00"

Advance = Callable[[int, str], None]


class MigrationRefused(Exception):
    """The migration cannot start: bad source or destination, or a running gateway. Nothing was written."""


class CopyFailed(Exception):
    """The copy failed part way; its transaction was rolled back (the destination has no rows of it)."""


@dataclass
class TableCopy:
    """One table to copy: its columns (both sides') and how many rows the source has."""

    name: str
    columns: list[str]
    rows: int
    order_by: str
    #: PostgreSQL's data type of each column
    types: list[str] = field(default_factory=list)
    #: values adapted on the way (see the module rules), by kind
    adapted: Counter[str] = field(default_factory=Counter)


@dataclass
class TableCount:
    """Rows of one table on both sides after the copy."""

    name: str
    source: int
    destination: int

    @property
    def ok(self) -> bool:
        """Whether both sides have as many rows."""
        return self.source == self.destination


@dataclass
class Verification:
    """What the verification found; :attr:`ok` when the copy is complete."""

    tables: list[TableCount]
    events: int
    source_digest: str
    destination_digest: str
    #: rows the PostgreSQL triggers put in the derived tables (``event_relations``, …), by table
    rebuilt: dict[str, int]
    #: why the PostgreSQL store would not open, or None
    open_error: str | None = None

    @property
    def ok(self) -> bool:
        """Row counts equal, the events' digests equal, and the PostgreSQL store opens."""
        return (all(t.ok for t in self.tables) and self.source_digest == self.destination_digest
                and self.open_error is None)  # fmt: skip


def safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def source_path(text: str) -> tuple[Path, Path | None]:
    """(SQLite file, data dir or None) of ``--from``: ``sqlite:PATH`` (or a bare PATH), PATH a file or a data
    dir holding ``lowband.db``. MigrationRefused for another scheme, a missing file, an already moved data dir."""
    if text.startswith("sqlite:"):
        text = text.removeprefix("sqlite:").removeprefix("//")  # sqlite:///abs/path, as SQLAlchemy writes it
    elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise MigrationRefused(f"--from {safe_url(text)!r}: the source is a SQLite file: sqlite:PATH")
    path = Path(text).expanduser()
    if path.is_dir():
        db = path / DB_NAME
        if not db.exists():
            moved = path / (DB_NAME + MIGRATED_SUFFIX)
            if moved.exists():
                raise MigrationRefused(f"data dir {path} was already moved to PostgreSQL ({moved.name} is the old file)")
            raise MigrationRefused(f"no {DB_NAME} in {path}: not a Lowband data dir")
        return db, path
    if not path.exists():
        raise MigrationRefused(f"no SQLite database at {path}")
    return path, None


def _check_header(path: Path) -> None:
    """MigrationRefused unless ``path`` starts as a SQLite file and is as long as its header says."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
        raise MigrationRefused(f"{path} is not a SQLite database")
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    (change_counter,) = struct.unpack(">I", head[24:28])
    (pages,) = struct.unpack(">I", head[28:32])
    (valid_for,) = struct.unpack(">I", head[92:96])
    truncated = size % page_size != 0 if page_size else True
    # A WAL left by a crash may hold a checkpoint that was under way: the file's header can then be ahead of
    # the file, and the pages are in the WAL. Damage there is for quick_check to find.
    wal = path.with_name(path.name + "-wal")
    checkpoint_pending = wal.exists() and wal.stat().st_size > 0
    if pages and valid_for == change_counter and size < pages * page_size and not checkpoint_pending:
        truncated = True
    if truncated:
        expected = f"{pages * page_size:,} bytes" if pages else f"a multiple of {page_size} bytes"
        raise MigrationRefused(f"{path} is damaged (truncated?): {size:,} bytes, its header says {expected}")


def open_source(path: Path, *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> sqlite3.Connection:
    """``path`` opened and locked for the migration (see the module rules), its schema and pages checked.

    MigrationRefused: not SQLite, damaged, not a Lowband database, or in use (a gateway running on it).
    """
    _check_header(path)
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=rw", uri=True, isolation_level=None,
                               timeout=lock_timeout_s, check_same_thread=False)  # fmt: skip
    except sqlite3.Error as exc:
        raise MigrationRefused(f"cannot open {path}: {exc}") from None
    try:
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise MigrationRefused(f"{path} is in use (is the gateway running?): stop the gateway, then"
                                       " migrate") from None  # fmt: skip
            raise MigrationRefused(f"cannot open {path}: {exc}") from None  # permissions, a read-only file system
        tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not LOWBAND_TABLES <= tables:
            raise MigrationRefused(f"{path} is not a Lowband database (no {', '.join(sorted(LOWBAND_TABLES - tables))}"
                                   " table)")  # fmt: skip
        problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise MigrationRefused(f"{path} is damaged ({'; '.join(problems)}); see `lowband db check`")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise MigrationRefused(f"{path} is damaged or not a database: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _derived(table: str) -> bool:
    return table in DERIVED or table.startswith(DERIVED_PREFIX)


class Migration:
    """One migration: the source locked, the destination created and checked; then :meth:`copy`,
    :meth:`verify`, :meth:`close`. The constructor raises :class:`MigrationRefused`."""

    def __init__(self, source: Path, url: str, *, batch: int = BATCH, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        from lowband.gateway.store.postgres.store import split_url

        try:
            self.libpq, self.schema = split_url(url)
        except ValueError:
            raise MigrationRefused(f"--to {safe_url(url)!r}: the destination is a postgresql://... URL") from None
        self.url = url
        self.batch = batch
        self.source = source
        self.sqlite = open_source(source, lock_timeout_s=lock_timeout_s)
        self.pg: Any = None
        #: identity columns whose sequence :meth:`copy` set, with the value set
        self.sequences: list[tuple[str, int]] = []
        try:
            self.pg = self._connect()
            self.created = not self._schema_exists()
            self._refuse_non_empty()
            self._create_store()
            self.tables, self.left_out = self._plan()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- setup

    def _connect(self) -> Any:
        import psycopg

        from lowband.gateway.store.postgres.database import connect

        try:
            return connect(self.libpq, self.schema)
        except ValueError as exc:
            raise MigrationRefused(f"--to: {exc}") from None
        except psycopg.Error as exc:
            raise MigrationRefused(f"cannot connect to PostgreSQL at {safe_url(self.libpq)}: {_one_line(exc)}") from None

    def _schema_exists(self) -> bool:
        row = self.pg.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone()
        return row is not None

    def _pg_tables(self) -> set[str]:
        rows = self.pg.execute("SELECT table_name::text FROM information_schema.tables WHERE table_schema = %s"
                               " AND table_type = 'BASE TABLE'", (self.schema,)).fetchall()  # fmt: skip
        return {str(r[0]) for r in rows}

    def _refuse_non_empty(self) -> None:
        tables = self._pg_tables()
        for table in ("users", "events"):
            if table in tables and self.pg.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                raise MigrationRefused(f"schema {self.schema} of {safe_url(self.libpq)} already holds a store ({table}"
                                       " has rows): migrate into an empty schema (?schema=NAME)")  # fmt: skip

    def _create_store(self) -> None:
        """Open (and close) the PostgreSQL store once: its tables, indexes and triggers."""
        import psycopg

        from lowband.gateway.store.postgres.store import PostgresStore

        try:
            PostgresStore(self.libpq, self.schema).close()
        except (psycopg.Error, sqlite3.Error) as exc:
            raise MigrationRefused(f"cannot create the store in schema {self.schema}: {_one_line(exc)}") from None

    def _plan(self) -> tuple[list[TableCopy], list[str]]:
        """The tables to copy, parents before children; and the source's non-derived tables PostgreSQL lacks."""
        source_tables = [str(r[0]) for r in self.sqlite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]  # fmt: skip
        pg_tables = self._pg_tables()
        plan: list[TableCopy] = []
        left_out = []
        mismatched = []
        for table in source_tables:
            if _derived(table):
                continue
            if table not in pg_tables:
                left_out.append(table)
                continue
            mine = [str(r[1]) for r in self.sqlite.execute(f'PRAGMA table_info("{table}")')]
            theirs = dict(self.pg.execute(
                "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = %s"
                " AND table_name = %s ORDER BY ordinal_position", (self.schema, table)).fetchall())  # fmt: skip
            if set(mine) != set(theirs):
                missing, extra = sorted(set(theirs) - set(mine)), sorted(set(mine) - set(theirs))
                mismatched.append(f"{table} ({'lacks ' + ', '.join(missing) if missing else ''}"
                                  f"{'; ' if missing and extra else ''}{'has ' + ', '.join(extra) if extra else ''})")
                continue
            rows = self.sqlite.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
            plan.append(TableCopy(table, mine, int(rows), self._order_by(table), [theirs[c] for c in mine]))
        if mismatched:
            raise MigrationRefused(
                f"{self.source} does not have this Lowband's columns: {'; '.join(mismatched)}. A file made by an older"
                " Lowband is upgraded by starting the gateway once with this version (then stop it and migrate)")
        return self._parents_first(plan), left_out

    def _order_by(self, table: str) -> str:
        """The source order of ``table``: events by stream position, a rowid table by rowid, else its key."""
        if table == "events":
            return "stream"
        keys = [(int(r[5]), str(r[1])) for r in self.sqlite.execute(f'PRAGMA table_info("{table}")') if int(r[5])]
        without_rowid = self.sqlite.execute(
            "SELECT sql LIKE '%WITHOUT ROWID%' FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]  # fmt: skip
        if not without_rowid:
            return "rowid"
        return ", ".join(f'"{name}"' for _, name in sorted(keys)) or "1"

    def _parents_first(self, plan: list[TableCopy]) -> list[TableCopy]:
        """``plan`` ordered so that a table a foreign key points at is copied before the table holding the key."""
        edges = self.pg.execute(
            "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace WHERE c.contype = 'f' AND n.nspname = %s",
            (self.schema,)).fetchall()  # fmt: skip
        # no foreign key says so, but the events' relations trigger reads an event's room ID from room_numbers
        parents: dict[str, set[str]] = {"events": {"room_numbers"}}
        for child, parent in edges:
            child, parent = child.split(".")[-1], parent.split(".")[-1]
            if child != parent:
                parents.setdefault(child, set()).add(parent)
        by_name = {t.name: t for t in plan}
        ordered: list[TableCopy] = []
        placed: set[str] = set()

        def place(name: str, path: tuple[str, ...]) -> None:
            if name in placed or name not in by_name or name in path:
                return
            for parent in sorted(parents.get(name, ())):
                place(parent, path + (name,))
            placed.add(name)
            ordered.append(by_name[name])

        for t in plan:
            place(t.name, ())
        return ordered

    # ----------------------------------------------------------------- copy

    @property
    def total_rows(self) -> int:
        """Rows to copy, all tables."""
        return sum(t.rows for t in self.tables)

    def copy(self, advance: Advance | None = None) -> None:
        """Copy every planned table in one transaction and set the identity sequences; ``advance(rows, table)``
        after each batch. CopyFailed (rolled back) on a PostgreSQL error; MigrationRefused when the source
        turns out damaged part way (also rolled back)."""
        import psycopg

        current = ""
        try:
            with self.pg.transaction():
                for table in self.tables:
                    current = table.name
                    self._copy_table(table, advance)
                self._set_sequences()
            # Planner statistics for the tables just filled: without them (a server with autovacuum off, or
            # before it comes round) PostgreSQL plans the newest /messages page of a big room as a full sort.
            for name in sorted(self._pg_tables()):
                current = name
                self.pg.execute(f"ANALYZE {name}")
        except sqlite3.DatabaseError as exc:
            raise MigrationRefused(f"{self.source} is damaged (reading {current}: {exc}); nothing was written;"
                                   " see `lowband db check`") from None  # fmt: skip
        except psycopg.Error as exc:
            raise CopyFailed(f"copying {current} failed: {_one_line(exc)}; rolled back, the destination holds no"
                             " rows") from None  # fmt: skip

    def _copy_table(self, table: TableCopy, advance: Advance | None) -> None:
        # Rows the store put in when it was created (none today) give way to the source's.
        if self.pg.execute(f"SELECT EXISTS (SELECT 1 FROM {table.name})").fetchone()[0]:
            self.pg.execute(f"DELETE FROM {table.name}")
        fixes = [_ADAPT.get(t) for t in table.types]
        names = ", ".join(f'"{c}"' for c in table.columns)
        cursor = self.sqlite.execute(f'SELECT {names} FROM "{table.name}" ORDER BY {table.order_by}')
        # One COPY per batch: the index triggers (AFTER ROW) run when their statement ends, so the progress
        # shown follows the work done, and PostgreSQL's queue of pending trigger events stays one batch long.
        with self.pg.cursor() as out:
            while True:
                rows = cursor.fetchmany(self.batch)
                if not rows:
                    break
                if any(fixes):
                    rows = [_adapt_row(row, fixes, table.adapted) for row in rows]
                with out.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                if advance is not None:
                    advance(len(rows), table.name)

    def _set_sequences(self) -> None:
        """Each identity column's sequence past the highest value copied (the next default is above it)."""
        self.sequences = []
        for table, column in self.identity_columns():
            top = self.pg.execute(f"SELECT MAX({column}) FROM {table}").fetchone()[0]
            if top is not None and top >= 1:
                self.pg.execute("SELECT setval(pg_get_serial_sequence(%s, %s), %s)", (table, column, top))
                self.sequences.append((f"{table}.{column}", int(top)))

    def identity_columns(self) -> list[tuple[str, str]]:
        """(table, column) of every identity column in the destination schema."""
        rows = self.pg.execute("SELECT table_name::text, column_name::text FROM information_schema.columns"
                               " WHERE table_schema = %s AND is_identity = 'YES' ORDER BY 1",
                               (self.schema,)).fetchall()  # fmt: skip
        return [(str(t), str(c)) for t, c in rows]

    # --------------------------------------------------------------- verify

    def verify(self, advance: Advance | None = None) -> Verification:
        """Compare both sides (see the module rules); ``advance(events, "events")`` while hashing."""
        counts = []
        for table in self.tables:
            mine = self.sqlite.execute(f'SELECT COUNT(*) FROM "{table.name}"').fetchone()[0]
            theirs = self.pg.execute(f"SELECT COUNT(*) FROM {table.name}").fetchone()[0]
            counts.append(TableCount(table.name, int(mine), int(theirs)))
        query = "SELECT stream, event_id, pdu FROM events ORDER BY stream"
        source_digest, events = _digest(self.sqlite.execute(query), self.batch, advance)
        with self.pg.cursor(name="lowband_migrate_events") as cursor:  # server-side: rows come in batches
            cursor.itersize = self.batch
            with self.pg.transaction():
                cursor.execute(query)
                destination_digest, _ = _digest(cursor, self.batch, advance)
        rebuilt = {}
        for name in sorted(t for t in self._pg_tables() if _derived(t) and not t.endswith("_backfill")):
            rebuilt[name] = int(self.pg.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0])
        open_error = None
        try:
            self._create_store()
        except MigrationRefused as exc:
            open_error = str(exc)
        return Verification(counts, events, source_digest, destination_digest, rebuilt, open_error)

    def source_rows(self, table: str) -> int | None:
        """Rows of ``table`` in the source, None when it has no such table (for the derived tables' report)."""
        try:
            return int(self.sqlite.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])
        except sqlite3.OperationalError:
            return None

    def close(self) -> None:
        """Release the source (its lock ends) and the PostgreSQL connection."""
        if self.sqlite is not None:
            try:
                if self.sqlite.in_transaction:
                    self.sqlite.execute("ROLLBACK")
            finally:
                self.sqlite.close()
                self.sqlite = None  # type: ignore[assignment]
        if self.pg is not None:
            self.pg.close()
            self.pg = None


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (libpq's span several; the CLI's errors are one line)."""
    return " ".join(str(exc).split())


def _digest(rows: Iterable[Any], batch: int, advance: Advance | None) -> tuple[str, int]:
    """SHA-256 over (stream, event_id, pdu) rows, and how many; ``advance`` every ``batch`` rows."""
    h = hashlib.sha256()
    count = 0
    for stream, event_id, pdu in rows:
        stored = pdu.encode("utf-8", "surrogatepass") if isinstance(pdu, str) else bytes(pdu)  # BYTEA on PostgreSQL
        h.update(f"{stream}\t{event_id}\t".encode("utf-8", "surrogatepass") + stored + b"\n")
        count += 1
        if advance is not None and count % batch == 0:
            advance(batch, "events")
    if advance is not None and count % batch:
        advance(count % batch, "events")
    return h.hexdigest(), count


def _text(value: Any, adapted: Counter[str]) -> Any:
    if isinstance(value, str):
        if "\x00" in value:
            adapted["NUL characters dropped from text"] += 1
            return value.replace("\x00", "")
        return value
    if isinstance(value, bytes):
        adapted["bytes decoded as UTF-8 text"] += 1
        return _text(value.decode("utf-8", "replace"), adapted)
    return value


def _bytea(value: Any, adapted: Counter[str]) -> Any:
    if isinstance(value, str):
        adapted["text encoded as UTF-8 bytes"] += 1
        return value.encode("utf-8", "surrogatepass")
    return value


def _integer(value: Any, adapted: Counter[str]) -> Any:
    if isinstance(value, float):
        if value != int(value):
            adapted["fractions rounded to integers"] += 1
        return round(value)
    return value


_ADAPT: dict[str, Callable[[Any, Counter[str]], Any]] = {"text": _text, "bytea": _bytea, "bigint": _integer,
                                                      "smallint": _integer}


def _adapt_row(row: tuple[Any, ...], fixes: list[Any], adapted: Counter[str]) -> tuple[Any, ...]:
    return tuple(v if fix is None or v is None else fix(v, adapted) for v, fix in zip(row, fixes, strict=True))


def switch_data_dir(data_dir: Path, url: str, marker: str) -> Path:
    """Make ``data_dir`` served from ``url``: the URL in ``data_dir/marker`` (mode 0600) and ``lowband.db``
    (with any -wal and -shm) renamed ``lowband.db.migrated``, so nothing opens it by mistake. Returns the
    renamed file. Call after a verified migration, with the source closed."""
    fd = os.open(data_dir / marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(url + "\n")
    os.chmod(data_dir / marker, 0o600)
    db = data_dir / DB_NAME
    for suffix in ("-wal", "-shm", ""):
        part = data_dir / (DB_NAME + suffix)
        if part.exists():
            part.rename(data_dir / (DB_NAME + MIGRATED_SUFFIX + suffix))
    return db.with_name(DB_NAME + MIGRATED_SUFFIX)


def elapsed(since: float) -> str:
    """Seconds since ``since`` (time.monotonic), for the report."""
    return f"{time.monotonic() - since:.1f} s"
