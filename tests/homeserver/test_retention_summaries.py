"""Hourly telemetry summaries before a retention purge (``[retention] telemetry_summaries``, docs/retention.md).

A real gateway in the test's loop; a telemetry room (a device account the link would own, and the MQTT bridge's
account, are joined). Readings are the compact codec's expansion of kind-1 messages (what a link device's uplink
becomes) and MQTT-shaped contents, stored with their own ``origin_server_ts`` hours back, as the link and the bridge
store them. The retention clock is fixed, so hour boundaries are deterministic. Checked: one summary per (sender,
hour) with exact figures, an hour still open is neither summarised nor purged, a re-run and a crash between the
summaries and the purge make no second summary, the originals are gone from the store, and the summaries are read
through /messages.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from harness import expect, in_loop
from test_retention import V3, running, send, user

from lowband.codecs import compact
from lowband.codecs.context import Channel, Context
from lowband.gateway.config import ConfigError, RetentionConfig, load_config
from lowband.gateway.homeserver.retention_job import RETENTION, Retention
from lowband.gateway.homeserver.retention_summary import (
    HOUR_MS,
    SUMMARY_KEY,
    hour_floor,
    plan_summaries,
    reading_values,
    summary_content,
)
from lowband.gateway.homeserver.rooms.sending import SendRequest

DEVICE = "@dev.kitchen:localhost"
BRIDGE = "@mqtt.garden:localhost"
CTX = Context(version=1, rooms=("!unused:localhost",), senders=(DEVICE,), event_types=(), keys=(),
              channels=(Channel("temperature", "Cel", -1), Channel("humidity", "%RH", 0)))  # fmt: skip


def q(value: str) -> str:
    return quote(value, safe="")


async def telemetry_room(services: Any, alice: Any, accounts: tuple[tuple[str, str], ...]) -> str:
    """A room alice makes, with each (account, owner) of ``accounts`` created as an edge's account and joined."""
    room = expect(await alice.request("POST", V3 + "/createRoom", {}), 200)["room_id"]
    for account, owner in accounts:
        await services.store.create_user(account, "", False, 0, owner=owner)
        expect(await alice.request("POST", f"{V3}/rooms/{q(room)}/invite", {"user_id": account}), 200)
        await services.rooms.set_membership(account, room, account, "join")
    return str(room)


def device_reading(temperature: int, humidity: int, ts: int) -> dict[str, Any]:
    """The content a link device's kind-1 compact message expands to (taken at ``ts``)."""
    event = compact.expand(compact.CompactForm(kind=compact.KIND_TELEMETRY, values=[(0, temperature), (1, humidity)]),
                           CTX, ts)  # fmt: skip
    assert event["origin_server_ts"] == ts
    return dict(event["content"])


def mqtt_reading(mantissa: int, scale: int) -> dict[str, Any]:
    """The content the MQTT bridge makes of a zigbee2mqtt payload (gateway/bridges/mqtt/payload.py's shape)."""
    record: dict[str, Any] = {"n": "temperature", "u": "Cel", "v": mantissa}
    if scale:
        record["scale_"] = scale
    return {"msgtype": "m.notice", "body": f"temperature {compact.format_reading(mantissa, scale)} Cel",
            "org.lowband.senml": [record], "org.lowband.mqtt": {"topic": "zigbee2mqtt/garden"}}  # fmt: skip


def summaries_in(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in chunk if SUMMARY_KEY in e.get("content", {})]


@in_loop
async def test_expired_readings_become_hourly_summaries_once_then_are_purged(tmp_path: Path) -> None:
    config = RetentionConfig(enabled=True, telemetry_summaries=True, telemetry_max_lifetime_s=3600)
    async with running(tmp_path, config) as (session, url, services):
        alice = await user(session, url, "alice")
        room = await telemetry_room(services, alice, ((DEVICE, "device:kitchen"), (BRIDGE, "mqtt")))
        retention: Retention = services.components[RETENTION]
        h0 = hour_floor(int(time.time() * 1000)) - 4 * HOUR_MS
        now = h0 + 3 * HOUR_MS + 20 * 60_000  # cutoff (1 h): h0 + 2 h 20 min
        retention.now_ms = lambda: now

        # hour h0: 120 device readings every 30 s (temperature 20.0 … 31.9 Cel, humidity 40 … 45 %RH)
        device_h0 = [(200 + i, 40 + i % 6, h0 + 15_000 + 30_000 * i) for i in range(120)]
        requests = [SendRequest(DEVICE, "m.room.message", device_reading(t, h, ts), origin_server_ts=ts)
                    for t, h, ts in device_h0]  # fmt: skip
        # hour h0 + 1: three device readings; hour h0 + 2: one expired (hour still open) and one not expired
        device_h1 = [(-15, 90, h0 + HOUR_MS + 60_000), (5, 91, h0 + HOUR_MS + 120_000), (0, 92, h0 + 2 * HOUR_MS - 1)]
        open_hour = [(100, 50, h0 + 2 * HOUR_MS + 10 * 60_000), (101, 51, h0 + 2 * HOUR_MS + 40 * 60_000)]
        requests += [SendRequest(DEVICE, "m.room.message", device_reading(t, h, ts), origin_server_ts=ts)
                     for t, h, ts in device_h1 + open_hour]  # fmt: skip
        # the bridge in hour h0, mixed scales: 21.5, 22, 20.25 Cel
        bridge_h0 = [((215, -1), h0 + 1000), ((22, 0), h0 + 2000), ((2025, -2), h0 + HOUR_MS - 1000)]
        requests += [SendRequest(BRIDGE, "m.room.message", mqtt_reading(m, s), origin_server_ts=ts)
                     for (m, s), ts in bridge_h0]  # fmt: skip
        # not readings: a text by alice, a device notice without SenML
        requests += [SendRequest("@alice:localhost", "m.room.message", {"msgtype": "m.text", "body": "hi"},
                                 origin_server_ts=h0 + 5000),
                     SendRequest(DEVICE, "m.room.message", {"msgtype": "m.notice", "body": "rebooted"},
                                 origin_server_ts=h0 + 6000)]  # fmt: skip
        sent = await services.rooms.send_batch(room, requests)
        ids = [s.event.event_id for s in sent if not isinstance(s, Exception)]
        assert len(ids) == len(requests)
        await send(alice, room, {"msgtype": "m.text", "body": "now"})  # no old event is a forward extremity

        # a crash after the summaries were sent, before the purge: the next runs make no second summary
        assert await retention.summarise(room, retention.cutoff(room) or 0, 1000) == h0 + 2 * HOUR_MS
        assert retention.summaries_sent == 3
        purged = await retention.run_once()
        assert await retention.run_once() == 0
        assert purged == 120 + 3 + 3 + 2  # the readings of h0 and h0 + 1, the text and the notice
        open_ids = ids[123:125]
        assert all(services.store.get_event(e) is None for e in ids[:123] + ids[125:])
        assert all(services.store.get_event(e) is not None for e in open_ids)  # its hour is not over

        chunk = expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=100"), 200)["chunk"]
        found = summaries_in(chunk)
        assert len(found) == 3, [e["content"]["body"] for e in found]
        by_key = {(e["sender"], e["content"][SUMMARY_KEY]["start"]): e for e in found}
        assert set(by_key) == {(DEVICE, h0), (BRIDGE, h0), (DEVICE, h0 + HOUR_MS)}
        device = by_key[(DEVICE, h0)]
        assert device["type"] == "m.room.message" and device["content"]["msgtype"] == "m.notice"
        assert device["content"][SUMMARY_KEY] == {
            "v": 1, "start": h0, "end": h0 + HOUR_MS, "count": 120,
            "first_ts": h0 + 15_000, "last_ts": h0 + 15_000 + 30_000 * 119,
            "channels": [
                {"n": "humidity", "u": "%RH", "count": 120, "min": 40, "max": 45, "sum": 20 * (40 + 41 + 42 + 43 + 44 + 45),
                 "mean": 425},
                {"n": "temperature", "u": "Cel", "count": 120, "min": 200, "max": 319, "sum": sum(range(200, 320)),
                 "mean": 2595, "scale_": -1},
            ]}  # fmt: skip
        assert device["content"]["body"].startswith("Summary of 120 readings, ")
        assert "temperature min 20.0 max 31.9 mean 25.95 Cel (120)" in device["content"]["body"]
        assert "humidity min 40 max 45 mean 42.5 %RH (120)" in device["content"]["body"]
        bridge = by_key[(BRIDGE, h0)]["content"][SUMMARY_KEY]
        # 21.5, 22, 20.25 at the finest scale (-2): 2150, 2200, 2025; mean 6375 / 3 = 2125.0 → 21250 at -3
        assert bridge["channels"] == [{"n": "temperature", "u": "Cel", "count": 3, "min": 2025, "max": 2200,
                                       "sum": 6375, "mean": 21250, "scale_": -2}]  # fmt: skip
        h1 = by_key[(DEVICE, h0 + HOUR_MS)]["content"][SUMMARY_KEY]
        assert h1["count"] == 3 and h1["channels"][1] == {"n": "temperature", "u": "Cel", "count": 3, "min": -15,
                                                           "max": 5, "sum": -10, "mean": -33, "scale_": -1}  # fmt: skip
        # no expired reading is served: the one of the open hour past the cutoff is hidden, the later one is not
        assert {e["event_id"] for e in chunk} & set(ids) == {open_ids[1]}

        # the hour closes: its two readings are summarised and purged; still one summary per hour
        now += HOUR_MS
        assert await retention.run_once() == 2
        assert await retention.run_once() == 0
        chunk = expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=100"), 200)["chunk"]
        starts = sorted((e["sender"], e["content"][SUMMARY_KEY]["start"]) for e in summaries_in(chunk))
        assert starts == sorted([(DEVICE, h0), (BRIDGE, h0), (DEVICE, h0 + HOUR_MS), (DEVICE, h0 + 2 * HOUR_MS)])
        assert all(services.store.get_event(e) is None for e in open_ids)


@in_loop
async def test_without_the_switch_readings_are_purged_with_no_summary(tmp_path: Path) -> None:
    async with running(tmp_path, RetentionConfig(enabled=True, telemetry_max_lifetime_s=3600)) as (session, url,
                                                                                                   services):  # fmt: skip
        alice = await user(session, url, "alice")
        room = await telemetry_room(services, alice, ((DEVICE, "device:kitchen"),))
        h0 = hour_floor(int(time.time() * 1000)) - 4 * HOUR_MS
        sent = await services.rooms.send_batch(room, [
            SendRequest(DEVICE, "m.room.message", device_reading(200 + i, 40, h0 + 30_000 * i), origin_server_ts=h0 + 30_000 * i)
            for i in range(10)])  # fmt: skip
        await send(alice, room, {"msgtype": "m.text", "body": "now"})
        retention: Retention = services.components[RETENTION]
        assert await retention.run_once() == 10 and retention.summaries_sent == 0
        chunk = expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=100"), 200)["chunk"]
        assert summaries_in(chunk) == [] and not {e["event_id"] for e in chunk} & {
            s.event.event_id for s in sent if not isinstance(s, Exception)
        }


@in_loop
async def test_an_hour_larger_than_the_budget_is_summarised_whole_once(tmp_path: Path) -> None:
    config = RetentionConfig(enabled=True, telemetry_summaries=True, telemetry_max_lifetime_s=3600)
    async with running(tmp_path, config) as (session, url, services):
        alice = await user(session, url, "alice")
        room = await telemetry_room(services, alice, ((DEVICE, "device:kitchen"),))
        h0 = hour_floor(int(time.time() * 1000)) - 4 * HOUR_MS
        # 1,500 readings in hour h0 (more than one scan page and than the run's budget), 10 in h0 + 1 h, 3 in h0 + 2 h
        stamps = [h0 + 2400 * i for i in range(1500)] + [h0 + HOUR_MS + 1000 * i for i in range(10)]
        stamps += [h0 + 2 * HOUR_MS + 1000 * i for i in range(3)]
        for start in range(0, len(stamps), 500):
            await services.rooms.send_batch(room, [
                SendRequest(DEVICE, "m.room.message", device_reading(i % 100, 50, ts), origin_server_ts=ts)
                for i, ts in enumerate(stamps[start:start + 500], start)])  # fmt: skip
        await send(alice, room, {"msgtype": "m.text", "body": "now"})
        retention: Retention = services.components[RETENTION]
        retention.now_ms = lambda: h0 + 3 * HOUR_MS + 20 * 60_000
        assert [await retention.run_once(600) for _ in range(4)] == [600, 600, 310, 0]  # h0 + 2 h is still open
        chunk = expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=100"), 200)["chunk"]
        counts = sorted((e["content"][SUMMARY_KEY]["start"], e["content"][SUMMARY_KEY]["count"])
                        for e in summaries_in(chunk))  # fmt: skip
        assert counts == [(h0, 1500), (h0 + HOUR_MS, 10)] and retention.summaries_refused == 0
        first = next(e for e in summaries_in(chunk) if e["content"][SUMMARY_KEY]["start"] == h0)
        temperature = first["content"][SUMMARY_KEY]["channels"][1]
        assert temperature == {"n": "temperature", "u": "Cel", "count": 1500, "min": 0, "max": 99,
                               "sum": 15 * sum(range(100)), "mean": 495, "scale_": -1}  # fmt: skip


def test_plan_and_content_are_exact_and_skip_what_is_not_a_reading() -> None:
    h = 1_764_892_800_000  # 2025-12-05 00:00 UTC
    events: list[tuple[str, int, Any]] = [
        ("@a:x", h + 1, {"msgtype": "m.notice", "org.lowband.senml": [{"n": "t", "v": 7}]}),
        ("@a:x", h + 2, {"msgtype": "m.notice", "org.lowband.senml": [{"n": "t", "v": 8, "scale_": 1}]}),
        ("@a:x", h + 3, {"msgtype": "m.notice", "org.lowband.senml": [{"n": "t", "vs": "on"}]}),  # no number
        ("@a:x", h + 4, {"msgtype": "m.notice", "org.lowband.senml": [{"n": "t", "v": 1.5}]}),  # a float
        ("@a:x", h + 5, {"msgtype": "m.notice", "org.lowband.senml": [{"n": "t", "v": 1, "scale_": 99}]}),
        ("@a:x", h + 6, {"msgtype": "m.text", "org.lowband.senml": [{"n": "t", "v": 1}]}),
        ("@a:x", h + 7, {"msgtype": "m.notice", "org.lowband.senml": "nope"}),
        ("@a:x", h + HOUR_MS, {"msgtype": "m.notice", "org.lowband.senml": [{"n": "t", "v": 1}]}),  # not before
    ]
    plan = plan_summaries(events, h + HOUR_MS)
    assert len(plan) == 1 and plan[0].readings == 2 and plan[0].txn_id("!r:x") == f"!r:x|{h}"
    content = summary_content(plan[0])
    assert content == {"msgtype": "m.notice",
                       "body": "Summary of 2 readings, 2025-12-05 00:00–01:00 UTC: t min 7 max 80 mean 43.5 (2)",
                       SUMMARY_KEY: {"v": 1, "start": h, "end": h + HOUR_MS, "count": 2, "first_ts": h + 1,
                                     "last_ts": h + 2, "channels": [{"n": "t", "count": 2, "min": 7, "max": 80,
                                                                     "sum": 87, "mean": 435}]}}  # fmt: skip
    assert reading_values(None) is None and reading_values({"msgtype": "m.notice"}) is None


def test_telemetry_summaries_config(tmp_path: Path) -> None:
    path = tmp_path / "lowband.toml"
    path.write_text("[retention]\nenabled = true\ntelemetry_summaries = true\n")
    assert load_config(path).retention.telemetry_summaries is True
    assert load_config(None).retention.telemetry_summaries is False
    path.write_text('[retention]\ntelemetry_summaries = "yes"\n')
    with pytest.raises(ConfigError, match="retention.telemetry_summaries has the wrong type"):
        load_config(path)
