"""The store's own VACUUM/ANALYZE where the PostgreSQL server's autovacuum is off (store/postgres/upkeep.py).

The decision is checked on numbers; the effect on a real schema: rows churned the way notification trims churn
them (the newest kept, the oldest deleted) leave the table file several times bigger without the upkeep than
with it. Each test has a schema of its own, dropped at the end; skipped when no PostgreSQL answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pg_schema import POSTGRES_URL, fresh_schema

from lowband.gateway.api.http.status import _store_upkeep
from lowband.gateway.store.postgres.upkeep import TableStats, Upkeep, due


def test_due_uses_autovacuums_default_thresholds() -> None:
    stats = [
        TableStats("small_clean", live=0, dead=50, changed_since_analyze=50),  # at both thresholds: nothing
        TableStats("small_dirty", live=0, dead=51, changed_since_analyze=0),
        TableStats("big", live=10_000, dead=2_050, changed_since_analyze=1_050),  # at 50 + 20 % / 50 + 10 %
        TableStats("big_dirty", live=10_000, dead=2_051, changed_since_analyze=0),
        TableStats("big_changed", live=10_000, dead=0, changed_since_analyze=1_051),
        TableStats("both", live=100, dead=1_000, changed_since_analyze=1_000),  # a vacuum analyses too
    ]
    assert due(stats) == [("small_dirty", "vacuum"), ("big_dirty", "vacuum"), ("big_changed", "analyze"),
                          ("both", "vacuum")]  # fmt: skip
    assert due([]) == []


@pytest.fixture
def schema() -> Iterator[str]:
    yield from fresh_schema("upkeep")


def _open(schema: str) -> Any:
    from lowband.gateway.store.postgres.store import PostgresStore

    return PostgresStore(POSTGRES_URL, schema)


def _connect(schema: str) -> Any:
    from lowband.gateway.store.postgres.database import connect

    return connect(POSTGRES_URL, schema)


def _churn(conn: Any, first: int, rows: int, keep: int) -> None:
    """``rows`` notification rows of one user from position ``first`` on, then trimmed to the newest ``keep``."""
    conn.execute(
        "INSERT INTO push_notifications (user_id, stream, room_id, event_id, actions, highlight, ts, written)"
        " SELECT '@u:x', g, '!r:x', '$e' || g, '[\"notify\"]', 0, g, g FROM generate_series(%s::bigint, %s) g",
        (first, first + rows - 1),
    )
    conn.execute("DELETE FROM push_notifications WHERE user_id = '@u:x' AND stream <= %s", (first + rows - 1 - keep,))
    if conn.info.server_version >= 150000:
        conn.execute("SELECT pg_stat_force_next_flush()")  # the counts published now, not within a second


def _stats(conn: Any, table: str) -> tuple[int, int]:
    row = conn.execute("SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE schemaname = current_schema()"
                       " AND relname = %s", (table,)).fetchone()  # fmt: skip
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _wait_for_dead_rows(conn: Any, table: str, at_least: int) -> None:
    """The server publishes a backend's counts within a second or so of its transaction: waited for, 10 s at most."""
    deadline = time.monotonic() + 10
    while _stats(conn, table)[1] < at_least:
        assert time.monotonic() < deadline, f"{table}: the server never counted {at_least} dead rows"
        time.sleep(0.1)


def _wait_for_horizon(conn: Any) -> None:
    """Until no other session of the database still sees rows this one deleted: VACUUM removes a dead row only
    once no snapshot can see it, and the suite's other processes share the database (30 s at most)."""
    xid = int(conn.execute("SELECT txid_current()").fetchone()[0]) % 2**32  # the deletes are older than this
    deadline = time.monotonic() + 30
    while conn.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                       " AND backend_xmin IS NOT NULL AND age(backend_xmin) > age(%s::text::xid))",
                       (xid,)).fetchone()[0]:  # fmt: skip
        assert time.monotonic() < deadline, "another session held an old snapshot for 30 s"
        time.sleep(0.05)


def test_a_round_vacuums_the_churned_table_and_keeps_its_file_small(schema: str) -> None:
    store = _open(schema)
    churned, kept = _connect(schema), _connect(schema + "_without")
    try:
        store.close()
        # the same table in a second schema that no upkeep looks after
        kept.execute(f"CREATE SCHEMA {schema}_without")
        kept.execute(f"CREATE TABLE {schema}_without.push_notifications (LIKE {schema}.push_notifications"
                     " INCLUDING ALL)")  # fmt: skip
        upkeep = Upkeep(lambda: _connect(schema), schema)
        assert upkeep.round(churned) == []  # a new store: nothing due
        for cycle in range(12):
            for conn in (churned, kept):
                _churn(conn, cycle * 3000, 3000, keep=1000)
            _wait_for_dead_rows(churned, "push_notifications", 2000)
            _wait_for_horizon(churned)
            assert ("push_notifications", "vacuum") in upkeep.round(churned)

        def size(conn: Any) -> int:
            return int(conn.execute("SELECT pg_relation_size('push_notifications')").fetchone()[0])

        # 36,000 rows written, 1,000 kept: without upkeep the file holds every version ever written
        assert size(churned) * 4 < size(kept), (size(churned), size(kept))
        count = "SELECT COUNT(*) FROM push_notifications WHERE user_id = '@u:x'"
        assert churned.execute(count).fetchone()[0] == kept.execute(count).fetchone()[0] == 1000
    finally:
        churned.close()
        kept.execute(f"DROP SCHEMA IF EXISTS {schema}_without CASCADE")
        kept.close()


def test_the_serving_store_runs_the_loop_only_where_the_server_does_not(schema: str) -> None:
    store = _open(schema)
    try:
        assert store.upkeep is None  # opened, not serving (a command-line tool, a reader worker)
        store.claim_serving()
        with _connect(schema) as conn:
            server_off = conn.execute("SHOW autovacuum").fetchone()[0] == "off"
        assert (store.upkeep is not None) == server_off
        summary = _store_upkeep(SimpleNamespace(store=store))  # what the status summary shows of it
        assert summary == ({"interval_s": 60.0, "rounds": 0, "vacuums": 0, "analyses": 0, "failures": 0}
                           if server_off else None)  # fmt: skip
        if store.upkeep is not None:
            began = time.monotonic()
            store.upkeep.stop()  # wakes the loop's 60 s wait
            assert time.monotonic() - began < 5
            assert store.upkeep._thread is not None and not store.upkeep._thread.is_alive()
    finally:
        store.close()


def test_failing_rounds_are_counted_and_tried_again(schema: str) -> None:
    store = _open(schema)
    store.close()
    connects = []

    def connect() -> Any:
        connects.append(1)
        if len(connects) == 1:
            import psycopg

            raise psycopg.OperationalError("the server is restarting")
        if len(connects) == 2:
            raise RuntimeError("a fault of ours")  # logged with its trace; the loop goes on all the same
        return _connect(schema)

    upkeep = Upkeep(connect, schema, interval_s=0.05)
    upkeep.start()
    try:
        deadline = time.monotonic() + 10
        while upkeep.rounds < 2:
            assert time.monotonic() < deadline, "no round after a failed connection"
            time.sleep(0.05)
        assert upkeep.failures == 2 and len(connects) == 3  # then one connection, kept for later rounds
    finally:
        upkeep.stop()
