"""Legacy endpoints bots still call: POST send without a transaction ID, the /events stream, /initialSync and
/rooms/{id}/initialSync; and /thirdparty/protocols without bridges."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from harness import Client, expect, users_gateway

from lowband.gateway.api.http import client_legacy
from lowband.gateway.config import RateLimits

V3 = "/_matrix/client/v3"
R0 = "/_matrix/client/r0"


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, *names: str) -> AsyncIterator[list[Client]]:
    """A gateway and one registered client per name."""
    async with users_gateway(tmp_path, *names, rate_limits=RateLimits(enabled=False)) as (clients, _, _):
        yield clients


async def post_send(client: Client, room: str, body: str) -> str:
    path = f"{R0}/rooms/{quote(room)}/send/m.room.message"
    return str(expect(await client.request("POST", path, {"msgtype": "m.text", "body": body}), 200)["event_id"])


def test_send_without_txn_and_event_stream(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bot") as (alice, bot):
            room = str(expect(await alice.request("POST", V3 + "/createRoom", {"preset": "private_chat"}), 200)[
                "room_id"])
            start = expect(await bot.request("GET", R0 + "/events?timeout=0"), 200)
            assert start["chunk"] == [] and start["end"].startswith("s")
            # the invite reaches the bot through the stream
            expect(await alice.request("POST", f"{V3}/rooms/{quote(room)}/invite", {"user_id": bot.user_id}), 200)
            invited = expect(await bot.request("GET", f"{R0}/events?timeout=5000&from={start['end']}"), 200)
            assert [(e["type"], e["content"]["membership"]) for e in invited["chunk"]] == [("m.room.member", "invite")]
            expect(await bot.request("POST", f"{V3}/join/{quote(room)}", {}), 200)
            joined = expect(await bot.request("GET", f"{R0}/events?timeout=0&from={invited['end']}"), 200)
            position = joined["end"]

            # a long poll wakes on a message, sent twice without a txn ID: two events
            poll = asyncio.create_task(bot.request("GET", f"{R0}/events?timeout=10000&from={position}"))
            await asyncio.sleep(0.2)
            first = await post_send(alice, room, "hello bot")
            got = expect(await asyncio.wait_for(poll, 10), 200)
            assert first in [e["event_id"] for e in got["chunk"]]
            assert all(e["room_id"] == room for e in got["chunk"])
            second = await post_send(alice, room, "hello bot")
            assert second != first
            # 130 events come in pages of at most 100, none skipped, none repeated
            for i in range(130):
                await post_send(alice, room, f"burst {i}")
            bodies: list[str] = []
            cursor = got["end"]
            for _ in range(5):
                page = expect(await bot.request("GET", f"{R0}/events?timeout=0&from={cursor}"), 200)
                assert len(page["chunk"]) <= client_legacy.MAX_EVENTS
                bodies += [e["content"]["body"] for e in page["chunk"]]
                cursor = page["end"]
            assert bodies == ["hello bot"] + [f"burst {i}" for i in range(130)]
            # the stream's tokens are /sync tokens
            synced = expect(await bot.request("GET", f"{V3}/sync?since={cursor}&timeout=0"), 200)
            assert room not in synced["rooms"]["join"]

            # bad input
            expect(await bot.request("GET", R0 + "/events?from=garbage"), 400, "M_INVALID_PARAM")
            expect(await bot.request("GET", R0 + "/events?timeout=soon"), 400, "M_INVALID_PARAM")
            path = f"{R0}/rooms/{quote(room)}/send/m.room.redaction"
            expect(await bot.request("POST", path, {"redacts": first}), 400, "M_BAD_JSON")
            expect(await bot.request("POST", f"{R0}/rooms/nope/send/m.room.message", {"body": "x"}), 400,
                   "M_INVALID_PARAM")
            expect(await bot.request("POST", f"{R0}/rooms/{quote(room)}/send/m.room.message", raw=b"{"), 400,
                   "M_NOT_JSON")

    asyncio.run(run())


def test_initial_sync(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "stranger") as (alice, bob, stranger):
            room = str(expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat",
                                                                             "name": "Pumps"}), 200)["room_id"])
            left = str(expect(await alice.request("POST", V3 + "/createRoom", {}), 200)["room_id"])
            sent = [await post_send(alice, room, f"m{i}") for i in range(5)]
            await post_send(alice, left, "before leaving")
            expect(await alice.request("POST", f"{V3}/rooms/{quote(left)}/leave", {}), 200)
            invited = str(expect(await bob.request("POST", V3 + "/createRoom", {"invite": [alice.user_id]}), 200)[
                "room_id"])

            snapshot = expect(await alice.request("GET", V3 + "/initialSync?limit=3"), 200)
            assert snapshot["end"].startswith("s")
            by_id = {r["room_id"]: r for r in snapshot["rooms"]}
            assert set(by_id) == {room, invited}
            mine = by_id[room]
            assert mine["membership"] == "join" and mine["visibility"] == "private"
            assert [e["event_id"] for e in mine["messages"]["chunk"]] == sent[2:]  # oldest first
            assert any(e["type"] == "m.room.name" and e["content"]["name"] == "Pumps" for e in mine["state"])
            assert by_id[invited]["membership"] == "invite" and by_id[invited]["inviter"] == bob.user_id
            # older messages page on from messages.start
            older = expect(await alice.request("GET", f"{V3}/rooms/{quote(room)}/messages?dir=b&limit=2&from="
                                               f"{mine['messages']['start']}"), 200)  # fmt: skip
            assert [e["event_id"] for e in older["chunk"]] == [sent[1], sent[0]]
            archived = expect(await alice.request("GET", V3 + "/initialSync?archived=true&limit=500"), 200)
            gone = next(r for r in archived["rooms"] if r["room_id"] == left)
            assert gone["membership"] == "leave"
            assert "before leaving" in [e["content"].get("body") for e in gone["messages"]["chunk"]]

            one = expect(await alice.request("GET", f"{V3}/rooms/{quote(room)}/initialSync?limit=1"), 200)
            assert one["room_id"] == room and [e["event_id"] for e in one["messages"]["chunk"]] == [sent[4]]
            expect(await stranger.request("GET", f"{V3}/rooms/{quote(room)}/initialSync"), 403, "M_FORBIDDEN")
            expect(await alice.request("GET", V3 + "/initialSync?limit=x"), 400, "M_INVALID_PARAM")
            expect(await alice.request("GET", V3 + "/initialSync?archived=yes"), 400, "M_INVALID_PARAM")
            expect(await alice.request("GET", f"{V3}/rooms/bad/initialSync"), 400, "M_INVALID_PARAM")
            # no bridge declares a protocol: an empty object, as the spec says
            assert expect(await alice.request("GET", V3 + "/thirdparty/protocols"), 200) == {}

    asyncio.run(run())


def test_peeking_as_matrix_js_sdk_does(tmp_path: Path) -> None:
    """peekInRoom: /rooms/{id}/initialSync?limit=30, then /events?room_id=&from=messages.end&timeout=30000."""

    async def run() -> None:
        async with gateway(tmp_path, "alice", "visitor") as (alice, visitor):
            world = str(expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat",
                "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                                   "content": {"history_visibility": "world_readable"}}]}), 200)["room_id"])  # fmt: skip
            closed = str(expect(await alice.request("POST", V3 + "/createRoom", {}), 200)["room_id"])
            old = await post_send(alice, world, "before the visit")
            snapshot = expect(await visitor.request("GET", f"{R0}/rooms/{quote(world)}/initialSync?limit=30"), 200)
            assert "membership" not in snapshot and old in [e["event_id"] for e in snapshot["messages"]["chunk"]]
            poll = asyncio.create_task(visitor.request(
                "GET", f"{R0}/events?room_id={quote(world)}&timeout=30000&from={snapshot['messages']['end']}"))
            await asyncio.sleep(0.2)
            await post_send(alice, closed, "elsewhere")  # wakes the poll, which has nothing for it and waits on
            new = await post_send(alice, world, "during the visit")
            got = expect(await asyncio.wait_for(poll, 10), 200)
            assert [e["event_id"] for e in got["chunk"]] == [new]
            expect(await visitor.request("GET", f"{R0}/events?room_id={quote(closed)}&timeout=0"), 403, "M_FORBIDDEN")
            expect(await visitor.request("GET", f"{R0}/events?room_id=nonsense&timeout=0"), 400, "M_INVALID_PARAM")

    asyncio.run(run())
