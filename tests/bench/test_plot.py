"""`lowband bench NAME --plot FILE.png`: every benchmark's result drawn beside its anchor.

The figures are built from recorded result dicts with the keys each
benchmark produces (no benchmark runs), and read back through matplotlib's
artists: bar heights, value and ratio labels, "anchor not measured". One
real run of the cheapest benchmark (wire) writes its PNG through the CLI.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import LOWBAND

pytest.importorskip("matplotlib", reason="the plot extra: pip install 'lowband[plot]'")

from lowband.gateway.bench import plot
from lowband.gateway.cli.bench import BENCHMARKS

# Recorded results, one per benchmark, with the keys its run() returns (figures from the project's notes).
RESULTS: dict[str, dict] = {
    "wire": {"telemetry": {"http_json": 590, "msc3079": 253, "compact": 10},
             "text_message": {"http_json": 354, "msc3079": 98, "compact": 14},
             "compact_frame_bytes": 14, "telemetry_compact_hex": "11000718d71828190172"},
    "link": {"handshake_bytes": 96, "handshake_framed_bytes": 104, "reading_on_air_bytes": 23, "reading_lora_bytes": 21,
             "goodput_bps": 41.3, "latency_ms_p50": 402.5, "airtime_ms": 230.0, "latency_over_airtime_ms": 172.5,
             "latency_samples_ms": [400.1, 402.5, 410.0], "lora_airtime_ms": {"sf7": 51.5, "sf12": 1318.9},
             "lora_readings_per_hour_at_1pct": {"sf7": 699, "sf12": 27},
             "anchors": {"lorawan_overhead_bytes": 13, "lorawan_mic_bits": 32, "noise_xx_handshake_bytes": 192,
                         "edhoc_static_dh_bytes": 101},
             "goodput_detail": {"goodput_bps": 41.3, "goodput_readings": 20, "goodput_seconds": 38.7}},
    "firmware": {"heapsize_bytes": 65536, "heap_peak_bytes": 35840, "mpy_bytes": 30720, "handshake_ms": 212.4,
                 "reading_ms": 1.234},
    "mqtt": {"events_per_s": 4877.0, "raw_per_s": 7386.0, "ratio": 0.66, "sent": 20000, "lost": 0, "duplicated": 0},
    "homeserver": {
        "lowband": {"sends_per_s": 808.0, "sends_per_s_8": 2210.5, "sync_latency_ms": 3.7, "rss_idle_mb": 61.2,
                    "rss_load_mb": 80.4, "rss_peak_mb": 82.0, "e2ee_sends_per_s": 109.0, "e2ee_latency_ms": 14.2,
                    "version": "0.1.0", "rate_limited": 0},
        "synapse": {"sends_per_s": 61.0, "sends_per_s_8": 98.3, "sync_latency_ms": 41.5, "rss_idle_mb": 118.0,
                    "rss_load_mb": 160.2, "rss_peak_mb": 170.0, "e2ee_sends_per_s": 15.0, "e2ee_latency_ms": 63.7,
                    "version": "1.120.0", "rate_limited": 0},
        "ratio_sends": 22.4873, "ratio_rss": 0.5019, "ratio_latency": 0.0892, "ratio_e2ee_sends": 7.2667,
        "ratio_e2ee_latency": 0.2229},
    "appservice": {
        "lowband": {"push_events_per_s": 262.0, "push_latency_ms": 20.0, "push_latency_ms_p99": 39.5,
                    "transactions": 40, "events_per_transaction": 50.0, "lost": 0, "duplicated": 0,
                    "rss_idle_mb": 60.0, "rss_load_mb": 75.5, "version": "0.1.0"},
        "synapse": {"push_events_per_s": 22.5, "push_latency_ms": 71.3, "push_latency_ms_p99": 138.0,
                    "transactions": 1900, "events_per_transaction": 1.1, "lost": 0, "duplicated": 0,
                    "rss_idle_mb": 120.0, "rss_load_mb": 170.0, "version": "1.120.0"},
        "ratio_push": 11.6444, "ratio_latency": 0.2805, "ratio_latency_p99": 0.2862, "ratio_rss": 0.4441},
    "federation": {"events_per_s": 342.0, "replicate_s": 8.77, "replication_missing": 0, "send_s": 5.1,
                   "rss_mb": 95.2, "latency_ms_p50": 9.9, "catch_up_1k_s": 3.1, "catch_up_1k_peak_rss_mb": 90.0,
                   "catch_up_100k_s": 133.0, "lost": 0, "duplicated": 0, "events": 104000, "servers": 3,
                   "synapse": {"events_per_s": 29.0, "latency_ms_p50": 59.5, "catch_up_1k_s": 66.0,
                               "catch_up_100k_s": 1200.0, "rss_mb": 150.3, "lost": 0, "duplicated": 0, "servers": 2,
                               "version": "1.120.0"},
                   "ratio_events_per_s": 11.793, "ratio_latency": 0.166, "ratio_catch_up_1k": 0.047},
    # The keys gateway/bench/ble.py's docstring names (the benchmark is being added beside this test).
    "ble": {"adverts_per_s": 3100.0, "decode_only_per_s": 9800.0, "ratio": 0.316, "latency_ms_p50": 2.4,
            "latency_ms_p99": 9.8, "events": 5000, "lost": 0, "duplicated": 0, "sensors": 500},
    "coap": {"send": {"http_json": 778, "msc3079": 143, "compact": 56},
             "login": {"http_json": 775, "msc3079": 172, "compact": 190},
             "idle_10min": {"http_json": 19300, "msc3079": 250, "compact": 54},
             "sync_5": {"http_json": 2311, "msc3079": 989, "compact": 154}, "send_100bps_ms": 4480},
    # docs/benchmarks.md, abridged
    "storage": {"bytes_per_event": {"sqlite": 1667.1, "postgres": 1654.8, "synapse_sqlite": 2797.6,
                                    "synapse_postgres": 4427.8},
                "bytes_per_text": {"sqlite": 1372.2, "postgres": 2027.5, "synapse_sqlite": 2773.0,
                                   "synapse_postgres": 3706.9},
                "flatness": {"sqlite": {"10000": {"send_p50": 1.0}, "100000": {
                                 "send_p50": 0.92, "sync_p50": 0.94, "initial_sync_p50": 1.14,
                                 "messages_newest_p50": 1.06, "messages_deep_p50": 1.37}},
                             "postgres": {"10000": {"send_p50": 1.0}, "100000": {
                                 "send_p50": 1.04, "sync_p50": 1.12, "initial_sync_p50": 1.1,
                                 "messages_newest_p50": 1.05, "messages_deep_p50": 1.0}}},
                "sends_per_s": {"1": 164.2}, "multi_process": "not implemented", "events": [10000, 100000],
                "postgres_skipped": None},
}  # fmt: skip

# (panel index, [bar heights left to right]) the figure of each recorded result must hold.
HEIGHTS = {
    "wire": (0, [590, 253, 10, 354, 98, 14]),
    "coap": (0, [775, 172, 190, 778, 143, 56, 2311, 989, 154]),
    "link": (1, [96, 101, 192]),
    "firmware": (0, [35, 64]),
    "mqtt": (0, [4877, 7386, 7386 * 0.7]),
    "homeserver": (0, [808, 61, 2210.5, 98.3, 109, 15]),
    "appservice": (1, [20.0, 71.3, 39.5, 138.0]),
    "federation": (2, [3.1, 66, 133, 1200]),
    "ble": (1, [2.4, 9.8]),
    "storage": (0, [1667.1, 2797.6, 1654.8, 4427.8]),
}
# A label each figure must show: a value with its ratio to the anchor.
LABELS = {
    "wire": "10\n0.0169× HTTP",
    "link": "21\n0.913× LoRaWAN",  # the LoRa packet against LoRaWAN's 13 B + the same 10-byte payload
    "firmware": "35\n0.547× budget",
    "mqtt": "4,877\n0.660× raw",
    "homeserver": "2,210\n22.5× Synapse",
    "appservice": "262\n11.6× Synapse",
    "federation": "342\n11.8× Synapse",
    "ble": "3,100\n0.316× decoder",
    "coap": "56\n0.0720× HTTP",
    "storage": "1,667\n0.596× Synapse",
}


def heights(ax) -> list[float]:
    """Bar heights left to right (bars are the axes' rectangles; legend handles are not among them)."""
    bars = sorted(ax.patches, key=lambda p: p.get_x())
    return [round(p.get_height(), 3) for p in bars]


def all_text(figure) -> str:
    """Every string drawn on the figure: labels in the axes, titles, legends and the notes under the panels."""
    from matplotlib.text import Text

    return "\n".join(t.get_text() for t in figure.findobj(Text))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's signature and IHDR chunk; AssertionError if it is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    assert data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def test_every_benchmark_has_a_description_and_a_recorded_result():
    assert set(BENCHMARKS) <= set(plot.DESCRIPTIONS), "a benchmark without a plot: describe it in bench/plot.py"
    assert set(plot.DESCRIPTIONS) == set(RESULTS)


def test_recorded_results_carry_the_keys_the_benchmarks_produce():
    from lowband.gateway.bench import appservice, homeserver, wire

    assert set(homeserver.FIGURE_KEYS) <= RESULTS["homeserver"]["lowband"].keys()
    assert set(appservice.FIGURE_KEYS) <= RESULTS["appservice"]["synapse"].keys()
    real_wire = wire.measure()  # pure byte counting: the real keys, and the real numbers
    assert real_wire == {k: RESULTS["wire"][k] for k in real_wire}
    assert set(homeserver.assemble(RESULTS["homeserver"])) == set(RESULTS["homeserver"])


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_figure_holds_the_values_and_ratios(name, tmp_path):
    result = RESULTS[name]
    figure = plot.build_figure(name, result)
    description = plot.DESCRIPTIONS[name]
    assert len(figure.axes) == len(description.panels)
    panel, expected = HEIGHTS[name]
    assert heights(figure.axes[panel]) == pytest.approx(expected, rel=1e-3)
    drawn = all_text(figure)
    assert LABELS[name] in drawn, drawn
    # A full result leaves no bar unmeasured: every getter of the description found its key.
    assert plot.NOT_MEASURED not in drawn and plot.ANCHOR_NOT_MEASURED not in drawn
    assert f"lowband bench {name}" in figure.get_suptitle()
    path = tmp_path / f"{name}.png"
    plot.save(figure, path)
    width, height = png_size(path)
    assert 600 <= width <= 2400 and 400 <= height <= 900, (width, height)
    assert path.stat().st_size > 10_000  # a drawn figure, not an empty canvas


def test_ratio_on_each_measured_bar_is_the_ratio_to_its_groups_anchor():
    figure = plot.build_figure("homeserver", RESULTS["homeserver"])
    latency = [t.get_text() for t in figure.axes[1].texts]
    assert "3.7\n0.0892× Synapse" in latency and "14.2\n0.223× Synapse" in latency
    assert "41.5" in latency and "63.7" in latency  # the anchor's bars: value only


@pytest.mark.parametrize("name", ["homeserver", "appservice", "federation"])
def test_only_lowband_says_anchor_not_measured(name, tmp_path):
    result = copy.deepcopy(RESULTS[name])
    result.pop("synapse")
    for key in [k for k in result if k.startswith("ratio_")]:
        result[key] = None
    figure = plot.build_figure(name, result)
    drawn = all_text(figure)
    assert plot.ANCHOR_NOT_MEASURED in drawn and "× Synapse" not in drawn
    for ax in figure.axes:
        values = heights(ax)
        assert values[1::2] == [0.0] * (len(values) // 2)  # each anchor bar is empty
        assert all(v > 0 for v in values[0::2])  # ours are drawn
    plot.write_plot(name, result, tmp_path / "only.png")
    png_size(tmp_path / "only.png")


def test_a_failed_anchor_and_a_skipped_catch_up_are_said_on_the_figure():
    result = copy.deepcopy(RESULTS["federation"])
    result["synapse"]["catch_up_100k_s"] = None  # --synapse-catch-up 0, the default
    assert plot.ANCHOR_NOT_MEASURED in all_text(plot.build_figure("federation", result))
    result["synapse"] = {"error": "synapse did not start within 60 s"}
    drawn = all_text(plot.build_figure("federation", result))
    assert "Synapse failed: synapse did not start within 60 s" in drawn


def test_getters_refuse_what_is_not_a_number():
    get = plot.at("lowband", "x")
    assert get({"lowband": {"x": 3}}) == 3.0
    for bad in ({}, {"lowband": None}, {"lowband": {"x": "3"}}, {"lowband": {"x": True}},
                {"lowband": {"x": float("nan")}}, {"lowband": 5}):  # fmt: skip
        assert get(bad) is None


def run_lowband(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LOWBAND, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_bench_wire_writes_its_plot(tmp_path):
    path = tmp_path / "wire.png"
    done = run_lowband("bench", "wire", "--json", "--plot", str(path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["telemetry"]["compact"] == 10  # stdout stays the JSON alone
    assert f"plot written to {path}" in done.stderr
    width, height = png_size(path)
    assert width >= 600 and height >= 400


def _read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores permission bits; sysfs refuses it)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/sys/kernel")
    try:
        (folder / "lowband-probe.png").open("wb").close()
    except OSError:
        return folder
    pytest.skip("no directory here refuses root")


@pytest.mark.parametrize("where", ["missing", "file-parent", "read-only", "directory"])
def test_unwritable_plot_path_fails_before_the_benchmark(where, tmp_path):
    (tmp_path / "a-file").write_text("x")
    path = {
        "missing": tmp_path / "nowhere" / "x.png",
        "file-parent": tmp_path / "a-file" / "x.png",
        "read-only": _read_only_dir(tmp_path) / "x.png" if where == "read-only" else None,
        "directory": tmp_path,
    }[where]
    started = time.monotonic()
    # homeserver would start a gateway and Synapse for minutes: the check comes first.
    done = run_lowband("bench", "homeserver", "--only", "lowband", "--plot", str(path), timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("lowband: error: --plot ") and "cannot write there" in done.stderr
    assert done.stderr.count("\n") == 1 and "bench homeserver:" not in done.stderr  # nothing ran
    assert done.stdout == "" and time.monotonic() - started < 30
    assert not Path(str(path)).is_file()


def test_plot_must_be_a_png_name(tmp_path):
    done = run_lowband("bench", "wire", "--plot", str(tmp_path / "x.jpg"))
    assert done.returncode == 2 and "ending in .png" in done.stderr and done.stdout == ""


def test_missing_matplotlib_says_how_to_install_it(tmp_path):
    # The CLI in a Python where importing matplotlib fails, as in an install without the plot extra.
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from lowband.gateway.cli.main import main\n"
            "sys.exit(main(sys.argv[1:]))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, "bench", "wire", "--plot", str(tmp_path / "w.png")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert "--plot needs matplotlib" in done.stderr and "pip install 'lowband[plot]'" in done.stderr
    assert not (tmp_path / "w.png").exists()


def test_help_names_the_option():
    done = run_lowband("bench", "--help")
    assert "--plot FILE.png" in done.stdout and "lowband[plot]" in done.stdout
