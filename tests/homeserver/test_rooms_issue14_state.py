"""Membership as state (``PUT /state/m.room.member/{userId}``), custom join content, no-op state deduplicated and
alias deletion cleaning ``m.room.canonical_alias``, through the client-server API of a gateway in the test's loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from harness import Client
from test_relations import V3, expect, gateway, make_room, q


def member_path(room: str, user: str) -> str:
    return f"{V3}/rooms/{q(room)}/state/m.room.member/{q(user)}"


async def member(client: Client, room: str, user: str) -> Any:
    return expect(await client.request("GET", member_path(room, user) + "?format=event"), 200)


async def state_event(client: Client, room: str, event_type: str, key: str = "") -> Any:
    return expect(await client.request("GET", f"{V3}/rooms/{q(room)}/state/{event_type}/{q(key)}?format=event"), 200)


async def timeline_count(client: Client, room: str) -> int:
    page = expect(await client.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=1000"), 200)
    return len(page["chunk"])


def test_membership_through_the_state_endpoint(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as ((alice, bob, carol), _):
            room = await make_room(alice, bob)
            # One's own join: a new displayname, kept as sent; the same again makes no event.
            first = expect(
                await bob.request(
                    "PUT", member_path(room, bob.user_id), {"membership": "join", "displayname": "Bobby"}
                ),
                200,
            )["event_id"]
            event = await member(bob, room, bob.user_id)
            assert event["event_id"] == first and event["content"] == {"membership": "join", "displayname": "Bobby"}
            count = await timeline_count(alice, room)
            again = expect(
                await bob.request(
                    "PUT", member_path(room, bob.user_id), {"membership": "join", "displayname": "Bobby"}
                ),
                200,
            )["event_id"]
            assert again == first and await timeline_count(alice, room) == count
            joined = expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/joined_members"), 200)["joined"]
            assert joined[bob.user_id]["display_name"] == "Bobby"

            # Invite with custom content, withdraw it (leave on another user), ban, unban: the auth rules judge.
            expect(
                await alice.request(
                    "PUT",
                    member_path(room, carol.user_id),
                    {"membership": "invite", "reason": "come", "is_direct": True},
                ),
                200,
            )
            invited = await member(alice, room, carol.user_id)
            assert invited["content"] == {"membership": "invite", "reason": "come", "is_direct": True}
            sync = expect(await carol.request("GET", f"{V3}/sync"), 200)
            assert room in sync["rooms"]["invite"]
            expect(await alice.request("PUT", member_path(room, carol.user_id), {"membership": "leave"}), 200)
            assert (await member(alice, room, carol.user_id))["content"] == {"membership": "leave"}
            expect(await alice.request("PUT", member_path(room, carol.user_id),
                                       {"membership": "ban", "reason": "spam"}), 200)  # fmt: skip
            assert (await member(alice, room, carol.user_id))["content"]["membership"] == "ban"
            expect(
                await bob.request("PUT", member_path(room, alice.user_id), {"membership": "ban"}), 403, "M_FORBIDDEN"
            )
            expect(await bob.request("PUT", member_path(room, alice.user_id), {"membership": "join"}), 403,
                   "M_FORBIDDEN")  # fmt: skip
            expect(await bob.request("PUT", member_path(room, alice.user_id), {"membership": "leave"}), 403,
                   "M_FORBIDDEN")  # fmt: skip
            # Leaving oneself through state.
            expect(await bob.request("PUT", member_path(room, bob.user_id), {"membership": "leave"}), 200)
            assert expect(await bob.request("GET", f"{V3}/joined_rooms"), 200)["joined_rooms"] == []

    asyncio.run(run())


def test_membership_state_refuses_hostile_input(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
            room = await make_room(alice, bob)
            mine = member_path(room, bob.user_id)
            for body in ({}, {"membership": "admin"}, {"membership": 1}, {"membership": None},
                         {"membership": "join", "displayname": 5}, {"membership": "join", "reason": ["x"]},
                         {"membership": "join", "avatar_url": {}}):  # fmt: skip
                expect(await bob.request("PUT", mine, body), 400, "M_BAD_JSON")
            for key in ("bob", "@bob", "x" * 300, "!room:localhost"):
                expect(await bob.request("PUT", member_path(room, key), {"membership": "join"}), 400,
                       "M_INVALID_PARAM")  # fmt: skip
            expect(await bob.request("PUT", mine, {"membership": "join", "displayname": "x" * 70_000}), 413,
                   "M_TOO_LARGE")  # fmt: skip
            expect(await bob.request("PUT", member_path("!nowhere:localhost", bob.user_id), {"membership": "join"}),
                   404, "M_NOT_FOUND")  # fmt: skip
            # What only the server sets is dropped: a client cannot vouch for its own restricted join.
            expect(
                await bob.request(
                    "PUT",
                    mine,
                    {
                        "membership": "join",
                        "join_authorised_via_users_server": alice.user_id,
                        "third_party_invite": {"x": 1},
                        "custom": 1,
                    },
                ),
                200,
            )
            content = (await member(bob, room, bob.user_id))["content"]
            assert content == {"membership": "join", "custom": 1}

    asyncio.run(run())


def test_join_keeps_custom_content(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as ((alice, bob, carol), _):
            room = await make_room(alice)
            body = {"reason": "hello", "displayname": "Bee", "org.example.badge": {"colour": "red"},
                    "membership": "leave", "join_authorised_via_users_server": alice.user_id}  # fmt: skip
            expect(await bob.request("POST", f"{V3}/join/{q(room)}", body), 200)
            event = await member(alice, room, bob.user_id)
            assert event["content"] == {"membership": "join", "reason": "hello", "displayname": "Bee",
                                        "org.example.badge": {"colour": "red"}}  # fmt: skip
            # The same join again is a no-op; a new displayname through /rooms/{id}/join is a new join event.
            expect(await bob.request("POST", f"{V3}/rooms/{q(room)}/join", {"displayname": "Bee"}), 200)
            assert (await member(alice, room, bob.user_id))["event_id"] == event["event_id"]
            expect(await bob.request("POST", f"{V3}/rooms/{q(room)}/join", {"displayname": "Bea"}), 200)
            renamed = await member(alice, room, bob.user_id)
            assert renamed["event_id"] != event["event_id"] and renamed["content"]["displayname"] == "Bea"
            for bad in ({"reason": 7}, {"displayname": ["x"]}):
                expect(await carol.request("POST", f"{V3}/join/{q(room)}", bad), 400, "M_BAD_JSON")
            assert expect(await carol.request("GET", f"{V3}/joined_rooms"), 200)["joined_rooms"] == []

    asyncio.run(run())


def test_identical_state_twice_is_one_event(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
            room = await make_room(
                alice, bob, power_level_content_override={"users": {"@alice:localhost": 100, "@bob:localhost": 50}}
            )
            path = f"{V3}/rooms/{q(room)}/state/m.room.topic"
            first = expect(await alice.request("PUT", path, {"topic": "t"}), 200)["event_id"]
            count = await timeline_count(alice, room)
            assert expect(await alice.request("PUT", path, {"topic": "t"}), 200)["event_id"] == first
            assert expect(await alice.request("PUT", path + "/", {"topic": "t"}), 200)["event_id"] == first
            assert await timeline_count(alice, room) == count
            # Another sender, or other content, or another state key is a change.
            by_bob = expect(await bob.request("PUT", path, {"topic": "t"}), 200)["event_id"]
            other = expect(await alice.request("PUT", path, {"topic": "u"}), 200)["event_id"]
            keyed = expect(await alice.request("PUT", path + "/k", {"topic": "u"}), 200)["event_id"]
            assert len({first, by_bob, other, keyed}) == 4
            assert (await state_event(alice, room, "m.room.topic"))["event_id"] == other
            # A user who left gets no shortcut: the auth rules refuse them.
            expect(await bob.request("POST", f"{V3}/rooms/{q(room)}/leave", {}), 200)
            expect(await bob.request("PUT", path + "/b", {"topic": "x"}), 403, "M_FORBIDDEN")

    asyncio.run(run())


def test_deleting_an_alias_cleans_the_canonical_alias(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
            room = await make_room(alice, bob, room_alias_name="main")
            main, alt, bobs = "#main:localhost", "#alt:localhost", "#bobs:localhost"
            expect(await alice.request("PUT", f"{V3}/directory/room/{q(alt)}", {"room_id": room}), 200)
            expect(await bob.request("PUT", f"{V3}/directory/room/{q(bobs)}", {"room_id": room}), 200)
            canonical = f"{V3}/rooms/{q(room)}/state/m.room.canonical_alias"
            expect(await alice.request("PUT", canonical, {"alias": main, "alt_aliases": [alt, bobs]}), 200)

            expect(await alice.request("DELETE", f"{V3}/directory/room/{q(alt)}"), 200)
            now = await state_event(alice, room, "m.room.canonical_alias")
            assert now["content"] == {"alias": main, "alt_aliases": [bobs]} and now["sender"] == alice.user_id
            # bob made #bobs and may delete it, but may not send m.room.canonical_alias (level 50): left as it is.
            expect(await bob.request("DELETE", f"{V3}/directory/room/{q(bobs)}"), 200)
            expect(await bob.request("GET", f"{V3}/directory/room/{q(bobs)}"), 404)
            assert (await state_event(alice, room, "m.room.canonical_alias"))["event_id"] == now["event_id"]
            expect(await alice.request("DELETE", f"{V3}/directory/room/{q(main)}"), 200)
            assert (await state_event(alice, room, "m.room.canonical_alias"))["content"] == {"alt_aliases": [bobs]}
            expect(await alice.request("DELETE", f"{V3}/directory/room/{q(main)}"), 404, "M_NOT_FOUND")

    asyncio.run(run())
