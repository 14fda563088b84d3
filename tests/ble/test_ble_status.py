"""BLE sensors in the health views (docs/status.md, docs/metrics.md): the summary, /metrics, the page's API, the CLI.

One in-process gateway whose BLE component is fed advertisements directly (the scanner stand-in of
test_component.py), a Matrix admin and a non-admin. Over HTTP: ``/_lowband/admin/v1/status`` shows each
sensor with its health, RSSI, readings and last reading; ``/metrics`` (admin token, parsed with
prometheus_client's own parser) counts readings per sensor and the replay and downgrade refused; those
refusals enter the recent-refusals ring as component ``ble``; the BLE readings endpoint answers from the
room history (401/403/404/400 bounds) and the live stream carries the sensor's new reading. After the
gateway stops, ``lowband status --data-dir`` (a subprocess) prints the BLE table from its last snapshot.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
from harness import LOWBAND, Client, until
from prometheus_client.parser import text_string_to_metric_families
from test_component import BTHOME, CELLAR, PORCH, ble_gateway
from test_decode import KEY, bthome_encrypted, bthome_plain, temp_hum

from lowband.gateway.api.http.status import STATUS_PATH
from lowband.gateway.ble.advert import make_advertisement
from lowband.gateway.ble.component import BleComponent
from lowband.gateway.ble.registry import BleRegistry, make_sensor
from lowband.gateway.config import BleConfig
from lowband.gateway.homeserver.accounts import hash_password

V3 = "/_matrix/client/v3"
ADMIN = "/_lowband/admin/v1"
ADMIN_PW = "root-secret-pw"


async def _login(session: aiohttp.ClientSession, base: str, user: str, password: str) -> Client:
    client = Client(session, base)
    status, body = await client.request("POST", V3 + "/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password},
        token=False)  # fmt: skip
    assert status == 200, body
    client.token = body["access_token"]
    return client


async def _scrape(session: aiohttp.ClientSession, base: str, token: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    async with session.get(base + "/metrics", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200, await response.text()
        text = await response.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}  # fmt: skip


async def _next_reading(response: aiohttp.ClientResponse, timeout: float = 10.0) -> dict[str, Any]:
    """The next ``reading`` event of a live stream (``status`` events are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            block: dict[str, str] = {}
            while (line := (await response.content.readline()).decode()) not in ("\n", ""):
                key, _, value = line.rstrip("\n").partition(": ")
                block[key] = value
            assert line, "the stream ended"
            if block.get("event") == "reading":
                return json.loads(block["data"])


def _sensor(summary: dict[str, Any], name: str) -> dict[str, Any]:
    assert summary["ble"] is not None, summary
    found = [s for s in summary["ble"]["sensors"] if s["name"] == name]
    assert len(found) == 1, summary["ble"]
    return found[0]


def test_ble_sensors_in_the_status_summary_metrics_page_api_and_cli(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = BleConfig(enabled=True)
        async with ble_gateway(tmp_path, settings) as (base, services, scanner, _gatt), \
                aiohttp.ClientSession() as session:  # fmt: skip
            services.store.create_user_sync("@root:localhost", hash_password(ADMIN_PW), True, int(time.time() * 1000))
            admin = await _login(session, base, "root", ADMIN_PW)
            alice = Client(session, base)
            await alice.register("alice")
            status, body = await admin.request("POST", V3 + "/createRoom",
                                               {"room_alias_name": "sensors", "preset": "public_chat"})  # fmt: skip
            assert status == 200, body
            room = body["room_id"]
            registry = BleRegistry(tmp_path / "data")
            registry.add(make_sensor("porch", PORCH, format="bthome", rooms=["#sensors:localhost"], interval_s=60))
            registry.add(make_sensor("cellar", CELLAR, format="bthome", key=KEY.hex(), rooms=[room], interval_s=600))
            component: BleComponent = services.components["ble"]
            await component.reload()
            await until(lambda: all(component.joined_rooms(n) == [room] for n in ("porch", "cellar")))

            # Before anything is heard: both sensors listed, never heard, no reading; the scanner runs.
            status, summary = await admin.request("GET", STATUS_PATH)
            assert status == 200, summary
            porch = _sensor(summary, "porch")
            assert (porch["health"], porch["last_seen_ms"], porch["last_reading"], porch["readings"]) == (
                "never", None, None, 0)  # fmt: skip
            assert porch["user_id"] == "@ble_porch:localhost" and porch["rooms"] == [room]
            assert (porch["address"], porch["format"], porch["reading_interval_s"]) == (PORCH, "bthome", 60.0)
            assert summary["ble"]["scanner"]["state"] == "running" and summary["ble"]["scanner"]["mode"] == "passive"
            assert summary["ble"]["unknown_devices"] == 0
            metrics = await _scrape(session, base, admin.token)
            assert metrics[("lowband_ble_readings_total", (("sensor", "porch"),))] == 0

            # A live stream is open when porch sends its first reading: the stream carries it at once.
            async with session.get(base + ADMIN + "/events", headers={"Authorization": f"Bearer {admin.token}"},
                                   timeout=aiohttp.ClientTimeout(total=30)) as stream:  # fmt: skip
                assert stream.status == 200
                scanner.send(PORCH, bthome_plain(b"\x00\x11" + temp_hum(2150, 4020)), rssi=-71)
                live = await _next_reading(stream)
            assert live["sensor"] == "porch" and "device" not in live and live["room_id"] == room
            assert (live["values"], live["units"]) == ({"temperature": 21.5, "humidity": 40.2},
                                                       {"temperature": "Cel", "humidity": "%RH"})  # fmt: skip

            # cellar: one encrypted reading, then a replay of it and a plaintext downgrade; an unknown device nearby.
            first = bthome_encrypted(CELLAR, temp_hum(1900, 6000), counter=700)
            scanner.send(CELLAR, first, rssi=-80)
            scanner.send(CELLAR, bthome_encrypted(CELLAR, temp_hum(1910, 6000), counter=701), rssi=-80)
            scanner.send(CELLAR, first, rssi=-80)
            scanner.send(CELLAR, bthome_plain(temp_hum(9999, 1)), rssi=-80)
            scanner.on_advertisement(make_advertisement("11:22:33:44:55:66", service_data={BTHOME: b"\x40\x02\x10\x08"},
                                                        rssi=-90))  # fmt: skip
            scanner.send(PORCH, bthome_plain(b"\x00\x12" + temp_hum(2160, 4000)), rssi=-70)
            await until(lambda: component.stats()["posted"] == 4 and component.stats()["adverts"] == 7)

            status, summary = await admin.request("GET", STATUS_PATH)
            assert status == 200, summary
            porch, cellar = _sensor(summary, "porch"), _sensor(summary, "cellar")
            assert porch["health"] == "ok" and porch["rssi_dbm"] == -70 and porch["readings"] == 2
            assert abs(porch["last_seen_ms"] - summary["generated_at_ms"]) < 10_000
            assert porch["last_reading"]["values"] == {"temperature": 21.6, "humidity": 40}
            assert porch["last_reading"]["units"] == {"temperature": "Cel", "humidity": "%RH"}
            assert cellar["health"] == "ok" and cellar["readings"] == 2
            assert cellar["refused"] == {"replay": 1, "downgrade": 1}
            assert cellar["last_reading"]["values"] == {"temperature": 19.1, "humidity": 60}
            assert porch["gatt"] is None and summary["ble"]["unknown_devices"] == 1
            ring = [(e["component"], e["source"], e["kind"], e["count"]) for e in summary["refusals"]]
            assert ("ble", "cellar", "replay", 1) in ring and ("ble", "cellar", "downgrade", 1) in ring
            status, again = await admin.request("GET", STATUS_PATH)  # nothing new refused: nothing new in the ring
            assert [e for e in again["refusals"] if e["component"] == "ble"] == [
                e for e in summary["refusals"] if e["component"] == "ble"]  # fmt: skip

            metrics = await _scrape(session, base, admin.token)
            assert metrics[("lowband_ble_readings_total", (("sensor", "porch"),))] == 2
            assert metrics[("lowband_ble_readings_total", (("sensor", "cellar"),))] == 2
            refused = "lowband_ble_refused_advertisements_total"
            assert metrics[(refused, (("kind", "replay"), ("sensor", "cellar")))] == 1
            assert metrics[(refused, (("kind", "downgrade"), ("sensor", "cellar")))] == 1
            assert metrics[("lowband_ble_sensor_rssi_dbm", (("sensor", "porch"),))] == -70
            assert metrics[("lowband_ble_unknown_devices", ())] == 1

            # The readings endpoint: admin only, bounded, from the room history.
            path = f"{ADMIN}/ble/porch/readings"
            status, body = await alice.request("GET", path, token=False)
            assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
            status, body = await alice.request("GET", path)
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
            status, body = await admin.request("GET", f"{ADMIN}/ble/nosuch/readings")
            assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
            for query in ("?limit=0", "?limit=2001", "?since_ms=-5", "?since_ms=yesterday"):
                status, body = await admin.request("GET", path + query)
                assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), query
            status, body = await admin.request("GET", path)
            assert status == 200, body
            assert (body["sensor"], body["user_id"], body["rooms"], body["truncated"]) == (
                "porch", "@ble_porch:localhost", [room], False)  # fmt: skip
            assert [r["values"] for r in body["readings"]] == [{"temperature": 21.5, "humidity": 40.2},
                                                               {"temperature": 21.6, "humidity": 40}]  # fmt: skip
            status, body = await admin.request("GET", path + "?limit=1")
            assert status == 200 and body["truncated"] is True
            assert [r["values"]["temperature"] for r in body["readings"]] == [21.6]
            # A device's name is not a sensor's (and the other way round).
            status, body = await admin.request("GET", f"{ADMIN}/devices/porch/readings")
            assert status == 404, body

    asyncio.run(scenario())

    # The gateway wrote its last snapshot as it stopped: the CLI shows the BLE table from it.
    done = subprocess.run([LOWBAND, "status", "--data-dir", str(tmp_path / "data")], check=False,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    title = next(line for line in lines if line.startswith("BLE sensors"))
    assert "BLE sensors (2: 2 ok)" in title and "scanner" in title and "1 unknown device in range" in title, title
    porch_row = next(line for line in lines if "│ porch" in line)
    for text in ("ok", "-70 dBm", "│ 2 ", "temperature 21.6 Cel, humidity 40 %RH"):
        assert text in porch_row, porch_row
    cellar_row = next(line for line in lines if "│ cellar" in line)
    assert "2 (replay 1, downgrade 1)" in cellar_row and "-80 dBm" in cellar_row, cellar_row
    assert any("│ ble" in line and "│ cellar" in line and "│ replay" in line for line in lines), done.stdout


class _StubComponent:
    """A BLE component's ``stats()`` as the running one gives it: a scanner that fell back to active, a GATT sensor."""

    settings = BleConfig(enabled=True, adapter="hci1")

    def __init__(self, now_s_ago: float) -> None:
        self.ago = now_s_ago

    def stats(self) -> dict[str, Any]:
        return {
            "adverts": 10, "duplicates": 4, "posted": 3, "post_failed": 0, "queue": 0, "queue_size": 4096,
            "queue_full": 7, "unknown_tracked": 2, "unknown_cap": 1024, "unknown_evicted": 0, "scanning": True,
            "refused": {"unknown_sensor": 2, "decrypt_failed": 1}, "refused_accounts": {},
            "scanner": {"state": "running", "mode": "passive", "mode_in_use": "active", "adapter": "hci1",
                        "mode_reason": "active: BlueZ has no AdvertisementMonitor API", "last_error": None,
                        "restarts": 1, "bad_adverts": 0},
            "sensors": {"desk": {"address": "C0:FF:EE:00:00:03", "format": "gatt", "present": False,
                                 "last_seen_s_ago": self.ago, "rssi": None, "readings": 3,
                                 "refused": {"decrypt_failed": 1}, "user_id": "@ble_desk:localhost", "rooms": ["!r:x"],
                                 "interval_s": 60.0, "last_reading": {"ts_ms": 1, "values": {"temperature": 22.25},
                                                                      "units": {"temperature": "Cel"}},
                                 "gatt": {"connected": False, "last_error": "TimeoutError: no answer", "attempts": 4,
                                          "readings": 3}}},
        }  # fmt: skip


def test_ble_section_of_a_stub_component_and_the_cli_table() -> None:
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from lowband.gateway.api.http import status
    from lowband.gateway.cli.status import render

    now_ms = int(time.time() * 1000)
    tracker = status.StatusTracker()
    for ago, health in ((30.0, "ok"), (100.0, "late"), (301.0, "silent")):  # 1.5 × and 5 × its 60 s interval
        svc = SimpleNamespace(components={"ble": _StubComponent(ago)})
        section = status._ble(svc, tracker, now_ms)  # type: ignore[arg-type]
        assert section is not None and section["sensors"][0]["health"] == health
    assert status._ble(SimpleNamespace(components={}), tracker, now_ms) is None  # type: ignore[arg-type]
    desk = section["sensors"][0]
    assert desk["gatt"] == {"connected": False, "last_error": "TimeoutError: no answer", "attempts": 4}
    assert desk["last_seen_ms"] == now_ms - 301_000 and desk["rssi_dbm"] is None
    assert section["scanner"]["mode_in_use"] == "active" and "AdvertisementMonitor" in section["scanner"]["mode_reason"]
    assert (section["dropped"], section["unknown_devices"]) == (7, 2)
    # Counted once, however many summaries saw it; the refusal of no configured sensor as source "other".
    assert sorted((e["source"], e["kind"], e["count"]) for e in tracker.recent_refusals()) == [
        ("desk", "decrypt_failed", 1), ("other", "unknown_sensor", 2)]  # fmt: skip

    def shown(ble: Any) -> str:
        out = io.StringIO()
        summary = {"server_name": "gw", "generated_at_ms": now_ms, "devices": [], "ble": ble}
        Console(file=out, width=200, highlight=False).print(render(summary, now_ms / 1000, from_file=False))
        return out.getvalue()

    text = shown(section)
    assert "scanner running, active on hci1, 2 unknown devices in range, 7 dropped" in text, text
    assert "desk (GATT, not connected)" in text and "silent" in text and "temperature 22.25 Cel" in text, text
    assert "1 (decrypt_failed 1)" in text, text
    # A hostile or broken snapshot: question marks, no escape sequences, no traceback.
    hostile = {"scanner": "no", "sensors": [{"name": "\x1b[31mevil", "health": 5, "rssi_dbm": "loud",
                                             "refused": {"x": "y"}, "last_reading": {"values": {"t": "NaN"}},
                                             "gatt": "yes"}, "junk"]}  # fmt: skip
    text = shown(hostile)
    assert "\x1b" not in text and "?[31mevil" in text, text
    assert "no BLE sensor configured" in shown({"sensors": []})
