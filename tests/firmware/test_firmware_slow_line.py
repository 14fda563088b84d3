"""The firmware's node over a slow, lossy line, on simulated time.

The device program of lbnode/unix_main.py (tests/firmware/virtual_board.py:
the node loop, StreamTransport, the link core, the state store — the
firmware's own code on CPython) and the gateway's link core
(lowband.sim.virtual_line.GatewaySide) talk through a LinkModel at 100 bps
on a virtual clock: minutes of line time cost a second of CPU, and a run is
the same on a loaded machine as on an idle one. What these tests check is
the protocol over the line: retransmission, exactly-once delivery, commands
waiting for the next uplink, replays and forgeries refused, recovery after
restarts and a cut line.

What needs the real processes stays real, and short: the unix port in a 64
KB heap, the gateway's rooms and database, matrix-nio
(tests/firmware/test_firmware_e2e.py, at 2400 bps and more), and one smoke
test over a real 100 bps pty line (tests/link/test_link_e2e.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from virtual_board import Board, Sent, file_store

from lowband.codecs.link_frame import serial_encode
from lowband.gateway.link import gateway_core
from lowband.gateway.link.handshake import Responder
from lowband.sim.gateway_peer import new_device_config
from lowband.sim.link_model import A, LinkModel
from lowband.sim.virtual_line import GatewaySide, PowerCut, Simulation, until

ADDRESS = 7


@pytest.fixture(autouse=True)
def reproducible_gateway_handshakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's ephemeral key is a hash of the HS1 it answers, so a seed makes the same run every time."""

    class SeededResponder(Responder):
        def __init__(self, static_private: bytes, initiator_public: bytes, address: int, epoch: int) -> None:
            super().__init__(static_private, initiator_public, address, epoch)
            self._args = (static_private, initiator_public, address, epoch)

        def respond(self, message1: bytes) -> Any:
            ephemeral = hashlib.sha256(b"sim gateway ephemeral " + message1).digest()
            return Responder(*self._args, ephemeral_private=ephemeral).respond(message1)

    monkeypatch.setattr(gateway_core, "Responder", SeededResponder)


def _line(seed: int, bps: int, **impairments: float) -> tuple[Simulation, dict[str, Any], GatewaySide]:
    sim = Simulation(LinkModel(bps, seed=seed, **impairments))
    config, gw_private = new_device_config(None, "kitchen", address=ADDRESS, room_id="!sensors:localhost",
                                           link=f"serial:/dev/ttyLINK?bps={bps}", seed=b"%d" % seed)  # fmt: skip
    return sim, config, GatewaySide(sim, config, gw_private)


def assert_no_counter_reuse(sent: list[Sent]) -> None:
    """Under one session key, one counter names one frame (a retransmission is the same bytes)."""
    seen: dict[tuple[bytes, int], bytes] = {}
    for s in sent:
        if s.k_up is not None and s.counter >= 0:
            assert seen.setdefault((s.k_up, s.counter), s.frame) == s.frame, (
                f"counter {s.counter} reused at {s.at:.1f} s"
            )


def delivered_temperatures(gateway: GatewaySide) -> list[int]:
    return [values[0][1] for values in gateway.readings()]


# ------------------------------------------------------------- readings and a command


@pytest.mark.parametrize("seed", [1, 4, 12])  # each loses frames both ways and flips bits in handshakes and data
def test_readings_and_a_command_over_a_lossy_100_bps_line(seed: int) -> None:
    """Issue 5's acceptance at 100 bps with frame loss and bit errors: every reading once, the command obeyed and
    answered once, no counter ever sealing two frames."""
    sim, config, gateway = _line(seed, 100, frame_loss=0.03, bit_error_rate=5e-4)
    board = Board(sim, config, interval=20, readings=30, seed=b"%d" % seed)

    def script():  # type: ignore[no-untyped-def]
        yield until(lambda: gateway.readings(), 300, "the first reading")
        gateway.command("led on")
        yield until(lambda: "ok: led on" in gateway.texts(), 900, "the answer to led on")
        yield until(lambda: board.finished, 3600, "the board's thirty readings, settled")

    sim.run_program(board.run, script())

    totals = sim.line.totals()
    assert totals.frames_lost > 0 and totals.bits_flipped > 0, "the line lost frames and flipped bits"
    assert any(s.retransmission for s in board.sent), "the device had to retransmit"
    assert gateway.core is not None and gateway.core.refused.get("duplicate", 0) > 0, "an acknowledgement was lost"
    assert delivered_temperatures(gateway) == board.taken == list(range(215, 245)), "every reading exactly once"
    assert board.details("command") == ["led on"] and board.details("led") == [1]
    assert gateway.texts() == ["ok: led on"]
    assert_no_counter_reuse(board.sent)


def test_a_clean_100_bps_line_costs_time_on_air_only_and_a_command_waits_for_the_next_uplink() -> None:
    sim, config, gateway = _line(1, 100)
    board = Board(sim, config, interval=60, readings=3)
    marks: dict[str, float] = {}

    def script():  # type: ignore[no-untyped-def]
        yield until(lambda: gateway.readings(), 60, "the first reading")
        yield 5  # the board is asleep until its next reading
        gateway.command("led on")
        marks["queued"] = sim.now
        yield until(lambda: board.finished, 600, "three readings, settled")

    sim.run_program(board.run, script())

    byte_time = sim.line.byte_time
    assert not any(s.retransmission for s in board.sent), "the retransmission timeout covers every exchange at 100 bps"
    first = board.sent[0]
    hs2 = gateway.transmitted[0]
    assert first.counter == -1 and hs2[0] == pytest.approx((len(first.frame) + 2) * byte_time), "HS1 on the air"
    # A reading goes out as it is taken and reaches the gateway after its own time on the air.
    telemetry = [d for d in gateway.delivered if d.form.values]
    for taken_at, delivered in zip(board.times("reading")[1:], telemetry[1:], strict=True):
        frame = next(s.frame for s in board.sent if s.at == taken_at)
        assert delivered.at - taken_at == pytest.approx((len(frame) + 2) * byte_time)
    # The command waited at the gateway for the board's next uplink and came back in its answer.
    next_uplink = min(s.at for s in board.sent if s.at > marks["queued"])
    assert next_uplink == board.times("reading")[1]
    assert not [t for t, _ in gateway.transmitted if marks["queued"] <= t < next_uplink], "nothing sent unasked"
    assert next_uplink < board.times("command")[0] < next_uplink + 10
    assert gateway.texts() == ["ok: led on"] and delivered_temperatures(gateway) == [215, 216, 217]


def test_the_same_seed_makes_the_same_run() -> None:
    def script(gateway: GatewaySide, board: Board):  # type: ignore[no-untyped-def]
        yield until(lambda: gateway.readings(), 300, "the first reading")
        gateway.command("led on")
        yield until(lambda: board.finished, 3600, "four readings, settled")

    runs = []
    for _ in range(2):
        sim, config, gateway = _line(4, 100, frame_loss=0.1, bit_error_rate=1e-3)
        board = Board(sim, config, interval=20, readings=4, seed=b"4")
        sim.run_program(board.run, script(gateway, board))
        runs.append(([(s.at, s.frame) for s in board.sent], gateway.transmitted, sim.line.totals(), sim.now))
    assert runs[0] == runs[1]
    assert runs[0][2].frames_lost and runs[0][2].bits_flipped


# ------------------------------------------------------------- restarts, a cut line, forgeries


def test_device_survives_gateway_restart_cut_line_own_restart_and_forgeries(tmp_path: Path) -> None:
    sim, config, gateway = _line(9, 100)
    board = Board(sim, config, interval=30, store=file_store(tmp_path / "lbnode.state"), seed=b"9")
    marks: dict[str, float] = {}

    def taken(start: str, end: str | None = None) -> list[int]:
        """The readings taken from mark ``start`` (to mark ``end``)."""
        return [m for t, m in zip(board.times("reading"), board.taken, strict=True)
                if marks[start] <= t and (end is None or t <= marks[end])]  # fmt: skip

    def delivered(readings: list[int]) -> list[int]:
        return [m for m in readings if m in delivered_temperatures(gateway)]

    def replay_everything_the_gateway_sent() -> None:
        for _, frame in list(gateway.transmitted):
            sim.send(A, serial_encode(frame))

    def script():  # type: ignore[no-untyped-def]
        # ---- 1. a first reading, stored, its acknowledgement lost
        yield until(lambda: any(s.counter >= 0 for s in board.sent), 120, "the first reading sent")
        sim.line.frame_loss = 1.0  # from now on: the reading is on its way already
        yield until(lambda: gateway.readings(), 60, "the first reading")
        # ---- 2. the gateway is down while the board takes two readings, then back from its database; a command
        gateway.down()
        sim.line.frame_loss = 0.0
        marks["down"] = sim.now
        yield until(
            lambda: len(board.times("reading", marks["down"])) >= 2, 120, "two readings while the gateway is down"
        )
        gateway.restart()
        marks["up"] = sim.now
        yield until(lambda: board.times("acked", marks["up"]), 300, "an acknowledgement from the restarted gateway")
        gateway.command("led on")
        yield until(lambda: "ok: led on" in gateway.texts(), 300, "the answer to led on")
        yield until(lambda: board.node.link.idle, 300, "everything acknowledged")
        # ---- 3. the line is cut until the board gives its session up, then restored
        sim.line.frame_loss = 1.0
        marks["cut"] = sim.now
        yield until(lambda: any(s.counter < 0 for s in board.sent if s.at >= marks["cut"]), 1800,
                    "a new handshake on the cut line")  # fmt: skip
        sim.line.frame_loss = 0.0
        marks["restored"] = sim.now
        yield until(lambda: len(board.times("session")) == 2, 900, "the second session")
        yield until(lambda: board.node.link.idle, 900, "what the board took meanwhile, delivered")
        gateway.command("led off")
        yield until(lambda: "ok: led off" in gateway.texts(), 300, "the answer to led off")
        # ---- 4. forgeries: a command with a made-up tag, and replays of every frame the gateway sent
        marks["forged"] = sim.now
        epoch = board.node.link.epoch
        forged = bytes([0x50 | epoch, ADDRESS, 9, 0]) + b"\x12\x00\x67led on" + bytes(8)
        sim.send(A, serial_encode(forged))
        replay_everything_the_gateway_sent()
        yield until(lambda: "bad tag" in board.details("refused", marks["forged"]), 300, "the forged frame refused")
        yield until(lambda: len(delivered(taken("forged"))) >= 2, 300,
                    "two more readings delivered: a queued command would have come with them")  # fmt: skip
        # ---- 5. the board loses power and restarts from its state file; the replays once more
        marks["power cut"] = sim.now
        sim.interrupt(PowerCut(off_for=5))
        yield until(lambda: delivered(taken("power cut")), 300, "a reading taken after the restart")
        marks["replayed"] = sim.now
        replay_everything_the_gateway_sent()
        yield until(lambda: len(delivered(taken("replayed"))) >= 2, 300, "two more readings after the replays")

    sim.run_program(board.run, script())

    # The session outlived the gateway's restart: no new handshake until the line was cut.
    assert len(board.times("session")) == 2 and board.times("session")[1] > marks["cut"]
    assert [s.at for s in board.sent if s.counter < 0 and s.at < marks["cut"]] == [0.0]
    assert any(s.retransmission for s in board.sent if marks["down"] <= s.at < marks["up"])
    # The first reading came again to the restarted gateway, which knew it from its stored window.
    assert any(s.counter == 0 and s.boot == 1 and s.at >= marks["up"] for s in board.sent)
    assert len(gateway.sessions) == 2
    # What the board took while the gateway was away, or while the line was cut, was kept and delivered.
    assert len(taken("down", "up")) == 2 and delivered(taken("down", "up")) == taken("down", "up")
    assert len(taken("cut", "restored")) > 10 and delivered(taken("cut", "restored")) == taken("cut", "restored")
    # Forged and replayed frames were refused or ignored, before and after the board's restart: each command once.
    assert board.details("command") == ["led on", "led off"] and board.details("led") == [1, 0]
    assert gateway.texts() == ["ok: led on", "ok: led off"]
    # The restarted board resumed its session: no handshake, counters above every one used before.
    assert board.details("start") == [False, True] and board.details("power cut") == [5]
    before = [s for s in board.sent if s.boot == 1]
    after = [s for s in board.sent if s.boot == 2]
    assert after and all(s.counter >= 0 for s in after), "the restarted board resumed without a handshake"
    assert min(s.counter for s in after) > max(s.counter for s in before if s.k_up == after[0].k_up)
    assert_no_counter_reuse(board.sent)
    temperatures = delivered_temperatures(gateway)
    assert len(temperatures) == len(set(temperatures)), "no reading twice"
