"""SQLite connection handling with group commit.

Rules:

* one writer thread owns the only connection that writes; every write is a
  function ``fn(conn) -> T`` queued with :meth:`Database.write`;
* the writer runs every job waiting in the queue inside one transaction and
  one fsync (``synchronous=FULL``, WAL), each job inside its own savepoint so
  a failing job rolls back alone and its caller gets the exception;
* a job's future resolves only after COMMIT returned, so "acknowledged" means
  "on disk": ``kill -9`` after an acknowledgement loses nothing;
* a job may say it needs no fsync of its own (``durable=False``): data derived
  from what is already durable and rebuilt from it after a power loss (push
  notification rows with the position judged up to). A batch of such jobs
  only commits with ``synchronous=NORMAL`` (the WAL is written, not synced:
  safe against a crashed process, not a power loss, which rolls back to a
  consistent earlier state); any durable job in the batch makes it FULL, and
  the next durable commit syncs the WAL with them;
* jobs commit in the order they were queued;
* reads run on the event loop's thread with a separate connection (WAL lets
  them proceed while the writer commits); they are short indexed queries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_STOP = object()
_MAX_BATCH = 512


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the pragmas every Lowband connection uses."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA cache_size=-1024")  # 1 MiB of page cache per connection: the OS caches the file anyway
    return conn


def private_file(path: Path) -> None:
    """Create ``path`` readable and writable by its owner only, or take group and other access off it.

    The database holds access tokens, password hashes and link session keys.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists() and companion.stat().st_mode & 0o077:
            companion.chmod(0o600)


class GroupCommit:
    """The writer thread and its queue, shared by the SQLite and PostgreSQL databases (``store/postgres``).

    A subclass opens its connections (``self.reader`` for :meth:`query`), then calls :meth:`_start_writer`; it
    implements
    :meth:`_commit_batch` (one transaction for the jobs waiting, a savepoint each) and :meth:`_close_writer`.
    """

    #: the connection reads run on (the subclass opens it)
    reader: Any

    def _start_writer(self) -> None:
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="lowband-db-writer", daemon=True)
        self._thread.start()
        self.commits = 0

    # ------------------------------------------------------------- writing

    def submit(self, fn: Callable[[Any], T], *, durable: bool = True) -> Future[T]:
        """Queue a write job; the future resolves after its COMMIT (``durable``: see the module rules)."""
        future: Future[T] = Future()
        self._jobs.put((fn, future, durable))
        return future

    async def write(self, fn: Callable[[Any], T], *, durable: bool = True) -> T:
        """Run ``fn`` in the writer's next transaction and wait until committed.

        ``durable=False``: only for data rebuilt from durable data after a power
        loss; its commit is not synced unless a durable job shares it.
        """
        return await asyncio.wrap_future(self.submit(fn, durable=durable))

    def write_sync(self, fn: Callable[[Any], T]) -> T:
        """Blocking form of :meth:`write`, for command-line tools."""
        return self.submit(fn).result()

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is _STOP:
                break
            batch = [first]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                batch.append(job)
            self._commit_batch(batch)
            if stop:
                break
        self._close_writer()

    def _commit_batch(self, batch: list[Any]) -> None:
        raise NotImplementedError

    def _close_writer(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _failed(batch: list[Any], alive: dict[int, bool], exc: BaseException) -> None:
        """Every job of a batch whose commit failed gets ``exc``."""
        for _, future, _ in batch:
            if alive[id(future)] and not future.done():
                future.set_exception(exc)

    @staticmethod
    def _deliver(results: list[tuple[Future[Any], bool, Any]], alive: dict[int, bool]) -> None:
        """Each job's result or exception to its caller, after the commit (callers that gave up are skipped)."""
        for future, ok, value in results:
            if not alive[id(future)]:
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """All rows of a read-only query on the reader connection."""
        return self.reader.execute(sql, args).fetchall()

    def query_one(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        """The first row of a read-only query, or None."""
        return self.reader.execute(sql, args).fetchone()

    def _stop_writer(self) -> None:
        """Finish queued writes and stop the writer thread."""
        self._jobs.put(_STOP)
        self._thread.join(timeout=30)


class Database(GroupCommit):
    """A SQLite file with one group-committing writer and one reader."""

    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        private_file(path)  # before SQLite opens it: its -wal and -shm files take the database file's mode
        writer = connect(path)
        writer.executescript(schema)
        self._writer_conn = writer
        self._synchronous = "FULL"  # the writer connection's setting now (connect() sets FULL)
        self.reader = connect(path)
        self._start_writer()

    def _close_writer(self) -> None:
        self._writer_conn.close()

    def _commit_batch(self, batch: list[Any]) -> None:
        conn = self._writer_conn
        results: list[tuple[Future[Any], bool, Any]] = []
        # A caller may have given up waiting (its future was cancelled): the
        # job still runs, in order, but nobody is told its result.
        alive = {id(future): future.set_running_or_notify_cancel() for _, future, _ in batch}
        synchronous = "FULL" if any(durable for _, _, durable in batch) else "NORMAL"
        try:
            if synchronous != self._synchronous:  # outside a transaction, where SQLite takes it
                conn.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            conn.execute("BEGIN IMMEDIATE")
            for fn, future, _ in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = fn(conn)
                except BaseException as exc:  # the caller gets it; the batch goes on
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((future, False, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((future, True, value))
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            log.error("database commit failed: %s", exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._failed(batch, alive, exc)
            return
        self._deliver(results, alive)

    def close(self) -> None:
        """Finish queued writes, then close both connections."""
        self._stop_writer()
        self.reader.close()
