"""The MQTT worker process and the gateway's side of it (BrokerLink), without the bridge.

Frames, the frame buffer and the reconnect delays in memory; then
BrokerLinks against the Mosquitto on 127.0.0.1:1883 (subscribe, receive,
acknowledge, publish, a barrier, a worker that is killed and replaced, a
clean stop that leaves no process behind, PUBACKs only when the gateway
says so) and against a private Mosquitto that is restarted.
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

import paho.mqtt.client as mqtt
import pytest
from harness import until

from lowband.gateway.bridges.mqtt.client import BrokerLink, Received
from lowband.gateway.bridges.mqtt.config import BrokerConfig
from lowband.gateway.bridges.mqtt.worker import Backoff, FrameBuffer, decode_frame, encode_frame, read_frame
from lowband.sim.mosquitto import PrivateMosquitto

BROKER_PORT = 1883


def test_frames_round_trip_and_bad_frames_are_refused() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        items = [("msg", 1, 7, 1, False, True, "a/b", b"\x00" * 3, [("k", "v")]),
                 ("msg", 1, 8, 1, False, False, None, b"", None), ("connect", 2, True)]  # fmt: skip
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


def test_a_frame_buffer_finds_frames_wherever_the_stream_is_cut() -> None:
    frames = [[("ack", 1, mid) for mid in range(n)] for n in (0, 1, 300)] + [[("stop",)]]
    stream = b"".join(encode_frame(f) for f in frames)
    whole = FrameBuffer()
    assert whole.feed(stream) == frames
    bytewise = FrameBuffer()
    got = [frame for i in range(len(stream)) for frame in bytewise.feed(stream[i : i + 1])]
    assert got == frames
    cut = FrameBuffer()
    at = len(encode_frame([])) + 3  # the empty frame and 3 bytes of the next one's head
    assert cut.feed(stream[:at]) == [[]]
    assert cut.feed(stream[at:]) == frames[1:]
    with pytest.raises(ValueError):
        FrameBuffer().feed(struct.pack(">I", 2) + b"\xe9\x01")  # an int, not a list


def test_reconnect_delays_double_up_to_their_cap_and_start_over_after_a_connack() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_the_worker_explains_its_usage() -> None:
    done = subprocess.run([sys.executable, "-m", "lowband.gateway.bridges.mqtt.worker"], capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2 and "started by the gateway" in done.stderr


class Recorder:
    """A LinkHandler that keeps what it is told and, with ``auto_ack``, acknowledges every message at once."""

    def __init__(self, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
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
        for gen, message in batch if self.auto_ack else ():
            assert link.ack(gen, message.mid)

    def link_subscribed(self, link: BrokerLink, filters: set[str]) -> None:
        pass

    def link_barrier(self, link: BrokerLink, gen: int, mid: int) -> None:
        self.barriers.append((gen, mid))

    def payloads(self) -> list[bytes]:
        return [message.payload for _, message in self.messages]


def make_link(handler: Recorder, prefix: str, port: int = 1883, **options: object) -> BrokerLink:
    config = BrokerConfig("local", "127.0.0.1", port, client_id=prefix, reconnect_min_s=0.2, **options)  # type: ignore[arg-type]
    return BrokerLink(config, handler, will=(f"{prefix}/status", b"offline"), filters={f"{prefix}/in/#": 1},
                      known_filters=set(), origin="test.local", barrier_topic=f"{prefix}/barrier")  # fmt: skip


async def barrier(link: BrokerLink, handler: Recorder) -> None:
    """Wait until the broker answered a packet written after every PUBACK queued so far."""
    sent = link.barrier()
    assert sent is not None
    await until(lambda: sent in handler.barriers, 15)


def publish(topic: str, *payloads: bytes, port: int = BROKER_PORT) -> None:
    """Publish at QoS 1 and wait for each PUBACK."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    for info in [client.publish(topic, payload, qos=1) for payload in payloads]:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_a_link_receives_acknowledges_publishes_survives_its_worker_and_stops_cleanly(tmp_path: Path) -> None:
    prefix = f"lbw-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        handler = Recorder()
        link = make_link(handler, prefix)
        link.start()
        try:
            await asyncio.wait_for(link.connected.wait(), 15)
            await asyncio.to_thread(publish, f"{prefix}/in/a", b"one")
            await until(lambda: len(handler.messages) == 1, 15)
            gen, message = handler.messages[0]
            assert (message.topic, message.payload, message.qos, gen) == (f"{prefix}/in/a", b"one", 1, 1)
            await asyncio.wait_for(link.publish(f"{prefix}/out", b"two", 1, False), 10)
            await barrier(link, handler)
            proc = link._proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)  # the worker dies: a new one resumes the session
            await until(lambda: len(handler.connects) == 2, 15)
            assert handler.disconnects and handler.connects[1][1] is True
            assert handler.connects[1][0] > gen  # a new connection number: old tickets are never acknowledged
            await asyncio.to_thread(publish, f"{prefix}/in/b", b"three")
            await until(lambda: len(handler.messages) == 2, 15)
            assert handler.messages[1][1].payload == b"three"
        finally:
            worker = link._proc
            await link.stop()
        assert worker is not None and worker.poll() is not None  # nothing left running

    asyncio.run(scenario())


def test_pubacks_go_out_only_when_the_gateway_says_and_only_on_their_connection() -> None:
    prefix = f"lbw-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        handler = Recorder(auto_ack=False)
        link = make_link(handler, prefix)
        link.start()
        try:
            await asyncio.wait_for(link.connected.wait(), 15)
            await asyncio.to_thread(publish, f"{prefix}/in/a", b"m1", b"m2", b"m3")
            await until(lambda: len(handler.messages) == 3, 15)
            assert handler.payloads() == [b"m1", b"m2", b"m3"]
            gen, first = handler.messages[0]
            assert link.ack(gen, first.mid)  # m1 alone is committed
            await barrier(link, handler)
            proc = link._proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)  # the gateway's worker dies with m2 and m3 unacknowledged
            await until(lambda: len(handler.connects) == 2, 15)
            assert handler.connects[1][1] is True  # the session was resumed
            await until(lambda: len(handler.messages) == 5, 15)
            redelivered = handler.messages[3:]
            assert [m.payload for _, m in redelivered] == [b"m2", b"m3"] and all(m.dup for _, m in redelivered)
            # A ticket of the old connection is never acknowledged on the new one, where its packet id may
            # name another message.
            assert not link.ack(gen, handler.messages[1][1].mid)
            for new_gen, message in redelivered:  # one turn of the loop: one command frame of acks
                assert link.ack(new_gen, message.mid)
            await barrier(link, handler)
        finally:
            await link.stop()
        # The same session again: the broker holds nothing unacknowledged any more.
        again = Recorder()
        link = make_link(again, prefix)
        link.start()
        try:
            await asyncio.wait_for(link.connected.wait(), 15)
            assert again.connects == [(again.connects[0][0], True)]
            await asyncio.to_thread(publish, f"{prefix}/in/a", b"m4")
            await until(lambda: len(again.messages) == 1, 15)
            await barrier(link, again)
            assert again.payloads() == [b"m4"]
        finally:
            await link.stop()

    asyncio.run(scenario())


@pytest.mark.slow
def test_the_worker_keeps_its_connection_alive_and_comes_back_after_a_broker_restart(tmp_path: Path) -> None:
    prefix = f"lbw-{uuid.uuid4().hex[:8]}"

    async def scenario(broker: PrivateMosquitto) -> None:
        handler = Recorder(auto_ack=False)
        link = make_link(handler, prefix, broker.port, keepalive_s=5)
        link.start()
        try:
            await asyncio.wait_for(link.connected.wait(), 15)
            await asyncio.to_thread(publish, f"{prefix}/in/a", b"kept", port=broker.port)
            await until(lambda: len(handler.messages) == 1, 15)
            # Idle for longer than 1.5 keepalives: the broker would drop a client that sent no PINGREQ.
            await asyncio.sleep(8)
            assert handler.disconnects == [] and len(handler.connects) == 1
            await asyncio.to_thread(broker.restart)  # saves its database on the way out
            await until(lambda: len(handler.connects) == 2, 20)
            assert handler.disconnects and handler.connects[1][1] is True
            await until(lambda: len(handler.messages) == 2, 15)
            gen, message = handler.messages[1]
            assert message.payload == b"kept" and message.dup and gen == handler.connects[1][0]
            assert link.ack(gen, message.mid)
            await barrier(link, handler)
        finally:
            await link.stop()

    with PrivateMosquitto(tmp_path / "broker") as broker:
        asyncio.run(scenario(broker))


def test_the_worker_reads_no_more_than_receive_maximum_unacknowledged_messages(tmp_path: Path) -> None:
    # The attack: a broker that sends everything it has, unacknowledged (Mosquitto with max_inflight_messages 0 on
    # MQTT 3.1.1, which has no receive maximum; Mosquitto 2.0.11 on MQTT 5 once one PUBACK came back). Without flow
    # control every message ended up in the gateway's memory.
    prefix = f"lbw-{uuid.uuid4().hex[:8]}"
    window = 20

    async def scenario(port: int) -> None:
        handler = Recorder(auto_ack=False)
        link = make_link(handler, prefix, port, protocol="3.1.1", receive_maximum=window)
        link.start()
        try:
            await asyncio.wait_for(link.connected.wait(), 15)
            payloads = [b"%d" % i for i in range(300)]
            await asyncio.to_thread(publish, f"{prefix}/in/a", *payloads, port=port)
            await until(lambda: len(handler.messages) > window, 15)
            await asyncio.sleep(0.5)  # the broker has sent everything it holds; the worker does not read it
            assert len(handler.messages) == window + 1, f"{len(handler.messages)} messages held unacknowledged"
            acked = 0
            while acked < len(payloads):  # acknowledge in steps: each step lets as many more in, never more
                for gen, message in handler.messages[acked : acked + 10]:
                    assert link.ack(gen, message.mid)
                acked = min(acked + 10, len(handler.messages))
                want = min(len(payloads), acked + window + 1)
                await until(lambda want=want: len(handler.messages) >= want, 15)
                assert len(handler.messages) == want
            assert handler.payloads() == payloads  # in order, each once: nothing lost, nothing twice
            assert len(handler.connects) == 1
        finally:
            await link.stop()

    with PrivateMosquitto(tmp_path / "broker", persistence=False) as broker:
        asyncio.run(scenario(broker.port))
