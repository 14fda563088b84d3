"""Lazy-loaded members and room summaries in /sync and /messages, through the client-server API of a gateway in
the test's loop; and the bounded memory of what each device was sent (lazy_members.py, in memory)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from harness import Client, expect, gateway_in_loop

from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver.lazy_members import SentMembers

V3 = "/_matrix/client/v3"
LAZY = {"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 4}}}
FULL = {"room": {"timeline": {"limit": 4}}}


def in_loop(test: Callable[[Path], Awaitable[None]]) -> Callable[[Path], None]:
    """Run an async test in its own loop, 120 s at most."""

    @functools.wraps(test)
    def run(tmp_path: Path) -> None:
        asyncio.run(asyncio.wait_for(test(tmp_path), 120))

    return run


def q(value: str) -> str:
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def big_room(tmp_path: Path, members: int) -> AsyncIterator[tuple[Client, Client, str, Any, str]]:
    """A gateway; alice (creator) and bob as HTTP clients; a public room with ``members`` members in all (the
    rest joined through the room service: registering 200 accounts over HTTP would cost 200 scrypts)."""
    found: list[Any] = []
    async with gateway_in_loop(tmp_path, on_ready=found.append, rate_limits=RateLimits(enabled=False)) as url, \
            aiohttp.ClientSession() as session:  # fmt: skip
        alice, bob = Client(session, url), Client(session, url)
        await alice.register("alice")
        await bob.register("bob")
        svc = found[0]
        room_id = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)["room_id"]
        expect(await bob.request("POST", f"{V3}/join/{q(room_id)}", {}), 200)
        for i in range(members - 2):
            user_id = f"@m{i:03d}:localhost"
            await svc.store.create_user(user_id, "!none", False, int(time.time() * 1000))
            await svc.rooms.set_membership(user_id, room_id, user_id, "join")
        yield alice, bob, room_id, svc, url


async def send(client: Client, room_id: str, body: str) -> str:
    path = f"{V3}/rooms/{q(room_id)}/send/m.room.message/{time.monotonic_ns()}"
    return str(expect(await client.request("PUT", path, {"msgtype": "m.text", "body": body}), 200)["event_id"])


async def say_as(svc: Any, user_id: str, room_id: str, body: str) -> None:
    await svc.rooms.send(user_id, room_id, "m.room.message", {"msgtype": "m.text", "body": body})


async def sync(client: Client, filter_doc: dict[str, Any], since: str | None = None) -> tuple[dict[str, Any], int]:
    query = "filter=" + q(json.dumps(filter_doc)) + (f"&since={q(since)}" if since else "")
    status, body = await client.request("GET", f"{V3}/sync?{query}")
    assert status == 200, body
    return body, len(json.dumps(body, separators=(",", ":")))


def members_in(room: dict[str, Any]) -> list[str]:
    return sorted(e["state_key"] for e in room["state"]["events"] if e["type"] == "m.room.member")


@in_loop
async def test_initial_sync_sends_only_the_senders_members_and_saves_bytes(tmp_path: Path) -> None:
    async with big_room(tmp_path, 200) as (alice, bob, room_id, svc, _):
        await send(bob, room_id, "one")
        await say_as(svc, "@m007:localhost", room_id, "two")
        await send(bob, room_id, "three")
        await send(alice, room_id, "four")
        full, full_bytes = await sync(alice, FULL)
        lazy, lazy_bytes = await sync(alice, LAZY)
        full_room, lazy_room = full["rooms"]["join"][room_id], lazy["rooms"]["join"][room_id]
        assert len(members_in(full_room)) == 200
        assert members_in(lazy_room) == ["@alice:localhost", "@bob:localhost", "@m007:localhost"]
        # every other piece of state is still there
        others = sorted(e["type"] for e in lazy_room["state"]["events"] if e["type"] != "m.room.member")
        assert others == sorted(e["type"] for e in full_room["state"]["events"] if e["type"] != "m.room.member")
        assert lazy_room["summary"]["m.joined_member_count"] == 200
        assert lazy_room["summary"]["m.invited_member_count"] == 0
        print(f"initial sync of a 200-member room: {full_bytes} bytes, lazy-loaded {lazy_bytes} bytes")
        assert lazy_bytes * 10 < full_bytes


@in_loop
async def test_incremental_sync_sends_a_member_once_per_device(tmp_path: Path) -> None:
    async with big_room(tmp_path, 12) as (alice, bob, room_id, svc, url):
        await send(bob, room_id, "hello")
        first, _ = await sync(alice, LAZY)
        assert "@bob:localhost" in members_in(first["rooms"]["join"][room_id])
        token = first["next_batch"]
        await send(bob, room_id, "again")
        await say_as(svc, "@m003:localhost", room_id, "new voice")
        second, _ = await sync(alice, LAZY, token)
        room = second["rooms"]["join"][room_id]
        assert [e["content"]["body"] for e in room["timeline"]["events"]] == ["again", "new voice"]
        assert members_in(room) == ["@m003:localhost"]  # bob's was sent already; m003 never was
        # include_redundant_members: every sender's member again
        redundant = {"room": {"state": {"lazy_load_members": True, "include_redundant_members": True}}}
        again, _ = await sync(alice, redundant, token)
        assert members_in(again["rooms"]["join"][room_id]) == ["@alice:localhost", "@bob:localhost", "@m003:localhost"]
        # a token older than the response that carried bob's member: sent again
        stream = int(token[1:].split("_")[0])
        older, _ = await sync(alice, LAZY, f"s{stream - 1}_0")
        assert "@bob:localhost" in members_in(older["rooms"]["join"][room_id])
        # another device of alice's never got it either
        async with aiohttp.ClientSession() as session:
            other = Client(session, url)
            status, body = await other.request("POST", V3 + "/login", {
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                "password": "secret-pw"}, token=False)  # fmt: skip
            assert status == 200, body
            other.token = body["access_token"]
            fresh, _ = await sync(other, LAZY, token)
            assert members_in(fresh["rooms"]["join"][room_id]) == ["@alice:localhost", "@bob:localhost",
                                                                   "@m003:localhost"]  # fmt: skip


@in_loop
async def test_limited_timeline_keeps_other_state_and_drops_silent_members(tmp_path: Path) -> None:
    async with big_room(tmp_path, 8) as (alice, bob, room_id, svc, _):
        start, _ = await sync(alice, LAZY)
        token = start["next_batch"]
        expect(await alice.request("PUT", f"{V3}/rooms/{q(room_id)}/state/m.room.topic", {"topic": "gap"}), 200)
        await svc.rooms.set_membership("@m002:localhost", room_id, "@m002:localhost", "leave")  # silent: no message
        for i in range(6):
            await send(bob, room_id, f"msg {i}")
        lazy, _ = await sync(alice, LAZY, token)
        room = lazy["rooms"]["join"][room_id]
        assert room["timeline"]["limited"] is True
        types = {e["type"] for e in room["state"]["events"]}
        assert "m.room.topic" in types  # the gap's other state changes still come
        assert "@m002:localhost" not in members_in(room)  # a member who said nothing is not sent
        assert members_in(room) == ["@bob:localhost"]
        full, _ = await sync(alice, FULL, token)
        assert "@m002:localhost" in members_in(full["rooms"]["join"][room_id])  # without lazy loading it is


@in_loop
async def test_summary_sent_when_it_changes(tmp_path: Path) -> None:
    async with big_room(tmp_path, 4) as (alice, bob, room_id, svc, _):
        first, _ = await sync(alice, FULL)
        summary = first["rooms"]["join"][room_id]["summary"]
        assert summary == {"m.joined_member_count": 4, "m.invited_member_count": 0,
                           "m.heroes": ["@bob:localhost", "@m000:localhost", "@m001:localhost"]}  # fmt: skip
        token = first["next_batch"]
        await send(bob, room_id, "nothing changes")
        quiet, _ = await sync(alice, FULL, token)
        assert quiet["rooms"]["join"][room_id]["summary"] == {}
        token = quiet["next_batch"]
        expect(await alice.request("POST", f"{V3}/rooms/{q(room_id)}/invite", {"user_id": "@m900:localhost"}), 200)
        invited, _ = await sync(alice, FULL, token)
        assert invited["rooms"]["join"][room_id]["summary"]["m.invited_member_count"] == 1
        assert "@m900:localhost" in invited["rooms"]["join"][room_id]["summary"]["m.heroes"]
        token = invited["next_batch"]
        expect(await alice.request("PUT", f"{V3}/rooms/{q(room_id)}/state/m.room.name", {"name": "Named"}), 200)
        named, _ = await sync(alice, FULL, token)
        assert named["rooms"]["join"][room_id]["summary"] == {"m.joined_member_count": 4,
                                                              "m.invited_member_count": 1}  # fmt: skip
        # a display name change is a member event, but the summary is the same: not sent again
        token = named["next_batch"]
        path = f"{V3}/profile/{q('@bob:localhost')}/displayname"
        expect(await bob.request("PUT", path, {"displayname": "Bobby"}), 200)
        renamed, _ = await sync(alice, FULL, token)
        assert renamed["rooms"]["join"][room_id]["summary"] == {}


@in_loop
async def test_messages_lazy_members(tmp_path: Path) -> None:
    async with big_room(tmp_path, 10) as (alice, bob, room_id, svc, _):
        await send(bob, room_id, "a")
        await say_as(svc, "@m004:localhost", room_id, "b")
        await send(bob, room_id, "c")
        base = f"{V3}/rooms/{q(room_id)}/messages?dir=b&limit=3&filter="
        page = expect(await alice.request("GET", base + q(json.dumps({"lazy_load_members": True}))), 200)
        assert [e["content"]["body"] for e in page["chunk"]] == ["c", "b", "a"]
        assert sorted(e["state_key"] for e in page["state"]) == ["@bob:localhost", "@m004:localhost"]
        assert all(e["type"] == "m.room.member" and e["content"]["membership"] == "join" for e in page["state"])
        plain = expect(await alice.request("GET", base + q(json.dumps({"limit": 3}))), 200)
        assert plain["state"] == []
        # hostile filters: a non-boolean flag, a filter that is not JSON
        expect(await alice.request("GET", base + q(json.dumps({"lazy_load_members": "yes"}))), 400)
        expect(await alice.request("GET", base + q("{not json")), 400, "M_NOT_JSON")


def test_sent_members_memory_is_bounded() -> None:
    sent = SentMembers(max_devices=2, max_entries=3)
    a, b, c = ("@a:x", "A"), ("@b:x", "B"), ("@c:x", "C")
    sent.note(a, "!r", {"@u:x": "$1"}, 10)
    assert sent.already_sent(a, "!r", "@u:x", "$1", 10)
    assert not sent.already_sent(a, "!r", "@u:x", "$1", 9)  # a token older than the response
    assert not sent.already_sent(a, "!r", "@u:x", "$2", 10)  # a new member event
    assert not sent.already_sent(a, "!r", "@u:x", "$1", None)  # an initial sync
    sent.note(b, "!r", {"@u:x": "$1"}, 10)
    sent.note(c, "!r", {"@u:x": "$1"}, 10)  # a third device: the least recent (a) is forgotten
    assert not sent.already_sent(a, "!r", "@u:x", "$1", 10)
    assert sent.already_sent(c, "!r", "@u:x", "$1", 10)
    sent.note(c, "!r", {"@v:x": "$2", "@w:x": "$3", "@y:x": "$4"}, 11)  # past max_entries: starts again
    assert not sent.already_sent(c, "!r", "@u:x", "$1", 20)
