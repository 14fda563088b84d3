"""Prometheus metrics (gateway/api/http/metrics.py, docs/metrics.md) against a gateway running in the test's loop.

``/metrics`` on the client listener is refused without a token and to a non-admin; an admin's scrape parses with
prometheus_client's own parser and its counters move with the requests made; paths and methods a client chooses
do not grow the number of series; the token-less listener is off by default, answers on loopback when configured,
and the config refuses any other address.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from harness import Client, free_port, gateway_in_loop
from prometheus_client.parser import text_string_to_metric_families

from lowband.gateway.config import ConfigError, load_config
from lowband.gateway.homeserver.accounts import hash_password

V3 = "/_matrix/client/v3"
ADMIN, ADMIN_PW = "@root:localhost", "root-secret-pw"


def _add_admin(services: Any) -> None:
    services.store.create_user_sync(ADMIN, hash_password(ADMIN_PW), True, int(time.time() * 1000))


async def _admin(session: aiohttp.ClientSession, url: str) -> Client:
    client = Client(session, url)
    status, body = await client.request("POST", V3 + "/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "root"}, "password": ADMIN_PW},
        token=False)  # fmt: skip
    assert status == 200, body
    client.token, client.user_id = body["access_token"], body["user_id"]
    return client


def _families(payload: Any) -> dict[str, Any]:
    assert isinstance(payload, bytes), payload
    return {family.name: family for family in text_string_to_metric_families(payload.decode())}


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when there are none)."""
    return sum(s.value for f in families.values() for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))  # fmt: skip


def test_metrics_need_an_admin_and_count_requests(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway_in_loop(tmp_path, on_ready=_add_admin) as url, aiohttp.ClientSession() as session:
            alice = Client(session, url)
            await alice.register("alice")
            admin = await _admin(session, url)
            status, body = await alice.request("GET", "/metrics", token=False)
            assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
            status, body = await alice.request("GET", "/metrics", headers={"Authorization": "Bearer nope"}, token=False)
            assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
            status, body = await alice.request("GET", "/metrics")
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN")

            status, first = await admin.request("GET", "/metrics")
            assert status == 200
            before = _families(first)
            route = "/_matrix/client/{version}/rooms/{room_id}/send/{event_type}/{txn_id}"
            sent_before = _value(before, "lowband_http_requests_total", route=route, status="2xx")
            position_before = _value(before, "lowband_stream_position")
            status, created = await alice.request("POST", V3 + "/createRoom", {})
            assert status == 200, created
            for i in range(5):
                status, _ = await alice.request("PUT", f"{V3}/rooms/{created['room_id']}/send/m.room.message/t{i}",
                                                {"msgtype": "m.text", "body": f"hello {i}"})  # fmt: skip
                assert status == 200
            status, second = await admin.request("GET", "/metrics")
            assert status == 200
            after = _families(second)

            # exactly the five sends, under the route template, and the refused scrapes as 4xx of /metrics
            assert _value(after, "lowband_http_requests_total", route=route, status="2xx") == sent_before + 5
            assert _value(after, "lowband_http_requests_total", route="/metrics", status="4xx") == 3
            assert _value(after, "lowband_http_request_duration_seconds_count", route=route) == sent_before + 5
            assert _value(after, "lowband_http_request_duration_seconds_sum", route=route) > 0
            # createRoom's state events and the five messages were persisted
            assert _value(after, "lowband_stream_position") >= position_before + 6
            assert _value(after, "lowband_to_device_dropped_total", reason="inbox_full") == 0
            assert _value(after, "lowband_process_resident_memory_bytes") > 10_000_000
            assert _value(after, "lowband_process_open_fds") > 3
            assert after["lowband_federation_transactions_sent"].samples[0].value == 0  # federation runs, no peer yet
            assert "lowband_link_refused_frames" not in after  # no device: no link runtime, no series
            assert all(name.startswith("lowband_") for name in after)

    asyncio.run(asyncio.wait_for(run(), 30))


#: methods aiohttp's parser accepts that no Lowband route serves
_UNSERVED_METHODS = ("PATCH", "PROPFIND", "MKCOL", "LOCK", "TRACE")


def test_chosen_paths_and_methods_do_not_grow_the_series(tmp_path: Path) -> None:
    """The attack: every request with a new path (and a method the API does not serve) would be a new series if raw paths and
    methods were labels. They all land in ``unmatched`` / ``other``; a real route still counts under its template."""

    async def run() -> None:
        async with gateway_in_loop(tmp_path, on_ready=_add_admin) as url, aiohttp.ClientSession() as session:
            admin = await _admin(session, url)
            _, first = await admin.request("GET", "/metrics")
            series_before = sum(len(f.samples) for f in _families(first).values())
            for i in range(40):
                await admin.request("GET", f"/_matrix/client/v3/nothing-{i}")
                await admin.request(_UNSERVED_METHODS[i % len(_UNSERVED_METHODS)], f"/random/{i}")
            _, second = await admin.request("GET", "/metrics")
            after = _families(second)
            assert _value(after, "lowband_http_requests_total", route="unmatched") == 80
            assert _value(after, "lowband_http_requests_total", method="other") == 40
            labels = " ".join(str(s.labels) for f in after.values() for s in f.samples)
            assert "nothing-" not in labels and "random" not in labels
            assert not any(f"'{method}'" in labels for method in _UNSERVED_METHODS)
            # the unmatched/other series and their latency buckets, plus the first scrape's own: a fixed number
            grown = sum(len(f.samples) for f in after.values()) - series_before
            assert grown < 60, grown
            status, _ = await admin.request("GET", V3 + "/account/whoami")
            assert status == 200
            _, third = await admin.request("GET", "/metrics")
            assert _value(_families(third), "lowband_http_requests_total", route="/_matrix/client/{version}/account/whoami",
                          status="2xx") == 1  # fmt: skip

    asyncio.run(asyncio.wait_for(run(), 30))


def test_loopback_listener_serves_without_a_token_and_is_off_by_default(tmp_path: Path) -> None:
    async def run() -> None:
        port = free_port()
        async with aiohttp.ClientSession() as session:
            async with gateway_in_loop(tmp_path / "off"):
                with pytest.raises(aiohttp.ClientConnectorError):  # nothing listens there by default
                    await session.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5))
            config_file = tmp_path / "gw.toml"
            config_file.write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
            metrics = load_config(config_file).metrics
            async with gateway_in_loop(tmp_path / "on", metrics=metrics) as url:
                client = Client(session, url)
                await client.register("alice")
                async with session.get(f"http://127.0.0.1:{port}/metrics",
                                       timeout=aiohttp.ClientTimeout(total=5)) as response:  # fmt: skip
                    assert response.status == 200
                    assert response.headers["Content-Type"].startswith("text/plain")
                    families = _families(await response.read())
                assert _value(families, "lowband_http_requests_total", route="/_matrix/client/{version}/register") == 1
                async with session.get(f"http://127.0.0.1:{port}/_matrix/client/versions",
                                       timeout=aiohttp.ClientTimeout(total=5)) as response:  # fmt: skip
                    assert response.status == 404  # the metrics listener serves nothing else
            with pytest.raises(aiohttp.ClientConnectorError):  # and it stops with the gateway
                await session.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5))

    asyncio.run(asyncio.wait_for(run(), 30))


@pytest.mark.parametrize(("text", "message"), [
    ('listen = "0.0.0.0:9100"', "metrics.listen 0.0.0.0:9100 must be a loopback address"),
    ('listen = "192.168.1.2:9100"', "metrics.listen 192.168.1.2:9100 must be a loopback address"),
    ('listen = "127.0.0.1:0"', "metrics.listen 127.0.0.1:0 must be a loopback address"),
    ('listen = "9100"', "listen address '9100' must be HOST:PORT"),
    ("listen = 9100", "metrics.listen has the wrong type (int)"),
    ("port = 9100", "unknown config key metrics.port"),
])  # fmt: skip
def test_bad_metrics_config_is_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(f"[metrics]\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_metrics_config_accepts_loopback_names(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    for listen, expected in (("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:9100", ("::1", 9100)),
                             ("localhost:9200", ("localhost", 9200))):  # fmt: skip
        path.write_text(f'[metrics]\nlisten = "{listen}"\n')
        assert load_config(path).metrics.listen == expected
    assert load_config(None).metrics.listen is None


def test_link_refusals_are_scraped_per_link_and_kind(tmp_path: Path) -> None:
    """Garbage and a reserved frame type on a provisioned device's serial line: the scrape shows each refusal
    kind under that link, equal to the runtime's own counters, and the devices on the links."""
    from harness import provision_kitchen, until

    from lowband.codecs.link_frame import serial_encode
    from lowband.sim.pty_link import PtyLink

    async def run() -> None:
        got: dict[str, Any] = {}

        def ready(services: Any) -> None:
            _add_admin(services)
            got["services"] = services

        with PtyLink(bps=115_200, seed=5) as line:
            async with gateway_in_loop(tmp_path, on_ready=ready) as url, aiohttp.ClientSession() as session:
                admin = await _admin(session, url)
                status, body = await admin.request("POST", V3 + "/createRoom", {"room_alias_name": "sensors"})
                assert status == 200, body
                _, first = await admin.request("GET", "/metrics")
                assert "lowband_link_refused_frames" not in _families(first)  # no device: the runtime is not running
                provision_kitchen(tmp_path / "data", line.path_a, 115_200)
                services = got["services"]
                await until(lambda: "links" in services.components and services.components["links"].links, 20)
                runtime = services.components["links"]
                spec, link = next(iter(runtime.links.items()))
                link.transport.on_bytes(b"\x13\x37\x00" * 20)  # not COBS
                link.transport.on_bytes(serial_encode(b"\xe0\x07" + bytes(20)) * 7)  # a reserved frame type
                await until(lambda: sum(runtime.refusal_counts()[spec].values()) >= 8, 10)
                _, second = await admin.request("GET", "/metrics")
                families = _families(second)
                counts = runtime.refusal_counts()[spec]
                assert len(counts) >= 2, counts
                for kind, count in counts.items():
                    assert _value(families, "lowband_link_refused_frames_total", link=spec, kind=kind) == count
                assert _value(families, "lowband_link_devices") == 1

    asyncio.run(asyncio.wait_for(run(), 40))


def _broker_up() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 1883), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _broker_up(), reason="no Mosquitto on 127.0.0.1:1883")
def test_mqtt_counters_are_scraped_per_mapping(tmp_path: Path) -> None:
    """Messages published to the shared Mosquitto: the bridge's own counters (received, posted, refused by
    reason) appear per mapping in the scrape with the same values."""
    import uuid

    import paho.mqtt.client as mqtt
    from harness import until

    prefix = f"lbtest/{uuid.uuid4().hex[:10]}"

    async def run() -> None:
        async with gateway_in_loop(tmp_path, on_ready=_add_admin) as url, aiohttp.ClientSession() as session:
            admin = await _admin(session, url)  # the bridge posts only to rooms an admin made
            status, body = await admin.request("POST", V3 + "/createRoom", {"preset": "public_chat"})
            assert status == 200, body
            room = body["room_id"]
        mqtt_config = {
            "brokers": [{"name": "local", "host": "127.0.0.1", "port": 1883, "client_id": f"lbmetrics-{prefix[7:]}",
                         "session_expiry_s": 1}],
            "inbound": [{"name": "home", "topic": f"{prefix}/home/+/temperature", "room": room}],
            "status_topic": f"{prefix}/status", "stats_topic": f"{prefix}/stats", "discovery_prefix": f"{prefix}/ha",
            "stats_interval_s": 0,
        }  # fmt: skip
        got: dict[str, Any] = {}
        async with (gateway_in_loop(tmp_path, on_ready=lambda services: got.update(services=services),
                                    components={"mqtt": mqtt_config}) as url,
                    aiohttp.ClientSession() as session):  # fmt: skip
            admin = await _admin(session, url)
            await until(lambda: "mqtt" in got["services"].components, 10)
            bridge = got["services"].components["mqtt"]
            publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            publisher.connect("127.0.0.1", 1883, 30)
            publisher.loop_start()
            try:
                for payload in (b"21", b"", b"\xff\xfe21", b"22"):
                    publisher.publish(f"{prefix}/home/kitchen/temperature", payload, qos=1).wait_for_publish(5)
                await until(lambda: bridge.stats().get("home", {}).get("posted", 0) == 2, 15)
            finally:
                publisher.disconnect()
                publisher.loop_stop()
            counters = bridge.stats()["home"]
            assert counters["refused.empty"] == 1 and counters["refused.invalid_utf8"] == 1, counters
            _, scraped = await admin.request("GET", "/metrics")
            families = _families(scraped)
            assert _value(families, "lowband_mqtt_refused_messages_total", mapping="home", reason="empty") == 1
            assert _value(families, "lowband_mqtt_refused_messages_total", mapping="home", reason="invalid_utf8") == 1
            assert _value(families, "lowband_mqtt_messages_total", mapping="home", outcome="posted") == 2
            assert _value(families, "lowband_mqtt_messages_total", mapping="home",
                          outcome="received") == counters["received"] >= 4  # fmt: skip

    asyncio.run(asyncio.wait_for(run(), 40))


def test_appservice_and_federation_queues_are_scraped(tmp_path: Path) -> None:
    """Two bridges interested in every room, one answering and one whose port is closed, and a federation peer:
    the scrape shows the answering bridge's last success and pushes, the other's failures and transaction in
    flight, and the peer's place behind the federation log's head."""
    import yaml

    async def run() -> None:
        pushed: list[str] = []

        async def transaction(request: web.Request) -> web.Response:
            pushed.append(request.match_info["txn_id"])
            return web.json_response({})

        bridge_app = web.Application()
        bridge_app.router.add_put("/_matrix/app/v1/transactions/{txn_id}", transaction)
        runner = web.AppRunner(bridge_app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        files = []
        for name, url in (("up", f"http://127.0.0.1:{port}"), ("down", f"http://127.0.0.1:{free_port()}")):
            doc = {"id": name, "url": url, "as_token": f"as-{name}", "hs_token": f"hs-{name}",
                   "sender_localpart": f"{name}bot", "rate_limited": False,
                   "namespaces": {"users": [], "aliases": [], "rooms": [{"exclusive": False, "regex": "!.*"}]}}  # fmt: skip
            files.append(tmp_path / f"{name}.yaml")
            files[-1].write_text(yaml.safe_dump(doc))
        got: dict[str, Any] = {}

        def ready(services: Any) -> None:
            _add_admin(services)
            got["services"] = services

        try:
            async with (gateway_in_loop(tmp_path, on_ready=ready,
                                        components={"appservices": {"config_files": [str(f) for f in files]}}) as url,
                        aiohttp.ClientSession() as session):  # fmt: skip
                admin = await _admin(session, url)
                status, body = await admin.request("POST", V3 + "/createRoom", {})
                assert status == 200, body
                await got["services"].store.federation.add_destination("peer.example", 0)

                async def scrape() -> dict[str, Any]:
                    status, payload = await admin.request("GET", "/metrics")
                    assert status == 200
                    return _families(payload)

                seen: dict[str, Any] = {}

                async def settled() -> bool:
                    seen.update(await scrape())
                    return (_value(seen, "lowband_appservice_consecutive_failures", appservice="down") >= 1
                            and _value(seen, "lowband_appservice_positions_behind", appservice="up") == 0)  # fmt: skip

                deadline = time.monotonic() + 15
                while not await settled():
                    assert time.monotonic() < deadline, "the bridges' queues did not settle"
                    await asyncio.sleep(0.2)
                assert pushed
                assert _value(seen, "lowband_appservice_transactions_sent_total", appservice="up") == len(pushed)
                assert _value(seen, "lowband_appservice_events_sent_total", appservice="up") >= 1
                assert abs(_value(seen, "lowband_appservice_last_success_timestamp_seconds", appservice="up")
                           - time.time()) < 30  # fmt: skip
                assert _value(seen, "lowband_appservice_transaction_in_flight", appservice="down") == 1
                assert _value(seen, "lowband_appservice_positions_behind", appservice="down") >= 1
                assert not any(s.labels.get("appservice") == "down"
                               for s in seen["lowband_appservice_last_success_timestamp_seconds"].samples)  # fmt: skip
                # Only events for other servers are logged for federation: a local room logs none, so the peer's
                # series are there with the log head (0 here) as what it has not accepted.
                head = got["services"].store.federation.log_head()
                behind = seen["lowband_federation_positions_behind"].samples
                assert [(s.labels, s.value) for s in behind] == [({"destination": "peer.example"}, head)]
                assert _value(seen, "lowband_federation_transaction_in_flight", destination="peer.example") == 0
                assert _value(seen, "lowband_federation_consecutive_failures", destination="peer.example") == 0
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(run(), 40))
