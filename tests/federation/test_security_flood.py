"""Security: a peer that floods the gateway with transactions, or sends oversized or endless ones, costs bounded work
and memory, and the server keeps serving.

While the hostile peer attacks, a prober (its own connection) asks
``/versions`` and sends as a local user into the attacked room, and the
test asserts it was answered in good time.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Self

import aiohttp
import pytest
from fed_harness import fed_gateway
from harness import Client
from hostile_peer import Gateway, HostilePeer, attacked_gateway, http_session, local_user, public_room, q

from lowband.gateway.api.http.federation_base import MAX_FEDERATION_BODY
from lowband.gateway.federation.inbound.pipeline import MAX_EDUS, MAX_PDUS, MAX_WAITING_TRANSACTIONS
from lowband.gateway.matrix.request_auth import authorization_header

SLOWEST_OK_S = 5.0  # generous: a probe answered within this while the gateway is under attack


class Prober:
    """Keeps asking ``/versions`` and sending as a local user, over its own connection; the slowest answers."""

    def __init__(self, alice: Client, room_id: str) -> None:
        self.alice, self.room_id = alice, room_id
        self.slowest = {"versions": 0.0, "send": 0.0}
        self.count = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        async with http_session(limit=2) as session:
            client = Client(session, self.alice.base, self.alice.token)
            while True:
                for name, method, path, body in (
                    ("versions", "GET", "/_matrix/client/versions", None),
                    ("send", "PUT", (f"/_matrix/client/v3/rooms/{q(self.room_id)}/send/m.room.message/"
                                     f"p{time.monotonic_ns()}"), {"msgtype": "m.text", "body": "probe"}),
                ):  # fmt: skip
                    started = time.monotonic()
                    status, answer = await client.request(method, path, body)
                    assert status == 200, answer
                    self.slowest[name] = max(self.slowest[name], time.monotonic() - started)
                self.count += 1
                await asyncio.sleep(0.05)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # a failed probe fails the test
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def two_more(self) -> None:
        """Wait until two more rounds got through (the gateway still serves after an attack)."""
        target = self.count + 2
        await _until(lambda: self.count >= target)

    def check(self, limit: float = SLOWEST_OK_S) -> None:
        assert self.count >= 2, "the prober never got through"
        assert max(self.slowest.values()) < limit, self.slowest


async def _until(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def test_a_flood_of_200_parallel_transactions_is_refused_beyond_one_waiting_and_nothing_is_lost(tmp_path):
    async def main():
        async with HostilePeer(tmp_path, "evil.test") as peer, \
                attacked_gateway(tmp_path, peers={"evil.test": peer.address}) as gw, \
                http_session(limit=300) as session:  # fmt: skip
            alice = await local_user(session, gw, "alice")
            room_id = await public_room(alice)
            join = await peer.join(session, gw, room_id)
            # the first transaction's PDU cites an event the gateway lacks; the peer holds its answer back
            asked, release = asyncio.Event(), asyncio.Event()
            honest = peer._honest

            async def held_back(request):
                asked.set()
                await asyncio.wait_for(release.wait(), 60)
                return await honest("get_missing_events", request, [])

            peer.overrides["get_missing_events"] = held_back
            hidden = peer.message("not sent, fetched")
            first = peer.message("the first transaction", prev=[hidden])
            first_answer = asyncio.create_task(peer.send(session, gw, [first], txn_id="first"))
            await asyncio.wait_for(asked.wait(), 30)

            batches = [[peer.message(f"flood {t}.{i}", prev=[join]) for i in range(10)] for t in range(199)]
            async with Prober(alice, room_id) as prober:
                flood = [asyncio.create_task(peer.send(session, gw, batch, txn_id=f"flood{t}"))
                         for t, batch in enumerate(batches)]  # fmt: skip
                waiting = len(batches) - MAX_WAITING_TRANSACTIONS
                await _until(lambda: sum(t.done() for t in flood) >= waiting)
                await asyncio.sleep(0.5)  # the prober keeps sending into the room meanwhile
            prober.check()
            answered = [t.result() for t in flood if t.done()]
            assert len(answered) == waiting and all(status == 429 for status, _ in answered), answered[:3]
            assert all(body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0 for _, body in answered)
            assert peer.hits["get_missing_events"] == 1

            release.set()
            assert (await asyncio.wait_for(first_answer, 30)) == (200, {"pdus": {first.event_id: {}}})
            await asyncio.wait_for(asyncio.gather(*flood), 30)
            # an honest sender retries what was refused, one transaction at a time: nothing is lost
            for t, task in enumerate(flood):
                if task.result()[0] == 429:
                    status, answer = await peer.send(session, gw, batches[t], txn_id=f"flood{t}")
                    assert status == 200 and not any(answer["pdus"].values()), answer
            dag = gw.federation.dag
            for event in [hidden, first, *(e for batch in batches for e in batch)]:
                known = dag.known(event.event_id)
                assert known is not None and not known.outlier and known.rejected is None, event.event_id

    asyncio.run(asyncio.wait_for(main(), 300))


def test_oversized_and_malformed_transactions_are_refused_and_the_server_keeps_serving(tmp_path):
    async def main():
        async with HostilePeer(tmp_path, "evil.test") as peer, \
                attacked_gateway(tmp_path, peers={"evil.test": peer.address}) as gw, http_session() as session:  # fmt: skip
            alice = await local_user(session, gw, "alice")
            room_id = await public_room(alice)
            await peer.join(session, gw, room_id)
            typing = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": peer.user(), "typing": True}}
            status, answer = await peer.send(session, gw, [peer.message(f"m{i}", keep=False) for i in range(MAX_PDUS + 1)])
            assert (status, answer["errcode"]) == (400, "M_BAD_JSON"), answer
            status, answer = await peer.send(session, gw, edus=[typing] * (MAX_EDUS + 1))
            assert (status, answer["errcode"]) == (400, "M_BAD_JSON"), answer
            # the largest allowed transaction is taken
            status, answer = await peer.send(session, gw, [peer.message(f"m{i}", keep=False) for i in range(MAX_PDUS)],
                                             edus=[typing] * MAX_EDUS)  # fmt: skip
            assert status == 200 and len(answer["pdus"]) == MAX_PDUS and not any(answer["pdus"].values()), answer

            # 9 MiB, announced: refused before it is read (the peer stops sending at once)
            nine = {"origin": peer.name, "pdus": [], "edus": [], "padding": "x" * (9 * 1024 * 1024)}
            raw = json.dumps(nine).encode()
            status, answer = await peer.call(session, gw, "PUT", "/_matrix/federation/v1/send/big", nine, raw=raw)
            assert (status, answer["errcode"]) == (413, "M_TOO_LARGE"), answer

            # 9 MiB, chunked (no length announced): refused once the limit is passed
            async def chunks():
                for start in range(0, len(raw), 256 * 1024):
                    yield raw[start:start + 256 * 1024]

            signed = authorization_header("PUT", "/_matrix/federation/v1/send/chunked", peer.name, gw.server_name,
                                          peer.key, nine)  # fmt: skip
            async with session.put(gw.url + "/_matrix/federation/v1/send/chunked", data=chunks(),
                                   headers={"Authorization": signed, "Content-Type": "application/json"},
                                   timeout=aiohttp.ClientTimeout(total=60)) as response:  # fmt: skip
                assert response.status == 413, await response.text()

            # a PDU over 64 KiB is dropped with the reason; the others of its transaction are taken
            huge = copy.deepcopy(peer.message("huge", keep=False).pdu)
            huge["content"]["body"] = "x" * 70_000
            small = peer.message("small", keep=False)
            status, answer = await peer.send(session, gw, [huge, small])
            assert status == 200 and answer["pdus"].pop(small.event_id) == {}, answer
            [refused] = answer["pdus"].values()
            assert "at most 65536" in refused["error"], answer

            # not JSON, JSON nested a million deep, a transaction that is not an object
            for body in (b"{not json", b"[" * 1_000_000 + b"]" * 1_000_000, b"[1, 2]", b'{"pdus": {}}'):
                status, answer = await peer.call(session, gw, "PUT", f"/_matrix/federation/v1/send/t{len(body)}",
                                                 raw=body, signed_content=None)  # fmt: skip
                assert status in (400, 401), (body[:20], answer)
            status, _ = await alice.request("GET", "/_matrix/client/versions")
            assert status == 200

    asyncio.run(asyncio.wait_for(main(), 120))


def _memory_mib(pid: int, field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the peak so far) of a process, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.slow
def test_a_flood_of_large_transactions_costs_bounded_memory(tmp_path):
    """100 connections each send a 7.5 MiB transaction at once; the gateway (its own process) holds a few at a time."""
    peer = HostilePeer(tmp_path, "evil.test")
    process = fed_gateway(tmp_path, "gw", extra_args=["--peer", f"evil.test={peer.address}"])

    async def main():
        async with peer, http_session(limit=200) as session:
            gw = Gateway(process.url, process.server_name, None)
            alice = await local_user(session, gw, "alice")
            room_id = await public_room(alice)
            await peer.join(session, gw, room_id)
            edus = [{"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": peer.user(), "typing": True,
                                                         "padding": "x" * 78_000}} for _ in range(MAX_EDUS)]  # fmt: skip
            body = {"origin": peer.name, "origin_server_ts": 1, "pdus": [], "edus": edus}
            raw = json.dumps(body).encode()
            assert 7 * 1024 * 1024 < len(raw) < MAX_FEDERATION_BODY
            paths = [f"/_matrix/federation/v1/send/big{t}" for t in range(100)]
            headers = [authorization_header("PUT", path, peer.name, gw.server_name, peer.key, body) for path in paths]
            base = _memory_mib(process.proc.pid, "VmRSS")
            async with Prober(alice, room_id) as prober:
                answers = await asyncio.gather(*(peer.call(session, gw, "PUT", path, raw=raw, authorization=header)
                                                 for path, header in zip(paths, headers, strict=True)))  # fmt: skip
            grown = _memory_mib(process.proc.pid, "VmHWM") - base
            statuses = [status for status, _ in answers]
            print(f"peak growth {grown:.0f} MiB, statuses {sorted(set(statuses))}, slowest probes {prober.slowest}")
            assert set(statuses) <= {200, 429} and 200 in statuses
            # 100 bodies held at once would be 750 MiB of bytes alone, more parsed
            assert grown < 300, f"the gateway grew by {grown:.0f} MiB"
            # Parsing and canonically encoding 7.5 MiB bodies holds the interpreter lock for long stretches, which
            # the store's writer thread waits for: local sends slow to seconds (measured 2-8 s on 2 busy cores).
            prober.check(limit=3 * SLOWEST_OK_S)

    with process:
        asyncio.run(asyncio.wait_for(main(), 300))
