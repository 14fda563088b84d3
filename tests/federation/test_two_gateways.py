"""Two Lowband gateways federating on loopback: joins, messages, state, invites, typing, receipts, catch-up."""

from __future__ import annotations

import asyncio

import pytest
from fed_harness import (
    SyncWatcher,
    bodies,
    create_room,
    gateways,
    has,
    http_session,
    invited,
    membership_is,
    put_state,
    q,
    send,
    state,
    until,
    user,
)

pytestmark = pytest.mark.slow


def test_join_by_alias_talk_both_ways_change_state_and_see_typing_and_receipts(tmp_path):
    async def main(gw):
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            bob = await user(session, gw["b"], "bob")
            room_id = await create_room(alice, "lobby")
            alias = "#lobby:" + gw["a"].server_name
            status, joined = await bob.request("POST", f"/_matrix/client/v3/join/{q(alias)}", {})
            assert status == 200 and joined["room_id"] == room_id, joined
            # bob's join reached alice's server, and the members agree on both sides
            for client in (alice, bob):
                await until(lambda c=client: state(c, room_id, "m.room.member", bob.user_id), what="bob's join")
            await send(alice, room_id, "one from A")
            await until(lambda: has(bob, room_id, ["one from A"]), what="A's message on B")
            await send(bob, room_id, "two from B")
            await until(lambda: has(alice, room_id, ["one from A", "two from B"]), what="B's message on A")
            assert (await bodies(bob, room_id))[-2:] == ["one from A", "two from B"]
            # state: alice renames the room; bob sees the new name
            await put_state(alice, room_id, "m.room.name", {"name": "Renamed"})
            await until(lambda: _name_is(bob, room_id, "Renamed"), what="the new name on B")
            # typing and receipts cross over
            watcher = await SyncWatcher.start(alice)
            status, _ = await bob.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/typing/{q(bob.user_id)}",
                                          {"typing": True, "timeout": 20000})  # fmt: skip
            assert status == 200
            await until(lambda: watcher.typing(room_id, bob.user_id), what="bob typing, seen on A")
            last = await send(alice, room_id, "read me")
            await until(lambda: has(bob, room_id, ["read me"]), what="read me on B")
            status, _ = await bob.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/receipt/m.read/{q(last)}", {})
            assert status == 200
            await until(lambda: watcher.receipt(room_id, bob.user_id, last), what="bob's receipt on A")

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 180))


def test_an_invite_across_servers_then_join_and_leave(tmp_path):
    async def main(gw):
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            bob = await user(session, gw["b"], "bob")
            room_id = await create_room(alice, "private", preset="private_chat")
            status, answer = await alice.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/invite",
                                                 {"user_id": bob.user_id})  # fmt: skip
            assert status == 200, answer
            invite = await until(lambda: invited(bob, room_id), what="the invite in bob's sync")
            assert any(e["type"] == "m.room.name" for e in invite["invite_state"]["events"])
            status, answer = await bob.request("POST", f"/_matrix/client/v3/join/{q(room_id)}", {})
            assert status == 200, answer
            await send(bob, room_id, "thanks for the invite")
            await until(lambda: has(alice, room_id, ["thanks for the invite"]), what="bob's message on A")
            status, _ = await bob.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/leave", {})
            assert status == 200
            await until(lambda: membership_is(alice, room_id, bob.user_id, "leave"), what="bob's leave on A")

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 180))


def test_a_gateway_killed_and_restarted_catches_up_and_its_backlog_goes_out(tmp_path):
    async def main(gw):
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            bob = await user(session, gw["b"], "bob")
            room_id = await create_room(alice, "lobby")
            via = q(gw["a"].server_name)
            status, _ = await bob.request("POST", f"/_matrix/client/v3/join/{q(room_id)}?server_name={via}", {})
            assert status == 200
            await until(lambda: state(alice, room_id, "m.room.member", bob.user_id), what="bob's join on A")
            gw["b"].kill()
            sent = [f"while B was down {i}" for i in range(30)]
            for text in sent:
                await send(alice, room_id, text)
            gw["b"].start()
            await until(lambda: has(bob, room_id, sent), timeout=60, what="the backlog on B")
            # and the other way: A down while B sends
            gw["a"].kill()
            await send(bob, room_id, "while A was down")
            gw["a"].start()
            await until(lambda: has(alice, room_id, ["while A was down"]), timeout=60, what="B's message on A")

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 240))


async def _name_is(client, room_id, name):
    content = await state(client, room_id, "m.room.name")
    return content is not None and content.get("name") == name
