"""Replays and forged frames against a running gateway (issue 15, finding 12).

A gateway in the test's loop, the scripted device on an emulated serial line
at 115,200 bps, matrix-nio in the room. The attacker has recorded what the
gateway's port read and feeds frames to the gateway's link as fast as its
port could hand them over (straight to the transport's byte handler: the
line's own rate is not what is measured here). The gateway must spend
nothing durable on them, a bounded number of bytes on the air and of log
lines, count each refusal, and keep answering the real device at once.
The same attacks on simulated time against the cores: test_link_replay.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import Any

import nio
from harness import gateway_in_loop, nio_client, provision_kitchen, until

from lowband.codecs.link_frame import TYPE_DATA, TYPE_HS1, Frame, SerialFramer, serial_encode
from lowband.gateway.link.runtime import reack_interval
from lowband.sim.device_core import rto_for_bps
from lowband.sim.device_peer import ScriptedDevice
from lowband.sim.pty_link import PtyLink

BPS = 115_200
REPLAYS = 30_000
FORGED_HS1 = 20_000
ACK_WIRE = 14  # bytes of a pure ACK on the serial line


def _acks(device: ScriptedDevice) -> int:
    return sum(e.kind == "acked" for e in device.events)


async def _acknowledged_in(device: ScriptedDevice, value: int, timeout: float) -> float:
    """Publish a reading; seconds until the device saw its ACK."""
    before, start = _acks(device), time.monotonic()
    device.publish_reading([(0, value), (1, 40), (2, 370)])
    await until(lambda: _acks(device) > before, timeout)
    return time.monotonic() - start


async def _readings(client: nio.AsyncClient, room_id: str) -> list[int]:
    history = await client.room_messages(room_id, start="", limit=200)
    assert isinstance(history, nio.RoomMessagesResponse), history
    events = [e.source for e in reversed(history.chunk)]
    return [e["content"]["org.lowband.senml"][0]["v"] for e in events if "org.lowband.senml" in e.get("content", {})]


def _refusal_lines(records: list[logging.LogRecord]) -> list[tuple[str, int]]:
    """(kind, how many) of each line of the link about refused frames."""
    found = [re.search(r"refused (\d+) (?:more )?frame\(s\) \((\w+)\)", r.getMessage()) for r in records
             if r.name == "lowband.link"]  # fmt: skip
    return [(m.group(2), int(m.group(1))) for m in found if m]


def test_replays_and_forged_frames_cost_no_write_few_bytes_few_log_lines_and_the_device_is_answered_at_once(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="lowband.link")
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        got: dict[str, Any] = {}
        with PtyLink(bps=BPS, seed=3) as line:
            async with gateway_in_loop(tmp_path, on_ready=lambda services: got.update(services=services)) as base:
                services = got["services"]
                alice = await nio_client(base, "alice")
                device = None
                try:
                    created = await alice.room_create(alias="sensors", preset=nio.RoomPreset.public_chat)
                    assert isinstance(created, nio.RoomCreateResponse), created
                    config = json.loads(provision_kitchen(tmp_path / "data", line.path_a, BPS).read_text())
                    await until(lambda: "links" in services.components and services.components["links"].links, 30)
                    runtime = services.components["links"]
                    spec, link = next(iter(runtime.links.items()))
                    # The attacker records the line; the test counts what the gateway writes and sends.
                    heard: list[bytes] = []
                    feed = link.transport.on_bytes
                    link.transport.on_bytes = lambda data: (heard.append(data), feed(data))[1]
                    count = {"writes": 0, "sent": 0}
                    save, write = runtime.registry.save_session, link.transport.write

                    async def counted_save(*args: Any) -> None:
                        count["writes"] += 1
                        await save(*args)

                    def counted_write(data: bytes) -> None:
                        count["sent"] += len(data)
                        write(data)

                    runtime.registry.save_session, link.transport.write = counted_save, counted_write
                    device = ScriptedDevice(config, line.path_b, rto=rto_for_bps(BPS), reply=False)
                    await device.start()
                    await _acknowledged_in(device, 1, 30)
                    quiet = await _acknowledged_in(device, 2, 30)
                    frames = SerialFramer().feed(b"".join(heard))
                    reading = [f for f in frames if f[0] >> 5 == TYPE_DATA and len(f) > 12][-1]
                    epoch = device.link.epoch
                    await asyncio.sleep(0.3)  # the last ACK's write is done

                    writes, sent, start = count["writes"], count["sent"], time.monotonic()
                    for i in range(0, REPLAYS, 1000):
                        feed(serial_encode(reading) * 1000)
                        await asyncio.sleep(0)
                    flood = time.monotonic() - start
                    await asyncio.sleep(0.5)  # what the flood queued, carried out
                    seen["replay_writes"] = count["writes"] - writes
                    seen["replay_bytes"] = count["sent"] - sent
                    seen["bound_bytes"] = ACK_WIRE * (2 + flood / reack_interval(BPS))
                    seen["ack_after_flood"] = await _acknowledged_in(device, 3, 60)
                    seen["quiet"] = quiet
                    seen["epoch_kept"] = device.link.epoch == epoch
                    seen["duplicate_limited"] = runtime.refusal_counts()[spec].get("duplicate_limited", 0)

                    mark, start = len(caplog.records), time.monotonic()
                    forged = b"".join(serial_encode(Frame(TYPE_HS1, 2, config["address"], os.urandom(48)).encode())
                                      for _ in range(FORGED_HS1))  # fmt: skip
                    for i in range(0, len(forged), 52 * 500):
                        feed(forged[i : i + 52 * 500])
                        await asyncio.sleep(0)
                    feed(b"\x13\x37\x00" * 5000)  # not COBS
                    feed(serial_encode(b"\xe0\x07" + bytes(20)) * 5000)  # COBS, but a reserved frame type
                    await asyncio.sleep(0.2)
                    seen["flood_seconds"] = time.monotonic() - start
                    seen["flood_lines"] = _refusal_lines(caplog.records[mark:])
                    seen["counts"] = runtime.refusal_counts()[spec]
                    seen["ack_after_all"] = await _acknowledged_in(device, 4, 60)
                    await asyncio.sleep(1.0)  # a late retransmission would show up as a second event
                    seen["readings"] = await _readings(alice, created.room_id)
                finally:
                    if device is not None:
                        await device.stop()
                    await alice.close()
        seen["all_lines"] = _refusal_lines(caplog.records[mark:])  # with those written when the link stopped

    asyncio.run(asyncio.wait_for(scenario(), 240))

    # 30,000 replays of a stored reading: the old gateway wrote its session 30,000 times, sent 420 KB of ACKs and
    # answered the device's next reading 37 s late (after the device had given up and sent it again).
    assert seen["replay_writes"] == 0, "a replay costs no durable write"
    assert 0 < seen["replay_bytes"] <= seen["bound_bytes"], seen
    assert seen["duplicate_limited"] >= REPLAYS - seen["replay_bytes"] // ACK_WIRE
    assert seen["ack_after_flood"] < max(2.0, 20 * seen["quiet"]) and seen["epoch_kept"], seen
    assert seen["readings"] == [1, 2, 3, 4], "each reading once"
    # 20,000 forged HS1 and 10,000 garbled frames: each counted, one line per kind (the old gateway: 25,000 lines).
    assert seen["counts"]["bad_handshake"] == FORGED_HS1
    assert seen["counts"]["undecodable"] == 5000 and seen["counts"]["malformed"] == 5000
    lines_per_kind = {kind: [n for k, n in seen["flood_lines"] if k == kind] for kind, _ in seen["flood_lines"]}
    assert {"bad_handshake", "undecodable", "malformed"} <= set(lines_per_kind), seen["flood_lines"]
    for kind, lines in lines_per_kind.items():  # one each, unless the flood outlasted the minute
        assert len(lines) <= 1 + seen["flood_seconds"] // 60, (kind, lines)
    assert seen["ack_after_all"] < max(2.0, 20 * seen["quiet"])
    # Every refusal is in the count of a line, the last ones in those written when the link stopped.
    said: dict[str, int] = {}
    for kind, n in seen["all_lines"]:
        said[kind] = said.get(kind, 0) + n
    assert (said["bad_handshake"], said["undecodable"], said["malformed"]) == (FORGED_HS1, 5000, 5000), said
