"""Notifications through the client-server API: rules applied to new events, ``unread_notifications`` in
``/sync`` cleared by a read receipt, ``GET /notifications``; and the evaluator's bounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from harness import Client, expect, gateway_in_loop, users_gateway

from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver.notifications import push_of

V3 = "/_matrix/client/v3"


def q(value: str) -> str:
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, *names: str) -> AsyncIterator[tuple[list[Client], Any]]:
    async with users_gateway(tmp_path, *names, rate_limits=RateLimits(enabled=False)) as (clients, services, _):
        yield clients, services


async def make_room(owner: Client, *joiners: Client) -> str:
    body = expect(await owner.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)
    for member in joiners:
        expect(await member.request("POST", f"{V3}/join/{q(body['room_id'])}", {}), 200)
    return str(body["room_id"])


async def say(client: Client, room: str, body: str, **content: Any) -> str:
    sent = await client.request("PUT", f"{V3}/rooms/{q(room)}/send/m.room.message/t{id(content)}{body.__hash__()}",
                                {"msgtype": "m.text", "body": body, **content})  # fmt: skip
    return str(expect(sent, 200)["event_id"])


async def sync(client: Client, since: str | None = None, timeout: int = 0) -> dict[str, Any]:
    query = f"?timeout={timeout}" + (f"&since={since}" if since else "")
    return dict(expect(await client.request("GET", V3 + "/sync" + query), 200))


async def settled(svc: Any) -> None:
    """Wait (at most 10 s) until every stored event is judged and its rows are written."""
    evaluator = push_of(svc).evaluator
    for _ in range(1000):
        if evaluator is None or (evaluator.position >= svc.store.persisted and not evaluator.pending):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("push evaluation did not catch up")


async def counts(client: Client, room: str, svc: Any = None) -> dict[str, int]:
    if svc is not None:
        await settled(svc)
    return dict((await sync(client))["rooms"]["join"][room]["unread_notifications"])


def test_counts_highlights_receipts_and_the_notification_list(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as ((alice, bob, carol), svc):
            room = await make_room(alice, bob, carol)
            start = (await sync(alice))["next_batch"]
            assert (await sync(alice))["rooms"]["join"][room]["unread_notifications"] == {
                "notification_count": 0, "highlight_count": 0}  # fmt: skip

            # A long-polling /sync gets the event and its count together, never the event first.
            waiting = asyncio.create_task(sync(alice, start, timeout=10_000))
            await asyncio.sleep(0.05)
            hello = await say(bob, room, "hello all")
            got = await asyncio.wait_for(waiting, 15)
            for _ in range(5):  # what came before (carol's join) may come first
                joined = got["rooms"]["join"].get(room, {})
                if hello in [e["event_id"] for e in joined.get("timeline", {}).get("events", [])]:
                    break
                got = await sync(alice, got["next_batch"], timeout=10_000)
            assert joined["unread_notifications"] == {"notification_count": 1, "highlight_count": 0}

            mention = await say(bob, room, "look here", **{"m.mentions": {"user_ids": [alice.user_id]}})
            notice = await say(bob, room, "a bot says", msgtype="m.notice")
            legacy = await say(carol, room, "alice: lunch?")  # no m.mentions: the localpart highlights
            assert await counts(alice, room, svc) == {"notification_count": 3, "highlight_count": 2}
            assert await counts(bob, room, svc) == {"notification_count": 1, "highlight_count": 0}  # carol's only
            assert await counts(carol, room, svc) == {"notification_count": 2, "highlight_count": 0}  # no notice

            await settled(svc)
            listed = expect(await alice.request("GET", V3 + "/notifications"), 200)["notifications"]
            assert [n["event"]["event_id"] for n in listed] == [legacy, mention, hello]  # not the notice
            assert all(n["room_id"] == room and n["read"] is False and n["ts"] > 0 for n in listed)
            assert {"set_tweak": "highlight"} in listed[1]["actions"]
            page = expect(await alice.request("GET", V3 + "/notifications?limit=2"), 200)
            assert [n["event"]["event_id"] for n in page["notifications"]] == [legacy, mention]
            rest = expect(await alice.request("GET", f"{V3}/notifications?limit=2&from={page['next_token']}"), 200)
            assert [n["event"]["event_id"] for n in rest["notifications"]] == [hello] and "next_token" not in rest
            high = expect(await alice.request("GET", V3 + "/notifications?only=highlight"), 200)["notifications"]
            assert [n["event"]["event_id"] for n in high] == [legacy, mention]

            # A read receipt on the mention clears it and what came before it; the later one stays.
            expect(await alice.request("POST", f"{V3}/rooms/{q(room)}/receipt/m.read/{q(mention)}", {}), 200)
            assert await counts(alice, room, svc) == {"notification_count": 1, "highlight_count": 1}
            listed = expect(await alice.request("GET", V3 + "/notifications"), 200)["notifications"]
            assert [n["read"] for n in listed] == [False, True, True]
            expect(await alice.request("POST", f"{V3}/rooms/{q(room)}/receipt/m.read.private/{q(notice)}", {}), 200)
            assert await counts(alice, room, svc) == {"notification_count": 1, "highlight_count": 1}
            expect(await alice.request("POST", f"{V3}/rooms/{q(room)}/receipt/m.read.private/{q(legacy)}", {}), 200)
            assert await counts(alice, room, svc) == {"notification_count": 0, "highlight_count": 0}

            # Muting the room with a room rule: bob's next message makes no notification for alice.
            expect(await alice.request("PUT", f"{V3}/pushrules/global/room/{q(room)}", {"actions": []}), 200)
            await say(bob, room, "muted now")
            assert await counts(alice, room, svc) == {"notification_count": 0, "highlight_count": 0}
            assert await counts(carol, room, svc) == {"notification_count": 3, "highlight_count": 0}

            for query, errcode in (("limit=0", "M_INVALID_PARAM"), ("limit=x", "M_INVALID_PARAM"),
                                   ("from=abc", "M_INVALID_PARAM"), ("only=everything", "M_INVALID_PARAM")):  # fmt: skip
                expect(await alice.request("GET", f"{V3}/notifications?{query}"), 400, errcode)
            assert (
                len(expect(await alice.request("GET", V3 + "/notifications?limit=100000"), 200)["notifications"]) == 3
            )
            runtime = push_of(svc)
            assert runtime.evaluator is not None and runtime.evaluator.failed_events == 0
            position = runtime.evaluator.position

        # The evaluated position is kept: a restart judges nothing twice.
        async with gateway_in_loop(tmp_path, rate_limits=RateLimits(enabled=False)) as url, \
                aiohttp.ClientSession() as session:  # fmt: skip
            again = Client(session, url, carol.token)
            assert (await counts(again, room)) == {"notification_count": 3, "highlight_count": 0}
            listed = expect(await again.request("GET", V3 + "/notifications"), 200)["notifications"]
            assert len(listed) == 3 and position > 0

    asyncio.run(run())


def test_an_invite_notifies_the_invited_user(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), svc):
            room = await make_room(alice)
            expect(await alice.request("POST", f"{V3}/rooms/{q(room)}/invite", {"user_id": bob.user_id}), 200)
            await settled(svc)
            listed = expect(await bob.request("GET", V3 + "/notifications"), 200)["notifications"]
            assert len(listed) == 1 and listed[0]["event"]["type"] == "m.room.member"
            assert listed[0]["event"]["state_key"] == bob.user_id

    asyncio.run(run())


def test_evaluation_judges_only_local_joined_users(tmp_path: Path) -> None:
    """100 members: each event is judged once per joined local user other than the sender, never more."""

    async def run() -> None:
        async with gateway(tmp_path, "owner") as ((owner,), svc):
            room = await make_room(owner)
            members = []
            for i in range(99):  # made in process: 99 registrations (password hashing) would take half a minute
                user_id = f"@m{i}:localhost"
                await svc.store.create_user(user_id, "unused", False, 0)
                await svc.rooms.set_membership(user_id, room, user_id, "join")
                members.append(user_id)
            await svc.store.add_token("m5-token", members[5], "DEV", None, 0)
            evaluator = push_of(svc).evaluator
            assert evaluator is not None
            judged: list[int] = []
            real = evaluator.book.ordered

            def counting(user_id: str) -> list[dict[str, Any]]:
                judged.append(1)
                return real(user_id)

            evaluator.book.ordered = counting  # type: ignore[method-assign]
            await say(owner, room, "hello everyone")
            await settled(svc)
            assert len(judged) == 99
            reader = Client(owner.session, owner.base, "m5-token")
            listed = expect(await reader.request("GET", V3 + "/notifications"), 200)["notifications"]
            assert len(listed) == 1

    asyncio.run(run())


def test_an_event_is_never_served_before_its_counts_even_when_judging_lags(tmp_path: Path) -> None:
    """Judging held up past the settle time: /sync serves up to the position judged, holds the event back,
    and the step that judges it wakes the long-poll, which then gets the event with its counts."""

    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), svc):
            room = await make_room(alice, bob)
            await settled(svc)
            since = (await sync(alice))["next_batch"]
            evaluator = push_of(svc).evaluator
            assert evaluator is not None
            gate = asyncio.Event()
            step = evaluator.step

            async def slow_step() -> bool:
                await gate.wait()  # judging lags until the test lets it go
                return await step()

            evaluator.step = slow_step  # type: ignore[method-assign]
            await evaluator.stop()
            evaluator.start()  # the running task picks up the slow step
            hello = await say(bob, room, "hello")
            early = await sync(alice, since)  # waits the settle time, then serves what was judged: not hello
            assert room not in early["rooms"]["join"] or hello not in [
                e["event_id"] for e in early["rooms"]["join"][room]["timeline"]["events"]]
            waiting = asyncio.create_task(sync(alice, early["next_batch"], timeout=10_000))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # the long-poll waits for the judging, not for its timeout
            gate.set()
            joined = (await asyncio.wait_for(waiting, 10))["rooms"]["join"][room]
            assert [e["event_id"] for e in joined["timeline"]["events"]] == [hello]
            assert joined["unread_notifications"] == {"notification_count": 1, "highlight_count": 0}

    asyncio.run(run())


def test_counts_of_rows_still_being_written_come_with_their_event_and_are_not_counted_twice(tmp_path: Path) -> None:
    """/sync does not wait for the rows' commit: judged rows count from memory until written, then from the store."""

    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), svc):
            room = await make_room(alice, bob)
            await settled(svc)
            since = (await sync(alice))["next_batch"]
            gate = asyncio.Event()
            write = svc.store.push.add_notifications

            async def slow_write(rows: Any, evaluated: int) -> None:
                await gate.wait()  # the commit is slow
                await write(rows, evaluated)

            svc.store.push.add_notifications = slow_write
            hello = await say(bob, room, "hello")
            first = await sync(alice, since, timeout=5_000)
            joined = first["rooms"]["join"][room]
            assert [e["event_id"] for e in joined["timeline"]["events"]] == [hello]
            assert joined["unread_notifications"] == {"notification_count": 1, "highlight_count": 0}
            assert push_of(svc).evaluator.pending  # still being written
            gate.set()
            await settled(svc)
            assert await counts(alice, room, svc) == {"notification_count": 1, "highlight_count": 0}

    asyncio.run(run())
