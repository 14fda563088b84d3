"""Gateway and device link cores wired together in memory (no I/O)."""

from __future__ import annotations

import random

import pytest

from lowband.codecs.link_frame import (
    TYPE_DATA,
    TYPE_HS1,
    Frame,
    LinkFrameError,
    SerialFramer,
    parse_frame,
    serial_encode,
)  # fmt: skip
from lowband.gateway.link import crypto
from lowband.gateway.link.gateway_core import (
    CommandAcked,
    CommandDropped,
    Deliver,
    DeviceEntry,
    GatewayLink,
    Persist,
    Refused,
    Session,
    SessionStarted,
    Transmit,
)  # fmt: skip
from lowband.gateway.link.handshake import generate_keypair
from lowband.sim.device_core import DeviceLink

READING = bytes.fromhex("11000718d71828190172")


class Pair:
    """A gateway and one device joined by a channel that may lose or corrupt frames."""

    def __init__(self, *, loss: float = 0.0, corrupt: float = 0.0, seed: int = 1, address: int = 7, mtu: int = 255):
        self.rng = random.Random(seed)
        self.loss, self.corrupt = loss, corrupt
        gw_private, gw_public = generate_keypair()
        dev_private, dev_public = generate_keypair()
        self.gateway = GatewayLink(gw_private, mtu=mtu)
        self.gateway.add_device(DeviceEntry(address, "kitchen", dev_public))
        self.device = DeviceLink(address, dev_private, gw_public, rto=1.0, mtu=mtu)
        self.now = 0.0
        self.delivered: list[bytes] = []
        self.commands: list[bytes] = []
        self.actions: list[object] = []
        self.persisted: dict | None = None
        self.air_bytes = 0

    def _channel(self, frame: bytes) -> bytes | None:
        wire = serial_encode(frame)
        self.air_bytes += len(wire)
        if self.rng.random() < self.loss:
            return None
        data = bytearray(frame)
        if self.rng.random() < self.corrupt:  # one to three flipped bits
            for _ in range(self.rng.randint(1, 3)):
                bit = self.rng.randrange(len(data) * 8)
                data[bit // 8] ^= 1 << (bit % 8)
        return bytes(data)

    def step(self) -> None:
        for frame in self.device.poll(self.now):
            received = self._channel(frame)
            if received is None:
                continue
            for action in self.gateway.receive(received, self.now):
                self.actions.append(action)
                if isinstance(action, Deliver):
                    self.delivered.append(action.payload)
                elif isinstance(action, Persist):
                    self.persisted = action.state
                elif isinstance(action, Transmit):
                    back = self._channel(action.frame)
                    if back is not None:
                        for event in self.device.receive(back, self.now):
                            if event.kind == "command":
                                self.commands.append(event.payload)
        deadline = self.device.next_deadline()
        self.now = max(self.now + 0.01, deadline if deadline is not None else self.now + 0.5)

    def run_until(self, done, limit: int = 5000) -> None:
        for _ in range(limit):
            if done():
                return
            self.step()
        raise AssertionError("did not finish")


def test_handshake_then_reading_is_delivered_and_acked():
    pair = Pair()
    pair.device.publish(READING)
    pair.run_until(lambda: pair.delivered and pair.device.queued == 0)
    assert pair.delivered == [READING]
    assert any(isinstance(a, SessionStarted) for a in pair.actions)


def test_reading_costs_23_bytes_on_a_serial_line():
    pair = Pair()
    pair.device.publish(READING)
    pair.run_until(lambda: pair.device.keys is not None)
    frames = pair.device.poll(pair.now)
    assert len(frames) == 1 and len(serial_encode(frames[0])) == 23
    frame = parse_frame(frames[0])
    assert frame.type == TYPE_DATA and len(frame.body) == len(READING) + crypto.TAG_LEN


def test_handshake_is_96_bytes_of_noise_messages():
    pair = Pair()
    hs1 = pair.device.poll(0.0)[0]
    [reply] = [a for a in pair.gateway.receive(hs1, 0.0) if isinstance(a, Transmit)]
    assert parse_frame(hs1).type == TYPE_HS1
    assert len(hs1) - 2 + len(reply.frame) - 2 == 96
    assert len(serial_encode(hs1)) + len(serial_encode(reply.frame)) == 104


def test_commands_wait_for_the_next_uplink_and_arrive_once():
    pair = Pair()
    pair.device.publish(READING)
    pair.run_until(lambda: pair.delivered)
    for text in (b"\x12\x00\x62on", b"\x12\x00\x63off"):
        pair.gateway.queue_command(7, text)
    assert pair.gateway.pending_commands(7) == 2
    for _ in range(3):
        pair.device.publish(READING)
    pair.run_until(lambda: len(pair.commands) == 2 and pair.gateway.pending_commands(7) == 0 and pair.device.queued == 0)
    assert pair.commands == [b"\x12\x00\x62on", b"\x12\x00\x63off"]
    assert sum(isinstance(a, CommandAcked) for a in pair.actions) == 2


def test_command_queue_is_bounded_and_drops_the_oldest():
    pair = Pair()
    drops = []
    for i in range(20):
        drops += pair.gateway.queue_command(7, bytes([0x12, 0, 0x61, 0x30 + i]))
    assert len(drops) == 4 and all(isinstance(d, CommandDropped) for d in drops)
    assert drops[0].payload.endswith(b"0")


@pytest.mark.parametrize("seed", range(5))
def test_lossy_link_every_reading_once_none_corrupted(seed):
    # 10 % of frames lost, and a further 10 % hit by bit errors (the tag must catch them).
    pair = Pair(loss=0.10, corrupt=0.10, seed=seed)
    readings = [bytes([0x11, 0x00, 0x01, 0x18, 100 + i]) for i in range(30)]
    for reading in readings:
        pair.device.publish(reading)
    pair.gateway.queue_command(7, b"\x12\x00\x62go")
    pair.run_until(lambda: len(pair.delivered) == len(readings) and pair.device.queued == 0 and pair.commands, 100000)
    assert pair.delivered == readings  # in order, each once, intact
    assert pair.commands == [b"\x12\x00\x62go"]
    refused = [a for a in pair.actions if isinstance(a, Refused)]
    assert refused, "bit errors must have been caught by the tag"


def test_big_messages_are_fragmented_both_ways():
    pair = Pair(mtu=51)
    big = b"\x10" + bytes(range(1, 150))
    pair.device.publish(big)
    pair.gateway.queue_command(7, b"\x12\x00" + b"x" * 100)
    pair.run_until(lambda: pair.delivered and pair.commands and pair.device.queued == 0)
    assert pair.delivered == [big] and pair.commands == [b"\x12\x00" + b"x" * 100]


def test_forged_replayed_and_unknown_frames_never_deliver():
    pair = Pair()
    pair.device.publish(READING)
    pair.run_until(lambda: pair.delivered)
    uplink = pair.device.poll(pair.now) or None
    pair.device.publish(READING + b"\x01")
    frame = None
    while frame is None:
        pair.now += 1
        frames = pair.device.poll(pair.now)
        frame = frames[0] if frames else None
    first = pair.gateway.receive(frame, pair.now)
    assert any(isinstance(a, Deliver) for a in first)
    replay = pair.gateway.receive(frame, pair.now)
    assert not any(isinstance(a, Deliver) for a in replay)  # acknowledged again, not delivered
    forged = bytearray(frame)
    forged[-1] ^= 1
    assert pair.gateway.receive(bytes(forged), pair.now) == [Refused(7, "bad_tag")]
    other = bytearray(frame)
    other[1] = 9
    assert pair.gateway.receive(bytes(other), pair.now) == [Refused(9, "unknown_device")]
    assert pair.gateway.receive(b"\x40", pair.now) == [Refused(None, "malformed")]
    assert uplink is None


def test_replayed_handshake_does_not_cut_the_working_session():
    pair = Pair()
    hs1 = pair.device.poll(0.0)[0]
    pair.device.publish(READING)
    pair.run_until(lambda: pair.delivered)
    pair.gateway.receive(hs1, pair.now)  # an attacker replays the old HS1
    pair.device.publish(READING)
    pair.run_until(lambda: len(pair.delivered) == 2)
    assert pair.delivered == [READING, READING]


def test_session_survives_a_gateway_restart_from_persisted_state():
    pair = Pair()
    pair.device.publish(READING)
    pair.run_until(lambda: pair.delivered and pair.device.queued == 0)
    state = pair.persisted
    assert state is not None
    restarted = GatewayLink(pair.gateway.static_private)
    restarted.add_device(DeviceEntry(7, "kitchen", pair.gateway._devices[7].entry.static_public), state)
    pair.gateway = restarted
    pair.device.publish(b"\x11\x00\x01\x05")
    pair.run_until(lambda: len(pair.delivered) == 2)
    assert pair.delivered[-1] == b"\x11\x00\x01\x05"
    assert Session.from_state(state).epoch == pair.device.epoch


def test_device_that_loses_its_session_rehandshakes():
    pair = Pair()
    pair.device.publish(READING)
    pair.run_until(lambda: pair.delivered)
    pair.device.keys = None  # power loss without saved state
    pair.device._initiator = None
    pair.device.publish(READING)
    pair.run_until(lambda: len(pair.delivered) == 2)
    assert pair.delivered == [READING, READING]


def test_serial_framer_resynchronises_and_never_raises():
    framer = SerialFramer()
    frames = [bytes([0x40, 7, i]) + bytes(range(1, 12)) for i in range(1, 4)]
    stream = b"\x13\x37" + b"\x00" + b"".join(serial_encode(f) for f in frames) + b"\xff" * 400 + b"\x00"
    out = []
    for i in range(0, len(stream), 7):
        out += framer.feed(stream[i : i + 7])
    assert out[-3:] == frames[-3:] or frames == out[1:4]
    assert framer.dropped >= 1
    with pytest.raises(LinkFrameError):
        parse_frame(b"\xe0\x07" + b"\x00" * 20)
    assert Frame(TYPE_DATA, 1, 7, b"x" * 8, seq=3, ack=4).encode()[:4] == bytes([0x51, 7, 3, 4])
