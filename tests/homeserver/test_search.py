"""POST /search (room_events) through the client-server API of a gateway in the test's loop, and the full-text
index of the store (triggers, redaction, backfill of an older database, hostile query text)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from harness import Client, expect, users_gateway

from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver import search as search_handler
from lowband.gateway.homeserver.search import query_words
from lowband.gateway.store.sqlite import search as search_tables
from lowband.gateway.store.sqlite.store import SQLiteStore

V3 = "/_matrix/client/v3"
NO_LIMITS = RateLimits(enabled=False)


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def q(value: str) -> str:
    """A path segment, percent-encoded."""
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, *names: str, **config: Any) -> AsyncIterator[tuple[list[Client], Any]]:
    """A gateway, one registered client per name, and the gateway's services."""
    async with users_gateway(tmp_path, *names, rate_limits=NO_LIMITS, **config) as (clients, services, _):
        yield clients, services


async def make_room(owner: Client, *joiners: Client, **create: Any) -> str:
    body = expect(await owner.request("POST", V3 + "/createRoom", {"preset": "public_chat", **create}), 200)
    for member in joiners:
        expect(await member.request("POST", f"{V3}/join/{q(body['room_id'])}", {}), 200)
    return str(body["room_id"])


async def say(client: Client, room_id: str, body: str, **extra: Any) -> str:
    path = f"{V3}/rooms/{q(room_id)}/send/m.room.message/{time.monotonic_ns()}"
    return str(expect(await client.request("PUT", path, {"msgtype": "m.text", "body": body, **extra}), 200)["event_id"])


async def search(client: Client, criteria: dict[str, Any], next_batch: str | None = None) -> Any:
    path = V3 + "/search" + (f"?next_batch={q(next_batch)}" if next_batch else "")
    body = expect(await client.request("POST", path, {"search_categories": {"room_events": criteria}}), 200)
    return body["search_categories"]["room_events"]


def ids(answer: dict[str, Any]) -> list[str]:
    return [r["result"]["event_id"] for r in answer["results"]]


@in_loop
async def test_search_finds_bodies_names_topics_in_my_rooms_only(tmp_path: Path) -> None:
    async with gateway(tmp_path, "alice", "bob", "carol") as ((alice, bob, carol), _):
        room = await make_room(alice, bob, name="Greenhouse sensors", topic="humidity of the tomatoes")
        other = await make_room(carol)  # bob and alice are not in it
        hello = await say(bob, room, "Hello wörld, the Tomatoes need water")
        await say(alice, room, "unrelated chatter")
        await say(carol, other, "tomatoes in a room nobody else reads")

        found = await search(alice, {"search_term": "tomatoes"})
        events = [r["result"] for r in found["results"]]
        assert {e["type"] for e in events} == {"m.room.message", "m.room.topic"}
        assert hello in ids(found) and all(e["room_id"] == room for e in events)
        assert found["count"] == 2 and found["highlights"] == ["tomatoes"]
        assert all(isinstance(r["rank"], float) for r in found["results"])
        # case and diacritics are folded; every word must be there
        assert ids(await search(bob, {"search_term": "WORLD water"})) == [hello]
        assert ids(await search(bob, {"search_term": "world nothing-like-this"})) == []
        # keys choose the fields (and so the types)
        names = await search(alice, {"search_term": "greenhouse", "keys": ["content.name"]})
        assert [r["result"]["type"] for r in names["results"]] == ["m.room.name"]
        assert (await search(alice, {"search_term": "greenhouse", "keys": ["content.body"]}))["results"] == []
        # carol sees only her own room's message
        assert [r["result"]["room_id"] for r in (await search(carol, {"search_term": "tomatoes"}))["results"]] == [other]


@in_loop
async def test_order_filter_pagination_and_groups(tmp_path: Path) -> None:
    async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
        room_a = await make_room(alice, bob)
        room_b = await make_room(alice, bob)
        sent = []
        for i in range(7):
            sent.append(await say(alice if i % 2 else bob, room_a if i < 5 else room_b, f"reading number {i} pump"))
        strong = await say(bob, room_a, "pump pump pump pump")

        recent = await search(alice, {"search_term": "pump", "order_by": "recent", "filter": {"limit": 3}})
        assert ids(recent) == [strong, sent[6], sent[5]] and "next_batch" in recent
        pages = ids(recent)
        token = recent["next_batch"]
        while token:
            page = await search(alice, {"search_term": "pump", "order_by": "recent", "filter": {"limit": 3}}, token)
            pages += ids(page)
            assert page["count"] == recent["count"] == 8  # the first page's count, on every page
            token = page.get("next_batch")
        assert pages == [strong, *reversed(sent)]

        ranked = await search(alice, {"search_term": "pump", "filter": {"limit": 2}})
        assert ids(ranked)[0] == strong and ranked["count"] == 8
        ranked_all = ids(ranked)
        token = ranked["next_batch"]
        await say(bob, room_a, "pump pump pump pump pump")  # a new, better match does not shift later pages
        while token:
            page = await search(alice, {"search_term": "pump", "filter": {"limit": 2}}, token)
            ranked_all += ids(page)
            token = page.get("next_batch")
        assert sorted(ranked_all) == sorted([strong, *sent]) and len(ranked_all) == 8

        only_b = await search(alice, {"search_term": "pump", "filter": {"rooms": [room_b], "senders": [alice.user_id]}})
        assert ids(only_b) == [sent[5]]
        not_bob = await search(alice, {"search_term": "pump", "filter": {"not_senders": [bob.user_id], "limit": 50}})
        assert set(ids(not_bob)) == {sent[1], sent[3], sent[5]}
        # a user alice ignores is not found either
        path = f"{V3}/user/{q(alice.user_id)}/account_data/m.ignored_user_list"
        expect(await alice.request("PUT", path, {"ignored_users": {bob.user_id: {}}}), 200)
        assert set(ids(await search(alice, {"search_term": "pump", "filter": {"limit": 50}}))) == set(ids(not_bob))
        expect(await alice.request("PUT", path, {"ignored_users": {}}), 200)

        grouped = await search(alice, {"search_term": "reading", "order_by": "recent",
                                       "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]}})
        assert set(grouped["groups"]["room_id"][room_b]["results"]) == {sent[5], sent[6]}
        assert grouped["groups"]["room_id"][room_b]["order"] == 1  # the newest result's room first
        assert set(grouped["groups"]["sender"][alice.user_id]["results"]) == {sent[1], sent[3], sent[5]}


@in_loop
async def test_event_context_profiles_and_state(tmp_path: Path) -> None:
    async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
        room = await make_room(alice, bob, name="Boiler room")
        expect(await bob.request("PUT", f"{V3}/profile/{q(bob.user_id)}/displayname", {"displayname": "Bob B"}), 200)
        before = [await say(alice, room, f"before {i}") for i in range(3)]
        hit = await say(bob, room, "the valve is stuck")
        after = [await say(alice, room, f"after {i}") for i in range(3)]
        found = await search(alice, {"search_term": "valve", "include_state": True, "event_context": {
            "before_limit": 2, "after_limit": 1, "include_profile": True}})
        result = found["results"][0]
        assert result["result"]["event_id"] == hit
        context = result["context"]
        assert [e["event_id"] for e in context["events_before"]] == [before[2], before[1]]
        assert [e["event_id"] for e in context["events_after"]] == [after[0]]
        assert context["profile_info"][bob.user_id] == {"displayname": "Bob B"}
        assert context["start"].startswith("s") and context["end"].startswith("s")
        names = [e for e in found["state"][room] if e["type"] == "m.room.name"]
        assert names[0]["content"]["name"] == "Boiler room"
        # the context tokens page /messages on from the window
        page = expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=1&from="
                                          f"{q(context['start'])}"), 200)  # fmt: skip
        assert [e["event_id"] for e in page["chunk"]] == [before[0]]


@in_loop
async def test_history_visibility_and_leaving(tmp_path: Path) -> None:
    async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
        room = await make_room(alice, initial_state=[{"type": "m.room.history_visibility", "state_key": "",
                                                      "content": {"history_visibility": "joined"}}])  # fmt: skip
        early = await say(alice, room, "secret plan before bob came")
        expect(await bob.request("POST", f"{V3}/join/{q(room)}", {}), 200)
        seen = await say(alice, room, "plan while bob is here")
        expect(await bob.request("POST", f"{V3}/rooms/{q(room)}/leave", {}), 200)
        await say(alice, room, "plan after bob left")
        assert ids(await search(bob, {"search_term": "plan", "order_by": "recent"})) == [seen]
        assert early in ids(await search(alice, {"search_term": "plan"}))


@in_loop
async def test_redaction_and_encrypted_rooms(tmp_path: Path, ) -> None:
    async with gateway(tmp_path, "alice") as ((alice,), _):
        room = await make_room(alice)
        gone = await say(alice, room, "a typo to remove")
        path = f"{V3}/rooms/{q(room)}/redact/{q(gone)}/{time.monotonic_ns()}"
        expect(await alice.request("PUT", path, {}), 200)
        assert (await search(alice, {"search_term": "typo"}))["results"] == []
        encrypted = await make_room(alice, initial_state=[{"type": "m.room.encryption", "state_key": "",
                                                           "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        path = f"{V3}/rooms/{q(encrypted)}/send/m.room.encrypted/{time.monotonic_ns()}"
        expect(await alice.request("PUT", path, {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "typo AAAA",
                                                 "sender_key": "x", "session_id": "y", "device_id": "D"}), 200)
        assert (await search(alice, {"search_term": "typo"}))["results"] == []
        # a device's reading (SenML content) is not indexed either
        await say(alice, room, "temperature 21.5 Cel", **{"org.lowband.senml": [{"n": "temperature", "v": 215}]})
        assert (await search(alice, {"search_term": "temperature"}))["results"] == []


@pytest.mark.parametrize("term", ['"', '""', 'NEAR(a b', "*", "a*", "^start", "AND OR NOT", "col:value",
                                  "(((", "\x00\ud7ff", "- -- ---", "' OR 1=1 --", "{a b}: c"])
def test_hostile_terms_never_reach_fts_syntax(tmp_path: Path, term: str) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    try:
        words = query_words(term)
        assert all(w.isalnum() for w in words)
        assert store.search.matches(words, below=1 << 62, limit=10) == []
        # the store's own quoting holds even for text the homeserver would never pass it
        assert store.search.matches([term, 'x" OR "y', "NEAR(", "*"], below=1 << 62, limit=10) == []
    finally:
        store.close()


def test_query_words_are_bounded() -> None:
    huge = " ".join(f"w{i}" for i in range(1000))
    words = query_words(huge)
    assert len(words) == search_handler.MAX_QUERY_WORDS and words[0] == "w0"
    assert query_words("x" * 500) == ["x" * search_handler.MAX_WORD_CHARS]
    assert query_words("Pump pump PUMP, café_bar") == ["pump", "café", "bar"]


@in_loop
async def test_bad_requests(tmp_path: Path) -> None:
    async with gateway(tmp_path, "alice") as ((alice,), _):
        room = await make_room(alice)
        await say(alice, room, "something")

        async def post(body: Any, query: str = "") -> tuple[int, Any]:
            return await alice.request("POST", V3 + "/search" + query, body)

        expect(await post({}), 400, "M_MISSING_PARAM")
        expect(await post({"search_categories": []}), 400, "M_BAD_JSON")
        expect(await post({"search_categories": {"room_events": "x"}}), 400, "M_BAD_JSON")
        expect(await post({"search_categories": {"room_events": {}}}), 400, "M_MISSING_PARAM")
        expect(await post({"search_categories": {"room_events": {"search_term": 5}}}), 400, "M_BAD_JSON")
        criteria: dict[str, Any] = {"search_term": "something"}
        for bad in ({"order_by": "best"}, {"order_by": None}, {"keys": ["content.secret"]}, {"keys": []},
                    {"groupings": {"group_by": [{"key": "type"}]}}, {"search_term": "x" * 1001}):
            expect(await post({"search_categories": {"room_events": {**criteria, **bad}}}), 400, "M_INVALID_PARAM")
        for bad in ({"filter": []}, {"event_context": 3}, {"event_context": {"before_limit": -1}},
                    {"include_state": "yes"}, {"groupings": {"group_by": {}}}):
            expect(await post({"search_categories": {"room_events": {**criteria, **bad}}}), 400, "M_BAD_JSON")
        for token in ("zzz", "r", "r12", "r12x_1", "r12_-1", "k5", "k5_x", "k5_99999999", "r" + "9" * 40 + "_1"):
            expect(await post({"search_categories": {"room_events": criteria}}, f"?next_batch={token}"), 400,
                   "M_INVALID_PARAM")
        expect(await post({"search_categories": {"room_events": {"search_term": "x" * 1000}}}), 200)
        unknown = expect(await post({"search_categories": {"rooms": {}}}), 200)
        assert unknown == {"search_categories": {}}
        # a huge limit is lowered, a term of symbols only finds nothing
        many = expect(await post({"search_categories": {"room_events": {**criteria, "filter": {"limit": 10**9}}}}), 200)
        assert len(many["search_categories"]["room_events"]["results"]) == 1
        none = expect(await post({"search_categories": {"room_events": {"search_term": '"*(( ^-'}}}), 200)
        assert none["search_categories"]["room_events"] == {"results": [], "count": 0, "highlights": []}
        near = expect(await post({"search_categories": {"room_events": {"search_term": '"NEAR(something'}}}), 200)
        assert near["search_categories"]["room_events"]["highlights"] == ["near", "something"]
        assert near["search_categories"]["room_events"]["results"] == []  # NEAR is a word, not an operator
        expect(await alice.request("POST", V3 + "/search", {"search_categories": {}}, token=False), 401,
               "M_MISSING_TOKEN")


@pytest.mark.sqlite_only  # the SQLite file itself; on PostgreSQL: tests/store/test_store_pg_indexes.py
def test_index_kept_by_triggers_and_backfilled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older database (no index) is indexed at first open: a batch within the budget, the rest in the
    background; the triggers then keep it for every later write."""

    async def fill() -> str:
        async with gateway(tmp_path, "alice") as ((alice,), _):
            room = await make_room(alice)
            for i in range(30):
                await say(alice, room, f"old message {i} gauge")
            return room

    room = asyncio.run(fill())
    db = tmp_path / "data" / "lowband.db"
    with sqlite3.connect(db) as c:  # as an older version left it
        for statement in ("DROP TRIGGER event_search_insert", "DROP TRIGGER event_search_update",
                          "DROP TRIGGER event_search_delete", "DROP TABLE event_search",
                          "DROP TABLE search_backfill"):  # fmt: skip
            c.execute(statement)
    monkeypatch.setattr(search_tables, "BACKFILL_BATCH", 10)
    monkeypatch.setattr(search_tables, "BACKFILL_BUDGET_S", 0.0)
    store = SQLiteStore(db)
    try:
        assert store.search.older.backfilling is not None
        deadline = time.monotonic() + 10
        while store.search.older.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not store.search.older.pending()
        hits = store.search.matches(["gauge"], below=1 << 62, limit=100)
        assert len(hits) == 30 and {h.room_id for h in hits} == {room}
        assert [h.stream for h in hits] == sorted((h.stream for h in hits), reverse=True)
    finally:
        store.close()

    # Every later change of a row's indexed text or of what decides indexing keeps the index right.
    def found(word: str) -> list[int]:
        with sqlite3.connect(db) as c:
            return [r[0] for r in c.execute("SELECT rowid FROM event_search WHERE event_search MATCH ?", (word,))]

    with sqlite3.connect(db) as c:
        (stream,) = c.execute("SELECT stream FROM events WHERE index_fields LIKE '%old message 7 gauge%'").fetchone()
        c.execute("UPDATE events SET soft_failed = 1 WHERE stream = ?", (stream,))
    assert stream not in found("gauge") and len(found("gauge")) == 29
    with sqlite3.connect(db) as c:
        c.execute("UPDATE events SET soft_failed = 0, index_fields = replace(index_fields, 'gauge', 'barometer')"
                  " WHERE stream = ?", (stream,))  # fmt: skip
    assert found("barometer") == [stream] and stream not in found("gauge")
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM events WHERE stream = ?", (stream,))
        c.execute("INSERT INTO event_search (event_search) VALUES ('integrity-check')")  # its structure (text is checked above)
    assert found("barometer") == [] and len(found("gauge")) == 29
