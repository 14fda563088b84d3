"""Relations, threads and ``m.relations`` bundling, through the client-server API of a gateway in the test's
loop; and the relation index of the store (triggers, backfill of an older database)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from harness import Client, expect, users_gateway

from lowband.gateway.config import RateLimits
from lowband.gateway.store.sqlite import relations as relation_tables
from lowband.gateway.store.sqlite.schema import NEW_ROOM_NUMBER, ROOM_NID
from lowband.gateway.store.sqlite.store import SQLiteStore

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"


def q(value: str) -> str:
    """A path segment, percent-encoded."""
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, *names: str, **config: Any) -> AsyncIterator[tuple[list[Client], Any]]:
    """A gateway, one registered client per name, and the gateway's services."""
    async with users_gateway(tmp_path, *names, **config) as (clients, services, _):
        yield clients, services


async def make_room(owner: Client, *joiners: Client, **create: Any) -> str:
    body = expect(await owner.request("POST", V3 + "/createRoom", {"preset": "public_chat", **create}), 200)
    for member in joiners:
        expect(await member.request("POST", f"{V3}/join/{q(body['room_id'])}", {}), 200)
    return str(body["room_id"])


async def send(client: Client, room_id: str, content: dict[str, Any], event_type: str = "m.room.message") -> str:
    path = f"{V3}/rooms/{q(room_id)}/send/{event_type}/{time.monotonic_ns()}"
    return str(expect(await client.request("PUT", path, content), 200)["event_id"])


async def text(client: Client, room_id: str, body: str, relates_to: dict[str, Any] | None = None) -> str:
    content: dict[str, Any] = {"msgtype": "m.text", "body": body}
    if relates_to is not None:
        content["m.relates_to"] = relates_to
    return await send(client, room_id, content)


def thread(root: str) -> dict[str, Any]:
    return {"rel_type": "m.thread", "event_id": root, "is_falling_back": True, "m.in_reply_to": {"event_id": root}}


async def relations(client: Client, room_id: str, event_id: str, tail: str = "", query: str = "") -> Any:
    return expect(await client.request("GET", f"{V1}/rooms/{q(room_id)}/relations/{q(event_id)}{tail}?{query}"), 200)


async def all_pages(client: Client, room_id: str, event_id: str, query: str) -> list[str]:
    """Every event ID of /relations, page by page (at most 20 pages)."""
    ids: list[str] = []
    token = ""
    for _ in range(20):
        page = await relations(client, room_id, event_id, query=query + (f"&from={token}" if token else ""))
        ids += [e["event_id"] for e in page["chunk"]]
        if "next_batch" not in page:
            return ids
        token = page["next_batch"]
    raise AssertionError("pagination did not end")


def test_relations_pages_both_ways_filters_and_recursion(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
            room = await make_room(alice, bob)
            root = await text(alice, room, "root")
            replies = [await text((alice, bob)[i % 2], room, f"reply {i}", thread(root)) for i in range(5)]
            reaction = await send(bob, room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": replies[0],
                                                               "key": "👍"}}, "m.reaction")  # fmt: skip
            edit = await text(bob, room, "* reply 1!", {"rel_type": "m.replace", "event_id": replies[1]})
            reference = await text(alice, room, "see above", {"rel_type": "m.reference", "event_id": root})
            await text(alice, room, "unrelated")
            direct = [*replies, reference]

            page = await relations(alice, room, root)
            assert [e["event_id"] for e in page["chunk"]] == direct[::-1]  # dir=b: newest first
            assert "next_batch" not in page and "recursion_depth" not in page
            assert page["chunk"][0]["content"]["body"] == "see above" and page["chunk"][0]["room_id"] == room
            assert await all_pages(alice, room, root, "limit=2") == direct[::-1]
            assert await all_pages(bob, room, root, "limit=2&dir=f") == direct
            assert await all_pages(bob, room, root, "limit=1&dir=f") == direct

            # `to` stops the walk: forwards from the start up to the second page's token.
            first = await relations(alice, room, root, query="dir=f&limit=2")
            bounded = await relations(alice, room, root, query=f"dir=f&limit=10&from={first['next_batch']}"
                                                               f"&to=s{10 ** 9}")  # fmt: skip
            assert [e["event_id"] for e in bounded["chunk"]] == direct[2:]
            back = await relations(alice, room, root, query=f"dir=b&to={first['next_batch']}")
            assert [e["event_id"] for e in back["chunk"]] == direct[2:][::-1]

            only_threads = await relations(alice, room, root, "/m.thread")
            assert [e["event_id"] for e in only_threads["chunk"]] == replies[::-1]
            typed = await relations(alice, room, root, "/m.thread/m.room.message")
            assert len(typed["chunk"]) == 5
            assert (await relations(alice, room, root, "/m.thread/m.reaction"))["chunk"] == []
            assert (await relations(alice, room, root, "/m.annotation"))["chunk"] == []
            reactions = await relations(alice, room, replies[0], "/m.annotation/m.reaction")
            assert [e["event_id"] for e in reactions["chunk"]] == [reaction]

            deep = await relations(alice, room, root, query="recurse=true")
            assert deep["recursion_depth"] == 3
            # Newest first across levels: the relations of the replies sit among the replies by position.
            streams = [e["event_id"] for e in deep["chunk"]]
            assert streams == [reference, edit, reaction, *replies[::-1]]
            shallow = await relations(alice, room, root, query="recurse=false")
            assert shallow["recursion_depth"] == 1 and len(shallow["chunk"]) == 6
            # A filter applies at every level: the reaction hangs off a thread reply, not off an m.annotation chain.
            deep_threads = await relations(alice, room, root, "/m.thread", "recurse=true")
            assert sorted(e["event_id"] for e in deep_threads["chunk"]) == sorted(replies)
            assert await all_pages(alice, room, root, "recurse=true&limit=3") == streams

    asyncio.run(run())


def test_bad_input_gets_the_spec_errors(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "stranger") as ((alice, stranger), _):
            room = await make_room(alice)
            other = await make_room(alice)
            root = await text(alice, room, "root")
            elsewhere = await text(alice, other, "in the other room")
            base = f"{V1}/rooms/{q(room)}/relations/"
            expect(await alice.request("GET", base + q("$nope:localhost")), 404, "M_NOT_FOUND")
            expect(await alice.request("GET", base + q(elsewhere)), 404, "M_NOT_FOUND")
            expect(await stranger.request("GET", base + q(root)), 404, "M_NOT_FOUND")  # never in the (shared) room
            for query in ("dir=x", "from=zzz", "from=s1_2_3_4", "to=%00", "limit=-1", "limit=abc", "limit=0",
                          "limit=1e3", "limit=%D9%A3", "limit=-99999999999999999999", "recurse=maybe"):  # fmt: skip
                expect(await alice.request("GET", base + q(root) + "?" + query), 400, "M_INVALID_PARAM")
            for huge in ("1000000000", "9" * 40):  # lowered to the bound
                assert expect(await alice.request("GET", base + q(root) + "?limit=" + huge), 200)["chunk"] == []
            expect(await alice.request("GET", f"{V1}/rooms/not-a-room/relations/{q(root)}"), 400, "M_INVALID_PARAM")
            expect(await alice.request("GET", f"{V1}/rooms/{q(room)}/relations/{q(root)}", token=False), 401)

            threads = f"{V1}/rooms/{q(room)}/threads"
            for query in ("include=some", "from=nope", "limit=-5", "limit=x"):
                expect(await alice.request("GET", threads + "?" + query), 400, "M_INVALID_PARAM")
            expect(await stranger.request("GET", threads), 403, "M_FORBIDDEN")
            expect(await alice.request("GET", f"{V1}/rooms/{q('!unknown:localhost')}/threads"), 403, "M_FORBIDDEN")

    asyncio.run(run())


def test_a_user_who_left_sees_neither_later_replies_nor_their_count(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as ((alice, bob, carol), _):
            room = await make_room(alice, bob, carol)
            root = await text(alice, room, "root")
            early = await text(bob, room, "before carol left", thread(root))
            expect(await carol.request("POST", f"{V3}/rooms/{q(room)}/leave", {}), 200)
            late = [await text(bob, room, f"after {i}", thread(root)) for i in range(2)]

            seen = await relations(carol, room, root)
            assert [e["event_id"] for e in seen["chunk"]] == [early]
            assert [e["event_id"] for e in (await relations(bob, room, root))["chunk"]] == [*late[::-1], early]
            expect(await carol.request("GET", f"{V1}/rooms/{q(room)}/relations/{q(late[0])}"), 404, "M_NOT_FOUND")

            for who, count, latest in ((carol, 1, early), (bob, 3, late[-1])):
                event = expect(await who.request("GET", f"{V3}/rooms/{q(room)}/event/{q(root)}"), 200)
                summary = event["unsigned"]["m.relations"]["m.thread"]
                assert (summary["count"], summary["latest_event"]["event_id"]) == (count, latest)
                listed = expect(await who.request("GET", f"{V1}/rooms/{q(room)}/threads"), 200)["chunk"]
                assert [t["event_id"] for t in listed] == [root]
                assert listed[0]["unsigned"]["m.relations"]["m.thread"]["count"] == count
            summary = (await relations(bob, room, root))["chunk"]
            assert summary  # bob's view is the full thread

    asyncio.run(run())


def test_threads_are_listed_by_latest_activity_and_participation(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
            room = await make_room(alice, bob)
            a = await text(alice, room, "thread A")
            b = await text(alice, room, "thread B")
            c = await text(bob, room, "thread C")
            await text(alice, room, "not a thread")
            await text(alice, room, "a1", thread(a))
            await text(bob, room, "b1", thread(b))
            await text(alice, room, "c1", thread(c))
            await text(alice, room, "a2", thread(a))  # A is now the most recently active
            listing = f"{V1}/rooms/{q(room)}/threads"

            everything = expect(await alice.request("GET", listing), 200)
            assert [t["event_id"] for t in everything["chunk"]] == [a, c, b]
            assert "next_batch" not in everything
            summary = everything["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
            assert summary["count"] == 2 and summary["latest_event"]["content"]["body"] == "a2"
            assert summary["current_user_participated"] is True
            b_summary = everything["chunk"][2]["unsigned"]["m.relations"]["m.thread"]
            assert b_summary["current_user_participated"] is True  # alice started B; only bob replied
            as_bob = expect(await bob.request("GET", listing), 200)["chunk"]
            assert [t["unsigned"]["m.relations"]["m.thread"]["current_user_participated"] for t in as_bob] == [
                False, True, True]  # A: neither started nor replied; C: started; B: replied  # fmt: skip

            pages, token = [], ""
            for _ in range(5):
                page = expect(await alice.request("GET", listing + "?limit=1" + (f"&from={token}" if token else "")),
                              200)  # fmt: skip
                pages += [t["event_id"] for t in page["chunk"]]
                if "next_batch" not in page:
                    break
                token = page["next_batch"]
            assert pages == [a, c, b]

            bobs = expect(await bob.request("GET", listing + "?include=participated"), 200)
            assert [t["event_id"] for t in bobs["chunk"]] == [c, b]  # started C, replied in B
            alices = expect(await alice.request("GET", listing + "?include=participated&limit=1"), 200)
            assert [t["event_id"] for t in alices["chunk"]] == [a] and "next_batch" in alices
            rest = expect(await alice.request("GET", listing + f"?include=participated&from={alices['next_batch']}"),
                          200)  # fmt: skip
            assert [t["event_id"] for t in rest["chunk"]] == [c, b]

    asyncio.run(run())


def test_sync_messages_and_event_bundle_threads_references_and_edits(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
            room = await make_room(alice, bob)
            root = await text(alice, room, "original")
            await text(alice, room, "r1", thread(root))
            r2 = await text(alice, room, "r2", thread(root))
            ref = await text(bob, room, "ref", {"rel_type": "m.reference", "event_id": root})
            good_edit = await send(alice, room, {"msgtype": "m.text", "body": "* edited", "m.new_content": {
                "msgtype": "m.text", "body": "edited"}, "m.relates_to": {"rel_type": "m.replace", "event_id": root}})
            # Newer, but by another sender: not an edit the server may bundle.
            await send(bob, room, {"msgtype": "m.text", "body": "* hijack", "m.new_content": {
                "msgtype": "m.text", "body": "hijack"}, "m.relates_to": {"rel_type": "m.replace", "event_id": root}})

            def check(event: dict[str, Any], who: str) -> None:
                assert event["content"]["body"] == "original"  # v1.7+: the server leaves the content alone
                bundled = event["unsigned"]["m.relations"]
                assert bundled["m.thread"]["count"] == 2
                assert bundled["m.thread"]["latest_event"]["event_id"] == r2
                assert bundled["m.thread"]["current_user_participated"] is (who == "alice")  # bob only referenced
                assert bundled["m.reference"] == {"chunk": [{"event_id": ref}]}
                assert bundled["m.replace"]["event_id"] == good_edit
                assert bundled["m.replace"]["content"]["m.new_content"]["body"] == "edited"

            filt = quote(json.dumps({"room": {"timeline": {"limit": 50}}}))
            for client, who in ((alice, "alice"), (bob, "bob")):
                synced = expect(await client.request("GET", f"{V3}/sync?filter={filt}"), 200)
                timeline = synced["rooms"]["join"][room]["timeline"]["events"]
                check(next(e for e in timeline if e["event_id"] == root), who)
                page = expect(await client.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=50"), 200)
                check(next(e for e in page["chunk"] if e["event_id"] == root), who)
                check(expect(await client.request("GET", f"{V3}/rooms/{q(room)}/event/{q(root)}"), 200), who)
                plain = next(e for e in page["chunk"] if e["event_id"] == ref)
                assert "m.relations" not in plain["unsigned"]

            # A redacted reply leaves the thread's summary.
            expect(await alice.request("PUT", f"{V3}/rooms/{q(room)}/redact/{q(r2)}/t1", {}), 200)
            event = expect(await bob.request("GET", f"{V3}/rooms/{q(room)}/event/{q(root)}"), 200)
            assert event["unsigned"]["m.relations"]["m.thread"]["count"] == 1

    asyncio.run(run())


@pytest.mark.sqlite_only  # counts statements with sqlite3's trace callback
def test_sync_of_fifty_events_in_four_rooms_bundles_in_one_query(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", rate_limits=RateLimits(enabled=False)) as ((alice,), services):
            room = await make_room(alice)
            roots = [await text(alice, room, f"root {i}") for i in range(25)]
            for i, root in enumerate(roots):
                await text(alice, room, f"reply {i}", thread(root))
            others = [await make_room(alice) for _ in range(3)]
            for other in others:  # more rooms with threads: still one query for all of them
                await text(alice, other, "reply", thread(await text(alice, other, "root")))
            statements: list[str] = []
            reader: sqlite3.Connection = services.store.db.reader
            reader.set_trace_callback(statements.append)
            try:
                filt = quote(json.dumps({"room": {"timeline": {"limit": 50}}}))
                synced = expect(await alice.request("GET", f"{V3}/sync?filter={filt}"), 200)
            finally:
                reader.set_trace_callback(None)
            timeline = synced["rooms"]["join"][room]["timeline"]["events"]
            assert len(timeline) == 50
            bundled = [e for e in timeline if "m.relations" in e["unsigned"]]
            assert len(bundled) >= 20  # the roots in the window each carry their summary
            for other in others:
                events = synced["rooms"]["join"][other]["timeline"]["events"]
                assert [e["unsigned"]["m.relations"]["m.thread"]["count"] for e in events
                        if "m.relations" in e["unsigned"]] == [1]  # fmt: skip
            served = sum(len(r["timeline"]["events"]) for r in synced["rooms"]["join"].values())
            print(f"/sync of 4 rooms, {served} timeline events: {len(statements)} statements, "
                  f"{len([s for s in statements if 'event_relations' in s])} on the relation index")
            assert len([s for s in statements if "event_relations" in s]) == 1, statements
            assert len([s for s in statements if "FROM events WHERE" in s and "AND event_id IN (" in s]) == 1

    asyncio.run(run())


# ------------------------------------------------------------------ the store


def _insert(c: sqlite3.Connection, stream: int, event_id: str, content: dict[str, Any]) -> None:
    pdu = {"type": "m.room.message", "room_id": "!r:x", "sender": "@a:x", "content": content,
           "origin_server_ts": stream}  # fmt: skip
    # index_fields: what the index triggers read (store/sqlite/pdu_codec.py), here the whole content
    c.execute(NEW_ROOM_NUMBER, ("!r:x", "!r:x"))
    c.execute("INSERT INTO events (stream, event_id, room_nid, type, sender, depth, origin_server_ts, pdu, index_fields)"
              f" VALUES (?, ?, {ROOM_NID}, 'm.room.message', '@a:x', 1, ?, ?, ?)",
              (stream, event_id, "!r:x", stream, json.dumps(pdu), json.dumps({"content": content})))  # fmt: skip


def test_older_databases_are_indexed_by_the_migration_in_bounded_batches(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "gateway.db"
    store = SQLiteStore(path)
    store.db.write_sync(lambda c: _insert(c, 1, "$root", {"body": "root"}))
    for i in range(2, 12):
        store.db.write_sync(lambda c, i=i: _insert(c, i, f"$r{i}", {
            "body": "r", "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}))
    store.db.write_sync(lambda c: _insert(c, 12, "$bad", {"m.relates_to": {"rel_type": 5, "event_id": "$root"}}))
    store.db.write_sync(lambda c: _insert(c, 13, "$self", {"m.relates_to": {"rel_type": "x", "event_id": "$self"}}))
    assert len(store.db.query("SELECT * FROM event_relations")) == 10  # the triggers: malformed ones are skipped
    store.close()
    # A database from before the index: no tables, no triggers, events already there.
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript("DROP TABLE event_relations; DROP TABLE event_threads; DROP TABLE relations_backfill;"
                           " DROP TRIGGER event_relations_insert;")  # fmt: skip
    monkeypatch.setattr(relation_tables, "BACKFILL_BATCH", 3)
    monkeypatch.setattr(relation_tables, "BACKFILL_BUDGET_S", 0.0)  # everything after the first batch: background
    store = SQLiteStore(path)
    try:
        assert store.relations.older.backfilling is not None  # the rest went to background write jobs
        deadline = time.monotonic() + 10
        while store.relations.older.pending():
            assert time.monotonic() < deadline, "backfill did not finish"
            time.sleep(0.01)
        children = store.relations.children("!r:x", "$root", rel_type="m.thread", event_type=None, after=-100,
                                            upto=100, backwards=False, limit=50)  # fmt: skip
        assert children == [f"$r{i}" for i in range(2, 12)]
        assert store.relations.threads("!r:x", below=None, limit=5, participant=None) == [("$root", 11)]
    finally:
        store.close()
