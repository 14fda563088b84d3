"""The CoAP client library (gateway/coap/client.py) against a real gateway on 127.0.0.1.

A small UDP relay sits between the client and the gateway's CoAP port: it
records every datagram (so the tests read the options the client really
sent) and can drop chosen ones (retransmission and transaction-ID reuse).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import LOWBAND, free_udp_port, in_loop, until, users_gateway

from lowband.codecs import coap
from lowband.gateway.coap.client import BadUrl, CoapClient, KeyFileError, NoAnswer, parse_url
from lowband.gateway.coap.messaging import TransmissionParams

TEXT = "temp 21.5 C"


class Relay(asyncio.DatagramProtocol):
    """Client ↔ relay ↔ gateway; ``log`` holds ("up"|"down", bytes); ``drop(direction, data)`` discards."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.log: list[tuple[str, bytes]] = []
        self.drop: Callable[[str, bytes], bool] = lambda direction, data: False
        self.client_addr: Any = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                relay.log.append(("down", data))
                if not relay.drop("down", data) and relay.front is not None:
                    relay.front.sendto(data, relay.client_addr)

        self.front, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, remote_addr=("127.0.0.1", self.target))
        return int(self.front.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client_addr = addr
        self.log.append(("up", data))
        if not self.drop("up", data) and self.back is not None:
            self.back.sendto(data)

    def messages(self, direction: str) -> list[coap.Message]:
        return [coap.parse(data) for d, data in self.log if d == direction]

    def close(self) -> None:
        for transport in (self.front, self.back):
            if transport is not None:
                transport.close()


def timeline(doc: Any, room: str) -> list[dict[str, Any]]:
    return doc.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])


async def new_room(http: Any) -> str:
    status, body = await http.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})
    assert status == 200, body
    return str(body["room_id"])


# ------------------------------------------------------------------ plain UDP (MSC3079)


@in_loop
async def test_login_sticky_token_send_and_sync_over_plain_udp(tmp_path: Path) -> None:
    port = free_udp_port()
    async with users_gateway(tmp_path, "alice", components={"coap": {"bind": f"127.0.0.1:{port}"}}) as (users, _, _):
        room = await new_room(users[0])
        relay = Relay(port)
        front = await relay.start()
        client = await CoapClient.connect(f"coap://127.0.0.1:{front}", timeout=20)
        try:
            code, versions = await client.request("GET", "/_matrix/client/versions")
            assert code == coap.CONTENT and "m.low_bandwidth" in versions
            code, login = await client.login("alice", "secret-pw")
            assert code == coap.CHANGED and login["user_id"] == "@alice:localhost"
            code, first = await client.sync(None, 0)
            assert code == coap.CONTENT and room in first["rooms"]["join"]
            code, sent = await client.send_text(room, TEXT)
            assert code == coap.CHANGED and sent["event_id"].startswith("$")
            code, later = await client.sync(first["next_batch"], 0)
            assert [e["content"]["body"] for e in timeline(later, room)] == [TEXT]
            assert timeline(later, room)[0]["event_id"] == sent["event_id"]
            # Query values travel as text (a JSON filter with quotes, commas and spaces), path given in code form.
            only_messages = json.dumps({"types": ["m.room.message"], "not_senders": ["@x:y, z"]})
            code, page = await client.request("GET", ("E", room), query={"dir": "b", "limit": 10,
                                                                         "filter": only_messages})  # fmt: skip
            assert code == coap.CONTENT and [e["type"] for e in page["chunk"]] == ["m.room.message"]
        finally:
            await client.close()
            relay.close()
        requests = [m for m in relay.messages("up") if m.is_request]
        # MSC3079: the full path went as its code, the token once per connection, the key table once.
        assert requests[0].path == ("0",)
        assert [m.opt(coap.OPT_AUTH) for m in requests].count(None) == len(requests) - 1
        assert requests[2].opt(coap.OPT_AUTH) == login["access_token"].encode()  # the first request after login
        assert requests[0].uint_opt(coap.OPT_CBOR_VERSION) == 1
        assert all(m.opt(coap.OPT_CBOR_VERSION) is None for m in requests[1:])
        send = next(m for m in requests if m.code == coap.PUT)
        assert send.path[0] == "9" and send.path[1] == room and send.uint_opt(coap.OPT_CONTENT_FORMAT) == 60
        # Bytes: every datagram either way counted, nothing else.
        assert client.bytes_out == sum(len(d) for direction, d in relay.log if direction == "up")
        assert client.bytes_in == sum(len(d) for direction, d in relay.log if direction == "down")


@in_loop
async def test_observe_sync_gets_a_confirmable_push_and_acknowledges_it(tmp_path: Path) -> None:
    port = free_udp_port()
    async with users_gateway(tmp_path, "alice", "bob", components={"coap": {"bind": f"127.0.0.1:{port}"}}) as (
        users,
        _,
        _,
    ):
        room = await new_room(users[0])
        status, _ = await users[1].request("POST", f"/_matrix/client/v3/join/{room}", {})
        assert status == 200
        relay = Relay(port)
        front = await relay.start()
        client = await CoapClient.connect(f"coap://127.0.0.1:{front}", timeout=20)
        try:
            await client.login("alice", "secret-pw")
            _, first = await client.sync(None, 0)
            client.keepalive_interval = 0.3  # while observing and otherwise silent: CoAP pings
            observation = client.observe_sync(first["next_batch"])
            registered = await asyncio.wait_for(observation.__anext__(), 20)
            assert timeline(registered, room) == []
            await asyncio.sleep(1.2)
            pings = {m.mid for m in relay.messages("up") if m.mtype == coap.CON and m.is_empty}
            assert len(pings) >= 2

            def pongs() -> set[int]:
                return {m.mid for m in relay.messages("down") if m.mtype == coap.RST}

            # the newest ping may still be on its way back when the pings are counted: each answered within 5 s
            await until(lambda: pings <= pongs(), timeout=5)
            status, _ = await users[1].request("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/b1",
                                               {"msgtype": "m.text", "body": "from http"})  # fmt: skip
            assert status == 200
            pushed = await asyncio.wait_for(observation.__anext__(), 20)
            assert [e["content"]["body"] for e in timeline(pushed, room)] == ["from http"]
            await observation.aclose()
        finally:
            await client.close()
            relay.close()
        notifications = [m for m in relay.messages("down") if m.is_response and m.observe]
        assert notifications and notifications[0].mtype == coap.CON  # MSC3079: pushes are confirmable
        acks = [m for m in relay.messages("up") if m.mtype == coap.ACK and m.is_empty]
        assert notifications[0].mid in {m.mid for m in acks}


@in_loop
async def test_blockwise_both_ways_with_small_blocks(tmp_path: Path) -> None:
    port = free_udp_port()
    async with users_gateway(tmp_path, "alice", components={"coap": {"bind": f"127.0.0.1:{port}"}}) as (users, _, _):
        room = await new_room(users[0])
        relay = Relay(port)
        front = await relay.start()
        client = await CoapClient.connect(f"coap://127.0.0.1:{front}", timeout=20, szx=2)  # 64-byte blocks
        try:
            await client.login("alice", "secret-pw")
            _, first = await client.sync(None, 0)
            long_text = "".join(f"{i:04d} " for i in range(300))  # 1,500 bytes: 24 blocks up
            code, _ = await client.send_text(room, long_text)
            assert code == coap.CHANGED
            code, later = await client.sync(first["next_batch"], 0)
            assert [e["content"]["body"] for e in timeline(later, room)] == [long_text]
        finally:
            await client.close()
            relay.close()
        up = relay.messages("up")
        block1 = [m.block1 for m in up if m.opt(coap.OPT_BLOCK1) is not None]
        assert len(block1) >= 1500 // 64 and [b.num for b in block1] == list(range(len(block1)))
        assert block1[-1] is not None and not block1[-1].more
        assert any(m.opt(coap.OPT_BLOCK2) is not None for m in up)  # the large sync answers came in blocks


@in_loop
async def test_a_lost_answer_retries_with_the_same_transaction_id(tmp_path: Path) -> None:
    port = free_udp_port()
    async with users_gateway(tmp_path, "alice", components={"coap": {"bind": f"127.0.0.1:{port}"}}) as (users, _, _):
        room = await new_room(users[0])
        relay = Relay(port)
        front = await relay.start()
        params = TransmissionParams(ack_timeout=0.3, max_retransmit=1)
        client = await CoapClient.connect(f"coap://127.0.0.1:{front}", timeout=5, params=params)
        try:
            await client.login("alice", "secret-pw")
            _, first = await client.sync(None, 0)
            dropped: list[bytes] = []

            def drop_first_answers(direction: str, data: bytes) -> bool:
                # Every answer to the first PUT attempt is lost: the client gives up on it, then tries again.
                if direction == "down" and len(dropped) < 3 and coap.parse(data).code == coap.CHANGED:
                    dropped.append(data)
                    return True
                return False

            relay.drop = drop_first_answers
            code, sent = await client.send_text(room, "exactly once")
            assert code == coap.CHANGED and dropped
            relay.drop = lambda direction, data: False
            code, later = await client.sync(first["next_batch"], 0)
            bodies = [e["content"]["body"] for e in timeline(later, room)]
            assert bodies == ["exactly once"] and timeline(later, room)[0]["event_id"] == sent["event_id"]
        finally:
            await client.close()
            relay.close()
        puts = [m for m in relay.messages("up") if m.code == coap.PUT]
        assert len({m.mid for m in puts}) >= 2  # more than one attempt (new message IDs) …
        assert len({m.path for m in puts}) == 1  # … all with the same transaction ID


# ------------------------------------------------------------------ Noise sessions and compact mode


async def provision(data_dir: Path, user: str, out: Path) -> None:
    proc = await asyncio.create_subprocess_exec(LOWBAND, "coap-client", "add", "phone", "--user", user, "--data-dir",
                                                str(data_dir), "--out", str(out), stdout=asyncio.subprocess.DEVNULL)  # fmt: skip
    assert await asyncio.wait_for(proc.wait(), 60) == 0


@in_loop
async def test_noise_session_with_compact_mode(tmp_path: Path) -> None:
    port = free_udp_port()
    coap_section = {"secure_bind": f"127.0.0.1:{port}"}
    async with users_gateway(tmp_path, "alice", components={"coap": coap_section}) as (users, _, _):
        room = await new_room(users[0])
        key = tmp_path / "phone.json"
        await provision(tmp_path / "data", "@alice:localhost", key)
        client = None
        deadline = time.monotonic() + 20
        while client is None:  # the listener picks the new client list up within a second or so
            try:
                client = await CoapClient.connect(f"coap://127.0.0.1:{port}", key_file=key, compact=True, timeout=2)
            except NoAnswer:
                assert time.monotonic() < deadline
        client.timeout = 20
        try:
            assert client.bytes_out == 50 and client.bytes_in == 50  # the two Noise KK handshake frames
            code, _ = await client.login("alice", "secret-pw")
            assert code == coap.CHANGED
            _, first = await client.sync(None, 0)
            assert room in first["rooms"]["join"]
            code, _ = await client.send_text(room, TEXT)
            assert code == coap.CHANGED
            assert sum(client.last_request) <= 60  # the target: request + answer, Noise frames included
            code, later = await client.sync(first["next_batch"], 0)
            events = timeline(later, room)
            assert [(e["sender"], e["content"]) for e in events] == [("@alice:localhost", {"msgtype": "m.text",
                                                                                          "body": TEXT})]  # fmt: skip
            out = client.bytes_out
            await client.keepalive()
            assert client.bytes_out - out == 11
        finally:
            await client.close()
        # The event is in the room as anyone else sees it.
        status, messages = await users[0].request("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5")
        assert status == 200 and any(e["content"].get("body") == TEXT for e in messages["chunk"])


# ------------------------------------------------------------------ errors


def test_urls() -> None:
    assert parse_url("coap://127.0.0.1:5684") == ("127.0.0.1", 5684)
    assert parse_url("coap://localhost/") == ("localhost", 5683)
    for bad in ("http://127.0.0.1:5683", "coap://", "coap://h:99999", "coap://h:5683/7", "127.0.0.1:5683"):
        with pytest.raises(BadUrl):
            parse_url(bad)


@in_loop
async def test_key_file_and_no_answer_errors(tmp_path: Path) -> None:
    not_a_key = tmp_path / "k.json"
    not_a_key.write_text('{"format": "something else"}')
    with pytest.raises(KeyFileError):
        await CoapClient.connect("coap://127.0.0.1:5684", key_file=not_a_key)
    with pytest.raises(KeyFileError):
        await CoapClient.connect("coap://127.0.0.1:5684", key_file=tmp_path / "missing.json")
    # Nothing listens: the port is closed (ICMP) or silent; either way NoAnswer, quickly.
    client = await CoapClient.connect(f"coap://127.0.0.1:{free_udp_port()}", timeout=2,
                                      params=TransmissionParams(ack_timeout=0.2, max_retransmit=1))  # fmt: skip
    started = time.monotonic()
    with pytest.raises(NoAnswer):
        await client.request("GET", "0")
    assert time.monotonic() - started < 5
    await client.close()


async def connect_when_provisioned(port: int, key: Path, *, compact: bool) -> CoapClient:
    deadline = time.monotonic() + 20
    while True:  # the listener picks a new client list up within a second or so
        try:
            client = await CoapClient.connect(f"coap://127.0.0.1:{port}", key_file=key, compact=compact, timeout=2)
        except NoAnswer:
            assert time.monotonic() < deadline
            continue
        client.timeout = 30
        return client


@pytest.mark.parametrize("compact", [False, True])
def test_after_a_gateway_restart_the_client_shakes_hands_again_and_resends_its_token(tmp_path: Path,
                                                                                     compact: bool) -> None:  # fmt: skip
    from harness import gateway_in_loop

    async def scenario() -> None:
        port = free_udp_port()
        section = {"coap": {"secure_bind": f"127.0.0.1:{port}"}}
        key = tmp_path / "phone.json"
        async with users_gateway(tmp_path, "alice", components=section) as (users, _, _):
            room = await new_room(users[0])
            await provision(tmp_path / "data", "@alice:localhost", key)
            client = await connect_when_provisioned(port, key, compact=compact)
            await client.login("alice", "secret-pw")
            code, first = await client.sync(None, 0)
            assert code == coap.CONTENT
            code, _ = await client.send_text(room, "before")
            assert code == coap.CHANGED
        # The gateway is gone and with it the session, the sticky token and compact mode's aliases.
        try:
            async with gateway_in_loop(tmp_path, components=section):
                code, sent = await client.send_text(room, "after")
                assert code == coap.CHANGED, sent
                # Compact mode's batch handles (next_batch "~n") belong to the lost session: start afresh there.
                code, later = await client.sync(None if compact else first["next_batch"], 0)
                assert code == coap.CONTENT
                bodies = [e["content"].get("body") for e in timeline(later, room)]
                assert bodies[-2:] == ["before", "after"] and bodies.count("after") == 1
        finally:
            await client.close()
        assert client.bytes_in >= 100  # two HS2 frames: a second handshake happened

    asyncio.run(asyncio.wait_for(scenario(), 120))


@in_loop
async def test_sends_over_a_lossy_path_arrive_exactly_once(tmp_path: Path) -> None:
    import random

    port = free_udp_port()
    async with users_gateway(tmp_path, "alice", components={"coap": {"bind": f"127.0.0.1:{port}"}}) as (users, _, _):
        room = await new_room(users[0])
        relay = Relay(port)
        front = await relay.start()
        params = TransmissionParams(ack_timeout=0.2, max_retransmit=4)
        client = await CoapClient.connect(f"coap://127.0.0.1:{front}", timeout=10, params=params)
        try:
            await client.login("alice", "secret-pw")
            _, first = await client.sync(None, 0)
            rng = random.Random(7)
            relay.drop = lambda direction, data: rng.random() < 0.4  # 40 % of datagrams lost, both ways
            for i in range(5):
                code, _ = await client.send_text(room, f"m{i}", attempts=6)
                assert code == coap.CHANGED
            relay.drop = lambda direction, data: False
            _, later = await client.sync(first["next_batch"], 0)
        finally:
            await client.close()
            relay.close()
        assert [e["content"]["body"] for e in timeline(later, room)] == [f"m{i}" for i in range(5)]
        puts = [m for m in relay.messages("up") if m.code == coap.PUT]
        assert len(puts) > 5  # retransmissions happened, and none made a second event


@in_loop
async def test_after_a_gateway_restart_a_plain_client_sends_its_token_again(tmp_path: Path) -> None:
    from harness import gateway_in_loop

    port = free_udp_port()
    section = {"coap": {"bind": f"127.0.0.1:{port}"}}
    async with users_gateway(tmp_path, "alice", components=section) as (users, _, _):
        room = await new_room(users[0])
        relay = Relay(port)
        front = await relay.start()
        client = await CoapClient.connect(f"coap://127.0.0.1:{front}", timeout=20)
        await client.login("alice", "secret-pw")
        code, _ = await client.sync(None, 0)
        assert code == coap.CONTENT
    try:
        # A new gateway process knows no peer: the token-less request is refused (4.01), then sent with it.
        async with gateway_in_loop(tmp_path, components=section):
            code, sent = await client.send_text(room, "after")
            assert code == coap.CHANGED, sent
    finally:
        await client.close()
        relay.close()
    puts = [m for m in relay.messages("up") if m.code == coap.PUT]
    assert [m.opt(coap.OPT_AUTH) is not None for m in puts] == [False, True]
    assert coap.UNAUTHORIZED in [m.code for m in relay.messages("down")]


@in_loop
async def test_compact_client_recovers_lost_definitions_and_forgotten_aliases(tmp_path: Path) -> None:
    port = free_udp_port()
    async with users_gateway(tmp_path, "alice", components={"coap": {"secure_bind": f"127.0.0.1:{port}"}}) as (
        users, _, _,
    ):  # fmt: skip
        room = await new_room(users[0])
        key = tmp_path / "phone.json"
        await provision(tmp_path / "data", "@alice:localhost", key)
        relay = Relay(port)
        front = await relay.start()
        client = await connect_when_provisioned(front, key, compact=True)
        # What the client sent and got back, as CoAP (the relay sees only Noise frames).
        wire: list[tuple[tuple[str, ...], int]] = []
        exchange = client._exchange

        async def recording(msg: coap.Message) -> coap.Message:
            answer = await exchange(msg)
            wire.append((msg.path, answer.code))
            return answer

        client._exchange = recording
        try:
            await client.login("alice", "secret-pw")
            assert client._compact.active
            # The first sync's answer (it defines the room, user and type aliases) never reaches the client,
            # nor do the gateway's repeats of it; the client gives up on it.
            relay.drop = lambda direction, data: direction == "down"
            client.timeout = 3
            with pytest.raises(NoAnswer):
                await client.sync(None, 0)
            await asyncio.sleep(0.5)  # a repeat still on its way is lost too
            relay.drop, client.timeout = (lambda direction, data: False), 30
            # The next request tells the gateway the definitions arrived (NSTART = 1): its answer has bare
            # alias numbers the client never saw defined; the client looks them up and ends with the full IDs.
            assert not [path for path, _ in wire if path[:1] == ("~",)]
            code, doc = await client.sync(None, 0)
            assert code == coap.CONTENT and list(doc["rooms"]["join"]) == [room]
            events = timeline(doc, room) + doc["rooms"]["join"][room].get("state", {}).get("events", [])
            assert events and all(e["sender"] == "@alice:localhost" for e in events)
            assert all(not e["type"].startswith("~") for e in events) and "m.room.create" in {e["type"] for e in events}
            lookups = [path for path, code in wire if path[:1] == ("~",) and code == coap.CONTENT]
            assert ("~", "r", "0") in lookups and ("~", "u", "0") in lookups
            assert not client._compact.unresolved
            # The room's alias is known now: a send uses it.
            code, _ = await client.send_text(room, "one", txn_id="a")
            assert code == coap.CHANGED and wire[-1][0] == ("9", "~0", "a")
            # The gateway forgot an alias the client uses (here: one it never gave): 4.04 unknown alias, the
            # client drops it and sends the request once more with the room ID in full.
            client._compact.forget("r", 0)
            client._compact.learn("r", 77, room)
            code, sent = await client.send_text(room, "two", txn_id="b")
            assert code == coap.CHANGED and sent["event_id"].startswith("~")
            assert wire[-2:] == [(("9", "~77", "b"), coap.NOT_FOUND), (("9", room, "b"), coap.CHANGED)]
            assert 77 not in client._compact.tables["r"]
        finally:
            await client.close()
            relay.close()
        status, messages = await users[0].request("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5")
        assert status == 200 and [e["content"].get("body") for e in messages["chunk"]][:2] == ["two", "one"]
