"""``lowband db check`` on a PostgreSQL store: the checks of :mod:`..sqlite.integrity` on one schema, read-only.

The same rules and checks, through the store's reader connection (the SQLite
module's SQL, translated), except:

* ``sqlite`` and ``foreign_keys`` become ``server``: PostgreSQL keeps its
  own pages (a damaged page is an error when it is read, which the other
  checks then report) and its constraints (enforced on every write); the
  check reports the server's version and the schema's size, and a note;
  checking B-tree pages needs the ``amcheck`` extension, which a store does
  not ask for;
* ``relations`` and ``search`` ask PostgreSQL's own form of "should be
  indexed" (the trigger functions' tests: ``store/postgres/relations.py``,
  ``search.py``);
* a check that compares two reads runs in one REPEATABLE READ transaction
  (one snapshot) and reads its rows through server-side cursors, in batches,
  so memory does not grow with the schema.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from lowband.gateway.store.postgres.database import _sqlite_error, open_reader
from lowband.gateway.store.postgres.dialect import translate
from lowband.gateway.store.postgres.relations import _TIMELINE, _WELL_FORMED
from lowband.gateway.store.postgres.search import _CANDIDATE
from lowband.gateway.store.sqlite.integrity import BATCH, NotAStore, SQLiteIntegrity, _Finding
from lowband.gateway.store.sqlite.pdu_codec import reader_codec

_RELATES_TO = "lowband_pdu_json({e}.index_fields)->'content'->'m.relates_to'"
_cursors = itertools.count()


class PgIntegrity(SQLiteIntegrity):
    """The integrity checks of one PostgreSQL schema (see the module rules)."""

    relation_indexed = _TIMELINE + " AND " + _WELL_FORMED.replace("{r}", _RELATES_TO)
    search_indexed = (_CANDIDATE + " AND lowband_search_value({e}.type, {e}.state_key,"
                      " lowband_pdu_json({e}.index_fields)) IS NOT NULL")  # fmt: skip
    search_position = "stream"
    sender_tail = "right(sender, ?)"

    def __init__(self, url: str, schema: str, *, server_name: str | None = None) -> None:
        """Open the schema through a reading connection; :class:`NotAStore` if the server cannot be reached or
        the schema holds no Lowband store. ``url``: libpq's form (no ``?schema=``)."""
        self._server_name = server_name
        self._federated: dict[str, bool] = {}
        self._versions: dict[str, str | None] = {}
        self._schema = schema
        try:
            self._conn: Any = open_reader(url, schema)
        except (sqlite3.Error, ValueError) as exc:
            raise NotAStore(f"cannot open schema {schema}: {exc}") from None
        except psycopg.Error as exc:  # OperationalError: server down, refused
            raise NotAStore(f"cannot reach PostgreSQL: {str(exc).strip()}") from None
        self._pdus = reader_codec(self._conn)
        tables = {str(r[0]) for r in self._conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}  # fmt: skip
        if not {"events", "rooms", "state_groups"} <= tables:
            self._conn.close()
            raise NotAStore(f"schema {schema} holds no Lowband store (no events, rooms and state_groups tables)")
        self._tables = tables

    def checks(self, *, quick: bool) -> list[tuple[str, int]]:
        """(name, amount of work) of every check, in order: ``server`` instead of ``sqlite`` and ``foreign_keys``."""
        plan = super().checks(quick=quick)
        return [("server", 1)] + [(n, w) for n, w in plan if n not in ("sqlite", "foreign_keys")]

    def run(self, name: str, *, quick: bool, advance: Callable[[int], None]) -> Any:
        """Run one check by name (KeyError for one :meth:`checks` does not list)."""
        if name in ("sqlite", "foreign_keys"):
            raise KeyError(name)
        if name != "server":
            return super().run(name, quick=quick, advance=advance)
        finding = _Finding(name)
        try:
            self._server(finding)
        except sqlite3.DatabaseError as exc:
            finding.problem(f"the database could not be read: {exc}")
        advance(1)
        return finding.result

    def _server(self, finding: _Finding) -> None:
        version = self._conn.execute("SHOW server_version").fetchone()[0]
        size = self._conn.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
            " AND c.relkind IN ('r', 'm')").fetchone()[0]  # fmt: skip
        finding.result.checked = 1
        finding.note(f"PostgreSQL {version}, schema {self._schema}: {int(size):,} bytes; pages and constraints are"
                     " the server's to keep (amcheck not used)")  # fmt: skip

    def _begin_snapshot(self) -> None:
        self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def _end_snapshot(self) -> None:
        self._conn.execute("ROLLBACK")

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        raw = self._conn.raw
        if raw.info.transaction_status == 0:  # idle, no transaction: a server-side cursor needs one
            yield from super()._rows(sql, params)
            return
        values = self._conn._args(params)
        with raw.cursor(name=f"lowband_check_{next(_cursors)}") as cursor:
            try:
                cursor.execute(translate(sql), values)
                while rows := cursor.fetchmany(BATCH):
                    yield from rows
            except psycopg.Error as exc:
                raise _sqlite_error(exc) from exc
