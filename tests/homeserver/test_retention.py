"""Retention (MSC1763 ``m.room.retention``, docs/retention.md) over real HTTP against a gateway in the test's loop.

Old messages are sent with the room service's clock set two hours back (no sleeping); the room then sets
``max_lifetime`` to one hour. Before any purge they are gone from /sync, /messages, /context, /event,
/relations, search and timestamp_to_event; the purge job (driven directly) deletes them from the store but
keeps the state and the forward extremity, which the next event builds on; members are told through /sync;
the room stays usable: sending, syncing, a new member joining. Also: the server default per room kind
(a telemetry room, with an edge-owned member), the config bounds, and ``[retention]`` config errors.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from harness import Client, expect, gateway_in_loop, in_loop

from lowband.gateway.config import ConfigError, RateLimits, RetentionConfig, load_config
from lowband.gateway.homeserver.retention import KIND_DEFAULT, KIND_TELEMETRY, effective_policy
from lowband.gateway.homeserver.retention_job import RETENTION, Retention

V3 = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"
HOUR_MS = 3_600_000


def q(value: str) -> str:
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def running(tmp_path: Path, retention: RetentionConfig) -> AsyncIterator[tuple[aiohttp.ClientSession, str, Any]]:
    found: list[Any] = []
    async with gateway_in_loop(tmp_path, on_ready=found.append, rate_limits=RateLimits(enabled=False),
                               retention=retention) as url, aiohttp.ClientSession() as session:  # fmt: skip
        yield session, url, found[0]


async def user(session: aiohttp.ClientSession, url: str, name: str) -> Client:
    client = Client(session, url)
    await client.register(name)
    return client


async def send(client: Client, room: str, content: dict[str, Any], event_type: str = "m.room.message") -> str:
    path = f"{V3}/rooms/{q(room)}/send/{event_type}/{time.monotonic_ns()}"
    return str(expect(await client.request("PUT", path, content), 200)["event_id"])


@contextlib.contextmanager
def sent_in_the_past(services: Any, seconds: float) -> Iterator[None]:
    """Events sent inside carry an origin_server_ts ``seconds`` ago (the room service's clock moved back)."""
    sender = services.rooms.sender
    real = sender.clock
    sender.clock = lambda: real() - seconds
    try:
        yield
    finally:
        sender.clock = real


async def search(client: Client, term: str) -> list[str]:
    body = expect(await client.request("POST", V3 + "/search", {
        "search_categories": {"room_events": {"search_term": term}}}), 200)  # fmt: skip
    return [r["result"]["event_id"] for r in body["search_categories"]["room_events"]["results"]]


async def timeline_ids(client: Client, room: str) -> list[str]:
    body = expect(await client.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=100"), 200)
    return [e["event_id"] for e in body["chunk"]]


async def initial_sync(client: Client, room: str) -> tuple[list[str], dict[str, Any]]:
    body = expect(await client.request("GET", V3 + "/sync?filter=" + q('{"room":{"timeline":{"limit":50}}}')), 200)
    joined = body["rooms"]["join"][room]
    return [e["event_id"] for e in joined["timeline"]["events"]], body


@in_loop
async def test_expired_events_leave_every_api_then_the_store_and_the_room_goes_on(tmp_path: Path) -> None:
    async with running(tmp_path, RetentionConfig(enabled=True)) as (session, url, services):
        alice, bob = await user(session, url, "alice"), await user(session, url, "bob")
        room = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)["room_id"]
        expect(await bob.request("POST", f"{V3}/join/{q(room)}", {}), 200)
        with sent_in_the_past(services, 2 * 3600):
            old = [await send(alice, room, {"msgtype": "m.text", "body": f"walrus number {i}"}) for i in range(3)]
            reply = await send(bob, room, {"msgtype": "m.text", "body": "walrus reply", "m.relates_to": {
                "rel_type": "m.thread", "event_id": old[0]}})  # fmt: skip
            reaction = await send(bob, room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": old[1],
                                                               "key": "👍"}}, "m.reaction")  # fmt: skip
        expired = [*old, reply, reaction]
        # no policy yet: everything is there (so what follows is the policy's doing)
        assert set(expired) <= set(await timeline_ids(bob, room))
        deadline = time.monotonic() + 10
        while len(await search(bob, "walrus")) < 4:  # the index has taken the four texts
            assert time.monotonic() < deadline, "search never found the messages"
        since = expect(await bob.request("GET", V3 + "/sync"), 200)["next_batch"]

        policy = expect(await alice.request("PUT", f"{V3}/rooms/{q(room)}/state/m.room.retention/",
                                            {"max_lifetime": HOUR_MS}), 200)["event_id"]  # fmt: skip
        live = await send(alice, room, {"msgtype": "m.text", "body": "live"})
        with sent_in_the_past(services, 2 * 3600):  # an old edit of it; the newest event is old: the extremity
            edit = await send(alice, room, {"msgtype": "m.text", "body": "* edited", "m.new_content": {
                "msgtype": "m.text", "body": "edited"}, "m.relates_to": {"rel_type": "m.replace", "event_id": live}})
            extremity = await send(alice, room, {"msgtype": "m.text", "body": "walrus last"})
        expired += [edit, extremity]

        # --- before any purge: gone from every read
        assert not set(expired) & set(await timeline_ids(bob, room))
        timeline, body = await initial_sync(bob, room)
        assert not set(expired) & set(timeline) and policy in timeline
        for event_id in expired:
            expect(await bob.request("GET", f"{V3}/rooms/{q(room)}/event/{q(event_id)}"), 404, "M_NOT_FOUND")
            expect(await bob.request("GET", f"{V3}/rooms/{q(room)}/context/{q(event_id)}"), 404, "M_NOT_FOUND")
        expect(await bob.request("GET", f"{V1}/rooms/{q(room)}/relations/{q(old[0])}"), 404)
        related = expect(await bob.request("GET", f"{V1}/rooms/{q(room)}/relations/{q(live)}"), 200)
        assert related["chunk"] == []
        shown = expect(await bob.request("GET", f"{V3}/rooms/{q(room)}/event/{q(live)}"), 200)
        assert "m.relations" not in shown.get("unsigned", {})  # the expired edit is not bundled
        timeline_live = [e for e in body["rooms"]["join"][room]["timeline"]["events"] if e["event_id"] == live]
        assert timeline_live and "m.relations" not in timeline_live[0].get("unsigned", {})
        assert await search(bob, "walrus") == []
        ts = int(time.time() * 1000) - 2 * HOUR_MS
        nearest = await bob.request("GET", f"{V1}/rooms/{q(room)}/timestamp_to_event?ts={ts}&dir=f")
        assert nearest[0] != 200 or nearest[1]["event_id"] not in expired

        # --- the purge job: gone from the store, state and the extremity kept
        retention: Retention = services.components[RETENTION]
        assert await retention.run_once() == len(expired) - 1
        store = services.store
        assert [e for e in expired if store.get_event(e) is not None] == [extremity]
        assert store.get_event(policy) is not None
        assert await retention.run_once() == 0  # nothing more, the extremity is kept
        # members are told through /sync
        told = expect(await bob.request("GET", f"{V3}/sync?since={q(since)}&timeout=0"), 200)
        purged = told["rooms"]["join"][room]["org.lowband.retention"]["purged_before_ts"]
        assert int(time.time() * 1000) - HOUR_MS - 60_000 < purged <= int(time.time() * 1000) - HOUR_MS

        # --- the room goes on: a send builds on the kept extremity; sync, join, history all work
        fresh = await send(alice, room, {"msgtype": "m.text", "body": "fresh walrus"})
        fresh_row = store.get_event(fresh)
        assert fresh_row is not None and fresh_row["event"].prev_events == [extremity]
        incremental = expect(await bob.request("GET", f"{V3}/sync?since={q(told['next_batch'])}&timeout=0"), 200)
        assert [e["event_id"] for e in incremental["rooms"]["join"][room]["timeline"]["events"]] == [fresh]
        carol = await user(session, url, "carol")
        expect(await carol.request("POST", f"{V3}/join/{q(room)}", {}), 200)
        history = await timeline_ids(carol, room)
        assert fresh in history and policy in history and not set(expired) & set(history)
        assert await search(carol, "walrus") == [fresh]
        assert await retention.run_once() == 1  # the old extremity is no longer one: it goes now
        assert store.get_event(extremity) is None
        assert await send(bob, room, {"msgtype": "m.text", "body": "still here"}) in await timeline_ids(carol, room)


def test_policy_of_a_room_per_kind_with_the_bounds() -> None:
    config = RetentionConfig(enabled=True, default_max_lifetime_s=86_400, telemetry_max_lifetime_s=3600,
                             allowed_min_lifetime_s=60, allowed_max_lifetime_s=7 * 86_400)  # fmt: skip
    assert effective_policy(None, KIND_DEFAULT, config).max_lifetime_ms == 86_400_000
    assert effective_policy(None, KIND_TELEMETRY, config).max_lifetime_ms == 3_600_000
    assert effective_policy({"max_lifetime": 1000}, KIND_DEFAULT, config).max_lifetime_ms == 60_000  # raised
    assert effective_policy({"max_lifetime": 10**12}, KIND_DEFAULT, config).max_lifetime_ms == 7 * 86_400_000
    both = effective_policy({"max_lifetime": 120_000, "min_lifetime": 600_000}, KIND_DEFAULT, config)
    assert (both.min_lifetime_ms, both.max_lifetime_ms) == (600_000, 600_000)  # kept at least min_lifetime
    for bad in ("3600000", True, -5, 1.5, None, 2**60):  # malformed or absent: the lower limit (MSC1763)
        assert effective_policy({"max_lifetime": bad}, KIND_TELEMETRY, config).max_lifetime_ms == 60_000
    assert effective_policy({}, KIND_TELEMETRY, config).max_lifetime_ms == 60_000
    unbounded = RetentionConfig(enabled=True, default_max_lifetime_s=60)
    assert effective_policy({"min_lifetime": 5}, KIND_DEFAULT, unbounded).max_lifetime_ms is None  # forever
    assert effective_policy({"max_lifetime": 1000}, KIND_DEFAULT, RetentionConfig()).max_lifetime_ms is None
    assert effective_policy(None, KIND_DEFAULT, RetentionConfig(enabled=True)).cutoff(10**12) is None
    assert effective_policy(None, KIND_DEFAULT, config).cutoff(100_000_000) == 100_000_000 - 86_400_000


@in_loop
async def test_a_telemetry_room_takes_its_kinds_default(tmp_path: Path) -> None:
    config = RetentionConfig(enabled=True, telemetry_max_lifetime_s=3600, default_max_lifetime_s=30 * 86_400)
    async with running(tmp_path, config) as (session, url, services):
        alice = await user(session, url, "alice")
        chat = expect(await alice.request("POST", V3 + "/createRoom", {}), 200)["room_id"]
        sensors = expect(await alice.request("POST", V3 + "/createRoom", {}), 200)["room_id"]
        # an account an edge owns (as the link makes for a device) joins the sensors' room
        await services.store.create_user("@dev.kitchen:localhost", "", False, 0, owner="device:kitchen")
        expect(await alice.request("POST", f"{V3}/rooms/{q(sensors)}/invite", {"user_id": "@dev.kitchen:localhost"}),
               200)  # fmt: skip
        await services.rooms.set_membership("@dev.kitchen:localhost", sensors, "@dev.kitchen:localhost", "join")
        with sent_in_the_past(services, 2 * 3600):
            in_chat = await send(alice, chat, {"msgtype": "m.notice", "body": "two hours ago"})
            in_sensors = await send(alice, sensors, {"msgtype": "m.notice", "body": "two hours ago"})
        await send(alice, chat, {"msgtype": "m.notice", "body": "now"})
        await send(alice, sensors, {"msgtype": "m.notice", "body": "now"})
        retention: Retention = services.components[RETENTION]
        assert retention.kind(sensors) == KIND_TELEMETRY and retention.kind(chat) == KIND_DEFAULT
        assert in_chat in await timeline_ids(alice, chat)
        assert in_sensors not in await timeline_ids(alice, sensors)
        assert await retention.run_once() == 1
        assert services.store.get_event(in_sensors) is None and services.store.get_event(in_chat) is not None
        # bounded runs: a budget of 2 a run over two rooms of 3 expired messages each, every room gets its turn
        others = [expect(await alice.request("POST", V3 + "/createRoom", {}), 200)["room_id"] for _ in range(2)]
        for room in others:
            expect(await alice.request("PUT", f"{V3}/rooms/{q(room)}/state/m.room.retention/",
                                       {"max_lifetime": HOUR_MS}), 200)  # fmt: skip
        with sent_in_the_past(services, 2 * 3600):
            expired = {room: [await send(alice, room, {"msgtype": "m.text", "body": "old"}) for _ in range(3)]
                       for room in others}  # fmt: skip
        for room in others:
            await send(alice, room, {"msgtype": "m.text", "body": "now"})
        assert [await retention.run_once(2) for _ in range(4)] == [2, 2, 2, 0]
        assert all(services.store.get_event(e) is None for ids in expired.values() for e in ids)


@in_loop
async def test_the_retention_configuration_endpoint(tmp_path: Path) -> None:
    path = "/_matrix/client/unstable/org.matrix.msc1763/retention/configuration"
    config = RetentionConfig(enabled=True, default_max_lifetime_s=86_400, telemetry_max_lifetime_s=3600,
                             allowed_max_lifetime_s=7 * 86_400)  # fmt: skip
    async with running(tmp_path, config) as (session, url, _):
        alice = await user(session, url, "alice")
        assert expect(await alice.request("GET", path), 200) == {
            "policies": {"*": {"max_lifetime": 86_400_000}}, "limits": {"max_lifetime": {"max": 604_800_000}},
            "org.lowband.kinds": {"default": {"max_lifetime": 86_400_000}, "telemetry": {"max_lifetime": 3_600_000}}}
        expect(await alice.request("GET", path, token=False), 401)
    async with running(tmp_path / "off", RetentionConfig()) as (session, url, _):
        alice = await user(session, url, "alice")
        assert expect(await alice.request("GET", path), 200) == {"policies": {}, "limits": {}}


@pytest.mark.parametrize(("section", "message"), [
    ('enabled = "yes"', "retention.enabled has the wrong type"),
    ("interval_s = 0", "retention.interval_s must be a positive finite number"),
    ("purge_batch = 1.5", "retention.purge_batch has the wrong type"),
    ("default_max_lifetime_s = -1", "retention.default_max_lifetime_s must be a positive finite number"),
    ("telemetry_max_lifetime_s = true", "retention.telemetry_max_lifetime_s must be"),
    ("allowed_min_lifetime_s = 100\nallowed_max_lifetime_s = 10", "is above retention.allowed_max_lifetime_s"),
    ("max_lifetime = 5", "unknown config key retention.max_lifetime"),
])  # fmt: skip
def test_retention_config_errors(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "lowband.toml"
    path.write_text(f"[retention]\n{section}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_retention_config_is_read(tmp_path: Path) -> None:
    path = tmp_path / "lowband.toml"
    path.write_text("[retention]\nenabled = true\ninterval_s = 60\npurge_batch = 100\n"
                    "telemetry_max_lifetime_s = 86400\n")  # fmt: skip
    assert load_config(path).retention == RetentionConfig(enabled=True, interval_s=60, purge_batch=100,
                                                          telemetry_max_lifetime_s=86400)  # fmt: skip
    assert load_config(None).retention.enabled is False
