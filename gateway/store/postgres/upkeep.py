"""Vacuum and analyse the store's own tables when the PostgreSQL server does not (``autovacuum = off``).

Without autovacuum, rows the gateway deletes or updates (notification trims, to-device messages delivered,
retention purges, heads and counters updated in place) stay in the table files as dead rows for good, and the
planner's statistics describe the store as it was when it was small. Both make requests slower as history
grows: a /sync's unread counts read through every notification row ever trimmed (measured: 501,120 dead rows
beside 9,900 live ones, 194 MB, 55-80 ms per count at 1,000,000 events), and a big room's newest /messages
page is planned as a full sort. A VACUUM after the fact marks the space free but does not give the file back,
so the upkeep has to run while the store grows, not once it is slow.

The gateway process that serves the store (never a reader worker nor a command-line tool) therefore checks its
schema's tables every :data:`INTERVAL_S` seconds and, with the thresholds PostgreSQL's own autovacuum uses by
default, runs ``VACUUM (ANALYZE)`` on a table whose dead rows passed ``50 + 0.2 * live`` and ``ANALYZE`` on one
whose changes since the last analysis passed ``50 + 0.1 * live``. Where the server's autovacuum is on, this
does nothing (it is not started). docs/storage.md says it.

:func:`due` is the decision, on the numbers of ``pg_stat_user_tables``; :class:`Upkeep` runs it in a thread
with a connection of its own (VACUUM cannot run in a transaction, nor beside the writer's).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

#: seconds between two looks at the tables' numbers
INTERVAL_S = 60.0
#: PostgreSQL's defaults: autovacuum_vacuum_threshold, autovacuum_vacuum_scale_factor
VACUUM_BASE, VACUUM_SCALE = 50, 0.2
#: autovacuum_analyze_threshold, autovacuum_analyze_scale_factor
ANALYZE_BASE, ANALYZE_SCALE = 50, 0.1


@dataclass(frozen=True)
class TableStats:
    """One row of ``pg_stat_user_tables`` (the counts since the server's statistics were last reset)."""

    table: str
    live: int
    dead: int
    changed_since_analyze: int


def due(stats: Iterable[TableStats]) -> list[tuple[str, str]]:
    """(table, "vacuum" or "analyze") for each table past a threshold; a vacuum analyses too."""
    work = []
    for s in stats:
        if s.dead > VACUUM_BASE + VACUUM_SCALE * s.live:
            work.append((s.table, "vacuum"))
        elif s.changed_since_analyze > ANALYZE_BASE + ANALYZE_SCALE * s.live:
            work.append((s.table, "analyze"))
    return work


_STATS = (
    "SELECT relname, n_live_tup, n_dead_tup, n_mod_since_analyze FROM pg_stat_user_tables WHERE schemaname = %s"
    " ORDER BY relname"
)


class Upkeep:
    """The loop of the module docstring in a daemon thread; :meth:`stop` ends it (within one statement)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], schema: str,
                 interval_s: float = INTERVAL_S) -> None:  # fmt: skip
        self._connect = connect
        self.schema = schema
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: the loop's connection (stop() cancels what runs on it)
        self._conn: psycopg.Connection[Any] | None = None
        #: what each round did, for the status summary and the tests: vacuums, analyses, failures
        self.vacuums = 0
        self.analyses = 0
        self.failures = 0
        self.rounds = 0

    def describe(self) -> dict[str, Any]:
        """What the loop has done, for the status summary (docs/status.md ``store_upkeep``)."""
        return {"interval_s": self.interval_s, "rounds": self.rounds, "vacuums": self.vacuums,
                "analyses": self.analyses, "failures": self.failures}  # fmt: skip

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"pg-upkeep-{self.schema}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop; a VACUUM under way is cancelled (the gateway's shutdown does not wait for it)."""
        self._stopping.set()
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                conn.cancel()
            except psycopg.Error:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                self.round(self._conn)
            except psycopg.Error as exc:  # the server restarting, a lock timeout: tried again next round
                if self._stopping.is_set():
                    break
                self.failures += 1
                log.warning("store upkeep (VACUUM/ANALYZE of schema %s) failed, tried again in %g s: %s",
                            self.schema, self.interval_s, exc)  # fmt: skip
                if self._conn is not None:
                    self._conn.close()  # a new connection next round
            except Exception:  # a fault of ours: said with its trace, the loop goes on (the store keeps serving)
                self.failures += 1
                log.exception("store upkeep of schema %s failed", self.schema)
        if self._conn is not None:
            self._conn.close()

    def round(self, conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
        """One look at the numbers and the work they call for, on ``conn`` (autocommit); returns the work done."""
        rows = conn.execute(_STATS, (self.schema,)).fetchall()
        work = due(TableStats(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows)
        done = []
        for table, action in work:
            if self._stopping.is_set():
                break
            began = time.monotonic()
            statement = sql.SQL("VACUUM (ANALYZE) {}.{}" if action == "vacuum" else "ANALYZE {}.{}")
            conn.execute(statement.format(sql.Identifier(self.schema), sql.Identifier(table)))
            if action == "vacuum":
                self.vacuums += 1
            else:
                self.analyses += 1
            done.append((table, action))
            log.info("store upkeep: %s of %s took %.0f ms (the server's autovacuum is off)",
                     "VACUUM ANALYZE" if action == "vacuum" else "ANALYZE", table,
                     (time.monotonic() - began) * 1000)  # fmt: skip
        self.rounds += 1
        return done
