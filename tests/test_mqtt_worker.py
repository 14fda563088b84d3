"""The MQTT worker process and the gateway's side of it (BrokerLink), without the bridge.

Frames and the mid bookkeeping in memory; then one BrokerLink against the
Mosquitto on 127.0.0.1:1883: subscribe, receive, acknowledge, publish, a
barrier, a worker that is killed and replaced, and a clean stop that
leaves no process behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from lowband.gateway.bridges.mqtt_client import BrokerLink, Received
from lowband.gateway.bridges.mqtt_config import BrokerConfig
from lowband.gateway.bridges.mqtt_worker import _MidMap, decode_frame, encode_frame, read_frame

BROKER_PORT = 1883


def test_frames_round_trip_and_bad_frames_are_refused() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        items = [("msg", 1, 7, 1, False, True, b"a/\xff", b"\x00" * 3, [("k", "v")]), ("connect", 2, True)]
        ours.sendall(encode_frame(items) + encode_frame([]))
        assert read_frame(theirs) == [tuple(i) if isinstance(i, tuple) else i for i in items]
        assert read_frame(theirs) == []
        ours.sendall(struct.pack(">I", 2**31))
        with pytest.raises(ValueError, match="frame of"):
            read_frame(theirs)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(struct.pack(">I", 2) + b"\xe9\x01")  # marshal of an int, not a list
        with pytest.raises(ValueError):
            read_frame(theirs)
        ours.sendall(struct.pack(">I", 10) + b"abc")  # cut short, then end of file
        ours.shutdown(socket.SHUT_WR)
        assert read_frame(theirs) is None


@pytest.mark.parametrize("body", [b"", b"[", b"\xe9\x01", b"\x00\x01\x02", b"N", b"\xdb\x02\x00\x00\x00N"],
                         ids=["empty", "cut", "int", "garbage", "none", "cut-list"])  # fmt: skip
def test_a_frame_body_is_a_list_or_a_value_error(body: bytes) -> None:
    # Frames only ever come from the gateway's own worker over a socket pair (never from the network),
    # so the checks are for a broken worker, not a hostile one: marshal would allocate what a length claims.
    with pytest.raises(ValueError):
        decode_frame(body)


def test_mid_map_matches_answers_that_come_before_or_after_the_mid_is_known() -> None:
    ids = _MidMap()
    assert ids.bind(1, 100) is False and ids.done(1) == 100  # the usual order
    assert ids.done(2) is None and ids.bind(2, 200) is True  # the PUBACK won the race
    assert ids.done(1) is None  # answered once only: a second answer is early for a future bind
    assert ids.bind(1, 101) is True


def test_the_worker_explains_its_usage() -> None:
    done = subprocess.run([sys.executable, "-m", "lowband.gateway.bridges.mqtt_worker"], capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2 and "started by the gateway" in done.stderr


class Recorder:
    """A LinkHandler that keeps what it is told and acknowledges every message."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, Received]] = []
        self.connects: list[tuple[int, bool]] = []
        self.barriers: list[tuple[int, int]] = []
        self.disconnects: list[str] = []

    def link_connected(self, link: BrokerLink, gen: int, session_present: bool) -> None:
        self.connects.append((gen, session_present))

    def link_disconnected(self, link: BrokerLink, reason: str) -> None:
        self.disconnects.append(reason)

    def link_messages(self, link: BrokerLink, batch: list[tuple[int, Received]]) -> None:
        self.messages += batch
        for gen, message in batch:
            assert link.ack(gen, message.mid)

    def link_subscribed(self, link: BrokerLink, filters: set[str]) -> None:
        pass

    def link_barrier(self, link: BrokerLink, gen: int, mid: int) -> None:
        self.barriers.append((gen, mid))


async def until(predicate: Any, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def publish(topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", BROKER_PORT, 30)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_a_link_receives_acknowledges_publishes_survives_its_worker_and_stops_cleanly(tmp_path: Path) -> None:
    prefix = f"lbw-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        config = BrokerConfig("local", "127.0.0.1", BROKER_PORT, client_id=prefix, reconnect_min_s=0.2)
        handler = Recorder()
        link = BrokerLink(config, handler, will=(f"{prefix}/status", b"offline"), filters={f"{prefix}/in/#": 1},
                          known_filters=set(), origin="test.local", barrier_topic=f"{prefix}/barrier")  # fmt: skip
        link.start()
        try:
            await asyncio.wait_for(link.connected.wait(), 15)
            await asyncio.to_thread(publish, f"{prefix}/in/a", b"one")
            await until(lambda: len(handler.messages) == 1)
            gen, message = handler.messages[0]
            assert (message.topic, message.payload, message.qos, gen) == (f"{prefix}/in/a", b"one", 1, 1)
            await asyncio.wait_for(link.publish(f"{prefix}/out", b"two", 1, False), 10)
            sent = link.barrier()
            assert sent is not None
            await until(lambda: handler.barriers == [sent])
            proc = link._proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)  # the worker dies: a new one resumes the session
            await until(lambda: len(handler.connects) == 2, 15)
            assert handler.disconnects and handler.connects[1][1] is True
            assert handler.connects[1][0] > gen  # a new connection number: old tickets are never acknowledged
            await asyncio.to_thread(publish, f"{prefix}/in/b", b"three")
            await until(lambda: len(handler.messages) == 2)
            assert handler.messages[1][1].payload == b"three"
        finally:
            worker = link._proc
            await link.stop()
        assert worker is not None and worker.poll() is not None  # nothing left running

    asyncio.run(scenario())
