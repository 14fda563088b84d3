"""A filter's ``event_fields`` and ``event_format``: the path rules in memory, then /sync (every section),
/messages and /context of a gateway in the test's loop, with inline and stored filters."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness import Client, expect, users_gateway

from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver.event_fields import EventShape, compile_fields, split_path

V3 = "/_matrix/client/v3"
PDU_KEYS = ("auth_events", "prev_events", "depth", "hashes", "signatures")


def q(value: str) -> str:
    return quote(value, safe="")


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


# ------------------------------------------------------------------ in memory


def test_paths_split_on_unescaped_dots() -> None:
    assert split_path("content.body") == ["content", "body"]
    assert split_path("content.m\\.relates_to") == ["content", "m.relates_to"]
    assert split_path("a\\\\.b") == ["a\\", "b"]  # an escaped backslash, then a separating dot
    assert split_path("type") == ["type"]
    assert split_path("trailing\\") == ["trailing\\"]
    assert compile_fields([]) is None
    # a shorter path keeps the whole value, whichever comes first
    assert compile_fields(["content", "content.body"]) == {"content": None}
    assert compile_fields(["content.body", "content"]) == {"content": None}


def test_projection_keeps_only_named_fields_and_never_mutates() -> None:
    event = {"type": "m.room.message", "sender": "@a:x", "event_id": "$1",
             "content": {"body": "hi", "msgtype": "m.text", "m.relates_to": {"rel_type": "m.thread"}},
             "unsigned": {"age": 5}}  # fmt: skip
    before = json.dumps(event, sort_keys=True)
    shape = EventShape.of({"event_fields": ["type", "content.body", "content.m\\.relates_to.rel_type",
                                            "sender.deeper", "content.absent"]})  # fmt: skip
    assert shape.project(event) == {"type": "m.room.message",
                                    "content": {"body": "hi", "m.relates_to": {"rel_type": "m.thread"}}}  # fmt: skip
    assert json.dumps(event, sort_keys=True) == before
    assert EventShape.of({"event_fields": []}).plain and EventShape.of(None).plain
    assert EventShape.of({"event_format": "federation"}).federation


# ------------------------------------------------------------------ through a gateway


async def _room_with_everything(alice: Client, bob: Client) -> tuple[str, str, str]:
    """A room alice and bob share with a message, a redacted message, a receipt, typing and account data;
    returns (room ID, the message's ID, the redacted one's ID)."""
    room_id = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat", "name": "r"}), 200)[
        "room_id"]  # fmt: skip
    expect(await bob.request("POST", f"{V3}/join/{q(room_id)}", {}), 200)
    send = f"{V3}/rooms/{q(room_id)}/send/m.room.message/"
    message = expect(await bob.request("PUT", send + "t1", {"msgtype": "m.text", "body": "hello", "extra": 1}),
                     200)["event_id"]  # fmt: skip
    gone = expect(await bob.request("PUT", send + "t2", {"msgtype": "m.text", "body": "secret"}), 200)["event_id"]
    expect(await bob.request("PUT", f"{V3}/rooms/{q(room_id)}/redact/{q(gone)}/r1", {}), 200)
    expect(await bob.request("POST", f"{V3}/rooms/{q(room_id)}/receipt/m.read/{q(message)}", {}), 200)
    expect(await bob.request("PUT", f"{V3}/rooms/{q(room_id)}/typing/{q(str(bob.user_id))}",
                             {"typing": True, "timeout": 30000}), 200)  # fmt: skip
    expect(await alice.request("PUT", f"{V3}/user/{q(str(alice.user_id))}/account_data/org.example.global",
                               {"a": 1}), 200)  # fmt: skip
    expect(await alice.request("PUT", f"{V3}/user/{q(str(alice.user_id))}/rooms/{q(room_id)}/account_data/"
                               "org.example.room", {"b": 2}), 200)  # fmt: skip
    return room_id, message, gone


async def _sync(client: Client, filter_value: str) -> dict[str, Any]:
    return dict(expect(await client.request("GET", f"{V3}/sync?timeout=0&filter={q(filter_value)}"), 200))


def test_sync_keeps_only_the_named_fields_in_every_section(tmp_path: Path) -> None:
    async def go() -> None:
        async with users_gateway(tmp_path, "alice", "bob", rate_limits=RateLimits(enabled=False)) as (
                (alice, bob), _, _):  # fmt: skip
            room_id, message, _ = await _room_with_everything(alice, bob)
            fields = ["type", "event_id", "content.body", "content.m\\.fully_read"]
            body = await _sync(alice, json.dumps({"event_fields": fields}))
            room = body["rooms"]["join"][room_id]
            timeline = room["timeline"]["events"]
            assert timeline, room
            for event in timeline + room["state"]["events"]:
                assert set(event) <= {"type", "event_id", "content"}, event
                assert set(event.get("content", {})) <= {"body"}, event
            assert {"type": "m.room.message", "event_id": message, "content": {"body": "hello"}} in timeline
            assert all("content" not in e for e in room["state"]["events"] if e["type"] == "m.room.create")
            ephemeral = room["ephemeral"]["events"]
            assert {e["type"] for e in ephemeral} == {"m.typing", "m.receipt"}
            assert all(set(e) == {"type"} for e in ephemeral), ephemeral
            assert {"type": "org.example.room"} in room["account_data"]["events"]
            assert {"type": "org.example.global"} in body["account_data"]["events"]
            presence = body["presence"]["events"]
            assert presence and all(set(e) == {"type"} for e in presence), presence

            # the same filter stored, and no event_fields: everything is back
            stored = expect(await alice.request("POST", f"{V3}/user/{q(str(alice.user_id))}/filter",
                                                {"event_fields": ["content.body"]}), 200)["filter_id"]  # fmt: skip
            events = (await _sync(alice, stored))["rooms"]["join"][room_id]["timeline"]["events"]
            assert {"content": {"body": "hello"}} in events
            full = (await _sync(alice, "{}"))["rooms"]["join"][room_id]["timeline"]["events"]
            assert any(e.get("sender") == bob.user_id and e["content"].get("extra") == 1 for e in full)

    run(go())


def test_federation_format_serves_the_pdu(tmp_path: Path) -> None:
    async def go() -> None:
        async with users_gateway(tmp_path, "alice", "bob", rate_limits=RateLimits(enabled=False)) as (
                (alice, bob), _, _):  # fmt: skip
            room_id, message, gone = await _room_with_everything(alice, bob)
            body = await _sync(alice, json.dumps({"event_format": "federation", "room": {"timeline": {"limit": 30}}}))
            room = body["rooms"]["join"][room_id]
            by_id = {e["event_id"]: e for e in room["timeline"]["events"] + room["state"]["events"]}
            for event in by_id.values():
                assert all(k in event for k in PDU_KEYS), event
                assert event["room_id"] == room_id
            assert by_id[message]["content"]["body"] == "hello"
            assert isinstance(by_id[message]["depth"], int) and by_id[message]["prev_events"]
            assert "unsigned" in by_id[message]
            # a redacted event's PDU is its redacted form
            assert by_id[gone]["content"] == {} and "hashes" in by_id[gone]
            # ephemeral events have no federation form: unchanged
            assert {e["type"] for e in room["ephemeral"]["events"]} == {"m.typing", "m.receipt"}
            # client format (the default) has none of the PDU's envelope
            plain = (await _sync(alice, json.dumps({"event_format": "client"})))["rooms"]["join"][room_id]
            assert not any(k in e for e in plain["timeline"]["events"] for k in PDU_KEYS)
            # both at once: the envelope's fields may be named
            both = await _sync(alice, json.dumps({"event_format": "federation", "event_fields": ["depth", "event_id"]}))
            shaped = both["rooms"]["join"][room_id]["timeline"]["events"]
            assert shaped and all(set(e) == {"depth", "event_id"} for e in shaped), shaped

    run(go())


def test_messages_and_context_honour_the_shape(tmp_path: Path) -> None:
    async def go() -> None:
        async with users_gateway(tmp_path, "alice", "bob", rate_limits=RateLimits(enabled=False)) as (
                (alice, bob), _, _):  # fmt: skip
            room_id, message, _ = await _room_with_everything(alice, bob)
            shape = json.dumps({"event_fields": ["type", "content.body"], "lazy_load_members": True})
            page = expect(await alice.request("GET", f"{V3}/rooms/{q(room_id)}/messages?dir=b&limit=20"
                                                     f"&filter={q(shape)}"), 200)  # fmt: skip
            assert page["chunk"] and all(set(e) <= {"type", "content"} for e in page["chunk"]), page["chunk"]
            assert {"type": "m.room.message", "content": {"body": "hello"}} in page["chunk"]
            assert page["state"] and all(set(e) <= {"type", "content"} for e in page["state"])
            raw = json.dumps({"event_format": "federation"})
            page = expect(await alice.request("GET", f"{V3}/rooms/{q(room_id)}/messages?dir=b&filter={q(raw)}"), 200)
            assert all("hashes" in e and "signatures" in e for e in page["chunk"])
            ctx = expect(await alice.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/context/{q(message)}"
                                                    f"?limit=4&filter={q(shape)}"), 200)  # fmt: skip
            assert ctx["event"] == {"type": "m.room.message", "content": {"body": "hello"}}
            for event in ctx["events_before"] + ctx["events_after"] + ctx["state"]:
                assert set(event) <= {"type", "content"}, event
            bad = json.dumps({"event_format": "xml"})
            expect(await alice.request("GET", f"{V3}/rooms/{q(room_id)}/messages?dir=b&filter={q(bad)}"), 400,
                   "M_INVALID_PARAM")  # fmt: skip
            expect(await alice.request("GET", f"{V3}/sync?timeout=0&filter={q(bad)}"), 400, "M_INVALID_PARAM")

    run(go())


def test_projection_cost_is_bounded_by_the_filter() -> None:
    # the largest list a filter may hold, against a large event: one walk of the compiled tree per event
    fields = [f"content.k{i}.v" for i in range(1000)]
    shape = EventShape.of({"event_fields": fields})
    event = {"content": {f"k{i}": {"v": i, "w": i} for i in range(5000)}}
    started = time.perf_counter()
    for _ in range(100):
        out = shape.project(event)
    assert len(out["content"]) == 1000 and out["content"]["k3"] == {"v": 3}
    assert time.perf_counter() - started < 2.0


def test_sync_filters_the_sections_without_room_events(tmp_path: Path) -> None:
    # the filters of account_data, room.account_data and room.ephemeral: types, limit, rooms
    async def go() -> None:
        async with users_gateway(tmp_path, "alice", "bob", rate_limits=RateLimits(enabled=False)) as (
                (alice, bob), _, _):  # fmt: skip
            room_id, _, _ = await _room_with_everything(alice, bob)
            for name in ("org.example.a", "org.example.b", "org.other.c"):
                expect(await alice.request("PUT", f"{V3}/user/{q(str(alice.user_id))}/account_data/{name}", {}), 200)

            def types(events: list[dict[str, Any]]) -> list[str]:
                return sorted(e["type"] for e in events)

            body = await _sync(alice, json.dumps({
                "account_data": {"types": ["org.example.*"], "not_types": ["org.example.b"]},
                "room": {"ephemeral": {"types": ["m.receipt"]}, "account_data": {"not_types": ["org.example.room"]}},
            }))  # fmt: skip
            assert types(body["account_data"]["events"]) == ["org.example.a", "org.example.global"]
            room = body["rooms"]["join"][room_id]
            assert types(room["ephemeral"]["events"]) == ["m.receipt"]
            assert room["account_data"]["events"] == []
            body = await _sync(alice, json.dumps({"account_data": {"limit": 1},
                                                  "room": {"ephemeral": {"not_rooms": [room_id]}}}))  # fmt: skip
            assert len(body["account_data"]["events"]) == 1
            room = body["rooms"]["join"][room_id]
            assert room["ephemeral"]["events"] == [] and types(room["account_data"]["events"]) == ["org.example.room"]
            # no filter: everything, as before
            body = await _sync(alice, "{}")
            assert len(body["account_data"]["events"]) >= 4
            assert types(body["rooms"]["join"][room_id]["ephemeral"]["events"]) == ["m.receipt", "m.typing"]

    run(go())
