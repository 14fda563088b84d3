"""`lowband bench firmware` on the MicroPython unix port: the five numbers of issue 5, and that they are sane."""

from __future__ import annotations

import json

import pytest

from lowband.gateway.bench import firmware as bench_firmware
from lowband.sim.firmware import MICROPYTHON, MPY_CROSS

pytestmark = [
    pytest.mark.micropython,
    pytest.mark.skipif(not (MICROPYTHON.exists() and MPY_CROSS.exists()), reason="needs micropython and mpy-cross"),
]


def test_bench_reports_the_five_numbers() -> None:
    result, table = bench_firmware.run(messages=3, rounds=1)
    assert list(result) == ["heapsize_bytes", "heap_peak_bytes", "mpy_bytes", "handshake_ms", "reading_ms"]
    assert result["heapsize_bytes"] == 65536
    assert 16 * 1024 < result["heap_peak_bytes"] <= 65536, "the whole device stack runs in a 64 KiB heap"
    assert result["heap_peak_bytes"] % 1024 == 0
    assert 20_000 < result["mpy_bytes"] < 100_000
    assert 0 < result["handshake_ms"] < 5000 and 0 < result["reading_ms"] < result["handshake_ms"]
    assert "the 64 KiB run completed" in table
    json.dumps(result)
