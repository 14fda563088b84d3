"""Knocking across two gateways: make_knock/send_knock through the room's server, the knock in /sync, then an invite.

A room on A with ``join_rule: knock``; users of B knock through their own
gateway. A answers as the resident server (ACL and room version checked as
for joins); B shows the knock under ``rooms.knock`` with the room's stripped
state; a member on A then invites the knocker, who joins.
"""

from __future__ import annotations

import asyncio

import pytest
from fed_harness import gateways, has, http_session, invited, q, send, state, sync, until, user

pytestmark = pytest.mark.slow

V3 = "/_matrix/client/v3"


async def knock_room(client, alias: str | None, version: str = "10", join_rule: str = "knock",
                     acl: dict | None = None) -> str:  # fmt: skip
    body: dict = {"preset": "private_chat", "room_version": version, "name": f"room {alias or version}",
                  "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": join_rule}}]}
    if alias:
        body["room_alias_name"] = alias
    if acl is not None:
        body["initial_state"].append({"type": "m.room.server_acl", "state_key": "", "content": acl})
    status, created = await client.request("POST", V3 + "/createRoom", body)
    assert status == 200, created
    return str(created["room_id"])


async def knocked(client, room_id):
    """The room's entry under ``rooms.knock`` in ``client``'s sync, or None."""
    return (await sync(client))["rooms"]["knock"].get(room_id)


async def member(client, room_id, user_id):
    """``user_id``'s member event content as ``client`` sees it, or None."""
    return await state(client, room_id, "m.room.member", user_id)


async def membership_is(client, room_id, user_id, wanted):
    """The member event content when its membership is ``wanted`` (for its reason and profile), else False."""
    content = await member(client, room_id, user_id)
    return content is not None and content.get("membership") == wanted and content


async def cast(session, gw):
    """alice on A (the room's server), bob and carol on B."""
    return (await user(session, gw["a"], "alice"), await user(session, gw["b"], "bob"),
            await user(session, gw["b"], "carol"))  # fmt: skip


def test_a_knock_through_the_rooms_server_then_an_invite_then_a_join(tmp_path):
    async def main(gw) -> None:
        async with http_session() as session:
            alice, bob, carol = await cast(session, gw)
            status, _ = await bob.request("PUT", f"{V3}/profile/{q(bob.user_id)}/displayname", {"displayname": "Bob"})
            assert status == 200
            a_name = gw["a"].server_name
            room_id = await knock_room(alice, "porch")

            # bob knocks by alias, through B, which asks A
            status, answer = await bob.request("POST", f"{V3}/knock/{q('#porch:' + a_name)}", {"reason": "let me in"})
            assert (status, answer) == (200, {"room_id": room_id}), answer
            shown = await until(lambda: knocked(bob, room_id), what="the knock in bob's sync")
            events = {e["type"]: e for e in shown["knock_state"]["events"]}
            assert events["m.room.join_rules"]["content"]["join_rule"] == "knock"
            assert events["m.room.name"]["content"]["name"] == "room porch"
            assert events["m.room.create"]["sender"] == alice.user_id
            assert events["m.room.member"]["state_key"] == bob.user_id
            assert events["m.room.member"]["content"]["membership"] == "knock"
            assert set(events["m.room.member"]) == {"type", "state_key", "content", "sender"}  # stripped, not a PDU
            # A holds the knock as room state, with its reason and bob's profile
            on_a = await until(lambda: membership_is(alice, room_id, bob.user_id, "knock"), what="the knock on A")
            assert on_a["reason"] == "let me in" and on_a["displayname"] == "Bob"
            # a knock is no join: bob cannot get in or talk yet
            status, refused = await bob.request("POST", f"{V3}/join/{q(room_id)}?server_name={q(a_name)}", {})
            assert status == 403, refused
            # alice lets bob in: an invite to B, shown to bob, who joins
            status, answer = await alice.request("POST", f"{V3}/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
            assert status == 200, answer
            await until(lambda: invited(bob, room_id), what="the invite in bob's sync")
            assert (await knocked(bob, room_id)) is None
            status, answer = await bob.request("POST", f"{V3}/join/{q(room_id)}", {})
            assert status == 200, answer
            await send(bob, room_id, "thanks for letting me in")
            await until(lambda: has(alice, room_id, ["thanks for letting me in"]), what="bob's message on A")

            # carol knocks by room ID with a via, then changes her mind: the leave goes through A
            status, answer = await carol.request("POST", f"{V3}/knock/{q(room_id)}?via={q(a_name)}", {})
            assert status == 200, answer
            await until(lambda: membership_is(alice, room_id, carol.user_id, "knock"), what="carol's knock on A")
            status, answer = await carol.request("POST", f"{V3}/rooms/{q(room_id)}/leave", {})
            assert status == 200, answer
            await until(lambda: membership_is(alice, room_id, carol.user_id, "leave"), what="carol's rescinded knock")

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 180))


def test_knocks_refused_by_join_rules_room_version_and_acl_and_a_local_knock(tmp_path):
    async def main(gw) -> None:
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            erin = await user(session, gw["a"], "erin")
            bob = await user(session, gw["b"], "bob")
            a_name = gw["a"].server_name

            async def knock(client, room_id):
                return await client.request("POST", f"{V3}/knock/{q(room_id)}?via={q(a_name)}", {})

            # invite-only: the resident server's auth rules say no
            private = await knock_room(alice, None, join_rule="invite")
            status, refused = await knock(bob, private)
            assert (status, refused["errcode"]) == (403, "M_FORBIDDEN"), refused
            # a version 6 room has no knocking: B offers only 7+, A says the versions do not match
            old = await knock_room(alice, None, version="6")
            status, refused = await knock(bob, old)
            assert (status, refused["errcode"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION"), refused
            # the room's server ACL keeps IP-literal servers (B is one) out of the handshake
            fenced = await knock_room(alice, None, acl={"allow": ["*"], "deny": [], "allow_ip_literals": False})
            status, refused = await knock(bob, fenced)
            assert (status, refused["errcode"]) == (403, "M_FORBIDDEN"), refused
            assert "server ACL" in refused["error"], refused
            # none of them left a knock behind on either side
            assert (await sync(bob))["rooms"]["knock"] == {}
            for room_id in (private, old, fenced):
                assert await member(alice, room_id, bob.user_id) is None
            # an unknown room: 404 from A
            status, refused = await knock(bob, "!nowhere:" + a_name)
            assert (status, refused["errcode"]) == (404, "M_NOT_FOUND"), refused

            # a local knock (the room is on erin's own server) and the same refusal of a version 6 room
            open_door = await knock_room(alice, "door", version="7")
            status, answer = await erin.request("POST", f"{V3}/knock/{q('#door:' + a_name)}", {"reason": "hi"})
            assert (status, answer) == (200, {"room_id": open_door}), answer
            shown = await knocked(erin, open_door)
            assert shown and any(e["type"] == "m.room.join_rules" for e in shown["knock_state"]["events"]), shown
            assert (await membership_is(alice, open_door, erin.user_id, "knock"))["reason"] == "hi"
            status, refused = await erin.request("POST", f"{V3}/knock/{q(old)}", {})
            assert (status, refused["errcode"]) == (403, "M_FORBIDDEN"), refused

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 180))


def test_a_refused_knock_and_a_withdrawn_invite_reach_the_users_server(tmp_path):
    # B holds neither room (no member of B is in it): only the room's server can tell B, over /send.
    async def main(gw) -> None:
        async with http_session() as session:
            alice, bob, carol = await cast(session, gw)
            room_id = await knock_room(alice, "gate")
            status, answer = await bob.request("POST", f"{V3}/knock/{q(room_id)}?via={q(gw['a'].server_name)}", {})
            assert status == 200, answer
            await until(lambda: knocked(bob, room_id), what="bob's knock in his sync")
            await until(lambda: membership_is(alice, room_id, bob.user_id, "knock"), what="bob's knock on A")
            # alice refuses the knock (a kick of the knocker): bob's sync moves the room from knock to leave
            since = (await sync(bob))["next_batch"]
            status, answer = await alice.request("POST", f"{V3}/rooms/{q(room_id)}/kick",
                                                 {"user_id": bob.user_id, "reason": "not today"})  # fmt: skip
            assert status == 200, answer
            left = await until(lambda: _left(bob, room_id, since), what="the refusal in bob's sync")
            assert (await knocked(bob, room_id)) is None
            refusal = [e for e in left["timeline"]["events"] if e["type"] == "m.room.member"]
            assert refusal and refusal[-1]["content"]["membership"] == "leave", left
            assert refusal[-1]["sender"] == alice.user_id and refusal[-1]["content"]["reason"] == "not today"

            # alice invites carol, then thinks better of it: the invite leaves carol's sync for leave
            status, answer = await alice.request("POST", f"{V3}/rooms/{q(room_id)}/invite", {"user_id": carol.user_id})
            assert status == 200, answer
            await until(lambda: invited(carol, room_id), what="the invite in carol's sync")
            since = (await sync(carol))["next_batch"]
            status, answer = await alice.request("POST", f"{V3}/rooms/{q(room_id)}/kick", {"user_id": carol.user_id})
            assert status == 200, answer
            await until(lambda: _left(carol, room_id, since), what="the withdrawn invite in carol's sync")
            assert (await invited(carol, room_id)) is None
            # carol cannot join on the withdrawn invite (the room's server refuses: knock rule, no invite)
            status, refused = await carol.request("POST", f"{V3}/join/{q(room_id)}?server_name={q(gw['a'].server_name)}",
                                                  {})  # fmt: skip
            assert status == 403, refused

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 180))


async def _left(client, room_id, since):
    """The room's entry under ``rooms.leave`` in ``client``'s sync from ``since``, or None."""
    return (await sync(client, since))["rooms"].get("leave", {}).get(room_id)
