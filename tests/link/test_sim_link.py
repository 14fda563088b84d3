"""Link emulators: the sans-I/O LinkModel and the pty relay around it (lowband.sim)."""

from __future__ import annotations

import os
import random
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from lowband.sim.link_model import A, B, LinkModel
from lowband.sim.pty_link import PtyLink


def run(model: LinkModel, writes=(), until: float | None = None, poll_every: float | None = None):
    """Drive a model in simulated time: apply ``writes`` [(t, side, data)] and poll at every deadline.

    Returns deliveries as [(time, side_to, bytes)]. With ``poll_every`` it also
    polls on a fixed grid, to show polling does not change the outcome.
    """
    pending = sorted(writes, key=lambda w: w[0])
    out = []
    now = 0.0
    grid = 0.0
    for _ in range(1_000_000):
        candidates = [t for t in (model.next_deadline(),) if t is not None]
        if pending:
            candidates.append(pending[0][0])
        if poll_every is not None and (pending or not model.idle):
            grid += poll_every
            candidates.append(grid)
        if not candidates:
            return out
        now = max(now, min(candidates))
        if until is not None and now > until:
            return out
        while pending and pending[0][0] <= now:
            t, side, data = pending.pop(0)
            model.write(side, data, t)
        for side_to, data in model.poll(now):
            out.append((now, side_to, data))
    raise AssertionError("simulation did not settle")


def joined(deliveries, side_to):
    return b"".join(data for _, s, data in deliveries if s == side_to)


def last_time(deliveries, side_to):
    return max(t for t, s, _ in deliveries if s == side_to)


def first_time(deliveries, side_to):
    return min(t for t, s, _ in deliveries if s == side_to)


# ---------------------------------------------------------------------------
# Timing


@pytest.mark.parametrize(("bps", "seconds"), [(100, 1.0), (50, 2.0), (9600, 10 * 10 / 9600)])
def test_ten_bytes_take_ten_byte_times(bps, seconds):
    model = LinkModel(bps)
    model.write(A, b"0123456789", 0.0)
    assert model.next_deadline() == pytest.approx(seconds / 10)
    assert model.poll(seconds * 0.999) == [(B, b"012345678")]
    assert model.poll(seconds) == [(B, b"9")]
    assert model.idle and model.next_deadline() is None


@pytest.mark.parametrize(("bps", "seconds"), [(100, 1.0), (50, 2.0)])
def test_latency_adds_to_the_line_time(bps, seconds):
    model = LinkModel(bps, latency=0.3)
    deliveries = run(model, [(0.0, A, b"0123456789")])
    assert joined(deliveries, B) == b"0123456789"
    assert last_time(deliveries, B) == pytest.approx(seconds + 0.3)
    assert first_time(deliveries, B) == pytest.approx(seconds / 10 + 0.3)
    assert model.poll(10.0) == []


def test_bits_per_byte():
    model = LinkModel(100, bits_per_byte=8)
    deliveries = run(model, [(0.0, A, bytes(10))])
    assert last_time(deliveries, B) == pytest.approx(0.8)


def test_writes_while_sending_extend_the_burst_without_a_gap():
    deliveries = run(LinkModel(100), [(0.0, A, b"abcde"), (0.2, A, b"fghij")])
    assert joined(deliveries, B) == b"abcdefghij"
    assert last_time(deliveries, B) == pytest.approx(1.0)


def test_a_write_after_idle_starts_when_written():
    deliveries = run(LinkModel(100), [(0.0, A, b"ab"), (5.0, A, b"cd")])
    assert last_time(deliveries, B) == pytest.approx(5.2)


def test_time_must_not_go_backwards():
    model = LinkModel(100)
    model.write(A, b"x", 1.0)
    with pytest.raises(ValueError):
        model.poll(0.5)
    with pytest.raises(ValueError):
        model.write(B, b"y", 0.9)


@pytest.mark.parametrize(
    "options",
    [{"bps": 0}, {"bps": -5}, {"latency": -1}, {"bit_error_rate": 1.5}, {"frame_loss": -0.1},
     {"collisions": "maybe"}, {"bits_per_byte": 0}, {"cut_rate": 2}],
)
def test_bad_options(options):
    with pytest.raises(ValueError):
        LinkModel(**options)


def test_bad_side_and_data():
    model = LinkModel()
    with pytest.raises(ValueError):
        model.write("C", b"x", 0.0)
    with pytest.raises(ValueError):
        model.write(A, "text", 0.0)


# ---------------------------------------------------------------------------
# Half duplex


def test_half_duplex_queue_waits_for_the_other_side():
    deliveries = run(LinkModel(100), [(0.0, A, b"0123456789"), (0.5, B, b"vwxyz")])
    assert joined(deliveries, B) == b"0123456789"
    assert joined(deliveries, A) == b"vwxyz"
    # B's burst starts when A's ends (1.0 s) and lasts 0.5 s.
    assert first_time(deliveries, A) == pytest.approx(1.1)
    assert last_time(deliveries, A) == pytest.approx(1.5)


def test_half_duplex_turnaround_is_the_latency():
    deliveries = run(LinkModel(100, latency=0.25), [(0.0, A, b"0123456789"), (0.5, B, b"vwxyz")])
    # A's last byte reaches B at 1.25 s; only then may B send.
    assert last_time(deliveries, B) == pytest.approx(1.25)
    assert first_time(deliveries, A) == pytest.approx(1.25 + 0.1 + 0.25)
    assert last_time(deliveries, A) == pytest.approx(1.25 + 0.5 + 0.25)


def test_half_duplex_waiting_side_goes_next():
    # B waits from 0.5 s; A writes again at 1.0 s, just as its burst ends: B goes first.
    deliveries = run(LinkModel(100), [(0.0, A, b"aaaaaaaaaa"), (0.5, B, b"bbbbb"), (1.0, A, b"AAAAA")])
    assert last_time(deliveries, A) == pytest.approx(1.5)
    assert joined(deliveries, B) == b"aaaaaaaaaaAAAAA"
    assert last_time(deliveries, B) == pytest.approx(2.0)


def test_half_duplex_drop_loses_bytes_written_while_the_other_side_sends():
    model = LinkModel(100, collisions="drop")
    deliveries = run(model, [(0.0, A, b"0123456789"), (0.5, B, b"lost!"), (1.5, B, b"kept")])
    assert joined(deliveries, A) == b"kept"
    assert model.counters[B].bytes_collided == 5
    assert model.counters[B].bytes_sent == 4
    assert model.counters[B].bytes_written == 9


def test_full_duplex_sends_both_ways_at_once():
    deliveries = run(LinkModel(100, half_duplex=False), [(0.0, A, b"0123456789"), (0.5, B, b"vwxyz")])
    assert last_time(deliveries, B) == pytest.approx(1.0)
    assert last_time(deliveries, A) == pytest.approx(1.0)


def test_next_deadline_covers_a_waiting_side_even_when_everything_is_lost():
    model = LinkModel(100, frame_loss=1.0)
    model.write(A, b"abc\x00", 0.0)
    model.write(B, b"xyz\x00", 0.1)
    assert model.next_deadline() == pytest.approx(0.4)  # A's burst ends; B takes over
    assert model.poll(0.4) == []
    assert model.next_deadline() is None  # B's frame is lost too
    assert model.counters[A].frames_lost == 1 and model.counters[B].frames_lost == 1
    assert model.idle


# ---------------------------------------------------------------------------
# Impairments


def frames(n, rng, lo=4, hi=40):
    """n COBS-like frames: random non-zero bytes, each ended by 0x00."""
    return [bytes(rng.randrange(1, 256) for _ in range(rng.randrange(lo, hi))) + b"\x00" for _ in range(n)]


def send_all(model, chunks, side=A):
    stream = b"".join(chunks)
    model.write(side, stream, 0.0)
    out = model.poll(1e12)
    return b"".join(data for _, data in out)


IMPAIRED = {"bit_error_rate": 0.002, "frame_loss": 0.1, "byte_loss": 0.01, "cut_rate": 0.1}


def test_same_seed_same_outcome_different_seed_different():
    rng = random.Random(7)
    writes = [(i * 0.37, A if i % 3 else B, f) for i, f in enumerate(frames(60, rng))]
    one = run(LinkModel(2400, seed=42, **IMPAIRED), writes)
    two = run(LinkModel(2400, seed=42, **IMPAIRED), writes)
    other = run(LinkModel(2400, seed=43, **IMPAIRED), writes)
    assert one == two
    assert (joined(one, A), joined(one, B)) != (joined(other, A), joined(other, B))


def test_polling_pattern_does_not_change_the_outcome():
    rng = random.Random(8)
    writes = [(i * 0.05, A if i % 2 else B, f) for i, f in enumerate(frames(40, rng))]
    sparse = LinkModel(2400, seed=5, **IMPAIRED)
    dense = LinkModel(2400, seed=5, **IMPAIRED)
    a = run(sparse, writes)
    b = run(dense, writes, poll_every=0.001)
    assert (joined(a, A), joined(a, B)) == (joined(b, A), joined(b, B))
    assert sparse.totals() == dense.totals()


def test_frame_loss_statistics():
    rng = random.Random(1)
    sent = frames(4000, rng)
    model = LinkModel(1e6, frame_loss=0.2, seed=3)
    received = send_all(model, sent).split(b"\x00")[:-1]
    counters = model.counters[A]
    assert counters.frames_sent == 4000
    assert counters.frames_lost == 4000 - len(received)
    assert 0.2 - 0.03 < counters.frames_lost / 4000 < 0.2 + 0.03
    # Loss removes whole frames: what arrives is an in-order subsequence, intact.
    it = iter(f[:-1] for f in sent)
    assert all(any(frame == candidate for candidate in it) for frame in received)
    assert counters.bytes_dropped + counters.bytes_delivered == counters.bytes_sent


def test_bit_error_statistics():
    rng = random.Random(2)
    data = bytes(rng.randrange(256) for _ in range(50_000))  # 400,000 bits
    model = LinkModel(1e6, bit_error_rate=0.01, seed=4)
    received = send_all(model, [data])
    assert len(received) == len(data)
    flipped = sum(bin(x ^ y).count("1") for x, y in zip(data, received))
    assert flipped == model.counters[A].bits_flipped
    assert 4000 * 0.9 < flipped < 4000 * 1.1


def test_every_bit_flips_at_probability_one():
    model = LinkModel(1e6, bit_error_rate=1.0)
    assert send_all(model, [b"\x00\x0f\xff"]) == b"\xff\xf0\x00"


def test_byte_loss_statistics():
    data = bytes(range(1, 256)) * 80  # 20,400 bytes, no delimiter
    model = LinkModel(1e6, byte_loss=0.05, seed=9)
    received = send_all(model, [data])
    lost = len(data) - len(received)
    assert lost == model.counters[A].bytes_dropped
    assert 0.05 * 0.85 < lost / len(data) < 0.05 * 1.15


def test_cut_frames_keep_a_strict_prefix_and_their_delimiter():
    rng = random.Random(3)
    sent = frames(500, rng)
    model = LinkModel(1e6, cut_rate=1.0, seed=11)
    received = send_all(model, sent).split(b"\x00")[:-1]
    assert len(received) == 500 == model.counters[A].frames_cut
    lengths = []
    for original, got in zip(sent, received):
        assert original[:-1].startswith(got)
        assert len(got) < len(original) - 1
        lengths.append(len(got) / (len(original) - 1))
    # The cut point is uniform over the frame: about half survives on average.
    assert 0.4 < sum(lengths) / len(lengths) < 0.55


def test_cut_frame_statistics_and_waiting_for_the_delimiter():
    rng = random.Random(4)
    sent = frames(3000, rng)
    model = LinkModel(1e6, cut_rate=0.15, seed=12)
    received = send_all(model, sent).split(b"\x00")[:-1]
    assert len(received) == 3000
    cut = sum(1 for original, got in zip(sent, received) if got != original[:-1])
    assert cut == model.counters[A].frames_cut
    assert 0.15 - 0.03 < cut / 3000 < 0.15 + 0.03

    held = LinkModel(100, cut_rate=1.0)
    held.write(A, b"abcdef", 0.0)
    assert held.poll(10.0) == [] and held.next_deadline() is None and not held.idle
    held.write(A, b"\x00", 10.0)
    delivered = b"".join(d for _, d in held.poll(20.0))
    assert delivered.endswith(b"\x00") and b"abcdef".startswith(delivered[:-1])


def test_lone_delimiters_are_not_frames():
    model = LinkModel(1e6, frame_loss=1.0)
    assert send_all(model, [b"\x00\x00\x00"]) == b"\x00\x00\x00"
    assert model.counters[A].frames_sent == 0


# ---------------------------------------------------------------------------
# The pty relay


def read_exactly(port: serial.Serial, n: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    out = bytearray()
    while len(out) < n and time.monotonic() < deadline:
        out += port.read(n - len(out))
    return bytes(out)


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_pty_relay_passes_every_byte_value_both_ways():
    before = open_fds()
    with PtyLink(bps=20_000) as link:
        port_a = serial.Serial(link.path_a, timeout=0.05)
        port_b = serial.Serial(link.path_b, timeout=0.05)
        try:
            everything = bytes(range(256))
            port_a.write(everything)
            assert read_exactly(port_b, 256, timeout=5.0) == everything
            port_b.write(everything[::-1] + b"\r\n\x03\x11\x13\x7f")
            assert read_exactly(port_a, 262, timeout=5.0) == everything[::-1] + b"\r\n\x03\x11\x13\x7f"
            assert link.wait_idle(timeout=5.0)
            # Nothing was echoed back to the writer.
            assert port_a.read(1) == b"" and port_b.read(1) == b""
            counters = link.counters()
            assert counters[A].bytes_delivered == 256 and counters[B].bytes_delivered == 262
        finally:
            port_a.close()
            port_b.close()
    assert not link.running
    assert open_fds() == before


def test_pty_relay_enforces_100_bps():
    with PtyLink(bps=100) as link:
        port_a = serial.Serial(link.path_a, timeout=0.05)
        port_b = serial.Serial(link.path_b, timeout=0.05)
        try:
            frame = bytes(range(1, 20)) + b"\x00"  # 20 bytes = 200 bits on the line
            start = time.monotonic()
            port_a.write(frame)
            got = read_exactly(port_b, 20, timeout=6.0)
            elapsed = time.monotonic() - start
            assert got == frame
            assert 2.0 <= elapsed < 4.0
        finally:
            port_a.close()
            port_b.close()


def test_pty_relay_applies_the_model_impairments():
    with PtyLink(bps=20_000, frame_loss=1.0) as link:
        port_a = serial.Serial(link.path_a, timeout=0.05)
        port_b = serial.Serial(link.path_b, timeout=0.05)
        try:
            port_a.write(b"gone\x00")
            assert wait_for(lambda: link.counters()[A].bytes_sent == 5, timeout=5.0)
            assert link.wait_idle(timeout=5.0)
            assert port_b.read(16) == b""
            assert link.counters()[A].frames_lost == 1
        finally:
            port_a.close()
            port_b.close()


def test_pty_relay_survives_a_side_reopening_its_port():
    with PtyLink(bps=20_000) as link:
        port_a = serial.Serial(link.path_a, timeout=0.05)
        try:
            serial.Serial(link.path_b, timeout=0.05).close()
            port_b = serial.Serial(link.path_b, timeout=0.05)
            try:
                port_a.write(b"again\x00")
                assert read_exactly(port_b, 6, timeout=5.0) == b"again\x00"
            finally:
                port_b.close()
        finally:
            port_a.close()


# MicroPython's side of a serial link, as firmware opens it (DESIGN.md: builtin
# open, termios.setraw, select.poll): echo n bytes back.
_MICROPYTHON_ECHO = """
import sys, termios, select
f = open(sys.argv[1], "r+b")
termios.setraw(f.fileno())  # flushes input that arrived before it
print("ready")
n = int(sys.argv[2])
p = select.poll()
p.register(f, select.POLLIN)
got = bytearray()
while len(got) < n and p.poll(5000):
    got += f.read(1)
f.write(bytes(got))
print("echoed", len(got))
"""


@pytest.mark.micropython
def test_pty_relay_with_the_micropython_unix_port(tmp_path):
    micropython = Path(sys.executable).parent / "micropython"
    if not micropython.exists():
        pytest.fail(f"micropython not found at {micropython}: it is a dev dependency (pip install -e '.[dev]')")
    script = tmp_path / "echo.py"
    script.write_text(_MICROPYTHON_ECHO, encoding="utf-8")
    everything = bytes(range(256))
    with PtyLink(bps=20_000) as link:
        port_b = serial.Serial(link.path_b, timeout=0.05)
        proc = subprocess.Popen(
            [str(micropython), str(script), link.path_a, "256"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            # Like a UART, the device hears only what arrives after it set its port up.
            readable, _, _ = select.select([proc.stdout], [], [], 10.0)
            assert readable and proc.stdout.readline().strip() == "ready"
            port_b.write(everything)
            echoed = read_exactly(port_b, 256, timeout=10.0)
            output, _ = proc.communicate(timeout=10)
            assert proc.returncode == 0 and "echoed 256" in output, output
            assert echoed == everything
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
            port_b.close()


def test_pty_link_lifecycle():
    link = PtyLink(bps=20_000)
    with pytest.raises(RuntimeError):
        _ = link.path_a
    link.start()
    try:
        assert link.running
        assert link.path_a != link.path_b
        with pytest.raises(RuntimeError):
            link.start()
    finally:
        link.stop()
    link.stop()  # a second stop is harmless
    assert not link.running
    with pytest.raises(ValueError):
        PtyLink(LinkModel(), bps=100)
