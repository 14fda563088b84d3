"""Ignored users beyond the timeline: typing, receipts, /relations, /threads and the ``m.relations`` bundled in
``unsigned`` hide what an ignored user sent, and a change of the list shows on the next /sync; through a gateway
in the test's loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness import Client, expect, users_gateway

from lowband.gateway.config import RateLimits

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"


def q(value: str) -> str:
    return quote(value, safe="")


_txn = iter(range(1_000_000))


async def say(client: Client, room_id: str, body: str, relates_to: dict[str, Any] | None = None) -> str:
    content: dict[str, Any] = {"msgtype": "m.text", "body": body}
    if relates_to is not None:
        content["m.relates_to"] = relates_to
    path = f"{V3}/rooms/{q(room_id)}/send/m.room.message/i{next(_txn)}"
    return str(expect(await client.request("PUT", path, content), 200)["event_id"])


def in_thread(root: str) -> dict[str, Any]:
    return {"rel_type": "m.thread", "event_id": root, "is_falling_back": True, "m.in_reply_to": {"event_id": root}}


async def ignore(client: Client, *users: str) -> None:
    expect(await client.request("PUT", f"{V3}/user/{q(str(client.user_id))}/account_data/m.ignored_user_list",
                                {"ignored_users": {u: {} for u in users}}), 200)  # fmt: skip


async def sync(client: Client, since: str | None = None) -> dict[str, Any]:
    query = "timeout=0&filter=" + q(json.dumps({"room": {"timeline": {"limit": 50}}}))
    if since:
        query += "&since=" + q(since)
    return dict(expect(await client.request("GET", f"{V3}/sync?{query}"), 200))


def ephemeral(body: dict[str, Any], room_id: str) -> dict[str, dict[str, Any]]:
    room = body["rooms"]["join"].get(room_id, {})
    return {e["type"]: e["content"] for e in room.get("ephemeral", {}).get("events", [])}


def test_typing_and_receipts_of_ignored_users_are_hidden(tmp_path: Path) -> None:
    async def go() -> None:
        async with users_gateway(tmp_path, "alice", "bob", "carol", rate_limits=RateLimits(enabled=False)) as (
                (alice, bob, carol), _, _):  # fmt: skip
            room_id = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)["room_id"]
            for member in (bob, carol):
                expect(await member.request("POST", f"{V3}/join/{q(room_id)}", {}), 200)
            message = await say(alice, room_id, "hello")
            for member in (bob, carol):
                expect(await member.request("PUT", f"{V3}/rooms/{q(room_id)}/typing/{q(str(member.user_id))}",
                                            {"typing": True, "timeout": 30000}), 200)  # fmt: skip
                expect(await member.request("POST", f"{V3}/rooms/{q(room_id)}/receipt/m.read/{q(message)}", {}), 200)
            seen = ephemeral(await sync(alice), room_id)
            assert sorted(seen["m.typing"]["user_ids"]) == sorted([bob.user_id, carol.user_id])
            assert set(seen["m.receipt"][message]["m.read"]) == {bob.user_id, carol.user_id}

            await ignore(alice, str(bob.user_id))
            first = await sync(alice)
            seen = ephemeral(first, room_id)
            assert seen["m.typing"]["user_ids"] == [carol.user_id]
            assert set(seen["m.receipt"][message]["m.read"]) == {carol.user_id}

            # incremental: bob types again and reads again; alice is told nothing of it
            expect(await bob.request("PUT", f"{V3}/rooms/{q(room_id)}/typing/{q(str(bob.user_id))}",
                                     {"typing": False}), 200)  # fmt: skip
            later = await say(carol, room_id, "later")
            missed = await say(bob, room_id, "said while ignored")
            expect(await bob.request("POST", f"{V3}/rooms/{q(room_id)}/receipt/m.read/{q(later)}", {}), 200)
            step = await sync(alice, first["next_batch"])
            seen = ephemeral(step, room_id)
            assert bob.user_id not in json.dumps(seen), seen
            assert [e["event_id"] for e in step["rooms"]["join"][room_id]["timeline"]["events"]] == [later]

            # the list changes: the next /sync carries the new list and shows bob again
            await ignore(alice)
            expect(await bob.request("PUT", f"{V3}/rooms/{q(room_id)}/typing/{q(str(bob.user_id))}",
                                     {"typing": True, "timeout": 30000}), 200)  # fmt: skip
            after = await sync(alice, step["next_batch"])
            lists = [e for e in after["account_data"]["events"] if e["type"] == "m.ignored_user_list"]
            assert lists == [{"type": "m.ignored_user_list", "content": {"ignored_users": {}}}]
            assert bob.user_id in ephemeral(after, room_id)["m.typing"]["user_ids"]
            # what bob said meanwhile is not sent after the fact (the spec: a fresh sync gets it)
            assert missed not in json.dumps(after)
            fresh = (await sync(alice))["rooms"]["join"][room_id]["timeline"]["events"]
            assert missed in [e["event_id"] for e in fresh]

    asyncio.run(asyncio.wait_for(go(), 120))


def test_relations_threads_and_bundles_hide_ignored_users(tmp_path: Path) -> None:
    async def go() -> None:
        async with users_gateway(tmp_path, "alice", "bob", "carol", rate_limits=RateLimits(enabled=False)) as (
                (alice, bob, carol), _, _):  # fmt: skip
            room_id = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)["room_id"]
            for member in (bob, carol):
                expect(await member.request("POST", f"{V3}/join/{q(room_id)}", {}), 200)
            root = await say(carol, room_id, "root")
            carol_reply = await say(carol, room_id, "carol replies", in_thread(root))
            bob_reply = await say(bob, room_id, "bob replies", in_thread(root))
            bob_ref = await say(bob, room_id, "bob refers", {"rel_type": "m.reference", "event_id": root})
            bob_root = await say(bob, room_id, "bob's own thread")
            await say(carol, room_id, "carol in bob's thread", in_thread(bob_root))

            async def looks() -> tuple[list[str], list[str], dict[str, Any]]:
                rel = expect(await alice.request("GET", f"{V1}/rooms/{q(room_id)}/relations/{q(root)}"), 200)
                threads = expect(await alice.request("GET", f"{V1}/rooms/{q(room_id)}/threads"), 200)
                event = expect(await alice.request("GET", f"{V3}/rooms/{q(room_id)}/event/{q(root)}"), 200)
                return ([e["event_id"] for e in rel["chunk"]], [e["event_id"] for e in threads["chunk"]],
                        event["unsigned"]["m.relations"])  # fmt: skip

            listed, roots, bundled = await looks()
            assert set(listed) == {carol_reply, bob_reply, bob_ref}
            assert roots == [bob_root, root]
            assert bundled["m.thread"]["count"] == 2 and bundled["m.thread"]["latest_event"]["event_id"] == bob_reply
            assert bundled["m.reference"]["chunk"] == [{"event_id": bob_ref}]

            await ignore(alice, str(bob.user_id))
            listed, roots, bundled = await looks()
            assert listed == [carol_reply]
            assert roots == [root]
            assert bundled["m.thread"]["count"] == 1
            assert bundled["m.thread"]["latest_event"]["event_id"] == carol_reply
            assert "m.reference" not in bundled
            # the /sync timeline bundles the same way
            timeline = (await sync(alice))["rooms"]["join"][room_id]["timeline"]["events"]
            synced_root = next(e for e in timeline if e["event_id"] == root)
            assert synced_root["unsigned"]["m.relations"]["m.thread"]["count"] == 1
            assert bob.user_id not in {e["sender"] for e in timeline if "state_key" not in e}
            # carol ignores nobody: she sees everything
            theirs = expect(await carol.request("GET", f"{V1}/rooms/{q(room_id)}/relations/{q(root)}"), 200)
            assert len(theirs["chunk"]) == 3

            await ignore(alice)
            listed, roots, bundled = await looks()
            assert set(listed) == {carol_reply, bob_reply, bob_ref} and bundled["m.thread"]["count"] == 2

    asyncio.run(asyncio.wait_for(go(), 120))
