"""The firmware node (firmware/lbnode): in memory on CPython, then on the MicroPython unix port.

First half, in one process (h11's ConnectionPair style):

* tests/firmware/firmware_node_vectors.py — the device's handshake, reading,
  acknowledgement and command frames byte for byte against
  link_vectors.json, lbnode.wire against compact_vectors.json — under
  CPython and under the unix port;
* lockstep: the firmware's DeviceLink and the reference DeviceLink
  (sim/device_core.py) each paired with a GatewayLink, fed the
  same publishes, commands, losses and times with the same ephemeral
  keys, must put the same bytes on the line at every step;
* the firmware with a GatewayLink over a lossy channel: every reading
  delivered exactly once, commands once, no counter ever used twice;
  restarts with and without a store; replays; the queue bound; the
  framing, queue, wire and state helpers against their references.

The end-to-end half (the device process on the unix port over a PtyLink
to a running gateway and matrix-nio) is in tests/firmware/test_firmware_e2e.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.codecs import compact as ref_compact
from lowband.codecs import fragment as ref_fragment
from lowband.codecs.context import load_context
from lowband.gateway.link import gateway_core
from lowband.sim import device_core
from lowband.codecs.link_frame import SerialFramer, serial_encode
from lowband.gateway.link.gateway_core import CommandAcked, Deliver, DeviceEntry, GatewayLink, Transmit
from lowband.gateway.link.handshake import Responder, public_from_private
from lowband.sim.firmware import MICROPYTHON, MPY_CROSS, build_mpy
from vector_runs import host_cryptolib, load_script, run_vector_script

ROOT = Path(__file__).resolve().parent.parent.parent
FIRMWARE = ROOT / "firmware"
DATA = ROOT / "tests" / "data"
NODE_VECTORS = ROOT / "tests" / "firmware" / "firmware_node_vectors.py"
VECTORS = json.loads((DATA / "link_vectors.json").read_text())
COMPACT = json.loads((DATA / "compact_vectors.json").read_text())


with host_cryptolib(load_script(ROOT / "tests" / "firmware" / "firmware_crypto_vectors.py")):
    import lbnode  # noqa: F401
    from lbnode import link as fw_link
    from lbnode import msgring as fw_msgring
    from lbnode import node as fw_node
    from lbnode import state as fw_state
    from lbnode import stream as fw_stream
    from lbnode import wire as fw_wire

GW_PRIVATE = hashlib.sha256(b"lowband test gateway static").digest()
DEV_PRIVATE = hashlib.sha256(b"lowband test device static").digest()
GW_PUBLIC = public_from_private(GW_PRIVATE)
DEV_PUBLIC = public_from_private(DEV_PRIVATE)
ADDRESS = 7
READING = bytes.fromhex("11000718d71828190172")


class MemoryStore:
    """A store for lbnode's session state in a variable."""

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.writes = 0

    def load(self) -> bytes | None:
        return self.data

    def save(self, data: bytes) -> None:
        self.data = bytes(data)
        self.writes += 1


def fw_device(store: Any = None, **options: Any) -> Any:
    return fw_link.DeviceLink(ADDRESS, DEV_PRIVATE, DEV_PUBLIC, GW_PUBLIC, store=store, **options)


def new_gateway(mtu: int = 255) -> GatewayLink:
    gateway = GatewayLink(GW_PRIVATE, mtu=mtu)
    gateway.add_device(DeviceEntry(ADDRESS, "kitchen", DEV_PUBLIC))
    return gateway


# ------------------------------------------------------------- vectors, both runtimes

def test_node_vectors_cpython() -> None:
    script = load_script(NODE_VECTORS)
    assert script.main(["x", str(FIRMWARE), str(DATA)]) == 0
    assert script.T.failed == 0 and script.T.passed == 5 + len(COMPACT["vectors"])


@pytest.mark.micropython
def test_node_vectors_micropython_from_source() -> None:
    if not MICROPYTHON.exists():
        pytest.skip("no micropython")
    passed, _, _ = run_vector_script([str(MICROPYTHON), "-X", "heapsize=160k", str(NODE_VECTORS), str(FIRMWARE),
                                      str(DATA)], cwd=ROOT, timeout=120)  # fmt: skip
    assert passed == 5 + len(COMPACT["vectors"])


@pytest.mark.micropython
def test_node_vectors_micropython_mpy(tmp_path: Path) -> None:
    # The script parses whole vector files at once; next to them and the
    # stack it needs more than the device process does (that one runs in
    # 64 KB: tests/firmware/test_firmware_e2e.py).
    if not (MICROPYTHON.exists() and MPY_CROSS.exists()):
        pytest.skip("no micropython or mpy-cross")
    build_mpy(tmp_path / "lib")
    passed, _, _ = run_vector_script([str(MICROPYTHON), "-X", "heapsize=96k", str(NODE_VECTORS), str(tmp_path / "lib"),
                                      str(DATA)], cwd=ROOT, timeout=120)  # fmt: skip
    assert passed == 5 + len(COMPACT["vectors"])


# ------------------------------------------------------------- lockstep with the reference


def _ephemeral(epoch: int) -> bytes:
    return hashlib.sha256(b"lockstep device ephemeral %d" % epoch).digest()


class _FixedResponder(Responder):
    """A Responder whose ephemeral key is a hash of HS1 (same HS1, same HS2)."""

    def __init__(self, static_private: bytes, initiator_public: bytes, address: int, epoch: int) -> None:
        self._args = (static_private, initiator_public, address, epoch)
        super().__init__(*self._args)

    def respond(self, message1: bytes) -> Any:
        fixed = Responder(*self._args, ephemeral_private=hashlib.sha256(b"lockstep gateway" + message1).digest())
        return fixed.respond(message1)


class Side:
    """One device implementation and its gateway, driven in ms of simulated time."""

    def __init__(self, kind: str, *, mtu: int, rto_ms: int, max_tries: int, queue_limit: int) -> None:
        self.kind = kind
        self.gateway = new_gateway(mtu)
        if kind == "ref":
            self.device: Any = device_core.DeviceLink(ADDRESS, DEV_PRIVATE, GW_PUBLIC, rto=rto_ms / 1000,
                                                      max_tries=max_tries, mtu=mtu, queue_limit=queue_limit)  # fmt: skip
        else:
            self.device = fw_device(rto_ms=rto_ms, max_tries=max_tries, mtu=mtu, queue_limit=queue_limit,
                                    queue_bytes=8192)  # fmt: skip
        self.delivered: list[bytes] = []
        self.commands: list[bytes] = []
        self.events: list[str] = []

    def publish(self, payload: bytes) -> None:
        self.device.publish(payload)

    def poll(self, now_ms: int) -> list[bytes]:
        if self.kind == "ref":
            return list(self.device.poll(now_ms / 1000))
        frames = []
        with _urandom(lambda n: _ephemeral(self.device.epoch)):
            while (frame := self.device.poll(now_ms)) is not None:
                frames.append(bytes(frame))
                if self.device.wait_ms(now_ms) != 0:
                    break
        return frames

    def device_receive(self, frame: bytes, now_ms: int) -> None:
        if self.kind == "ref":
            for event in self.device.receive(frame, now_ms / 1000):
                self.events.append(event.kind)
                if event.kind == "command":
                    self.commands.append(event.payload)
            return
        result = self.device.receive(frame, now_ms)
        for bit, name in ((fw_link.SESSION, "session"), (fw_link.ACKED, "acked"), (fw_link.COMMAND, "command"),
                          (fw_link.REFUSED, "refused")):  # fmt: skip
            if result & bit:
                self.events.append(name)
        if result & fw_link.COMMAND:
            self.commands.append(bytes(self.device.command))

    def gateway_receive(self, frame: bytes, now_ms: int) -> list[bytes]:
        out = []
        actions = self.gateway.receive(frame, now_ms / 1000)
        while actions:
            action = actions.pop(0)
            if isinstance(action, Transmit):
                out.append(action.frame)
            elif isinstance(action, Deliver):  # stored at once: acknowledged at once
                self.delivered.append(action.payload)
                actions += self.gateway.delivered(action.token, now_ms / 1000)
        return out


@contextmanager
def _urandom(fn: Callable[[int], bytes]) -> Iterator[None]:
    saved = os.urandom
    os.urandom = fn  # noise_kk asks os.urandom for its ephemeral key
    try:
        yield
    finally:
        os.urandom = saved


def _lockstep(monkeypatch: pytest.MonkeyPatch, seed: int, *, mtu: int = 255, loss: float = 0.2,
              blackout: tuple[int, int] = (0, 0), steps: int = 20000) -> tuple[Side, Side]:  # fmt: skip
    monkeypatch.setattr(device_core, "Initiator", _ref_initiator_class())
    monkeypatch.setattr(gateway_core, "Responder", _FixedResponder)
    sides = [Side(kind, mtu=mtu, rto_ms=300, max_tries=4, queue_limit=8) for kind in ("ref", "fw")]
    rng = random.Random(seed)
    script_rng = random.Random(seed + 1)
    in_flight: list[tuple[int, str, bytes]] = []  # (due ms, "up"/"down", frame), one list: both sides see the same
    for now in range(0, steps, 10):
        if now % 1000 == 0 and now < steps - 4000:
            size = script_rng.choice((10, 10, 10, 60, 200))
            payload = bytes([0x11]) + bytes(script_rng.randrange(256) for _ in range(size - 1))
            for side in sides:
                side.publish(payload)
        if now % 2500 == 1000 and now < steps - 4000:
            text = "cmd %d " % now + "x" * script_rng.choice((1, 80))
            payload = ref_compact.encode_form(ref_compact.CompactForm(kind=2, body=text), load_context(DATA / "context_v1.json"))
            for side in sides:
                side.gateway.queue_command(ADDRESS, payload)
        due = [item for item in in_flight if item[0] <= now]
        in_flight = [item for item in in_flight if item[0] > now]
        for _, direction, frame in due:
            answers = []
            for side in sides:
                if direction == "up":
                    answers.append(side.gateway_receive(frame, now))
                else:
                    side.device_receive(frame, now)
                    answers.append([])
            assert answers[0] == answers[1], f"gateways answered differently at {now} ms"
            for answer in answers[0]:
                if not (blackout[0] <= now < blackout[1]) and rng.random() >= loss:
                    in_flight.append((now + 20 + len(answer), "down", answer))
        sent = [side.poll(now) for side in sides]
        assert sent[0] == sent[1], f"devices sent different frames at {now} ms: {sent}"
        for frame in sent[0]:
            if not (blackout[0] <= now < blackout[1]) and rng.random() >= loss:
                in_flight.append((now + 20 + len(frame), "up", frame))
        assert sides[0].events == sides[1].events
    return sides[0], sides[1]


def _ref_initiator_class() -> type:
    base = device_core.Initiator

    class RefInitiator(base):  # type: ignore[misc,valid-type]
        def __init__(self, static_private: bytes, gateway_public: bytes, address: int, epoch: int) -> None:
            super().__init__(static_private, gateway_public, address, epoch, _ephemeral(epoch))

    return RefInitiator


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lockstep_with_reference_device_lossy_line(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    ref, fw = _lockstep(monkeypatch, seed)
    assert fw.delivered == ref.delivered and len(fw.delivered) >= 10
    assert fw.commands == ref.commands and fw.commands
    assert "acked" in fw.events


def test_lockstep_small_mtu_fragments_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    ref, fw = _lockstep(monkeypatch, 7, mtu=40, loss=0.1)
    assert any(len(p) > 28 for p in fw.delivered), "a fragmented uplink was reassembled"
    assert any(len(c) > 28 for c in fw.commands), "a fragmented command was reassembled"
    assert fw.delivered == ref.delivered and fw.commands == ref.commands


def test_lockstep_blackout_forces_a_new_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
    ref, fw = _lockstep(monkeypatch, 4, loss=0.05, blackout=(3000, 9000))
    assert fw.events.count("session") >= 2, fw.events
    assert fw.device.epoch == ref.device.epoch >= 2
    assert fw.delivered == ref.delivered


# ------------------------------------------------------------- the firmware with a gateway core


class Line:
    """A device and a gateway core joined in memory, with loss; time in ms."""

    def __init__(self, device: Any, gateway: GatewayLink, loss: float = 0.0, seed: int = 0) -> None:
        self.device = device
        self.gateway = gateway
        self.loss = loss
        self.rng = random.Random(seed)
        self.now = 0
        self.up: list[bytes] = []  # every uplink frame the device sent, in order
        self.delivered: list[tuple[str, bytes]] = []
        self.commands: list[bytes] = []
        self.acked_commands = 0
        self.events = 0
        self.on_command: Callable[[bytes], None] | None = None

    def run(self, ms: int) -> None:
        end = self.now + ms
        while self.now < end:
            with _urandom(lambda n: hashlib.sha256(b"line %d" % self.rng.getrandbits(64)).digest()[:n]):
                frame = self.device.poll(self.now)
            while frame is not None:
                frame = bytes(frame)
                self.up.append(frame)
                if self.rng.random() >= self.loss:
                    for action in self.gateway.receive(frame, self.now / 1000):
                        self._gateway_action(action)
                frame = self.device.poll(self.now)
            self.now += 10

    def _gateway_action(self, action: Any) -> None:
        if isinstance(action, Deliver):  # stored at once: acknowledged at once
            self.delivered.append((action.message_id, action.payload))
            for answer in self.gateway.delivered(action.token, self.now / 1000):
                self._gateway_action(answer)
        elif isinstance(action, CommandAcked):
            self.acked_commands += 1
        elif isinstance(action, Transmit) and self.rng.random() >= self.loss:
            result = self.device.receive(action.frame, self.now)
            if result & fw_link.COMMAND:
                self.commands.append(bytes(self.device.command))
                if self.on_command:
                    self.on_command(bytes(self.device.command))

    def command(self, text: str) -> None:
        self.gateway.queue_command(ADDRESS, fw_wire_text(text))


def fw_wire_text(text: str, room: int = 0) -> bytes:
    buf = bytearray(200)
    return bytes(buf[: fw_wire.text_into(buf, 1, text.encode(), room)])


def uplink_counters(frames: list[bytes], k_up: bytes) -> dict[int, bytes]:
    """Counter → frame for the DATA frames sealed under k_up; asserts that no counter carries two frames."""
    seen: dict[int, bytes] = {}
    window = -1
    for frame in frames:
        if frame[0] >> 5 != 2:
            continue
        start = 4 if frame[0] & 0x10 else 3
        for counter in (fw_link.link_aead.counter_from_seq(window, frame[2]), frame[2]):
            try:
                fw_link.link_aead.open(k_up, 0, counter, frame[:start], frame[start:])
            except ValueError:
                continue
            assert seen.get(counter, frame) == frame, f"counter {counter} sealed two different frames"
            seen[counter] = frame
            window = max(window, counter)
            break
    return seen


def test_every_reading_once_and_commands_once_over_a_lossy_line() -> None:
    line = Line(fw_device(rto_ms=200), new_gateway(), loss=0.15, seed=11)
    sent = []
    for i in range(40):
        reading = fw_wire_reading(215 + i)
        sent.append(reading)
        line.device.publish(reading)
        if i % 8 == 3:
            line.command("led %d" % i)
        line.run(600)
    line.run(60000)
    payloads = [p for _, p in line.delivered]
    assert sorted(payloads) == sorted(sent)  # each once, in any order the retries made
    assert len({m for m, _ in line.delivered}) == len(line.delivered)
    assert line.commands == [fw_wire_text("led %d" % i) for i in range(40) if i % 8 == 3]
    assert line.device.idle and line.gateway.pending_commands(ADDRESS) == 0
    assert len(uplink_counters(line.up, line.device.k_up)) >= 40


def fw_wire_reading(temperature: int) -> bytes:
    buf = bytearray(40)
    return bytes(buf[: fw_wire.telemetry_into(buf, 1, 0, 0b111, [temperature, 40, 370])])


def test_restart_with_a_store_resumes_the_session_and_never_reuses_a_counter() -> None:
    store = MemoryStore()
    gateway = new_gateway()
    line = Line(fw_device(store, rto_ms=200), gateway)
    for i in range(13):
        line.device.publish(fw_wire_reading(i))
        line.run(200)
    line.command("led on")
    line.device.publish(fw_wire_reading(100))
    line.run(2000)
    k_up, epoch = line.device.k_up, line.device.epoch
    before = uplink_counters(line.up, k_up)
    assert line.commands == [fw_wire_text("led on")]
    writes = store.writes
    assert writes <= 6, "a write per block of 16 counters, two per handshake, one per command"

    # power cut: a new device object from the same store
    device = fw_device(store, rto_ms=200)
    assert device.resumed and device.k_up == k_up and device.epoch == epoch
    line2 = Line(device, gateway)
    for i in range(5):
        device.publish(fw_wire_reading(200 + i))
        line2.run(200)
    assert all(f[0] >> 5 == 2 for f in line2.up), "no handshake after the restart"
    after = uplink_counters(line.up + line2.up, k_up)
    assert min(set(after) - set(before)) > max(before)  # resumed above every counter used before
    assert len(line2.delivered) == 5


def test_a_replayed_command_after_restart_is_not_delivered_again() -> None:
    store = MemoryStore()
    gateway = new_gateway()
    device = fw_device(store, rto_ms=200)
    line = Line(device, gateway)
    captured: list[bytes] = []
    original = line._gateway_action

    def capture(action: Any) -> None:
        if isinstance(action, Transmit):
            captured.append(action.frame)
        original(action)

    line._gateway_action = capture  # type: ignore[method-assign]
    line.device.publish(fw_wire_reading(1))
    line.run(500)
    line.command("led on")
    line.device.publish(fw_wire_reading(2))
    line.run(500)
    assert line.commands == [fw_wire_text("led on")]
    command_frame = next(f for f in captured if f[0] >> 5 == 2 and len(f) > 12)
    restarted = fw_device(store, rto_ms=200)
    assert restarted.receive(command_frame, 0) == 0, "a replayed command is not delivered"
    assert restarted.wait_ms(0) == 0, "but it is acknowledged again"


def test_a_replayed_acknowledgement_does_not_acknowledge_a_new_frame() -> None:
    # An attacker replays a command frame 254 times: the device answers each
    # with a pure ack, so its counter runs ahead while the gateway's stays.
    # Then a reading goes out with a counter whose low byte equals the ack
    # byte of that old command frame. The reference device would take the
    # replayed frame's ack byte as the reading's acknowledgement (and never
    # send it again); the firmware honours ack bytes of new frames only.
    device = fw_device(rto_ms=200)
    line = Line(device, new_gateway())
    captured: list[bytes] = []
    original = line._gateway_action

    def capture(action: Any) -> None:
        if isinstance(action, Transmit) and action.frame[0] >> 5 == 2 and len(action.frame) > 12:
            captured.append(action.frame)
        original(action)

    line._gateway_action = capture  # type: ignore[method-assign]
    device.publish(fw_wire_reading(1))
    line.run(300)
    line.command("led on")
    device.publish(fw_wire_reading(2))
    line.run(300)
    old = captured[0]
    assert line.commands == [fw_wire_text("led on")] and old[3] == 1, "the command acknowledges uplink 1"
    for _ in range(254):
        assert device.receive(old, line.now) == 0  # a duplicate: not delivered...
        assert device.poll(line.now) is not None  # ...but acknowledged again
    device.publish(fw_wire_reading(3))
    device.poll(line.now)
    assert device._out_counter == 257 and device._out_counter & 0xFF == old[3]
    assert device.receive(old, line.now) == 0
    assert device._out_counter == 257, "still waiting for a real acknowledgement"


def test_restart_without_a_store_starts_a_new_handshake_the_gateway_accepts() -> None:
    gateway = new_gateway()
    line = Line(fw_device(rto_ms=200), gateway)
    line.device.publish(fw_wire_reading(1))
    line.run(500)
    line2 = Line(fw_device(rto_ms=200), gateway)
    line2.device.publish(fw_wire_reading(2))
    line2.run(500)
    assert line2.up[0][0] >> 5 == 0 and line2.delivered and gateway.has_session(ADDRESS)
    assert [p for _, p in line.delivered + line2.delivered] == [fw_wire_reading(1), fw_wire_reading(2)]


def test_max_tries_restarts_the_handshake_and_keeps_the_message() -> None:
    device = fw_device(rto_ms=100, max_tries=3)
    line = Line(device, new_gateway())
    device.publish(fw_wire_reading(1))
    line.run(300)
    assert device.idle
    line.loss = 1.0
    device.publish(fw_wire_reading(2))
    line.run(100 * (1 + 2 + 4) + 50)
    assert device.k_up is None and device.epoch == 2, "a new handshake after three tries"
    line.loss = 0.0
    line.run(2000)
    assert [p for _, p in line.delivered] == [fw_wire_reading(1), fw_wire_reading(2)]
    frames = [f for f in line.up if f[0] >> 5 == 2]
    retries = [f for f in frames if frames.count(f) > 1]
    assert len(set(retries)) == 1, "the same bytes were repeated, and only those"


def test_queue_bound_drops_the_oldest() -> None:
    device = fw_device(queue_limit=4)
    dropped = sum(device.publish(fw_wire_reading(i)) for i in range(10))
    assert dropped == 6 == device.dropped
    line = Line(device, new_gateway())
    line.run(1000)
    assert [p for _, p in line.delivered] == [fw_wire_reading(i) for i in range(6, 10)]


def test_frames_for_others_and_garbage_are_refused_and_never_raise() -> None:
    device = fw_device()
    rng = random.Random(5)
    for _ in range(2000):
        frame = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        assert device.receive(frame, 0) in (fw_link.REFUSED, 0)
    assert device.command is None


# ------------------------------------------------------------- the node API on CPython


class MemoryTransport:
    """A transport wired to a GatewayLink in this process: send() answers at once."""

    mtu = 255

    def __init__(self, gateway: GatewayLink) -> None:
        self.gateway = gateway
        self.inbox: list[bytes] = []
        self.delivered: list[bytes] = []
        self.closed = False

    def rto_ms(self) -> int:
        return 150

    def send(self, frame: Any, n: int) -> None:
        actions = self.gateway.receive(bytes(frame[:n]), 0.0)
        while actions:
            action = actions.pop(0)
            if isinstance(action, Transmit):
                self.inbox.append(action.frame)
            elif isinstance(action, Deliver):  # stored at once: acknowledged at once
                self.delivered.append(action.payload)
                actions += self.gateway.delivered(action.token, 0.0)

    def recv(self, timeout_ms: int) -> bytes | None:
        return self.inbox.pop(0) if self.inbox else None

    def close(self) -> None:
        self.closed = True


def _config() -> dict[str, Any]:
    context = json.loads((DATA / "context_v1.json").read_text())
    return {"name": "kitchen", "address": ADDRESS, "device_private": DEV_PRIVATE.hex(), "device_public": DEV_PUBLIC.hex(),
            "gateway_public": GW_PUBLIC.hex(), "link": "serial:/dev/ttyX?bps=2400", "context": context}  # fmt: skip


def test_node_publishes_scaled_readings_and_answers_commands() -> None:
    gateway = new_gateway()
    transport = MemoryTransport(gateway)
    node = fw_node.Node(_config(), transport)
    seen: list[str] = []

    def command(text: str) -> str:
        seen.append(text)
        return "ok: " + text

    node.on_command(command)
    node.publish(temperature=21.5, humidity=40, battery=3.7)
    assert node.service(5000)
    assert transport.delivered == [READING]  # compact_vectors.json telemetry_reference
    ctx = load_context(DATA / "context_v1.json")
    gateway.queue_command(ADDRESS, ref_compact.encode_form(ref_compact.CompactForm(kind=2, room=1, body="led on"), ctx))
    node.publish(humidity=41)
    assert node.service(5000)
    assert seen == ["led on"]
    reply = ref_compact.decode_form(transport.delivered[-1], ctx)
    assert (reply.kind, reply.room, reply.body) == (2, 1, "ok: led on")  # answered in the room it came from
    with pytest.raises(ValueError):
        node.publish(pressure=1013)
    node.close()
    assert transport.closed


def test_node_survives_a_failing_callback_and_unreadable_commands(capsys: pytest.CaptureFixture[str]) -> None:
    gateway = new_gateway()
    transport = MemoryTransport(gateway)
    events: list[tuple[str, Any]] = []
    node = fw_node.Node(_config(), transport, trace=lambda e, d: events.append((e, d)))
    node.on_command(lambda text: 1 / 0)
    node.publish(humidity=1)
    node.service(3000)
    gateway.queue_command(ADDRESS, fw_wire_text("boom"))
    gateway.queue_command(ADDRESS, bytes([0x21, 0, 0x60]))  # context version 2: not for this device
    node.publish(humidity=2)
    node.service(3000)
    node.publish(humidity=3)
    assert node.service(3000)
    assert ("command", "boom") in events
    assert any(e == "refused" and "version" in str(d) for e, d in events)
    assert "ZeroDivisionError" in capsys.readouterr().err
    assert len(transport.delivered) == 3


def test_link_bps_from_the_config() -> None:
    assert fw_node.link_bps({"link": "serial:/dev/ttyUSB0?bps=100"}) == 100
    assert fw_node.link_bps({"link": "lora:/dev/ttyUSB1?region=EU868&dr=0"}) == 9600
    assert fw_node.link_bps({"link": "serial:/dev/x?parity=n&bps=19200&y=1"}) == 19200


# ------------------------------------------------------------- helpers against their references


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=255))
def test_stream_encoding_is_the_gateways(frame: bytes) -> None:
    buf = bytearray(fw_stream.ENCODED_MAX)
    n = fw_stream.encode_into(buf, frame, len(frame))
    assert bytes(buf[:n]) == serial_encode(frame)


class BytesPort:
    """A port over a byte string, read in random chunks."""

    def __init__(self, data: bytes, seed: int) -> None:
        self.data = data
        self.rng = random.Random(seed)

    def wait(self, timeout_ms: int) -> bool:
        return bool(self.data)

    def readinto(self, buf: bytearray) -> int:
        n = min(len(self.data), self.rng.randrange(1, len(buf) + 1))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def write(self, data: Any) -> None:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=255), max_size=6), st.binary(max_size=40), st.integers(0, 99))
def test_stream_deframes_what_the_gateways_framer_does(frames: list[bytes], noise: bytes, seed: int) -> None:
    data = noise + b"".join(serial_encode(f) for f in frames)
    transport = fw_stream.StreamTransport(BytesPort(data, seed))
    got = []
    while (frame := transport.recv(0)) is not None:
        got.append(bytes(frame))
    want = SerialFramer().feed(data)
    assert got == [f for f in want if len(f) <= 255]


def test_stream_rto_matches_the_reference() -> None:
    for bps in (100, 300, 2400, 9600, 115200):
        transport = fw_stream.StreamTransport(BytesPort(b"", 0), bps=bps)
        assert transport.rto_ms() == pytest.approx(device_core.rto_for_bps(bps) * 1000, abs=1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=0, max_size=60), st.booleans(), st.booleans()), max_size=60))
def test_msgring_is_a_bounded_fifo(ops: list[tuple[bytes, bool, bool]]) -> None:
    ring = fw_msgring.MessageRing(128, 5)
    model: list[tuple[bytes, bool]] = []
    out = bytearray(128)
    for data, flag, pop in ops:
        if pop:
            n, got_flag = ring.pop_into(out)
            if model:
                assert (bytes(out[:n]), got_flag) == model.pop(0)
            else:
                assert n == -1
            continue
        dropped = ring.push(data, len(data), flag)
        for _ in range(dropped):
            model.pop(0)
        model.append((data, flag))
        assert len(ring) == len(model) <= 5
        assert sum(len(d) + 2 for d, _ in model) <= 128


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 300), st.lists(st.integers(-(1 << 63), (1 << 64) - 1), min_size=1, max_size=32))
def test_wire_telemetry_is_lbwires(age: int, mantissas: list[int]) -> None:
    from lbwire import compact

    mask = (1 << len(mantissas)) - 1
    buf, ref = bytearray(400), bytearray(400)
    n = fw_wire.telemetry_into(buf, 1, age, mask, mantissas)
    assert buf[:n] == ref[: compact.encode_telemetry_into(ref, 1, age, mask, mantissas)]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.integers(0, 40), st.integers(1, 15))
def test_wire_text_round_trips_with_lbwire(body: str, room: int, version: int) -> None:
    from lbwire import compact

    buf = bytearray(400)
    n = fw_wire.text_into(buf, version, body.encode(), room)
    assert bytes(buf[:n]) == compact.encode_text(version, 0, body, room)
    assert fw_wire.read_text(bytes(buf[:n]), version) == (room, body)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_wire_reads_only_what_lbwire_reads_as_text(data: bytes) -> None:
    from lbwire import compact

    try:
        kind, room, sender, _, body = compact.decode(data, 1)
        want = (room, body) if kind == 2 else None
    except ValueError:
        want = None
    try:
        got = fw_wire.read_text(data, 1)
    except ValueError:
        got = None
    assert got == want  # a sender index on a command: lbwire returns it, the node ignores it


def test_state_round_trip_and_refusals() -> None:
    buf = bytearray(fw_state.STATE_LEN)
    keys = (bytes(range(32)), bytes(range(32, 64)))
    fw_state.pack_into(buf, ADDRESS, DEV_PUBLIC, 5, keys, 1 << 40, 300, (1 << 64) - 1)
    assert fw_state.unpack(bytes(buf), ADDRESS, DEV_PUBLIC) == (5, keys, 1 << 40, 300, (1 << 64) - 1)
    fw_state.pack_into(buf, ADDRESS, DEV_PUBLIC, 3, None, 0, -1, 0)
    assert fw_state.unpack(bytes(buf), ADDRESS, DEV_PUBLIC) == (3, None, 0, -1, 0)
    for bad in (bytes(buf[:-1]), bytes(buf[:10]) + b"\x00" + bytes(buf[11:]), None, b""):
        assert fw_state.unpack(bad, ADDRESS, DEV_PUBLIC) is None
    assert fw_state.unpack(bytes(buf), ADDRESS + 1, DEV_PUBLIC) is None  # another device
    assert fw_state.unpack(bytes(buf), ADDRESS, GW_PUBLIC) is None  # another key


def test_file_store_replaces_atomically(tmp_path: Path) -> None:
    store = fw_state.FileStore(str(tmp_path / "lbnode.state"))
    assert store.load() is None
    store.save(b"a" * fw_state.STATE_LEN)
    store.save(b"b" * fw_state.STATE_LEN)
    assert store.load() == b"b" * fw_state.STATE_LEN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lbnode.state"]


def test_fragments_are_the_references() -> None:
    # publish() of a long message queues lbwire fragments; the reference splits it the same way.
    device = fw_device(mtu=40)
    payload = bytes(range(100))
    device.publish(payload)
    pieces = []
    out = bytearray(40)
    while (got := device._queue.pop_into(out))[0] >= 0:
        pieces.append(bytes(out[: got[0]]))
    assert pieces == ref_fragment.fragment(payload, 0, 40 - 12)


# ------------------------------------------------------------- LoRa airtime and duty cycle, sensors, board modules

from lbnode import bme280 as fw_bme280  # noqa: E402  (pure Python: no machine module needed)
from lbnode import lora_air as fw_lora_air  # noqa: E402

from lowband.hardware.lora import DutyCycleBudget, time_on_air_ms  # noqa: E402
from lowband.hardware.radio import load_board, load_region  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.integers(7, 12), st.sampled_from((125_000, 250_000, 500_000)), st.integers(1, 4),
       st.integers(6, 12))
def test_lora_time_on_air_is_hardwares(n: int, sf: int, bw: int, cr: int, preamble: int) -> None:
    assert fw_lora_air.time_on_air_us(n, sf, bw, cr, preamble) / 1000 == pytest.approx(
        time_on_air_ms(n, sf, bw, cr, preamble), abs=1e-6)


def test_lora_worked_examples() -> None:
    # docs/protocol/lora.md section 2: the 21-byte reading at SF7 and SF12, 125 kHz
    assert fw_lora_air.time_on_air_us(21, 7, 125_000) == 56_576
    assert fw_lora_air.time_on_air_us(21, 12, 125_000) == 1_482_752


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400_000), st.integers(1, 3000)), min_size=1, max_size=40),
       st.sampled_from((0.01, 0.001, 0.1)))
def test_lora_budget_agrees_with_hardware(steps: list[tuple[int, int]], duty: float) -> None:
    ours = fw_lora_air.Budget(duty)
    ref = DutyCycleBudget(duty)
    now = 1_000_000
    for gap, airtime in steps:
        now += gap
        if airtime > duty * 3_600_000:
            continue
        wait = ours.earliest(airtime, now)
        assert wait == pytest.approx((ref.earliest_send(airtime, now / 1000) - now / 1000) * 1000, abs=1)
        ours.record(airtime, now + wait)
        ref.record(airtime, (now + wait) / 1000)
        now += wait


def test_lora_params_from_the_shipped_regions() -> None:
    eu = json.loads((ROOT / "hardware" / "region-eu868.json").read_text())
    assert fw_lora_air.params(eu, 0) == (12, 125_000, 51, 1, 8, 18, 0.01, 868_100_000)
    assert fw_lora_air.params(eu, 5, 869_525_000)[6] == 0.1
    region = load_region("EU868")
    rate = region.data_rate(3)
    assert fw_lora_air.params(eu, 3)[:3] == (rate.sf, rate.bw_hz, rate.mtu)
    with pytest.raises(ValueError):
        fw_lora_air.params(eu, 9)
    with pytest.raises(ValueError):
        fw_lora_air.params(eu, 0, 868_650_000)  # between sub-bands: Lowband does not transmit there


# BMP280/BME280 datasheet example (BST-BMP280-DS001 section 3.12; the BME280 uses the same
# temperature and pressure compensation): UT = 519888 -> T = 25.08 degC, UP = 415148 -> p = 100653.27 Pa.
def _calibration(t: tuple[int, ...], p: tuple[int, ...], h: tuple[int, ...]) -> tuple[bytes, bytes]:
    import struct

    tp = struct.pack("<HhhHhhhhhhhhBB", *t, *p, 0, h[0])
    h2, h3, h4, h5, h6 = h[1:]
    hb = struct.pack("<hB", h2, h3) + bytes([(h4 >> 4) & 0xFF, (h4 & 0x0F) | ((h5 & 0x0F) << 4), (h5 >> 4) & 0xFF]) \
        + struct.pack("<b", h6)
    return tp, hb


def test_bme280_compensation_on_the_datasheet_example() -> None:
    tp, h = _calibration((27504, 26435, -1000), (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000),
                         (75, 362, 0, 313, 50, 30))  # fmt: skip
    comp = fw_bme280.Compensation(tp, h)
    t_fine = comp.t_fine(519888)
    assert comp.temperature(t_fine) == 2508
    # The datasheet's table prints 25767236; its published 64-bit formula, executed, gives 25767233
    # (others who implemented it report the same 3/256 Pa); both are 100653.27 Pa within 0.02 Pa.
    assert comp.pressure(415148, t_fine) == 25767233
    assert comp.pressure(415148, t_fine) / 256 == pytest.approx(100653.27, abs=0.02)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 65535), st.integers(-100, 100), st.integers(200, 500), st.integers(-200, 200))
def test_bme280_humidity_matches_the_datasheets_floating_point_formula(adc_h: int, t_fine_offset: int,
                                                                       h4: int, h5: int) -> None:  # fmt: skip
    h1, h2, h3, h6 = 75, 362, 0, 30
    tp, h = _calibration((27504, 26435, -1000), (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000),
                         (h1, h2, h3, h4, h5, h6))  # fmt: skip
    comp = fw_bme280.Compensation(tp, h)
    assert comp.h == (h1, h2, h3, h4, h5, h6)
    t_fine = 128422 + t_fine_offset * 100
    var = t_fine - 76800.0
    var = (adc_h - (h4 * 64.0 + h5 / 16384.0 * var)) * (
        h2 / 65536.0 * (1.0 + h6 / 67108864.0 * var * (1.0 + h3 / 67108864.0 * var)))
    var = min(max(var * (1.0 - h1 * var / 524288.0), 0.0), 100.0)
    assert comp.humidity(adc_h, t_fine) / 1024 == pytest.approx(var, abs=0.05)


class FakeI2C:
    """A BME280 on a bus: calibration registers and one measurement."""

    def __init__(self, tp: bytes, h: bytes, data: bytes) -> None:
        self.regs = {0xD0: b"\x60", 0x88: tp, 0xE1: h, 0xF3: b"\x00", 0xF7: data}
        self.writes: list[tuple[int, int]] = []

    def readfrom_mem_into(self, address: int, reg: int, buf: Any) -> None:
        buf[:] = self.regs[reg][: len(buf)]

    def writeto_mem(self, address: int, reg: int, buf: Any) -> None:
        self.writes.append((reg, buf[0]))


def test_bme280_driver_reads_a_forced_measurement() -> None:
    tp, h = _calibration((27504, 26435, -1000), (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000),
                         (75, 362, 0, 313, 50, 30))  # fmt: skip
    adc_p, adc_t, adc_h = 415148, 519888, 30000
    data = bytes([adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0xF) << 4, adc_t >> 12, (adc_t >> 4) & 0xFF,
                  (adc_t & 0xF) << 4, adc_h >> 8, adc_h & 0xFF])  # fmt: skip
    bus = FakeI2C(tp, h, data)
    sensor = fw_bme280.BME280(bus, channels=("temperature", "humidity", "pressure"))
    got = sensor.read()
    assert got["temperature"] == 25.08 and got["pressure"] == pytest.approx(1006.5327, abs=1e-3)  # hPa
    assert 0 < got["humidity"] < 100
    assert bus.writes == [(0xF2, 0x01), (0xF4, 0x25)]
    with pytest.raises(OSError):
        bus.regs[0xD0] = b"\x58"  # a BMP280
        fw_bme280.BME280(bus)


class _FakeMachine:
    """Just enough of MicroPython's machine module for lbnode's board modules."""

    class Pin:
        IN, OUT = 0, 1
        levels: dict[int, int] = {}

        def __init__(self, n: Any, mode: int = 0, value: int | None = None) -> None:
            self.n = n
            self.init(mode, value=value)

        def init(self, mode: int, value: int | None = None) -> None:
            self.mode = mode
            if value is not None:
                _FakeMachine.Pin.levels[self.n] = value

        def value(self, v: int | None = None) -> int:
            if v is not None:
                _FakeMachine.Pin.levels[self.n] = v
            return _FakeMachine.Pin.levels.get(self.n, 1)

    class ADC:
        ATTN_11DB = 3

        def __init__(self, pin: Any) -> None:
            self.pin = pin

        def read_u16(self) -> int:
            return 32768 if _FakeMachine.Pin.levels.get(37) == 0 else 0

    class UART:
        def __init__(self, uart_id: int, baudrate: int, timeout: int, **pins: Any) -> None:
            self.args = (uart_id, baudrate, timeout, pins)
            self.sent = bytearray()
            self.incoming = bytearray()

        def any(self) -> int:
            return len(self.incoming)

        def readinto(self, buf: Any) -> int | None:
            n = min(len(buf), len(self.incoming))
            if not n:
                return None
            buf[:n] = self.incoming[:n]
            del self.incoming[:n]
            return n

        def write(self, data: Any) -> int:
            self.sent += bytes(data)
            return len(data)

    class SPI:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.args = (args, kwargs)

    class RTC:
        mem = b""

        def memory(self, data: bytes | None = None) -> bytes:
            if data is not None:
                _FakeMachine.RTC.mem = bytes(data)
            return _FakeMachine.RTC.mem


@pytest.fixture
def fake_machine(monkeypatch: pytest.MonkeyPatch) -> Any:
    import types

    module = types.ModuleType("machine")
    for name in ("Pin", "ADC", "UART", "SPI", "RTC"):
        setattr(module, name, getattr(_FakeMachine, name))
    monkeypatch.setitem(sys.modules, "machine", module)
    _FakeMachine.Pin.levels = {}
    _FakeMachine.RTC.mem = b"\x00" * 16  # cold boot: whatever was there, no valid state
    for name in ("lbnode.battery", "lbnode.hal_uart", "lbnode.lora_radio", "lbnode.state_rtc"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return module


def test_rtc_store_keeps_a_session_across_deep_sleep(fake_machine: Any) -> None:
    from lbnode.state_rtc import RTCStore

    store = RTCStore(offset=100)
    line = Line(fw_device(store, rto_ms=200), new_gateway())
    line.device.publish(fw_wire_reading(1))
    line.run(500)
    woken = fw_device(RTCStore(offset=100), rto_ms=200)  # after machine.deepsleep the board starts again
    assert woken.resumed and woken.k_up == line.device.k_up
    assert len(fake_machine.RTC().memory()) == 100 + fw_state.STATE_LEN


def test_battery_reads_through_its_divider_only_while_enabled(fake_machine: Any) -> None:
    from lbnode.battery import Battery

    battery = Battery(1, ratio=4.9, enable=37)
    assert battery.read() == {"battery": round(32768 * 3.3 / 65535 * 4.9, 2)}
    assert battery.enable.mode == fake_machine.Pin.IN, "the divider is released after reading"


def test_uart_modem_transport_keeps_the_duty_cycle(fake_machine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from lbnode import hal_uart

    slept: list[int] = []
    clock = [0]
    monkeypatch.setattr(hal_uart, "ticks_ms", lambda: clock[0])
    monkeypatch.setattr(hal_uart, "sleep_ms", lambda ms: (slept.append(ms), clock.__setitem__(0, clock[0] + ms)))
    monkeypatch.setattr(fw_lora_air, "ticks_add", lambda a, b: a + b)
    region = json.loads((ROOT / "hardware" / "region-eu868.json").read_text())
    transport = hal_uart.modem_transport(1, 9600, region, dr=0, tx=17, rx=16, aux=4)
    assert transport.mtu == 49
    assert transport.rto_ms() == 3 * 2466 + 200  # HS1 with COBS, 52 bytes at SF12: 2465.792 ms on air
    frame = bytes.fromhex("41070058efe6e7aeb89096d2ec59552ffa7c1d2429")
    for _ in range(24):  # 24 readings of 1482.752 ms fill 35.6 s of the 36 s an hour allows
        transport.send(frame, len(frame))
    assert max(slept) <= 1483, "each waits only for the previous packet to leave the air"
    transport.send(frame, len(frame))
    assert max(slept) > 3_000_000, "the 25th reading waits for the oldest to leave the hour"
    uart = transport.port.uart
    assert uart.sent.count(serial_encode(frame)) == 25 and uart.args[:2] == (1, 9600)


def test_radio_transport_configures_the_driver_from_the_board_profiles(fake_machine: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import types

    made: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    class FakeModem:
        def __init__(self, kind: str, *args: Any, **kwargs: Any) -> None:
            made.append((kind, args, kwargs))
            self.packets: list[bytes] = []
            self.heard: list[Any] = []

        def start_recv(self, continuous: bool = False) -> bool:
            return True

        def poll_recv(self) -> Any:
            return self.heard.pop(0) if self.heard else True

        def send(self, packet: Any) -> None:
            self.packets.append(bytes(packet))

        def sleep(self) -> None:
            pass

    lora = types.ModuleType("lora")
    lora.SX1262 = lambda *a, **k: FakeModem("sx1262", *a, **k)  # type: ignore[attr-defined]
    lora.SX1276 = lambda *a, **k: FakeModem("sx1276", *a, **k)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lora", lora)
    from lbnode.lora_radio import radio_transport

    for board_name, region_name in (("heltec-wifi-lora-32-v3", "eu868"), ("rp2040-rfm95", "us915")):
        board = json.loads((ROOT / "hardware" / f"board-{board_name}.json").read_text())
        region = json.loads((ROOT / "hardware" / f"region-{region_name}.json").read_text())
        transport = radio_transport(board, region, dr=1 if region_name == "us915" else 0)
        kind, args, kwargs = made[-1]
        pins = load_board(board_name).pins
        assert kind == board["radio"]["chip"] and args[1].n == pins["lora_nss"]
        assert kwargs["reset"].n == pins["lora_reset"]
        cfg = kwargs["lora_cfg"]
        assert cfg["syncword"] == 0x12 and cfg["coding_rate"] == 5 and cfg["preamble_len"] == 8
        if kind == "sx1262":
            assert kwargs["busy"].n == pins["lora_busy"] and kwargs["dio3_tcxo_millivolts"] == 1800
            assert (cfg["sf"], cfg["bw"], cfg["freq_khz"], transport.mtu) == (12, "125", 868100, 51)
        else:
            assert kwargs["dio0"].n == pins["lora_dio0"] and cfg["tx_ant"] == "PA_BOOST"
        frame = bytes(range(1, 22))
        transport.send(frame, len(frame))
        assert transport.modem.packets == [frame], "a packet is the frame itself: no COBS on a radio"
        transport.modem.heard.append(bytearray(b"\x51\x07"))
        assert transport.recv(50) == b"\x51\x07"


def test_every_lbnode_module_is_in_exactly_one_manifest_and_package_json() -> None:
    import re

    modules = {p.name for p in (FIRMWARE / "lbnode").glob("*.py") if p.name != "manifest.py"}
    listed: list[str] = []
    for manifest in ("lbnode/manifest.py", "lbnode-lora/manifest.py", "lbnode-sensors/manifest.py",
                     "lbnode-unix/manifest.py"):  # fmt: skip
        text = (FIRMWARE / manifest).read_text()
        for block in re.findall(r'package\(\s*"lbnode",\s*files=\((.*?)\)', text, re.S):
            listed += re.findall(r'"([^"]+\.py)"', block)
    assert sorted(listed) == sorted(modules)
    urls: list[str] = []
    for name in ("package.json", "package-lora.json", "package-sensors.json", "package-unix.json"):
        doc = json.loads((FIRMWARE / "lbnode" / name).read_text())
        urls += [url for _, url in doc["urls"]]
        assert all(target == f"lbnode/{url}" for target, url in doc["urls"])
    assert sorted(urls) == sorted(modules)
