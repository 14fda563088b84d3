"""/rooms/{roomId}/context/{eventId} through the client-server API of a gateway in the test's loop: the window
split, its tokens continuing with /messages, filters, lazy-loaded members, visibility and bad input."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from test_relations import V3, expect, gateway, make_room, q, text

from lowband.gateway.config import RateLimits


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"] for e in events]


async def context(client: Any, room: str, event_id: str, query: str = "") -> Any:
    return expect(await client.request("GET", f"{V3}/rooms/{q(room)}/context/{q(event_id)}?{query}"), 200)


def test_context_window_tokens_and_limits(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", rate_limits=RateLimits(enabled=False)) as ((alice, bob), _):
            room = await make_room(alice, bob)
            sent = [await text((alice, bob)[i % 2], room, f"m{i}") for i in range(20)]

            window = await context(bob, room, sent[10], "limit=4")
            assert window["event"]["event_id"] == sent[10] and window["event"]["content"]["body"] == "m10"
            assert ids(window["events_before"]) == [sent[9], sent[8]]  # newest first
            assert ids(window["events_after"]) == [sent[11], sent[12]]
            # The tokens go on with /messages: back from start, forward from end.
            back = expect(await bob.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=3"
                                                   f"&from={window['start']}"), 200)  # fmt: skip
            assert ids(back["chunk"]) == [sent[7], sent[6], sent[5]]
            forward = expect(await bob.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=f&limit=3"
                                                      f"&from={window['end']}"), 200)  # fmt: skip
            assert ids(forward["chunk"]) == [sent[13], sent[14], sent[15]]

            default = await context(bob, room, sent[10])
            assert len(default["events_before"]) == 5 and len(default["events_after"]) == 5
            alone = await context(bob, room, sent[10], "limit=0")
            assert alone["events_before"] == [] and alone["events_after"] == []
            one = await context(bob, room, sent[10], "limit=1")
            assert one["events_before"] == [] and ids(one["events_after"]) == [sent[11]]
            last = await context(bob, room, sent[19], "limit=6")
            assert ids(last["events_before"]) == [sent[18], sent[17], sent[16]] and last["events_after"] == []
            # A huge limit is lowered to the bound (100): the whole room fits.
            everything = await context(bob, room, sent[10], "limit=100000")
            assert ids(everything["events_after"]) == sent[11:]
            assert ids(everything["events_before"])[:10] == sent[:10][::-1]
            assert everything["events_before"][-1]["type"] == "m.room.create"

            # State at the end of the window, every member without lazy loading.
            members = {e["state_key"] for e in window["state"] if e["type"] == "m.room.member"}
            assert members == {alice.user_id, bob.user_id}
            assert any(e["type"] == "m.room.create" for e in window["state"])

    asyncio.run(run())


def test_context_filter_and_lazy_loaded_members(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol", rate_limits=RateLimits(enabled=False)) as (
                (alice, bob, carol), _):  # fmt: skip
            room = await make_room(alice, bob, carol)
            sent = [await text((alice, bob)[i % 2], room, f"m{i}") for i in range(8)]
            reaction_path = f"{V3}/rooms/{q(room)}/send/m.reaction/r1"
            expect(await carol.request("PUT", reaction_path, {"m.relates_to": {
                "rel_type": "m.annotation", "event_id": sent[4], "key": "x"}}), 200)  # fmt: skip
            only_alice = quote(json.dumps({"senders": [alice.user_id], "lazy_load_members": True}))
            window = await context(bob, room, sent[4], f"limit=4&filter={only_alice}")
            assert ids(window["events_before"]) == [sent[2], sent[0]]
            assert ids(window["events_after"]) == [sent[6]]  # nothing of alice's after m6
            members = {e["state_key"] for e in window["state"] if e["type"] == "m.room.member"}
            assert members == {alice.user_id}  # the filter applies to state too: members sent by alice only
            lazy = quote(json.dumps({"lazy_load_members": True}))
            lazily = await context(carol, room, sent[4], f"limit=4&filter={lazy}")
            assert ids(lazily["events_before"]) == [sent[3], sent[2]] and ids(lazily["events_after"]) == sent[5:7]
            members = {e["state_key"] for e in lazily["state"] if e["type"] == "m.room.member"}
            assert members == {alice.user_id, bob.user_id, carol.user_id}  # the window's senders and the reader
            lazily = await context(bob, room, sent[4], f"limit=4&filter={lazy}")
            assert any(e["type"] == "m.room.join_rules" for e in lazily["state"])
            members = {e["state_key"] for e in lazily["state"] if e["type"] == "m.room.member"}
            assert members == {alice.user_id, bob.user_id}  # not carol, who sent nothing in the window
            eager = await context(bob, room, sent[4], "limit=4")
            members = {e["state_key"] for e in eager["state"] if e["type"] == "m.room.member"}
            assert members == {alice.user_id, bob.user_id, carol.user_id}
            no_reactions = quote(json.dumps({"not_types": ["m.reaction"]}))
            after = await context(bob, room, sent[7], f"filter={no_reactions}")
            assert after["events_after"] == []
            assert {e["type"] for e in after["state"]} >= {"m.room.create", "m.room.member"}
            only_members = quote(json.dumps({"types": ["m.room.member"]}))
            members_only = await context(bob, room, sent[7], f"filter={only_members}")
            assert {e["type"] for e in members_only["state"]} == {"m.room.member"}  # the filter applies to state too
            assert {e["type"] for e in members_only["events_before"]} == {"m.room.member"}
            assert members_only["event"]["event_id"] == sent[7]  # the event itself, whatever the filter

            base = f"{V3}/rooms/{q(room)}/context/{q(sent[4])}"
            expect(await bob.request("GET", base + "?filter=%7Bnot"), 400, "M_NOT_JSON")
            expect(await bob.request("GET", base + "?filter=%5B%5D"), 400, "M_BAD_JSON")
            for query in ("limit=-1", "limit=ten", "limit=-99999999999999999999", "limit=1.5"):
                expect(await bob.request("GET", base + "?" + query), 400, "M_INVALID_PARAM")
            expect(await bob.request("GET", f"{V3}/rooms/{q(room)}/context/{q('$missing:localhost')}"), 404,
                   "M_NOT_FOUND")  # fmt: skip
            expect(await bob.request("GET", f"{V3}/rooms/bad/context/{q(sent[4])}"), 400, "M_INVALID_PARAM")

    asyncio.run(run())


def test_context_respects_visibility_and_bundles_edits(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "stranger",
                           rate_limits=RateLimits(enabled=False)) as ((alice, bob, stranger), _):  # fmt: skip
            room = await make_room(alice, bob)
            before = await text(alice, room, "before bob left")
            edit_content = {"msgtype": "m.text", "body": "* fixed", "m.new_content": {"msgtype": "m.text",
                            "body": "fixed"}, "m.relates_to": {"rel_type": "m.replace", "event_id": before}}  # fmt: skip
            path = f"{V3}/rooms/{q(room)}/send/m.room.message/e1"
            edit = expect(await alice.request("PUT", path, edit_content), 200)["event_id"]
            expect(await bob.request("POST", f"{V3}/rooms/{q(room)}/leave", {}), 200)
            after = await text(alice, room, "after bob left")

            seen = await context(bob, room, before, "limit=10")
            assert seen["event"]["unsigned"]["m.relations"]["m.replace"]["event_id"] == edit
            assert seen["event"]["content"]["body"] == "before bob left"
            assert after not in ids(seen["events_after"])  # nothing past the moment bob left
            assert ids(seen["events_after"])[0] == edit
            expect(await bob.request("GET", f"{V3}/rooms/{q(room)}/context/{q(after)}"), 404, "M_NOT_FOUND")
            expect(await stranger.request("GET", f"{V3}/rooms/{q(room)}/context/{q(before)}"), 404, "M_NOT_FOUND")
            full = await context(alice, room, before, "limit=10")
            assert ids(full["events_after"])[-1] == after

    asyncio.run(run())
