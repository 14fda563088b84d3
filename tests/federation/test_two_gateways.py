"""Two Lowband gateways federating on loopback: joins, messages, state, invites, typing, receipts, catch-up."""

from __future__ import annotations

import asyncio

import pytest
from fed_harness import bodies, gateways, http_session, q, send, until, user

pytestmark = pytest.mark.slow


async def _room(alice, alias: str, preset: str = "public_chat") -> str:
    status, created = await alice.request("POST", "/_matrix/client/v3/createRoom",
                                          {"preset": preset, "room_alias_name": alias, "name": alias})  # fmt: skip
    assert status == 200, created
    return str(created["room_id"])


async def _state(client, room_id: str, event_type: str, state_key: str = ""):
    status, content = await client.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state/{event_type}/{q(state_key)}")
    return content if status == 200 else None


def test_join_by_alias_talk_both_ways_change_state_and_see_typing_and_receipts(tmp_path):
    async def main(gw):
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            bob = await user(session, gw["b"], "bob")
            room_id = await _room(alice, "lobby")
            alias = "#lobby:" + gw["a"].server_name
            status, joined = await bob.request("POST", f"/_matrix/client/v3/join/{q(alias)}", {})
            assert status == 200 and joined["room_id"] == room_id, joined
            # bob's join reached alice's server, and the members agree on both sides
            for client in (alice, bob):
                await until(lambda c=client: _state(c, room_id, "m.room.member", bob.user_id), what="bob's join")
            await send(alice, room_id, "one from A")
            await until(lambda: _has(bob, room_id, ["one from A"]), what="A's message on B")
            await send(bob, room_id, "two from B")
            await until(lambda: _has(alice, room_id, ["one from A", "two from B"]), what="B's message on A")
            assert (await bodies(bob, room_id))[-2:] == ["one from A", "two from B"]
            # state: alice renames the room; bob sees the new name
            status, _ = await alice.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.name/",
                                            {"name": "Renamed"})  # fmt: skip
            assert status == 200
            await until(lambda: _name_is(bob, room_id, "Renamed"), what="the new name on B")
            # typing and receipts cross over
            status, _ = await bob.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/typing/{q(bob.user_id)}",
                                          {"typing": True, "timeout": 20000})  # fmt: skip
            assert status == 200
            await until(lambda: _typing_seen(alice, room_id, bob.user_id), what="bob typing, seen on A")
            last = await send(alice, room_id, "read me")
            await until(lambda: _has(bob, room_id, ["read me"]), what="read me on B")
            status, _ = await bob.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/receipt/m.read/{q(last)}", {})
            assert status == 200
            await until(lambda: _receipt_seen(alice, room_id, bob.user_id, last), what="bob's receipt on A")

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 180))


def test_an_invite_across_servers_then_join_and_leave(tmp_path):
    async def main(gw):
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            bob = await user(session, gw["b"], "bob")
            room_id = await _room(alice, "private", preset="private_chat")
            status, answer = await alice.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/invite",
                                                 {"user_id": bob.user_id})  # fmt: skip
            assert status == 200, answer
            invited = await until(lambda: _invited(bob, room_id), what="the invite in bob's sync")
            assert any(e["type"] == "m.room.name" for e in invited["invite_state"]["events"])
            status, answer = await bob.request("POST", f"/_matrix/client/v3/join/{q(room_id)}", {})
            assert status == 200, answer
            await send(bob, room_id, "thanks for the invite")
            await until(lambda: _has(alice, room_id, ["thanks for the invite"]), what="bob's message on A")
            status, _ = await bob.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/leave", {})
            assert status == 200
            await until(lambda: _membership_is(alice, room_id, bob.user_id, "leave"), what="bob's leave on A")

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 180))


def test_a_gateway_killed_and_restarted_catches_up_and_its_backlog_goes_out(tmp_path):
    async def main(gw):
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            bob = await user(session, gw["b"], "bob")
            room_id = await _room(alice, "lobby")
            via = q(gw["a"].server_name)
            status, _ = await bob.request("POST", f"/_matrix/client/v3/join/{q(room_id)}?server_name={via}", {})
            assert status == 200
            await until(lambda: _state(alice, room_id, "m.room.member", bob.user_id), what="bob's join on A")
            gw["b"].kill()
            sent = [f"while B was down {i}" for i in range(30)]
            for text in sent:
                await send(alice, room_id, text)
            gw["b"].start()
            await until(lambda: _has(bob, room_id, sent), timeout=60, what="the backlog on B")
            # and the other way: A down while B sends
            gw["a"].kill()
            await send(bob, room_id, "while A was down")
            gw["a"].start()
            await until(lambda: _has(alice, room_id, ["while A was down"]), timeout=60, what="B's message on A")

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 240))


async def _has(client, room_id, wanted):
    seen = await bodies(client, room_id, limit=200)
    return all(w in seen for w in wanted)


async def _name_is(client, room_id, name):
    content = await _state(client, room_id, "m.room.name")
    return content is not None and content.get("name") == name


async def _membership_is(client, room_id, user_id, membership):
    content = await _state(client, room_id, "m.room.member", user_id)
    return content is not None and content.get("membership") == membership


async def _sync(client):
    status, body = await client.request("GET", "/_matrix/client/v3/sync?timeout=0")
    assert status == 200, body
    return body


async def _typing_seen(client, room_id, user_id):
    body = await _sync(client)
    room = body["rooms"]["join"].get(room_id, {})
    return any(e["type"] == "m.typing" and user_id in e["content"]["user_ids"] for e in room.get("ephemeral", {}).get("events", []))


async def _receipt_seen(client, room_id, user_id, event_id):
    body = await _sync(client)
    room = body["rooms"]["join"].get(room_id, {})
    for e in room.get("ephemeral", {}).get("events", []):
        if e["type"] == "m.receipt" and user_id in e["content"].get(event_id, {}).get("m.read", {}):
            return True
    return False


async def _invited(client, room_id):
    body = await _sync(client)
    return body["rooms"]["invite"].get(room_id)
