"""PostgreSQL for the benchmarks: a fresh schema for our gateway, a fresh database for Synapse, their sizes.

A benchmark given ``--database postgresql://…`` never touches what is already
in that database: our gateway gets a schema of its own
(``bench_<pid>_<n>``, dropped afterwards) and Synapse a database of its own
on the same server (``lowband_bench_<pid>_<n>``, C collation as Synapse
requires, dropped afterwards). Sizes are read the same way for both, after
``VACUUM ANALYZE``: ``pg_total_relation_size`` (tables, their indexes and
TOAST) summed over our schema, ``pg_database_size`` for Synapse's database.

psycopg (the store's driver) is imported only when a benchmark uses
PostgreSQL. Every failure is a :class:`BenchError` with one line.
"""

from __future__ import annotations

import itertools
import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lowband.gateway.bench.processes import BenchError

#: what ``--database`` defaults to where a benchmark tries PostgreSQL on its own (the development server)
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT_S = 5

_names = itertools.count(1)


def _split(url: str) -> tuple[str, str | None]:
    """(libpq URL without ``schema=``, the schema it named or None); BenchError for a URL that is not postgresql://."""
    from lowband.gateway.store.postgres.store import split_url

    try:
        libpq, _ = split_url(url)
    except ValueError as exc:
        raise BenchError(f"--database: {exc}") from None
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    return libpq, query.get("schema")


def safe_url(url: str) -> str:
    """``url`` without its password, for output."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def connect(libpq: str, dbname: str | None = None) -> Iterator[Any]:
    """An autocommit psycopg connection to ``libpq`` (or its database ``dbname``); BenchError when it fails."""
    import psycopg

    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S}
    if dbname is not None:
        kwargs["dbname"] = dbname
    try:
        conn = psycopg.connect(libpq, **kwargs)
    except psycopg.Error as exc:
        raise BenchError(
            f"cannot connect to PostgreSQL {safe_url(libpq)}: {str(exc).strip().splitlines()[0]}"
        ) from None
    try:
        yield conn
    finally:
        conn.close()


def reachable(url: str) -> str | None:
    """None when ``url`` answers a query, else why not (one line)."""
    try:
        libpq, _ = _split(url)
        with connect(libpq) as conn:
            conn.execute("SELECT 1")
    except BenchError as exc:
        return str(exc)
    return None


def autovacuum(url: str) -> str:
    """The server's ``autovacuum`` setting ("on" or "off")."""
    with connect(_split(url)[0]) as conn:
        return str(conn.execute("SHOW autovacuum").fetchone()[0])


def server_version(url: str) -> str:
    """The PostgreSQL server's version, e.g. ``16.4``."""
    with connect(_split(url)[0]) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]


@dataclass
class Schema:
    """A fresh schema of a benchmark: ``url`` is the database URL with ``?schema=`` naming it."""

    libpq: str
    name: str

    @property
    def url(self) -> str:
        parts = urllib.parse.urlsplit(self.libpq)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + [("schema", self.name)]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    def drop(self) -> None:
        """DROP SCHEMA … CASCADE (nothing if it was never created)."""
        with connect(self.libpq) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')

    def analyze(self) -> None:
        """ANALYZE every table of the schema (what autovacuum does after a table grows by a tenth)."""
        with connect(self.libpq) as conn:
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.name,))]
            for table in tables:
                conn.execute(f'ANALYZE "{self.name}"."{table}"')

    def upkeep_round(self) -> list[tuple[str, str]]:
        """One round of the store's own upkeep (``store/postgres/upkeep.py``: VACUUM ANALYZE or ANALYZE of the
        tables past autovacuum's thresholds) as the serving gateway runs it every minute: what a fill left
        since its last round (up to a minute of writes) is not the history's size. The work done."""
        from lowband.gateway.store.postgres.upkeep import Upkeep

        with connect(self.libpq) as conn:
            return Upkeep(lambda: conn, self.name).round(conn)

    def table_bytes(self) -> int:
        """``pg_total_relation_size`` summed over the schema's tables, after VACUUM ANALYZE of each."""
        with connect(self.libpq) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (self.name,))]  # fmt: skip
            for table in tables:
                conn.execute(f'VACUUM ANALYZE "{self.name}"."{table}"')
            row = conn.execute(
                "SELECT COALESCE(SUM(pg_total_relation_size(format('%%I.%%I', schemaname, tablename)::regclass)), 0)"
                " FROM pg_tables WHERE schemaname = %s", (self.name,)).fetchone()  # fmt: skip
        return int(row[0])


@contextmanager
def fresh_schema(url: str) -> Iterator[Schema]:
    """A schema ``bench_<pid>_<n>`` in ``url``'s database for one gateway, dropped when the block ends.

    The schema named in ``url`` (if any) is not used. The gateway creates the schema when it first opens it.
    """
    libpq, _ = _split(url)
    schema = Schema(libpq, f"bench_{os.getpid()}_{next(_names)}")
    schema.drop()  # a leftover of a killed run with the same pid
    try:
        yield schema
    finally:
        schema.drop()


@dataclass
class Database:
    """A fresh database on the benchmark's server (for Synapse)."""

    libpq: str
    name: str

    def synapse_config(self) -> dict[str, Any]:
        """Synapse's ``database`` config section for this database (psycopg2, a small pool)."""
        parts = urllib.parse.urlsplit(self.libpq)
        args: dict[str, Any] = {"database": self.name, "host": parts.hostname or "127.0.0.1",
                                "port": parts.port or 5432, "user": urllib.parse.unquote(parts.username or "postgres"),
                                "cp_min": 1, "cp_max": 10}  # fmt: skip
        if parts.password is not None:
            args["password"] = urllib.parse.unquote(parts.password)
        return {"name": "psycopg2", "args": args}

    def size_bytes(self) -> int:
        """``pg_database_size`` after VACUUM ANALYZE of the whole database."""
        with connect(self.libpq, self.name) as conn:
            conn.execute("VACUUM ANALYZE")
            return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])


@contextmanager
def fresh_database(url: str) -> Iterator[Database]:
    """A database ``lowband_bench_<pid>_<n>`` (template0, C collation: what Synapse requires) on ``url``'s
    server, dropped (WITH FORCE) when the block ends."""
    libpq, _ = _split(url)
    database = Database(libpq, f"lowband_bench_{os.getpid()}_{next(_names)}")
    with connect(libpq) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')
        conn.execute(f"CREATE DATABASE \"{database.name}\" TEMPLATE template0 ENCODING 'UTF8' "
                     "LC_COLLATE 'C' LC_CTYPE 'C'")  # fmt: skip
    try:
        yield database
    finally:
        with connect(libpq) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')
