"""Threaded read receipts and per-thread notification counts (spec v1.4 "Threading", "Receipts"), over raw HTTP
against a real gateway: which receipts are valid, their shape in /sync's ``m.receipt``, and the counts each
receipt clears (``unread_notifications`` and ``unread_thread_notifications``); a database made before threaded
receipts keeps its receipts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from harness import Client, expect, users_gateway

from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver.notifications import push_of
from lowband.gateway.store.sqlite.schema import upgrade

V3 = "/_matrix/client/v3"
THREADED = {"room": {"timeline": {"unread_thread_notifications": True}}}


def q(value: str) -> str:
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, *names: str) -> AsyncIterator[tuple[list[Client], Any]]:
    async with users_gateway(tmp_path, *names, rate_limits=RateLimits(enabled=False)) as (clients, services, _):
        yield clients, services


async def make_room(owner: Client, *joiners: Client) -> str:
    body = expect(await owner.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)
    for member in joiners:
        expect(await member.request("POST", f"{V3}/join/{q(body['room_id'])}", {}), 200)
    return str(body["room_id"])


_txn = 0


async def send(client: Client, room: str, content: dict[str, Any], event_type: str = "m.room.message") -> str:
    global _txn
    _txn += 1
    sent = await client.request("PUT", f"{V3}/rooms/{q(room)}/send/{event_type}/tr{_txn}", content)
    return str(expect(sent, 200)["event_id"])


def text(body: str, **extra: Any) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, **extra}


def in_thread(root: str, body: str, **extra: Any) -> dict[str, Any]:
    relates = {"rel_type": "m.thread", "event_id": root, "is_falling_back": True, "m.in_reply_to": {"event_id": root}}
    return text(body, **{"m.relates_to": relates}, **extra)


async def receipt(client: Client, room: str, event_id: str, body: Any = None, kind: str = "m.read") -> tuple[int, Any]:
    return await client.request("POST", f"{V3}/rooms/{q(room)}/receipt/{kind}/{q(event_id)}",
                                {} if body is None else body)  # fmt: skip


async def sync(client: Client, since: str | None = None, filter_doc: dict[str, Any] | None = None) -> dict[str, Any]:
    query = "?timeout=0" + (f"&since={since}" if since else "")
    if filter_doc is not None:
        query += "&filter=" + q(json.dumps(filter_doc))
    return dict(expect(await client.request("GET", V3 + "/sync" + query), 200))


async def settled(svc: Any) -> None:
    """Wait (at most 10 s) until every stored event is judged and its rows are written."""
    evaluator = push_of(svc).evaluator
    for _ in range(1000):
        if evaluator is None or (evaluator.position >= svc.store.persisted and not evaluator.pending):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("push evaluation did not catch up")


def receipts_in(response: dict[str, Any], room: str) -> dict[str, Any]:
    """The merged content of the room's m.receipt events in one /sync response."""
    merged: dict[str, Any] = {}
    for event in response["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", []):
        if event["type"] == "m.receipt":
            for event_id, by_type in event["content"].items():
                for kind, by_user in by_type.items():
                    merged.setdefault(event_id, {}).setdefault(kind, {}).update(by_user)
    return merged


def counts(n: int, h: int) -> dict[str, int]:
    return {"notification_count": n, "highlight_count": h}


def test_threaded_receipts_are_validated_stored_per_thread_and_synced_with_thread_id(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as ((alice, bob, carol), svc):
            room = await make_room(alice, bob, carol)
            root = await send(bob, room, text("root"))
            reply = await send(bob, room, in_thread(root, "in the thread"))
            reaction = await send(carol, room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": reply,
                                                                 "key": "+1"}}, "m.reaction")  # fmt: skip
            edit_of_root = await send(bob, room, text("* root", **{"m.relates_to": {"rel_type": "m.replace",
                                                                                      "event_id": root}}))  # fmt: skip
            later = await send(bob, room, text("main again"))
            start = (await sync(bob))["next_batch"]

            # Malformed or mismatched thread IDs: 400 M_INVALID_PARAM, nothing stored.
            for body in ({"thread_id": 5}, {"thread_id": ""}, {"thread_id": None}, {"thread_id": ["main"]}):
                expect(await receipt(alice, room, later, body), 400, "M_INVALID_PARAM")
            expect(await receipt(alice, room, later, {"thread_id": "main"}, "m.fully_read"), 400, "M_INVALID_PARAM")
            expect(await receipt(alice, room, later, {"thread_id": root}), 400, "M_INVALID_PARAM")  # main event
            expect(await receipt(alice, room, root, {"thread_id": root}), 400, "M_INVALID_PARAM")  # a root is main
            expect(await receipt(alice, room, edit_of_root, {"thread_id": root}), 400, "M_INVALID_PARAM")
            expect(await receipt(alice, room, reply, {"thread_id": "main"}), 400, "M_INVALID_PARAM")
            expect(await receipt(alice, room, reply, {"thread_id": "$other:localhost"}), 400, "M_INVALID_PARAM")
            expect(await receipt(alice, room, "$missing:localhost", {"thread_id": "main"}), 404, "M_NOT_FOUND")
            assert receipts_in(await sync(bob, start), room) == {}

            # Valid ones: the main timeline, the thread (a reaction to a thread reply is in the thread too).
            expect(await receipt(alice, room, edit_of_root, {"thread_id": "main"}), 200)
            expect(await receipt(alice, room, reply, {"thread_id": root}), 200)
            expect(await receipt(alice, room, reaction, {"thread_id": root}), 200)
            expect(await receipt(alice, room, root), 200)  # unthreaded: its own slot, beside "main"
            expect(await receipt(alice, room, reply, {"thread_id": root}, "m.read.private"), 200)
            seen_by_bob = receipts_in(await sync(bob, start), room)
            ts = seen_by_bob[edit_of_root]["m.read"][alice.user_id]["ts"]
            assert isinstance(ts, int) and ts > 0
            assert seen_by_bob == {
                edit_of_root: {"m.read": {alice.user_id: {"ts": ts, "thread_id": "main"}}},
                reaction: {"m.read": {alice.user_id: {"ts": seen_by_bob[reaction]["m.read"][alice.user_id]["ts"],
                                                      "thread_id": root}}},
                root: {"m.read": {alice.user_id: {"ts": seen_by_bob[root]["m.read"][alice.user_id]["ts"]}}},
            }  # the thread receipt moved from reply to reaction; the private one is alice's alone
            seen_by_alice = receipts_in(await sync(alice), room)
            assert seen_by_alice[reply]["m.read.private"][alice.user_id]["thread_id"] == root
            assert "thread_id" not in seen_by_alice[root]["m.read"][alice.user_id]

            # A thread's receipt only moves forward; other threads' receipts do not hold it back.
            mark = (await sync(bob))["next_batch"]
            expect(await receipt(alice, room, reply, {"thread_id": root}), 200)  # behind reaction: ignored
            expect(await receipt(alice, room, later, {"thread_id": "main"}), 200)  # main moves on
            assert set(receipts_in(await sync(bob, mark), room)) == {later}
            assert svc.store.get_receipt(room, "m.read", alice.user_id, root) == reaction
            assert svc.store.get_receipt(room, "m.read", alice.user_id, "main") == later
            assert svc.store.get_receipt(room, "m.read", alice.user_id) == root

    asyncio.run(asyncio.wait_for(run(), 120))


def test_per_thread_counts_move_with_threaded_and_unthreaded_receipts(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as ((alice, bob, carol), svc):
            room = await make_room(alice, bob, carol)
            await settled(svc)

            async def both() -> tuple[dict[str, Any], dict[str, Any]]:
                await settled(svc)
                threaded = (await sync(alice, filter_doc=THREADED))["rooms"]["join"][room]
                plain = (await sync(alice))["rooms"]["join"][room]
                assert "unread_thread_notifications" not in plain
                shown = {"main": threaded["unread_notifications"], **threaded["unread_thread_notifications"]}
                return shown, plain["unread_notifications"]

            root = await send(bob, room, text("root"))  # main: 1
            first = await send(bob, room, in_thread(root, "one"))  # thread: 1
            second = await send(carol, room, in_thread(root, "two"))  # thread: 2
            main_two = await send(bob, room, text("main two"))  # main: 2
            mention = await send(bob, room, in_thread(root, "you", **{"m.mentions": {"user_ids": [alice.user_id]}}))
            # a reference to a thread reply is in the thread (two hops): thread 4
            referring = await send(carol, room, text("see that", **{"m.relates_to": {"rel_type": "m.reference",
                                                                                      "event_id": first}}))  # fmt: skip
            shown, plain = await both()
            assert shown == {"main": counts(2, 0), root: counts(4, 1)}
            assert plain == counts(6, 1)
            for row in svc.store.push.notifications(alice.user_id, None, 10, False):
                assert row.thread_id == ("main" if row.event_id in (root, main_two) else root), row

            # The unstable name of the filter flag (MSC3773) works too.
            unstable = {"room": {"timeline": {"org.matrix.msc3773.unread_thread_notifications": True}}}
            joined = (await sync(alice, filter_doc=unstable))["rooms"]["join"][room]
            assert joined["unread_thread_notifications"] == {root: counts(4, 1)}

            # A thread receipt clears that thread up to its event, nothing in main.
            expect(await receipt(alice, room, second, {"thread_id": root}), 200)
            shown, plain = await both()
            assert shown == {"main": counts(2, 0), root: counts(2, 1)} and plain == counts(4, 1)
            # A main receipt clears main up to its event (the root), not the thread after it.
            expect(await receipt(alice, room, root, {"thread_id": "main"}), 200)
            shown, plain = await both()
            assert shown == {"main": counts(1, 0), root: counts(2, 1)} and plain == counts(3, 1)
            # A private threaded receipt counts like a public one.
            expect(await receipt(alice, room, mention, {"thread_id": root}, "m.read.private"), 200)
            shown, plain = await both()
            assert shown == {"main": counts(1, 0), root: counts(1, 0)} and plain == counts(2, 0)
            listed = expect(await alice.request("GET", V3 + "/notifications"), 200)["notifications"]
            assert {n["event"]["event_id"]: n["read"] for n in listed} == {
                referring: False, mention: True, main_two: False, second: True, first: True, root: True}

            # An unthreaded receipt clears everything up to its event, in every thread.
            late_main = await send(bob, room, text("late main"))
            late_thread = await send(bob, room, in_thread(root, "late thread"))
            shown, plain = await both()
            assert shown == {"main": counts(2, 0), root: counts(2, 0)} and plain == counts(4, 0)
            expect(await receipt(alice, room, late_main), 200)
            shown, plain = await both()
            assert shown == {"main": counts(0, 0), root: counts(1, 0)} and plain == counts(1, 0)
            # ... and a thread whose count drops to zero leaves the object (which stays, empty).
            expect(await receipt(alice, room, late_thread, {"thread_id": root}), 200)
            shown, plain = await both()
            assert shown == {"main": counts(0, 0)} and plain == counts(0, 0)

            # Other users' counts are their own: bob never read anything, and sent most of it.
            bob_room = (await sync(bob, filter_doc=THREADED))["rooms"]["join"][room]
            assert bob_room["unread_notifications"] == counts(0, 0)
            assert bob_room["unread_thread_notifications"] == {root: counts(2, 0)}  # carol's two

    asyncio.run(asyncio.wait_for(run(), 120))


@pytest.mark.sqlite_only  # upgrades an older version's SQLite file
def test_a_database_from_before_threaded_receipts_keeps_its_receipts(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE receipts (room_id TEXT NOT NULL, receipt_type TEXT NOT NULL, user_id TEXT NOT NULL,
            event_id TEXT NOT NULL, ts INTEGER NOT NULL, stream INTEGER NOT NULL,
            PRIMARY KEY (room_id, receipt_type, user_id));
        CREATE INDEX receipts_stream ON receipts(room_id, stream);
        INSERT INTO receipts VALUES ('!r:x', 'm.read', '@a:x', '$e', 5, 7);
        CREATE TABLE events (stream INTEGER, origin_server_ts INTEGER, outlier INTEGER, soft_failed INTEGER,
            index_fields TEXT, txn_hash INTEGER, room_nid INTEGER, event_id TEXT);
        CREATE TABLE access_tokens (token TEXT);
        CREATE TABLE users (owner TEXT);
    """)  # only what upgrade() reads besides receipts
    with conn:
        upgrade(conn)
    assert conn.execute("SELECT * FROM receipts").fetchall() == [("!r:x", "m.read", "@a:x", "$e", 5, 7, "")]
    # thread_id is part of the key now: a threaded receipt sits beside the unthreaded one
    conn.execute("INSERT INTO receipts VALUES ('!r:x', 'm.read', '@a:x', '$f', 6, 8, 'main')")
    assert conn.execute("SELECT COUNT(*) FROM receipts").fetchone() == (2,)
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(receipts)")}
    assert "receipts_stream" in indexes
    with conn:
        upgrade(conn)  # a second run changes nothing
    assert conn.execute("SELECT COUNT(*) FROM receipts").fetchone() == (2,)
    conn.close()
