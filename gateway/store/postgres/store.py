"""The store on PostgreSQL: the SQLite store's code on a :class:`PostgresDatabase`.

Every table module runs unchanged through :class:`~lowband.gateway.store.postgres.database.PgConnection`
(SQLite's SQL translated, sqlite3's errors kept); what SQLite does with features PostgreSQL lacks (FTS5,
triggers in SQLite's syntax, its JSON functions) has a PostgreSQL module here: :mod:`.search`, :mod:`.relations`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any

from lowband.gateway.store.postgres.database import PostgresDatabase, connect
from lowband.gateway.store.postgres.upkeep import Upkeep
from lowband.gateway.store.sqlite.schema import SCHEMA
from lowband.gateway.store.sqlite.store import SQLiteStore

log = logging.getLogger(__name__)

#: the schema a store uses when its URL names none
DEFAULT_SCHEMA = "lowband"


def split_url(url: str) -> tuple[str, str]:
    """(libpq URL, schema) of a ``postgresql://`` URL; ``?schema=NAME`` picks the schema (default ``lowband``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a postgresql:// URL: {url!r}")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    rest = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest))), schema


#: Test hook: the prefix of the schemas :func:`schema_for_path` names (the suite sets one per run and drops
#: that run's schemas when it ends)
TEST_SCHEMA_PREFIX_ENV = "LOWBAND_TEST_SCHEMA_PREFIX"


def schema_for_path(path: Path) -> str:
    """The schema the test hook gives the store a data dir would hold (one per path, stable across opens)."""
    prefix = os.environ.get(TEST_SCHEMA_PREFIX_ENV, "t_")
    return prefix + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]


class PostgresStore(SQLiteStore):
    """Persistent state of one gateway in one schema of a PostgreSQL database."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        libpq, named = split_url(url)
        self.pg = PostgresDatabase(libpq, schema or named, SCHEMA)
        super().__init__(db=self.pg)
        row = self.db.query_one("SHOW autovacuum")
        self.autovacuum = not (row and row[0] == "off")
        #: the serving process's own VACUUM/ANALYZE where the server's autovacuum is off (upkeep.py)
        self.upkeep: Upkeep | None = None

    def claim_serving(self) -> None:
        """Take the schema for this process's gateway, until the store closes; ValueError when another gateway
        process serves it (stream positions and /sync wake-ups live in one process: docs/storage.md).
        Command-line tools open the store without claiming it. Where the server's autovacuum is off, the
        serving process vacuums and analyses the schema's tables itself (upkeep.py)."""
        row = self.db.query_one("SELECT pg_try_advisory_lock(hashtext(?))", ("lowband-gateway:" + self.pg.schema,))
        if not row or not row[0]:
            raise ValueError(f"another gateway process serves schema {self.pg.schema} of this database")
        if not self.autovacuum and self.upkeep is None:
            self.upkeep = Upkeep(lambda: connect(self.pg.url, self.pg.schema), self.pg.schema)
            log.info(
                "autovacuum is off on this PostgreSQL server: the gateway vacuums and analyses the tables of "
                "schema %s itself, checked every %g s (docs/storage.md)",
                self.pg.schema,
                self.upkeep.interval_s,
            )
            self.upkeep.start()

    def close(self) -> None:
        if self.upkeep is not None:
            self.upkeep.stop()
        super().close()

    def _relation_tables(self) -> Any:
        from lowband.gateway.store.postgres.relations import PgRelationTables

        return PgRelationTables(self.db)

    def _search_tables(self) -> Any:
        from lowband.gateway.store.postgres.search import PgSearchTables

        return PgSearchTables(self.db)
