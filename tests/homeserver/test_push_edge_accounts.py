"""Push rules are judged only for accounts a person reads: people and guests, never the accounts an edge
(device link, MQTT bridge, BLE sensor, application service) speaks as; an event in a room where nobody can be
notified is passed over without being read."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from harness import Client, expect, users_gateway

from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver.notifications import notifiable, push_of

V3 = "/_matrix/client/v3"

#: (user, owner): three edge accounts, a guest and a person made without a client
ACCOUNTS = [("@dev.probe:localhost", "device:probe"), ("@mqtt_probe:localhost", "mqtt"),
            ("@ble_probe:localhost", "ble:probe"), ("@as_probe:localhost", "appservice:bridge"),
            ("@guest1:localhost", "guest"), ("@person:localhost", None)]  # fmt: skip
MADE: list[str] = []  # tokens made by listed(), for unique names
EDGE = {user for user, owner in ACCOUNTS if owner not in (None, "guest")}


async def wait_judged(svc: Any) -> None:
    """Wait (at most 10 s) until every stored event is judged and its rows are written."""
    evaluator = push_of(svc).evaluator
    assert evaluator is not None
    for _ in range(1000):
        if evaluator.position >= svc.store.persisted and not evaluator.pending:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("push evaluation did not catch up")


async def listed(alice: Client, user_id: str, svc: Any) -> list[Any]:
    """``GET /notifications`` as ``user_id`` (alice's own client, or a token made in process)."""
    reader = alice
    if user_id != alice.user_id:
        token = f"tok-{user_id[1:].partition(':')[0]}-{len(MADE)}"
        MADE.append(token)
        await svc.store.add_token(token, user_id, "DEV", None, 0)
        reader = Client(alice.session, alice.base, token)
    return list(expect(await reader.request("GET", V3 + "/notifications"), 200)["notifications"])


def test_only_people_and_guests_are_judged_and_notified(tmp_path: Path) -> None:
    async def run() -> None:
        async with users_gateway(tmp_path, "alice", rate_limits=RateLimits(enabled=False)) as ((alice,), svc, _):
            for user_id, owner in ACCOUNTS:
                await svc.store.create_user(user_id, "unused", False, 0, owner=owner)
            assert [notifiable(svc.store, u) for u, _ in ACCOUNTS] == [False, False, False, False, True, True]
            assert notifiable(svc.store, alice.user_id) and notifiable(svc.store, "@nobody:localhost")
            room = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)["room_id"]
            for user_id, _ in ACCOUNTS:
                await svc.rooms.set_membership(user_id, room, user_id, "join")
            await wait_judged(svc)
            evaluator = push_of(svc).evaluator
            assert evaluator is not None
            judged: list[str] = []
            real = evaluator.book.ordered

            def counting(user_id: str) -> list[dict[str, Any]]:
                judged.append(user_id)
                return real(user_id)

            evaluator.book.ordered = counting  # type: ignore[method-assign]
            await svc.rooms.send("@mqtt_probe:localhost", room, "m.room.message", {"msgtype": "m.text", "body": "21.5"})
            await wait_judged(svc)
            assert sorted(judged) == sorted([alice.user_id, "@guest1:localhost", "@person:localhost"])
            for user_id in [alice.user_id, "@person:localhost"]:
                assert [n["event"]["content"]["body"] for n in await listed(alice, user_id, svc)] == ["21.5"]
            # A guest may not list notifications, but its /sync counts them.
            await svc.store.add_token("tok-guest", "@guest1:localhost", "DEV", None, 0)
            guest = Client(alice.session, alice.base, "tok-guest")
            synced = expect(await guest.request("GET", V3 + "/sync"), 200)
            assert synced["rooms"]["join"][room]["unread_notifications"]["notification_count"] == 1
            for user_id in EDGE:
                assert await listed(alice, user_id, svc) == []

    asyncio.run(run())


def test_a_room_of_edge_accounts_is_not_read_but_an_invited_person_is_notified(tmp_path: Path) -> None:
    async def run() -> None:
        async with users_gateway(tmp_path, "alice", rate_limits=RateLimits(enabled=False)) as ((alice,), svc, _):
            for user_id, owner in ACCOUNTS[:2]:
                await svc.store.create_user(user_id, "unused", False, 0, owner=owner)
            room = await svc.rooms.create_room("@mqtt_probe:localhost", {"preset": "public_chat"})
            await svc.rooms.set_membership("@dev.probe:localhost", room, "@dev.probe:localhost", "join")
            await wait_judged(svc)
            evaluator = push_of(svc).evaluator
            assert evaluator is not None
            read: list[str] = []
            real_event = svc.rooms.event

            def reading(event_id: str) -> Any:
                if sys._getframe(1).f_code.co_name == "judge":  # reads by the evaluator only
                    read.append(event_id)
                return real_event(event_id)

            svc.rooms.event = reading
            try:
                sent = await svc.rooms.send("@dev.probe:localhost", room, "m.room.message",
                                            {"msgtype": "m.text", "body": "on"})  # fmt: skip
                await wait_judged(svc)
                assert evaluator.evaluated_events > 0
                assert sent.event.event_id not in read
            finally:
                del svc.rooms.event
            # An invite still reaches a person (and only then is the event read).
            await svc.rooms.set_membership("@mqtt_probe:localhost", room, alice.user_id, "invite")
            await wait_judged(svc)
            got = await listed(alice, alice.user_id, svc)
            assert [(n["event"]["type"], n["event"]["state_key"]) for n in got] == [("m.room.member", alice.user_id)]
            assert await listed(alice, "@dev.probe:localhost", svc) == []

    asyncio.run(run())
