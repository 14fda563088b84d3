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
from harness import until

from lowband.gateway.bridges.mqtt.client import BrokerLink, Received
from lowband.gateway.bridges.mqtt.config import BrokerConfig
from lowband.gateway.bridges.mqtt.worker import (
    _Client,
    _MidMap,
    _share_property_tables,
    _SharedTablesProperties,
    decode_frame,
    encode_frame,
    read_frame,
)  # fmt: skip

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


class FakeSocket:
    """A non-blocking socket stand-in: recv() hands out queued chunks, send() takes at most ``limit`` bytes."""

    def __init__(self, chunks: list[bytes], limit: int = 1 << 20) -> None:
        self.chunks = list(chunks)
        self.recv_calls = 0
        self.sent: list[bytes] = []
        self.limit = limit

    def recv(self, size: int) -> bytes:
        self.recv_calls += 1
        if not self.chunks:
            raise BlockingIOError
        chunk = self.chunks.pop(0)
        assert len(chunk) <= size
        return chunk

    def send(self, data: bytes) -> int:
        taken = bytes(data[: self.limit])
        self.sent.append(taken)
        return len(taken)

    def close(self) -> None:
        pass


def _client(messages: list[Any]) -> _Client:
    client = _Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5,
                     manual_ack=True, after_read=lambda: messages.append("read done"))  # fmt: skip
    client.on_message = lambda c, u, m: messages.append((m.mid, m.topic, m.payload))
    return client


def _publish_packet(mid: int, topic: bytes, payload: bytes) -> bytes:
    """An MQTT 5 QoS 1 PUBLISH (no properties)."""
    body = struct.pack(">H", len(topic)) + topic + struct.pack(">H", mid) + b"\x00" + payload
    return bytes([0x32, len(body)]) + body


def test_the_worker_client_reads_every_available_packet_with_few_recv_calls() -> None:
    packets = [_publish_packet(mid, b"s/%d" % mid, b"x" * mid) for mid in range(1, 41)]
    stream = b"".join(packets)
    messages: list[Any] = []
    client = _client(messages)
    client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED  # as after CONNACK
    # Forty packets in two chunks, the cut falling inside a packet's remaining length and body.
    sock = FakeSocket([stream[:101], stream[101:]])
    client._sock = sock  # type: ignore[assignment]
    assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert messages[:-1] == [(mid, f"s/{mid}", b"x" * mid) for mid in range(1, 41)]
    assert messages[-1] == "read done"  # once, after every packet
    assert sock.recv_calls == 3  # two chunks, then "would block" (paho alone: three or more per packet)
    # A new connection starts with nothing buffered, even if the old one left bytes behind.
    messages.clear()
    old = FakeSocket([_publish_packet(1, b"a", b"1")[:3]])
    client._sock = old  # type: ignore[assignment]
    client._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                         "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}  # fmt: skip
    client._sock_recv(1)  # one byte of three taken; two stay in the buffer
    client._sock = FakeSocket([_publish_packet(9, b"b", b"2")])  # type: ignore[assignment]
    assert client._sock_recv(1) == b"\x32"  # from the new socket, not the old buffer


def test_the_worker_client_writes_queued_pubacks_in_one_send_and_wakes_once() -> None:
    client = _client([])
    client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    wakes = FakeSocket([])
    client._sockpairW = wakes  # type: ignore[assignment]
    client._thread = object()  # type: ignore[assignment]  # as under loop_start: queued packets wait for the thread
    sock = FakeSocket([], limit=7)  # the first send() takes only 7 of the 12 PUBACK bytes
    client._sock = sock  # type: ignore[assignment]
    client.ack_many([1, 2, 300])
    client.unsubscribe("barrier/topic")  # a barrier after the acks keeps its place
    assert len(wakes.sent) == 2  # one for the three acks, one for the UNSUBSCRIBE
    while client.want_write():
        assert client._packet_write() in (mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS, mqtt.MQTTErrorCode.MQTT_ERR_AGAIN)
    pubacks = b"\x40\x02\x00\x01" + b"\x40\x02\x00\x02" + b"\x40\x02\x01\x2c"
    assert sock.sent[:2] == [pubacks[:7], pubacks[7:]]
    unsubscribe = b"".join(sock.sent[2:])  # then the UNSUBSCRIBE, on its own (in 7-byte pieces here)
    assert unsubscribe[0] == 0xA2 and unsubscribe.endswith(b"barrier/topic") and len(unsubscribe) == 20
    client._thread = None


def test_shared_property_tables_decode_publishes_as_paho_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import paho.mqtt._packet as packet_module
    from paho.mqtt.properties import MQTTException, Properties

    def utf8(text: bytes) -> bytes:
        return struct.pack(">H", len(text)) + text

    # User properties (twice), a content type and a message expiry, then none at all.
    props = b"\x26" + utf8(b"lowband-origin") + utf8(b"gw1") + b"\x26" + utf8(b"k") + utf8(b"v")
    props += b"\x03" + utf8(b"application/json") + b"\x02" + struct.pack(">I", 60)
    bodies = [utf8(b"a/b") + struct.pack(">H", 7) + bytes([len(p)]) + p + b"payload" for p in (props, b"")]
    before = [packet_module.decode_publish(0x32, body, mqtt.MQTTv5) for body in bodies]
    for module in (packet_module, mqtt):
        monkeypatch.setattr(module, "Properties", Properties)  # put back after the test
    _share_property_tables()
    assert packet_module.Properties is _SharedTablesProperties and mqtt.Properties is _SharedTablesProperties
    after = [packet_module.decode_publish(0x32, body, mqtt.MQTTv5) for body in bodies]
    for old, new in zip(before, after, strict=True):
        assert isinstance(new.properties, _SharedTablesProperties)
        assert (new.topic, new.mid, new.payload) == (old.topic, old.mid, old.payload)
        assert new.properties.json() == old.properties.json()
    assert after[0].properties.UserProperty == [("lowband-origin", "gw1"), ("k", "v")]
    assert not hasattr(after[1].properties, "UserProperty")
    # An instance is cleared of its values, not of the shared tables, and paho's checks still apply.
    after[0].properties.clear()
    assert after[0].properties.json() == {} and after[1].properties.names is after[0].properties.names
    with pytest.raises(MQTTException):
        after[1].properties.NotAProperty = 1


def test_the_worker_explains_its_usage() -> None:
    done = subprocess.run([sys.executable, "-m", "lowband.gateway.bridges.mqtt.worker"], capture_output=True,
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
