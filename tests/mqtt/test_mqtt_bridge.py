"""The MQTT bridge against a real Mosquitto, with matrix-nio on the room side.

Most tests use the shared broker on 127.0.0.1:1883 with a topic prefix,
client IDs and discovery prefix of their own, and clean up their sessions
and retained messages afterwards. Tests that stop a broker start a private
one (``PrivateMosquitto``). The gateway runs inside the test's event loop
with the bridge added to its components.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness import gateway_in_loop, until
from nio import AsyncClient, RegisterResponse, RoomCreateResponse, RoomMessagesResponse, RoomPreset, RoomVisibility
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_mqtt_core import check_ha_config

import lowband.gateway.app as server
from lowband.codecs.compact import SENML_KEY
from lowband.gateway.bridges.mqtt.bridge import MqttBridge, start_mqtt
from lowband.gateway.config import ConfigError
from lowband.gateway.homeserver.accounts import hash_password
from lowband.sim.mosquitto import PrivateMosquitto

BROKER_PORT = 1883
PASSWORD = "correct horse battery"


def shared_broker_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", BROKER_PORT), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not shared_broker_up(), reason="no Mosquitto on 127.0.0.1:1883")


# ------------------------------------------------------------------ helpers


#: Probes not closed yet: a test that fails before closing its probes has them closed after it (autouse fixture).
_open_probes: list[Probe] = []


@pytest.fixture(autouse=True)
def _close_probes() -> Iterator[None]:
    yield
    while _open_probes:
        _open_probes[-1].close()


class Probe:
    """A paho client in its own thread that records every message it receives (closed at the latest after the test)."""

    def __init__(self, port: int = BROKER_PORT, *, client_id: str | None = None, persistent: bool = False,
                 protocol: int = mqtt.MQTTv5) -> None:  # fmt: skip
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol)  # fmt: skip
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self.client.on_message = self._on_message
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.port = port
        self.persistent = persistent
        _open_probes.append(self)
        self.connect()

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300 if self.persistent else 0
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect("127.0.0.1", self.port, 30, clean_start=not self.persistent, properties=props)
        self.client.loop_start()
        assert connected.wait(10), "probe could not connect"

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(10)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                user_properties: list[tuple[str, str]] | None = None) -> None:  # fmt: skip
        props = None
        if user_properties:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = user_properties
        self.client.publish(topic, payload, qos=qos, retain=retain, properties=props).wait_for_publish(10)

    def received(self, topic_prefix: str = "") -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.startswith(topic_prefix)]

    async def wait_for(self, predicate: Callable[[list[mqtt.MQTTMessage]], bool], timeout: float = 10.0,
                       topic_prefix: str = "") -> list[mqtt.MQTTMessage]:  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            got = self.received(topic_prefix)
            if predicate(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received {[(m.topic, m.payload[:60]) for m in got]}")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        if self in _open_probes:
            _open_probes.remove(self)
        self.client.disconnect()
        self.client.loop_stop()


def forget_session(client_id: str, port: int = BROKER_PORT) -> None:
    """Remove a persistent session from the broker (connect clean with expiry 0)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    try:
        client.connect("127.0.0.1", port, 30, clean_start=True)
        client.loop_start()
        time.sleep(0.1)
        client.disconnect()
        client.loop_stop()
    except OSError:
        pass


def clear_retained(prefix: str, port: int = BROKER_PORT) -> None:
    """Delete every retained message under ``prefix/#`` (publish empty retained payloads)."""
    probe = Probe(port)
    probe.subscribe(prefix + "/#")
    time.sleep(0.3)
    for message in probe.received():
        if message.retain and message.payload:
            probe.publish(message.topic, b"", retain=True)
    probe.close()


class Env:
    """Names of one test: topic prefix, client IDs and the bridge's config pieces."""

    def __init__(self, port: int = BROKER_PORT) -> None:
        self.id = uuid.uuid4().hex[:10]
        self.prefix = f"lbtest/{self.id}"
        self.port = port
        self.client_ids: list[str] = []

    def broker(self, name: str = "local", **extra: Any) -> dict[str, Any]:
        client_id = f"lbtest-{self.id}-{name}"
        self.client_ids.append(client_id)
        return {"name": name, "host": "127.0.0.1", "port": self.port, "client_id": client_id, "session_expiry_s": 300,
                "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, **extra}  # fmt: skip

    def config(self, inbound: list[dict[str, Any]] = (), outbound: list[dict[str, Any]] = (),
               brokers: list[dict[str, Any]] | None = None, **top: Any) -> dict[str, Any]:  # type: ignore[assignment]  # fmt: skip
        return {
            "brokers": brokers or [self.broker()],
            "inbound": list(inbound),
            "outbound": list(outbound),
            "status_topic": f"{self.prefix}/status",
            "stats_topic": f"{self.prefix}/stats",
            "discovery_prefix": f"{self.prefix}/ha",
            "stats_interval_s": 0,
            **top,
        }

    def cleanup(self) -> None:
        for client_id in self.client_ids:
            forget_session(client_id, self.port)
        clear_retained(self.prefix, self.port)


@pytest.fixture
def env():
    names = Env()
    yield names
    names.cleanup()


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, mqtt_config: dict[str, Any] | None,
                  ready: list[Any] | None = None) -> AsyncIterator[tuple[str, MqttBridge | None]]:  # fmt: skip
    """An in-loop gateway with the MQTT bridge as a component; yields (base URL, bridge).

    ``ready`` (a list) receives the gateway's ``Services`` once it runs.
    """
    bridges: list[MqttBridge] = []

    async def component(services: Any) -> Any:
        stop = await start_mqtt(services)
        if stop is not None:
            bridges.append(stop.__self__)  # type: ignore[attr-defined]
        return stop

    saved = list(server.COMPONENTS)
    server.COMPONENTS[:] = [c for c in saved if getattr(c, "__name__", "") != "start_mqtt"] + [component]
    try:
        extra = {"components": {"mqtt": mqtt_config}} if mqtt_config is not None else {}
        on_ready = ready.append if ready is not None else None
        async with gateway_in_loop(tmp_path, on_ready=on_ready, **extra) as base:
            yield base, (bridges[0] if bridges else None)
    finally:
        server.COMPONENTS[:] = saved


@contextlib.asynccontextmanager
async def bridged_session(tmp_path: Path, mqtt_config: dict[str, Any]) -> AsyncIterator[tuple[AsyncClient, MqttBridge]]:
    """:func:`gateway` with the bridge running and alice logged in; yields (alice, bridge), closes alice."""
    async with gateway(tmp_path, mqtt_config) as (base, bridge):
        assert bridge is not None
        alice = await login(base)
        try:
            yield alice, bridge
        finally:
            await alice.close()


async def register(base: str, name: str = "alice") -> AsyncClient:
    client = AsyncClient(base)
    response = await client.register(name, PASSWORD, device_name="mqtt test")
    assert isinstance(response, RegisterResponse), response
    return client


async def login(base: str, name: str = "alice") -> AsyncClient:
    client = AsyncClient(base, f"@{name}:localhost")
    await client.login(PASSWORD)
    assert client.access_token
    return client


async def register_admin(base: str, services: Any, name: str = "alice") -> AsyncClient:
    """A server admin's account, made in the store as ``lowband user add --admin`` makes it, logged in."""
    await services.store.create_user(f"@{name}:localhost", hash_password(PASSWORD), True, int(time.time() * 1000))
    return await login(base, name)


async def first_room(tmp_path: Path, alias: str) -> str:
    """A public room made by alice, a server admin (so its alias binds), on a gateway without the bridge; its ID."""
    services: list[Any] = []
    async with gateway(tmp_path, None, services) as (base, _):
        alice = await register_admin(base, services[0])
        room = await create_room(alice, alias)
        await alice.close()
    return room


async def create_room(client: AsyncClient, alias: str, public: bool = True) -> str:
    response = await client.room_create(visibility=RoomVisibility.public if public else RoomVisibility.private,
                                        alias=alias, preset=RoomPreset.public_chat if public else RoomPreset.private_chat)  # fmt: skip
    assert isinstance(response, RoomCreateResponse), response
    return response.room_id


async def room_messages(client: AsyncClient, room_id: str) -> list[dict[str, Any]]:
    """Every m.room.message of a room, oldest first, through /messages."""
    events: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = await client.room_messages(room_id, start=token, limit=1000)
        assert isinstance(page, RoomMessagesResponse), page
        events += [e.source for e in page.chunk]
        if not page.chunk or not page.end:
            break
        token = page.end
    events.reverse()
    return [e for e in events if e["type"] == "m.room.message"]


async def wait_messages(client: AsyncClient, room_id: str, predicate: Callable[[list[dict[str, Any]]], bool],
                        timeout: float = 15.0) -> list[dict[str, Any]]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        got = await room_messages(client, room_id)
        if predicate(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; room holds {[(e['sender'], e['content'].get('body')) for e in got]}")
        await asyncio.sleep(0.1)


def bridged(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["sender"].startswith("@mqtt_")]


def counter(bridge: MqttBridge, mapping: str, name: str) -> int:
    return bridge.stats().get(mapping, {}).get(name, 0)


# ------------------------------------------------------------------ tests


def test_both_directions_with_nio_and_home_assistant_discovery(tmp_path: Path, env: Env) -> None:
    p = env.prefix

    async def scenario() -> None:
        room = await first_room(tmp_path, f"sensors-{env.id}")
        config = env.config(
            inbound=[{"name": "z2m", "topic": f"{p}/z2m/+", "room": f"#sensors-{env.id}:localhost",
                      "fields": {"temperature": {"u": "Cel"}, "humidity": {"u": "%RH"}}}],
            outbound=[{"name": "cmd", "room": room, "topic": f"{p}/z2m/{{device}}/set"},
                      {"name": "say", "room": room, "topic": f"{p}/say", "retain": True, "qos": 0}],
        )  # fmt: skip
        probe = Probe()
        probe.subscribe(f"{p}/#")
        async with bridged_session(tmp_path, config) as (alice, bridge):
            probe.publish(f"{p}/z2m/kitchen", json.dumps({"temperature": 21.5, "humidity": 40, "contact": True}))
            events = await wait_messages(alice, room, lambda e: len(bridged(e)) == 1)
            event = bridged(events)[0]
            assert event["sender"] == "@mqtt_kitchen:localhost"
            assert event["content"]["body"] == "temperature 21.5 Cel, humidity 40 %RH, contact true"
            records = event["content"][SENML_KEY]
            assert records[0]["n"] == "temperature" and records[0]["v"] == 215 and records[0]["scale_"] == -1
            assert records[0]["u"] == "Cel" and isinstance(records[0]["bt"], int)
            assert event["content"]["org.lowband.mqtt"] == {"topic": f"{p}/z2m/kitchen"}

            await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": 'lamp {"state": "ON"}'})
            got = await probe.wait_for(lambda m: len(m) == 1, topic_prefix=f"{p}/z2m/lamp")
            assert got[0].topic == f"{p}/z2m/lamp/set" and got[0].payload == b'{"state": "ON"}' and got[0].qos == 1
            assert not got[0].retain
            user_properties = dict(got[0].properties.UserProperty)
            assert user_properties["lowband-origin"] == "localhost"
            # The fixed-topic mapping publishes every text message of the room, at QoS 0 and retained.
            said = await probe.wait_for(lambda m: len(m) == 1, topic_prefix=f"{p}/say")
            assert said[0].payload == b'lamp {"state": "ON"}' and said[0].qos == 0
            await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "hello"})
            await probe.wait_for(lambda m: len(m) == 2 and m[1].payload == b"hello", topic_prefix=f"{p}/say")
            late = Probe()  # a retained publish is what a new subscriber gets first
            late.subscribe(f"{p}/say")
            retained = await late.wait_for(lambda m: len(m) >= 1)
            assert retained[0].retain and retained[0].payload == b"hello"
            late.close()

            # Home Assistant: the gateway and each reading, retained, and the status topic.
            configs = await probe.wait_for(lambda m: len(m) >= 4, topic_prefix=f"{p}/ha/")
            parsed = {m.topic: check_ha_config(m.topic, m.payload, prefix=f"{p}/ha") for m in configs}
            node = "lowband_localhost"
            temperature = parsed[f"{p}/ha/sensor/{node}/kitchen_temperature/config"]
            assert temperature["state_topic"] == f"{p}/z2m/kitchen"
            assert temperature["unit_of_measurement"] == "°C" and temperature["device_class"] == "temperature"
            assert temperature["availability_topic"] == f"{p}/status"
            assert parsed[f"{p}/ha/sensor/{node}/kitchen_humidity/config"]["device_class"] == "humidity"
            assert f"{p}/ha/binary_sensor/{node}/kitchen_contact/config" in parsed
            assert parsed[f"{p}/ha/binary_sensor/{node}/status/config"]["device_class"] == "connectivity"
            status = [m for m in probe.received(f"{p}/status") if m.topic == f"{p}/status"]
            assert status[-1].payload == b"online"
            assert counter(bridge, "cmd", "published") == 1 and counter(bridge, "cmd", "skipped.no_device") == 1
            assert counter(bridge, "say", "published") == 2 and counter(bridge, "z2m", "posted") == 1
        await probe.wait_for(lambda m: m[-1].payload == b"offline", topic_prefix=f"{p}/status")
        probe.close()

    asyncio.run(scenario())


def test_wildcards_retained_and_what_is_refused(tmp_path: Path, env: Env) -> None:
    p = env.prefix

    async def scenario() -> None:
        room = await first_room(tmp_path, f"plant-{env.id}")
        probe = Probe()
        probe.publish(f"{p}/home/porch/temperature", b"12.5", retain=True)
        config = env.config(inbound=[
            {"name": "home", "topic": f"{p}/home/+/temperature", "room": room, "max_payload_bytes": 1000},
            {"name": "plant", "topic": f"{p}/plant/#", "room": room, "exclude": [f"{p}/plant/debug/#"]},
            {"name": "strict", "topic": f"{p}/json/+", "room": room, "payload": "json", "sender": "mapping"},
        ])  # fmt: skip
        async with bridged_session(tmp_path, config) as (alice, bridge):
            events = await wait_messages(alice, room, lambda e: len(bridged(e)) == 1)
            porch = bridged(events)[0]
            assert porch["sender"] == "@mqtt_porch:localhost" and porch["content"]["body"] == "temperature 12.5"
            assert porch["content"]["org.lowband.mqtt"]["retained"] is True

            probe.publish(f"{p}/home/kitchen/temperature", b"21")
            probe.publish(f"{p}/plant/line1/press/3", b'{"pressure": 1013}')
            probe.publish(f"{p}/plant/debug/trace", b"ignored")  # excluded: delivered by plant/#, taken by no mapping
            probe.publish(f"{p}/home/attic/temperature", b"")  # empty: clears a retained message
            probe.publish(f"{p}/home/attic/temperature", b"\xff\xfe21")  # invalid UTF-8
            probe.publish(f"{p}/home/attic/temperature", b"1" * 2000)  # over this mapping's 1000 bytes
            probe.publish(f"{p}/plant/big", b"x" * (1024 * 1024))  # 1 MB, over the default 64 KiB
            # an exponent past decimal's limits, QoS 1: it raised and held back every later ack on this broker
            probe.publish(f"{p}/home/attic/temperature", b"1e1000000")
            probe.publish(f"{p}/json/valve", b"{open")  # not JSON in a json mapping
            probe.publish(f"{p}/json/valve", b'{"open": true}')
            events = await wait_messages(alice, room, lambda e: len(bridged(e)) == 4)
            by_sender = {e["sender"]: e["content"]["body"] for e in bridged(events)}  # mappings run side by side
            assert by_sender == {"@mqtt_porch:localhost": "temperature 12.5", "@mqtt_kitchen:localhost": "temperature 21",
                                 "@mqtt_line1.press.3:localhost": "pressure 1013", "@mqtt_strict:localhost": "open true"}
            await until(lambda: counter(bridge, "strict", "refused.malformed_json") == 1)
            assert counter(bridge, "home", "refused.empty") == 1
            assert counter(bridge, "home", "refused.invalid_utf8") == 1
            assert counter(bridge, "home", "refused.oversize") == 1
            assert counter(bridge, "home", "refused.no_values") == 1
            assert counter(bridge, "plant", "refused.oversize") == 1
            assert counter(bridge, "_bridge", "refused.unmapped") == 1  # plant/# also delivers the excluded topic
        # Restarted on the same session: the retained message is not posted a second time.
        async with bridged_session(tmp_path, config) as (alice, bridge):
            probe.publish(f"{p}/home/kitchen/temperature", b"22")
            events = await wait_messages(alice, room, lambda e: len(bridged(e)) == 5)
            assert [e["content"]["body"] for e in bridged(events)][-1] == "temperature 22"
            assert sum(1 for e in bridged(events) if e["sender"] == "@mqtt_porch:localhost") == 1
        probe.close()

    asyncio.run(scenario())


def test_a_flood_is_delayed_not_dropped(tmp_path: Path, env: Env) -> None:
    p = env.prefix

    async def scenario() -> None:
        room = await first_room(tmp_path, f"flood-{env.id}")
        config = env.config(inbound=[{"name": "flood", "topic": f"{p}/flood", "room": room, "rate_per_s": 20.0,
                                      "burst": 5}])  # fmt: skip
        probe = Probe()
        async with bridged_session(tmp_path, config) as (alice, bridge):
            started = time.monotonic()
            for i in range(60):
                probe.publish(f"{p}/flood", str(i).encode())
            events = await wait_messages(alice, room, lambda e: len(bridged(e)) == 60, timeout=30)
            elapsed = time.monotonic() - started
            assert [e["content"]["body"] for e in bridged(events)] == [f"flood {i}" for i in range(60)]
            assert elapsed >= (60 - 5) / 20 * 0.8, elapsed
            assert counter(bridge, "flood", "delayed") > 0
            assert counter(bridge, "flood", "posted") == 60
        probe.close()

    asyncio.run(scenario())


def test_loops_are_broken_on_mqtt5_and_mqtt311(tmp_path: Path, env: Env) -> None:
    p = env.prefix

    async def scenario() -> None:
        room = await first_room(tmp_path, f"loop-{env.id}")
        brokers = [env.broker("v5"), env.broker("v3", protocol="3.1.1")]
        config = env.config(
            brokers=brokers,
            inbound=[{"name": "in5", "broker": "v5", "topic": f"{p}/v5/#", "room": room},
                     {"name": "in3", "broker": "v3", "topic": f"{p}/v3/#", "room": room}],
            outbound=[{"name": "out5", "broker": "v5", "room": room, "topic": f"{p}/v5/cmd"},
                      {"name": "out3", "broker": "v3", "room": room, "topic": f"{p}/v3/cmd"}],
        )  # fmt: skip
        probe = Probe()
        probe.subscribe(f"{p}/#")
        async with bridged_session(tmp_path, config) as (alice, bridge):
            await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "ping"})
            await probe.wait_for(lambda m: len(m) == 2, topic_prefix=f"{p}/v")
            # A sensor on the same tree is bridged in, and its event is not published back out.
            probe.publish(f"{p}/v5/sensor", b"1")
            probe.publish(f"{p}/v3/sensor", b"2")
            events = await wait_messages(alice, room, lambda e: len(bridged(e)) == 2)
            assert {e["content"]["body"] for e in bridged(events)} == {"sensor 1", "sensor 2"}
            await until(lambda: counter(bridge, "in3", "refused.loop") == 1)  # 3.1.1: the echo comes back and is refused
            assert counter(bridge, "in5", "refused.loop") == 0  # MQTT 5 No Local: the broker never sends it
            await asyncio.sleep(0.5)
            commands = [m.payload for m in probe.received(f"{p}/v") if m.topic.endswith("/cmd")]
            assert commands == [b"ping", b"ping"]
            assert [e["content"]["body"] for e in await room_messages(alice, room)].count("ping") == 1
        probe.close()

    asyncio.run(scenario())


def test_private_room_waits_for_the_bot_and_mappings_keep_to_their_rooms(tmp_path: Path, env: Env) -> None:
    p = env.prefix

    async def scenario() -> None:
        services: list[Any] = []
        async with gateway(tmp_path, None, services) as (base, _):
            alice = await register_admin(base, services[0])
            private = await create_room(alice, f"private-{env.id}", public=False)
            public = await create_room(alice, f"public-{env.id}")
            await alice.close()
        config = env.config(inbound=[
            {"name": "a", "topic": f"{p}/a/+", "room": f"#private-{env.id}:localhost"},
            {"name": "b", "topic": f"{p}/b/+", "room": public},
        ])  # fmt: skip
        probe = Probe()
        async with bridged_session(tmp_path, config) as (alice, bridge):
            for i in range(3):
                probe.publish(f"{p}/a/door", json.dumps({"open": i, "room_id": public}))
            probe.publish(f"{p}/b/window", b"1")
            await wait_messages(alice, public, lambda e: len(bridged(e)) == 1)
            await asyncio.sleep(0.5)
            assert bridged(await room_messages(alice, private)) == []  # waiting for an invite, not dropped
            await alice.room_invite(private, "@mqtt:localhost")
            events = await wait_messages(alice, private, lambda e: len(bridged(e)) == 3)
            assert [e["content"]["body"] for e in bridged(events)] == [f"open {i}, room_id {public}" for i in range(3)]
            assert [e["sender"] for e in bridged(await room_messages(alice, public))] == ["@mqtt_window:localhost"]
        probe.close()

    asyncio.run(scenario())


def test_outbound_queue_survives_broker_outage_and_gateway_restart(tmp_path: Path) -> None:
    with PrivateMosquitto(tmp_path / "broker") as broker:
        env = Env(broker.port)
        p = env.prefix

        async def scenario() -> None:
            room = await first_room(tmp_path, f"out-{env.id}")
            config = env.config(outbound=[{"name": "out", "room": room, "topic": f"{p}/say"}])
            probe = Probe(broker.port, client_id="durable-probe", persistent=True)
            probe.subscribe(f"{p}/say")
            probe.close()
            async with bridged_session(tmp_path, config) as (alice, bridge):
                await until(lambda: bridge.sessions["local"].link.connected.is_set())
                broker.stop()
                await until(lambda: not bridge.sessions["local"].link.connected.is_set())
                for i in range(3):
                    await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"while down {i}"})
            # The gateway stopped with three messages unpublished; both come back.
            async with bridged_session(tmp_path, config) as (alice, bridge):
                await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "after restart"})
                await asyncio.to_thread(broker.start)
                probe2 = Probe(broker.port, client_id="durable-probe", persistent=True)
                got = await probe2.wait_for(lambda m: len(m) == 4, timeout=20)
                assert [m.payload for m in got] == [b"while down 0", b"while down 1", b"while down 2", b"after restart"]
                probe2.close()

        asyncio.run(scenario())


def test_mqtt311_fallback_when_the_broker_refuses_mqtt5(tmp_path: Path, env: Env) -> None:
    p = env.prefix

    async def scenario() -> None:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # A broker that only speaks MQTT 3.1.1: refuse protocol level 5, relay anything else to Mosquitto.
            first = await reader.read(65536)
            level = first[first.index(b"MQTT") + 4] if b"MQTT" in first else 0
            if level == 5:
                writer.write(b"\x20\x02\x00\x01")  # CONNACK, "unacceptable protocol version"
                await writer.drain()
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", BROKER_PORT)
            up_writer.write(first)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        room = await first_room(tmp_path, f"v311-{env.id}")
        config = env.config(brokers=[env.broker(port=port)], inbound=[{"name": "old", "topic": f"{p}/old", "room": room}])
        probe = Probe()
        async with bridged_session(tmp_path, config) as (alice, bridge):
            await until(lambda: bridge.sessions["local"].link.connected.is_set())
            assert bridge.sessions["local"].link.protocol == mqtt.MQTTv311
            probe.publish(f"{p}/old", b"7")
            events = await wait_messages(alice, room, lambda e: len(bridged(e)) == 1)
            assert bridged(events)[0]["content"]["body"] == "old 7"
        probe.close()
        proxy.close()

    asyncio.run(scenario())


def test_publisher_message_ids_deduplicate_when_configured(tmp_path: Path, env: Env) -> None:
    p = env.prefix

    async def scenario() -> None:
        room = await first_room(tmp_path, f"ids-{env.id}")
        config = env.config(inbound=[{"name": "ids", "topic": f"{p}/ids", "room": room, "dedup_property": "msg-id"}])
        probe = Probe()
        async with bridged_session(tmp_path, config) as (alice, bridge):
            probe.publish(f"{p}/ids", b"5", user_properties=[("msg-id", "a")])
            probe.publish(f"{p}/ids", b"5", user_properties=[("msg-id", "a")])  # a publisher's retry
            probe.publish(f"{p}/ids", b"5", user_properties=[("msg-id", "b")])
            probe.publish(f"{p}/ids", b"6")
            await until(lambda: counter(bridge, "ids", "posted") == 4)
            events = bridged(await room_messages(alice, room))
            assert [e["content"]["body"] for e in events] == ["ids 5", "ids 5", "ids 6"]
        probe.close()

    asyncio.run(scenario())


def test_bad_config_and_a_taken_bot_name_stop_the_gateway(tmp_path: Path, env: Env) -> None:
    async def scenario() -> None:
        with pytest.raises(ConfigError, match=r"mqtt.inbound\[0\].topic"):
            async with gateway(tmp_path, env.config(inbound=[{"name": "x", "topic": "a/#/b", "room": "#r:localhost"}])):
                pass
        async with gateway(tmp_path, None) as (base, _):
            await (await register(base, "mqtt")).close()  # someone took the bot's name
        with pytest.raises(ConfigError, match="mqtt.bot"):
            async with gateway(tmp_path, env.config(inbound=[{"name": "x", "topic": "a", "room": "#r:localhost"}])):
                pass

    asyncio.run(scenario())


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    files: dict[str, Path] = {}

    def write(name: str, key: Any, cert: x509.Certificate) -> None:
        files[f"{name}_key"] = directory / f"{name}.key"
        files[f"{name}_cert"] = directory / f"{name}.crt"
        files[f"{name}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))  # fmt: skip
        files[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(name: str, issuer_key: Any, issuer: x509.Name | None, *, ca: bool = False,
              san: list[Any] | None = None) -> tuple[Any, x509.Certificate]:  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))  # fmt: skip
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(issuer_key or key, hashes.SHA256())

    ca_key, ca_cert = issue("lowband test CA", None, None, ca=True)
    write("ca", ca_key, ca_cert)
    server_key, server_cert = issue("127.0.0.1", ca_key, ca_cert.subject,
                                    san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])  # fmt: skip
    write("server", server_key, server_cert)
    client_key, client_cert = issue("lowband-gateway", ca_key, ca_cert.subject)
    write("client", client_key, client_cert)
    return files


def test_tls_with_client_certificate_and_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import subprocess

    certs = make_certificates(tmp_path)
    passwords = tmp_path / "passwords"
    passwords.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "gateway", "s3cret pw"], check=True, capture_output=True)
    (tmp_path / "gateway-password").write_text("s3cret pw\n")
    extra = (f"cafile {certs['ca_cert']}\ncertfile {certs['server_cert']}\nkeyfile {certs['server_key']}\n"
             f"require_certificate true\npassword_file {passwords}\n")  # fmt: skip
    with PrivateMosquitto(tmp_path / "broker", allow_anonymous=False, extra=extra) as broker:
        env = Env(broker.port)

        async def scenario() -> None:
            room = await first_room(tmp_path, f"tls-{env.id}")
            secure = env.broker(tls=True, ca_file=str(certs["ca_cert"]), cert_file=str(certs["client_cert"]),
                                key_file=str(certs["client_key"]), username="gateway",
                                password_file=str(tmp_path / "gateway-password"))  # fmt: skip
            config = env.config(brokers=[secure], inbound=[{"name": "secure", "topic": "secure/+", "room": room}])
            async with gateway(tmp_path, config) as (base, bridge):
                assert bridge is not None
                await until(lambda: bridge.sessions["local"].link.connected.is_set())
                publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-pub", protocol=mqtt.MQTTv5)
                publisher.tls_set(ca_certs=str(certs["ca_cert"]), certfile=str(certs["client_cert"]),
                                  keyfile=str(certs["client_key"]))  # fmt: skip
                publisher.username_pw_set("gateway", "s3cret pw")
                publisher.connect("127.0.0.1", broker.port)
                publisher.loop_start()
                publisher.publish("secure/vault", b"1", qos=1).wait_for_publish(10)
                publisher.disconnect()
                publisher.loop_stop()
                alice = await login(base)
                events = await wait_messages(alice, room, lambda e: len(bridged(e)) == 1)
                assert bridged(events)[0]["content"]["body"] == "vault 1"
                await alice.close()
            # Without the right password the broker refuses, and the gateway still runs (and retries).
            wrong = {k: v for k, v in secure.items() if k != "password_file"} | {"password": "wrong"}
            config = env.config(brokers=[wrong], inbound=[{"name": "secure", "topic": "secure/+", "room": room}])
            async with gateway(tmp_path, config) as (base, bridge):
                # The worker reports the broker's refusal (and keeps retrying).
                await until(lambda: "refused the connection" in caplog.text)
                assert not bridge.sessions["local"].link.connected.is_set()

        asyncio.run(scenario())
