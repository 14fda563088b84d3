"""gateway/coap/blockwise.py: Block1 reassembly and its bounds, Block2 slicing and caching, the client
helpers against our server side, over the message layer, and against aiocoap (both directions)."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import aiocoap
import aiocoap.resource
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.codecs import coap
from lowband.codecs.coap import (
    ACK,
    CHANGED,
    CON,
    CONTENT,
    CONTINUE,
    GET,
    POST,
    PUT,
    Block,
    Message,
    encode,
    parse,
)
from lowband.gateway.coap.blockwise import (
    Block1Assembler,
    Block1Continue,
    Block1Done,
    Block1Refused,
    Block1Sender,
    Block2Cache,
    Block2Fetcher,
    BlockwiseError,
    request_key,
    response_block,
)
from lowband.gateway.coap.messaging import Endpoint, Request, Response

BODY = bytes(random.Random(7).randbytes(5000))


def block1_request(num: int, more: bool, szx: int, payload: bytes, path: str = "up", **extra) -> Message:
    msg = Message.request(POST, [path], payload=payload).with_option(coap.OPT_BLOCK1, Block(num, more, szx).encode())
    for number, value in extra.items():
        msg = msg.with_option(int(number.lstrip("o")), value)
    return msg


def chunks(body: bytes, szx: int) -> list[tuple[int, bool, bytes]]:
    size = 16 << szx
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return [(n, n < len(pieces) - 1, piece) for n, piece in enumerate(pieces)]


# ------------------------------------------------------------------ request_key


def test_request_key_ignores_block_options_and_tokens():
    a = Message.request(POST, ["x"], payload=b"1").with_option(coap.OPT_BLOCK1, b"\x0e")
    b = Message(CON, POST, 9, b"tok", Message.request(POST, ["x"]).options).with_option(coap.OPT_BLOCK1, b"\x1e")
    assert request_key(a) == request_key(b.with_option(coap.OPT_SIZE1, 5000))
    assert request_key(a) != request_key(Message.request(POST, ["y"]))
    assert request_key(a) != request_key(a.with_option(coap.OPT_AUTH, "token"))
    assert request_key(a) != request_key(Message.request(PUT, ["x"]))


# ------------------------------------------------------------------ Block1Assembler


def test_block1_assembles_in_order():
    assembler = Block1Assembler()
    outcomes = [assembler.feed("p", block1_request(n, m, 6, piece), 0.0) for n, m, piece in chunks(BODY, 6)]
    assert outcomes[:-1] == [Block1Continue(Block(n, True, 6)) for n in range(4)]
    assert outcomes[-1] == Block1Done(BODY, Block(4, False, 6))
    assert len(assembler) == 0
    continue_msg = outcomes[0].response()
    assert continue_msg.code == CONTINUE and continue_msg.block1 == Block(0, True, 6)


def test_block1_follows_a_smaller_block_size_mid_transfer():
    # RFC 7959 Figure 6: the server's 2.31 asks for 128-byte blocks after a 1024-byte block 0.
    assembler = Block1Assembler()
    assert isinstance(assembler.feed("p", block1_request(0, True, 6, BODY[:1024]), 0.0), Block1Continue)
    offset, num = 1024, 8
    while offset < len(BODY):
        piece = BODY[offset : offset + 128]
        outcome = assembler.feed("p", block1_request(num, offset + 128 < len(BODY), 3, piece), 0.0)
        offset, num = offset + 128, num + 1
    assert outcome == Block1Done(BODY, Block(num - 1, False, 3))


@pytest.mark.parametrize(
    "blocks, why",
    [
        ([(0, True, 64), (2, True, 64)], "a block skipped"),
        ([(0, True, 64), (1, True, 64), (1, True, 64)], "a block repeated (overlap)"),
        ([(1, True, 64)], "no block 0"),
        ([(0, True, 64), (1, True, 64), (0, False, 10), (1, False, 10)], "a restart leaves no old state"),
    ],
)
def test_block1_out_of_order_or_overlapping_gets_4_08(blocks, why):
    assembler = Block1Assembler()
    outcomes = [assembler.feed("p", block1_request(n, m, 2, b"x" * size), 0.0) for n, m, size in blocks]
    assert isinstance(outcomes[-1], Block1Refused) and outcomes[-1].code == coap.REQUEST_ENTITY_INCOMPLETE, why
    assert len(assembler) == 0


def test_block1_size_cap_gives_4_13_with_size1():
    assembler = Block1Assembler(max_body=2000)
    outcomes = [assembler.feed("p", block1_request(n, m, 6, piece), 0.0) for n, m, piece in chunks(BODY, 6)[:2]]
    assert outcomes[0] == Block1Continue(Block(0, True, 6))
    refused = outcomes[1]
    assert isinstance(refused, Block1Refused) and refused.code == coap.REQUEST_ENTITY_TOO_LARGE
    assert refused.size1 == 2000 and refused.response().uint_opt(coap.OPT_SIZE1) == 2000
    assert len(assembler) == 0
    announced = block1_request(0, True, 6, BODY[:1024], o60=5000)  # Size1 says 5000 up front
    assert assembler.feed("p", announced, 0.0) == Block1Refused(
        coap.REQUEST_ENTITY_TOO_LARGE, "body over 2000 bytes", 2000
    )
    whole = Message.request(POST, ["up"], payload=b"x" * 2001)
    assert assembler.feed("p", whole, 0.0).code == coap.REQUEST_ENTITY_TOO_LARGE
    assert assembler.feed("p", Message.request(POST, ["up"], payload=b"small"), 0.0) == Block1Done(b"small", None)


def test_block1_short_middle_block_and_bad_options_are_refused():
    assembler = Block1Assembler()
    assert assembler.feed("p", block1_request(0, True, 6, b"x" * 1000), 0.0).code == coap.BAD_REQUEST
    assert assembler.feed("p", block1_request(0, False, 0, b"x" * 17), 0.0).code == coap.BAD_REQUEST
    bad = Message.request(POST, ["up"], payload=b"x").with_option(coap.OPT_BLOCK1, b"\x07")  # SZX 7
    assert assembler.feed("p", bad, 0.0).code == coap.BAD_OPTION


def test_block1_bounds_per_peer_and_overall():
    assembler = Block1Assembler(per_peer=2, max_assemblies=3)
    for path in ("a", "b", "c"):
        assembler.feed("peer1", block1_request(0, True, 0, b"x" * 16, path), 0.0)
    assert len(assembler) == 2  # "a", the oldest of peer1, was forgotten
    assert (
        assembler.feed("peer1", block1_request(1, True, 0, b"x" * 16, "a"), 0.0).code == coap.REQUEST_ENTITY_INCOMPLETE
    )
    assert assembler.feed("peer1", block1_request(1, True, 0, b"x" * 16, "c"), 0.0) == Block1Continue(Block(1, True, 0))
    for peer in ("peer2", "peer3"):
        assembler.feed(peer, block1_request(0, True, 0, b"x" * 16), 0.0)
    assert len(assembler) == 3
    for n in range(1000):  # a flood of new transfers from many peers stays within the bound
        assembler.feed(f"flood{n}", block1_request(0, True, 0, b"x" * 16), 0.0)
        assert len(assembler) <= 3


def test_block1_idle_assembly_expires():
    assembler = Block1Assembler(lifetime=10.0)
    assembler.feed("p", block1_request(0, True, 0, b"x" * 16), 0.0)
    assert isinstance(assembler.feed("p", block1_request(1, True, 0, b"x" * 16), 9.0), Block1Continue)
    assert assembler.feed("p", block1_request(2, True, 0, b"x" * 16), 19.5).code == coap.REQUEST_ENTITY_INCOMPLETE


def test_block1_bytes_of_all_assemblies_are_bounded():
    assembler = Block1Assembler(max_body=4096, per_peer=8, max_assemblies=100, max_bytes=3000)
    for n in range(3):
        assert assembler.feed("p", block1_request(0, True, 6, b"x" * 1024, f"u{n}"), float(n)) == Block1Continue(
            Block(0, True, 6)
        )
    # 3072 bytes held > 3000: the least recently fed ("u0") went, the newest stays
    assert len(assembler) == 2 and assembler.held_bytes == 2048
    assert (
        assembler.feed("p", block1_request(1, True, 6, b"x" * 1024, "u0"), 3.0).code == coap.REQUEST_ENTITY_INCOMPLETE
    )
    # feeding "u1" makes "u2" the least recently fed
    assert isinstance(assembler.feed("p", block1_request(1, True, 6, b"x" * 1024, "u1"), 4.0), Block1Continue)
    assert len(assembler) == 1 and assembler.held_bytes == 2048
    done = assembler.feed("p", block1_request(2, False, 6, b"end", "u1"), 5.0)
    assert done == Block1Done(b"x" * 2048 + b"end", Block(2, False, 6)) and assembler.held_bytes == 0
    # one body never grows past what all may hold together: 4.13 rather than dropping itself
    for num in range(2):
        assembler.feed("p", block1_request(num, True, 6, b"y" * 1024), 6.0)
    assert assembler.feed("p", block1_request(2, True, 6, b"y" * 1024), 6.0).code == coap.REQUEST_ENTITY_TOO_LARGE
    assert len(assembler) == 0 and assembler.held_bytes == 0


def test_block1_size1_is_checked_on_every_block_and_on_whole_requests():
    assembler = Block1Assembler(max_body=100)
    assert isinstance(assembler.feed("p", block1_request(0, True, 0, b"x" * 16), 0.0), Block1Continue)
    later = block1_request(1, True, 0, b"x" * 16, o60=101)
    assert assembler.feed("p", later, 0.0) == Block1Refused(coap.REQUEST_ENTITY_TOO_LARGE, "body over 100 bytes", 100)
    assert len(assembler) == 0  # the upload is dropped with it
    whole = Message.request(POST, ["up"], payload=b"x")
    assert assembler.feed("p", whole.with_option(coap.OPT_SIZE1, 101), 0.0).code == coap.REQUEST_ENTITY_TOO_LARGE
    assert assembler.feed("p", whole.with_option(coap.OPT_SIZE1, 100), 0.0) == Block1Done(b"x", None)


# ------------------------------------------------------------------ Block2


def test_response_block_slices_with_block2_and_size2():
    response = Message(ACK, CONTENT, options=((coap.OPT_CONTENT_FORMAT, b"\x3c"),), payload=BODY)
    first = response_block(response, 0, 6)
    assert first is not None and first.payload == BODY[:1024]
    assert first.block2 == Block(0, True, 6) and first.uint_opt(coap.OPT_SIZE2) == 5000
    assert first.uint_opt(coap.OPT_CONTENT_FORMAT) == 60
    last = response_block(response, 4, 6)
    assert last is not None and last.payload == BODY[4096:] and last.block2 == Block(4, False, 6)
    assert last.opt(coap.OPT_SIZE2) is None
    assert response_block(response, 5, 6) is None
    small = Message(ACK, CONTENT, payload=b"tiny")
    assert response_block(small, 0, 6) is small
    assert response_block(small, 1, 6) is None


def test_block2_cache_serves_later_blocks_and_is_bounded():
    cache = Block2Cache(lifetime=5.0, max_entries=2, max_bytes=12_000)
    request = Message.request(GET, ["big"])
    first = cache.first("p", request, Message(ACK, CONTENT, payload=BODY), 5, 0.0)
    assert first.payload == BODY[:512] and first.block2 == Block(0, True, 5)
    again = Message(CON, GET, 99, b"other", request.options).with_option(coap.OPT_BLOCK2, Block(3, False, 5).encode())
    third = cache.block("p", again, 3, 5, 1.0)
    assert third is not None and third.payload == BODY[1536:2048]
    assert cache.block("q", again, 3, 5, 1.0) is None  # another peer
    assert cache.block("p", again, 3, 5, 5.5) is None  # expired
    for path in ("a", "b", "c"):
        cache.first("p", Message.request(GET, [path]), Message(ACK, CONTENT, payload=BODY), 5, 6.0)
    assert len(cache) == 2
    cache.first("p", Message.request(GET, ["huge"]), Message(ACK, CONTENT, payload=b"x" * 13_000), 5, 6.0)
    assert len(cache) <= 2 and cache.block("p", Message.request(GET, ["huge"]), 1, 5, 6.0) is None
    small = cache.first("p", Message.request(GET, ["s"]), Message(ACK, CONTENT, payload=b"s"), 5, 6.0)
    assert small.payload == b"s" and small.block2 is None


def test_block2_cache_adds_an_etag_to_every_block():
    cache = Block2Cache(etag=True)
    request = Message.request(GET, ["big"])
    first = cache.first("p", request, Message(ACK, CONTENT, payload=BODY), 6, 0.0)
    second = cache.block("p", request, 1, 6, 0.0)
    assert second is not None and first.opt(coap.OPT_ETAG) == second.opt(coap.OPT_ETAG)
    assert len(first.opt(coap.OPT_ETAG) or b"") == 4


# ------------------------------------------------------------------ client helpers against our server side


def serve_block2(cache: Block2Cache, request: Message, payload: bytes, our_szx: int, now: float = 0.0) -> Message:
    """What a transport without aiocoap does with a GET: block 0 from a fresh response, later ones from the cache."""
    asked = request.block2
    szx = min(our_szx, asked.szx) if asked else our_szx
    if asked is None or asked.num == 0:
        return cache.first("p", request, Message(ACK, CONTENT, payload=payload), szx, now)
    served = cache.block("p", request, asked.num, asked.szx, now)
    assert served is not None
    return served


@pytest.mark.parametrize("client_szx, server_szx", [(6, 6), (6, 2), (1, 6), (None, 4)])
def test_fetcher_against_the_cache(client_szx, server_szx):
    cache = Block2Cache()
    fetcher = Block2Fetcher(Message.request(GET, ["big"]), szx=client_szx)
    request: Message | None = fetcher.first_request()
    rounds = 0
    while request is not None:
        request = fetcher.feed(serve_block2(cache, request, BODY, server_szx))
        rounds += 1
    assert fetcher.response is not None and fetcher.response.payload == BODY
    assert fetcher.response.block2 is None and fetcher.response.code == CONTENT
    size = 16 << min(server_szx, client_szx if client_szx is not None else 6)
    assert rounds == -(-len(BODY) // size)


def test_fetcher_refuses_what_a_broken_server_sends():
    request = Message.request(GET, ["big"])
    full = Message(ACK, CONTENT, payload=BODY)

    fetcher = Block2Fetcher(request)
    fetcher.feed(response_block(full, 0, 6))
    with pytest.raises(BlockwiseError, match="expected"):
        fetcher.feed(response_block(full, 2, 6))  # block 1 skipped

    fetcher = Block2Fetcher(request)
    fetcher.feed(response_block(full.with_option(coap.OPT_ETAG, b"v1"), 0, 6))
    with pytest.raises(BlockwiseError, match="ETag"):
        fetcher.feed(response_block(full.with_option(coap.OPT_ETAG, b"v2"), 1, 6))

    fetcher = Block2Fetcher(request, max_body=2000)
    fetcher.feed(response_block(full, 0, 6))
    with pytest.raises(BlockwiseError, match="over"):
        fetcher.feed(response_block(full, 1, 6))

    fetcher = Block2Fetcher(request)
    with pytest.raises(BlockwiseError, match="first block"):
        fetcher.feed(response_block(full, 1, 6))

    fetcher = Block2Fetcher(request)
    fetcher.feed(response_block(full, 0, 6))
    assert fetcher.feed(Message(ACK, coap.NOT_FOUND)) is None  # an error ends the transfer as its response
    assert fetcher.response is not None and fetcher.response.code == coap.NOT_FOUND


def test_sender_against_the_assembler_with_a_smaller_server_block_size():
    assembler = Block1Assembler()
    sender = Block1Sender(Message.request(POST, ["up"], payload=BODY), szx=6)
    request: Message | None = sender.first_request()
    assert request is not None and request.uint_opt(coap.OPT_SIZE1) == len(BODY)
    sizes = []
    while request is not None:
        sizes.append(len(request.payload))
        outcome = assembler.feed("p", request, 0.0)
        if isinstance(outcome, Block1Continue):
            # This server prefers 256-byte blocks (SZX 4).
            block = outcome.block
            reply = Message(
                ACK, CONTINUE, options=((coap.OPT_BLOCK1, Block(block.num, True, min(4, block.szx)).encode()),)
            )
        else:
            assert isinstance(outcome, Block1Done) and outcome.body == BODY
            reply = Message(ACK, CHANGED, options=((coap.OPT_BLOCK1, outcome.block.encode()),))
        request = sender.feed(reply)
    assert sender.response is not None and sender.response.code == CHANGED
    assert sizes[0] == 1024 and set(sizes[1:-1]) == {256} and sum(sizes) == len(BODY)


def test_sender_sends_a_small_body_whole_and_stops_on_an_error():
    sender = Block1Sender(Message.request(POST, ["up"], payload=b"small"))
    first = sender.first_request()
    assert first.block1 is None and first.payload == b"small"
    assert sender.feed(Message(ACK, CHANGED)) is None and sender.response is not None
    sender = Block1Sender(Message.request(POST, ["up"], payload=BODY))
    sender.first_request()
    assert sender.feed(Message(ACK, coap.REQUEST_ENTITY_TOO_LARGE)) is None
    assert sender.response is not None and sender.response.code == coap.REQUEST_ENTITY_TOO_LARGE
    sender = Block1Sender(Message.request(POST, ["up"], payload=BODY))
    sender.first_request()
    with pytest.raises(BlockwiseError):
        sender.feed(Message(ACK, CONTINUE, options=((coap.OPT_BLOCK1, Block(3, True, 6).encode()),)))


# ------------------------------------------------------------------ over the message layer, with loss


def test_block2_transfer_over_two_endpoints_with_loss():
    client, server = Endpoint(rng=random.Random(1)), Endpoint(rng=random.Random(2))
    cache = Block2Cache()
    fetcher = Block2Fetcher(Message.request(GET, ["big"]), szx=4)
    client.send(fetcher.first_request(), 0.0)
    now, dropped, lossy = 0.0, 0, random.Random(3)
    while fetcher.response is None:
        moved = False
        for data in client.poll(now):
            moved = True
            if lossy.random() < 0.2:
                dropped += 1
                continue
            for event in server.receive(data, now):
                if isinstance(event, Request):
                    server.respond(event.msg, serve_block2(cache, event.msg, BODY, 6, now), now)
        for data in server.poll(now):
            moved = True
            if lossy.random() < 0.2:
                dropped += 1
                continue
            for event in client.receive(data, now):
                if isinstance(event, Response):
                    following = fetcher.feed(event.msg)
                    if following is not None:
                        client.send(following, now)
        assert not client.take_events()  # no Failed
        if not moved:
            now = min(t for t in (client.next_deadline(), server.next_deadline()) if t is not None)
        assert now < 600
    assert fetcher.response is not None and fetcher.response.payload == BODY
    assert dropped > 0


# ------------------------------------------------------------------ aiocoap, both directions


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Big(aiocoap.resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.received = b""

    async def render_get(self, request):
        return aiocoap.Message(payload=BODY)

    async def render_post(self, request):
        self.received = request.payload
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b"%d" % len(request.payload))


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.endpoint = Endpoint(rng=random.Random(4))
        self.responses: asyncio.Queue[Message] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        for event in self.endpoint.receive(data, time.monotonic()):
            if isinstance(event, Response):
                self.responses.put_nowait(event.msg)
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        for data in self.endpoint.poll(time.monotonic()):
            self.transport.sendto(data)

    async def exchange(self, msg: Message) -> Message:
        self.endpoint.send(msg, time.monotonic())
        self.flush()
        return await asyncio.wait_for(self.responses.get(), 10)


def test_our_client_helpers_against_an_aiocoap_server():
    resource = _Big()

    async def run():
        site = aiocoap.resource.Site()
        site.add_resource(["big"], resource)
        port = _free_udp_port()
        server = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
        try:
            client = _Client()
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(lambda: client, remote_addr=("127.0.0.1", port))
            try:
                fetcher = Block2Fetcher(Message.request(GET, ["big"]), szx=5)
                request: Message | None = fetcher.first_request()
                while request is not None:
                    request = fetcher.feed(await client.exchange(request))
                sender = Block1Sender(Message.request(POST, ["big"], payload=BODY[::-1]), szx=4)
                request = sender.first_request()
                while request is not None:
                    request = sender.feed(await client.exchange(request))
                return fetcher.response, sender.response
            finally:
                transport.close()
        finally:
            await server.shutdown()

    fetched, posted = asyncio.run(asyncio.wait_for(run(), 60))
    assert fetched is not None and fetched.payload == BODY
    assert posted is not None and posted.code == CHANGED and posted.payload == b"5000"
    assert resource.received == BODY[::-1]


class _Server(asyncio.DatagramProtocol):
    """Our server side without aiocoap: Endpoint + Block1Assembler + Block2Cache."""

    def __init__(self) -> None:
        self.endpoints: dict[tuple, Endpoint] = {}
        self.assembler = Block1Assembler()
        self.cache = Block2Cache(etag=True)
        self.uploaded = b""
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        now = time.monotonic()
        endpoint = self.endpoints.setdefault(addr, Endpoint(rng=random.Random(6)))
        for event in endpoint.receive(data, now):
            if isinstance(event, Request):
                endpoint.respond(event.msg, self.handle(addr, event.msg, now), now)
        assert self.transport is not None
        for out in endpoint.poll(now):
            self.transport.sendto(out, addr)

    def handle(self, addr, request: Message, now: float) -> Message:
        if request.code == GET:
            asked = request.block2
            if asked is None or asked.num == 0:
                return self.cache.first(
                    addr, request, Message(ACK, CONTENT, payload=BODY), asked.szx if asked else 6, now
                )
            return self.cache.block(addr, request, asked.num, asked.szx, now) or Message(ACK, coap.BAD_OPTION)
        outcome = self.assembler.feed(addr, request, now)
        if isinstance(outcome, Block1Done):
            self.uploaded = outcome.body
            options = ((coap.OPT_BLOCK1, outcome.block.encode()),) if outcome.block else ()
            return Message(ACK, CHANGED, options=options)
        return outcome.response()


def test_aiocoap_client_against_our_server_side():
    server = _Server()

    async def run():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        context = await aiocoap.Context.create_client_context()
        try:
            got = await asyncio.wait_for(
                context.request(aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/big")).response, 20
            )
            put = aiocoap.Message(code=aiocoap.POST, uri=f"coap://127.0.0.1:{port}/up", payload=BODY[:3000])
            posted = await asyncio.wait_for(context.request(put).response, 20)
            return got, posted
        finally:
            await context.shutdown()
            transport.close()

    got, posted = asyncio.run(asyncio.wait_for(run(), 60))
    assert got.payload == BODY  # aiocoap fetched every block (and checked the ETag) itself
    assert posted.code == aiocoap.CHANGED and server.uploaded == BODY[:3000]


def test_wire_of_a_continue_answer():
    reply = Block1Continue(Block(2, True, 6)).response()
    wire = encode(Message(ACK, reply.code, 1, b"t", reply.options))
    assert wire == bytes([0x61, CONTINUE, 0x00, 0x01]) + b"t" + bytes([0xD1, 27 - 13, 0x2E])
    assert parse(wire).block1 == Block(2, True, 6)


# ------------------------------------------------------------------ any sequence of blocks


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["p", "q", "r"]),
            st.sampled_from(["a", "b"]),
            st.integers(0, 6),
            st.booleans(),
            st.integers(0, 2),
            st.integers(0, 40),
            st.one_of(st.none(), st.integers(0, 1000)),
        ),
        max_size=60,
    )
)
def test_assembler_answers_any_block_sequence_within_its_bounds(steps):
    assembler = Block1Assembler(max_body=200, per_peer=1, max_assemblies=2, lifetime=5.0)
    now = 0.0
    for peer, path, num, more, szx, length, size1 in steps:
        now += 0.5
        request = block1_request(num, more, szx, b"z" * length, path)
        if size1 is not None:
            request = request.with_option(coap.OPT_SIZE1, size1)
        outcome = assembler.feed(peer, request, now)
        assert isinstance(outcome, (Block1Continue, Block1Done, Block1Refused))
        if isinstance(outcome, Block1Done):
            assert len(outcome.body) <= 200 and outcome.block is not None and not outcome.block.more
        if isinstance(outcome, Block1Refused):
            assert outcome.code in (coap.BAD_REQUEST, coap.REQUEST_ENTITY_INCOMPLETE, coap.REQUEST_ENTITY_TOO_LARGE)
            parse(encode(outcome.response()))
        assert len(assembler) <= 2
