"""`lowband fuzz`: listing, help, errors, and a crash reported as a crash (a target that crashes on purpose)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lowband.gateway.cli.main import main
from lowband.gateway.fuzz import registry
from lowband.gateway.fuzz.report import FuzzLog
from lowband.gateway.fuzz.runner import INSTALL_HINT


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_list_names_every_target_and_its_property(capsys):
    status, out, err = run(capsys, "fuzz", "--list")
    assert status == 0 and err == ""
    for name in ("cbor", "compact", "msc3079", "framing", "fragment", "link_frame", "handshake", "gateway_link",
                 "mqtt_payload", "canonical_json", "http_params"):  # fmt: skip
        assert f"\n{name} " in "\n" + out
    assert out.count("property:") == len(registry.visible())
    assert "selftest" not in out


def test_help_explains_the_figures_and_the_options(capsys):
    try:
        main(["fuzz", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for words in ("--runs", "--seed", "--corpus", "--timeout", "--list", "cov", "ft", "documented error",
                  "exit status is 1", "tests/fuzz/vectors", "pip install"):  # fmt: skip
        assert words in out, words


def test_unknown_or_missing_target_is_a_usage_error(capsys):
    status, out, err = run(capsys, "fuzz", "no_such_decoder", "--runs", "5")
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and "unknown fuzz target 'no_such_decoder'" in err and "cbor" in err
    status, _, err = run(capsys, "fuzz")
    assert status == 2 and "--list" in err


def test_without_atheris_it_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "atheris", None)  # import atheris now fails, as when it is not installed
    status, out, err = run(capsys, "fuzz", "cbor", "--runs", "5")
    assert (status, out, err) == (2, "", INSTALL_HINT + "\n")


def test_a_crash_is_reported_saved_and_exits_nonzero(tmp_path):
    pytest.importorskip("atheris", reason="atheris has no wheel for this machine (see pyproject.toml, extra 'fuzz')")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "harmless").write_bytes(b"hello")
    (corpus / "bad").write_bytes(b"crash me")
    command = [sys.executable, "-m", "lowband.gateway.cli.main", "fuzz", "selftest_crash", "--runs", "1000",
               "--seed", "1", "--corpus", str(corpus), "--artifacts", str(tmp_path / "out"), "--json"]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["crashes"] == 1 and summary["finding"]
    artifact = Path(summary["artifact"])
    assert artifact.parent == tmp_path / "out" / "selftest_crash"
    assert artifact.read_bytes() == b"crash me"
    trace = Path(summary["traceback"]).read_text()
    assert "ZeroDivisionError" in trace and "selftest_target.py" in trace
    assert "CRASH" in done.stdout and "ZeroDivisionError" in done.stdout


def test_runner_refuses_an_unknown_target():
    done = subprocess.run([sys.executable, "-m", "lowband.gateway.fuzz.runner", "nope"], check=False, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "targets: cbor" in done.stderr


def test_log_reader_takes_libfuzzer_lines():
    log = FuzzLog()
    lines = [
        "INFO: Seed: 42",
        "#2\tINITED cov: 11 ft: 11 corp: 1/1b exec/s: 0 rss: 41Mb",
        "#8192\tpulse  cov: 70 ft: 200 corp: 50/900b lim: 38 exec/s: 4096 rss: 43Mb",
        "#20000\tDONE   cov: 79 ft: 286 corp: 103/1010b lim: 38 exec/s: 10000 rss: 44Mb",
        "Done 20000 runs in 2 second(s)",
        "stat::number_of_executed_units: 20000",
        "stat::new_units_added:          102",
        "stat::peak_rss_mb:              44",
    ]
    progress = [log.feed(line) for line in lines]
    assert [p.runs for p in progress if p] == [2, 8192, 20000]
    summary = log.summary("cbor", 2.0, 0)
    assert summary == {"target": "cbor", "seed": 42, "inputs": 20000, "seconds": 2.0, "exec_per_s": 10000, "cov": 79,
                       "ft": 286, "corpus": 103, "new_units": 102, "peak_rss_mb": 44, "crashes": 0, "finding": None,
                       "artifact": None, "exit_status": 0}  # fmt: skip
    for line in [" === Uncaught Python exception: ===", "KeyError: 'x'", "Traceback (most recent call last):",
                 '  File "x.py", line 1, in f', "KeyError: 'x'", "", "==99== ERROR: libFuzzer: deadly signal",
                 "artifact_prefix='/a/'; Test unit written to /a/crash-0123"]:  # fmt: skip
        log.feed(line)
    assert log.finding == "deadly signal" and log.artifact == "/a/crash-0123"
    assert log.traceback[0] == "KeyError: 'x'" and log.traceback[-2] == "KeyError: 'x'"
    assert log.summary("cbor", 2.0, 1)["crashes"] == 1
