"""``lowband bench coap --json``: the issue's output contract, run for real with a short idle poll."""

from __future__ import annotations

import json
import subprocess

import pytest
from harness import LOWBAND

from lowband.gateway.bench.coap import CountingRelay, send_time_ms

COLUMNS = {"http_json", "msc3079", "compact"}


def test_bench_coap_json_contract() -> None:
    out = subprocess.run([LOWBAND, "bench", "coap", "--json", "--seconds", "1"], capture_output=True, text=True,
                         timeout=280, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    last = json.loads(lines[-1])
    assert list(last) == ["send", "login", "idle_10min", "sync_5", "send_100bps_ms"]
    for phase in ("send", "login", "idle_10min", "sync_5"):
        assert set(last[phase]) == COLUMNS
        assert all(isinstance(v, int) and v > 0 for v in last[phase].values()), last[phase]
    send = last["send"]
    assert send["compact"] < send["msc3079"] < send["http_json"]
    assert last["idle_10min"]["compact"] < last["idle_10min"]["msc3079"] < last["idle_10min"]["http_json"]
    # 100 bps, 8 bits a byte: the compact send's bytes take 80 ms each on the line.
    assert last["send_100bps_ms"] == pytest.approx(send["compact"] * 80, abs=1)
    details = json.loads(lines[-2])["details"]  # ratios and methods on the line before
    assert details["missing"] == {}
    assert details["ratio_vs_http_json"]["send"]["compact"] == pytest.approx(
        send["compact"] / send["http_json"], abs=1e-3
    )


def test_send_time_through_the_link_emulator() -> None:
    assert send_time_ms([("out", 39), ("in", 17)]) == pytest.approx(4480.0)
    assert send_time_ms([("out", 10)], bits_per_byte=10) == pytest.approx(1000.0)


def test_counting_relay_counts_tcp_payload_each_way() -> None:
    import asyncio

    async def scenario() -> tuple[int, int]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(100)
            writer.write(data * 2)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        relay = CountingRelay(server.sockets[0].getsockname()[1])
        port = await relay.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        await writer.drain()
        got = await asyncio.wait_for(reader.read(100), 10)
        assert got == b"hellohello"
        writer.close()
        await relay.close()
        server.close()
        return relay.up, relay.down

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == (5, 10)
