"""`lowband bench mqtt` end to end on a small run: it measures, counts, and prints the documented last line.

The figures themselves are not checked (shared, noisy machines): only that
the run completes, nothing is lost or duplicated, and the output has the
documented shape.
"""

from __future__ import annotations

import json
import subprocess
import sys

from lowband.gateway.bench import mqtt as bench_mqtt


def test_payloads_are_sixty_bytes_and_carry_their_sequence_number() -> None:
    for seq in (0, 7, 123456):
        data = bench_mqtt.payload(seq)
        assert len(data) == bench_mqtt.PAYLOAD_BYTES == 60
        assert json.loads(data)["seq"] == seq


def test_a_small_run_prints_the_documented_last_line_with_nothing_lost() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lowband.gateway.cli.main", "bench", "mqtt", "--json", "--messages", "400", "--seconds", "60"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(result) == ["events_per_s", "raw_per_s", "ratio", "sent", "lost", "duplicated"]
    assert result["sent"] == 400 and result["lost"] == 0 and result["duplicated"] == 0
    assert result["events_per_s"] > 0 and result["raw_per_s"] > 0
    assert abs(result["ratio"] - result["events_per_s"] / result["raw_per_s"]) < 0.01
    assert "raw: " in done.stderr and "gateway bridging" in done.stderr  # progress on stderr
