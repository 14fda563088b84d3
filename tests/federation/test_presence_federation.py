"""Presence between servers: the m.presence EDU rules in memory (a recording sender, a small fake of the services),
then two Lowband gateways on loopback where a status set on one is seen in /sync on the other."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from fed_harness import create_room, gateways, http_session, q, sync, until, user

from lowband.gateway.federation.presence_edus import MAX_ITEMS, PresenceEdus
from lowband.gateway.homeserver.presence import PresenceTracker
from lowband.gateway.homeserver.typing import TypingTracker


class RecordingSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = []

    def send_edu(self, destination: str, edu_type: str, content: dict[str, Any], key: tuple[str, ...] = ()) -> None:
        self.sent.append((destination, edu_type, content, key))


def fake_services(joined: dict[str, list[str]], servers: dict[str, set[str]]) -> Any:
    now = [1000.0]
    tracker = PresenceTracker(TypingTracker(clock=lambda: now[0]), clock=lambda: now[0])
    woken: list[int] = []
    store = SimpleNamespace(rooms_for_user=lambda u: [(r, "join", 1, "$e") for r in joined.get(u, [])])
    rooms = SimpleNamespace(dag=SimpleNamespace(servers_in_room=lambda r: servers.get(r, set())))
    return SimpleNamespace(sync=SimpleNamespace(presence=tracker), store=store, rooms=rooms, server_name="us",
                           notifier=SimpleNamespace(notify=lambda: woken.append(1)), woken=woken)  # fmt: skip


def test_edu_rules_in_memory() -> None:
    joined = {"@a:us": ["!r"], "@b:them": ["!r"], "@lonely:us": []}
    services = fake_services(joined, {"!r": {"us", "them", "other"}})
    sender = RecordingSender()
    edus = PresenceEdus(services, sender)  # type: ignore[arg-type]
    tracker = services.sync.presence
    tracker.set_status("@a:us", "unavailable", "lunch")
    assert [(d, t, k) for d, t, _, k in sender.sent] == [("other", "m.presence", ("presence", "@a:us")),
                                                         ("them", "m.presence", ("presence", "@a:us"))]  # fmt: skip
    assert sender.sent[0][2]["push"] == [{"user_id": "@a:us", "presence": "unavailable", "last_active_ago": 0,
                                          "currently_active": False, "status_msg": "lunch"}]  # fmt: skip
    tracker.set_status("@lonely:us", "online", None)  # shares no room: nothing goes out
    assert len(sender.sent) == 2
    # in: the origin's own user, in a room we hold
    edus.receive("them", {"push": [{"user_id": "@b:them", "presence": "online", "last_active_ago": 5000,
                                    "status_msg": "hi", "currently_active": True}]})  # fmt: skip
    assert tracker.content("@b:them") == {"presence": "online", "last_active_ago": 5000, "currently_active": True,
                                          "status_msg": "hi"}  # fmt: skip
    assert len(sender.sent) == 2 and services.woken  # never echoed back out; syncs woken
    bad_items = [
        {"user_id": "@b:other", "presence": "offline"},  # another server's user
        {"user_id": "@a:us", "presence": "offline"},  # ours
        {"user_id": "@b:them", "presence": "away"},
        {"user_id": "@b:them", "presence": "online", "status_msg": "x" * 5000},
        {"user_id": "@b:them", "presence": "online", "last_active_ago": -1},
        {"user_id": "@stranger:them", "presence": "online"},  # in no room we hold
        "not an object",
        {"user_id": "no-colon", "presence": "online"},
    ]
    edus.receive("them", {"push": bad_items})
    assert tracker.content("@b:them")["presence"] == "online" and tracker.content("@a:us")["presence"] == "unavailable"
    assert sum(edus.refused.values()) == len(bad_items)
    edus.receive("them", {"push": "nope"})
    edus.receive("them", None)
    flood = [{"user_id": "@b:them", "presence": "online"}] * (MAX_ITEMS + 50)
    before = sum(edus.refused.values())
    edus.receive("them", {"push": flood})
    assert sum(edus.refused.values()) - before == 50


@pytest.mark.slow
def test_presence_crosses_two_gateways(tmp_path: Any) -> None:
    async def main(gw: Any) -> None:
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            bob = await user(session, gw["b"], "bob")
            room_id = await create_room(alice, "lobby")
            status, joined = await bob.request("POST", f"/_matrix/client/v3/join/{q(room_id)}?server_name="
                                               f"{q(gw['a'].server_name)}", {})  # fmt: skip
            assert status == 200, joined
            status, _ = await bob.request("PUT", f"/_matrix/client/v3/presence/{q(bob.user_id)}/status",
                                          {"presence": "unavailable", "status_msg": "from B"})  # fmt: skip
            assert status == 200

            async def seen_on_a() -> Any:
                events = (await sync(alice))["presence"]["events"]
                return [e for e in events if e["sender"] == bob.user_id and e["content"].get("status_msg") == "from B"]

            found = await until(seen_on_a, what="bob's presence on A")
            assert found[0]["content"]["presence"] == "unavailable"
            status, body = await alice.request("GET", f"/_matrix/client/v3/presence/{q(bob.user_id)}/status")
            assert status == 200 and body["status_msg"] == "from B", body

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 180))
