"""Indexes of the ``events`` table kept by triggers (relations, full-text search), and their older events.

Rules:

* an index's triggers index every event stored after the index was made, in
  the event's own transaction;
* the events stored before it existed are indexed in batches of stream
  positions, newest first, one batch per write: for up to a time budget while
  the store opens, then one batch per background write job, each queued when
  the last committed, so the one writer is never held for long and a start
  with a large database is not delayed for it;
* how far that has come is one row of the index's progress table
  (``id = 0``, ``below``: the positions below it are still to do, NULL when
  done), so a restart goes on where it stopped.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from lowband.gateway.store.sqlite.database import Database

log = logging.getLogger(__name__)


def _create_index(c: sqlite3.Connection, *, marker: str, schema: list[str], progress_table: str) -> None:
    """Create the index's tables and triggers if missing (``marker``: one of its tables); a new index starts
    its progress above the highest stored event, so the older ones are indexed by :class:`OlderEvents`."""
    fresh = c.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (marker,)).fetchone() is None
    for statement in schema:  # one statement per execute: executescript would commit
        c.execute(statement)
    if fresh:  # events stored before the index existed: the triggers index every later one
        top = c.execute("SELECT MAX(stream) FROM events").fetchone()[0]
        c.execute(f"INSERT OR IGNORE INTO {progress_table} VALUES (0, ?)", (None if top is None else top + 1,))


class OlderEvents:
    """Creates an index (its ``schema``, ``marker`` one of its tables) and indexes the events stored before it
    existed (see the module rules)."""

    def __init__(self, db: Database, *, marker: str, schema: list[str], progress_table: str,
                 index_range: Callable[[sqlite3.Connection, int, int], None], batch: int, budget_s: float,
                 label: str) -> None:  # fmt: skip
        """``index_range(c, lower, below)`` indexes the events at positions in [lower, below); runs batches for
        up to ``budget_s`` now, the rest in background write jobs."""
        self.db = db
        db.write_sync(lambda c: _create_index(c, marker=marker, schema=schema, progress_table=progress_table))
        self.progress_table = progress_table
        self.index_range = index_range
        self.batch = batch
        #: the background indexing's last write, while one runs (tests wait on it)
        self.backfilling: Future[Any] | None = None
        deadline = time.monotonic() + budget_s
        while self.db.write_sync(self._step):
            if time.monotonic() >= deadline:
                log.info("%s: indexing older events in the background", label)
                self._continue()
                break

    def pending(self) -> bool:
        """Whether events stored before the index existed are still being indexed."""
        row = self.db.query_one(f"SELECT below FROM {self.progress_table} WHERE id = 0")
        return row is not None and row[0] is not None

    def _step(self, c: sqlite3.Connection) -> bool:
        """Index one batch; whether more is left."""
        row = c.execute(f"SELECT below FROM {self.progress_table} WHERE id = 0").fetchone()
        if row is None or row[0] is None:
            return False
        below = int(row[0])
        low = c.execute("SELECT MIN(stream) FROM events").fetchone()[0]
        lower = below - self.batch
        self.index_range(c, lower, below)
        done = low is None or lower <= low
        c.execute(f"UPDATE {self.progress_table} SET below = ? WHERE id = 0", (None if done else lower,))
        return not done

    def _continue(self) -> None:
        future = self.db.submit(self._step)
        self.backfilling = future

        def next_step(done: Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None and done.result():
                self._continue()

        future.add_done_callback(next_step)


__all__ = ["OlderEvents"]
