"""Threaded read receipts cross federation (spec v1.4): the ``m.receipt`` EDU carries ``data.thread_id``, and
the receiving gateway keeps each thread's receipt in its own slot, beside the unthreaded one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fed_harness import create_room, gateways, has, http_session, q, send, sync, until, user
from harness import Client

pytestmark = pytest.mark.slow
V3 = "/_matrix/client/v3"


async def reply_in_thread(client: Client, room_id: str, root: str, body: str) -> str:
    content = {"msgtype": "m.text", "body": body,
               "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": True,
                                "m.in_reply_to": {"event_id": root}}}  # fmt: skip
    status, answer = await client.request("PUT", f"{V3}/rooms/{q(room_id)}/send/m.room.message/t{time.monotonic_ns()}",
                                          content)  # fmt: skip
    assert status == 200, answer
    return str(answer["event_id"])


def receipts_of(body: dict[str, Any], room_id: str, user_id: str) -> dict[str, dict[str, Any]]:
    """event ID -> the user's m.read receipt data, from one (initial) /sync."""
    found: dict[str, dict[str, Any]] = {}
    for event in body.get("rooms", {}).get("join", {}).get(room_id, {}).get("ephemeral", {}).get("events", []):
        if event["type"] == "m.receipt":
            for event_id, by_type in event["content"].items():
                data = by_type.get("m.read", {}).get(user_id)
                if data is not None:
                    found[event_id] = data
    return found


def test_threaded_receipts_keep_their_thread_across_federation(tmp_path: Any) -> None:
    async def main(gw: Any) -> None:
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            bob = await user(session, gw["b"], "bob")
            room_id = await create_room(alice, "threads")
            status, joined = await bob.request("POST", f"{V3}/join/{q('#threads:' + gw['a'].server_name)}", {})
            assert status == 200, joined
            root = await send(alice, room_id, "root")
            reply = await reply_in_thread(alice, room_id, root, "in thread")
            after = await send(alice, room_id, "main after")
            await until(lambda: has(bob, room_id, ["root", "in thread", "main after"]), what="the messages on B")

            # bob (on B) reads: the thread up to the reply, the main timeline up to the root, and unthreaded
            # up to "main after"; three receipts, three slots, none replacing another on the way.
            for event_id, body in ((reply, {"thread_id": root}), (root, {"thread_id": "main"}), (after, {})):
                status, answer = await bob.request("POST", f"{V3}/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}",
                                                   body)  # fmt: skip
                assert status == 200, answer

            async def all_three() -> dict[str, dict[str, Any]] | None:
                seen = receipts_of(await sync(alice), room_id, str(bob.user_id))
                return seen if len(seen) == 3 else None

            seen = await until(all_three, what="bob's three receipts on A")
            assert seen[reply].get("thread_id") == root
            assert seen[root].get("thread_id") == "main"
            assert "thread_id" not in seen[after]
            # and B shows them to its own users the same way
            local = receipts_of(await sync(bob), room_id, str(bob.user_id))
            assert {e: d.get("thread_id") for e, d in local.items()} == {reply: root, root: "main", after: None}

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 180))
