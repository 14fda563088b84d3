"""The CoAP API over a lossy slow link (issue 16 acceptance): 100 bps, 4 s latency, 40 % frame loss each way.

Simulated time (sim/coap_peer.py, sim/link_model.py): nothing sleeps, a run of
hours of line time takes seconds. The client is the same set of cores a
laptop with a serial radio runs (Noise session, CoAP message layer, compact
mode); the gateway's side is the REAL ``SecureServer`` a serial line runs
(gateway/coap/link_transport.py) in front of the REAL ``mapping.Gateway`` of
an in-process gateway (tests/harness.py), so every request goes through the
gateway's CoAP request path, HTTP handlers and store. Time stands still
while the gateway serves a request.

What must hold, and what each part guards:

* every send is in the room exactly once — CoAP deduplication answers a
  retransmitted request from its table (it never reaches the API again),
  and a request the message layer gave up on goes again under the same
  transaction ID, which the API turns back into the first event;
* a sync resumes after a 10-minute outage (both directions dead) and
  brings every message sent meanwhile, none twice.

Checked by hand once (see the report): with the client's retry under a new
transaction ID the room holds duplicates; with ``Limits(dedup=0)`` on the
gateway a retransmission reaches the API twice.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from harness import expect, users_gateway

from lowband.codecs import coap
from lowband.gateway.coap import clients
from lowband.gateway.coap.mapping import Gateway
from lowband.gateway.coap.secure_core import SecureClient, SecureListener
from lowband.gateway.devices.keys import public_from_private
from lowband.gateway.devices.registry import load_or_create_link_key
from lowband.gateway.homeserver.services import HTTP_SERVER
from lowband.sim.coap_peer import LinkCoapClient, LinkGatewaySide, SimRun, SimSerialLine, link_params
from lowband.sim.link_model import B, LinkModel

BPS, LATENCY, LOSS = 100, 4.0, 0.4
SEED = 7
OUTAGE_S = 600.0


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 240))


async def _setup(tmp_path: Path, users: list[Any], services: Any, *, seed: int, compact_mode: bool = True,
                 **gateway_options: Any) -> tuple[SimRun, LinkCoapClient, LinkGatewaySide]:  # fmt: skip
    data_dir = Path(services.config.data_dir)
    record, private = clients.add_client(data_dir, "laptop", users[0].user_id)
    gateway_key = load_or_create_link_key(data_dir / "link.key")
    listener = SecureListener(gateway_key, max_datagram=255)
    listener.set_clients([record.entry()])
    params = link_params(BPS, latency=LATENCY)
    api = Gateway(services, services.components[HTTP_SERVER])
    gateway = LinkGatewaySide(listener, api, params, rng=random.Random(seed + 1), **gateway_options)
    secure = SecureClient(private, public_from_private(gateway_key), record.address, epoch=0)
    client = LinkCoapClient(secure, params, compact_mode=compact_mode, rng=random.Random(seed + 2))
    line = SimSerialLine(LinkModel(BPS, latency=LATENCY, frame_loss=LOSS, seed=seed))
    return SimRun(client, gateway, line), client, gateway


async def _room(users: list[Any]) -> str:
    room = expect(await users[0].request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}), 200)
    room_id: str = room["room_id"]
    for other in users[1:]:
        expect(await other.request("POST", f"/_matrix/client/v3/join/{room_id}", {}), 200)
    return room_id


async def _bodies(user: Any, room_id: str) -> list[str]:
    """Every m.room.message body in the room, oldest first, read over HTTP."""
    answer = expect(await user.request("GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=f&limit=1000"), 200)
    return [e["content"]["body"] for e in answer["chunk"] if e["type"] == "m.room.message"]


def _timeline(sync: Any, room_id: str) -> list[dict[str, Any]]:
    room = ((sync or {}).get("rooms") or {}).get("join", {}).get(room_id) or {}
    return list((room.get("timeline") or {}).get("events") or [])


async def _sends(tmp_path: Path, *, dedup: bool = True, compact_mode: bool = True) -> dict[str, Any]:
    from lowband.gateway.coap.messaging import Limits

    async with users_gateway(tmp_path, "alice") as (users, services, _):
        room_id = await _room(users)
        options: dict[str, Any] = {} if dedup else {"limits": Limits(dedup=0)}
        sim, client, gateway = await _setup(tmp_path, users, services, seed=SEED, compact_mode=compact_mode, **options)
        login = client.login("alice", "secret-pw")
        assert await sim.until(lambda: login.done, 3600)
        assert not login.failed and login.code == coap.CHANGED, login.result
        first = client.sync()  # as a client starts: it learns the room (and its compact alias)
        assert await sim.until(lambda: first.done, sim.now + 12 * 3600)
        assert first.code == coap.CONTENT, first.result
        ops = []
        for i in range(20):
            txn = f"t{i}"
            op = client.send_text(room_id, f"message {i}", txn, attempts=6)
            assert await sim.until(lambda op=op: op.done, sim.now + 6 * 3600)
            ops.append(op)
        return {"ops": ops, "bodies": await _bodies(users[0], room_id), "served": gateway.served,
                "client": client, "sim": sim, "gateway": gateway}  # fmt: skip


@pytest.mark.parametrize("compact_mode", [True, False], ids=["compact", "msc3079"])
def test_twenty_sends_over_a_lossy_100_bps_line_are_each_in_the_room_once(tmp_path: Path, compact_mode: bool) -> None:
    found = run(_sends(tmp_path, compact_mode=compact_mode))
    ops, bodies, served, client = found["ops"], found["bodies"], found["served"], found["client"]
    assert all(not op.failed and op.code == coap.CHANGED for op in ops), [(op.code, op.result) for op in ops]
    assert Counter(bodies) == Counter(f"message {i}" for i in range(20)), bodies
    # The sends' answers name the event each one made: twenty distinct events.
    assert len({op.result["event_id"] for op in ops}) == 20
    # Deduplication: no CoAP message (address, message ID) reached the API twice.
    keys = [(s.address, s.mid) for s in served]
    assert len(keys) == len(set(keys))
    # The run did exercise what it guards: CoAP retransmissions, duplicates answered from the table, and
    # sends given up by the message layer and tried again (some of which had reached the gateway).
    gw_endpoint = found["gateway"].endpoint(served[0].address)
    assert client.endpoint.counters["retransmissions"] > 0
    assert gw_endpoint.counters["duplicates"] > 0
    assert client.counters["retries"] > 0
    served_sends = Counter(s.path[-1] for s in served if s.method == "PUT")
    assert max(served_sends.values()) > 1  # a txn the API saw twice: only the transaction ID kept it single
    # Simulated time only: the line was slow (hours of line time) and the run is fast.
    assert found["sim"].now > 20 * 10


def test_a_retry_under_a_new_transaction_id_would_duplicate(tmp_path: Path) -> None:
    """The control: the same run, but each client-level retry names a new transaction ID: duplicates appear.

    This shows the test above can fail; the transaction ID is what keeps a retried send single.
    """

    async def scenario() -> tuple[list[str], int]:
        async with users_gateway(tmp_path, "alice") as (users, services, _):
            room_id = await _room(users)
            sim, client, _ = await _setup(tmp_path, users, services, seed=SEED)
            login = client.login("alice", "secret-pw")
            assert await sim.until(lambda: login.done, 6 * 3600)
            for i in range(20):
                op = client.send_text(room_id, f"message {i}", f"t{i}", attempts=1)
                assert await sim.until(lambda op=op: op.done, sim.now + 6 * 3600)
                tries = 1
                while op.failed and tries < 6:  # the naive retry: a new request with a new transaction ID
                    tries += 1
                    op = client.send_text(room_id, f"message {i}", f"t{i}.{tries}", attempts=1)
                    assert await sim.until(lambda op=op: op.done, sim.now + 6 * 3600)
            return await _bodies(users[0], room_id), client.counters["failed"]

    bodies, failed = run(scenario())
    assert failed > 0
    assert len(bodies) > 20 and len(set(bodies)) == 20  # some message is in the room twice


def test_sync_resumes_after_a_ten_minute_outage_without_loss(tmp_path: Path) -> None:
    async def say(user: Any, room_id: str, txn: str, body: str) -> None:
        expect(await user.request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}",
                                  {"msgtype": "m.text", "body": body}), 200)  # fmt: skip

    async def scenario() -> dict[str, Any]:
        async with users_gateway(tmp_path, "alice", "bob") as (users, services, _):
            room_id = await _room(users)
            sim, client, _ = await _setup(tmp_path, users, services, seed=SEED + 1)
            login = client.login("alice", "secret-pw")
            assert await sim.until(lambda: login.done, 6 * 3600)
            first = client.sync()
            assert await sim.until(lambda: first.done, sim.now + 12 * 3600)
            assert first.code == coap.CONTENT, first.result
            seen: list[dict[str, Any]] = []
            await say(users[1], room_id, "b0", "before 0")
            before = client.sync(first.result["next_batch"])
            assert await sim.until(lambda: before.done, sim.now + 12 * 3600)
            seen += _timeline(before.result, room_id)
            since = before.result["next_batch"]
            # The line dies both ways for ten minutes. The client asks for news 20 s in (its request is
            # retransmitted into the dead line, then tried again); Bob speaks six times meanwhile.
            start = sim.now + 10
            sim.line.outage(start, start + OUTAGE_S)
            await sim.run_to(start + 20)
            resumed = client.sync(since)
            for i in range(6):
                await sim.run_to(start + 60 * (i + 1))
                await say(users[1], room_id, f"d{i}", f"during {i}")
            assert await sim.until(lambda: resumed.done, sim.now + 12 * 3600)
            assert not resumed.failed and resumed.code == coap.CONTENT, resumed.result
            seen += _timeline(resumed.result, room_id)
            # One more sync from where it left off: nothing new, nothing again.
            after = client.sync(resumed.result["next_batch"])
            assert await sim.until(lambda: after.done, sim.now + 12 * 3600)
            seen += _timeline(after.result, room_id)
            return {"seen": seen, "sim": sim, "start": start, "resumed": resumed}

    found = run(scenario())
    bodies = [e["content"]["body"] for e in found["seen"] if e["type"] == "m.room.message"]
    assert bodies == ["before 0", *[f"during {i}" for i in range(6)]], bodies
    assert len({e["event_id"] for e in found["seen"]}) == len(found["seen"])  # nothing twice
    resumed = found["resumed"]
    # The request made during the outage is the one that brought the news, after the line came back.
    assert resumed.started < found["start"] + OUTAGE_S < resumed.finished
    assert found["sim"].line.lost_in_outage > 0  # it did try during the outage


def test_compact_aliases_defined_in_a_lost_answer_are_looked_up(tmp_path: Path) -> None:
    """A sync answer is lost every time the message layer sends the request (the downlink is dead until it
    gives up); the client sends it again as a new CoAP message, and the gateway, taking that as proof that
    the definitions arrived, answers with bare aliases. The client looks them up (GET ~/{kind}/{n}) and
    decodes the answer with the full IDs."""

    async def scenario() -> dict[str, Any]:
        async with users_gateway(tmp_path, "alice", "bob") as (users, services, _):
            room_id = await _room(users)
            expect(await users[1].request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/b0",
                                          {"msgtype": "m.text", "body": "hello from bob"}), 200)  # fmt: skip
            sim, client, gateway = await _setup(tmp_path, users, services, seed=SEED)
            sim.line.model.frame_loss = 0.0  # only the outage below loses anything
            login = client.login("alice", "secret-pw")
            assert await sim.until(lambda: login.done, 6 * 3600)
            first = client.sync()
            assert await sim.until(lambda: any(s.path == ("7",) for s in gateway.served), sim.now + 3600)
            sim.line.outage(sim.now, sim.now + client.params.max_transmit_wait + 60, senders=(B,))
            assert await sim.until(lambda: first.done, sim.now + 12 * 3600)
            return {"first": first, "client": client, "served": gateway.served, "room_id": room_id}

    found = run(scenario())
    first, client, room_id = found["first"], found["client"], found["room_id"]
    assert first.code == coap.CONTENT and not first.failed
    assert [s.path for s in found["served"]].count(("7",)) == 2  # served twice: the first answer never arrived
    assert client.counters["lookups"] > 0
    assert any(s.path[0] == "~" for s in found["served"])
    events = _timeline(first.result, room_id)  # the room ID itself resolved: the room is found by its full ID
    message = next(e for e in events if e["type"] == "m.room.message")
    assert message["sender"] == "@bob:localhost" and message["content"]["body"] == "hello from bob"
    assert all(not e["sender"].startswith("~") and not e["type"].startswith("~") for e in events)
