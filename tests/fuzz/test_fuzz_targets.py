"""A short, bounded fuzz run of every target, as `lowband fuzz` runs it: a crash fails the suite.

A fixed seed and input count make each run repeat exactly; the long runs
(a million inputs per target) are `lowband fuzz TARGET --runs 1000000`, by
hand, with the figures in docs/fuzzing.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lowband.gateway.fuzz import registry

# The dev extra installs atheris where a wheel exists (x86_64); elsewhere these runs cannot start.
pytest.importorskip("atheris", reason="atheris has no wheel for this machine (see pyproject.toml, extra 'fuzz')")

# Inputs per target: about a second of fuzzing each (the handshake does X25519 work per input).
RUNS = {"handshake": 300, "framing": 1000, "link_frame": 1500, "gateway_link": 1500}
DEFAULT_RUNS = 2000


@pytest.mark.parametrize("name", registry.visible())
def test_bounded_run_finds_no_crash(name, tmp_path):
    runs = RUNS.get(name, DEFAULT_RUNS)
    command = [sys.executable, "-m", "lowband.gateway.cli.main", "fuzz", name, "--runs", str(runs), "--seed", "7",
               "--artifacts", str(tmp_path / "artifacts"), "--json"]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["crashes"] == 0 and summary["inputs"] == runs
    assert summary["cov"] > 10 and summary["seed"] == 7
    assert not (tmp_path / "artifacts").exists()  # nothing saved, no empty folder left
