"""The reference device and the gateway's link core over a 100 bps line, on simulated time.

The cores of tests/link/test_link_core.py, paired through a LinkModel at the
line's real rate, half duplex (lowband.sim.virtual_line): what the rate
changes — time on the air, answers queued behind each other, the
retransmission timeout against the longest exchange — is checked here in
simulated seconds. The real-time end-to-end run over a 100 bps pty, with a
gateway and matrix-nio, is tests/link/test_link_e2e.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from lowband.codecs import compact
from lowband.sim.gateway_peer import new_device_config
from lowband.sim.link_model import LinkModel
from lowband.sim.virtual_line import GatewaySide, ReferenceDevice, Simulation, until


def _pair(seed: int, **impairments: Any) -> tuple[Simulation, GatewaySide, ReferenceDevice]:
    sim = Simulation(LinkModel(100, seed=seed, **impairments))
    config, gw_private = new_device_config(None, "kitchen", address=7, room_id="!sensors:localhost",
                                           link="serial:/dev/ttyLINK?bps=100", seed=b"%d" % seed)  # fmt: skip
    return sim, GatewaySide(sim, config, gw_private), ReferenceDevice(sim, config)


def on_air(frame: bytes, sim: Simulation) -> float:
    """Seconds ``frame`` takes on the line: COBS adds a byte, the delimiter another."""
    return (len(frame) + 2) * sim.line.byte_time


def test_reading_and_command_over_a_100_bps_line() -> None:
    sim, gateway, device = _pair(1)
    marks: dict[str, float] = {}

    def script():  # type: ignore[no-untyped-def]
        device.publish_reading([(0, 215), (1, 40), (2, 370)])
        yield until(lambda: gateway.readings(), 60, "the reading")
        yield 20
        gateway.command("led on")  # the device is quiet: the command waits for its next uplink
        marks["queued"] = sim.now
        yield 20
        marks["uplink"] = sim.now
        device.publish_reading([(0, 300)])
        yield until(lambda: "ok: led on" in gateway.texts(), 60, "the answer to led on")
        yield until(lambda: device.link.queued == 0, 60, "the answer acknowledged")

    sim.run_script(script())

    hs1, reading = device.sent[0][1], device.sent[1][1]
    hs2 = gateway.transmitted[0][1]
    first = gateway.delivered[0]
    assert first.form.kind == compact.KIND_TELEMETRY and first.form.values == [(0, 215), (1, 40), (2, 370)]
    assert first.at == pytest.approx(on_air(hs1, sim) + on_air(hs2, sim) + on_air(reading, sim)), "time on air only"
    assert on_air(reading, sim) == pytest.approx(2.3), "23 bytes"
    # Nothing went to the device until its next uplink; the command came back in the answer to that one.
    assert [t for t, _ in gateway.transmitted if marks["queued"] <= t < marks["uplink"]] == []
    ((command_at, command),) = device.commands
    uplink = next(frame for t, frame in device.sent if t == marks["uplink"])
    answer = next(frame for t, frame in gateway.transmitted if t > marks["uplink"])
    assert command == "led on"
    assert command_at == pytest.approx(marks["uplink"] + on_air(uplink, sim) + on_air(answer, sim))
    assert gateway.texts() == ["ok: led on"] and gateway.commands_acked == 1
    frames = [frame for _, frame in device.sent]
    assert len(frames) == len(set(frames)), "no retransmission: rto_for_bps covers every exchange at 100 bps"


@pytest.mark.parametrize("seed", [2, 5])
def test_lossy_100_bps_line_every_reading_and_command_exactly_once(seed: int) -> None:
    # No bit errors here: with them a run would depend on the random ephemeral keys of the reference device's
    # handshakes (a flipped bit that makes or breaks a frame delimiter depends on the bytes); the firmware's runs
    # with bit errors have fixed keys (tests/firmware/test_firmware_slow_line.py).
    sim, gateway, device = _pair(seed, frame_loss=0.08, cut_rate=0.05, byte_loss=0.002)
    sent = [[(0, 215 + i), (1, 40), (2, 370)] for i in range(25)]

    def script():  # type: ignore[no-untyped-def]
        for i, values in enumerate(sent):
            device.publish_reading(values)
            if i % 8 == 3:
                gateway.command(f"led {i}")
            yield 15
        yield until(lambda: device.link.queued == 0 and gateway.core.pending_commands(7) == 0, 3600, "all settled")

    sim.run_script(script())

    totals = sim.line.totals()
    assert totals.frames_lost and totals.frames_cut and totals.bytes_dropped, "the line lost and cut frames"
    assert gateway.core is not None and gateway.core.refused.get("duplicate", 0) > 0, "an acknowledgement was lost"
    assert gateway.readings() == sent, "every reading once, in order"
    commands = [f"led {i}" for i in range(25) if i % 8 == 3]
    assert [c for _, c in device.commands] == commands
    assert gateway.texts() == [f"ok: {c}" for c in commands]
