"""The CoAP API on a serial line (`[coap] links`, gateway/coap/link_transport.py), on real ptys in real time.

Two ptys joined by :class:`lowband.sim.pty_link.PtyLink` (it enforces the bit
rate and half duplex; a pty ignores baud rates). The gateway runs in the
test's loop with ``[coap] links = ["serial:<pty A>?bps=N"]``; the client is
the link client core of sim/coap_peer.py (Noise session, CoAP message layer,
optionally compact mode) pumped on pty B by a small asyncio driver here, as
a laptop with a serial radio would run it. Handshake, login, send, sync —
and the bytes each exchange puts on the line, counted by the relay
(COBS and delimiters included).

The rate is 4800 bps so a run takes seconds of wall time; what 100 bps
with loss does to the protocol is tested on simulated time
(test_coap_lossy.py) with the same cores and the same timers.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import expect, provision_kitchen, users_gateway

from lowband.codecs import cbor, coap
from lowband.codecs.link_frame import TAG_LEN, TYPE_DATA, Frame, SerialFramer, serial_encode
from lowband.gateway.coap import clients
from lowband.gateway.coap.config import parse_coap_config
from lowband.gateway.coap.link_transport import LINK_LINES, line_settings, start_link_lines
from lowband.gateway.coap.mapping import Gateway
from lowband.gateway.coap.secure_core import SecureClient
from lowband.gateway.config import ConfigError
from lowband.gateway.devices.keys import public_from_private
from lowband.gateway.devices.registry import load_or_create_link_key
from lowband.gateway.homeserver.services import HTTP_SERVER
from lowband.sim.coap_peer import LinkCoapClient, Operation, block_szx_for, link_params
from lowband.sim.pty_link import PtyLink

BPS = 4800
#: the issue's reference message (its 60-byte goal) in the second, steady-state send
TEXTS = ("temp 21.4 C", "temp 21.5 C")


class PtyClient:
    """Pumps a :class:`LinkCoapClient` over a pty in real time (loop time is the core's ``now``)."""

    def __init__(self, core: LinkCoapClient, path: str) -> None:
        self.core = core
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.framer = SerialFramer()
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.largest_in = 0  # the longest frame received, as on the line
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        now = self.loop.time()
        for frame in self.framer.feed(data):
            self.largest_in = max(self.largest_in, len(serial_encode(frame)))
            self.core.receive(frame, now)
        self.wake.set()

    async def run(self, op: Operation, timeout: float = 60.0) -> Operation:
        """Pump until ``op`` is done; AssertionError after ``timeout`` seconds."""
        await self.until(lambda: op.done, timeout, f"{op.method} {op.path} not answered within {timeout} s")
        return op

    async def until(self, done: Callable[[], bool], timeout: float, what: str = "condition not reached") -> None:
        """Pump until ``done()`` (what the core has to send is written first); AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.core.poll(self.loop.time()):
                os.write(self.fd, serial_encode(frame))
            if done():
                return
            assert time.monotonic() < deadline, what
            self.wake.clear()
            due = self.core.next_deadline()
            wait = 0.5 if due is None else min(0.5, max(0.0, due - self.loop.time()))
            try:
                await asyncio.wait_for(self.wake.wait(), wait)
            except TimeoutError:
                pass

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


def _wire(link: PtyLink) -> tuple[int, int]:
    counters = link.counters()
    return counters["B"].bytes_written, counters["A"].bytes_written  # (client → gateway, gateway → client)


async def _scenario(tmp_path: Path, link: PtyLink, compact_mode: bool, kind: str = "serial") -> dict[str, Any]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    record, private = clients.add_client(data_dir, "laptop", "@alice:localhost")
    gateway_public = public_from_private(load_or_create_link_key(data_dir / "link.key"))
    # latency=2 only lengthens the timers (ACK timeout 5.4 s, empty ACK after 2.7 s): a gateway slowed down by a
    # busy machine still answers each request piggybacked, so the bytes counted are the protocol's own.
    spec = f"serial:{link.path_a}?bps={BPS}&latency=2"
    max_message = 244
    if kind == "lora":  # a transparent modem at EU868 DR5: 222-byte packets, the duty cycle kept by the gateway
        spec, max_message = f"lora:{link.path_a}?region=EU868&dr=5&bps={BPS}&latency=2", 209
    components = {"coap": {"links": [spec]}}
    async with users_gateway(tmp_path, "alice", "bob", components=components) as (users, services, _):
        room = expect(await users[0].request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}), 200)
        room_id = room["room_id"]
        expect(await users[1].request("POST", f"/_matrix/client/v3/join/{room_id}", {}), 200)
        line = services.components[LINK_LINES][spec]
        core = LinkCoapClient(SecureClient(private, gateway_public, record.address, epoch=0), link_params(BPS, latency=2),
                              compact_mode=compact_mode, rng=random.Random(3), max_message=max_message)  # fmt: skip
        driver = PtyClient(core, link.path_b)
        spent: dict[str, tuple[int, int]] = {}
        try:
            before = _wire(link)
            login = await driver.run(core.login("alice", "secret-pw"))
            assert login.code == coap.CHANGED and login.result["user_id"] == "@alice:localhost", login.result
            assert core.counters["handshakes"] == 1
            first = await driver.run(core.sync())
            assert first.code == coap.CONTENT, first.result
            spent["handshake_login_first_sync"] = tuple(a - b for a, b in zip(_wire(link), before))  # type: ignore[assignment]
            for i in range(2):  # the second send is the steady state: aliases known, token sticky
                mark = _wire(link)
                sent = await driver.run(core.send_text(room_id, TEXTS[i], f"s{i}"))
                assert sent.code == coap.CHANGED, sent.result
                assert link.wait_idle(10)
                spent[f"send_{i}"] = tuple(a - b for a, b in zip(_wire(link), mark))  # type: ignore[assignment]
            mark = _wire(link)
            later = await driver.run(core.sync(first.result["next_batch"]))
            spent["sync_1"] = tuple(a - b for a, b in zip(_wire(link), mark))  # type: ignore[assignment]
            # OBSERVE /sync: registered, then nothing at all on the line while idle, then Bob's message pushed
            # as a confirmable notification and acknowledged.
            observation = await driver.run(core.observe_sync(later.result["next_batch"]))
            assert observation.observing, observation.result
            assert link.wait_idle(10)
            mark = _wire(link)
            await asyncio.sleep(3.0)
            spent["idle_3s"] = tuple(a - b for a, b in zip(_wire(link), mark))  # type: ignore[assignment]
            expect(await users[1].request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/b1",
                                          {"msgtype": "m.text", "body": "pushed from bob"}), 200)  # fmt: skip
            await driver.until(lambda: bool(observation.notifications) and core.idle, 30, "no notification")
            await asyncio.sleep(0.2)  # the relay has read the client's last frame (its ACK of the push)
            assert link.wait_idle(10)
            spent["push"] = tuple(a - b for a, b in zip(_wire(link), mark))  # type: ignore[assignment]
        finally:
            driver.close()
        history = expect(await users[0].request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50"), 200)  # fmt: skip
        return {"later": later, "room_id": room_id, "history": history, "spent": spent, "sent": sent,
                "line": dict(line.counters), "core": core, "largest_down": driver.largest_in,
                "pushed": observation.notifications}  # fmt: skip


@pytest.mark.parametrize(("compact_mode", "kind"), [(False, "serial"), (True, "serial"), (True, "lora")],
                         ids=["msc3079", "compact", "compact-lora-dr5"])  # fmt: skip
def test_handshake_login_send_and_sync_over_a_serial_line(tmp_path: Path, compact_mode: bool, kind: str) -> None:
    with PtyLink(bps=BPS, seed=1) as link:
        found = asyncio.run(asyncio.wait_for(_scenario(tmp_path, link, compact_mode, kind), 120))
    room_id = found["room_id"]
    bodies = [e["content"]["body"] for e in found["history"]["chunk"]
              if e["type"] == "m.room.message" and e["sender"] == "@alice:localhost"]  # fmt: skip
    assert bodies == [TEXTS[1], TEXTS[0]]
    events = found["later"].result["rooms"]["join"][room_id]["timeline"]["events"]
    assert [e["content"]["body"] for e in events if e["type"] == "m.room.message"] == bodies[::-1]
    assert [e["sender"] for e in events if e["type"] == "m.room.message"] == ["@alice:localhost"] * 2
    line = found["line"]
    assert line["undecodable"] == 0 and line["oversize"] == 0 and line["frames_in"] > 0
    if kind == "lora":  # every frame the gateway sent fits one DR5 packet (222 bytes, COBS included)
        assert found["largest_down"] <= 222
    up, down = found["spent"]["send_1"]
    print(f"\n{'compact' if compact_mode else 'msc3079'} send on the serial line: {up} + {down} = {up + down} bytes "
          f"(COBS and delimiters included); all: {found['spent']}")  # fmt: skip
    assert found["spent"]["idle_3s"] == (0, 0)  # observing costs nothing while nothing happens
    pushed = [e for doc in found["pushed"] for e in doc["rooms"]["join"][room_id]["timeline"]["events"]]
    assert [(e["sender"], e["content"]["body"]) for e in pushed] == [("@bob:localhost", "pushed from bob")]
    # One frame each way, nothing else: a send is one CoAP exchange (CON + piggybacked ACK), no link ACKs.
    assert found["core"].counters["retries"] == 0
    # The numbers docs/protocol/coap-links.md gives: one frame each way (the 60-byte goal is for UDP; a serial
    # line adds COBS' 2 bytes per frame).
    assert (up, down) == ((38, 19) if compact_mode else (97, 69))


def test_coap_con_in_session_frames_costs_less_than_coap_non_over_the_link_arq() -> None:
    """One compact send, byte for byte: CoAP CON in plain DATA frames (what the links do) against CoAP NON in the
    device link's stop-and-wait frames (docs/protocol/link.md sections 2-3), COBS and delimiters included.

    With the link's ARQ the gateway's answer carries the ack byte of the request's frame, and the answer
    itself, a frame with a non-empty plaintext, needs the client's pure acknowledgement (12 bytes, 14 on the
    line). CoAP's CON needs neither: the piggybacked answer is the acknowledgement, and CoAP keeps the
    exchange's deduplication besides. The CoAP headers of CON and NON are the same size.
    """
    tag = bytes(TAG_LEN)
    path = ("9", "~0", "s1")  # compact: room alias 0, the type left out, transaction s1
    request = coap.encode(coap.Message.request(coap.PUT, path, payload=cbor.dumps("temp 21.5 C"), mtype=coap.CON))
    answer = coap.encode(coap.Message(coap.ACK, coap.CHANGED, payload=cbor.dumps(7)))  # the event's handle
    non_request = coap.encode(coap.Message.request(coap.PUT, path, payload=cbor.dumps("temp 21.5 C"), mtype=coap.NON))
    non_answer = coap.encode(coap.Message(coap.NON, coap.CHANGED, payload=cbor.dumps(7)))

    def wire(frame: Frame) -> int:
        return len(serial_encode(frame.encode()))

    con = wire(Frame(TYPE_DATA, 0, 5, request + tag, seq=0)) + wire(Frame(TYPE_DATA, 0, 5, answer + tag, seq=0))
    arq = (wire(Frame(TYPE_DATA, 0, 5, non_request + tag, seq=0))
           + wire(Frame(TYPE_DATA, 0, 5, non_answer + tag, seq=0, ack=0))  # the answer acknowledges the request
           + wire(Frame(TYPE_DATA, 0, 5, tag, seq=1, ack=0)))  # the client's pure ACK of the answer  # fmt: skip
    assert (con, arq) == (57, 72)  # 38 + 19 measured on the pty line above; link ARQ: 15 bytes (26 %) more


def test_line_settings_size_frames_blocks_and_timers_for_the_line() -> None:
    serial = line_settings("serial:/dev/ttyUSB1?bps=100")
    assert (serial.kind, serial.path, serial.bps, serial.frame_limit, serial.max_message) == (
        "serial", "/dev/ttyUSB1", 100, 255, 244)  # fmt: skip
    # ACK_TIMEOUT above one round trip: an 80-byte request and a full frame back, 10 bits a byte, 1 s turnaround.
    assert serial.params.ack_timeout == pytest.approx((82 + 257) * 10 / 100 + 1.0)
    assert line_settings("serial:/dev/ttyUSB1?bps=100&latency=4").params.ack_timeout == pytest.approx(42.9)
    assert line_settings("serial:/dev/ttyUSB1?bps=9600").params.ack_timeout == 2.0  # RFC 7252's own, at speed
    dr5 = line_settings("lora:/dev/ttyUSB2?region=EU868&dr=5")
    assert (dr5.frame_limit, dr5.max_message) == (220, 209)  # a 222-byte packet less COBS' 2 bytes
    assert block_szx_for(dr5.max_message) == 3  # 128-byte blocks: block, CoAP options and frame within 222
    assert line_settings("lora:/dev/ttyUSB2?region=EU868&dr=3").max_message == 102
    for bad in ("lora:/dev/ttyUSB2?region=EU868&dr=0", "serial:/dev/ttyUSB1?bps=0", "serial:/dev/ttyUSB1?bps=fast",
                "tcp:/dev/ttyUSB1", "lora:/dev/ttyUSB2?region=XX", "serial:?bps=100"):  # fmt: skip
        with pytest.raises(ConfigError):
            line_settings(bad)


def test_the_links_key_of_the_coap_section() -> None:
    assert parse_coap_config({"links": ["serial:/dev/ttyUSB1?bps=100"]}).links == ("serial:/dev/ttyUSB1?bps=100",)
    assert parse_coap_config({"bind": "127.0.0.1:5683"}).links == ()
    for bad in ({"links": "serial:/dev/ttyUSB1"}, {"links": [1]}, {"links": ["udp:/x"]},
                {"links": ["serial:/dev/a?bps=100", "lora:/dev/a?dr=5"]}, {"links": []}):  # fmt: skip
        with pytest.raises(ConfigError):
            parse_coap_config(bad)


def test_a_port_of_the_device_links_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with users_gateway(tmp_path, "alice") as (users, services, _):
            expect(await users[0].request("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "sensors"}), 200)
            provision_kitchen(tmp_path / "data", "/dev/ttyLOWBAND-TEST", 100)
            config = parse_coap_config({"links": ["serial:/dev/ttyLOWBAND-TEST?bps=100"]})
            with pytest.raises(ConfigError, match="is a device link"):
                await start_link_lines(services, Gateway(services, services.components[HTTP_SERVER]), config)

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_sends_over_a_lossy_pty_line_through_the_real_runtime_are_each_stored_once(tmp_path: Path) -> None:
    """The gateway's own runtime (SecureServer behind the line) under 20 % frame loss each way, wall time at 9600 bps:
    CoAP retransmissions are answered from the deduplication table, retries keep their transaction IDs."""

    async def scenario(link: PtyLink) -> tuple[list[Operation], list[str], LinkCoapClient]:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        record, private = clients.add_client(data_dir, "laptop", "@alice:localhost")
        gateway_public = public_from_private(load_or_create_link_key(data_dir / "link.key"))
        spec = f"serial:{link.path_a}?bps=9600"
        async with users_gateway(tmp_path, "alice", components={"coap": {"links": [spec]}}) as (users, _, _):
            room_id = expect(await users[0].request("POST", "/_matrix/client/v3/createRoom", {}), 200)["room_id"]
            core = LinkCoapClient(SecureClient(private, gateway_public, record.address, epoch=0), link_params(9600),
                                  compact_mode=True, rng=random.Random(5))  # fmt: skip
            driver = PtyClient(core, link.path_b)
            try:
                login = await driver.run(core.login("alice", "secret-pw"), 60)
                assert login.code == coap.CHANGED, login.result
                ops = [await driver.run(core.send_text(room_id, f"lossy {i}", f"L{i}", attempts=8), 60)
                       for i in range(3)]  # fmt: skip
            finally:
                driver.close()
            history = expect(await users[0].request(
                "GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=f&limit=50"), 200)  # fmt: skip
            return ops, [e["content"]["body"] for e in history["chunk"] if e["type"] == "m.room.message"], core

    with PtyLink(bps=9600, frame_loss=0.2, seed=4) as link:
        ops, bodies, core = asyncio.run(asyncio.wait_for(scenario(link), 150))
        lost = link.counters()["A"].frames_lost + link.counters()["B"].frames_lost
    assert all(op.code == coap.CHANGED and not op.failed for op in ops), [(op.code, op.result) for op in ops]
    assert bodies == [f"lossy {i}" for i in range(3)]
    assert lost > 0 and core.endpoint.counters["retransmissions"] > 0  # the loss did hit the exchanges
