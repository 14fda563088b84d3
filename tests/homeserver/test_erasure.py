"""Erasure on deactivation (``POST /account/deactivate`` with ``"erase": true``) over real HTTP against a gateway
in the test's loop: the erased user's messages, reply and edit reach a later joiner and a world_readable reader
redacted (/sync, /messages, /context, /event, /relations, search finds none of their text), while a member of
the room at the time still reads them whole; the erasure survives a restart; a plain deactivation erases nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from harness import Client, expect, gateway_in_loop, in_loop

from lowband.gateway.config import RateLimits

V3 = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"
PW = "secret-pw"


def q(value: str) -> str:
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[tuple[aiohttp.ClientSession, str, Any]]:
    found: list[Any] = []
    async with gateway_in_loop(tmp_path, on_ready=found.append, rate_limits=RateLimits(enabled=False)) as url, \
            aiohttp.ClientSession() as session:  # fmt: skip
        yield session, url, found[0]


async def user(session: aiohttp.ClientSession, url: str, name: str) -> Client:
    client = Client(session, url)
    await client.register(name)
    return client


async def send(client: Client, room: str, content: dict[str, Any]) -> str:
    path = f"{V3}/rooms/{q(room)}/send/m.room.message/{time.monotonic_ns()}"
    return str(expect(await client.request("PUT", path, content), 200)["event_id"])


async def deactivate(client: Client, *, erase: bool) -> None:
    assert client.user_id is not None
    body: dict[str, Any] = {"auth": {"type": "m.login.password", "password": PW,
                                     "identifier": {"type": "m.id.user", "user": client.user_id}}}  # fmt: skip
    if erase:
        body["erase"] = True
    assert expect(await client.request("POST", V3 + "/account/deactivate", body), 200) == {
        "id_server_unbind_result": "no-support"}


async def search(client: Client, term: str) -> list[dict[str, Any]]:
    body = expect(await client.request("POST", V3 + "/search", {
        "search_categories": {"room_events": {"search_term": term}}}), 200)  # fmt: skip
    return list(body["search_categories"]["room_events"]["results"])


async def messages(client: Client, room: str) -> dict[str, dict[str, Any]]:
    chunk = expect(await client.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=100"), 200)["chunk"]
    return {e["event_id"]: e for e in chunk}


def erased(event: dict[str, Any]) -> bool:
    """Served as the redaction algorithm leaves an m.room.message: no content left, and not marked as redacted
    by any event (there was no redaction)."""
    return event["content"] == {} and "redacted_because" not in event.get("unsigned", {})


@in_loop
async def test_erased_users_events_are_redacted_for_later_readers_only(tmp_path: Path) -> None:
    async with running(tmp_path) as (session, url, svc):
        alice, bob = await user(session, url, "alice"), await user(session, url, "bob")
        room = expect(await alice.request("POST", V3 + "/createRoom", {
            "preset": "public_chat",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                               "content": {"history_visibility": "world_readable"}}]}), 200)["room_id"]  # fmt: skip
        expect(await bob.request("POST", f"{V3}/join/{q(room)}", {}), 200)
        hello = await send(alice, room, {"msgtype": "m.text", "body": "hello bob"})
        original = await send(bob, room, {"msgtype": "m.text", "body": "zebrafish original"})
        reply = await send(bob, room, {"msgtype": "m.text", "body": "zebrafish reply",
                                       "m.relates_to": {"m.in_reply_to": {"event_id": hello}}})  # fmt: skip
        edit = await send(bob, room, {"msgtype": "m.text", "body": "* zebrafish edited",
                                      "m.new_content": {"msgtype": "m.text", "body": "zebrafish edited"},
                                      "m.relates_to": {"rel_type": "m.replace", "event_id": original}})  # fmt: skip
        bobs = (original, reply, edit)
        after = await send(alice, room, {"msgtype": "m.text", "body": "alice after"})
        deadline = time.monotonic() + 10
        while len(await search(alice, "zebrafish")) < 3:  # the search index has taken bob's three messages
            assert time.monotonic() < deadline, "search never found bob's messages"
            await asyncio.sleep(0.05)

        await deactivate(bob, erase=True)
        assert "@bob:localhost" in svc.sync.erased
        carol, dave = await user(session, url, "carol"), await user(session, url, "dave")
        expect(await carol.request("POST", f"{V3}/join/{q(room)}", {}), 200)  # a later joiner; dave only reads

        # an earlier member still reads everything whole
        seen = await messages(alice, room)
        assert seen[original]["content"]["body"] == "zebrafish original"
        assert seen[reply]["content"]["m.relates_to"] == {"m.in_reply_to": {"event_id": hello}}
        assert seen[edit]["content"]["m.new_content"]["body"] == "zebrafish edited"
        assert len(await search(alice, "zebrafish")) == 3
        context = expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/context/{q(reply)}?limit=4"), 200)
        assert context["event"]["content"]["body"] == "zebrafish reply"

        for reader in (carol, dave):  # a later joiner and a world_readable reader who never joined
            seen = await messages(reader, room)
            assert all(erased(seen[e]) for e in bobs), [seen[e] for e in bobs]
            assert all(seen[e]["sender"] == "@bob:localhost" and seen[e]["type"] == "m.room.message" for e in bobs)
            assert seen[hello]["content"]["body"] == "hello bob" and seen[after]["content"]["body"] == "alice after"
            got = expect(await reader.request("GET", f"{V3}/rooms/{q(room)}/event/{q(original)}"), 200)
            assert erased(got) and "m.relations" not in got.get("unsigned", {})  # the edit is not bundled either
            context = expect(await reader.request("GET", f"{V3}/rooms/{q(room)}/context/{q(reply)}?limit=4"), 200)
            assert erased(context["event"])
            around = {e["event_id"]: e for e in context["events_before"] + context["events_after"]}
            assert erased(around[original]) and erased(around[edit]) and around[hello]["content"]["body"]
            related = expect(await reader.request("GET", f"{V1}/rooms/{q(room)}/relations/{q(original)}"), 200)
            assert [e["event_id"] for e in related["chunk"]] == [edit] and erased(related["chunk"][0])
        # search covers the rooms one is in: carol finds alice's text but none of bob's
        assert await search(carol, "zebrafish") == []
        assert [r["result"]["event_id"] for r in await search(carol, "after")] == [after]

        # carol's /sync timeline: bob's events redacted, bob's join still a join
        sync_filter = json.dumps({"room": {"timeline": {"limit": 50}}})
        synced = expect(await carol.request("GET", f"{V3}/sync?filter={q(sync_filter)}"), 200)
        timeline = {e["event_id"]: e for e in synced["rooms"]["join"][room]["timeline"]["events"]}
        assert all(erased(timeline[e]) for e in bobs)
        bob_members = [e for e in timeline.values() if e["type"] == "m.room.member" and e["state_key"] == "@bob:localhost"]
        assert [e["content"]["membership"] for e in bob_members] == ["join", "leave"]
        assert timeline[hello]["content"]["body"] == "hello bob"
        # alice's /sync keeps them whole
        synced = expect(await alice.request("GET", f"{V3}/sync?filter={q(sync_filter)}"), 200)
        timeline = {e["event_id"]: e for e in synced["rooms"]["join"][room]["timeline"]["events"]}
        assert timeline[original]["content"]["body"] == "zebrafish original"
        # bob's profile and account data went with the account
        row = svc.store.get_user("@bob:localhost")
        assert row is not None and row["deactivated"] and row["displayname"] is None

    # the erasure is kept on disk: after a restart a later reader still gets redacted copies
    async with running(tmp_path) as (session, url, svc):
        assert "@bob:localhost" in svc.sync.erased
        carol.session, carol.base, alice.session, alice.base = session, url, session, url
        seen = await messages(carol, room)
        assert all(erased(seen[e]) for e in bobs)
        assert (await messages(alice, room))[original]["content"]["body"] == "zebrafish original"


@in_loop
async def test_deactivation_without_erase_keeps_events_readable(tmp_path: Path) -> None:
    async with running(tmp_path) as (session, url, svc):
        alice, erin = await user(session, url, "alice"), await user(session, url, "erin")
        room = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)["room_id"]
        expect(await erin.request("POST", f"{V3}/join/{q(room)}", {}), 200)
        said = await send(erin, room, {"msgtype": "m.text", "body": "still here"})
        await deactivate(erin, erase=False)
        assert svc.sync.erased == set()
        frank = await user(session, url, "frank")
        expect(await frank.request("POST", f"{V3}/join/{q(room)}", {}), 200)
        got = expect(await frank.request("GET", f"{V3}/rooms/{q(room)}/event/{q(said)}"), 200)
        assert got["content"]["body"] == "still here"
