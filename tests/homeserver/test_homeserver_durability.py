"""Durability of a ``lowband serve`` subprocess: ``kill -9`` mid-stream, users added while running.

The contract under test (``gateway/store/sqlite/database.py``): a send is answered
only after its event is committed, so ``kill -9`` after an answer loses
nothing; and a transaction ID maps to one event, so a client that retries
every unanswered send with the same ID after the restart ends up with each
message exactly once.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from typing import Any

import aiohttp
import pytest
from harness import LOWBAND, Client, GatewayProcess, gateway_process

V3 = "/_matrix/client/v3"
WORKERS = 4
PER_WORKER = 75
# Bursts of sends would trip the default per-user limit, which is not what this is about.
NO_RATE_LIMITS = "[rate_limits]\nenabled = false\n"
_GONE = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class SendLog:
    """What the client saw of each transaction: when it started and what answered it."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.acked: dict[str, tuple[str, float]] = {}  # txn → (event_id, time of the 200)
        self.other: dict[str, tuple[int, Any]] = {}  # txn → an answer that was not a 200

    def txns(self) -> list[str]:
        return [txn_id(w, i) for w in range(WORKERS) for i in range(PER_WORKER)]


def txn_id(worker: int, index: int) -> str:
    return f"w{worker}-{index:03d}"


async def send_stream(client: Client, room: str, worker: int, log: SendLog) -> None:
    """One client task: its sends in order, each after the previous one was answered; stops when the server is gone."""
    for index in range(PER_WORKER):
        txn = txn_id(worker, index)
        log.started[txn] = time.monotonic()
        try:
            status, body = await client.request("PUT", f"{V3}/rooms/{room}/send/m.room.message/{txn}",
                                                {"msgtype": "m.text", "body": txn})  # fmt: skip
        except _GONE:
            return
        if status == 200:
            log.acked[txn] = (body["event_id"], time.monotonic())
        else:
            log.other[txn] = (status, body)
            return


async def read_history(client: Client, room: str) -> list[dict[str, Any]]:
    """The room's whole history, oldest first, following /messages ``end`` tokens backwards."""
    events: list[dict[str, Any]] = []
    token = ""
    for _ in range(100):
        status, page = await client.request("GET", f"{V3}/rooms/{room}/messages?dir=b&limit=64{token}")
        assert status == 200, page
        events += page["chunk"]
        if "end" not in page or not page["chunk"]:
            break
        token = f"&from={page['end']}"
    else:
        pytest.fail("pagination does not end")
    events.reverse()
    forward: list[dict[str, Any]] = []
    token = ""
    for _ in range(100):
        status, page = await client.request("GET", f"{V3}/rooms/{room}/messages?dir=f&limit=100{token}")
        assert status == 200, page
        forward += page["chunk"]
        if "end" not in page or not page["chunk"]:
            break
        token = f"&from={page['end']}"
    assert [e["event_id"] for e in forward] == [e["event_id"] for e in events], "the two directions disagree"
    return events


@pytest.mark.parametrize("seed", [7, 20241126])
def test_kill_9_during_sends_loses_no_acknowledged_event_and_duplicates_none(tmp_path, seed):
    rng = random.Random(seed)
    kill_after_acks = rng.randrange(40, 160)
    extra_delay = rng.uniform(0.0, 0.03)
    gateway = GatewayProcess(tmp_path / "data", config=NO_RATE_LIMITS)
    gateway.start()
    log = SendLog()
    try:

        async def before_kill() -> tuple[str, str]:
            async with aiohttp.ClientSession() as session:
                client = Client(session, gateway.url)
                await client.register("writer")
                status, body = await client.request("POST", f"{V3}/createRoom", {"name": "stream"})
                assert status == 200, body
                room = body["room_id"]
                streams = [asyncio.create_task(send_stream(client, room, w, log)) for w in range(WORKERS)]
                while len(log.acked) < kill_after_acks and not all(s.done() for s in streams):
                    await asyncio.sleep(0.001)
                await asyncio.sleep(extra_delay)
                gateway.kill()
                await asyncio.wait_for(asyncio.gather(*streams), 30)
                assert client.token is not None
                return room, client.token

        room, token = asyncio.run(before_kill())
        assert log.other == {}, log.other  # before the kill every answer was a 200
        unanswered = [t for t in log.txns() if t not in log.acked]
        assert len(log.acked) >= kill_after_acks and unanswered, "the kill did not land in the middle of the stream"

        gateway.start()

        async def after_restart() -> tuple[dict[str, str], list[dict[str, Any]]]:
            async with aiohttp.ClientSession() as session:
                client = Client(session, gateway.url, token=token)  # same token, so same device and txn scope
                retried: dict[str, str] = {}

                async def retry(worker: int) -> None:
                    for txn in [t for t in unanswered if t.startswith(f"w{worker}-")]:
                        status, body = await client.request("PUT", f"{V3}/rooms/{room}/send/m.room.message/{txn}",
                                                            {"msgtype": "m.text", "body": txn})  # fmt: skip
                        assert status == 200, (txn, status, body)
                        retried[txn] = body["event_id"]

                await asyncio.gather(*(retry(w) for w in range(WORKERS)))
                return retried, await read_history(client, room)

        retried, history = asyncio.run(after_restart())
    finally:
        gateway.stop()

    messages = [e for e in history if e["type"] == "m.room.message"]
    position = {e["event_id"]: n for n, e in enumerate(history)}
    body_of = {e["event_id"]: e["content"]["body"] for e in messages}
    # Every acknowledged event survived the kill, with its own content.
    for txn, (event_id, _) in log.acked.items():
        assert body_of.get(event_id) == txn, (txn, event_id)
    # Every retried transaction produced (or found) exactly one event.
    for txn, event_id in retried.items():
        assert body_of.get(event_id) == txn, (txn, event_id)
    counts: dict[str, int] = {}
    for event in messages:
        counts[event["content"]["body"]] = counts.get(event["content"]["body"], 0) + 1
    assert sorted(counts) == sorted(log.txns()), "some messages are missing or unexpected"
    duplicated = {body: n for body, n in counts.items() if n != 1}
    assert duplicated == {}, duplicated
    assert len(set(position)) == len(history)
    # Order: each worker's messages in the order it sent them ...
    for worker in range(WORKERS):
        mine = [e["content"]["body"] for e in messages if e["content"]["body"].startswith(f"w{worker}-")]
        indices = [int(body.split("-")[1]) for body in mine]
        assert indices == sorted(indices) == list(range(PER_WORKER)), worker
    # ... and across workers: a send answered before another one started comes first.
    acked = sorted(log.acked.items(), key=lambda item: item[1][1])
    for txn, (event_id, answered_at) in acked:
        for other, (other_id, _) in log.acked.items():
            if log.started[other] > answered_at:
                assert position[event_id] < position[other_id], (txn, other)
    assert history[0]["type"] == "m.room.create"


def test_kill_9_during_state_changes_keeps_the_current_state_consistent_with_history(tmp_path):
    rng = random.Random(99)
    kill_after_acks = rng.randrange(30, 90)
    gateway = GatewayProcess(tmp_path / "data", config=NO_RATE_LIMITS)
    gateway.start()
    acked: dict[str, str] = {}  # topic → event_id
    try:

        async def before_kill() -> tuple[str, str]:
            async with aiohttp.ClientSession() as session:
                client = Client(session, gateway.url)
                await client.register("writer")
                status, body = await client.request("POST", f"{V3}/createRoom", {"topic": "start"})
                assert status == 200, body
                room = body["room_id"]

                async def topics(worker: int) -> None:
                    for index in range(60):
                        topic = txn_id(worker, index)
                        try:
                            status, body = await client.request("PUT", f"{V3}/rooms/{room}/state/m.room.topic",
                                                                {"topic": topic})  # fmt: skip
                        except _GONE:
                            return
                        assert status == 200, body
                        acked[topic] = body["event_id"]

                streams = [asyncio.create_task(topics(w)) for w in range(3)]
                while len(acked) < kill_after_acks and not all(s.done() for s in streams):
                    await asyncio.sleep(0.001)
                gateway.kill()
                await asyncio.wait_for(asyncio.gather(*streams), 30)
                assert client.token is not None
                return room, client.token

        room, token = asyncio.run(before_kill())
        assert kill_after_acks <= len(acked) < 180, "the kill did not land in the middle of the stream"
        gateway.start()

        async def after_restart() -> None:
            async with aiohttp.ClientSession() as session:
                client = Client(session, gateway.url, token=token)
                history = await read_history(client, room)
                changes = [e for e in history if e["type"] == "m.room.topic"]
                ids = {e["event_id"] for e in changes}
                assert all(event_id in ids for event_id in acked.values())
                last = changes[-1]
                status, current = await client.request("GET", f"{V3}/rooms/{room}/state/m.room.topic")
                assert (status, current) == (200, last["content"])
                status, initial = await client.request("GET", f"{V3}/sync")
                joined = initial["rooms"]["join"][room]
                seen = [e for e in joined["state"]["events"] + joined["timeline"]["events"] if e["type"] == "m.room.topic"]
                assert seen[-1]["event_id"] == last["event_id"]
                # The room goes on from where the log ends.
                status, body = await client.request("PUT", f"{V3}/rooms/{room}/state/m.room.topic", {"topic": "after"})
                assert status == 200, body
                status, current = await client.request("GET", f"{V3}/rooms/{room}/state/m.room.topic")
                assert current == {"topic": "after"}
                again = await read_history(client, room)
                assert [e["event_id"] for e in again[:-1]] == [e["event_id"] for e in history]

        asyncio.run(after_restart())
    finally:
        gateway.stop()


def test_a_user_added_while_the_gateway_runs_can_log_in_at_once(tmp_path):
    with gateway_process(tmp_path) as gateway:

        def user_add(name: str, password: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([LOWBAND, "user", "add", name, "--password", password, "--data-dir",
                                   str(gateway.data_dir)], capture_output=True, text=True, timeout=60)  # fmt: skip

        async def scenario() -> None:
            async with aiohttp.ClientSession() as session:
                anonymous = Client(session, gateway.url)
                login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "dora"},
                         "password": "dora-pw"}  # fmt: skip
                status, body = await anonymous.request("POST", f"{V3}/login", login)
                assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
                # The running gateway keeps working while the command writes to its database.
                writer = Client(session, gateway.url)
                await writer.register("writer")
                status, body = await writer.request("POST", f"{V3}/createRoom", {"name": "busy"})
                assert status == 200, body
                room = body["room_id"]
                result = await asyncio.to_thread(user_add, "dora", "dora-pw")
                assert result.returncode == 0 and result.stdout.strip() == "created @dora:localhost", result
                status, body = await anonymous.request("POST", f"{V3}/login", login)
                assert status == 200 and body["user_id"] == "@dora:localhost", body
                dora = Client(session, gateway.url, token=body["access_token"])
                status, body = await dora.request("GET", f"{V3}/account/whoami")
                assert (status, body.get("user_id")) == (200, "@dora:localhost"), body
                # Dora is a full user: she can be invited and talk.
                status, body = await writer.request("POST", f"{V3}/rooms/{room}/invite", {"user_id": "@dora:localhost"})
                assert status == 200, body
                status, body = await dora.request("POST", f"{V3}/join/{room}", {})
                assert status == 200, body
                status, body = await dora.request("PUT", f"{V3}/rooms/{room}/send/m.room.message/d1", {"body": "hi"})
                assert status == 200, body
                # Adding her again fails cleanly and changes nothing.
                again = await asyncio.to_thread(user_add, "dora", "other-pw")
                assert again.returncode == 2 and "already exists" in again.stderr, again
                status, _ = await anonymous.request("POST", f"{V3}/login", login)
                assert status == 200
                # The full user ID form works too, and a bad name is refused.
                result = await asyncio.to_thread(user_add, "@eve:localhost", "eve-pw")
                assert result.returncode == 0, result
                bad = await asyncio.to_thread(user_add, "Eve!", "pw")
                assert bad.returncode == 2, bad
                eve = {**login, "identifier": {"type": "m.id.user", "user": "@eve:localhost"}, "password": "eve-pw"}
                status, body = await anonymous.request("POST", f"{V3}/login", eve)
                assert status == 200 and body["user_id"] == "@eve:localhost", body

        asyncio.run(scenario())
