"""A device on an emulated serial line, a gateway, and matrix-nio in a room.

The line is two ptys joined by :class:`lowband.sim.pty_link.PtyLink`, which
enforces the bit rate (10 bits per byte, as a UART), half duplex and the
impairments. The device is the scripted CPython peer
(:mod:`lowband.sim.device_peer`); the gateway runs in the test's loop.

These run on wall time, so only one runs at 100 bps, and it is kept short: a
smoke test of the whole chain at the rate the gateway is built for. What the
rate does to the protocol (time on air, retransmission, loss) is checked on
simulated time with the same cores (tests/link/test_link_slow_line.py).
"""

from __future__ import annotations

import asyncio
import json
import time

import nio
import pytest
from harness import gateway_in_loop, nio_client, provision_kitchen, until

from lowband.sim.device_core import rto_for_bps
from lowband.sim.device_peer import ScriptedDevice
from lowband.sim.pty_link import PtyLink

DEVICE = "@dev.kitchen:localhost"
READING_BODY = "temperature 21.5 Cel, humidity 40 %RH, battery 3.70 V"


def rto_for(bps: float) -> float:
    return rto_for_bps(bps)


async def _wait_for_body(client: nio.AsyncClient, room_id: str, predicate, timeout: float) -> list[dict]:
    """Sync until a message whose (sender, body) satisfies ``predicate`` shows up; returns all seen."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.sync(timeout=2000)
        assert isinstance(response, nio.SyncResponse), response
        room = response.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            source = event.source
            if source.get("type") == "m.room.message":
                seen.append(source)
        if any(predicate(e["sender"], e["content"].get("body", "")) for e in seen):
            return seen
    raise AssertionError(f"not seen within {timeout} s; saw {[e['content'].get('body') for e in seen]}")


async def _scenario(tmp_path, link: PtyLink, bps: int, readings: int) -> tuple[ScriptedDevice, list[dict]]:
    async with gateway_in_loop(tmp_path) as base:
        alice = await nio_client(base, "alice")
        try:
            created = await alice.room_create(alias="sensors", name="Sensors", preset=nio.RoomPreset.public_chat)
            assert isinstance(created, nio.RoomCreateResponse), created
            room_id = created.room_id
            await alice.sync(timeout=0)
            config = json.loads(provision_kitchen(tmp_path / "data", link.path_a, bps).read_text())
            device = ScriptedDevice(config, link.path_b, rto=rto_for(bps))
            await device.start()
            try:
                for i in range(readings):
                    device.publish_reading([(0, 215 + i), (1, 40), (2, 370)])
                last = f"temperature {(215 + readings - 1) / 10:.1f} Cel"
                await _wait_for_body(alice, room_id, lambda s, b: s == DEVICE and b.startswith(last),
                                     timeout=30 + readings * 40 * 10 / bps * 3)  # fmt: skip
                sent = await alice.room_send(
                    room_id, "m.room.message", {"msgtype": "m.text", "body": "!kitchen led on"}
                )
                assert isinstance(sent, nio.RoomSendResponse), sent  # queued by the time the send is answered
                device.publish_reading([(0, 300)])  # the command rides back on the answer to this uplink
                await _wait_for_body(alice, room_id, lambda s, b: s == DEVICE and b == "ok: led on",
                                     timeout=60 + 80 * 10 / bps * 4)  # fmt: skip
            finally:
                await device.stop()
            history = await alice.room_messages(room_id, start="", limit=200)
            assert isinstance(history, nio.RoomMessagesResponse), history
            return device, [e.source for e in history.chunk if e.source.get("type") == "m.room.message"]
        finally:
            await alice.close()


def test_reading_and_command_over_a_100_bps_line(tmp_path):
    """The whole chain in real time at 100 bps: a reading reaches matrix-nio, a command typed in the room reaches the
    device. The command is typed before the device first speaks, so it rides back on the answer to the first reading:
    a handshake, a reading and its answer, about 16 s on the air."""

    async def scenario() -> tuple[ScriptedDevice, list[dict]]:
        async with gateway_in_loop(tmp_path) as base:
            alice = await nio_client(base, "alice")
            try:
                created = await alice.room_create(alias="sensors", name="Sensors", preset=nio.RoomPreset.public_chat)
                assert isinstance(created, nio.RoomCreateResponse), created
                room_id = created.room_id
                await alice.sync(timeout=0)
                config = json.loads(provision_kitchen(tmp_path / "data", link.path_a, 100).read_text())
                # The notice comes once the gateway has taken the device on and watches its line.
                await _wait_for_body(alice, room_id, lambda s, b: b.startswith("Device kitchen joined this room"), 60)
                sent = await alice.room_send(
                    room_id, "m.room.message", {"msgtype": "m.text", "body": "!kitchen led on"}
                )
                assert isinstance(sent, nio.RoomSendResponse), sent
                device = ScriptedDevice(config, link.path_b, rto=rto_for(100), reply=False)
                await device.start()
                try:
                    device.publish_reading([(0, 215), (1, 40), (2, 370)])
                    await _wait_for_body(alice, room_id, lambda s, b: s == DEVICE and b == READING_BODY, timeout=120)
                    await until(lambda: device.commands, timeout=60)
                finally:
                    await device.stop()
                history = await alice.room_messages(room_id, start="", limit=200)
                assert isinstance(history, nio.RoomMessagesResponse), history
                return device, [e.source for e in history.chunk if e.source.get("type") == "m.room.message"]
            finally:
                await alice.close()

    with PtyLink(bps=100, seed=1) as link:
        device, history = asyncio.run(asyncio.wait_for(scenario(), 240))
    bodies = [(e["sender"], e["content"]["body"]) for e in history]
    assert ("@dev.kitchen:localhost", READING_BODY) in bodies
    reading = next(e for e in history if e["content"]["body"] == READING_BODY)
    assert reading["content"]["msgtype"] == "m.notice"
    assert [r["v"] for r in reading["content"]["org.lowband.senml"]] == [215, 40, 370]
    assert device.commands == ["led on"]


@pytest.mark.parametrize("seed", [3])
def test_lossy_line_every_reading_exactly_once(tmp_path, seed):
    # 10 % of frames lost, bit errors at 1e-3 per bit (about one reading frame in five hit), cut frames.
    with PtyLink(bps=4800, frame_loss=0.10, bit_error_rate=1e-3, cut_rate=0.02, seed=seed) as link:
        device, history = asyncio.run(asyncio.wait_for(_scenario(tmp_path, link, 4800, 12), 240))
    readings = [e["content"]["org.lowband.senml"][0]["v"] for e in history if "org.lowband.senml" in e["content"]]
    assert sorted(readings) == sorted([215 + i for i in range(12)] + [300])  # each once, none corrupted
    assert device.commands == ["led on"]


def test_port_that_disappears_is_reopened_and_forged_frames_never_reach_the_room(tmp_path):
    """The gateway's port is a symlink; the line is cut (the pty vanishes) and comes back on a new pty."""
    import os

    from lowband.codecs.link_frame import serial_encode

    port = tmp_path / "ttyLINK"

    async def scenario() -> tuple[list[dict], ScriptedDevice]:
        async with gateway_in_loop(tmp_path) as base:
            alice = await nio_client(base, "alice")
            try:
                created = await alice.room_create(alias="sensors", preset=nio.RoomPreset.public_chat)
                room_id = created.room_id
                first = PtyLink(bps=19200, seed=5).start()
                os.symlink(first.path_a, port)
                config = json.loads(provision_kitchen(tmp_path / "data", str(port), 19200).read_text())
                device = ScriptedDevice(config, first.path_b, rto=rto_for(19200))
                await device.start()
                device.publish_reading([(0, 1), (1, 40), (2, 370)])
                await _wait_for_body(alice, room_id, lambda s, b: b.startswith("temperature 0.1 Cel"), 30)
                # An attacker on the line: a frame with a forged tag, and garbage.
                with open(first.path_b, "wb", buffering=0) as line:
                    line.write(b"\x13\x37" + serial_encode(bytes([0x41, config["address"], 9]) + bytes(18)))
                await device.stop()
                first.stop()  # the cable is pulled: the gateway's reads fail
                os.unlink(port)
                await asyncio.sleep(1.0)
                second = PtyLink(bps=19200, seed=6).start()
                try:
                    os.symlink(second.path_a, port)
                    device = ScriptedDevice(config, second.path_b, rto=rto_for(19200))  # it lost its session too
                    await device.start()
                    device.publish_reading([(0, 2), (1, 40), (2, 370)])
                    await _wait_for_body(alice, room_id, lambda s, b: b.startswith("temperature 0.2 Cel"), 60)
                    await device.stop()
                finally:
                    second.stop()
                history = await alice.room_messages(room_id, start="", limit=100)
                return [e.source for e in history.chunk], device
            finally:
                await alice.close()

    events, _ = asyncio.run(asyncio.wait_for(scenario(), 180))
    bodies = [e["content"].get("body", "") for e in events if e.get("type") == "m.room.message"]
    readings = [b for b in bodies if b.startswith("temperature")]
    assert sorted(readings) == ["temperature 0.1 Cel, humidity 40 %RH, battery 3.70 V",
                                "temperature 0.2 Cel, humidity 40 %RH, battery 3.70 V"]  # fmt: skip
