"""The real firmware on the MicroPython unix port, in a 64 KB heap, over an emulated serial line.

The device process is ``micropython -X heapsize=64k firmware/main_unix.py
CONFIG PORT`` with the packages precompiled by mpy-cross
(:mod:`lowband.sim.firmware`); its port is one end of a
:class:`~lowband.sim.pty_link.PtyLink`. At the other end:

* a :class:`~lowband.sim.gateway_peer.GatewayPeer` (the gateway's link
  core alone) for quick checks of the blocking and asyncio loops;
* a whole gateway in the test's loop with matrix-nio clients in a room:
  readings appear in the room, a command typed in the room reaches the
  device, which acts and answers, over a line with loss and bit errors;
  the device's session survives a gateway restart (kept in its database)
  and its own restart (from its state file, no counter reused: checked on
  every frame it sent); a member without the power level cannot command it.

These run on wall time, at 2400 bps and more: the bit rate is not what they
check. The same firmware over a 100 bps line — retransmission, exactly-once
delivery, a cut line, forgeries and replays — runs on simulated time in
tests/firmware/test_firmware_slow_line.py, and the one real-time run at
100 bps is tests/link/test_link_e2e.py. Every wait here is an upper bound
that ends as soon as its condition holds; none is a sleep that must be
long enough.

The device prints one trace line per event (lbnode/unix_main.py), which
the tests read.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nio
import pytest

from harness import gateway_in_loop, nio_client, provision_kitchen
from lowband.sim.firmware import MICROPYTHON, MPY_CROSS, build_mpy, device_command, device_env
from lowband.sim.gateway_peer import GatewayPeer, new_device_config
from lowband.sim.pty_link import PtyLink

pytestmark = [
    pytest.mark.micropython,
    pytest.mark.skipif(not (MICROPYTHON.exists() and MPY_CROSS.exists()), reason="needs micropython and mpy-cross"),
]

DEVICE = "@dev.kitchen:localhost"
TX = re.compile(r"^tx (\d) (\S+) (-?\d+) ([01]) ([0-9a-f]+)$")


@pytest.fixture(scope="module")
def mpy_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("mpy")
    build_mpy(lib)
    return lib


class DeviceProcess:
    """The firmware as an asyncio subprocess; its trace lines collected as they come."""

    def __init__(self, lib: Path, config: Path, port: str, *options: str) -> None:
        self.args = device_command(config, port, *options)
        self.env = device_env(lib)
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> DeviceProcess:
        self.proc = await asyncio.create_subprocess_exec(*self.args, env=self.env, stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.STDOUT)  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc and self.proc.stdout
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip())

    async def wait_line(self, predicate: Callable[[str], bool], timeout: float, start: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[start:]:
                if predicate(line):
                    return line
            if self.proc and self.proc.returncode is not None and self._reader and self._reader.done():
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"device: no matching line within {timeout} s; last lines: {self.lines[-15:]}")

    async def kill(self) -> None:
        """SIGKILL: the power is cut, nothing is flushed."""
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._reader:
            await asyncio.wait_for(self._reader, 5)

    def count(self, prefix: str) -> int:
        return sum(line.startswith(prefix) for line in self.lines)

    def frames(self) -> list[tuple[int, str, int, bytes]]:
        """(epoch, session id, counter, frame) of every frame it sent."""
        out = []
        for line in self.lines:
            if m := TX.match(line):
                out.append((int(m[1]), m[2], int(m[3]), bytes.fromhex(m[5])))
        return out


def assert_no_counter_reuse(frames: list[tuple[int, str, int, bytes]]) -> None:
    """Under one session key, one counter names one frame (repeats are the same bytes)."""
    seen: dict[tuple[str, int], bytes] = {}
    for _, sid, counter, frame in frames:
        if counter < 0:
            continue
        assert seen.setdefault((sid, counter), frame) == frame, f"counter {counter} reused under session {sid}"


# ------------------------------------------------------------- with the link core alone


def _config(tmp_path: Path, bps: int) -> tuple[Path, dict[str, Any], bytes]:
    path = tmp_path / "kitchen.json"
    config, gw_private = new_device_config(path, "kitchen", address=7, room_id="!sensors:localhost",
                                           link=f"serial:/dev/ttyLINK?bps={bps}")  # fmt: skip
    return path, config, gw_private


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["blocking", "asyncio"])
def test_device_in_64k_heap_publishes_and_obeys(tmp_path: Path, mpy_lib: Path, mode: str) -> None:
    # The commands wait at the gateway before the device starts: they ride back on the answers to its first uplinks
    # whatever the machine's load, instead of racing the device's last reading. The device uses little CPU (about
    # 0.15 s for the whole run); under load only its start and the answers come later, so the bound is generous, and
    # a device that dies (a traceback: an asyncio task that fails leaves the process running) fails the test at once.
    path, config, gw_private = _config(tmp_path, 9600)
    extra = ["--asyncio"] if mode == "asyncio" else []

    async def run() -> tuple[DeviceProcess, int | None]:
        device = await DeviceProcess(mpy_lib, path, link.path_b, "--interval", "0.5", "--readings", "4", *extra).start()
        try:
            await device.wait_line(lambda line: line.startswith(("done", "Traceback", "Task exception")), 240)
            assert device.proc is not None
            returncode = await asyncio.wait_for(device.proc.wait(), 30) if device.lines[-1].startswith("done") else None
        finally:
            await device.kill()
        return device, returncode

    with PtyLink(bps=9600, seed=2) as link, GatewayPeer(config, link.path_a, gw_private) as gateway:
        gateway.command("led on")
        gateway.command("report")
        device, returncode = asyncio.run(run())
    lines = device.lines
    assert returncode == 0 and not any(line.startswith(("Traceback", "Task exception")) for line in lines), lines[-20:]
    assert "led 1" in lines
    assert gateway.texts() == ["ok: led on", "ok: report"]
    temperatures = [values[0][1] for values in gateway.readings()]
    assert temperatures == list(range(215, 220)), "4 readings and the one 'report' took, each once"
    # Refused, if anything: the second copy of an HS2 when a slow answer made the device send its HS1 again.
    refused = [line for line in lines if line.startswith("refused")]
    assert set(refused) <= {"refused unexpected HS2"}, refused
    assert lines[-1] == f"done readings=5 dropped=0 refused={len(refused)}"


# ------------------------------------------------------------- with a gateway and matrix-nio


async def _bodies(client: nio.AsyncClient, room_id: str) -> list[tuple[str, str]]:
    history = await client.room_messages(room_id, start="", limit=500, direction=nio.MessageDirection.back)
    assert isinstance(history, nio.RoomMessagesResponse), history
    return [(e.source["sender"], e.source["content"].get("body", "")) for e in reversed(history.chunk)
            if e.source.get("type") == "m.room.message"]  # fmt: skip


async def _wait_body(client: nio.AsyncClient, room_id: str, predicate: Callable[[str, str], bool],
                     timeout: float) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(predicate(s, b) for s, b in await _bodies(client, room_id)):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"not in the room within {timeout} s: {(await _bodies(client, room_id))[-10:]}")


def _temperature(body: str) -> int | None:
    m = re.match(r"temperature (\d+)\.(\d) Cel", body)
    return int(m[1]) * 10 + int(m[2]) if m else None


async def _provision(alice: nio.AsyncClient, room_id: str, tmp_path: Path, port: str, bps: int) -> Path:
    """``lowband device add kitchen``; returns once the gateway has taken the device on and watches its port."""
    config = provision_kitchen(tmp_path / "data", port, bps)
    await _wait_body(alice, room_id, lambda s, b: s == DEVICE and b.startswith("Device kitchen joined this room"), 60)
    return config


@pytest.mark.timeout(300)
def test_readings_and_a_command_over_a_lossy_line(tmp_path: Path, mpy_lib: Path) -> None:
    """Issue 5's acceptance with the real firmware, at 2400 bps: the room sees the readings, a command typed there is
    obeyed and answered, with frames lost and bits flipped on the line."""

    async def scenario() -> tuple[list[tuple[str, str]], DeviceProcess]:
        async with gateway_in_loop(tmp_path) as base:
            alice = await nio_client(base, "alice")
            try:
                created = await alice.room_create(alias="sensors", name="Sensors", preset=nio.RoomPreset.public_chat)
                assert isinstance(created, nio.RoomCreateResponse), created
                room_id = created.room_id
                config = await _provision(alice, room_id, tmp_path, link.path_a, 2400)
                device = await DeviceProcess(mpy_lib, config, link.path_b, "--interval", "3").start()
                try:
                    await _wait_body(
                        alice, room_id, lambda s, b: s == DEVICE and b.startswith("temperature 21.5 Cel"), 120
                    )
                    sent = await alice.room_send(
                        room_id, "m.room.message", {"msgtype": "m.text", "body": "!kitchen led on"}
                    )
                    assert isinstance(sent, nio.RoomSendResponse), sent
                    await _wait_body(alice, room_id, lambda s, b: s == DEVICE and b == "ok: led on", 120)
                    await device.wait_line(lambda line: line == "led 1", 30)
                finally:
                    await device.kill()
                return await _bodies(alice, room_id), device
            finally:
                await alice.close()

    with PtyLink(bps=2400, frame_loss=0.10, bit_error_rate=1e-3, seed=3) as link:
        bodies, device = asyncio.run(asyncio.wait_for(scenario(), 280))
        counters = link.counters()
    assert sum(c.frames_lost for c in counters.values()) > 0, "the line lost a frame"
    assert sum(c.bits_flipped for c in counters.values()) > 0, "the line flipped bits"
    readings = [_temperature(b) for s, b in bodies if s == DEVICE and _temperature(b) is not None]
    assert readings and len(readings) == len(set(readings)), "every reading at most once"
    assert [b for s, b in bodies if s == DEVICE and b.startswith("ok:")] == ["ok: led on"]
    assert device.lines[1].startswith("reading 1 21.5 ")
    assert_no_counter_reuse(device.frames())


@pytest.mark.timeout(300)
def test_session_survives_restarts_and_strangers_cannot_command(tmp_path: Path, mpy_lib: Path) -> None:
    """What needs the real processes: the gateway keeps the device's session in its database across a restart, the
    room refuses a command from a member below the command power level, and the unix port's firmware resumes its
    session from its state file after a kill -9. At 1200 bps the device waits about 40 s without an answer before it
    gives its session up: a gateway slow to restart on a loaded machine stays well inside that."""
    bps = 1200
    state = tmp_path / "lbnode.state"

    async def scenario() -> dict[str, Any]:
        result: dict[str, Any] = {}
        # ---- 1. a first reading
        async with gateway_in_loop(tmp_path) as base:
            alice = await nio_client(base, "alice")
            created = await alice.room_create(alias="sensors", preset=nio.RoomPreset.public_chat)
            assert isinstance(created, nio.RoomCreateResponse), created
            room_id = created.room_id
            config = await _provision(alice, room_id, tmp_path, link.path_a, bps)
            device = await DeviceProcess(mpy_lib, config, link.path_b, "--interval", "2", "--state", str(state)).start()
            await _wait_body(alice, room_id, lambda s, b: s == DEVICE and b.startswith("temperature 21.5"), 120)
            await alice.close()
        # ---- 2. the gateway is down while the device sends, then back with its database
        down = len(device.lines)
        await device.wait_line(lambda line: line.startswith("tx"), 60, down)
        async with gateway_in_loop(tmp_path) as base:
            alice = await nio_client(base, "alice", register=False)
            await device.wait_line(lambda line: line.startswith("acked"), 120, len(device.lines))
            assert device.count("session") == 1, "the session outlived the gateway's restart"
            # ---- 3. bob, below the command power level, may not command; alice may, and hers is the only command
            bob = await nio_client(base, "bob")
            joined = await bob.join(room_id)
            assert isinstance(joined, nio.JoinResponse), joined
            await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "!kitchen led off"})
            await _wait_body(alice, room_id, lambda s, b: s == DEVICE and "may not command" in b, 60)
            await bob.close()
            await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "!kitchen led on"})
            await _wait_body(alice, room_id, lambda s, b: s == DEVICE and b == "ok: led on", 120)
            assert [line for line in device.lines if line.startswith("command")] == ["command led on"]
            # ---- 4. the device loses power and restarts from its state file
            first_frames = device.frames()
            await device.kill()
            device2 = await DeviceProcess(mpy_lib, config, link.path_b, "--interval", "2", "--state", str(state),
                                          "--first", "100").start()  # fmt: skip
            await device2.wait_line(lambda line: line.startswith("start"), 60)
            await _wait_body(alice, room_id, lambda s, b: s == DEVICE and b.startswith("temperature 31.5"), 120)
            await device2.kill()
            result["frames"] = (first_frames, device2.frames())
            result["start"] = device2.lines[0]
            result["bodies"] = await _bodies(alice, room_id)
            await alice.close()
        return result

    with PtyLink(bps=bps, seed=9) as link:
        result = asyncio.run(asyncio.wait_for(scenario(), 280))
    assert "resumed=1" in result["start"], result["start"]
    before, after = result["frames"]
    assert_no_counter_reuse(before + after)
    assert not any(counter < 0 for _, _, counter, _ in after), "the restarted device resumed without a handshake"
    sid = after[0][1]
    assert min(c for _, s, c, _ in after if s == sid) > max(c for _, s, c, _ in before if s == sid)
    readings = [_temperature(b) for s, b in result["bodies"] if s == DEVICE and _temperature(b) is not None]
    assert len(readings) == len(set(readings)), "no reading twice"
    assert [b for s, b in result["bodies"] if s == DEVICE and b.startswith("ok:")] == ["ok: led on"]
