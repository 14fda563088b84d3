"""The health summary at ``GET /_lowband/admin/v1/status`` (gateway/api/http/status.py, docs/status.md).

A gateway in the test's loop, a provisioned device talking over a pty line (the scripted CPython peer), a Matrix
admin and a non-admin: the endpoint refuses missing, unknown and non-admin tokens like ``/metrics``; for the admin
it shows the device with its health and last reading, and refused frames on its line enter the recent-refusals ring
once (a summary adds only what grew since the one before). The sans-I/O parts (health thresholds, the ring, the
interval estimate) are checked in memory.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from harness import Client, gateway_in_loop, provision_kitchen, until

from lowband.gateway.api.http.status import (
    RING_SIZE,
    STATUS_PATH,
    StatusTracker,
    device_health,
)
from lowband.gateway.homeserver.accounts import hash_password

V3 = "/_matrix/client/v3"
ADMIN_PW = "root-secret-pw"


def _add_admin(services: Any) -> None:
    services.store.create_user_sync("@root:localhost", hash_password(ADMIN_PW), True, int(time.time() * 1000))


async def _admin(session: aiohttp.ClientSession, url: str) -> Client:
    client = Client(session, url)
    status, body = await client.request("POST", V3 + "/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "root"}, "password": ADMIN_PW},
        token=False)  # fmt: skip
    assert status == 200, body
    client.token = body["access_token"]
    return client


def test_health_thresholds() -> None:
    now = 1_000_000_000
    assert device_health(None, now, None) == "never"
    assert device_health(now - 119_000, now, None) == "ok"  # 2 min without a known interval
    assert device_health(now - 121_000, now, None) == "late"
    assert device_health(now - 601_000, now, None) == "silent"
    assert device_health(now - 14_000, now, 10.0) == "ok"  # 1.5 × and 5 × a 10 s interval
    assert device_health(now - 16_000, now, 10.0) == "late"
    assert device_health(now - 51_000, now, 10.0) == "silent"


def test_refusal_ring_adds_what_grew_and_stays_bounded() -> None:
    tracker = StatusTracker()
    tracker.note_refusals("link", [("serial:/dev/x", "bad_tag", 3)], 1000)
    tracker.note_refusals("link", [("serial:/dev/x", "bad_tag", 3)], 2000)  # unchanged: nothing new
    tracker.note_refusals("link", [("serial:/dev/x", "bad_tag", 5), ("serial:/dev/x", "undecodable", 1)], 3000)
    tracker.note_refusals("mqtt", [("home", "empty", 2)], 4000)
    assert [(e["ts_ms"], e["component"], e["kind"], e["count"]) for e in tracker.recent_refusals()] == [
        (4000, "mqtt", "empty", 2), (3000, "link", "undecodable", 1), (3000, "link", "bad_tag", 2),
        (1000, "link", "bad_tag", 3)]  # fmt: skip
    tracker.note_refusals("link", [("serial:/dev/x", "bad_tag", 1)], 5000)  # the runtime restarted: from zero again
    assert tracker.recent_refusals()[0]["count"] == 1
    for i in range(3 * RING_SIZE):
        tracker.note_refusals("link", [("serial:/dev/y", "bad_tag", i + 1)], 10_000 + i)
    ring = tracker.recent_refusals()
    assert len(ring) == RING_SIZE and ring[0]["ts_ms"] == 10_000 + 3 * RING_SIZE - 1


def test_reading_interval_is_estimated_from_readings_seen() -> None:
    tracker = StatusTracker()
    assert tracker.reading_interval("a", 0) is None
    assert tracker.reading_interval("a", 60_000) is None
    assert tracker.reading_interval("a", 60_000) is None  # the same reading seen twice counts once
    assert tracker.reading_interval("a", 120_000) == 60.0
    assert tracker.reading_interval("a", 121_000) == 60.0  # median of 60, 60 and 1 s
    assert tracker.reading_interval("a", 122_000) == 30.5  # median of 60, 60, 1 and 1 s
    burst = StatusTracker()
    for ts in (0, 100, 200, 300):
        interval = burst.reading_interval("b", ts)
    assert interval == 10.0  # a burst is not the device's pace: the floor


def test_status_endpoint_shows_the_device_its_reading_and_refusals(tmp_path: Path) -> None:
    from lowband.sim.device_core import rto_for_bps
    from lowband.sim.device_peer import ScriptedDevice
    from lowband.sim.pty_link import PtyLink

    async def run() -> None:
        got: dict[str, Any] = {}

        def ready(services: Any) -> None:
            _add_admin(services)
            got["services"] = services

        with PtyLink(bps=115_200, seed=7) as line:
            async with gateway_in_loop(tmp_path, on_ready=ready) as url, aiohttp.ClientSession() as session:
                alice = Client(session, url)
                await alice.register("alice")
                status, body = await alice.request("GET", STATUS_PATH, token=False)
                assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
                status, body = await alice.request("GET", STATUS_PATH, headers={"Authorization": "Bearer nope"},
                                                   token=False)  # fmt: skip
                assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
                status, body = await alice.request("GET", STATUS_PATH)
                assert (status, body["errcode"]) == (403, "M_FORBIDDEN")

                admin = await _admin(session, url)
                status, body = await admin.request(
                    "POST", V3 + "/createRoom", {"room_alias_name": "sensors", "preset": "public_chat"}
                )
                assert status == 200, body
                room_id = body["room_id"]
                status, summary = await admin.request("GET", STATUS_PATH)
                assert status == 200, summary
                assert summary["server_name"] == "localhost" and summary["devices"] == []
                assert summary["mqtt"] is None and summary["refusals"] == []
                assert summary["generated_at_ms"] >= summary["started_at_ms"]
                assert summary["process"]["rss_bytes"] > 10_000_000 and summary["process"]["open_fds"] > 3

                config = json.loads(provision_kitchen(tmp_path / "data", line.path_a, 115_200).read_text())
                services = got["services"]
                await until(lambda: "links" in services.components and services.components["links"].links, 20)
                status, summary = await admin.request("GET", STATUS_PATH)
                (kitchen,) = summary["devices"]
                assert (kitchen["name"], kitchen["user_id"], kitchen["health"]) == ("kitchen", "@dev.kitchen:localhost",
                                                                                    "never")  # fmt: skip
                assert kitchen["rooms"] == [room_id] and kitchen["link"].startswith(f"serial:{line.path_a}")

                device = ScriptedDevice(config, line.path_b, rto=rto_for_bps(115_200))
                await device.start()
                try:
                    device.publish_reading([(0, 215), (1, 40), (2, 370)])
                    seen: dict[str, Any] = {}

                    async def has_reading() -> bool:
                        _, answer = await admin.request("GET", STATUS_PATH)
                        seen.update(answer["devices"][0])
                        return seen.get("last_reading") is not None

                    deadline = time.monotonic() + 20
                    while not await has_reading():
                        assert time.monotonic() < deadline, f"no reading in the summary: {seen}"
                        await asyncio.sleep(0.1)
                finally:
                    await device.stop()
                assert seen["health"] == "ok" and abs(seen["last_seen_ms"] - time.time() * 1000) < 20_000
                assert seen["last_reading"]["values"] == {"temperature": 21.5, "humidity": 40, "battery": 3.7}
                assert seen["battery"] == {"value": 3.7, "unit": "V"}
                assert seen["frames_in"] >= 2 and seen["frames_out"] >= 2  # handshake and reading, both ways

                runtime = services.components["links"]
                spec = kitchen["link"]
                runtime.links[spec].transport.on_bytes(b"\x13\x37\x00" * 20)  # not COBS: undecodable
                await until(lambda: sum(runtime.refusal_counts()[spec].values()) >= 1, 10)
                _, summary = await admin.request("GET", STATUS_PATH)
                refusals = [e for e in summary["refusals"] if e["source"] == spec]
                assert refusals and refusals[0] == summary["refusals"][0]
                assert sum(e["count"] for e in refusals) == sum(runtime.refusal_counts()[spec].values())
                assert abs(refusals[0]["ts_ms"] - time.time() * 1000) < 10_000
                _, again = await admin.request("GET", STATUS_PATH)
                assert again["refusals"] == summary["refusals"]  # nothing new refused: nothing added

    asyncio.run(asyncio.wait_for(run(), 60))


def test_summary_from_duck_typed_components_and_a_broken_part() -> None:
    """The summary reads the link runtime and the MQTT bridge by duck typing; deliveries the room refused become
    refusals of their own beside the frames refused on the line; a part that raises is named in ``errors``."""
    from types import SimpleNamespace

    from lowband.gateway.api.http.status import build_status

    now_ms = int(time.time() * 1000)
    record = SimpleNamespace(name="kitchen", user_id="@dev.kitchen:gw", rooms=["!r:gw"], link="serial:/dev/x?bps=100",
                             address=3, context={})  # fmt: skip
    runtime = SimpleNamespace(
        devices={"kitchen": record},
        device_stats=lambda: {"kitchen": {"link": record.link, "address": 3, "frames_in": 4, "last_seen_ms": now_ms - 200_000,
                                          "extra_figure": 1}},
        refusal_counts=lambda: {record.link: {"bad_tag": 2, "undecodable": 1}},
        stats={"readings": 5, "refused_bad_tag": 2, "refused_undecodable": 1, "refused_room_event": 1},
    )  # fmt: skip
    connected = asyncio.Event()
    bridge = SimpleNamespace(
        stats=lambda: {"home": {"received": 4, "posted": 2, "refused.empty": 1, "refused.invalid_utf8": 1}},
        sessions={"local": SimpleNamespace(link=SimpleNamespace(config=SimpleNamespace(host="127.0.0.1", port=1883),
                                                                connected=connected))},
        inbound={"home": SimpleNamespace(queue=[object(), object()])},
    )  # fmt: skip
    svc: Any = SimpleNamespace(config=SimpleNamespace(server_name="gw"), components={"links": runtime, "mqtt": bridge})
    summary = build_status(svc)
    json.dumps(summary, allow_nan=False)  # JSON-ready
    (kitchen,) = summary["devices"]
    assert kitchen["health"] == "late" and kitchen["frames_in"] == 4 and kitchen["extra_figure"] == 1
    assert kitchen["rssi_dbm"] is None and kitchen["rooms"] == ["!r:gw"]  # unknown: None; rooms from the record
    assert summary["mqtt"] == {
        "brokers": [{"name": "local", "broker": "127.0.0.1:1883", "connected": False}],
        "mappings": [{"name": "home", "received": 4, "posted": 2, "published": 0, "refused": 2, "dropped": 0, "queued": 2}],
    }  # fmt: skip
    seen = {(e["component"], e["source"], e["kind"], e["count"]) for e in summary["refusals"]}
    assert seen == {("link", record.link, "bad_tag", 2), ("link", record.link, "undecodable", 1),
                    ("link", "delivery", "room_event", 1), ("mqtt", "home", "empty", 1),
                    ("mqtt", "home", "invalid_utf8", 1)}  # fmt: skip
    assert "errors" not in summary and summary["federation"] == [] and summary["appservices"] == []

    runtime.stats["refused_bad_tag"] = 5
    runtime.refusal_counts = lambda: {record.link: {"bad_tag": 5, "undecodable": 1}}
    connected.set()
    again = build_status(svc)
    assert again["refusals"][0] | {"ts_ms": 0} == {"ts_ms": 0, "component": "link", "source": record.link,
                                                  "kind": "bad_tag", "count": 3}  # fmt: skip
    assert len(again["refusals"]) == 6 and again["mqtt"]["brokers"][0]["connected"] is True

    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    runtime.device_stats = broken
    partial = build_status(svc)
    assert partial["errors"] == ["devices"] and partial["devices"] == [] and partial["mqtt"]["mappings"]
