"""``lowband bench link``: bytes, goodput and latency of the device link.

Figures and how each is obtained:

* ``reading_on_air_bytes`` — the reference reading as the real cores put it
  on a serial line (COBS frame, header, address, seq, ciphertext, tag);
  ``reading_lora_bytes`` — the same frame as a LoRa packet (no COBS);
* ``handshake_bytes`` — the two Noise KK messages the cores exchange
  (``handshake_framed_bytes`` with header, address and serial framing);
* ``goodput_bps`` — compact payload bits delivered per second at 100 bps,
  from the real device and gateway cores driven through the
  :class:`~lowband.sim.link_model.LinkModel` in simulated time (20 readings
  back to back, each acknowledged before the next);
* ``latency_ms_p50`` — wall-clock median from a device publishing a reading
  to a ``/sync`` long-poll returning it, with a real gateway, the scripted
  device and a pty line at 100 bps; ``airtime_ms`` is that frame's time on
  the line (10 bits per byte), so ``latency_ms_p50 - airtime_ms`` is what
  the gateway and the software add;
* ``lora_airtime_ms`` — time on air of the LoRa frame at SF7 and SF12,
  125 kHz, CR 4/5 (the Semtech formula in ``hardware/lora.py``), and the
  readings per hour a 1 % duty cycle allows at each.

Anchors (their published sizes): LoRaWAN uplink 13 bytes of overhead with a
32-bit MIC; Noise XX handshake 192 bytes; EDHOC static-DH 101 bytes.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lowband.codecs.link_frame import serial_encode
from lowband.gateway.link.gateway_core import Deliver, DeviceEntry, GatewayLink, Transmit
from lowband.gateway.link.handshake import generate_keypair
from lowband.hardware.lora import time_on_air_ms
from lowband.sim.device_core import DeviceLink, rto_for_bps
from lowband.sim.link_model import LinkModel

READING = bytes.fromhex("11000718d71828190172")
ANCHORS = {"lorawan_overhead_bytes": 13, "lorawan_mic_bits": 32, "noise_xx_handshake_bytes": 192,
           "edhoc_static_dh_bytes": 101}  # fmt: skip


def _pair(mtu: int = 255, bps: float = 100.0) -> tuple[GatewayLink, DeviceLink]:
    gw_private, gw_public = generate_keypair()
    dev_private, dev_public = generate_keypair()
    gateway = GatewayLink(gw_private, mtu=mtu)
    gateway.add_device(DeviceEntry(7, "bench", dev_public))
    return gateway, DeviceLink(7, dev_private, gw_public, rto=rto_for_bps(bps), mtu=mtu)


def frame_sizes() -> dict[str, int]:
    """Handshake and reading sizes as the real cores produce them."""
    gateway, device = _pair()
    hs1 = device.poll(0.0)[0]
    hs2 = next(a.frame for a in gateway.receive(hs1, 0.0) if isinstance(a, Transmit))
    device.receive(hs2, 0.0)
    device.publish(READING)
    data = device.poll(0.0)[0]
    return {
        "handshake_bytes": (len(hs1) - 2) + (len(hs2) - 2),
        "handshake_framed_bytes": len(serial_encode(hs1)) + len(serial_encode(hs2)),
        "reading_on_air_bytes": len(serial_encode(data)),
        "reading_lora_bytes": len(data),
    }


def simulated_goodput(bps: float = 100.0, readings: int = 20) -> dict[str, float]:
    """Payload bits per second through the real cores over a LinkModel, in simulated time."""
    gateway, device = _pair(bps=bps)
    model = LinkModel(bps, seed=1)
    now, delivered, start = 0.0, 0, None
    from lowband.codecs.link_frame import SerialFramer

    framers = {"A": SerialFramer(), "B": SerialFramer()}
    queued = False
    while delivered < readings and now < 3600:
        if device.keys is not None and not queued:
            for _ in range(readings):
                device.publish(READING)
            queued, start = True, now
        for frame in device.poll(now):
            model.write("B", serial_encode(frame), now)
        for side, data in model.poll(now):
            for frame in framers[side].feed(data):
                if side == "A":  # the gateway is side A
                    actions = gateway.receive(frame, now)
                    while actions:
                        action = actions.pop(0)
                        if isinstance(action, Transmit):
                            model.write("A", serial_encode(action.frame), now)
                        elif isinstance(action, Deliver):  # stored at once here: acknowledged at once
                            delivered += 1
                            actions += gateway.delivered(action.token, now)
                else:
                    device.receive(frame, now)
        deadlines = [d for d in (model.next_deadline(), device.next_deadline()) if d is not None]
        now = max(now + 1e-4, min(deadlines)) if deadlines else now + 0.1
    elapsed = now - (start or 0.0)
    return {"goodput_bps": round(readings * len(READING) * 8 / elapsed, 2), "goodput_readings": delivered,
            "goodput_seconds": round(elapsed, 2)}  # fmt: skip


async def _provision_device(name: str, room: str, link: str, data_dir: Path) -> None:
    """Provision a device as a user does, with ``lowband device add``; raises RuntimeError if it fails.

    A separate process because the benchmarks sit below the CLI (the import
    contract in pyproject.toml): the CLI runs them, they do not call into it.
    """
    command = "import sys; from lowband.gateway.cli.main import main; sys.exit(main(sys.argv[1:]))"  # = `lowband`
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", command, "device", "add", name, "--room", room, "--link", link, "--data-dir", str(data_dir),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"lowband device add {name} failed ({proc.returncode}): {stderr.decode().strip()}")


async def _latency(bps: int, rounds: int) -> list[float]:
    import aiohttp

    from lowband.gateway.app import run_gateway
    from lowband.gateway.config import load_config
    from lowband.sim.device_peer import ScriptedDevice
    from lowband.sim.pty_link import PtyLink

    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, PtyLink(bps=bps, seed=2) as link:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = load_config(None, data_dir=Path(tmp) / "data", server_name="localhost", http_port=port,
                             registration_enabled=True)  # fmt: skip
        started, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_gateway(config, started, stop))
        await asyncio.wait_for(started.wait(), 30)
        base = f"http://127.0.0.1:{port}/_matrix/client/v3"
        try:
            async with aiohttp.ClientSession() as http:
                async def call(method: str, path: str, body: Any = None, token: str | None = None) -> Any:
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    async with http.request(method, base + path, json=body, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=120)) as response:  # fmt: skip
                        return await response.json()

                reg = await call("POST", "/register", {"username": "bench", "password": "pw", "auth": {"type": "m.login.dummy"}})
                token = reg["access_token"]
                room = (await call("POST", "/createRoom", {"preset": "public_chat", "room_alias_name": "bench"}, token))["room_id"]
                await _provision_device("bench", "#bench:localhost", f"serial:{link.path_a}?bps={bps}", Path(tmp) / "data")
                device = ScriptedDevice(Path(tmp) / "data" / "devices" / "bench.json", link.path_b, rto=rto_for_bps(bps))
                await device.start()
                since = (await call("GET", "/sync?timeout=0", token=token))["next_batch"]
                device.publish_text("hello")  # the handshake and the join happen first
                while True:
                    got = await call("GET", f"/sync?timeout=30000&since={since}", token=token)
                    since = got["next_batch"]
                    events = got["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])
                    if any(e["content"].get("body") == "hello" for e in events):
                        break
                await asyncio.sleep(3)  # let the acknowledgement finish on the line
                for i in range(rounds):
                    since = (await call("GET", "/sync?timeout=0&since=" + since, token=token))["next_batch"]
                    began = time.monotonic()
                    device.publish_reading([(0, 200 + i), (1, 40), (2, 370)])
                    while True:
                        got = await call("GET", f"/sync?timeout=30000&since={since}", token=token)
                        since = got["next_batch"]
                        events = got["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])
                        if any("org.lowband.senml" in e["content"] for e in events):
                            samples.append((time.monotonic() - began) * 1000)
                            break
                    await asyncio.sleep(2.5)  # the acknowledgement is on the line now
                await device.stop()
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    return samples


def run(rounds: int = 5) -> tuple[dict[str, Any], str]:
    """Run the link benchmark; returns the result and a table."""
    sizes = frame_sizes()
    goodput = simulated_goodput()
    print("bench link: measuring reading → /sync latency over a 100 bps pty line …", file=sys.stderr)
    samples = asyncio.run(_latency(100, rounds))
    airtime = sizes["reading_on_air_bytes"] * 10 / 100 * 1000
    lora = {f"sf{sf}": round(time_on_air_ms(sizes["reading_lora_bytes"], sf, 125_000), 1) for sf in (7, 12)}
    result: dict[str, Any] = {
        **sizes,
        "goodput_bps": goodput["goodput_bps"],
        "latency_ms_p50": round(statistics.median(samples), 1),
        "airtime_ms": round(airtime, 1),
        "latency_over_airtime_ms": round(statistics.median(samples) - airtime, 1),
        "latency_samples_ms": [round(s, 1) for s in samples],
        "lora_airtime_ms": lora,
        "lora_readings_per_hour_at_1pct": {k: int(36_000 / v) for k, v in lora.items()},
        "anchors": ANCHORS,
        "goodput_detail": goodput,
    }
    lines = [
        f"reading on a serial line     {sizes['reading_on_air_bytes']:>5} B   (LoRaWAN: 13 B overhead + 10 B payload = 23 B with a 32-bit MIC; ours has a 64-bit tag)",
        f"reading as a LoRa packet     {sizes['reading_lora_bytes']:>5} B",
        f"handshake (Noise KK)         {sizes['handshake_bytes']:>5} B   framed {sizes['handshake_framed_bytes']} B (EDHOC static-DH 101 B, Noise XX 192 B)",
        f"goodput at 100 bps           {goodput['goodput_bps']:>7} bit/s of compact payload",
        f"reading → /sync, median      {result['latency_ms_p50']:>7} ms  (time on air {airtime:.0f} ms; added {result['latency_over_airtime_ms']} ms; target ≤ 250)",
        f"LoRa airtime SF7 / SF12      {lora['sf7']} / {lora['sf12']} ms at 125 kHz",
    ]
    return result, "\n".join(lines)
