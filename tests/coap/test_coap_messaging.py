"""gateway/coap/messaging.py: two Endpoints wired in memory under simulated time (loss, duplicates,
reordering), retransmission timings, deduplication, Observe notifications, bounded tables."""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import random
import shutil
import time
from collections.abc import Callable

import aiocoap
import aiocoap.resource
import pytest
from harness import free_udp_port
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.codecs import coap
from lowband.codecs.coap import ACK, CON, CONTENT, GET, NON, POST, RST, Message, encode, parse
from lowband.gateway.coap.messaging import (
    Acked,
    Endpoint,
    EndpointBusy,
    Failed,
    Limits,
    LocalProtocolError,
    Malformed,
    Request,
    Reset,
    Response,
    TransmissionParams,
)


class LowRandom(random.Random):
    """A seeded Random whose ``uniform`` gives its lower bound: retransmission timeouts are exactly ACK_TIMEOUT."""

    def uniform(self, a: float, b: float) -> float:
        return a


Drop = Callable[[str, int, Message], bool]  # (direction "c>s"/"s>c", index in that direction, message) → drop?


class Pair:
    """A client and a server Endpoint joined by a simulated wire with a one-way ``delay``.

    ``drop`` decides per datagram; ``duplicate`` delivers every datagram twice; ``extra_delay`` can
    hold one datagram back (reordering). The server answers each Request with 2.05 and the path,
    unless ``auto_respond`` is False. Everything sent is logged as (time, direction, bytes).
    """

    def __init__(self, params: TransmissionParams | None = None, *, delay: float = 0.05, **kwargs) -> None:
        self.params = params or TransmissionParams()
        self.client = Endpoint(self.params, rng=LowRandom(1), **kwargs)
        self.server = Endpoint(self.params, rng=LowRandom(2), **kwargs)
        self.delay = delay
        self.now = 0.0
        self.drop: Drop = lambda direction, index, msg: False
        self.duplicate = False
        self.extra_delay: Callable[[str, int, Message], float] = lambda direction, index, msg: 0.0
        self.auto_respond = True
        self.log: list[tuple[float, str, bytes]] = []
        self.client_events: list[object] = []
        self.server_events: list[object] = []
        self._wire: list[tuple[float, int, str, bytes]] = []
        self._seq = 0
        self._count = {"c>s": 0, "s>c": 0}

    def _handle(self, side: str, events: list[object]) -> None:
        (self.client_events if side == "client" else self.server_events).extend(events)
        if side == "server" and self.auto_respond:
            for event in events:
                if isinstance(event, Request):
                    reply = Message(ACK, CONTENT, payload="/".join(event.msg.path).encode())
                    self.server.respond(event.msg, reply, self.now)

    def flush(self) -> None:
        for endpoint, direction in ((self.client, "c>s"), (self.server, "s>c")):
            self._handle("client" if endpoint is self.client else "server", endpoint.take_events())
            for data in endpoint.poll(self.now):
                self._handle("client" if endpoint is self.client else "server", endpoint.take_events())
                index = self._count[direction]
                self._count[direction] += 1
                self.log.append((self.now, direction, data))
                msg = parse(data)
                if self.drop(direction, index, msg):
                    continue
                for _ in range(2 if self.duplicate else 1):
                    self._seq += 1
                    at = self.now + self.delay + self.extra_delay(direction, index, msg)
                    heapq.heappush(self._wire, (at, self._seq, direction, data))
            self._handle("client" if endpoint is self.client else "server", endpoint.take_events())

    def run(self, until: float) -> None:
        """Advance simulated time to ``until``, delivering datagrams and firing timers in order."""
        self.flush()
        while True:
            times = [t for t in (self.client.next_deadline(), self.server.next_deadline()) if t is not None]
            if self._wire:
                times.append(self._wire[0][0])
            if not times or min(times) > until:
                break
            self.now = max(self.now, min(times))
            while self._wire and self._wire[0][0] <= self.now:
                _, _, direction, data = heapq.heappop(self._wire)
                target = self.server if direction == "c>s" else self.client
                self._handle("server" if direction == "c>s" else "client", target.receive(data, self.now))
                self.flush()
            self.flush()
        self.now = until

    def sent(self, direction: str) -> list[tuple[float, Message]]:
        return [(t, parse(d)) for t, dn, d in self.log if dn == direction]


def events_of(events: list[object], kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


# ------------------------------------------------------------------ parameters


def test_default_parameters_and_derived_times():
    p = TransmissionParams()
    assert (p.ack_timeout, p.ack_random_factor, p.max_retransmit, p.nstart) == (2.0, 1.5, 4, 1)
    assert p.max_transmit_span == pytest.approx(45.0)
    assert p.max_transmit_wait == pytest.approx(93.0)
    assert p.exchange_lifetime == pytest.approx(247.0)
    assert p.non_lifetime == pytest.approx(145.0)


def test_slow_link_parameters_cover_the_time_on_air():
    p = TransmissionParams.for_link(100, 64)
    assert p.ack_timeout == pytest.approx(2 * 64 * 8 / 100 + 0.5)
    assert p.empty_ack_delay == pytest.approx(p.ack_timeout / 2)
    assert TransmissionParams.for_link(1_000_000, 64).ack_timeout == 2.0  # never below the RFC default
    with pytest.raises(ValueError):
        TransmissionParams.for_link(0)
    with pytest.raises(ValueError):
        TransmissionParams(nstart=0)


# ------------------------------------------------------------------ request / response


def test_con_request_gets_a_piggybacked_response():
    pair = Pair()
    sent = pair.client.send(Message.request(GET, ["a", "b"]), 0.0)
    assert len(sent.token) == 4 and sent.mtype == CON
    pair.run(10)
    [request] = events_of(pair.server_events, Request)
    assert request.msg.path == ("a", "b") and request.msg.token == sent.token
    [response] = events_of(pair.client_events, Response)
    assert response.msg.payload == b"a/b" and response.msg.mtype == ACK and response.msg.mid == sent.mid
    assert response.request == sent
    assert [m.mtype for _, m in pair.sent("c>s")] == [CON] and [m.mtype for _, m in pair.sent("s>c")] == [ACK]
    assert not pair.client.busy and pair.client.next_deadline() is None
    assert not events_of(pair.client_events, Failed)


def test_retransmission_timings_and_failed_after_max_retransmit():
    pair = Pair()
    pair.drop = lambda direction, index, msg: direction == "c>s"
    sent = pair.client.send(Message.request(GET, ["x"]), 0.0)
    assert pair.client.next_deadline() == 2.0
    pair.run(200)
    times = [t for t, _ in pair.sent("c>s")]
    assert times == [0.0, 2.0, 6.0, 14.0, 30.0]  # ACK_TIMEOUT doubled each time, MAX_RETRANSMIT = 4
    assert all(m.mid == sent.mid and encode(m) == encode(sent) for _, m in pair.sent("c>s"))
    [failed] = events_of(pair.client_events, Failed)
    assert failed == Failed(sent.mid, sent.token)
    assert pair.client.counters["retransmissions"] == 4 and pair.client.counters["failed"] == 1
    assert not pair.client.busy


def test_random_factor_stretches_the_first_timeout_within_bounds():
    for seed in range(20):
        endpoint = Endpoint(rng=random.Random(seed))
        endpoint.send(Message.request(GET, ["x"]), 10.0)
        deadline = endpoint.next_deadline()
        assert deadline is not None and 12.0 <= deadline <= 13.0


def test_failure_time_is_max_transmit_wait_with_the_largest_factor():
    class HighRandom(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    endpoint = Endpoint(rng=HighRandom(0))
    endpoint.send(Message.request(GET, ["x"]), 0.0)
    endpoint.poll(0.0)
    failed_at = None
    while failed_at is None:
        now = endpoint.next_deadline()
        assert now is not None
        endpoint.poll(now)
        if endpoint.take_events():
            failed_at = now
    assert failed_at == pytest.approx(endpoint.params.max_transmit_wait)


def test_lost_request_is_retransmitted_and_answered_once():
    pair = Pair()
    pair.drop = lambda direction, index, msg: direction == "c>s" and index == 0
    pair.client.send(Message.request(GET, ["once"]), 0.0)
    pair.run(20)
    assert len(events_of(pair.server_events, Request)) == 1
    assert [e.msg.payload for e in events_of(pair.client_events, Response)] == [b"once"]
    assert [t for t, _ in pair.sent("c>s")] == [0.0, 2.0]


def test_lost_ack_duplicate_gets_the_same_response_bytes():
    pair = Pair()
    pair.drop = lambda direction, index, msg: direction == "s>c" and index == 0
    pair.client.send(Message.request(GET, ["dup"]), 0.0)
    pair.run(20)
    assert len(events_of(pair.server_events, Request)) == 1  # the retransmission is recognised
    first, second = [data for _, direction, data in pair.log if direction == "s>c"]
    assert first == second  # the stored response, byte for byte
    assert len(events_of(pair.client_events, Response)) == 1
    assert pair.server.counters["duplicates"] == 1


def test_network_duplicates_give_one_request_and_one_response():
    pair = Pair()
    pair.duplicate = True
    for path in ("a", "b", "c"):
        pair.client.send(Message.request(GET, [path]), pair.now)
        pair.run(pair.now + 5)
    assert [e.msg.path for e in events_of(pair.server_events, Request)] == [("a",), ("b",), ("c",)]
    assert [e.msg.payload for e in events_of(pair.client_events, Response)] == [b"a", b"b", b"c"]
    assert not events_of(pair.client_events, Malformed)


def test_reordered_responses_match_by_token():
    pair = Pair(TransmissionParams(nstart=2))
    # The first request is held back on the wire, so its answer arrives after the second one's.
    pair.extra_delay = lambda direction, index, msg: 0.5 if direction == "c>s" and index == 0 else 0.0
    first = pair.client.send(Message.request(GET, ["first"]), 0.0)
    second = pair.client.send(Message.request(GET, ["second"]), 0.0)
    assert first.token != second.token and first.mid != second.mid
    pair.run(10)
    responses = events_of(pair.client_events, Response)
    assert [r.msg.payload for r in responses] == [b"second", b"first"]
    assert [r.request.token for r in responses] == [second.token, first.token]


def test_nstart_queues_requests_in_order():
    pair = Pair()
    for path in ("1", "2", "3"):
        pair.client.send(Message.request(GET, [path]), 0.0)
    assert pair.client.table_sizes()["queue"] == 2
    pair.run(10)
    starts = [(t, m.path) for t, m in pair.sent("c>s")]
    assert [p for _, p in starts] == [("1",), ("2",), ("3",)]
    assert starts[0][0] < starts[1][0] < starts[2][0]  # one at a time: each after the previous response
    assert [e.msg.payload for e in events_of(pair.client_events, Response)] == [b"1", b"2", b"3"]


def test_compact_mode_empty_tokens_one_exchange_at_a_time():
    pair = Pair(token_length=0)
    for path in ("a", "b"):
        sent = pair.client.send(Message.request(POST, [path], payload=b"x"), 0.0)
        assert sent.token == b""
    pair.run(10)
    assert all(m.token == b"" and encode(m)[0] & 0x0F == 0 for _, m in pair.sent("c>s"))
    assert [e.msg.payload for e in events_of(pair.client_events, Response)] == [b"a", b"b"]


def test_empty_tokens_never_overlap_even_with_nstart_above_one():
    pair = Pair(TransmissionParams(nstart=4), token_length=0)
    pair.auto_respond = False
    pair.client.send(Message.request(GET, ["a"]), 0.0)
    pair.client.send(Message.request(GET, ["b"]), 0.0)
    pair.run(3)
    assert [m.path for _, m in pair.sent("c>s")] == [("a",)]  # "b" waits: its token (empty) is in use
    [request] = events_of(pair.server_events, Request)
    pair.server.respond(request.msg, Message(ACK, CONTENT, payload=b"A"), pair.now)
    pair.run(6)
    assert [m.path for _, m in pair.sent("c>s") if m.is_request] == [("a",), ("b",)]
    assert [e.request.path for e in events_of(pair.client_events, Response)] == [("a",)]


# ------------------------------------------------------------------ separate responses


def test_separate_response_after_an_empty_ack():
    pair = Pair()
    pair.auto_respond = False
    sent = pair.client.send(Message.request(GET, ["slow"]), 0.0)
    pair.run(5)
    [request] = events_of(pair.server_events, Request)
    empty_acks = [(t, m) for t, m in pair.sent("s>c") if m.mtype == ACK and m.is_empty]
    assert [t for t, _ in empty_acks] == [pytest.approx(0.05 + 1.0)]  # empty_ack_delay after arrival
    assert events_of(pair.client_events, Acked) == [Acked(sent.mid)]
    assert len(pair.sent("c>s")) == 1  # the empty ACK stopped the retransmissions
    separate = pair.server.respond(request.msg, Message(ACK, CONTENT, payload=b"late"), pair.now)
    assert separate.mtype == CON and separate.token == sent.token and separate.mid != sent.mid
    pair.run(10)
    [response] = events_of(pair.client_events, Response)
    assert response.msg.payload == b"late" and response.request == sent
    assert events_of(pair.server_events, Acked) == [Acked(separate.mid)]  # the client ACKed the CON response
    assert not pair.client.busy and not pair.server.busy


def test_duplicate_of_an_acknowledged_request_gets_the_empty_ack_again():
    params = TransmissionParams()
    server = Endpoint(params, rng=LowRandom(3))
    request = encode(Message(CON, GET, 77, b"tk", ((11, b"p"),)))
    assert len(server.receive(request, 0.0)) == 1
    assert server.poll(0.5) == []  # in progress, not yet acknowledged
    assert server.receive(request, 0.6) == [] and server.poll(0.6) == []  # duplicate in progress: ignored
    assert server.poll(1.0) == [encode(Message(ACK, 0, 77))]
    assert server.receive(request, 3.0) == [] and server.poll(3.0) == [encode(Message(ACK, 0, 77))]


def test_duplicate_in_progress_is_ignored_without_separate_responses():
    server = Endpoint(TransmissionParams(empty_ack_delay=None), rng=LowRandom(3))
    request = encode(Message(CON, GET, 5, b"t"))
    server.receive(request, 0.0)
    assert server.next_deadline() is None
    assert server.receive(request, 2.0) == [] and server.poll(2.0) == []
    reply = server.respond(parse(request), Message(ACK, CONTENT, payload=b"r"), 2.5)
    assert server.poll(2.5) == [encode(reply)]
    assert server.receive(request, 3.0) == [] and server.poll(3.0) == [encode(reply)]


def test_separate_response_arriving_before_the_ack_is_accepted():
    client = Endpoint(rng=LowRandom(1))
    sent = client.send(Message.request(GET, ["p"]), 0.0)
    client.poll(0.0)
    response = Message(CON, CONTENT, 900, sent.token, payload=b"early")
    [event] = client.receive(encode(response), 0.5)
    assert isinstance(event, Response) and event.msg.payload == b"early"
    assert client.poll(0.5) == [encode(Message(ACK, 0, 900))]
    assert client.receive(encode(Message(ACK, 0, sent.mid)), 0.6) == []  # the late empty ACK changes nothing
    assert not client.busy and client.poll(100) == [] and client.take_events() == []


def test_retransmitted_separate_response_is_acked_again_but_reported_once():
    client = Endpoint(rng=LowRandom(1))
    sent = client.send(Message.request(GET, ["p"]), 0.0)
    client.poll(0.0)
    assert client.receive(encode(Message(ACK, 0, sent.mid)), 0.1) == [Acked(sent.mid)]
    response = encode(Message(CON, CONTENT, 500, sent.token, payload=b"r"))
    assert len(client.receive(response, 1.0)) == 1
    assert client.receive(response, 3.0) == []  # our ACK was lost; the server sent it again
    assert client.poll(3.0) == [encode(Message(ACK, 0, 500))] * 2
    assert client.counters["duplicates"] == 1


def test_piggybacked_response_with_a_wrong_token_is_malformed_and_retransmission_goes_on():
    client = Endpoint(rng=LowRandom(1))
    sent = client.send(Message.request(GET, ["p"]), 0.0)
    client.poll(0.0)
    [event] = client.receive(encode(Message(ACK, CONTENT, sent.mid, b"zz")), 0.1)
    assert isinstance(event, Malformed)
    assert client.busy and client.poll(2.0) == [encode(sent)]


# ------------------------------------------------------------------ NON


def test_non_request_gets_a_non_response():
    pair = Pair()
    sent = pair.client.send(Message.request(GET, ["n"], mtype=NON), 0.0)
    pair.run(5)
    [response] = events_of(pair.client_events, Response)
    assert response.msg.mtype == NON and response.msg.token == sent.token and response.msg.payload == b"n"
    assert [m.mtype for _, m in pair.sent("s>c")] == [NON]


def test_lost_non_request_fails_after_the_response_timeout():
    pair = Pair()
    pair.client.response_timeout = 30.0
    pair.drop = lambda direction, index, msg: direction == "c>s"
    sent = pair.client.send(Message.request(GET, ["n"], mtype=NON), 0.0)
    pair.run(100)
    assert len(pair.sent("c>s")) == 1  # NON is never retransmitted
    assert events_of(pair.client_events, Failed) == [Failed(sent.mid, sent.token)]
    assert [t for t, _, d in pair.log] == [0.0]


def test_duplicate_non_request_is_dropped():
    server = Endpoint(rng=LowRandom(1))
    data = encode(Message(NON, GET, 8, b"a"))
    assert len(server.receive(data, 0.0)) == 1
    assert server.receive(data, 1.0) == [] and server.counters["duplicates"] == 1


# ------------------------------------------------------------------ what the peer gets wrong


def test_malformed_con_is_rejected_with_rst():
    server = Endpoint(rng=LowRandom(1))
    [event] = server.receive(b"\x42\x01\x12\x34ab\xff", 0.0)  # payload marker with nothing after it
    assert isinstance(event, Malformed) and "payload marker" in event.reason
    assert server.poll(0.0) == [encode(Message(RST, 0, 0x1234))]
    [event] = server.receive(b"\x52\x01\x12\x35ab\xff", 0.0)  # the same as NON: no RST
    assert isinstance(event, Malformed) and server.poll(0.0) == []
    [event] = server.receive(b"\x40", 0.0)
    assert isinstance(event, Malformed) and server.poll(0.0) == []
    [event] = server.receive(b"\x40\x01\x00\x00" + b"x" * 2000, 0.0)
    assert isinstance(event, Malformed) and "over the limit" in event.reason
    assert server.counters["malformed"] == 4


def test_ping_unknown_response_and_reserved_codes_get_rst():
    endpoint = Endpoint(rng=LowRandom(1))
    assert endpoint.receive(encode(Message(CON, 0, 10)), 0.0) == []
    assert endpoint.poll(0.0) == [encode(Message(RST, 0, 10))]
    assert endpoint.receive(encode(Message(CON, CONTENT, 11, b"??")), 0.0) == []
    assert endpoint.poll(0.0) == [encode(Message(RST, 0, 11))]
    [event] = endpoint.receive(encode(Message(CON, coap.code(7, 1), 12)), 0.0)
    assert isinstance(event, Malformed) and endpoint.poll(0.0) == [encode(Message(RST, 0, 12))]
    [event] = endpoint.receive(encode(Message(RST, CONTENT, 13)), 0.0)
    assert isinstance(event, Malformed)
    assert endpoint.receive(encode(Message(ACK, 0, 14)), 0.0) == []  # an ACK for nothing
    assert endpoint.receive(encode(Message(NON, 0, 15)), 0.0) == [] and endpoint.poll(0.0) == []


def test_rst_on_a_request_ends_it():
    client = Endpoint(rng=LowRandom(1))
    sent = client.send(Message.request(GET, ["p"]), 0.0)
    client.poll(0.0)
    assert client.receive(encode(Message(RST, 0, sent.mid)), 0.1) == [Reset(sent.mid, sent.token)]
    assert not client.busy and client.poll(50) == []


# ------------------------------------------------------------------ our own mistakes


def test_local_misuse_raises():
    endpoint = Endpoint(rng=LowRandom(1))
    with pytest.raises(LocalProtocolError):
        endpoint.send(Message(ACK, CONTENT), 0.0)
    with pytest.raises(LocalProtocolError):
        endpoint.send(Message(CON, 0), 0.0)
    endpoint.receive(encode(Message(CON, GET, 3, b"t")), 0.0)
    request = Message(CON, GET, 3, b"t")
    with pytest.raises(LocalProtocolError):
        endpoint.respond(request, Message(ACK, GET), 0.0)
    endpoint.respond(request, Message(ACK, CONTENT), 0.0)
    with pytest.raises(LocalProtocolError):
        endpoint.respond(request, Message(ACK, CONTENT), 0.0)
    with pytest.raises(ValueError):
        Endpoint(token_length=9)


# ------------------------------------------------------------------ Observe


def _observe_pair() -> tuple[Pair, Message, Message]:
    pair = Pair()
    pair.auto_respond = False
    registration = pair.client.send(Message.request(GET, ["obs"]).with_option(coap.OPT_OBSERVE, 0), 0.0)
    pair.run(0.5)
    [request] = events_of(pair.server_events, Request)
    pair.server.respond(request.msg, Message(ACK, CONTENT, options=((coap.OPT_OBSERVE, b"\x01"),), payload=b"v1"), 0.5)
    pair.run(1.0)
    return pair, registration, request.msg


def test_observe_notifications_reach_the_client_until_it_cancels():
    pair, registration, request = _observe_pair()
    notify = Message(CON, CONTENT, token=request.token, options=((coap.OPT_OBSERVE, b"\x02"),), payload=b"v2")
    sent = pair.server.send(notify, pair.now)
    pair.run(2.0)
    assert [e.msg.payload for e in events_of(pair.client_events, Response)] == [b"v1", b"v2"]
    assert all(e.request == registration for e in events_of(pair.client_events, Response))
    assert Acked(sent.mid) in pair.server_events
    assert pair.client.table_sizes()["observing"] == 1 and not pair.client.busy  # no slot held
    non = pair.server.send(dataclasses.replace(notify, mtype=NON, payload=b"v3").replace_option(6, 3), pair.now)
    pair.run(3.0)
    assert events_of(pair.client_events, Response)[-1].msg.payload == b"v3"
    pair.client.cancel(registration.token)
    last = pair.server.send(notify.replace_option(6, 4), pair.now)
    pair.run(4.0)
    assert Reset(last.mid, request.token) in pair.server_events  # RST: the client lost interest
    assert len(events_of(pair.client_events, Response)) == 3
    pair.server.send(dataclasses.replace(notify, mtype=NON).replace_option(6, 5), pair.now)
    pair.run(5.0)
    resets = events_of(pair.server_events, Reset)
    assert len(resets) == 2 and resets[1].token == request.token  # a RST on a NON notification is reported too
    assert non.mid != last.mid


def test_final_response_without_observe_ends_the_observation():
    pair, _, request = _observe_pair()
    pair.server.send(Message(CON, coap.NOT_FOUND, token=request.token), pair.now)
    pair.run(2.0)
    assert pair.client.table_sizes()["observing"] == 0
    pair.server.send(Message(CON, CONTENT, token=request.token, options=((6, b"\x09"),)), pair.now)
    pair.run(3.0)
    assert len(events_of(pair.client_events, Response)) == 2 and len(events_of(pair.server_events, Reset)) == 1


def test_queued_notification_is_replaced_by_a_newer_one():
    server = Endpoint(rng=LowRandom(1))
    token = b"ob"
    sent = [
        server.send(Message(CON, CONTENT, token=token, options=((6, bytes([n])),), payload=bytes([n])), 0.0)
        for n in range(1, 5)
    ]
    assert server.table_sizes() == {"queue": 1, "inflight": 1, "observing": 0, "seen": 0, "sent_non": 0}
    assert [parse(d).payload for d in server.poll(0.0)] == [b"\x01"]
    assert server.receive(encode(Message(ACK, 0, sent[0].mid)), 0.1) == [Acked(sent[0].mid)]
    assert [parse(d).payload for d in server.poll(0.1)] == [b"\x04"]  # 2 and 3 were superseded


# ------------------------------------------------------------------ bounds and lifetimes


def test_tables_stay_bounded_under_a_flood():
    limits = Limits(dedup=64, queue=8, observations=2, sent_non=16)
    server = Endpoint(rng=LowRandom(1), limits=limits)
    for mid in range(5000):
        server.receive(encode(Message(CON, GET, mid, b"t")), mid * 0.001)
        server.receive(encode(Message(CON, CONTENT, (mid + 30000) & 0xFFFF, b"zz")), mid * 0.001)  # unknown token
        server.poll(mid * 0.001)
    assert server.table_sizes()["seen"] <= 64
    for n in range(200):
        server.send(Message(NON, CONTENT, token=bytes([n]), options=((6, b"\x01"),)), 10.0)
    assert server.table_sizes()["sent_non"] <= 16
    client = Endpoint(rng=LowRandom(1), limits=limits)
    for n in range(9):  # 1 in flight (NSTART) + 8 queued
        client.send(Message.request(GET, [str(n)]), 0.0)
    with pytest.raises(EndpointBusy):
        client.send(Message.request(GET, ["one too many"]), 0.0)
    assert client.table_sizes()["queue"] == 8 and client.table_sizes()["inflight"] == 1


def test_observations_are_capped():
    client = Endpoint(rng=LowRandom(1), limits=Limits(observations=1))
    for n in range(2):
        sent = client.send(Message.request(GET, [str(n)]).with_option(6, 0), 0.0)
        client.poll(0.0)
        client.receive(encode(Message(ACK, CONTENT, sent.mid, sent.token, ((6, b"\x01"),))), 0.1)
    assert client.table_sizes()["observing"] == 1


def test_message_ids_are_forgotten_after_exchange_lifetime():
    server = Endpoint(rng=LowRandom(1))
    data = encode(Message(CON, GET, 42, b"t"))
    server.receive(data, 0.0)
    assert server.receive(data, 246.0) == []
    assert len(server.receive(data, 248.0)) == 1  # a new request that reuses the ID


# ------------------------------------------------------------------ against real peers (loopback UDP)


class UdpPump(asyncio.DatagramProtocol):
    """A minimal runtime for tests: one Endpoint per peer address, answering with ``handler``."""

    def __init__(self, handler, *, drop_first_response: bool = False, answer_after: float = 0.0) -> None:
        self.handler = handler
        self.endpoints: dict[tuple, Endpoint] = {}
        self.events: list[object] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.drop_first_response = drop_first_response
        self.answer_after = answer_after
        self.tick: asyncio.Task | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.tick = asyncio.get_running_loop().create_task(self._timers())

    def endpoint(self, addr) -> Endpoint:
        if addr not in self.endpoints:
            self.endpoints[addr] = Endpoint(rng=random.Random(5))
        return self.endpoints[addr]

    def datagram_received(self, data: bytes, addr) -> None:
        endpoint = self.endpoint(addr)
        for event in endpoint.receive(data, time.monotonic()):
            self.events.append(event)
            if isinstance(event, Request):
                if self.answer_after:
                    asyncio.get_running_loop().call_later(self.answer_after, self._answer, endpoint, addr, event.msg)
                else:
                    endpoint.respond(event.msg, self.handler(event.msg), time.monotonic())
        self.flush(addr)

    def _answer(self, endpoint: Endpoint, addr, request: Message) -> None:
        endpoint.respond(request, self.handler(request), time.monotonic())
        self.flush(addr)

    def flush(self, addr) -> None:
        endpoint = self.endpoints[addr]
        for data in endpoint.poll(time.monotonic()):
            if self.drop_first_response and parse(data).is_response:
                self.drop_first_response = False
                continue
            assert self.transport is not None
            self.transport.sendto(data, addr)
        self.events.extend(endpoint.take_events())

    async def _timers(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            for addr in list(self.endpoints):
                self.flush(addr)


def _echo(msg: Message) -> Message:
    return Message(ACK, CONTENT, options=((coap.OPT_CONTENT_FORMAT, b""),), payload=("/".join(msg.path)).encode())


async def _with_server(pump: UdpPump, body):
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: pump, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        return await body(port)
    finally:
        assert pump.tick is not None
        pump.tick.cancel()
        transport.close()


async def _aiocoap_get(port: int, path: str):
    context = await aiocoap.Context.create_client_context()
    try:
        request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/{path}")
        response = await asyncio.wait_for(context.request(request).response, 15)
        return response
    finally:
        await context.shutdown()


def test_aiocoap_client_against_our_endpoint_with_a_lost_response():
    pump = UdpPump(_echo, drop_first_response=True)

    async def body(port):
        return await _aiocoap_get(port, "_matrix/client/versions")

    started = time.monotonic()
    response = asyncio.run(asyncio.wait_for(_with_server(pump, body), 30))
    assert response.code == aiocoap.CONTENT and response.payload == b"_matrix/client/versions"
    assert len(events_of(pump.events, Request)) == 1  # aiocoap's retransmission was recognised as a duplicate
    [endpoint] = pump.endpoints.values()
    assert endpoint.counters["duplicates"] >= 1
    assert 1.5 < time.monotonic() - started < 20  # aiocoap waited ACK_TIMEOUT × [1, 1.5] before retrying


def test_aiocoap_client_gets_a_separate_response():
    pump = UdpPump(_echo, answer_after=1.6)

    async def body(port):
        response = await _aiocoap_get(port, "slow")
        await asyncio.sleep(0.3)  # the ACK aiocoap sends for the CON response
        return response

    response = asyncio.run(asyncio.wait_for(_with_server(pump, body), 30))
    assert response.payload == b"slow"
    [endpoint] = pump.endpoints.values()
    assert endpoint.counters["empty_acks"] == 1
    assert len(events_of(pump.events, Acked)) == 1  # aiocoap acknowledged our CON response
    assert not events_of(pump.events, Failed)


def test_libcoap_client_against_our_endpoint():
    if shutil.which("coap-client-notls") is None:
        pytest.skip("libcoap3-bin is not installed")
    pump = UdpPump(_echo)

    async def body(port):
        process = await asyncio.create_subprocess_exec(
            "coap-client-notls", "-m", "get", "-B", "5", f"coap://127.0.0.1:{port}/a/b/c",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(process.communicate(), 15)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        return out.decode() + err.decode()

    output = asyncio.run(asyncio.wait_for(_with_server(pump, body), 30))
    assert "a/b/c" in output
    [request] = events_of(pump.events, Request)
    assert request.msg.path == ("a", "b", "c")


class _Hello(aiocoap.resource.Resource):
    async def render_get(self, request):
        return aiocoap.Message(payload=b"hello")

    async def render_post(self, request):
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload[::-1])


class _ClientPump(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.endpoint = Endpoint(rng=random.Random(9))
        self.events: list[object] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.events.extend(self.endpoint.receive(data, time.monotonic()))
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        for data in self.endpoint.poll(time.monotonic()):
            self.transport.sendto(data)
        self.events.extend(self.endpoint.take_events())


def test_our_endpoint_as_client_against_an_aiocoap_server():
    async def run():
        site = aiocoap.resource.Site()
        site.add_resource(["hello"], _Hello())
        port = free_udp_port()
        server = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
        try:
            loop = asyncio.get_running_loop()
            pump = _ClientPump()
            transport, _ = await loop.create_datagram_endpoint(lambda: pump, remote_addr=("127.0.0.1", port))
            try:
                pump.endpoint.send(Message.request(GET, ["hello"]), time.monotonic())
                pump.endpoint.send(Message.request(POST, ["hello"], payload=b"abc"), time.monotonic())
                pump.flush()
                deadline = time.monotonic() + 15
                while len(events_of(pump.events, Response)) < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                    pump.flush()
                return pump.events
            finally:
                transport.close()
        finally:
            await server.shutdown()

    events = asyncio.run(asyncio.wait_for(run(), 30))
    responses = events_of(events, Response)
    assert [(r.msg.code, r.msg.payload) for r in responses] == [(CONTENT, b"hello"), (coap.CHANGED, b"cba")]
    assert all(r.msg.mtype == ACK for r in responses)  # aiocoap piggybacks


# ------------------------------------------------------------------ any input


_datagrams = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda mtype, code, mid, token, payload: encode(Message(mtype, code, mid, token, payload=payload)),
        st.integers(0, 3),
        st.sampled_from([GET, POST, CONTENT, coap.NOT_FOUND, coap.code(7, 0), coap.CONTINUE]),
        st.integers(0, 20),
        st.binary(max_size=2),
        st.binary(max_size=4),
    ),
    st.builds(lambda mtype, mid: encode(Message(mtype, 0, mid)), st.integers(0, 3), st.integers(0, 20)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_datagrams, st.floats(0, 30), st.booleans()), max_size=40))
def test_any_datagrams_give_values_and_bounded_tables(steps):
    limits = Limits(dedup=8, queue=4, observations=2, sent_non=4)
    endpoint = Endpoint(TransmissionParams(nstart=2), rng=LowRandom(1), token_length=1, limits=limits)
    now = 0.0
    for data, advance, send in steps:
        now += advance
        if send:
            try:
                endpoint.send(Message.request(GET, ["x"]).with_option(coap.OPT_OBSERVE, 0), now)
            except EndpointBusy:
                pass
        for event in endpoint.receive(data, now):
            assert isinstance(event, (Request, Response, Acked, Reset, Malformed))
            if isinstance(event, Request):
                endpoint.respond(event.msg, Message(ACK, CONTENT), now)
        for out in endpoint.poll(now):
            parse(out)  # everything we send parses
        assert all(isinstance(e, Failed) for e in endpoint.take_events())
        sizes = endpoint.table_sizes()
        assert sizes["seen"] <= 8 and sizes["queue"] <= 4 and sizes["observing"] <= 2 and sizes["inflight"] <= 2


def test_aiocoap_observer_gets_and_acknowledges_our_notifications():
    registrations: list[Message] = []

    def handler(msg: Message) -> Message:
        if msg.observe == 0:
            registrations.append(msg)
            return Message(ACK, CONTENT, options=((coap.OPT_OBSERVE, b"\x01"),), payload=b"v1")
        return Message(ACK, CONTENT, payload=b"plain")

    pump = UdpPump(handler)

    async def body(port):
        context = await aiocoap.Context.create_client_context()
        try:
            request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/obs", observe=0)
            pending = context.request(request)
            first = await asyncio.wait_for(pending.response, 10)
            [(addr, endpoint)] = pump.endpoints.items()
            token = registrations[0].token
            seen = [first.payload]
            notifications = pending.observation.__aiter__()
            for n in (2, 3):
                endpoint.send(
                    Message(CON, CONTENT, token=token, options=((6, bytes([n])),), payload=b"v%d" % n), time.monotonic()
                )
                pump.flush(addr)
                notification = await asyncio.wait_for(notifications.__anext__(), 10)
                seen.append(notification.payload)
            for _ in range(100):  # the ACK of the last notification
                if len(events_of(pump.events, Acked)) == 2:
                    break
                await asyncio.sleep(0.05)
            pending.observation.cancel()
            return seen
        finally:
            await context.shutdown()

    seen = asyncio.run(asyncio.wait_for(_with_server(pump, body), 30))
    assert seen == [b"v1", b"v2", b"v3"]
    assert len(events_of(pump.events, Acked)) == 2  # aiocoap acknowledged both CON notifications
    assert not events_of(pump.events, Failed) and not events_of(pump.events, Reset)
    # (aiocoap's cancel() answers no later notification with RST, so the RST path is tested in memory above.)
