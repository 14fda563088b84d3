"""The CoAP API over Noise sessions on real UDP sockets (gateway/coap/secure_server.py).

First against a stand-in handler (blockwise both ways, observation pushes and
their end, keep-alives, a moving source port), then inside a real gateway with
``[coap] secure_bind``: login (code 1), send (code 9) and sync (code 7, observed)
all encrypted, a client with an unknown key gets nothing, and a gateway restart
makes the client shake hands again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from harness import Client, free_udp_port, gateway_in_loop, until

from lowband.codecs import coap, msc3079
from lowband.codecs.coap import Block, Message
from lowband.gateway.coap import clients
from lowband.gateway.coap.exchange import CoapRequest, CoapResponse, Peer
from lowband.gateway.coap.messaging import Endpoint, Failed, Response, TransmissionParams
from lowband.gateway.coap.secure_core import ClientEntry, SecureClient, SecureListener
from lowband.gateway.coap.secure_server import SECURE_SERVER, SecureServer
from lowband.gateway.devices.keys import generate_keypair, public_from_private

FAST = TransmissionParams(ack_timeout=0.5, max_retransmit=2, empty_ack_delay=0.2)


class NoiseCoapClient(asyncio.DatagramProtocol):
    """A CoAP client over a Noise session on UDP: SecureClient + messaging.Endpoint, every datagram recorded."""

    def __init__(self, core: SecureClient, server: tuple[str, int], params: TransmissionParams = FAST) -> None:
        self.core = core
        self.server = server
        self.endpoint = Endpoint(params, rng=random.Random(7), token_length=2)
        self.up: list[bytes] = []
        self.down: list[bytes] = []
        self.responses: dict[bytes, asyncio.Queue[Message]] = {}
        self.failed: list[bytes] = []
        self.transport: Any = None
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def open(self) -> NoiseCoapClient:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, remote_addr=self.server)
        self._timer = asyncio.create_task(self._timers())
        return self

    async def rebind(self) -> None:
        """A new socket (a new source port), the same session: what a NAT rebinding looks like to the gateway."""
        self.transport.close()
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, remote_addr=self.server)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.transport.close()

    def raw(self, frame: bytes) -> None:
        self.up.append(frame)
        self.transport.sendto(frame)

    async def handshake(self, timeout: float = 5.0) -> None:
        """A new handshake (HS1 sent again every 0.5 s until HS2 arrives)."""
        deadline = time.monotonic() + timeout
        self.raw(self.core.connect(time.monotonic()))
        while self.core.handshaking:
            assert time.monotonic() < deadline, "no HS2"
            for _ in range(25):
                await asyncio.sleep(0.02)
                if not self.core.handshaking:
                    break
            else:
                self.raw(self.core.connect(time.monotonic()))
        self.flush()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.down.append(data)
        was_handshaking = self.core.handshaking
        plaintext = self.core.receive(data)
        if self.core.needs_handshake:
            self.raw(self.core.connect(time.monotonic()))
        if was_handshaking and not self.core.handshaking:
            self.flush()  # the session is back: anything waiting goes now
        if plaintext is None:
            return
        for event in self.endpoint.receive(plaintext, time.monotonic()):
            if isinstance(event, Response):
                self.responses.setdefault(event.msg.token, asyncio.Queue()).put_nowait(event.msg)
        self.flush()

    def flush(self) -> None:
        for datagram in self.endpoint.poll(time.monotonic()):
            if self.core.established:
                self.raw(self.core.seal(datagram))
        for event in self.endpoint.take_events():
            if isinstance(event, Failed):
                self.failed.append(event.token)
        self._wake.set()

    async def _timers(self) -> None:
        while True:
            self._wake.clear()
            due = self.endpoint.next_deadline()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                self.flush()

    def send(self, msg: Message) -> bytes:
        sent = self.endpoint.send(msg, time.monotonic())
        self.responses.setdefault(sent.token, asyncio.Queue())
        self.flush()
        return sent.token

    async def next_response(self, token: bytes, timeout: float = 10.0) -> Message:
        return await asyncio.wait_for(self.responses[token].get(), timeout)

    async def request(self, msg: Message, timeout: float = 10.0) -> Message:
        return await self.next_response(self.send(msg), timeout)

    async def silence(self, seconds: float) -> list[bytes]:
        """What arrives in the next ``seconds`` (to show that nothing does)."""
        before = len(self.down)
        await asyncio.sleep(seconds)
        return self.down[before:]


# ------------------------------------------------------------ against a stand-in handler


class StandIn:
    """A handler in place of mapping.Gateway: /big answers 3000 bytes, /echo the body's length, /7 a sync."""

    def __init__(self) -> None:
        self.position = 0
        self.changed = asyncio.Event()
        self.seen: list[tuple[CoapRequest, str, str | None]] = []

    def publish(self) -> None:
        self.position += 1
        self.changed.set()
        self.changed = asyncio.Event()

    async def handle(self, req: CoapRequest, peer: Peer) -> CoapResponse:
        if req.auth is not None:
            peer.token = req.auth  # what mapping.Gateway does with option 256: sticky per connection
        self.seen.append((req, peer.address, peer.token))
        if req.path == ("big",):
            return CoapResponse(coap.CONTENT, bytes(i % 251 for i in range(3000)), coap.FORMAT_TEXT)
        if req.path == ("echo",):
            return CoapResponse(coap.CHANGED, str(len(req.body)).encode(), coap.FORMAT_TEXT)
        if req.path == ("7",):
            query = dict(q.split("=", 1) for q in req.query)
            since = int(query.get("since", "0"))
            if self.position <= since and "timeout" in query:
                waiter = self.changed
                try:
                    await asyncio.wait_for(waiter.wait(), int(query["timeout"]) / 1000)
                except TimeoutError:
                    pass
            doc: dict[str, Any] = {"next_batch": str(self.position)}
            if self.position > since:
                doc["rooms"] = {
                    "join": {"!r:x": {"timeline": {"events": [{"n": i} for i in range(since, self.position)]}}}
                }
            return CoapResponse(coap.CONTENT, msc3079.encode(doc), coap.FORMAT_CBOR)
        return CoapResponse(coap.NOT_FOUND)


CLIENT_KEY = bytes(range(1, 33))
GATEWAY_KEY = bytes(range(101, 133))


async def stand_in_server(handler: StandIn, *, mtu: int = 1024, observe_timeout_s: float = 0.5,
                          params: TransmissionParams = FAST) -> SecureServer:  # fmt: skip
    listener = SecureListener(GATEWAY_KEY)
    listener.set_clients([ClientEntry(5, "laptop", public_from_private(CLIENT_KEY), "@alice:x")])
    server = SecureServer(handler, listener, data_dir=None, max_request_bytes=8192,
                          observe_timeout_s=observe_timeout_s, max_observations=8, mtu=mtu, params=params)  # fmt: skip
    await server.start("127.0.0.1", 0)
    return server


async def stand_in_client(server: SecureServer) -> NoiseCoapClient:
    client = NoiseCoapClient(SecureClient(CLIENT_KEY, public_from_private(GATEWAY_KEY), 5), ("127.0.0.1", server.port))
    await client.open()
    await client.handshake()
    return client


def run(scenario: Any, timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def test_blockwise_both_ways_below_the_mtu() -> None:
    async def scenario() -> None:
        handler = StandIn()
        server = await stand_in_server(handler, mtu=300)  # blocks of 128 bytes (with room for CoAP's header)
        client = await stand_in_client(server)
        try:
            # the first block carries the sticky access token, the later ones do not: still one transfer
            first = await client.request(Message.request(coap.GET, ["big"]).with_option(coap.OPT_AUTH, "tok"))
            assert first.code == coap.CONTENT and first.block2 == Block(0, True, 3) and len(first.payload) == 128
            assert first.uint_opt(coap.OPT_SIZE2) == 3000
            body, number = first.payload, 1
            while True:
                more = await client.request(
                    Message.request(coap.GET, ["big"]).with_option(coap.OPT_BLOCK2, Block(number, False, 3).encode())
                )
                assert more.opt(coap.OPT_ETAG) == first.opt(coap.OPT_ETAG)
                body += more.payload
                block = more.block2
                assert block is not None
                if not block.more:
                    break
                number += 1
            assert body == bytes(i % 251 for i in range(3000))
            # an upload of 1000 bytes in blocks of 256
            payload = bytes(1000)
            for number in range(4):
                piece = payload[number * 256 : (number + 1) * 256]
                last = number == 3
                upload = Message.request(coap.POST, ["echo"], payload=piece)
                if number == 0:
                    upload = upload.with_option(coap.OPT_AUTH, "tok")
                answer = await client.request(upload.with_option(coap.OPT_BLOCK1, Block(number, not last, 4).encode()))
                if not last:
                    assert answer.code == coap.CONTINUE and answer.block1 == Block(number, True, 4)
            assert answer.code == coap.CHANGED and answer.payload == b"1000" and answer.block1 == Block(3, False, 4)
            # every datagram on the wire is a link DATA frame no larger than the MTU allows
            assert all(len(frame) <= 300 + 11 for frame in client.up + client.down)
            assert handler.seen[0][1] == "noise:laptop"
        finally:
            client.close()
            await server.stop()

    run(scenario)


def test_observation_pushes_news_as_con_and_ends_on_reset() -> None:
    async def scenario() -> None:
        handler = StandIn()
        server = await stand_in_server(handler)
        client = await stand_in_client(server)
        try:
            token = client.send(Message.request(coap.GET, ["7"]).with_option(coap.OPT_OBSERVE, 0))
            first = await client.next_response(token)
            assert first.code == coap.CONTENT and first.observe == 0
            assert msc3079.decode(first.payload)["next_batch"] == "0"
            assert await client.silence(1.2) == []  # idle: long-polls renew (0.5 s) and nothing is sent
            handler.publish()
            note = await client.next_response(token)
            assert note.mtype == coap.CON and note.observe == 1
            doc = msc3079.decode(note.payload)
            assert doc["next_batch"] == "1" and doc["rooms"]["join"]["!r:x"]["timeline"]["events"] == [{"n": 0}]
            handler.publish()
            handler.publish()
            await asyncio.sleep(0.05)
            handler.publish()
            seen: list[Any] = []
            while len(seen) < 3:  # each push waits for the ACK of the one before: no event is skipped
                note = await client.next_response(token)
                seen += msc3079.decode(note.payload)["rooms"]["join"]["!r:x"]["timeline"]["events"]
            assert seen == [{"n": 1}, {"n": 2}, {"n": 3}]
            assert server.observations() == 1
            client.endpoint.cancel(token)  # the client loses interest: the next push is answered with RST
            handler.publish()
            await until(lambda: server.observations() == 0, 5)
            assert server.counters["observations_ended"] == 1
        finally:
            client.close()
            await server.stop()

    run(scenario)


def test_keepalive_port_change_and_refusals(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lowband.coap.secure")

    async def scenario() -> None:
        handler = StandIn()
        server = await stand_in_server(handler)
        client = await stand_in_client(server)
        stranger = NoiseCoapClient(SecureClient(generate_keypair()[0], public_from_private(GATEWAY_KEY), 5),
                                   ("127.0.0.1", server.port))  # fmt: skip
        await stranger.open()
        try:
            keepalive = client.core.seal(b"")
            assert len(keepalive) == 11
            client.raw(keepalive)
            assert await client.silence(0.5) == []
            assert (await client.request(Message.request(coap.POST, ["echo"], payload=b"abc"))).payload == b"3"
            await client.rebind()  # a new source port, the same session
            assert (await client.request(Message.request(coap.POST, ["echo"], payload=b"abcd"))).payload == b"4"
            # a new handshake is a new connection: the sticky token is gone, the message layer is not
            await client.request(Message.request(coap.POST, ["echo"]).with_option(coap.OPT_AUTH, "tok"))
            await client.request(Message.request(coap.POST, ["echo"]))
            assert [seen[2] for seen in handler.seen[-2:]] == ["tok", "tok"]
            await client.handshake()
            await client.request(Message.request(coap.POST, ["echo"]))
            assert handler.seen[-1][2] is None
            stranger.raw(stranger.core.connect())  # a key the gateway does not know: nothing comes back
            assert await stranger.silence(0.5) == []
            assert server.listener.refused.get("bad_handshake") == 1
            # a flood of junk and of forged handshakes for the client's address: refused, counted, bounded
            rng = random.Random(3)
            for i in range(2000):
                junk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120)))
                stranger.transport.sendto(junk if i % 100 else b"\x05\x05" + bytes(48))
                if i % 10 == 0:
                    await asyncio.sleep(0.001)  # the loopback socket buffer drops what comes faster than it is read
            await asyncio.sleep(0.3)
            assert (await client.request(Message.request(coap.POST, ["echo"], payload=b"ok"))).payload == b"2"
            assert sum(server.listener.refused.values()) >= 1900
            assert len(server._conns) == 1 and server.observations() == 0
            assert await stranger.silence(0.1) == []
            refusal_lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
            assert 1 <= len(refusal_lines) <= len(server.listener.refused)  # one per kind, not one per datagram
        finally:
            stranger.close()
            client.close()
            await server.stop()

    run(scenario)


# ------------------------------------------------------------ inside a real gateway


def _cbor_login(user: str) -> bytes:
    return msc3079.encode({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                           "password": "secret-pw"})  # fmt: skip


def test_login_send_and_sync_encrypted_in_a_real_gateway(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    record, private = clients.add_client(data_dir, "laptop", "@alice:localhost")
    key_doc = clients.key_file(record, private, data_dir)
    udp_port = free_udp_port()
    coap_section = {"coap": {"secure_bind": f"127.0.0.1:{udp_port}", "observe_timeout_s": 2}}

    async def scenario() -> None:
        found: list[Any] = []
        async with gateway_in_loop(tmp_path, on_ready=found.append, components=coap_section) as url:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                alice_http = Client(session, url)
                await alice_http.register("alice")
                status, room = await alice_http.request("POST", "/_matrix/client/v3/createRoom", {})
                assert status == 200
                room_id = room["room_id"]
                server = found[0].components[SECURE_SERVER]
                core = SecureClient(bytes.fromhex(key_doc["client_private"]), bytes.fromhex(key_doc["gateway_public"]),
                                    key_doc["address"])  # fmt: skip
                client = await NoiseCoapClient(core, ("127.0.0.1", udp_port)).open()
                try:
                    await client.handshake()
                    assert [len(f) for f in client.up[:1] + client.down[:1]] == [50, 50]
                    login = await client.request(Message.request(coap.POST, ["1"], payload=_cbor_login("alice")).with_option(
                        coap.OPT_CONTENT_FORMAT, coap.FORMAT_CBOR).with_option(coap.OPT_CBOR_VERSION, 1))  # fmt: skip
                    assert login.code == coap.CHANGED, login
                    token = msc3079.decode(login.payload)["access_token"]
                    sync_token = client.send(Message.request(coap.GET, ["7"], query=["timeout=0"]).with_option(
                        coap.OPT_OBSERVE, 0).with_option(coap.OPT_AUTH, token))  # fmt: skip
                    first = await client.next_response(sync_token)
                    assert first.code == coap.CONTENT and first.observe == 0
                    up_before, down_before = len(client.up), len(client.down)
                    body = msc3079.encode({"msgtype": "m.text", "body": "temp 21.5 C"})
                    send = await client.request(Message.request(coap.PUT, ["9", room_id, "m.room.message", "t1"],
                                                                payload=body).with_option(coap.OPT_CONTENT_FORMAT, coap.FORMAT_CBOR))  # fmt: skip
                    assert send.code == coap.CHANGED, send
                    event_id = msc3079.decode(send.payload)["event_id"]
                    send_bytes = (client.up[up_before:], client.down[down_before:])
                    note = await client.next_response(sync_token, 15)
                    assert note.mtype == coap.CON
                    timeline = msc3079.decode(note.payload)["rooms"]["join"][room_id]["timeline"]["events"]
                    assert event_id in [e["event_id"] for e in timeline]
                    # a message typed elsewhere (over HTTP) reaches the observer too
                    await alice_http.request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/h1",
                                             {"msgtype": "m.text", "body": "from http"})  # fmt: skip
                    bodies: list[str] = []
                    while "from http" not in bodies:
                        note = await client.next_response(sync_token, 15)
                        events = msc3079.decode(note.payload)["rooms"]["join"][room_id]["timeline"]["events"]
                        bodies += [e["content"].get("body") for e in events]
                    # nothing readable on the air
                    for frame in client.up + client.down:
                        assert b"temp 21.5" not in frame and b"from http" not in frame and token.encode() not in frame
                    report = {"handshake": [f.hex() for f in client.up[:1] + client.down[:1]],
                              "send_up": [f.hex() for f in send_bytes[0]], "send_down": [f.hex() for f in send_bytes[1]],
                              "ids": [room_id, event_id]}  # fmt: skip
                    (tmp_path / "bytes.json").write_text(json.dumps(report))
                    print(
                        "secure CoAP bytes:",
                        json.dumps({k: [len(x) // 2 for x in v] for k, v in report.items()}),
                        room_id,
                        event_id,
                    )
                    assert server.listener.has_session(key_doc["address"])
                    # the key is alice's: another user's access token gets 4.03, and alice's stays sticky
                    bob = Client(session, url)
                    await bob.register("bob")
                    assert bob.token is not None
                    as_bob = Message.request(coap.GET, ["I"]).with_option(coap.OPT_AUTH, bob.token)
                    assert (await client.request(as_bob)).code == coap.FORBIDDEN
                    assert (await client.request(Message.request(coap.GET, ["I"]))).code == coap.CONTENT
                    assert server.counters["user_mismatch"] == 1
                finally:
                    client.close()

    run(scenario, 90)


def test_unknown_key_gets_nothing_and_a_restart_brings_a_new_handshake(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    record, private = clients.add_client(data_dir, "laptop", "@alice:localhost")
    key_doc = clients.key_file(record, private, data_dir)
    udp_port = free_udp_port()
    coap_section = {"coap": {"secure_bind": f"127.0.0.1:{udp_port}"}}
    gateway_public = bytes.fromhex(key_doc["gateway_public"])

    async def scenario() -> None:
        core = SecureClient(bytes.fromhex(key_doc["client_private"]), gateway_public, key_doc["address"])
        async with gateway_in_loop(tmp_path, components=coap_section):
            stranger = await NoiseCoapClient(
                SecureClient(generate_keypair()[0], gateway_public, 1), ("127.0.0.1", udp_port)
            ).open()
            nobody = await NoiseCoapClient(
                SecureClient(generate_keypair()[0], gateway_public, 77), ("127.0.0.1", udp_port)
            ).open()
            client = await NoiseCoapClient(core, ("127.0.0.1", udp_port)).open()
            try:
                stranger.raw(stranger.core.connect())
                nobody.raw(nobody.core.connect())
                await client.handshake()
                versions = await client.request(Message.request(coap.GET, ["0"]))
                assert versions.code == coap.CONTENT
                assert await stranger.silence(0.3) == [] and await nobody.silence(0.01) == []
            finally:
                stranger.close()
                nobody.close()
                client.close()
        epoch_before = core.epoch
        async with gateway_in_loop(tmp_path, components=coap_section):  # the same data dir: a restart
            client = await NoiseCoapClient(core, ("127.0.0.1", udp_port)).open()
            try:
                # the old session is gone: the request brings NOSESSION, the client shakes hands, its CON retransmission gets through
                versions = await client.request(Message.request(coap.GET, ["0"]), timeout=15)
                assert versions.code == coap.CONTENT
                assert core.epoch == ((epoch_before or 0) + 1) % 8
                assert bytes((0x60 | (epoch_before or 0), key_doc["address"])) in client.down
            finally:
                client.close()

    run(scenario, 90)


def test_observed_sync_in_compact_mode_pushes_each_message_once(tmp_path: Path) -> None:
    """With the client library (gateway/coap/client.py): compact mode's bare ``~n`` since must not outlive the
    registration, or every push would repeat the first batch."""
    from lowband.gateway.coap.client import CoapClient

    data_dir = tmp_path / "data"
    record, private = clients.add_client(data_dir, "phone", "@alice:localhost")
    clients.write_key_file(tmp_path / "phone.json", clients.key_file(record, private, data_dir))
    udp_port = free_udp_port()
    coap_section = {"coap": {"secure_bind": f"127.0.0.1:{udp_port}", "observe_timeout_s": 2}}

    async def scenario() -> None:
        async with gateway_in_loop(tmp_path, components=coap_section) as url:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                alice = Client(session, url)
                await alice.register("alice")
                room_id = (await alice.request("POST", "/_matrix/client/v3/createRoom", {}))[1]["room_id"]
                client = await CoapClient.connect(f"coap://127.0.0.1:{udp_port}", key_file=tmp_path / "phone.json",
                                                  compact=True, timeout=10)  # fmt: skip
                try:
                    await client.login("alice", "secret-pw")
                    _, first = await client.sync(None, 0)
                    notes = client.observe_sync(first["next_batch"])
                    await notes.__anext__()
                    before = (client.bytes_out, client.bytes_in)
                    await asyncio.sleep(2.5)  # a long-poll renewal: nothing on the air
                    assert (client.bytes_out, client.bytes_in) == before
                    seen: list[str] = []
                    for text in ("one", "two", "three"):
                        await alice.request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{text}",
                                            {"msgtype": "m.text", "body": text})  # fmt: skip
                        note = await asyncio.wait_for(notes.__anext__(), 10)
                        seen += [e["content"]["body"] for e in note["rooms"]["join"][room_id]["timeline"]["events"]]
                    assert seen == ["one", "two", "three"]
                    await notes.aclose()
                finally:
                    await client.close()

    run(scenario, 90)


def test_an_unacknowledged_notification_ends_the_observation() -> None:
    async def scenario() -> None:
        handler = StandIn()
        server = await stand_in_server(handler, params=TransmissionParams(ack_timeout=0.2, max_retransmit=1))
        client = await stand_in_client(server)
        try:
            token = client.send(Message.request(coap.GET, ["7"]).with_option(coap.OPT_OBSERVE, 0))
            await client.next_response(token)
            assert server.observations() == 1
            client.transport.close()  # the client goes away without a word
            handler.publish()
            await until(lambda: server.observations() == 0, 5)
            assert server.counters["observations_ended"] == 1 and server.counters["notifications"] == 1
        finally:
            client.close()
            await server.stop()

    run(scenario)


def test_a_simulation_drives_the_timers_on_its_own_clock() -> None:
    """attach(timers=False) + an injected clock: nothing happens until the caller runs the timers at the
    time it chooses; settle() returns once the API answered. A slow answer gets an empty ACK when the
    simulated clock passes EMPTY_ACK_DELAY, then comes as CON and is retransmitted by run_timers alone."""

    class Gated(StandIn):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def handle(self, req: CoapRequest, peer: Peer) -> CoapResponse:
            if req.path == ("slow",):
                await self.gate.wait()
            return await super().handle(req, peer)

    async def scenario() -> None:
        now = [1000.0]
        handler = Gated()
        listener = SecureListener(GATEWAY_KEY)
        listener.set_clients([ClientEntry(5, "laptop", public_from_private(CLIENT_KEY), "@alice:x")])
        served: list[tuple[int, int]] = []
        server = SecureServer(handler, listener, data_dir=None, max_request_bytes=8192, observe_timeout_s=1.0,
                              max_observations=8, params=FAST, clock=lambda: now[0], rng=random.Random(3),
                              on_request=lambda address, msg: served.append((address, msg.mid)))  # fmt: skip
        line = mock.Mock(spec=asyncio.DatagramTransport)  # the simulation's line: keeps what is sent
        await server.attach(line, "sim", timers=False)
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("coap-secure-timers")]
        client = SecureClient(CLIENT_KEY, public_from_private(GATEWAY_KEY), 5)
        server.datagram_received(client.connect(now[0]), ("line", 5))
        assert client.receive(line.sendto.call_args.args[0]) is None and client.established
        line.sendto.reset_mock()

        def down() -> list[Message]:
            frames = [call.args[0] for call in line.sendto.call_args_list]
            line.sendto.reset_mock()
            return [coap.parse(p) for f in frames if (p := client.receive(f)) is not None]

        def up(path: str, mid: int) -> Message:
            sent = Message(
                coap.CON, coap.GET, mid=mid, token=bytes([mid]), options=((coap.OPT_URI_PATH, path.encode()),)
            )
            server.datagram_received(client.seal(coap.encode(sent)), ("line", 5))
            return sent

        # A quick answer: piggybacked, at the time the request arrived.
        sent = up("echo", 1)
        await server.settle()
        (answer,) = down()
        assert (answer.mtype, answer.mid, answer.code) == (coap.ACK, sent.mid, coap.CHANGED)
        assert served == [(5, sent.mid)]
        # A slow one: nothing goes before the caller runs the timers, and nothing is due before EMPTY_ACK_DELAY.
        sent = up("slow", 2)
        await asyncio.sleep(0.05)
        assert down() == []
        due = server.next_deadline()
        assert due is not None and due == pytest.approx(now[0] + FAST.empty_ack_delay)
        server.run_timers(due - 0.01)
        assert down() == []
        now[0] = due
        server.run_timers(now[0])
        (empty,) = down()
        assert (empty.mtype, empty.mid, empty.code) == (coap.ACK, sent.mid, coap.EMPTY)
        handler.gate.set()
        await server.settle()
        (separate,) = down()
        assert separate.mtype == coap.CON and separate.token == sent.token and separate.code == coap.NOT_FOUND
        # Unacknowledged: run_timers at the deadline sends it again (same message ID), and only then.
        due = server.next_deadline()
        assert due is not None and now[0] < due <= now[0] + FAST.ack_timeout * FAST.ack_random_factor + 1e-9
        now[0] = due
        server.run_timers(now[0])
        (again,) = down()
        assert (again.mtype, again.mid, again.token) == (coap.CON, separate.mid, separate.token)
        await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))
