"""``lowband bench federation``: a small real run on three gateways, and its refusals."""

from __future__ import annotations

import pytest

from lowband.gateway.bench import federation
from lowband.gateway.bench.processes import BenchError
from lowband.gateway.cli import bench as bench_cli
from lowband.gateway.cli.main import build_parser


@pytest.mark.slow
def test_a_small_run_replicates_catches_up_and_loses_nothing():
    result, table = federation.run(messages=60, catch_up=0, latency_rounds=3, only="lowband")
    assert result["servers"] == 3
    assert result["events_per_s"] > 0 and result["replicate_s"] > 0
    assert result["latency_ms_p50"] > 0
    assert result["catch_up_1k_s"] > 0 and result["catch_up_1k_peak_rss_mb"] > 0
    assert result["catch_up_100k_s"] is None  # --catch-up 0 skips the big one
    # 60 replicated + 1,000 missed by B, each read once on each of the three gateways.
    assert result["events"] == 1060
    assert (result["lost"], result["duplicated"]) == (0, 0)
    assert "synapse" not in result
    assert "catch_up_1k_s" in table and "events_per_s" in table


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"messages": 0}, "--messages"),
    ({"latency_rounds": 0}, "--latency-rounds"),
    ({"catch_up": -1}, "--catch-up"),
])  # fmt: skip
def test_bad_counts_are_refused_before_anything_starts(kwargs, message):
    with pytest.raises(BenchError, match=message):
        federation.run(**kwargs)


def test_options_of_other_benchmarks_are_refused(capsys):
    # Through the real parser, so every option a benchmark adds is there with its default.
    args = build_parser().parse_args(["bench", "wire", "--catch-up", "5"])
    assert bench_cli.run(args) == 2
    assert "takes no --catch-up" in capsys.readouterr().err


def test_the_table_shows_unmeasured_figures_as_dashes():
    result = {"servers": 3, "events_per_s": 100.0, "catch_up_100k_s": None,
              "synapse": {"servers": 2, "events_per_s": 50.0, "catch_up_100k_s": None}, "ratio_events_per_s": 2.0}  # fmt: skip
    lines = federation.table(result).splitlines()
    row = next(line for line in lines if line.startswith("catch_up_100k_s"))
    assert row.split()[1:] == ["-", "-"]
    assert next(line for line in lines if line.startswith("ratio_events_per_s")).split()[1] == "2.0"


def test_a_stall_quotes_what_each_server_logged_of_its_federation(tmp_path):
    from types import SimpleNamespace

    from lowband.gateway.bench.processes import ServerProcess

    log = tmp_path / "serve.log"
    log.write_text("INFO listening\n" + "".join(f"INFO dropped PDU $e{n} from b: no key\n" for n in range(12))
                   + "INFO federation to c failed (timeout); retrying in 2 s\n" + "x" * 400 + " refused\n")  # fmt: skip
    server = ServerProcess("lowband-a", [], tmp_path, log, "", 1)
    lines = server.log_lines(("dropped PDU", "failed", "refused"), last=3, width=50)
    assert lines == ["INFO dropped PDU $e11 from b: no key", "INFO federation to c failed (timeout); retrying in",
                     "x" * 50]  # fmt: skip
    quiet = ServerProcess("lowband-b", [], tmp_path, tmp_path / "none.log", "", 2)
    text = federation._federation_log([SimpleNamespace(process=server), SimpleNamespace(process=quiet)])
    assert text.startswith("lowband-a: ") and "$e11" in text and text.endswith("lowband-b: nothing")
