"""Profiles, account data, receipts, read markers, typing, the room directory
and the start-up endpoints, against a gateway running in the test's loop;
then the same flows through matrix-nio."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness import Client, expect, gateway_in_loop, users_gateway

V3 = "/_matrix/client/v3"


def q(value: str) -> str:
    """A path segment, percent-encoded."""
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, *names: str, **config: Any) -> AsyncIterator[list[Client]]:
    """A gateway and one registered client per name."""
    async with users_gateway(tmp_path, *names, **config) as (clients, _, _):
        yield clients


async def make_room(owner: Client, *joiners: Client, **create: Any) -> str:
    body = expect(await owner.request("POST", V3 + "/createRoom", {"preset": "public_chat", **create}), 200)
    for member in joiners:
        expect(await member.request("POST", f"{V3}/join/{q(body['room_id'])}", {}), 200)
    return str(body["room_id"])


async def send_text(client: Client, room_id: str, text: str) -> str:
    path = f"{V3}/rooms/{q(room_id)}/send/m.room.message/{time.monotonic_ns()}"
    return str(expect(await client.request("PUT", path, {"msgtype": "m.text", "body": text}), 200)["event_id"])


async def sync(client: Client, since: str | None = None, timeout: int = 0) -> dict[str, Any]:
    query = f"?timeout={timeout}" + (f"&since={since}" if since else "")
    return dict(expect(await client.request("GET", V3 + "/sync" + query), 200))


def ephemeral(body: dict[str, Any], room_id: str, event_type: str) -> list[dict[str, Any]]:
    room = body["rooms"]["join"].get(room_id, {})
    return [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == event_type]


# ------------------------------------------------------------------ profile


def test_profile_fields_and_errors(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as (alice, bob):
            me = f"{V3}/profile/{q(alice.user_id)}"
            assert expect(await alice.request("GET", me, token=False), 200) == {}
            expect(await alice.request("GET", me + "/displayname", token=False), 404, "M_NOT_FOUND")
            expect(await alice.request("GET", f"{V3}/profile/{q('@nobody:localhost')}"), 404, "M_NOT_FOUND")
            # another server's user is asked there: one this gateway may not reach (loopback, blocklisted) is a 502
            expect(await alice.request("GET", f"{V3}/profile/{q('@alice:127.0.0.1:9')}"), 502, "M_UNKNOWN")
            expect(await alice.request("GET", f"{V3}/profile/not-a-user"), 400, "M_INVALID_PARAM")

            expect(await alice.request("PUT", me + "/displayname", {"displayname": "Alice Ä"}), 200)
            expect(await alice.request("PUT", me + "/avatar_url", {"avatar_url": "mxc://localhost/abc_D-1"}), 200)
            profile = expect(await bob.request("GET", me, token=False), 200)
            assert profile == {"displayname": "Alice Ä", "avatar_url": "mxc://localhost/abc_D-1"}
            assert expect(await bob.request("GET", me + "/displayname"), 200) == {"displayname": "Alice Ä"}
            assert expect(await bob.request("GET", me + "/avatar_url"), 200) == {"avatar_url": profile["avatar_url"]}

            expect(await bob.request("PUT", me + "/displayname", {"displayname": "Mallory"}), 403, "M_FORBIDDEN")
            no_token = await alice.request("PUT", me + "/displayname", {"displayname": "x"}, token=False)
            expect(no_token, 401, "M_MISSING_TOKEN")
            expect(await alice.request("PUT", me + "/displayname", {}), 400, "M_MISSING_PARAM")
            expect(await alice.request("PUT", me + "/displayname", {"displayname": 7}), 400, "M_BAD_JSON")
            expect(await alice.request("PUT", me + "/displayname", {"displayname": "x" * 257}), 400, "M_TOO_LARGE")
            expect(await alice.request("PUT", me + "/displayname", raw=b"[1]"), 400, "M_BAD_JSON")
            for bad in ("http://example.org/a.png", "mxc://localhost/../etc", "mxc://localhost/", "mxc:/x/y"):
                expect(await alice.request("PUT", me + "/avatar_url", {"avatar_url": bad}), 400, "M_INVALID_PARAM")
            expect(await alice.request("PUT", me + "/avatar_url", {"avatar_url": "mxc://localhost/" + "a" * 250}),
                   400, "M_TOO_LARGE")  # fmt: skip
            expect(await alice.request("GET", me + "/nickname"), 404, "M_UNRECOGNIZED")
            assert expect(await bob.request("GET", me), 200)["displayname"] == "Alice Ä"  # refusals changed nothing

            expect(await alice.request("PUT", me + "/avatar_url", {"avatar_url": ""}), 200)
            expect(await alice.request("PUT", me + "/displayname", {"displayname": None}), 200)
            assert expect(await bob.request("GET", me), 200) == {}
            expect(await bob.request("GET", me + "/avatar_url"), 404, "M_NOT_FOUND")

    asyncio.run(run())


def test_displayname_change_reaches_other_members(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
            room_id = await make_room(alice, bob)
            other_room = await make_room(alice)
            await make_room(carol)  # alice is not in it: no event there
            name, avatar = (f"{V3}/profile/{q(alice.user_id)}/{field}" for field in ("displayname", "avatar_url"))
            history = f"{V3}/rooms/{q(room_id)}/messages?dir=b&limit=50"
            since = (await sync(bob))["next_batch"]
            waiting = asyncio.create_task(sync(bob, since, timeout=10_000))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            expect(await alice.request("PUT", name, {"displayname": "Alice A."}), 200)
            body = await asyncio.wait_for(waiting, 10)
            assert time.monotonic() - started < 5  # the long poll woke up
            timeline = body["rooms"]["join"][room_id]["timeline"]["events"]
            members = [e for e in timeline if e["type"] == "m.room.member" and e["state_key"] == alice.user_id]
            assert members[-1]["content"] == {"membership": "join", "displayname": "Alice A."}

            joined = expect(await bob.request("GET", f"{V3}/rooms/{q(room_id)}/joined_members"), 200)["joined"]
            assert joined[alice.user_id]["display_name"] == "Alice A."
            own_member = f"{V3}/rooms/{q(other_room)}/state/m.room.member/{q(alice.user_id)}"
            own = expect(await alice.request("GET", own_member), 200)
            assert own["displayname"] == "Alice A."

            # The same name again sends nothing; an avatar keeps the name.
            count = len(expect(await bob.request("GET", history), 200)["chunk"])
            expect(await alice.request("PUT", name, {"displayname": "Alice A."}), 200)
            expect(await alice.request("PUT", avatar, {"avatar_url": "mxc://localhost/av"}), 200)
            chunk = expect(await bob.request("GET", history), 200)["chunk"]
            assert len(chunk) == count + 1
            assert chunk[0]["content"] == {
                "membership": "join", "displayname": "Alice A.", "avatar_url": "mxc://localhost/av",
            }  # fmt: skip

            # Someone who joins later gets the current profile in their join event.
            carol_name = f"{V3}/profile/{q(carol.user_id)}/displayname"
            expect(await carol.request("PUT", carol_name, {"displayname": "Carol"}), 200)
            expect(await carol.request("POST", f"{V3}/join/{q(room_id)}", {}), 200)
            joined = expect(await bob.request("GET", f"{V3}/rooms/{q(room_id)}/joined_members"), 200)["joined"]
            assert joined[carol.user_id]["display_name"] == "Carol"

    asyncio.run(run())


# ------------------------------------------------------------- account data


def test_account_data(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as (alice, bob):
            room_id = await make_room(alice)
            glob = f"{V3}/user/{q(alice.user_id)}/account_data/org.example.config"
            per_room = f"{V3}/user/{q(alice.user_id)}/rooms/{q(room_id)}/account_data/org.example.room"
            expect(await alice.request("GET", glob), 404, "M_NOT_FOUND")
            expect(await alice.request("GET", per_room), 404, "M_NOT_FOUND")
            since = (await sync(alice))["next_batch"]

            waiting = asyncio.create_task(sync(alice, since, timeout=10_000))
            await asyncio.sleep(0.1)
            expect(await alice.request("PUT", glob, {"theme": "dark", "n": [1, 2]}), 200)
            body = await asyncio.wait_for(waiting, 5)
            config_event = {"type": "org.example.config", "content": {"theme": "dark", "n": [1, 2]}}
            assert config_event in body["account_data"]["events"]
            assert expect(await alice.request("GET", glob), 200) == {"theme": "dark", "n": [1, 2]}

            expect(await alice.request("PUT", per_room, {"pinned": True}), 200)
            assert expect(await alice.request("GET", per_room), 200) == {"pinned": True}
            body = await sync(alice, body["next_batch"])
            assert body["rooms"]["join"][room_id]["account_data"]["events"] == [
                {"type": "org.example.room", "content": {"pinned": True}}
            ]
            room_type_globally = glob.replace("org.example.config", "org.example.room")
            expect(await alice.request("GET", room_type_globally), 404, "M_NOT_FOUND")

            expect(await bob.request("GET", glob), 403, "M_FORBIDDEN")
            expect(await bob.request("PUT", glob, {"x": 1}), 403, "M_FORBIDDEN")
            expect(await bob.request("GET", per_room), 403, "M_FORBIDDEN")
            expect(await alice.request("GET", glob, token=False), 401, "M_MISSING_TOKEN")
            expect(await alice.request("PUT", glob, raw=b'"text"'), 400, "M_BAD_JSON")
            expect(await alice.request("PUT", glob, raw=b"{nope"), 400, "M_NOT_JSON")
            bad_room = f"{V3}/user/{q(alice.user_id)}/rooms/not-a-room/account_data/org.example.room"
            expect(await alice.request("PUT", bad_room, {"x": 1}), 400, "M_INVALID_PARAM")
            expect(await alice.request("GET", bad_room), 400, "M_INVALID_PARAM")
            fully_read = f"{V3}/user/{q(alice.user_id)}/rooms/{q(room_id)}/account_data/m.fully_read"
            expect(await alice.request("PUT", fully_read, {"event_id": "$x"}), 405, "M_BAD_JSON")
            push_rules = glob.replace("org.example.config", "m.push_rules")
            expect(await alice.request("PUT", push_rules, {}), 405, "M_BAD_JSON")
            assert bob.user_id  # bob's own data is separate
            assert expect(await bob.request("GET", f"{V3}/user/{q(bob.user_id)}/account_data/org.example.config"),
                          404, "M_NOT_FOUND")  # fmt: skip

    asyncio.run(run())


# --------------------------------------------------- receipts, read markers


def test_receipts(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
            room_id = await make_room(alice, bob)
            elsewhere = await make_room(carol)
            first = await send_text(alice, room_id, "one")
            second = await send_text(alice, room_id, "two")
            foreign = await send_text(carol, elsewhere, "not yours")
            receipt = f"{V3}/rooms/{q(room_id)}/receipt"
            since = (await sync(alice))["next_batch"]

            waiting = asyncio.create_task(sync(alice, since, timeout=10_000))
            await asyncio.sleep(0.1)
            expect(await bob.request("POST", f"{receipt}/m.read/{q(second)}", {"thread_id": "main"}), 200)
            body = await asyncio.wait_for(waiting, 5)
            [event] = ephemeral(body, room_id, "m.receipt")
            assert list(event["content"]) == [second]
            assert isinstance(event["content"][second]["m.read"][bob.user_id]["ts"], int)

            # An older event does not move the receipt (of the same thread: "main") back.
            expect(await bob.request("POST", f"{receipt}/m.read/{q(first)}", {"thread_id": "main"}), 200)
            body = await sync(alice, body["next_batch"])
            assert ephemeral(body, room_id, "m.receipt") == []
            initial = await sync(alice)
            [event] = ephemeral(initial, room_id, "m.receipt")
            assert bob.user_id in event["content"][second]["m.read"]

            # m.fully_read through /receipt is the read marker in room account data.
            expect(await bob.request("POST", f"{receipt}/m.fully_read/{q(first)}", raw=b""), 200)
            marker = f"{V3}/user/{q(bob.user_id)}/rooms/{q(room_id)}/account_data/m.fully_read"
            assert expect(await bob.request("GET", marker), 200) == {"event_id": first}

            expect(await bob.request("POST", f"{receipt}/m.unknown/{q(second)}", {}), 400, "M_INVALID_PARAM")
            expect(await bob.request("POST", f"{receipt}/m.read/{q('$nope')}", {}), 404, "M_NOT_FOUND")
            expect(await bob.request("POST", f"{receipt}/m.read/{q(foreign)}", {}), 404, "M_NOT_FOUND")
            expect(await carol.request("POST", f"{receipt}/m.read/{q(second)}", {}), 403, "M_FORBIDDEN")
            expect(await bob.request("POST", f"{receipt}/m.read/{q(second)}", {"thread_id": 5}), 400, "M_INVALID_PARAM")
            bad_room = f"{V3}/rooms/not-a-room/receipt/m.read/{q(second)}"
            expect(await bob.request("POST", bad_room, {}), 400, "M_INVALID_PARAM")
            expect(await bob.request("POST", f"{receipt}/m.read/{q(second)}", {}, token=False), 401, "M_MISSING_TOKEN")

    asyncio.run(run())


def test_private_receipt_is_seen_only_by_its_owner(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as (alice, bob):
            room_id = await make_room(alice, bob)
            event_id = await send_text(alice, room_id, "hello")
            since = (await sync(alice))["next_batch"]
            expect(await bob.request("POST", f"{V3}/rooms/{q(room_id)}/receipt/m.read.private/{q(event_id)}", {}), 200)
            [event] = ephemeral(await sync(bob), room_id, "m.receipt")
            assert bob.user_id in event["content"][event_id]["m.read.private"]
            assert ephemeral(await sync(alice), room_id, "m.receipt") == []
            assert ephemeral(await sync(alice, since), room_id, "m.receipt") == []

    asyncio.run(run())


def test_read_markers(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
            room_id = await make_room(alice, bob)
            first = await send_text(alice, room_id, "one")
            second = await send_text(alice, room_id, "two")
            markers = f"{V3}/rooms/{q(room_id)}/read_markers"
            marker = f"{V3}/user/{q(bob.user_id)}/rooms/{q(room_id)}/account_data/m.fully_read"
            since = (await sync(bob))["next_batch"]

            all_three = {"m.fully_read": first, "m.read": second, "m.read.private": second}
            expect(await bob.request("POST", markers, all_three), 200)
            assert expect(await bob.request("GET", marker), 200) == {"event_id": first}
            body = await sync(bob, since)
            room = body["rooms"]["join"][room_id]
            assert {"type": "m.fully_read", "content": {"event_id": first}} in room["account_data"]["events"]
            [event] = ephemeral(body, room_id, "m.receipt")
            assert set(event["content"][second]) == {"m.read", "m.read.private"}
            [event] = ephemeral(await sync(alice), room_id, "m.receipt")
            assert bob.user_id in event["content"][second]["m.read"]

            # One bad event refuses the whole request.
            one_bad = {"m.fully_read": second, "m.read": "$missing"}
            expect(await bob.request("POST", markers, one_bad), 404, "M_NOT_FOUND")
            assert expect(await bob.request("GET", marker), 200) == {"event_id": first}
            expect(await bob.request("POST", markers, {"m.fully_read": second}), 200)
            assert expect(await bob.request("GET", marker), 200) == {"event_id": second}
            expect(await bob.request("POST", markers, {"m.fully_read": first}), 200)  # never backwards
            assert expect(await bob.request("GET", marker), 200) == {"event_id": second}

            expect(await bob.request("POST", markers, {}), 200)
            expect(await bob.request("POST", markers, {"m.read": 3}), 400, "M_BAD_JSON")
            expect(await carol.request("POST", markers, {"m.fully_read": first}), 403, "M_FORBIDDEN")
            expect(await bob.request("POST", markers, {"m.fully_read": first}, token=False), 401, "M_MISSING_TOKEN")

    asyncio.run(run())


# ------------------------------------------------------------------ typing


def test_typing(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
            room_id = await make_room(alice, bob)
            typing = f"{V3}/rooms/{q(room_id)}/typing/{q(bob.user_id)}"
            since = (await sync(alice))["next_batch"]

            waiting = asyncio.create_task(sync(alice, since, timeout=10_000))
            await asyncio.sleep(0.1)
            expect(await bob.request("PUT", typing, {"typing": True, "timeout": 20_000}), 200)
            body = await asyncio.wait_for(waiting, 5)
            assert ephemeral(body, room_id, "m.typing") == [
                {"type": "m.typing", "content": {"user_ids": [bob.user_id]}}
            ]

            expect(await bob.request("PUT", typing, {"typing": False}), 200)
            body = await sync(alice, body["next_batch"])
            assert ephemeral(body, room_id, "m.typing") == [{"type": "m.typing", "content": {"user_ids": []}}]

            expect(await bob.request("PUT", typing, {"typing": True, "timeout": 0}), 200)  # expires at once
            await asyncio.sleep(1.5)
            assert ephemeral(await sync(alice), room_id, "m.typing") == []

            expect(await alice.request("PUT", typing, {"typing": True}), 403, "M_FORBIDDEN")
            carol_typing = f"{V3}/rooms/{q(room_id)}/typing/{q(carol.user_id)}"
            expect(await carol.request("PUT", carol_typing, {"typing": True}), 403, "M_FORBIDDEN")
            expect(await bob.request("PUT", typing, {"timeout": 100}), 400, "M_MISSING_PARAM")
            expect(await bob.request("PUT", typing, {"typing": "yes"}), 400, "M_BAD_JSON")
            expect(await bob.request("PUT", typing, {"typing": True, "timeout": -1}), 400, "M_BAD_JSON")
            expect(await bob.request("PUT", typing, {"typing": True, "timeout": "5"}), 400, "M_BAD_JSON")
            expect(await bob.request("PUT", typing, {"typing": True}, token=False), 401, "M_MISSING_TOKEN")

    asyncio.run(run())


# ---------------------------------------------------------- room directory


def test_public_room_directory(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as (alice, bob, carol):
            big = await make_room(alice, bob, visibility="public", name="Big room", topic="Sensors",
                                  room_alias_name="big")  # fmt: skip
            small = await make_room(alice, visibility="public", name="Small room")
            hidden = await make_room(alice, name="Hidden")

            listing = expect(await carol.request("GET", V3 + "/publicRooms", token=False), 200)
            assert [e["room_id"] for e in listing["chunk"]] == [big, small]
            assert listing["total_room_count_estimate"] == 2 and "next_batch" not in listing
            assert listing["chunk"][0] == {
                "room_id": big, "name": "Big room", "topic": "Sensors", "canonical_alias": "#big:localhost",
                "num_joined_members": 2, "world_readable": False, "guest_can_join": False, "join_rule": "public",
            }  # fmt: skip

            page = expect(await carol.request("GET", V3 + "/publicRooms?limit=1"), 200)
            assert [e["room_id"] for e in page["chunk"]] == [big]
            page = expect(await carol.request("GET", f"{V3}/publicRooms?limit=1&since={page['next_batch']}"), 200)
            assert [e["room_id"] for e in page["chunk"]] == [small]
            assert "next_batch" not in page and page["prev_batch"] == "0"
            expect(await carol.request("GET", V3 + "/publicRooms?since=bogus"), 400, "M_INVALID_PARAM")
            expect(await carol.request("GET", V3 + "/publicRooms?limit=x"), 400, "M_INVALID_PARAM")
            expect(await carol.request("GET", V3 + "/publicRooms?server=not%20a%20server"), 400, "M_INVALID_PARAM")
            expect(await carol.request("GET", V3 + "/publicRooms?server=127.0.0.1:9"), 502, "M_UNKNOWN")
            expect(await carol.request("GET", V3 + "/publicRooms?server=localhost"), 200)  # this server: local

            search = {"filter": {"generic_search_term": "sensor"}}
            found = expect(await carol.request("POST", V3 + "/publicRooms", search), 200)
            assert [e["room_id"] for e in found["chunk"]] == [big]
            found = expect(await carol.request("POST", V3 + "/publicRooms", {"limit": 1}), 200)
            assert [e["room_id"] for e in found["chunk"]] == [big] and found["next_batch"]
            expect(await carol.request("POST", V3 + "/publicRooms", {"filter": []}), 400, "M_BAD_JSON")
            expect(await carol.request("POST", V3 + "/publicRooms", {}, token=False), 401, "M_MISSING_TOKEN")

            visibility = f"{V3}/directory/list/room/"
            assert expect(await carol.request("GET", visibility + q(big), token=False), 200) == {"visibility": "public"}
            assert expect(await carol.request("GET", visibility + q(hidden)), 200) == {"visibility": "private"}
            expect(await carol.request("GET", visibility + q("!unknown:localhost")), 404, "M_NOT_FOUND")
            public, private = {"visibility": "public"}, {"visibility": "private"}
            expect(await alice.request("PUT", visibility + q("!unknown:localhost"), public), 404, "M_NOT_FOUND")

            expect(await bob.request("PUT", visibility + q(big), private), 403, "M_FORBIDDEN")  # power 0
            expect(await carol.request("PUT", visibility + q(big), private), 403, "M_FORBIDDEN")  # not joined
            expect(await alice.request("PUT", visibility + q(big), {"visibility": "secret"}), 400, "M_INVALID_PARAM")
            expect(await alice.request("PUT", visibility + q(big), private), 200)
            expect(await alice.request("PUT", visibility + q(hidden), {}), 200)  # defaults to public
            listing = expect(await carol.request("GET", V3 + "/publicRooms"), 200)
            assert sorted(e["room_id"] for e in listing["chunk"]) == sorted([small, hidden])
            hidden_entry = next(e for e in listing["chunk"] if e["room_id"] == hidden)
            assert hidden_entry["join_rule"] == "public" and hidden_entry["name"] == "Hidden"

    asyncio.run(run())


# ----------------------------------------------------- start-up endpoints


def test_startup_endpoints(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as (alice, bob):
            rules = expect(await alice.request("GET", V3 + "/pushrules/"), 200)
            assert set(rules["global"]) == {"override", "content", "room", "sender", "underride"}
            assert rules["global"]["override"][0]["rule_id"] == ".m.rule.master"  # defaults: test_push_api.py
            expect(await alice.request("GET", V3 + "/pushrules/", token=False), 401, "M_MISSING_TOKEN")
            assert expect(await alice.request("GET", "/_matrix/client/r0/voip/turnServer"), 200) == {}

            whoami = expect(await alice.request("GET", V3 + "/account/whoami"), 200)
            devices = expect(await alice.request("GET", V3 + "/devices"), 200)["devices"]
            assert [d["device_id"] for d in devices] == [whoami["device_id"]]
            device = expect(await alice.request("GET", f"{V3}/devices/{whoami['device_id']}"), 200)
            assert device["device_id"] == whoami["device_id"]
            expect(await bob.request("GET", f"{V3}/devices/{whoami['device_id']}"), 404, "M_NOT_FOUND")
            expect(await alice.request("GET", V3 + "/devices", token=False), 401, "M_MISSING_TOKEN")

            presence = f"{V3}/presence/{q(alice.user_id)}/status"
            # alice and bob share no room: her presence is not bob's to read (test_presence.py has the rest)
            expect(await bob.request("GET", presence), 403, "M_FORBIDDEN")
            assert expect(await alice.request("GET", presence), 200) == {"presence": "offline"}
            expect(await bob.request("GET", f"{V3}/presence/{q('@ghost:localhost')}/status"), 404, "M_NOT_FOUND")
            assert expect(await alice.request("PUT", presence, {"presence": "online", "status_msg": "hi"}), 200) == {}
            expect(await bob.request("PUT", presence, {"presence": "online"}), 403, "M_FORBIDDEN")
            expect(await alice.request("PUT", presence, {"presence": "busy"}), 400, "M_INVALID_PARAM")
            expect(await alice.request("PUT", presence, {}), 400, "M_MISSING_PARAM")

    asyncio.run(run())


# --------------------------------------------------------------- matrix-nio


def test_matrix_nio_client(tmp_path: Path) -> None:
    """The real client library against the gateway: profile, typing, markers, media."""
    import nio

    async def run() -> None:
        async with gateway_in_loop(tmp_path) as url:
            nina, otto = nio.AsyncClient(url, ""), nio.AsyncClient(url, "")
            try:
                assert isinstance(await nina.register("nina", "pw-nina-123"), nio.RegisterResponse)
                assert isinstance(await otto.register("otto", "pw-otto-123"), nio.RegisterResponse)
                assert isinstance(await nina.set_displayname("Nina N."), nio.ProfileSetDisplayNameResponse)
                got = await otto.get_displayname(nina.user_id)
                assert isinstance(got, nio.ProfileGetDisplayNameResponse) and got.displayname == "Nina N."

                created = await nina.room_create(visibility=nio.RoomVisibility.public, name="nio room")
                assert isinstance(created, nio.RoomCreateResponse)
                assert isinstance(await otto.join(created.room_id), nio.JoinResponse)
                sent = await nina.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
                assert isinstance(sent, nio.RoomSendResponse)

                assert isinstance(await otto.sync(timeout=0), nio.SyncResponse)
                assert isinstance(await nina.room_typing(created.room_id, True, 10_000), nio.RoomTypingResponse)
                got_sync = await otto.sync(timeout=0)
                assert isinstance(got_sync, nio.SyncResponse)
                assert otto.rooms[created.room_id].typing_users == [nina.user_id]
                assert otto.rooms[created.room_id].user_name(nina.user_id) == "Nina N."

                markers = await otto.room_read_markers(created.room_id, sent.event_id, sent.event_id, sent.event_id)
                assert isinstance(markers, nio.RoomReadMarkersResponse)
                receipt = await otto.update_receipt_marker(created.room_id, sent.event_id)
                assert isinstance(receipt, nio.UpdateReceiptMarkerResponse)
                got_sync = await nina.sync(timeout=0)
                events = got_sync.rooms.join[created.room_id].ephemeral
                receipts = [r for e in events if isinstance(e, nio.ReceiptEvent) for r in e.receipts]
                assert any(r.user_id == otto.user_id and r.event_id == sent.event_id for r in receipts)

                payload = bytes(range(256)) * 64
                uploaded, _ = await nina.upload(lambda *_: payload, "image/png", "dots.png", filesize=len(payload))
                assert isinstance(uploaded, nio.UploadResponse), uploaded
                downloaded = await otto.download(mxc=uploaded.content_uri)
                assert isinstance(downloaded, nio.MemoryDownloadResponse), downloaded
                assert downloaded.body == payload
                assert downloaded.content_type == "image/png" and downloaded.filename == "dots.png"
                renamed = await otto.download(mxc=uploaded.content_uri, filename="Grüße.png")
                assert isinstance(renamed, nio.MemoryDownloadResponse) and renamed.filename == "Grüße.png"
                config = await otto.content_repository_config()
                assert isinstance(config, nio.ContentRepositoryConfigResponse)
                assert config.upload_size == 10 * 1024 * 1024
            finally:
                await nina.close()
                await otto.close()

    asyncio.run(run())
