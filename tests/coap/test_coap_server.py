"""The plain-UDP CoAP listener (gateway/coap/server.py) with a stand-in handler: options, blockwise, peers, OBSERVE.

Clients are aiocoap's Python API and raw UDP datagrams built with lowband.codecs.coap, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Self

import aiocoap
import pytest
from aiocoap.numbers.optionnumbers import OptionNumber
from harness import free_udp_port, in_loop

from lowband.codecs import cbor, coap
from lowband.gateway.coap import blockwise
from lowband.gateway.coap.config import CoapConfig
from lowband.gateway.coap.exchange import CoapRequest, CoapResponse, Peer
from lowband.gateway.coap.mapping import has_news
from lowband.gateway.coap.server import (
    BLOCK_TTL_S,
    MAX_BLOCK_ENTRIES,
    CoapServer,
    CoapSite,
    PeerTable,
    address_of,
    identity,
    start_server,
    to_aiocoap,
)


class Recorder:
    """A stand-in handler: records (request, peer) and answers what ``answer`` says (default: echo)."""

    def __init__(self, answer: Callable[[CoapRequest, Peer], Awaitable[CoapResponse]] | None = None) -> None:
        self.seen: list[tuple[CoapRequest, Peer]] = []
        self.answer = answer

    async def __call__(self, req: CoapRequest, peer: Peer) -> CoapResponse:
        self.seen.append((req, peer))
        if req.auth is not None:
            peer.token = req.auth
        if self.answer is not None:
            return await self.answer(req, peer)
        return CoapResponse(coap.CONTENT, b"echo:" + "/".join(req.path).encode() + b":" + req.body, coap.FORMAT_TEXT,
                            max_age=7)  # fmt: skip


class FakeSync:
    """A /sync stand-in that long-polls: ``since`` is the number of events the client has seen."""

    def __init__(self, padding: int = 0) -> None:
        self.events: list[str] = []
        self.polls: list[CoapRequest] = []
        self.padding = padding
        self.answers = 0
        self.bodies: list[bytes] = []

    def add(self, text: str) -> None:
        self.events.append(text)

    async def __call__(self, req: CoapRequest, peer: Peer) -> CoapResponse:
        query = dict(q.partition("=")[::2] for q in req.query)
        if req.auth is not None:  # sticky, as the mapping does it
            peer.token = req.auth
        if req.path not in (("7",), ("_matrix", "client", "r0", "sync")):
            return CoapResponse(coap.NOT_FOUND)
        self.polls.append(req)
        since = int(query.get("since", "0") or 0)
        if "since" in query:
            deadline = asyncio.get_running_loop().time() + int(query.get("timeout", "0")) / 1000
            while len(self.events) <= since and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        self.answers += 1
        news = self.events[since:]
        document = {"next_batch": str(len(self.events)),
                    "rooms": {"join": {"!r:x": {"timeline": {"events": news}}} if news else {}},
                    "pad": "x" * self.padding + str(self.answers)}  # fmt: skip
        self.bodies.append(cbor.dumps(document))
        return CoapResponse(coap.CONTENT, self.bodies[-1], coap.FORMAT_CBOR)


class Running:
    """A server on a free port with a client context; ``async with`` stops both."""

    def __init__(self, handler: Any, max_request_bytes: int = 4096, **config: Any) -> None:
        self.handler = handler
        self.max_request_bytes = max_request_bytes
        self.port = free_udp_port()
        self.config = CoapConfig(bind=("127.0.0.1", self.port), **config)
        self.notify_tuning: type[aiocoap.Reliable] = aiocoap.Reliable
        self.server: CoapServer
        self.client: aiocoap.Context

    async def __aenter__(self) -> Self:
        self.server = await start_server(self.handler, self.config, self.max_request_bytes,
                                         notify_tuning=self.notify_tuning)  # fmt: skip
        self.client = await aiocoap.Context.create_client_context(transports=["udp6"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.shutdown()
        await self.server.stop()

    def uri(self, path: str) -> str:
        return f"coap://127.0.0.1:{self.port}{path}"

    async def request(self, method: aiocoap.Code, path: str, payload: bytes = b"", **options: Any) -> aiocoap.Message:
        message = aiocoap.Message(code=method, uri=self.uri(path), payload=payload, **options)
        return await asyncio.wait_for(self.client.request(message).response, 20)


# ------------------------------------------------------------------------------------------------ requests


@in_loop
async def test_every_request_field_reaches_the_handler_and_the_answer_comes_back() -> None:
    handler = Recorder()
    async with Running(handler) as run:
        message = aiocoap.Message(code=aiocoap.POST, uri=run.uri("/9/!room:x/m.room.message/t1?a=1&b=2"),
                                  payload=b"\xa1\x01\x02", content_format=60, accept=60)  # fmt: skip
        message.opt.add_option(OptionNumber(coap.OPT_AUTH).create_option(value=b"syt_token"))
        message.opt.add_option(OptionNumber(coap.OPT_CBOR_VERSION).create_option(value=b"\x01"))
        message.opt.add_option(OptionNumber(coap.OPT_PROFILE).create_option(value=b"\x02"))
        response = await asyncio.wait_for(run.client.request(message).response, 20)
    assert response.code == aiocoap.CONTENT
    assert response.payload == b"echo:9/!room:x/m.room.message/t1:\xa1\x01\x02"
    assert int(response.opt.content_format) == coap.FORMAT_TEXT and response.opt.max_age == 7
    ((req, peer),) = handler.seen
    assert req == CoapRequest("POST", ("9", "!room:x", "m.room.message", "t1"), ("a=1", "b=2"), b"\xa1\x01\x02",
                              content_format=60, accept=60, auth="syt_token", cbor_version=1, profile=2)  # fmt: skip
    assert peer.address.startswith("udp:127.0.0.1:") and peer.host == "127.0.0.1"
    assert peer.address == f"udp:127.0.0.1:{peer.port}"


@in_loop
async def test_the_critical_option_257_is_served_not_refused() -> None:
    # 257 is odd: critical. aiocoap does not know it; the request must still reach the handler.
    handler = Recorder()
    async with Running(handler) as run:
        message = aiocoap.Message(code=aiocoap.GET, uri=run.uri("/0"))
        message.opt.add_option(OptionNumber(coap.OPT_CBOR_VERSION).create_option(value=b"\x01"))
        response = await asyncio.wait_for(run.client.request(message).response, 20)
    assert response.code == aiocoap.CONTENT and response.payload == b"echo:0:"
    assert handler.seen[0][0].cbor_version == 1


@in_loop
async def test_the_peer_is_sticky_per_remote_address() -> None:
    handler = Recorder()
    async with Running(handler) as run:
        first = aiocoap.Message(code=aiocoap.GET, uri=run.uri("/0"))
        first.opt.add_option(OptionNumber(coap.OPT_AUTH).create_option(value=b"tok"))
        await asyncio.wait_for(run.client.request(first).response, 20)
        await run.request(aiocoap.GET, "/0")
        other = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            await asyncio.wait_for(other.request(aiocoap.Message(code=aiocoap.GET, uri=run.uri("/0"))).response, 20)
        finally:
            await other.shutdown()
        assert len(run.server.site.peers) == 2
    (_, p1), (_, p2), (_, p3) = handler.seen
    assert p1 is p2 and p2.token == "tok"  # the second request had no token: the peer kept it
    assert p3 is not p1 and p3.token is None


@in_loop
async def test_methods_beyond_the_four_and_undecodable_options_are_refused() -> None:
    handler = Recorder()
    async with Running(handler) as run:
        fetch = await run.request(aiocoap.FETCH, "/0")
        message = aiocoap.Message(code=aiocoap.GET, uri=run.uri("/0"))
        message.opt.add_option(OptionNumber(coap.OPT_AUTH).create_option(value=b"\xff\xfe"))
        bad_token = await asyncio.wait_for(run.client.request(message).response, 20)
        message = aiocoap.Message(code=aiocoap.GET, uri=run.uri("/0"))
        message.opt.add_option(OptionNumber(coap.OPT_CBOR_VERSION).create_option(value=b"\x01" * 5))
        long_uint = await asyncio.wait_for(run.client.request(message).response, 20)
    assert fetch.code == aiocoap.METHOD_NOT_ALLOWED
    assert bad_token.code == aiocoap.BAD_OPTION and long_uint.code == aiocoap.BAD_OPTION
    assert handler.seen == []


# ----------------------------------------------------------------------------------------------- blockwise


@in_loop
async def test_a_large_answer_goes_in_block2_blocks() -> None:
    body = os.urandom(5000)

    async def big(req: CoapRequest, peer: Peer) -> CoapResponse:
        return CoapResponse(coap.CONTENT, body, 42)

    handler = Recorder(big)
    async with Running(handler) as run:
        response = await run.request(aiocoap.GET, "/E/!r:x")
        # a client asking for small blocks from the start gets them
        small = aiocoap.Message(code=aiocoap.GET, uri=run.uri("/E/!r:y"), block2=(0, False, 2))
        first = await asyncio.wait_for(run.client.request(small, handle_blockwise=False).response, 20)
        assert len(run.server.site.block2) == 2
    assert response.payload == body and int(response.opt.content_format) == 42
    assert len(handler.seen) == 2  # the later blocks came from the kept answer, not from the handler again
    assert first.payload == body[:64] and first.opt.block2.more and first.opt.size2 == 5000


@in_loop
async def test_a_large_body_arrives_in_block1_blocks_and_is_handed_over_whole() -> None:
    body = os.urandom(3000)
    handler = Recorder()
    async with Running(handler, max_request_bytes=4096) as run:
        response = await run.request(aiocoap.POST, "/G", body)
        assert len(run.server.site.block1) == 0  # nothing left behind
    assert response.code == aiocoap.CONTENT and response.payload == b"echo:G:" + body
    assert handler.seen[0][0].body == body


@in_loop
async def test_the_answer_to_the_last_block_echoes_its_block1() -> None:
    handler = Recorder()
    async with Running(handler) as run:
        blocks = [b"a" * 32, b"b" * 32, b"c" * 5]
        for number, piece in enumerate(blocks):
            more = number < len(blocks) - 1
            message = aiocoap.Message(code=aiocoap.POST, uri=run.uri("/G"), payload=piece, block1=(number, more, 1))
            answer = await asyncio.wait_for(run.client.request(message, handle_blockwise=False).response, 20)
            assert tuple(answer.opt.block1) == (number, more, 1)
            assert answer.code == (aiocoap.CONTINUE if more else aiocoap.CONTENT)
    assert handler.seen[0][0].body == b"".join(blocks)


@in_loop
async def test_bodies_over_the_limit_are_refused_with_4_13() -> None:
    handler = Recorder()
    async with Running(handler, max_request_bytes=2048) as run:
        blocks = await run.request(aiocoap.POST, "/G", os.urandom(4000))
        announced = aiocoap.Message(code=aiocoap.POST, uri=run.uri("/G"), payload=b"x" * 64, block1=(0, True, 2))
        announced.opt.size1 = 100_000
        refused = await asyncio.wait_for(run.client.request(announced, handle_blockwise=False).response, 20)
        assert len(run.server.site.block1) == 0
    assert blocks.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
    assert refused.code == aiocoap.REQUEST_ENTITY_TOO_LARGE and refused.opt.size1 == 2048
    assert handler.seen == []


@in_loop
async def test_a_block_that_continues_nothing_gets_4_08() -> None:
    handler = Recorder()
    async with Running(handler) as run:
        stray = aiocoap.Message(code=aiocoap.PUT, uri=run.uri("/G"), payload=b"x" * 64, block1=(3, True, 2))
        response = await asyncio.wait_for(run.client.request(stray, handle_blockwise=False).response, 20)
        later = aiocoap.Message(code=aiocoap.GET, uri=run.uri("/E"), block2=(2, False, 2))
        unknown = await asyncio.wait_for(run.client.request(later, handle_blockwise=False).response, 20)
    assert response.code == aiocoap.REQUEST_ENTITY_INCOMPLETE
    assert unknown.code == aiocoap.REQUEST_ENTITY_INCOMPLETE
    assert handler.seen == []


def _block1(number: int, more: bool, szx: int, payload: bytes, size1: int | None = None,
            token: bytes = b"") -> aiocoap.Message:  # fmt: skip
    """A POST /G carrying one Block1 block, as aiocoap hands it to the site."""
    message = aiocoap.Message(code=aiocoap.POST, uri="coap://127.0.0.1/G", payload=payload, block1=(number, more, szx))
    message.token = token
    if size1 is not None:
        message.opt.size1 = size1
    return message


def _feed(site: CoapSite, message: aiocoap.Message, now: float, peer: str = "udp:x:1") -> tuple[int, bytes | None]:
    """(the code the site answers, the whole body once it is complete) for one request."""
    outcome = site.block1.feed(peer, identity(message), now)
    if isinstance(outcome, blockwise.Block1Done):
        return 0, outcome.body
    return int(to_aiocoap(outcome.response()).code), None


def _site(max_request_bytes: int) -> CoapSite:
    return CoapSite(Recorder(), CoapConfig(bind=None), max_request_bytes, clock=lambda: 0.0)


def test_block1_rules_on_aiocoap_requests() -> None:
    site = _site(200)
    # the token and the sticky options may differ from block to block: still one upload
    first = _block1(0, True, 2, b"a" * 64, token=b"\x01")
    first.opt.add_option(OptionNumber(coap.OPT_AUTH).create_option(value=b"secret"))
    assert _feed(site, first, 0.0) == (coap.CONTINUE, None)
    assert _feed(site, _block1(1, True, 2, b"b" * 64, token=b"\x02"), 1.0) == (coap.CONTINUE, None)
    assert _feed(site, _block1(2, False, 2, b"c" * 10), 2.0) == (0, b"a" * 64 + b"b" * 64 + b"c" * 10)
    assert len(site.block1) == 0 and site.block1.held_bytes == 0
    # overlapping (block 1 twice) and out of order
    _feed(site, _block1(0, True, 2, b"a" * 64), 0.0)
    _feed(site, _block1(1, True, 2, b"b" * 64), 0.0)
    assert _feed(site, _block1(1, True, 2, b"b" * 64), 0.0) == (coap.REQUEST_ENTITY_INCOMPLETE, None)
    assert len(site.block1) == 0  # the broken upload is dropped
    # a non-final block of the wrong size
    assert _feed(site, _block1(0, True, 2, b"a" * 10), 0.0) == (coap.BAD_REQUEST, None)
    # past the limit, by Size1 (on any block, or on a request sent whole) or by the bytes themselves
    assert _feed(site, _block1(0, True, 2, b"a" * 64, size1=201), 0.0) == (coap.REQUEST_ENTITY_TOO_LARGE, None)
    _feed(site, _block1(0, True, 2, b"a" * 64), 0.0)
    assert _feed(site, _block1(1, True, 2, b"a" * 64, size1=201), 0.0) == (coap.REQUEST_ENTITY_TOO_LARGE, None)
    whole = aiocoap.Message(code=aiocoap.POST, uri="coap://127.0.0.1/G", payload=b"x")
    whole.opt.size1 = 201
    assert _feed(site, whole, 0.0) == (coap.REQUEST_ENTITY_TOO_LARGE, None)
    for number in range(3):
        _feed(site, _block1(number, True, 2, b"a" * 64), 0.0)
    assert _feed(site, _block1(3, True, 2, b"a" * 64), 0.0) == (coap.REQUEST_ENTITY_TOO_LARGE, None)
    assert len(site.block1) == 0
    refused = site.block1.feed("udp:x:1", identity(_block1(0, True, 2, b"a" * 64, size1=500)), 0.0)
    assert to_aiocoap(refused.response()).opt.size1 == 200  # type: ignore[union-attr]
    # an upload left alone expires
    _feed(site, _block1(0, True, 2, b"a" * 64), 0.0)
    assert _feed(site, _block1(1, True, 2, b"a" * 64), BLOCK_TTL_S + 1) == (coap.REQUEST_ENTITY_INCOMPLETE, None)


def test_a_flood_of_half_finished_uploads_stays_bounded() -> None:
    site = _site(2048)
    for n in range(20_000):
        assert _feed(site, _block1(0, True, 6, b"z" * 1024), 1.0, peer=f"udp:10.0.0.1:{n}")[0] == coap.CONTINUE
    # at most 4 * max_request_bytes bytes and MAX_BLOCK_ENTRIES uploads are held, newest kept
    assert site.block1.held_bytes <= 4 * 2048 and len(site.block1) <= MAX_BLOCK_ENTRIES
    assert _feed(site, _block1(1, False, 6, b"e"), 2.0, peer="udp:10.0.0.1:19999") == (0, b"z" * 1024 + b"e")
    # one client cannot hold many uploads either (one path each, else they would be one upload)
    for n in range(20):
        message = _block1(0, True, 6, b"y" * 1024)
        message.opt.uri_path = ("G", str(n))
        _feed(site, message, 3.0, peer="udp:10.0.0.2:1")
    assert sum(1 for n in range(20) if _later(site, n)) == 4


def _later(site: CoapSite, n: int) -> bool:
    """Whether block 1 of upload /G/<n> of 10.0.0.2 continues it."""
    message = _block1(1, True, 6, b"y" * 1024)
    message.opt.uri_path = ("G", str(n))
    return _feed(site, message, 3.0, peer="udp:10.0.0.2:1")[0] == coap.CONTINUE


@in_loop
async def test_a_reserved_block_size_gets_4_02() -> None:
    handler = Recorder()
    async with Running(handler) as run:
        sock = _udp_socket()
        try:
            for option in (coap.OPT_BLOCK1, coap.OPT_BLOCK2):  # SZX 7: BERT is for reliable transports only
                sock.sendto(coap.encode(coap.Message(coap.CON, coap.POST, 7 + option, b"\x07", (
                    (coap.OPT_URI_PATH, b"G"), (option, b"\x0f")), b"x" * 1024)), ("127.0.0.1", run.port))  # fmt: skip
                answer = await _answer(sock)
                assert answer.code == coap.BAD_OPTION and answer.token == b"\x07"
        finally:
            sock.close()
    assert handler.seen == []


# --------------------------------------------------------------------------------------------------- peers


def test_peer_table_keeps_the_most_recent_and_forgets_the_silent() -> None:
    table = PeerTable(max_peers=3, idle_s=100.0)
    peers = [table.touch(f"udp:10.0.0.{n}:1", f"10.0.0.{n}", 1, float(n)) for n in range(3)]
    assert table.touch("udp:10.0.0.0:1", "10.0.0.0", 1, 5.0) is peers[0]  # heard again: now the newest
    table.touch("udp:10.0.0.9:1", "10.0.0.9", 1, 6.0)
    assert len(table) == 3 and "udp:10.0.0.1:1" not in table and "udp:10.0.0.0:1" in table
    assert table.evicted == 1
    table.touch("udp:10.0.0.8:1", "10.0.0.8", 1, 105.5)  # 10.0.0.0 (5.0) and .2 (2.0) have been silent 100 s
    assert "udp:10.0.0.0:1" not in table and "udp:10.0.0.9:1" in table and len(table) == 2


def test_address_of_reads_aiocoap_hostinfo() -> None:
    assert address_of("127.0.0.1:40000") == ("udp:127.0.0.1:40000", "127.0.0.1", 40000)
    assert address_of("[::1]:40000") == ("udp:[::1]:40000", "::1", 40000)
    assert address_of("192.0.2.1") == ("udp:192.0.2.1:5683", "192.0.2.1", 5683)


def _raw_get(path: str, mid: int, mtype: int = coap.NON, token: bytes = b"") -> bytes:
    return coap.encode(
        coap.Message(
            mtype, coap.GET, mid, token, tuple((coap.OPT_URI_PATH, s.encode()) for s in path.strip("/").split("/"))
        )
    )


async def _answer(sock: socket.socket, timeout: float = 5.0) -> coap.Message:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
    return coap.parse(data)


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    return sock


@in_loop
async def test_a_flood_of_new_peers_keeps_the_table_at_max_peers() -> None:
    handler = Recorder()
    async with Running(handler, max_peers=100) as run:
        loop = asyncio.get_running_loop()
        for batch in range(50):
            # 100 at a time, then wait for them: a burst larger than the socket buffer would be dropped by the kernel
            sockets = [_udp_socket() for _ in range(100)]
            for n, sock in enumerate(sockets):
                sock.sendto(_raw_get("/0", batch * 100 + n), ("127.0.0.1", run.port))
            deadline = loop.time() + 10
            while len(handler.seen) < (batch + 1) * 100 and loop.time() < deadline:
                await asyncio.sleep(0.01)
            for sock in sockets:
                sock.close()
            assert len(run.server.site.peers) <= 100
        addresses = {peer.address for _, peer in handler.seen}
        assert len(addresses) > 1000  # many distinct peers really came
        assert len(run.server.site.peers) == 100
        assert run.server.site.peers.evicted >= len(addresses) - 100
        # and the server still answers
        assert (await run.request(aiocoap.GET, "/0")).payload == b"echo:0:"


@in_loop
async def test_malformed_datagrams_are_dropped_and_the_server_keeps_answering() -> None:
    handler = Recorder()
    async with Running(handler) as run:
        sock = _udp_socket()
        try:
            garbage = [b"", b"\x40", b"\x40\x01", b"\x40\x01\x00", b"\x4f\x01\x00\x01", b"\x80\x01\x00\x01",
                       b"\x40\x01\x00\x01\xff", b"\x40\x01\x00\x01\xbf", b"\x40\x01\x00\x01\xdd\x00",
                       b"\x40\x01\x00\x01\xe1\xff", b"\x48\x01\x00\x01\x01"]  # fmt: skip
            rng = __import__("random").Random(7)
            garbage += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))) for _ in range(500)]
            for data in garbage:
                sock.sendto(data, ("127.0.0.1", run.port))
            await asyncio.sleep(0.5)
            sock.sendto(_raw_get("/0", 4242, coap.CON, b"\x07"), ("127.0.0.1", run.port))
            while True:
                answer = await _answer(sock)
                if answer.token == b"\x07":
                    break
            assert answer.mtype == coap.ACK and answer.code == coap.CONTENT and answer.payload == b"echo:0:"
        finally:
            sock.close()
        assert (await run.request(aiocoap.GET, "/0")).payload == b"echo:0:"


# ------------------------------------------------------------------------------------------------- observe


def test_has_news_looks_at_what_a_client_would_show() -> None:
    def answer(document: dict[str, Any]) -> CoapResponse:
        return CoapResponse(coap.CONTENT, cbor.dumps(document), coap.FORMAT_CBOR)

    assert not has_news(answer({"next_batch": "s1", "rooms": {"join": {}}, "device_one_time_keys_count": {"a": 0}}))
    assert has_news(answer({"next_batch": "s1", "rooms": {"join": {"!r": {}}}}))
    assert has_news(answer({19: "s1", 23: {24: {"!r": {}}}}))  # MSC3079 integer keys
    assert has_news(answer({"next_batch": "s1", "to_device": {"events": [{"type": "m.x"}]}}))
    assert has_news(CoapResponse(coap.CONTENT, b"\xff\xff", coap.FORMAT_CBOR))


@in_loop
async def test_observing_sync_pushes_new_events_and_nothing_while_idle() -> None:
    sync = FakeSync()
    async with Running(sync, observe_timeout_s=0.2) as run:
        request = run.client.request(aiocoap.Message(code=aiocoap.GET, uri=run.uri("/7"), observe=0))
        first = await asyncio.wait_for(request.response, 20)
        assert cbor.loads(first.payload)["next_batch"] == "0" and first.opt.observe == 0
        notifications = request.observation.__aiter__()
        # idle: the loop long-polls again and again (timeout 0.2 s) but sends nothing
        await asyncio.sleep(1.0)
        polls = len(sync.polls)
        assert polls >= 3
        assert all("timeout=200" in p.query for p in sync.polls[1:])
        sync.add("hello")
        pushed = await asyncio.wait_for(notifications.__anext__(), 10)
        document = cbor.loads(pushed.payload)
        assert document["next_batch"] == "1" and document["rooms"]["join"]["!r:x"]["timeline"]["events"] == ["hello"]
        assert pushed.opt.observe == 1
        assert sync.polls[-1].query[-2:] in (("since=1", "timeout=200"), ("since=0", "timeout=200"))
        sync.add("again")
        pushed = await asyncio.wait_for(notifications.__anext__(), 10)
        assert cbor.loads(pushed.payload)["rooms"]["join"]["!r:x"]["timeline"]["events"] == ["again"]
        assert len(run.server.site.observations) == 1
        request.observation.cancel()


@in_loop
async def test_observe_on_other_paths_is_a_plain_answer() -> None:
    handler = Recorder()
    async with Running(handler) as run:
        request = run.client.request(aiocoap.Message(code=aiocoap.GET, uri=run.uri("/0"), observe=0))
        first = await asyncio.wait_for(request.response, 20)
        assert first.opt.observe is None and first.payload == b"echo:0:"
        assert len(run.server.site.observations) == 0


@in_loop
async def test_notifications_are_confirmable_and_a_reset_ends_the_observation() -> None:
    sync = FakeSync()
    async with Running(sync, observe_timeout_s=0.2) as run:
        sock = _udp_socket()
        try:
            sock.sendto(coap.encode(coap.Message(coap.CON, coap.GET, 1, b"\x01\x02", (
                (coap.OPT_OBSERVE, b""), (coap.OPT_URI_PATH, b"7")))), ("127.0.0.1", run.port))  # fmt: skip
            first = await _answer(sock)
            assert first.mtype == coap.ACK and first.code == coap.CONTENT and first.opt(coap.OPT_OBSERVE) == b""
            with pytest.raises(TimeoutError):  # idle: three long-polls of 0.2 s go by and nothing is sent
                await _answer(sock, timeout=0.7)
            assert len(sync.polls) >= 3
            sync.add("hello")
            pushed = await _answer(sock)
            assert pushed.mtype == coap.CON and pushed.token == b"\x01\x02" and pushed.uint_opt(coap.OPT_OBSERVE) == 1
            assert run.server.site.observations
            sock.sendto(coap.encode(coap.Message(coap.RST, coap.EMPTY, pushed.mid)), ("127.0.0.1", run.port))
            deadline = asyncio.get_running_loop().time() + 10
            while run.server.site.observations and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert not run.server.site.observations
        finally:
            sock.close()


class QuickRetries(aiocoap.Reliable):
    """Notifications given up after about 0.3 s (the default is about 93 s)."""

    ACK_TIMEOUT = 0.1
    ACK_RANDOM_FACTOR = 1.0
    MAX_RETRANSMIT = 1


@in_loop
async def test_an_unacknowledged_notification_ends_the_observation() -> None:
    sync = FakeSync()
    running = Running(sync, observe_timeout_s=0.2)
    running.notify_tuning = QuickRetries
    async with running as run:
        sock = _udp_socket()
        try:
            sock.sendto(coap.encode(coap.Message(coap.CON, coap.GET, 1, b"\x05", (
                (coap.OPT_OBSERVE, b""), (coap.OPT_URI_PATH, b"7")))), ("127.0.0.1", run.port))  # fmt: skip
            await _answer(sock)
            sync.add("hello")
            pushed = await _answer(sock)
            again = await _answer(sock)  # the retransmission, never acknowledged
            assert again.mid == pushed.mid and again.mtype == coap.CON
            deadline = asyncio.get_running_loop().time() + 10
            while run.server.site.observations and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert not run.server.site.observations
        finally:
            sock.close()


def _observe_sync(sock: socket.socket, port: int, token: bytes) -> None:
    sock.sendto(coap.encode(coap.Message(coap.CON, coap.GET, int.from_bytes(token, "big") & 0xFFFF, token, (
        (coap.OPT_OBSERVE, b""), (coap.OPT_URI_PATH, b"7")))), ("127.0.0.1", port))  # fmt: skip


@in_loop
async def test_observations_are_capped_and_the_oldest_is_ended() -> None:
    sync = FakeSync()
    async with Running(sync, observe_timeout_s=0.2, max_observations=2) as run:
        sock = _udp_socket()
        try:
            _observe_sync(sock, run.port, b"\x01")
            assert (await _answer(sock)).code == coap.CONTENT
            for _ in range(2):
                request = run.client.request(aiocoap.Message(code=aiocoap.GET, uri=run.uri("/7"), observe=0))
                await asyncio.wait_for(request.response, 20)
            ended = await _answer(sock)
            assert ended.code == coap.SERVICE_UNAVAILABLE and ended.opt(coap.OPT_OBSERVE) is None
            assert ended.mtype == coap.NON and ended.token == b"\x01"
            assert len(run.server.site.observations) == 2
        finally:
            sock.close()


@in_loop
async def test_a_large_notification_is_fetched_with_block2_and_matches_what_was_pushed() -> None:
    sync = FakeSync(padding=3000)  # every answer differs (a counter in "pad"): a fresh render would not match
    async with Running(sync, observe_timeout_s=0.2) as run:
        request = run.client.request(aiocoap.Message(code=aiocoap.GET, uri=run.uri("/7?filter=1"), observe=0))
        first = await asyncio.wait_for(request.response, 20)
        assert len(first.payload) > 3000
        notifications = request.observation.__aiter__()
        sync.add("big")
        pushed = await asyncio.wait_for(notifications.__anext__(), 10)
        document = cbor.loads(pushed.payload)
        assert document["rooms"]["join"]["!r:x"]["timeline"]["events"] == ["big"]
        # the blocks after the first came from the pushed answer, not from a new one (each answer differs)
        assert pushed.payload in sync.bodies and first.payload in sync.bodies
        request.observation.cancel()


@in_loop
async def test_stopping_the_server_ends_observations_with_5_03() -> None:
    sync = FakeSync()
    port = free_udp_port()
    server = await start_server(sync, CoapConfig(bind=("127.0.0.1", port), observe_timeout_s=0.2), 4096)
    sock = _udp_socket()
    try:
        _observe_sync(sock, port, b"\x09")
        assert (await _answer(sock)).code == coap.CONTENT
        await server.stop()
        final = await _answer(sock)
        assert final.code == coap.SERVICE_UNAVAILABLE and final.token == b"\x09"
        assert not server.site.observations
    finally:
        sock.close()


@pytest.mark.parametrize("path", ["/7", "/_matrix/client/r0/sync"])
def test_both_sync_paths_are_observable(path: str) -> None:
    @in_loop
    async def check() -> None:
        sync = FakeSync()
        async with Running(sync, observe_timeout_s=0.2) as run:
            request = run.client.request(aiocoap.Message(code=aiocoap.GET, uri=run.uri(path), observe=0))
            first = await asyncio.wait_for(request.response, 20)
            assert first.opt.observe == 0 and len(run.server.site.observations) == 1
            request.observation.cancel()

    check()


@in_loop
async def test_registrations_are_keyed_by_access_token_and_coap_token() -> None:
    sync = FakeSync()
    async with Running(sync, observe_timeout_s=0.2) as run:
        one, two, three = _udp_socket(), _udp_socket(), _udp_socket()
        try:
            # no token at all: the same CoAP token from two addresses is two registrations
            _observe_sync(one, run.port, b"\x01")
            _observe_sync(two, run.port, b"\x01")
            assert (await _answer(one)).code == coap.CONTENT and (await _answer(two)).code == coap.CONTENT
            assert len(run.server.site.observations) == 2
            # the same access token and CoAP token from a third address replaces the registration of the first
            for sock in (one, three):
                sock.sendto(coap.encode(coap.Message(coap.CON, coap.GET, 77, b"\x02", (
                    (coap.OPT_OBSERVE, b""), (coap.OPT_URI_PATH, b"7"), (coap.OPT_AUTH, b"tok")))),
                    ("127.0.0.1", run.port))  # fmt: skip
                assert (await _answer(sock)).code == coap.CONTENT
            ended = await _answer(one)
            assert ended.token == b"\x02" and ended.code == coap.SERVICE_UNAVAILABLE
            assert len(run.server.site.observations) == 3
        finally:
            for sock in (one, two, three):
                sock.close()


def test_peer_refresh_keeps_a_known_peer_and_adds_nobody() -> None:
    table = PeerTable(max_peers=2, idle_s=10.0)
    peer = table.touch("udp:a:1", "a", 1, 0.0)
    table.refresh("udp:a:1", 9.0)
    table.refresh("udp:b:1", 9.0)
    assert "udp:b:1" not in table
    assert table.touch("udp:a:1", "a", 1, 15.0) is peer  # refreshed at 9.0: not silent for 10 s yet


@in_loop
async def test_registering_again_on_the_same_token_replaces_the_observation_quietly() -> None:
    sync = FakeSync()
    async with Running(sync, observe_timeout_s=0.2) as run:
        sock = _udp_socket()
        try:
            _observe_sync(sock, run.port, b"\x03")
            assert (await _answer(sock)).code == coap.CONTENT
            sock.sendto(coap.encode(coap.Message(coap.CON, coap.GET, 999, b"\x03", (
                (coap.OPT_OBSERVE, b""), (coap.OPT_URI_PATH, b"7")))), ("127.0.0.1", run.port))  # fmt: skip
            again = await _answer(sock)
            assert again.code == coap.CONTENT and again.opt(coap.OPT_OBSERVE) == b""
            with pytest.raises(TimeoutError):  # no final 5.03 that would end the new registration
                await _answer(sock, timeout=0.5)
            assert len(run.server.site.observations) == 1
            sync.add("still observed")
            pushed = await _answer(sock)
            assert pushed.token == b"\x03" and pushed.code == coap.CONTENT and pushed.uint_opt(coap.OPT_OBSERVE) == 1
        finally:
            sock.close()
