"""Presence: the tracker's rules in memory (a given clock), then PUT/GET /presence and /sync's ``presence`` section
through a gateway in the test's loop, and matrix-nio setting and reading presence as a real client."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import nio
from harness import Client, expect, gateway_in_loop, nio_client

from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver.presence import PresenceTracker
from lowband.gateway.homeserver.typing import TypingTracker

V3 = "/_matrix/client/v3"


def in_loop(test: Callable[[Path], Awaitable[None]]) -> Callable[[Path], None]:
    """Run an async test in its own loop, 120 s at most."""

    @functools.wraps(test)
    def run(tmp_path: Path) -> None:
        asyncio.run(asyncio.wait_for(test(tmp_path), 120))

    return run


def q(value: str) -> str:
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def three(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Client, Client, Client, Any]]:
    """alice and bob share a room; carol shares none."""
    found: list[Any] = []
    async with gateway_in_loop(tmp_path, on_ready=found.append, rate_limits=RateLimits(enabled=False), **config) \
            as url, aiohttp.ClientSession() as session:  # fmt: skip
        clients = [Client(session, url) for _ in range(3)]
        for client, name in zip(clients, ("alice", "bob", "carol"), strict=True):
            await client.register(name)
        room_id = expect(await clients[0].request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)["room_id"]
        expect(await clients[1].request("POST", f"{V3}/join/{q(room_id)}", {}), 200)
        yield clients[0], clients[1], clients[2], found[0]


def status_path(user_id: str) -> str:
    return f"{V3}/presence/{q(user_id)}/status"


async def sync(client: Client, since: str | None = None, extra: str = "") -> dict[str, Any]:
    query = (f"since={q(since)}&" if since else "") + extra
    return dict(expect(await client.request("GET", f"{V3}/sync?{query}"), 200))


def presence_of(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["sender"]: e["content"] for e in body["presence"]["events"]}


def test_tracker_rules_with_a_given_clock() -> None:
    now = [1000.0]
    changes: list[int] = []
    typing = TypingTracker(clock=lambda: now[0])
    tracker = PresenceTracker(typing, idle_s=300, offline_s=1800, clock=lambda: now[0],
                              on_change=lambda: changes.append(1))  # fmt: skip
    start = typing.serial
    tracker.synced("@a:x", "online")
    assert tracker.content("@a:x")["presence"] == "online" and tracker.content("@a:x")["currently_active"] is True
    serial = typing.serial
    assert serial > start and tracker.changed_since({"@a:x", "@b:x"}, start) == ["@a:x"]
    now[0] += 100
    tracker.synced("@a:x", "online")  # activity, not a change
    assert typing.serial == serial and tracker.changed_since({"@a:x"}, serial) == []
    assert tracker.content("@a:x")["last_active_ago"] == 0
    now[0] += 61
    assert tracker.content("@a:x")["currently_active"] is False
    assert tracker.next_expiry() == 1100 + 300
    now[0] = 1100 + 300
    assert tracker.expire() is True
    assert tracker.content("@a:x")["presence"] == "unavailable" and tracker.changed_since({"@a:x"}, serial) == ["@a:x"]
    now[0] = 1100 + 1800
    assert tracker.expire() is True and tracker.content("@a:x")["presence"] == "offline"
    assert tracker.expire() is False and tracker.next_expiry() is None
    tracker.set_status("@a:x", "unavailable", "lunch")
    assert tracker.content("@a:x") == {"presence": "unavailable", "last_active_ago": 1800 * 1000,
                                       "currently_active": False, "status_msg": "lunch"}  # fmt: skip
    tracker.synced("@a:x", "offline")  # set_presence=offline leaves it alone
    assert tracker.content("@a:x")["presence"] == "unavailable"
    assert tracker.content("@nobody:x") == {"presence": "offline"}
    for bad in (("away", None), ("online", "x" * 1025)):
        try:
            tracker.set_status("@a:x", *bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad[0]} accepted")
    small = PresenceTracker(typing, max_users=2, clock=lambda: now[0])
    for user in ("@1:x", "@2:x", "@3:x"):
        small.set_status(user, "online", None)
    assert small.content("@1:x") == {"presence": "offline"} and small.content("@3:x")["presence"] == "online"
    assert len(changes) == 4  # online, unavailable, offline, lunch: activity alone wakes nobody


@in_loop
async def test_put_get_and_who_may_read(tmp_path: Path) -> None:
    async with three(tmp_path) as (alice, bob, carol, _):
        expect(await alice.request("PUT", status_path("@alice:localhost"), {"presence": "unavailable",
                                                                           "status_msg": "in a meeting"}), 200)
        mine = expect(await alice.request("GET", status_path("@alice:localhost")), 200)
        assert mine["presence"] == "unavailable" and mine["status_msg"] == "in a meeting"
        assert 0 <= mine["last_active_ago"] < 10_000 and mine["currently_active"] is False
        assert expect(await bob.request("GET", status_path("@alice:localhost")), 200)["status_msg"] == "in a meeting"
        expect(await carol.request("GET", status_path("@alice:localhost")), 403, "M_FORBIDDEN")
        expect(await bob.request("GET", status_path("@nobody:localhost")), 404, "M_NOT_FOUND")
        # without status_msg it is cleared
        expect(await alice.request("PUT", status_path("@alice:localhost"), {"presence": "online"}), 200)
        mine = expect(await alice.request("GET", status_path("@alice:localhost")), 200)
        assert mine["presence"] == "online" and "status_msg" not in mine and mine["currently_active"] is True


@in_loop
async def test_hostile_input(tmp_path: Path) -> None:
    async with three(tmp_path) as (alice, _bob, _carol, _):
        path = status_path("@alice:localhost")
        expect(await alice.request("PUT", path, {"presence": "away"}), 400, "M_INVALID_PARAM")
        expect(await alice.request("PUT", path, {"presence": 1}), 400, "M_BAD_JSON")
        expect(await alice.request("PUT", path, {}), 400, "M_MISSING_PARAM")
        expect(await alice.request("PUT", path, {"presence": "online", "status_msg": "x" * 5000}), 400, "M_TOO_LARGE")
        expect(await alice.request("PUT", path, {"presence": "online", "status_msg": ["list"]}), 400, "M_BAD_JSON")
        expect(await alice.request("PUT", path, raw=b"{nope"), 400, "M_NOT_JSON")
        expect(await alice.request("PUT", status_path("@bob:localhost"), {"presence": "online"}), 403, "M_FORBIDDEN")
        expect(await alice.request("PUT", status_path("not-a-user"), {"presence": "online"}), 400, "M_INVALID_PARAM")
        expect(await alice.request("GET", f"{V3}/sync?set_presence=busy"), 400, "M_INVALID_PARAM")
        # nothing of the refused requests stuck
        assert "status_msg" not in expect(await alice.request("GET", path), 200)


@in_loop
async def test_sync_delivers_changes_of_users_sharing_a_room(tmp_path: Path) -> None:
    async with three(tmp_path) as (alice, bob, carol, _):
        await sync(carol)  # carol is online too, but shares no room with alice
        expect(await bob.request("PUT", status_path("@bob:localhost"), {"presence": "online", "status_msg": "hi"}), 200)
        first = await sync(alice)
        seen = presence_of(first)
        assert set(seen) == {"@alice:localhost", "@bob:localhost"}  # own presence too; never carol's
        assert seen["@bob:localhost"]["status_msg"] == "hi" and seen["@alice:localhost"]["presence"] == "online"
        quiet = await sync(alice, first["next_batch"])
        assert presence_of(quiet) == {}  # only changes since the token
        # a long-poll wakes on a change
        started = time.monotonic()
        waiting = asyncio.create_task(sync(alice, quiet["next_batch"], "timeout=10000"))
        await asyncio.sleep(0.3)
        expect(await bob.request("PUT", status_path("@bob:localhost"), {"presence": "unavailable"}), 200)
        woke = await asyncio.wait_for(waiting, 15)
        assert time.monotonic() - started < 8
        assert presence_of(woke) == {"@bob:localhost": {"presence": "unavailable", "currently_active": False,
                                                        "last_active_ago": woke["presence"]["events"][0]["content"][
                                                            "last_active_ago"]}}  # fmt: skip
        # the presence filter
        none = {"presence": {"not_types": ["*"]}}
        assert presence_of(await sync(alice, None, "filter=" + q(json.dumps(none)))) == {}
        only_bob = {"presence": {"senders": ["@bob:localhost"]}}
        assert set(presence_of(await sync(alice, None, "filter=" + q(json.dumps(only_bob))))) == {"@bob:localhost"}


@in_loop
async def test_set_presence_and_idle_timeout(tmp_path: Path) -> None:
    async with three(tmp_path, presence_idle_s=1.0, presence_offline_s=30.0) as (alice, bob, _carol, _):
        await sync(bob, None, "set_presence=offline")
        assert expect(await alice.request("GET", status_path("@bob:localhost")), 200)["presence"] == "offline"
        await sync(bob, None, "set_presence=unavailable")
        assert expect(await alice.request("GET", status_path("@bob:localhost")), 200)["presence"] == "unavailable"
        token = (await sync(alice))["next_batch"]
        await sync(bob)  # online, and then idle
        assert expect(await alice.request("GET", status_path("@bob:localhost")), 200)["presence"] == "online"
        deadline = time.monotonic() + 10
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = await sync(alice, token, "timeout=2000&set_presence=offline")
            token = body["next_batch"]
            seen.update(presence_of(body))
            if seen.get("@bob:localhost", {}).get("presence") == "unavailable":
                break
        assert seen["@bob:localhost"]["presence"] == "unavailable"


@in_loop
async def test_presence_off_in_the_config(tmp_path: Path) -> None:
    async with three(tmp_path, presence_enabled=False) as (alice, bob, _carol, svc):
        assert svc.sync.presence is None
        expect(await bob.request("PUT", status_path("@bob:localhost"), {"presence": "online", "status_msg": "x"}), 200)
        assert expect(await alice.request("GET", status_path("@bob:localhost")), 200) == {"presence": "offline"}
        assert (await sync(alice))["presence"]["events"] == []


@in_loop
async def test_matrix_nio_sets_and_reads_presence(tmp_path: Path) -> None:
    async with gateway_in_loop(tmp_path) as url:
        alice, bob = await nio_client(url, "alice"), await nio_client(url, "bob")
        try:
            created = await alice.room_create(preset=nio.RoomPreset.public_chat)
            assert isinstance(created, nio.RoomCreateResponse), created
            assert isinstance(await bob.join(created.room_id), nio.JoinResponse)
            assert isinstance(await bob.set_presence("unavailable", "on the road"), nio.PresenceSetResponse)
            got = await alice.get_presence("@bob:localhost")
            assert isinstance(got, nio.PresenceGetResponse), got
            assert got.presence == "unavailable" and got.status_msg == "on the road"
            synced = await alice.sync(sync_filter={"room": {"state": {"lazy_load_members": True}}},
                                      set_presence="online")  # fmt: skip
            assert isinstance(synced, nio.SyncResponse), synced
            bobs = [e for e in synced.presence_events if e.user_id == "@bob:localhost"]
            assert bobs and bobs[0].presence == "unavailable" and bobs[0].status_msg == "on the road"
            room = synced.rooms.join[created.room_id]
            members = [e for e in room.state + room.timeline.events if isinstance(e, nio.RoomMemberEvent)]
            assert {m.state_key for m in members} <= {"@alice:localhost", "@bob:localhost"}
        finally:
            await alice.close()
            await bob.close()


def test_config_keys(tmp_path: Path) -> None:
    from lowband.gateway.config import ConfigError, load_config

    good = tmp_path / "good.toml"
    good.write_text("[registration]\nguests = true\n[presence]\nenabled = false\nidle_s = 60\noffline_s = 600.5\n")
    config = load_config(good)
    assert (config.guests_enabled, config.presence_enabled, config.presence_idle_s, config.presence_offline_s) == (
        True, False, 60, 600.5)  # fmt: skip
    assert load_config(None).guests_enabled is False and load_config(None).presence_enabled is True
    for text, message in (("[presence]\nidle_s = -1\n", "presence.idle_s"), ("[presence]\nidle_s = nan\n", "idle_s"),
                          ("[presence]\nenabled = 1\n", "presence.enabled"), ("[presence]\naway = 3\n", "presence.away"),
                          ("[registration]\nguests = \"yes\"\n", "registration.guests")):  # fmt: skip
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        try:
            load_config(bad)
        except ConfigError as exc:
            assert message in str(exc), exc
            continue
        raise AssertionError(f"{text!r} accepted")
