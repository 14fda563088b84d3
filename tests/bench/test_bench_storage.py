"""``lowband bench storage`` (and ``bench homeserver --database``): the pure parts, one tiny real run on SQLite,
and the PostgreSQL side's bytes when the development server answers. Synapse is not started here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lowband.gateway.bench import homeserver, postgres, storage, synapse
from lowband.gateway.bench.processes import BenchError


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lowband.gateway.cli.main", "bench", *args], capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.parametrize(("text", "sizes"), [(None, [10_000, 100_000]), ("300,100", [100, 300]),
                                             ("1_000_000, 10000", [10_000, 1_000_000]), ([200], [200])])  # fmt: skip
def test_event_counts_are_parsed_and_sorted(text, sizes):
    assert storage.parse_events(text) == sizes


@pytest.mark.parametrize("text", ["", "ten", "10,x", "50"])
def test_bad_event_counts_are_refused(text):
    with pytest.raises(ValueError):
        storage.parse_events(text)


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert storage.percentile(values, 0.95) == 95.0
    assert storage.percentile([3.0, 1.0, 2.0], 0.95) == 3.0
    with pytest.raises(ValueError):
        storage.percentile([], 0.5)


def test_flatness_is_each_size_over_the_smallest():
    by_size = {"1000": {"send_p50": 4.0, "send_p95": 0.0, "store_bytes": 10}, "100": {"send_p50": 2.0, "send_p95": 0.0}}
    flat = storage.flatness(by_size)
    assert flat["100"]["send_p50"] == 1.0 and flat["1000"]["send_p50"] == 2.0
    assert flat["1000"]["send_p95"] is None  # no ratio to a zero anchor
    assert "store_bytes" not in flat["1000"]


def test_the_result_has_the_contract_of_the_issue_and_never_invents_process_figures():
    bytes_figures = {
        "sqlite": {"telemetry": 1500.0, "text": 1400.0, "sends_per_s": 900.0, "database": "sqlite", "version": "1"},
        "postgres": {"telemetry": 1700.0, "text": 1600.0, "sends_per_s": 500.0, "database": "pg", "version": "1"},
        "synapse_sqlite": {"telemetry": 5000.0, "text": 4800.0, "database": "sqlite", "version": "1.1"},
    }
    figures = {f"{key}_{p}": 2.0 for key, _ in storage.LATENCIES for p in ("p50", "p95")}
    latency = {"sqlite": {"sizes": {"100": figures, "300": dict(figures, send_p50=3.0)}, "fill_events_per_s": 2000.0}}
    result = storage.assemble(bytes_figures, latency, messages=50, sizes=[100, 300], postgres_skipped=None,
                              database="postgresql://u:secret@127.0.0.1/test")  # fmt: skip
    assert set(result["bytes_per_event"]) == {"sqlite", "postgres", "synapse_sqlite", "synapse_postgres"}
    assert result["bytes_per_event"]["synapse_postgres"] is None
    assert result["ratio_bytes"] == {"sqlite": 0.3, "postgres": None}
    # no process counts measured (no PostgreSQL phase): None for each, never the bytes phase's figure in their place
    assert result["sends_per_s"] == {"1": None, "2": None, "4": None} == result["reads_per_s"]
    assert result["sends_per_s_after_bytes"] == {"sqlite": 900.0, "postgres": 500.0}
    assert result["flatness"]["sqlite"]["300"]["send_p50"] == 1.5
    assert "secret" not in json.dumps(result)
    table = storage.render_table(result)
    assert "0.3×" in table and "1.50×" in table
    assert "/syncs answered by a worker" in table and "long-poll wake-up" in table
    processes = {"sends_per_s": {"1": 400.0, "2": 380.5, "4": 350.0}, "reads_per_s": {"1": 900.0, "2": 1500.0,
                 "4": 1700.0}, "reads_by_workers": {"1": 0.0, "2": 0.5, "4": 0.74},
                 "syncs_per_s": {"1": 120.0, "2": 210.5, "4": 230.0}, "syncs_by_workers": {"1": 0.0, "2": 0.47,
                 "4": 0.71}, "sync_wake_ms": {"1": {"p50": 4.2, "p95": 9.9, "by_workers": 0.0},
                 "2": {"p50": 5.5, "p95": 12.25, "by_workers": 0.5}}}  # fmt: skip
    result = storage.assemble(bytes_figures, latency, messages=50, sizes=[100, 300], postgres_skipped=None,
                              database=None, processes=processes)  # fmt: skip
    assert result["sends_per_s"] == processes["sends_per_s"] and result["reads_per_s"]["4"] == 1700.0
    assert result["syncs_per_s"] == processes["syncs_per_s"] and result["sync_wake_ms"] == processes["sync_wake_ms"]
    table = storage.render_table(result)
    assert "380.5" in table and "1,700.0" in table and "74%" in table
    assert "210.5" in table and "71%" in table and "5.5 / 12.2" in table


def test_homeserver_and_synapse_are_given_the_postgresql_database(tmp_path):
    server = homeserver.prepare_lowband(tmp_path, database_url="postgresql://postgres@127.0.0.1/test?schema=bench_1_1")
    assert server.argv[-2:] == ["--database", "postgresql://postgres@127.0.0.1/test?schema=bench_1_1"]
    section = postgres.Database("postgresql://postgres:pw@127.0.0.1:5433/test", "lowband_bench_1_2").synapse_config()
    assert section["name"] == "psycopg2"
    assert section["args"] | {"cp_min": 0, "cp_max": 0} == {"database": "lowband_bench_1_2", "host": "127.0.0.1",
                                                             "port": 5433, "user": "postgres", "password": "pw",
                                                             "cp_min": 0, "cp_max": 0}  # fmt: skip
    config = synapse.configure_synapse({}, port=1, data_dir="/tmp/x", database=section)
    assert config["database"] == section
    assert postgres.Schema("postgresql://postgres@127.0.0.1/test", "bench_1_3").url.endswith("?schema=bench_1_3")


def test_options_a_benchmark_does_not_take_are_refused_and_bad_counts_fail_in_one_line():
    refused = _cli("mqtt", "--database", "postgresql://postgres@127.0.0.1/test")
    assert refused.returncode == 2 and "takes no --database" in refused.stderr
    bad = _cli("storage", "--events", "many", "--only", "lowband")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("lowband: bench storage failed: --events")


def test_an_unreachable_database_is_one_line():
    with pytest.raises(BenchError, match="cannot connect to PostgreSQL"):
        storage.run(only="lowband", database="postgresql://postgres@127.0.0.1:1/test")


def test_a_tiny_run_on_sqlite_keeps_the_json_contract_with_plausible_figures():
    result, table = storage.run(only="lowband", messages=40, seconds=0.5, latency_rounds=3, events="100,300",
                                try_postgres=False)  # fmt: skip
    result = json.loads(json.dumps(result))  # what --json prints
    assert result["bytes_per_event"]["synapse_sqlite"] is None and result["bytes_per_event"]["postgres"] is None
    for kind in ("bytes_per_event", "bytes_per_text"):
        assert 100 < result[kind]["sqlite"] < 20_000  # a signed event with its indexes: hundreds to a few kB
    latency = result["latency_ms"]["sqlite"]
    assert sorted(latency, key=int) == ["100", "300"]
    for figures in latency.values():
        for key, _ in storage.LATENCIES:
            assert 0 < figures[f"{key}_p50"] <= figures[f"{key}_p95"] < 10_000
        assert figures["store_bytes"] > 0
    assert latency["300"]["store_bytes"] > latency["100"]["store_bytes"]
    assert all(v > 0 for v in result["flatness"]["sqlite"]["300"].values())
    assert result["sends_per_s_after_bytes"]["sqlite"] > 0 and result["sends_per_s"] == {"1": None, "2": None, "4": None}
    assert result["fill_events_per_s"]["sqlite"] > 0
    assert result["postgres_statistics"] is None and result["postgres_skipped"] == "not asked for"
    assert "sqlite, telemetry" in table


@pytest.mark.skipif(postgres.reachable(postgres.DEFAULT_URL) is not None, reason="no PostgreSQL at the default URL")
def test_the_postgresql_side_measures_bytes_in_a_schema_it_drops():
    figures = storage.measure_bytes("postgres", postgres.DEFAULT_URL, 30, 0.5)
    assert 100 < figures["telemetry"] < 20_000 and 100 < figures["text"] < 20_000
    assert figures["sends_per_s"] > 0
    schema = figures["database"].rsplit(" ", 1)[-1]
    with postgres.connect(postgres.DEFAULT_URL) as conn:
        left = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()[0]
    assert left == 0


@pytest.mark.skipif(postgres.reachable(postgres.DEFAULT_URL) is not None, reason="no PostgreSQL at the default URL")
def test_process_counts_are_measured_on_real_workers_and_their_schemas_dropped():
    from lowband.gateway.bench import scaling

    found = scaling.measure_processes(postgres.DEFAULT_URL, 0.5, counts=(1, 2))
    assert set(found["sends_per_s"]) == {"1", "2"} and all(v > 0 for v in found["sends_per_s"].values())
    assert all(v > 0 for v in found["reads_per_s"].values())
    # one process answers everything itself; with a worker beside it, the kernel gives the worker some of the
    # sixteen readers' connections (all of them going to one process: about 2**-15)
    assert found["reads_by_workers"]["1"] == 0.0 and 0 < found["reads_by_workers"]["2"] < 1
    # initial /syncs too, and long-polls parked on every process, each woken by every message sent
    assert all(v > 0 for v in found["syncs_per_s"].values())
    assert found["syncs_by_workers"]["1"] == 0.0 and 0 < found["syncs_by_workers"]["2"] < 1
    for count, wake in found["sync_wake_ms"].items():
        assert 0 < wake["p50"] <= wake["p95"] < 10_000, (count, wake)
    assert found["sync_wake_ms"]["1"]["by_workers"] == 0.0 and 0 < found["sync_wake_ms"]["2"]["by_workers"] < 1
    with postgres.connect(postgres.DEFAULT_URL) as conn:
        left = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE %s",
                            (f"bench_{os.getpid()}_%",)).fetchone()[0]  # fmt: skip
    assert left == 0


@pytest.mark.skipif(postgres.reachable(postgres.DEFAULT_URL) is not None, reason="no PostgreSQL at the default URL")
def test_the_round_after_a_fill_vacuums_the_rows_the_fill_left_dead():
    """What the latency phase runs after each fill: the store's own upkeep round, on the bench's schema."""
    with postgres.fresh_schema(postgres.DEFAULT_URL) as schema:
        table = f'"{schema.name}".notes'
        with postgres.connect(schema.libpq) as conn:
            conn.execute(f'CREATE SCHEMA "{schema.name}"')
            conn.execute(f"CREATE TABLE {table} (n int)")
            conn.execute(f"INSERT INTO {table} SELECT generate_series(1, 5000)")
            conn.execute(f"DELETE FROM {table} WHERE n > 1000")
            dead = "SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'notes'"
            deadline = time.monotonic() + 10  # the statistics reach pg_stat_user_tables a moment after the commit
            while (conn.execute(dead, (schema.name,)).fetchone() or (0,))[0] < 4000:
                assert time.monotonic() < deadline, "the deleted rows never showed as dead"
                time.sleep(0.1)
                conn.execute("SELECT pg_stat_clear_snapshot()")
        assert ("notes", "vacuum") in schema.upkeep_round()
        with postgres.connect(schema.libpq) as conn:
            assert conn.execute(dead, (schema.name,)).fetchone()[0] == 0
        assert schema.upkeep_round() == []  # nothing due any more
