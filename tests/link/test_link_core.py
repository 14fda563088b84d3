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
    """A gateway and one device joined by a channel that may lose or corrupt frames.

    A small in-memory store stands in for the runtime: each ``Deliver`` is
    "stored" ``store_delay`` seconds later (keyed by message ID, as the
    room's transaction ID is), or fails while ``store_fails`` is set, and
    the outcome goes back to the core as the runtime reports it.
    """

    def __init__(self, *, loss: float = 0.0, corrupt: float = 0.0, seed: int = 1, address: int = 7, mtu: int = 255):
        self.rng = random.Random(seed)
        self.loss, self.corrupt = loss, corrupt
        gw_private, gw_public = generate_keypair()
        dev_private, dev_public = generate_keypair()
        self.gateway = GatewayLink(gw_private, mtu=mtu)
        self.gateway.add_device(DeviceEntry(address, "kitchen", dev_public))
        self.device = DeviceLink(address, dev_private, gw_public, rto=1.0, mtu=mtu)
        self.now = 0.0
        self.room: dict[str, bytes] = {}  # message ID (transaction ID) -> payload: the stored events
        self.delivered: list[bytes] = []  # payloads in the order their events were first stored
        self.delivers: list[Deliver] = []  # every Deliver the core handed out
        self.store_fails = False
        self.store_delay = 0.0
        self.storing: list[tuple[float, Deliver]] = []
        self.commands: list[bytes] = []
        self.actions: list[object] = []
        self.persisted: dict | None = None
        self.air_bytes = 0
        self.device_acks = 0  # "acked" events the device saw

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

    def carry_out(self, actions: list) -> None:
        for action in actions:
            self.actions.append(action)
            if isinstance(action, Deliver):
                self.delivers.append(action)
                self.storing.append((self.now + self.store_delay, action))
            elif isinstance(action, Persist):
                self.persisted = action.state
            elif isinstance(action, Transmit):
                back = self._channel(action.frame)
                if back is not None:
                    for event in self.device.receive(back, self.now):
                        if event.kind == "command":
                            self.commands.append(event.payload)
                        elif event.kind == "acked":
                            self.device_acks += 1

    def _store(self) -> None:
        due = [d for d in self.storing if d[0] <= self.now]
        self.storing = [d for d in self.storing if d[0] > self.now]
        for _, deliver in due:
            if self.store_fails:
                self.carry_out(self.gateway.delivery_failed(deliver.token, self.now))
                continue
            if deliver.message_id not in self.room:
                self.room[deliver.message_id] = deliver.payload
                self.delivered.append(deliver.payload)
            self.carry_out(self.gateway.delivered(deliver.token, self.now))

    def step(self) -> None:
        self._store()
        for frame in self.device.poll(self.now):
            received = self._channel(frame)
            if received is not None:
                self.carry_out(self.gateway.receive(received, self.now))
        self._store()
        deadlines = [d for d in (self.device.next_deadline(), *(t for t, _ in self.storing)) if d is not None]
        self.now = max(self.now + 0.01, min(deadlines) if deadlines else self.now + 0.5)

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
    assert replay == []  # its room event is not reported stored yet: neither delivered again nor acknowledged
    pair.carry_out(pair.gateway.delivered(next(a for a in first if isinstance(a, Deliver)).token, pair.now))
    replay = pair.gateway.receive(frame, pair.now)
    assert not any(isinstance(a, Deliver) for a in replay)  # stored: acknowledged again, not delivered
    assert any(isinstance(a, Transmit) for a in replay)
    forged = bytearray(frame)
    forged[-1] ^= 1
    assert pair.gateway.receive(bytes(forged), pair.now) == [Refused(7, "bad_tag")]
    other = bytearray(frame)
    other[1] = 9
    assert pair.gateway.receive(bytes(other), pair.now) == [Refused(9, "unknown_device")]
    assert pair.gateway.receive(b"\x40", pair.now) == [Refused(None, "malformed")]
    assert uplink is None


# ------------------------------------------------ acknowledged only once stored


def gateway_data_frames(pair: Pair) -> int:
    """DATA frames the gateway transmitted (ACKs and commands)."""
    return sum(isinstance(a, Transmit) and parse_frame(a.frame).type == TYPE_DATA for a in pair.actions)


def test_failing_store_leaves_the_reading_unacknowledged_until_it_recovers():
    pair = Pair()
    pair.device.publish(b"\x11\x00\x01\x05")
    pair.run_until(lambda: pair.room)  # a session and a first reading, to have something before the failure
    pair.run_until(lambda: pair.device.queued == 0)
    acks_before, sent_before = pair.device_acks, gateway_data_frames(pair)
    pair.store_fails = True
    pair.device.publish(READING)
    pair.run_until(lambda: len(pair.delivers) >= 4, 200)  # the first try and three retransmissions
    assert pair.device_acks == acks_before and pair.device.queued == 1  # never acknowledged: the device keeps it
    assert len(pair.room) == 1 and gateway_data_frames(pair) == sent_before  # not one ACK transmitted
    assert {d.message_id for d in pair.delivers[1:]} == {pair.delivers[1].message_id}  # a retry is the same message
    assert pair.gateway.counters(7)["delivery_failed"] >= 3
    pair.store_fails = False
    pair.run_until(lambda: pair.device.queued == 0, 200)
    assert pair.delivered == [b"\x11\x00\x01\x05", READING]  # exactly once, once the store works
    assert pair.device_acks == acks_before + 1 and pair.gateway.undelivered(7) == 0


def test_slow_store_retransmissions_are_the_same_message_and_the_ack_follows_the_commit():
    pair = Pair()
    pair.store_delay = 3.5  # longer than the device's timeouts of 1 s and 2 s
    pair.device.publish(READING)
    pair.run_until(lambda: pair.device.queued == 0, 500)
    assert pair.delivered == [READING] and len(pair.delivers) == 1  # retransmissions gave no second Deliver
    assert pair.gateway.counters(7)["awaiting_commit"] >= 2
    ack_at = next(i for i, a in enumerate(pair.actions) if isinstance(a, Transmit) and parse_frame(a.frame).type == TYPE_DATA)
    deliver_at = pair.actions.index(pair.delivers[0])
    assert ack_at > deliver_at and isinstance(pair.actions[ack_at - 1], Persist)  # the window is on disk before the ACK


def test_retransmission_after_a_gateway_crash_before_the_commit_is_the_same_message():
    pair = Pair()
    pair.device.publish(b"\x11\x00\x01\x05")
    pair.run_until(lambda: pair.device.queued == 0)
    pair.store_delay = 100.0  # the event is never stored by this process: it crashes first
    pair.device.publish(READING)
    pair.run_until(lambda: len(pair.delivers) == 2)
    lost = pair.delivers[1]
    restarted = GatewayLink(pair.gateway.static_private)
    restarted.add_device(DeviceEntry(7, "kitchen", pair.gateway._devices[7].entry.static_public), pair.persisted)
    pair.gateway, pair.storing, pair.store_delay = restarted, [], 0.0
    pair.run_until(lambda: pair.device.queued == 0)
    assert pair.delivers[-1].message_id == lost.message_id and pair.delivers[-1].payload == READING
    assert pair.delivered == [b"\x11\x00\x01\x05", READING]


def test_a_stored_message_of_a_replaced_session_is_not_acknowledged_in_the_new_one():
    pair = Pair()
    pair.store_delay = 100.0
    pair.device.publish(READING)
    pair.run_until(lambda: pair.delivers)
    old = pair.delivers[0]
    pair.device.keys, pair.device._initiator, pair.device._outstanding = None, None, None  # it lost its state
    pair.store_delay = 0.0
    pair.device.publish(b"\x11\x00\x01\x06")
    pair.run_until(lambda: len(pair.delivered) == 1)
    assert pair.gateway.delivered(old.token, pair.now) == []  # nothing to acknowledge: that session is gone
    assert pair.gateway.delivery_failed(old.token, pair.now) == []


def test_a_fragmented_message_whose_store_failed_is_delivered_whole_again():
    pair = Pair(mtu=51)
    big = b"\x10" + bytes(range(1, 150))
    pair.store_fails = True
    pair.device.publish(big)
    pair.run_until(lambda: len(pair.delivers) >= 2, 500)
    assert all(d.payload == big for d in pair.delivers) and len({d.message_id for d in pair.delivers}) == 1
    pair.store_fails = False
    pair.run_until(lambda: pair.device.queued == 0, 500)
    assert pair.delivered == [big]


@pytest.mark.parametrize("seed", range(3))
def test_lossy_link_and_flaky_slow_store_every_reading_once_in_order(seed):
    pair = Pair(loss=0.10, corrupt=0.05, seed=seed)
    flaky = random.Random(seed + 100)
    readings = [bytes([0x11, 0x00, 0x01, 0x18, 100 + i]) for i in range(20)]
    for reading in readings:
        pair.device.publish(reading)
    for _ in range(100000):
        if len(pair.delivered) == len(readings) and pair.device.queued == 0:
            break
        pair.store_fails = flaky.random() < 0.3
        pair.store_delay = flaky.choice((0.0, 0.0, 0.5, 2.5))
        pair.step()
    assert pair.delivered == readings  # in order, each once
    assert len(pair.room) == len(readings)


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
