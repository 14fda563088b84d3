"""The status page's HTTP side (gateway/api/http/status_page.py, docs/status.md "Status page").

In memory: a telemetry event's content becomes a reading; the live hub drops a stream that does not read,
bounds the number of streams and ends them all when the gateway stops. Against a gateway in the test's loop
with the scripted CPython device on an emulated 19200 bps serial line: the page's files (no CDN, a strict
CSP), the readings endpoint (admin only, its bounds, 400 M_INVALID_PARAM for a malformed ``since_ms``), the
event stream (a ``status`` event at once, a ``reading`` event as the device sends), and a gateway stopping
promptly with a stream still open.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from harness import Client, gateway_in_loop, provision_kitchen

from lowband.gateway.api.http import status_page
from lowband.gateway.api.http.status_page import LiveHub, reading_of
from lowband.gateway.homeserver.accounts import hash_password
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.store.interfaces import DeviceRecord
from lowband.sim.device_core import rto_for_bps
from lowband.sim.device_peer import ScriptedDevice
from lowband.sim.pty_link import PtyLink

V3 = "/_matrix/client/v3"
ADMIN_API = "/_lowband/admin/v1"
ROOT, ROOT_PW = "@root:localhost", "root-secret-pw"
KITCHEN = "@dev.kitchen:localhost"


# ------------------------------------------------------------------ in memory


def test_reading_of_scales_senml_values_and_leaves_out_what_is_not_a_number() -> None:
    content = {"msgtype": "m.notice", "body": "…", "org.lowband.senml": [
        {"n": "temperature", "bt": 1700000000, "u": "Cel", "v": 215, "scale_": -1},
        {"n": "humidity", "u": "%RH", "v": 40},
        {"n": "battery", "u": "V", "v": 370, "scale_": -2},
        {"n": "door", "vb": True}, {"n": "flag", "v": True}, {"v": 3}, "junk",
    ]}  # fmt: skip
    assert reading_of(content, 1234) == {
        "ts_ms": 1234, "values": {"temperature": 21.5, "humidity": 40, "battery": 3.7},
        "units": {"temperature": "Cel", "humidity": "%RH", "battery": "V"},
    }  # fmt: skip
    assert reading_of({"body": "hello"}, 1) is None
    assert reading_of({"org.lowband.senml": "not a list"}, 1) is None
    assert reading_of({"org.lowband.senml": [{"n": "x", "vs": "text"}]}, 1) is None
    odd = [{"n": "bad", "v": 5, "scale_": "x"}, {"n": "huge", "v": 5, "scale_": 400}, {"n": "f", "v": 2.5, "scale_": 1}]
    assert reading_of({"org.lowband.senml": odd}, 1) == {"ts_ms": 1, "values": {"f": 25.0}, "units": {}}


def _record(name: str = "kitchen") -> DeviceRecord:
    return DeviceRecord(name=name, address=1, user_id=f"@dev.{name}:localhost", static_public=b"", rooms=["!r:localhost"],
                        context={}, link="serial:/dev/null?bps=100", created_ts=0, key_ts=0, revoked=False)  # fmt: skip


def _hub() -> LiveHub:
    store = SimpleNamespace(link_devices=SimpleNamespace(devices=lambda: [_record()]))
    return LiveHub(SimpleNamespace(store=store))  # type: ignore[arg-type]


def _sent(sender: str, value: int, room_id: str = "!r:localhost") -> Any:
    content = {"msgtype": "m.notice", "body": "t", "org.lowband.senml": [{"n": "temperature", "u": "Cel", "v": value}]}
    event = SimpleNamespace(type="m.room.message", content=content, sender=sender, room_id=room_id,
                            origin_server_ts=1000 + value, event_id=f"$e{value}")  # fmt: skip
    return SimpleNamespace(event=event, stream=value)


def test_live_hub_feeds_readings_drops_a_stream_that_does_not_read_and_bounds_the_streams() -> None:
    async def run() -> None:
        hub = _hub()
        hub.on_event(_sent("@dev.kitchen:localhost", 1))  # no stream open: nothing is kept
        reader, idle = hub.open(), hub.open()
        hub.on_event(_sent("@alice:localhost", 2))  # not a device
        hub.on_event(_sent("@dev.kitchen:localhost", 3, room_id="!other:localhost"))  # not one of its rooms
        hub.on_event(_sent("@dev.kitchen:localhost", 4))
        kind, data = reader.queue.get_nowait()
        assert (kind, data["device"], data["values"], data["ts_ms"]) == ("reading", "kitchen", {"temperature": 4}, 1004)
        assert reader.queue.empty()
        idle.queue.get_nowait()
        for i in range(status_page.QUEUE_EVENTS + 1):  # the reader keeps up, the idle one does not
            hub.on_event(_sent("@dev.kitchen:localhost", 10 + i))
            reader.queue.get_nowait()
        assert idle.dropped and not reader.dropped
        items = [idle.queue.get_nowait() for _ in range(idle.queue.qsize())]
        assert items[-1] is None  # the end marker, so its handler wakes and ends the response
        hub.close_stream(idle)
        more = [hub.open() for _ in range(status_page.MAX_STREAMS - 1)]
        with pytest.raises(MatrixError) as refused:
            hub.open()
        assert (refused.value.status, refused.value.errcode) == (429, "M_LIMIT_EXCEEDED")
        hub.close()
        assert all(s.queue.get_nowait() is None for s in [reader, *more])
        with pytest.raises(MatrixError) as stopping:
            hub.open()
        assert stopping.value.status == 503

    asyncio.run(run())


# ------------------------------------------------------------------ against a gateway


def _add_root(services: Any) -> None:
    services.store.create_user_sync(ROOT, hash_password(ROOT_PW), True, int(time.time() * 1000))


async def _login(session: aiohttp.ClientSession, url: str) -> Client:
    client = Client(session, url)
    status, body = await client.request("POST", V3 + "/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "root"}, "password": ROOT_PW},
        token=False)  # fmt: skip
    assert status == 200, body
    client.token = body["access_token"]
    return client


class EventStream:
    """``GET /_lowband/admin/v1/events`` read as a browser's fetch() does: server-sent events, parsed."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def next(self, kind: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next event of ``kind`` (others are kept in ``seen``); TimeoutError after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while True:
                block: dict[str, str] = {}
                while (line := (await self.response.content.readline()).decode()) not in ("\n", ""):
                    key, _, value = line.rstrip("\n").partition(": ")
                    block[key] = value
                assert line, "the stream ended"
                self.seen.append((block["event"], json.loads(block["data"])))
                if block["event"] == kind:
                    return self.seen[-1][1]


async def _readings(client: Client, query: str = "", name: str = "kitchen") -> tuple[int, Any]:
    return await client.request("GET", f"{ADMIN_API}/devices/{name}/readings{query}")


def test_page_readings_and_events_against_a_gateway_with_a_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_page, "STATUS_INTERVAL_S", 0.5)
    bps = 19200

    async def scenario(link: PtyLink) -> float:
        async with aiohttp.ClientSession() as session:
            held: aiohttp.ClientResponse | None = None
            try:
                async with gateway_in_loop(tmp_path, on_ready=_add_root) as url:
                    held = await checks(session, url, link)
                    stopping = time.monotonic()  # the gateway stops with a stream still open, without waiting for it
                return time.monotonic() - stopping
            finally:
                if held is not None:
                    held.release()

    async def checks(session: aiohttp.ClientSession, url: str, link: PtyLink) -> aiohttp.ClientResponse:
        admin = await _login(session, url)
        alice = Client(session, url)
        await alice.register("alice")
        anonymous = Client(session, url)

        # The page: its files from the package, nothing from elsewhere, a strict CSP.
        status, _ = await anonymous.request("GET", "/_lowband/status", token=False)
        assert status == 200  # followed the redirect to /_lowband/status/
        async with session.get(url + "/_lowband/status", allow_redirects=False) as redirect:
            assert (redirect.status, redirect.headers["Location"]) == (308, "/_lowband/status/")
        for name, kind in status_page.PAGE_FILES.items():
            async with session.get(f"{url}/_lowband/status/{'' if name == 'index.html' else name}") as page:
                body = (await page.text()).replace('"http://www.w3.org/2000/svg"', "")  # a name, never fetched
                assert page.status == 200 and page.headers["Content-Type"] == kind
                assert "default-src 'none'" in page.headers["Content-Security-Policy"]
                assert "http://" not in body and "https://" not in body, name  # no CDN, no remote font
        status, _ = await anonymous.request("GET", "/_lowband/status/secret.txt", token=False)
        assert status == 404

        # Admin only, like /metrics.
        for path in (f"{ADMIN_API}/devices/kitchen/readings", f"{ADMIN_API}/events"):
            status, body = await anonymous.request("GET", path, token=False)
            assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN"), path
            status, body = await alice.request("GET", path)
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), path
        status, body = await _readings(admin)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

        status, created = await alice.request("POST", V3 + "/createRoom", {"room_alias_name": "sensors",
                                                                           "preset": "public_chat"})  # fmt: skip
        assert status == 200, created
        room_id = created["room_id"]
        config = json.loads(provision_kitchen(tmp_path / "data", link.path_a, bps).read_text())
        # Someone else's event with the same content shape is no reading of the device.
        status, _ = await alice.request("PUT", f"{V3}/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/f1",
                                        {"msgtype": "m.notice", "body": "forged",
                                         "org.lowband.senml": [{"n": "temperature", "v": 999}]})  # fmt: skip
        assert status == 200

        async with session.get(url + ADMIN_API + "/events", headers={"Authorization": f"Bearer {admin.token}"},
                               timeout=aiohttp.ClientTimeout(total=120)) as response:  # fmt: skip
            assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
            events = EventStream(response)
            first = await events.next("status")
            assert first["server_name"] == "localhost"
            device = ScriptedDevice(config, link.path_b, rto=rto_for_bps(bps))
            await device.start()
            try:
                device.publish_reading([(0, 215), (1, 40), (2, 370)])
                live = await events.next("reading", timeout=60)
                assert (live["device"], live["room_id"]) == ("kitchen", room_id)
                assert (live["values"], live["units"]) == ({"temperature": 21.5, "humidity": 40, "battery": 3.7},
                                                           {"temperature": "Cel", "humidity": "%RH", "battery": "V"})  # fmt: skip
                device.publish_reading([(0, 216), (1, 41), (2, 369)])
                second = await events.next("reading", timeout=60)
                assert second["values"]["temperature"] == 21.6
                await events.next("status")  # the summary keeps coming
            finally:
                await device.stop()

            # The readings endpoint: both, oldest first, the forged one left out.
            status, body = await _readings(admin)
            assert status == 200, body
            assert [r["values"]["temperature"] for r in body["readings"]] == [21.5, 21.6]
            assert [r["event_id"] for r in body["readings"]] == [live["event_id"], second["event_id"]]
            assert body["truncated"] is False and body["user_id"] == KITCHEN and body["limit"] == 2000
            status, body = await _readings(admin, "?limit=1")
            assert [r["values"]["temperature"] for r in body["readings"]] == [21.6] and body["truncated"]
            status, body = await _readings(admin, f"?since_ms={second['ts_ms']}")
            assert [r["values"]["temperature"] for r in body["readings"]] == [21.6]
            status, body = await _readings(admin, f"?since_ms={second['ts_ms'] + 3_600_000}")
            assert (status, body["readings"]) == (200, [])
            # Bounds and malformed parameters.
            for query in ("?since_ms=yesterday", "?since_ms=-5", "?since_ms=1.5", "?since_ms=", "?since_ms=%201",
                          "?limit=0", "?limit=2001", "?limit=many"):  # fmt: skip
                status, body = await _readings(admin, query)
                assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), query
            status, body = await _readings(admin, "?limit=2000")
            assert status == 200
        held = await session.get(url + ADMIN_API + "/events", headers={"Authorization": f"Bearer {admin.token}"})
        assert held.status == 200
        await EventStream(held).next("status")
        return held

    with PtyLink(bps=bps, seed=7) as link:
        stop_took = asyncio.run(asyncio.wait_for(scenario(link), 150))
    assert stop_took < 5, stop_took


def test_demo_makes_its_user_an_admin_in_an_existing_data_dir(tmp_path: Path) -> None:
    """A data dir from before the status page has ``demo`` without the admin flag: the demo gives it."""
    from lowband.gateway.cli import demo

    held: dict[str, Any] = {}

    def older_demo(services: Any) -> None:
        services.store.create_user_sync("@demo:localhost", hash_password("demo"), False, int(time.time() * 1000))
        held["services"] = services

    async def run() -> tuple[int, str, str]:
        async with gateway_in_loop(tmp_path, on_ready=older_demo):
            store = held["services"].store
            room_id = await demo._ensure_room(held["services"])
            return store.get_user("@demo:localhost")["admin"], room_id, store.get_alias("#sensors:localhost")[0]

    admin, room_id, aliased = asyncio.run(asyncio.wait_for(run(), 60))
    assert admin == 1 and room_id.startswith("!") and aliased == room_id
