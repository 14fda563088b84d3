"""Replays on the link, as an attacker on the line would send them (issue 15, finding 12), on simulated time.

The gateway's core and the reference device's core wired together in memory:
a reading is stored and acknowledged, then its captured frame is sent again
and again. What the gateway may spend on it is bounded: no durable write, at
most one repeated answer per ``reack_interval`` after the first, and the real
device's next reading is acknowledged at once. The same attack against a
running gateway is in test_link_replay_runtime.py.
"""

from __future__ import annotations

import os

from lowband.codecs.link_frame import TYPE_DATA, TYPE_HS1, Frame, parse_frame, serial_encode
from lowband.gateway.link.gateway_core import (
    PURE_ACK_PERSIST_EVERY,
    Deliver,
    DeviceEntry,
    GatewayLink,
    Persist,
    Refused,
    Transmit,
)  # fmt: skip
from lowband.gateway.link.handshake import generate_keypair
from lowband.gateway.link.refusals import RefusalLog
from lowband.sim.device_core import DeviceLink

ADDRESS = 7
READING = bytes.fromhex("11000718d71828190172")
ACK_WIRE = 14  # a pure ACK on a serial line: 12 bytes of frame, COBS and the delimiter


class Line:
    """A gateway core and a device core; every Deliver is stored at once; counts what the gateway spends."""

    def __init__(self, reack_interval: float = 1.0, listen: float | None = None) -> None:
        """``listen``: the device hears the gateway only this long after each of its own frames (None: always)."""
        gw_private, gw_public = generate_keypair()
        dev_private, self.device_public = generate_keypair()
        self.gw_private = gw_private
        self.reack_interval = reack_interval
        self.gateway = self._gateway(None)
        self.device = DeviceLink(ADDRESS, dev_private, gw_public, rto=1.0)
        self.now = 0.0
        self.stored: list[bytes] = []
        self.writes = 0
        self.state: dict | None = None
        self.sent_bytes = 0
        self.refused: list[str] = []
        self.device_frames: list[bytes] = []  # every frame the device transmitted: what an attacker records
        self.gateway_frames: list[bytes] = []  # every frame the gateway transmitted
        self.lose_next_answer = False
        self.listen = listen
        self.device_sent_at = float("-inf")

    def _gateway(self, state: dict | None) -> GatewayLink:
        gateway = GatewayLink(self.gw_private, reack_interval=self.reack_interval)
        gateway.add_device(DeviceEntry(ADDRESS, "kitchen", self.device_public), state)
        return gateway

    def restart(self) -> None:
        """The gateway restarts from what it wrote to disk."""
        self.gateway = self._gateway(self.state)

    def carry_out(self, actions: list) -> None:
        lost = self.lose_next_answer
        for action in actions:
            if isinstance(action, Deliver):
                self.stored.append(action.payload)
                self.carry_out(self.gateway.delivered(action.token, self.now))
            elif isinstance(action, Persist):
                self.writes += 1
                self.state = action.state
            elif isinstance(action, Transmit):
                self.sent_bytes += len(serial_encode(action.frame))
                self.gateway_frames.append(action.frame)
                if lost:
                    self.lose_next_answer = False
                elif self.listen is None or self.now - self.device_sent_at <= self.listen:
                    self.device.receive(action.frame, self.now)
            elif isinstance(action, Refused):
                self.refused.append(action.reason)

    def inject(self, frame: bytes) -> None:
        """A frame reaches the gateway now (the device's, or an attacker's copy)."""
        self.carry_out(self.gateway.receive(frame, self.now))

    def step(self) -> None:
        for frame in self.device.poll(self.now):
            self.device_frames.append(frame)
            self.device_sent_at = self.now
            self.inject(frame)
        deadline = self.device.next_deadline()
        self.now = max(self.now + 0.01, deadline if deadline is not None else self.now + 0.5)

    def settle(self, limit: int = 200) -> None:
        """Run until the device has nothing left to send (each reading acknowledged)."""
        for _ in range(limit):
            if self.device.keys is not None and self.device.queued == 0 and self.device.next_deadline() is None:
                return
            self.step()
        raise AssertionError("the device did not settle")

    def last_reading_frame(self) -> bytes:
        return [f for f in self.device_frames if parse_frame(f).type == TYPE_DATA and len(f) > 12][-1]


def _after_one_reading(reack_interval: float = 1.0) -> tuple[Line, bytes]:
    line = Line(reack_interval)
    line.device.publish(READING)
    line.settle()
    assert line.stored == [READING]
    return line, line.last_reading_frame()


def test_30000_replays_of_a_stored_reading_write_nothing_and_repeat_the_ack_once_a_second_at_most():
    line, captured = _after_one_reading(reack_interval=1.0)
    writes, sent = line.writes, line.sent_bytes
    start = line.now
    for _ in range(30_000):  # 100 a second for 300 s of simulated time
        line.inject(captured)
        line.now += 0.01
    seconds = line.now - start
    assert line.stored == [READING], "nothing delivered twice"
    assert line.writes == writes, "a replay costs no durable write (the old code wrote 30,000 times)"
    repeats = (line.sent_bytes - sent) // ACK_WIRE
    assert 1 <= repeats <= 1 + seconds / 1.0, f"{repeats} repeated ACKs in {seconds:.0f} s"
    assert line.sent_bytes - sent <= ACK_WIRE * 302  # 4,228 bytes at most; the old code sent 420,000
    assert line.refused.count("duplicate_limited") == 30_000 - repeats
    # The real device, unharmed: its next reading is stored and acknowledged in the same exchange.
    line.device.publish(b"\x11\x00\x01\x05")
    frames = line.device.poll(line.now)
    assert len(frames) == 1
    line.inject(frames[0])
    assert line.stored == [READING, b"\x11\x00\x01\x05"] and line.device.queued == 0
    assert line.device.epoch == 1, "no new handshake"


def test_the_first_repeat_of_each_message_goes_out_at_once_so_a_lost_ack_does_not_stall_the_device():
    line, first = _after_one_reading(reack_interval=3600.0)  # after the first repeat, one an hour
    for _ in range(100):
        line.inject(first)  # the replays used up this hour's repeat
    assert line.refused.count("duplicate_limited") == 99
    line.device.publish(b"\x11\x00\x01\x05")
    line.lose_next_answer = True  # the ACK of the next reading is lost on the air
    line.step()
    assert line.stored[-1] == b"\x11\x00\x01\x05" and line.device.queued == 1
    line.step()  # the device's retransmission, one second later: the first repeat of this message
    assert line.device.queued == 0, "acknowledged by the repeated answer"
    assert line.device.epoch == 1 and line.stored.count(b"\x11\x00\x01\x05") == 1


def test_a_device_that_listens_one_interval_after_sending_gets_its_ack_while_its_frame_is_replayed():
    # It sleeps between its frames, so the repeats the replays bring mostly go unheard; its own retries are
    # refused while the replays used the allowance; still the next allowed repeat falls in its listening time.
    line = Line(reack_interval=1.0, listen=1.0)
    line.device.publish(READING)
    line.settle()
    line.device.publish(b"\x11\x00\x01\x05")
    line.lose_next_answer = True
    line.step()
    captured = line.last_reading_frame()
    end = line.now + 30.0  # the device gives up after 1 + 2 + 4 + 8 + 8 s
    while line.device.queued and line.now < end:
        deadline = line.device.next_deadline()
        if deadline is not None and deadline <= line.now:
            line.step()
        line.now = round(line.now + 0.1, 6)
        line.inject(captured)  # ten replays a second
    assert line.device.queued == 0 and line.device.epoch == 1, "acknowledged in the first session"
    assert line.refused.count("duplicate_limited") > 0 and line.stored.count(b"\x11\x00\x01\x05") == 1


def test_an_older_reading_replayed_is_refused_without_an_answer():
    line, first = _after_one_reading()
    line.device.publish(b"\x11\x00\x01\x05")
    line.settle()
    writes, sent = line.writes, line.sent_bytes
    for _ in range(1000):
        line.inject(first)
    assert line.refused.count("replay") == 1000
    assert (line.writes, line.sent_bytes) == (writes, sent), "no write, nothing on the air"


def test_after_a_restart_the_first_repeat_is_answered_afresh_and_then_nothing_is_written():
    line, captured = _after_one_reading()
    line.restart()
    writes = line.writes
    for _ in range(1000):
        line.inject(captured)
        line.now += 0.01
    assert line.writes - writes == 1, "one write: the new block of send counters of the fresh answer"
    assert line.stored == [READING]
    line.device.publish(b"\x11\x00\x01\x05")
    line.settle()
    assert line.stored == [READING, b"\x11\x00\x01\x05"]


def test_replayed_commands_make_the_device_answer_but_the_gateway_writes_once_per_32_pure_acks():
    line, _ = _after_one_reading()
    line.carry_out(line.gateway.queue_command(ADDRESS, b"\x12\x00\x62on"))
    line.device.publish(b"\x11\x00\x01\x05")
    line.settle()
    command = next(f for f in line.gateway_frames if parse_frame(f).type == TYPE_DATA and len(f) > 12)  # recorded
    writes = line.writes
    for _ in range(1000):  # replayed to the device, which acknowledges each again with a pure ACK
        line.device.receive(command, line.now)
        line.step()
    assert line.device_frames[-1] != line.device_frames[-2], "the device answered each with a new pure ACK"
    assert line.writes - writes <= 1000 // PURE_ACK_PERSIST_EVERY + 1, "the old code wrote once per pure ACK"
    line.device.publish(b"\x11\x00\x01\x06")
    line.settle()
    line.restart()  # the window on disk is close enough behind for the device's next counter
    line.device.publish(b"\x11\x00\x01\x07")
    line.settle()
    assert line.stored[-2:] == [b"\x11\x00\x01\x06", b"\x11\x00\x01\x07"] and line.device.epoch == 1


def test_a_replayed_hs1_gets_its_hs2_again_once_then_once_per_interval():
    line = Line(reack_interval=1.0)
    hs1 = line.device.poll(0.0)[0]
    line.inject(hs1)
    sent = line.sent_bytes
    for _ in range(20_000):  # 20,000 in 200 s
        line.inject(hs1)
        line.now += 0.01
    repeats = (line.sent_bytes - sent) // 52
    assert 1 <= repeats <= 201 and line.refused.count("handshake_limited") == 20_000 - repeats


def test_forged_hs1_are_refused_and_make_one_log_line_a_minute():
    # 2,000 here (each costs a handshake attempt, 0.4 ms); 20,000 against a running gateway in the runtime test.
    line = Line()
    log = RefusalLog(interval=60.0)
    lines = []
    for i in range(2_000):  # over 600 s of simulated time
        now = i * 0.3
        frame = Frame(TYPE_HS1, 2, ADDRESS, os.urandom(48)).encode()
        for action in line.gateway.receive(frame, now):
            assert isinstance(action, Refused)
            said = log.note(action.reason, action.address, now)
            if said is not None:
                lines.append(said)
        lines += log.due(now)
    lines += log.flush(600.0)
    assert log.totals == {"bad_handshake": 2_000}
    assert len(lines) <= 600 / 60 + 2  # the old runtime logged one line per frame
    assert sum(said.count for said in lines) == 2_000, "every refusal is in a line's count"
    assert lines[0].first and lines[0].address == ADDRESS and "bad_handshake" in lines[0].text()
    assert all(60.0 <= said.seconds for said in lines[1:])


def test_refusal_log_says_what_it_counted_once_the_interval_has_passed():
    log = RefusalLog(interval=60.0)
    first = log.note("bad_tag", 9, 100.0)
    assert first is not None and first.first and first.count == 1
    assert log.next_deadline() is None, "nothing waiting"
    assert [log.note("bad_tag", 9, 100.0 + i) for i in range(1, 31)] == [None] * 30
    assert log.note("undecodable", None, 120.0, count=40) is not None, "another kind has its own line"
    assert log.next_deadline() == 160.0 and log.due(159.9) == []
    [summary] = log.due(160.0)
    assert (summary.kind, summary.count, summary.total, summary.seconds) == ("bad_tag", 30, 31, 60.0)
    assert "30 more" in summary.text() and "address 9" in summary.text()
    assert log.next_deadline() is None and log.due(1000.0) == [] and log.flush(1000.0) == []
    log.note("bad_tag", 9, 170.0)
    assert [line.count for line in log.flush(171.0)] == [1]
    assert log.totals == {"bad_tag": 32, "undecodable": 40}


def test_the_repeat_interval_stays_under_the_device_retry_timeout_at_every_rate():
    from lowband.gateway.link.runtime import reack_interval
    from lowband.sim.device_core import rto_for_bps

    for bps in (50, 100, 300, 1200, 9600, 115_200):
        assert reack_interval(bps) <= rto_for_bps(bps), bps
        assert reack_interval(bps) >= 10 * ACK_WIRE * 10 / bps, "replays hold at most a tenth of the line"
