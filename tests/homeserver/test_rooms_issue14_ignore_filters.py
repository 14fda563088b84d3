"""Ignored users (``m.ignored_user_list``) and strict filter validation, through the client-server API of a gateway
in the test's loop; matrix-nio syncs past an ignored user. The validator's table is checked in memory first."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nio
import pytest
from harness import Client, nio_client
from test_relations import V3, expect, gateway, make_room, q, text

from lowband.gateway.homeserver.filter_check import check_filter, check_room_event_filter
from lowband.gateway.homeserver.ignored import ignored_in
from lowband.gateway.matrix.errors import MatrixError

# ------------------------------------------------------------------ in memory


def test_ignored_list_reading_tolerates_malformed_content() -> None:
    me = "@me:localhost"
    assert ignored_in({"ignored_users": {"@a:x": {}, "@b:y": {"any": 1}}}, me) == {"@a:x", "@b:y"}
    assert ignored_in({"ignored_users": {me: {}, "nobody": {}, "@c:z": {}}}, me) == {"@c:z"}
    for bad in (None, [], "x", {}, {"ignored_users": ["@a:x"]}, {"ignored_users": None}):
        assert ignored_in(bad, me) == frozenset()


GOOD_FILTERS: list[dict[str, Any]] = [
    {},
    {"event_fields": ["type", "content.body"], "event_format": "client", "presence": {"not_types": ["*"]},
     "account_data": {"limit": 0}},
    # matrix-js-sdk's own sync filter, with fields newer than the spec we serve
    {"room": {"timeline": {"limit": 20, "unread_thread_notifications": True,
                           "org.matrix.msc3773.unread_thread_notifications": True},
              "state": {"lazy_load_members": True, "include_redundant_members": False},
              "rooms": ["!a:localhost", "!" + "A" * 43], "include_leave": False, "org.example.future": [1]}},
    {"room": {"timeline": {"senders": ["@a:localhost"], "not_senders": [], "contains_url": True}}},
]  # fmt: skip
BAD_FILTERS: list[tuple[Any, str, str]] = [
    ([], "M_BAD_JSON", "the filter"),
    ({"event_fields": "type"}, "M_BAD_JSON", "event_fields"),
    ({"event_fields": [1]}, "M_BAD_JSON", "event_fields"),
    ({"event_format": "xml"}, "M_INVALID_PARAM", "event_format"),
    ({"presence": []}, "M_BAD_JSON", "presence"),
    ({"presence": {"limit": "10"}}, "M_BAD_JSON", "presence.limit"),
    ({"account_data": {"limit": True}}, "M_BAD_JSON", "account_data.limit"),
    ({"room": {"timeline": {"limit": 1.5}}}, "M_BAD_JSON", "room.timeline.limit"),
    ({"room": {"timeline": {"limit": -1}}}, "M_INVALID_PARAM", "room.timeline.limit"),
    ({"room": {"timeline": {"limit": 2**60}}}, "M_INVALID_PARAM", "room.timeline.limit"),
    ({"room": {"state": {"types": "m.room.name"}}}, "M_BAD_JSON", "room.state.types"),
    ({"room": {"state": {"lazy_load_members": "true"}}}, "M_BAD_JSON", "room.state.lazy_load_members"),
    ({"room": {"ephemeral": {"senders": ["bob"]}}}, "M_BAD_JSON", "room.ephemeral.senders"),
    ({"room": {"rooms": ["#alias:localhost"]}}, "M_BAD_JSON", "room.rooms"),
    ({"room": {"account_data": {"not_rooms": [None]}}}, "M_BAD_JSON", "room.account_data.not_rooms"),
    ({"room": {"include_leave": 1}}, "M_BAD_JSON", "room.include_leave"),
    ({"room": "all"}, "M_BAD_JSON", "room"),
    ({"room": {"timeline": {"not_types": ["x"] * 1001}}}, "M_INVALID_PARAM", "room.timeline.not_types"),
]  # fmt: skip


@pytest.mark.parametrize("doc", GOOD_FILTERS)
def test_valid_filters_pass_unchanged(doc: dict[str, Any]) -> None:
    assert check_filter(doc) == doc


@pytest.mark.parametrize(("doc", "errcode", "where"), BAD_FILTERS, ids=lambda v: str(v)[:40])
def test_invalid_filters_name_the_key(doc: Any, errcode: str, where: str) -> None:
    with pytest.raises(MatrixError) as caught:
        check_filter(doc)
    assert (caught.value.status, caught.value.errcode) == (400, errcode)
    assert caught.value.message.startswith(where), caught.value.message


def test_room_event_filters_are_checked_as_such() -> None:
    assert check_room_event_filter({"limit": 5, "lazy_load_members": True, "rooms": ["!a:b"]})["limit"] == 5
    with pytest.raises(MatrixError, match=r"filter\.contains_url"):
        check_room_event_filter({"contains_url": "yes"})


# ------------------------------------------------------------------ over HTTP


async def ignore(client: Client, *users: str) -> None:
    path = f"{V3}/user/{q(client.user_id or '')}/account_data/m.ignored_user_list"
    expect(await client.request("PUT", path, {"ignored_users": {u: {} for u in users}}), 200)


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


def test_ignored_users_are_filtered_from_sync_messages_context_and_invites(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol") as ((alice, bob, carol), _):
            room = await make_room(alice, bob, carol, power_level_content_override={"state_default": 0})
            await ignore(alice, bob.user_id, alice.user_id)  # ignoring oneself is no-op
            await text(bob, room, "bob 1")
            middle = await text(carol, room, "carol 1")
            expect(await bob.request("PUT", f"{V3}/rooms/{q(room)}/state/m.room.topic", {"topic": "by bob"}), 200)
            await text(bob, room, "bob 2")

            sync = expect(await alice.request("GET", f"{V3}/sync"), 200)
            timeline = sync["rooms"]["join"][room]["timeline"]["events"]
            assert bodies(timeline) == ["carol 1"]
            assert any(e["type"] == "m.room.topic" and e["sender"] == bob.user_id for e in timeline)  # state stays
            assert bodies(
                expect(await carol.request("GET", f"{V3}/sync"), 200)["rooms"]["join"][room]["timeline"]["events"]
            ) == ["bob 1", "carol 1", "bob 2"]  # fmt: skip  (only alice ignores bob)

            page = expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=50"), 200)
            assert bodies(page["chunk"]) == ["carol 1"]
            context = expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/context/{q(middle)}?limit=10"), 200)
            assert bodies(context["events_before"]) == [] and bodies(context["events_after"]) == []

            # Incremental sync: bob's new message is left out, carol's is not.
            await text(bob, room, "bob 3")
            await text(carol, room, "carol 2")
            later = expect(await alice.request("GET", f"{V3}/sync?since={sync['next_batch']}"), 200)
            assert bodies(later["rooms"]["join"][room]["timeline"]["events"]) == ["carol 2"]

            # Invites: bob's is dropped, carol's is shown.
            from_bob = await make_room(bob)
            from_carol = await make_room(carol)
            for inviter, where in ((bob, from_bob), (carol, from_carol)):
                expect(await inviter.request("POST", f"{V3}/rooms/{q(where)}/invite", {"user_id": alice.user_id}), 200)
            invites = expect(await alice.request("GET", f"{V3}/sync?since={later['next_batch']}"), 200)
            assert list(invites["rooms"]["invite"]) == [from_carol]

            # Unignored: bob is back everywhere.
            await ignore(alice)
            page = expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=50"), 200)
            assert bodies(page["chunk"]) == ["carol 2", "bob 3", "bob 2", "carol 1", "bob 1"]

    asyncio.run(run())


def test_matrix_nio_sync_leaves_out_an_ignored_user(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
            room = await make_room(alice, bob)
            carol = await nio_client(alice.base, "carol")
            try:
                assert isinstance(await carol.join(room), nio.JoinResponse)
                raw = Client(alice.session, alice.base, carol.access_token)
                raw.user_id = carol.user_id
                await ignore(raw, bob.user_id)
                await text(bob, room, "from bob")
                await text(alice, room, "from alice")
                response = await carol.sync(timeout=0, full_state=True)
                assert isinstance(response, nio.SyncResponse)
                seen = [e.body for e in response.rooms.join[room].timeline.events if isinstance(e, nio.RoomMessageText)]
                assert seen == ["from alice"]
            finally:
                await carol.close()

    asyncio.run(run())


def test_filters_are_validated_where_they_enter(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice") as ((alice,), _):
            room = await make_room(alice)
            event = await text(alice, room, "x")
            create = f"{V3}/user/{q(alice.user_id or '')}/filter"
            for doc, errcode, where in BAD_FILTERS:
                body = expect(await alice.request("POST", create, doc), 400)
                assert body["errcode"] in (errcode, "M_NOT_JSON"), body  # a non-object body is refused earlier
                if isinstance(doc, dict):
                    assert body["errcode"] == errcode and body["error"].startswith(where), body
                    inline = quote(json.dumps(doc))
                    if len(inline) > 8000:  # past the HTTP request line's bound (aiohttp: 8190 bytes)
                        continue
                    assert expect(await alice.request("GET", f"{V3}/sync?filter={inline}"), 400)["errcode"] == errcode
            for doc in GOOD_FILTERS:
                filter_id = expect(await alice.request("POST", create, doc), 200)["filter_id"]
                assert expect(await alice.request("GET", f"{create}/{filter_id}"), 200) == doc
                expect(await alice.request("GET", f"{V3}/sync?filter={filter_id}"), 200)
            for path in (f"{V3}/rooms/{q(room)}/messages?filter=", f"{V3}/rooms/{q(room)}/context/{q(event)}?filter="):
                for doc, errcode in (({"limit": -1}, "M_INVALID_PARAM"), ({"types": "m.room.message"}, "M_BAD_JSON"),
                                     ({"lazy_load_members": "yes"}, "M_BAD_JSON"),
                                     ({"senders": ["nobody"]}, "M_BAD_JSON")):  # fmt: skip
                    expect(await alice.request("GET", path + quote(json.dumps(doc))), 400, errcode)
                expect(await alice.request("GET", path + quote(json.dumps({"limit": 5, "new.key": 1}))), 200)

    asyncio.run(run())
