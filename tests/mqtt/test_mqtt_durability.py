"""Nothing lost, nothing twice: QoS 1 messages while the gateway is ``kill -9``-ed and the broker restarted.

A private Mosquitto (persistence on, queue limits lifted) and ``lowband
serve`` in a subprocess with an ``[mqtt]`` mapping. The messages are
published in two parts; meanwhile the gateway is killed and restarted
twice and the broker is restarted once, each while messages are queued for
or in flight to the gateway, and the gateway's MQTT worker process is
killed on its own once. At the end every sequence number is in the room
exactly once, read through ``/messages`` with matrix-nio.

The publisher stops (its publishes acknowledged) before the broker
restarts: a publisher's own QoS 1 retry after a broker restart can make the
broker deliver a message twice, which is the publisher's side of QoS 1 and
not what this test is about (``dedup_property`` covers it, see
docs/mqtt.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness import Client, GatewayProcess
from nio import AsyncClient, LoginResponse, RoomMessagesResponse

from lowband.gateway.app import open_store
from lowband.gateway.bench.mqtt import payload
from lowband.sim.mosquitto import PrivateMosquitto

PASSWORD = "correct horse battery"


def publish(port: int, first: int, count: int) -> None:
    """Publish seq first..first+count-1 at QoS 1 and wait until the broker acknowledged each."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dur-pub-{first}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    infos = [client.publish("dur/sensor", payload(seq), qos=1) for seq in range(first, first + count)]
    for info in infos:
        info.wait_for_publish(60)
        assert info.is_published()
    client.disconnect()
    client.loop_stop()


def event_count(store: Any) -> int:
    """Message events in the gateway's database, through a second store (pacing only; the verdict reads /messages)."""
    try:
        row = store.db.query_one("SELECT COUNT(*) FROM events WHERE type = 'm.room.message'")
        return int(row[0])
    except sqlite3.OperationalError:
        return 0


def wait_count(store: Any, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (have := event_count(store)) < want:
        assert time.monotonic() < deadline, f"only {have} of {want} events after {timeout} s"
        time.sleep(0.02)


async def read_sequences(url: str, room_id: str) -> list[int]:
    """The seq of every bridged message in the room, through /messages (matrix-nio)."""
    client = AsyncClient(url, "@alice:localhost")
    assert isinstance(await client.login(PASSWORD), LoginResponse)
    seqs: list[int] = []
    token = None
    try:
        while True:
            page = await client.room_messages(room_id, start=token, limit=1000)
            assert isinstance(page, RoomMessagesResponse), page
            for event in page.chunk:
                source = event.source
                if source["type"] == "m.room.message" and source["sender"] == "@mqtt_dur:localhost":
                    seqs.append(source["content"]["org.lowband.senml"][0]["v"])
            if not page.chunk or not page.end:
                return seqs
            token = page.end
    finally:
        await client.close()


async def join_bridge_room(url: str) -> str:
    """Register alice and join the room the bridge created for ``#dur`` (it invited her: ``room_admins``)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        client = Client(session, url)
        await client.register("alice", PASSWORD)
        status, body = await client.request("GET", "/_matrix/client/v3/directory/room/%23dur:localhost")
        assert status == 200, body
        room_id = str(body["room_id"])
        status, body = await client.request("POST", f"/_matrix/client/v3/rooms/{room_id}/join", {})
        assert status == 200, body
        return room_id


def worker_pid(gateway_pid: int, timeout: float = 10.0) -> int:
    """The MQTT worker process the gateway started (its child running mqtt_worker)."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == gateway_pid and b"lowband.gateway.bridges.mqtt.worker" in cmdline and fields[0] != "Z":
                return int(entry.name)
        assert time.monotonic() < deadline, "the gateway has no MQTT worker process"
        time.sleep(0.05)


def wait_exited(pid: int, timeout: float) -> None:
    """Until ``pid`` is gone or a zombie (a container's init may never reap it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        assert time.monotonic() < deadline, f"process {pid} outlived its gateway"
        time.sleep(0.05)


def run_stream(tmp_path: Path, total: int) -> None:
    part_a = total * 6 // 10
    with PrivateMosquitto(tmp_path / "broker") as broker:
        config = (
            "[rate_limits]\nenabled = false\n\n"
            '[mqtt]\nstats_interval_s = 0\nroom_admins = ["@alice:localhost"]\n\n'
            f'[[mqtt.brokers]]\nname = "local"\nhost = "127.0.0.1"\nport = {broker.port}\nreceive_maximum = 500\n'
            "reconnect_min_s = 0.2\nreconnect_max_s = 1.0\n\n"
            '[[mqtt.inbound]]\nname = "dur"\ntopic = "dur/+"\nroom = "#dur:localhost"\nsender = "mapping"\n'
            "rate_per_s = 1000000.0\nburst = 1000000\n"
        )  # fmt: skip
        with GatewayProcess(tmp_path / "data", config=config) as gateway:
            room_id = asyncio.run(join_bridge_room(gateway.url))
            with contextlib.closing(open_store(gateway.data_dir / "lowband.db")) as store:  # beside the gateway
                publish(broker.port, 0, part_a)
                wait_count(store, total // 8, 60)
                assert gateway.proc is not None
                worker = worker_pid(gateway.proc.pid)
                gateway.kill()  # kill -9 with messages committed, in flight and queued at the broker
                wait_exited(worker, 10)  # the worker noticed and went (the broker then sends the will)
                gateway.start()
                wait_count(store, total * 3 // 8, 60)
                broker.restart()  # the gateway's session and its queued messages survive (persistence)
                publish(broker.port, part_a, total - part_a)
                assert gateway.proc is not None
                # the worker alone dies; the gateway starts another
                os.kill(worker_pid(gateway.proc.pid), signal.SIGKILL)
                wait_count(store, total * 3 // 4, 120)
                gateway.kill()
                gateway.start()
                wait_count(store, total, max(60, total / 100))
                time.sleep(2.0)  # a duplicate would be committed by now
                seqs = asyncio.run(read_sequences(gateway.url, room_id))
    counts = collections.Counter(seqs)
    missing = sorted(set(range(total)) - set(counts))
    twice = sorted(seq for seq, n in counts.items() if n > 1)
    assert not missing and not twice, f"{len(missing)} missing (first {missing[:10]}), {len(twice)} twice ({twice[:10]})"
    assert len(seqs) == total


def test_kill_9_and_broker_restart_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    run_stream(tmp_path, 1600)


@pytest.mark.slow
def test_ten_thousand_messages_through_kill_9_and_a_broker_restart(tmp_path: Path) -> None:
    run_stream(tmp_path, 10_000)
