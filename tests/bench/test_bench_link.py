"""The parts of `lowband bench link` that need no 100 bps wall-clock run."""

from __future__ import annotations

from lowband.gateway.bench import link as bench_link


def test_frame_sizes_meet_the_targets():
    sizes = bench_link.frame_sizes()
    assert sizes["reading_on_air_bytes"] <= 24
    assert sizes["reading_on_air_bytes"] == 23 and sizes["reading_lora_bytes"] == 21
    assert sizes["handshake_bytes"] == 96
    assert sizes["handshake_framed_bytes"] == 104


def test_simulated_goodput_is_bounded_by_the_line():
    result = bench_link.simulated_goodput(bps=100.0, readings=5)
    assert result["goodput_readings"] == 5
    # Each reading needs its 23-byte frame up (80 payload bits in 230 line bits) and,
    # but for the last, the 14-byte acknowledgement back before the next one starts.
    assert 100 * 80 * 5 / (230 * 5 + 140 * 4) * 0.9 < result["goodput_bps"] <= 100 * 80 * 5 / (230 * 5 + 140 * 4) + 0.01
