"""Home Assistant discovery of BLE sensors through the MQTT bridge, against the real Mosquitto on 127.0.0.1:1883.

Each test has a topic prefix, client IDs and a discovery prefix of its own
and removes its retained messages and broker sessions afterwards.
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
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
import pytest
from harness import gateway_in_loop

from lowband.gateway.bridges.mqtt.ble_discovery import BleDiscovery, ble_base_topic

BROKER_PORT = 1883


def _broker_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", BROKER_PORT), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _broker_up(), reason="no Mosquitto on 127.0.0.1:1883")

_probes: list[Probe] = []


@pytest.fixture(autouse=True)
def _close_probes() -> Iterator[None]:
    yield
    while _probes:
        _probes[-1].close()


class Probe:
    """A paho client in its own thread recording what it receives (closed after the test at the latest)."""

    def __init__(self) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self.client.on_message = self._on_message
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        _probes.append(self)
        self.client.connect("127.0.0.1", BROKER_PORT, 30, clean_start=True)
        self.client.loop_start()
        assert connected.wait(10), "probe could not connect"

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, 1)
        assert done.wait(10)

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def received(self, topic: str | None = None) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    async def wait_for(self, predicate: Callable[[list[mqtt.MQTTMessage]], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.received()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received {[(m.topic, m.payload[:80]) for m in self.received()]}")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        if self in _probes:
            _probes.remove(self)
        self.client.disconnect()
        self.client.loop_stop()


class Env:
    """One test's names: topic prefix, broker client ID; cleans the broker up afterwards."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:10]
        self.prefix = f"lbtest/{self.id}"
        self.client_id = f"lbtest-{self.id}-local"

    def mqtt(self, **top: Any) -> dict[str, Any]:
        broker = {"name": "local", "host": "127.0.0.1", "port": BROKER_PORT, "client_id": self.client_id,
                  "session_expiry_s": 60, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}  # fmt: skip
        # [mqtt] needs one mapping at least; this one is never published to.
        inbound = [{"name": "unused", "topic": f"{self.prefix}/in/+", "room": f"#ble-{self.id}:localhost"}]
        return {"brokers": [broker], "inbound": inbound, "status_topic": f"{self.prefix}/status",
                "stats_topic": f"{self.prefix}/stats", "discovery_prefix": f"{self.prefix}/ha", "stats_interval_s": 0,
                **top}  # fmt: skip

    def cleanup(self) -> None:
        # The bridge's session, then every retained message under the prefix.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        with contextlib.suppress(OSError):
            client.connect("127.0.0.1", BROKER_PORT, 30, clean_start=True)
            client.loop_start()
            time.sleep(0.1)
            client.disconnect()
            client.loop_stop()
        probe = Probe()
        probe.subscribe(self.prefix + "/#")
        time.sleep(0.3)
        for message in probe.received():
            if message.retain and message.payload:
                probe.publish(message.topic, b"", retain=True)
        probe.close()


@pytest.fixture
def env() -> Iterator[Env]:
    names = Env()
    yield names
    names.cleanup()


@contextlib.asynccontextmanager
async def bridge_gateway(tmp_path: Path, mqtt_config: dict[str, Any], **extra: Any) -> AsyncIterator[Any]:
    """An in-loop gateway with the ``[mqtt]`` section (and ``extra`` components); yields its Services."""
    ready: list[Any] = []
    components = {"mqtt": mqtt_config, **extra}
    async with gateway_in_loop(tmp_path, on_ready=ready.append, components=components):
        yield ready[0]


def check_ble_config(topic: str, payload: bytes, prefix: str) -> dict[str, Any]:
    """A BLE sensor's discovery config read the way Home Assistant reads it (single-component discovery)."""
    parts = topic[len(prefix) + 1 :].split("/")
    assert topic.startswith(prefix + "/") and len(parts) == 4 and parts[-1] == "config", topic
    assert parts[0] in ("sensor", "binary_sensor")
    config = json.loads(payload)
    allowed = {"name", "unique_id", "object_id", "state_topic", "value_template", "unit_of_measurement",
               "device_class", "state_class", "availability", "availability_mode", "device", "origin",
               "payload_on", "payload_off"}  # fmt: skip
    assert set(config) <= allowed, set(config) - allowed
    assert config["availability_mode"] == "all"
    for entry in config["availability"]:
        assert set(entry) == {"topic", "payload_available", "payload_not_available"}
        assert (entry["payload_available"], entry["payload_not_available"]) == ("online", "offline")
    assert set(config["device"]) <= {"identifiers", "name", "via_device", "connections", "model"}
    return config


def test_base_topic_is_the_status_topic_without_its_last_level() -> None:
    assert ble_base_topic("lowband/gw.example/status") == "lowband/gw.example"
    assert ble_base_topic("status") == "status"
    assert ble_base_topic("/status") == "/status"


def test_readings_and_presence_become_discovery_state_and_availability(tmp_path: Path, env: Env) -> None:
    """The observer half alone, on a real bridge: what Home Assistant needs appears on the broker, retained."""
    p = env.prefix

    async def scenario() -> None:
        probe = Probe()
        probe.subscribe(f"{p}/#")
        async with bridge_gateway(tmp_path, env.mqtt()) as services:
            bridge = services.components["mqtt"]
            ha = BleDiscovery(bridge)
            ha.ble_sensor("kitchen", "A4:C1:38:00:11:22", "@ble_kitchen:localhost")
            # As the telemetry events carry them: integer mantissas with a decimal "scale_".
            senml = [{"n": "temperature", "bt": 1700000000, "u": "Cel", "v": 2153, "scale_": -2},
                     {"n": "humidity", "u": "%RH", "v": 4025, "scale_": -2}, {"n": "door", "vb": True}]  # fmt: skip
            ha.ble_reading("kitchen", senml)
            state_topic = f"{p}/ble/kitchen/state"
            avail_topic = f"{p}/ble/kitchen/availability"
            await probe.wait_for(lambda got: any(m.topic == state_topic for m in got)
                                 and sum(m.topic.endswith("/config") and "kitchen" in m.topic for m in got) == 3)  # fmt: skip
            configs = {m.topic: check_ble_config(m.topic, m.payload, f"{p}/ha")
                       for m in probe.received() if m.topic.startswith(f"{p}/ha/") and "kitchen" in m.topic}  # fmt: skip
            temperature = configs[f"{p}/ha/sensor/lowband_localhost/ble_kitchen_temperature/config"]
            assert temperature["unit_of_measurement"] == "°C" and temperature["device_class"] == "temperature"
            assert temperature["state_topic"] == state_topic
            assert temperature["value_template"] == '{{ value_json["temperature"] }}'
            assert [a["topic"] for a in temperature["availability"]] == [f"{p}/status", avail_topic]
            assert temperature["device"]["connections"] == [["bluetooth", "a4:c1:38:00:11:22"]]
            assert configs[f"{p}/ha/binary_sensor/lowband_localhost/ble_kitchen_door/config"]["payload_on"] == "ON"
            assert json.loads(probe.received(state_topic)[-1].payload) == {"temperature": 21.53, "humidity": 40.25,
                                                                           "door": True}  # fmt: skip
            assert [m.payload for m in probe.received(avail_topic)] == [b"online"]
            # A second reading announces nothing again; silence and return follow the sensor's presence.
            ha.ble_reading("kitchen", [{"n": "temperature", "u": "Cel", "v": 22}])
            ha.ble_presence("kitchen", False)
            await probe.wait_for(lambda got: [m.payload for m in got if m.topic == avail_topic] == [b"online", b"offline"])
            ha.ble_presence("kitchen", True)
            await probe.wait_for(lambda got: len([m for m in got if m.topic == avail_topic]) == 3)
            assert sum(m.topic.endswith("/config") and "kitchen" in m.topic for m in probe.received()) == 3
            assert json.loads(probe.received(state_topic)[-1].payload) == {"temperature": 22}
        # Retained: a client that subscribes later (as Home Assistant after a restart) still gets them all.
        late = Probe()
        late.subscribe(f"{p}/#")
        await late.wait_for(lambda got: {m.topic for m in got} >= {state_topic, avail_topic, *configs})
        assert [m.payload for m in late.received(avail_topic)] == [b"online"]
        assert [m.payload for m in late.received(f"{p}/status")] == [b"offline"]  # the gateway stopped

    asyncio.run(scenario())


def test_a_removed_sensor_leaves_home_assistant(tmp_path: Path, env: Env) -> None:
    """Its retained configs, state and availability are cleared, also those announced before a restart."""
    p = env.prefix
    kitchen = [{"n": "temperature", "u": "Cel", "v": 215, "scale_": -1}, {"n": "door", "vb": False}]

    async def scenario() -> None:
        async with bridge_gateway(tmp_path, env.mqtt()) as services:
            ha = BleDiscovery(services.components["mqtt"])
            ha.ble_reading("kitchen", kitchen)
            ha.ble_reading("porch", [{"n": "temperature", "u": "Cel", "v": 180, "scale_": -1}])
            await asyncio.sleep(0.5)  # the configs reach the bridge's table
        probe = Probe()
        probe.subscribe(f"{p}/#")
        await probe.wait_for(lambda got: sum(m.topic.endswith("/config") and "/ble_" in m.topic for m in got) == 3)
        async with bridge_gateway(tmp_path, env.mqtt()) as services:  # a new run: only the table remembers
            ha = BleDiscovery(services.components["mqtt"])
            ha.ble_removed("kitchen")
            await probe.wait_for(lambda got: sum(m.topic.endswith("/config") and "ble_kitchen" in m.topic
                                                 and m.payload == b"" for m in got) == 2)  # fmt: skip
        late = Probe()
        late.subscribe(f"{p}/#")
        await late.wait_for(lambda got: any(m.topic == f"{p}/status" for m in got))
        await asyncio.sleep(0.3)
        left = {m.topic for m in late.received() if m.payload}
        assert not [t for t in left if "kitchen" in t], left
        assert {f"{p}/ble/porch/state", f"{p}/ble/porch/availability",
                f"{p}/ha/sensor/lowband_localhost/ble_porch_temperature/config"} <= left  # fmt: skip

    asyncio.run(scenario())


def test_nothing_is_published_when_discovery_is_off(tmp_path: Path, env: Env) -> None:
    p = env.prefix

    async def scenario() -> None:
        probe = Probe()
        probe.subscribe(f"{p}/#")
        async with bridge_gateway(tmp_path, env.mqtt(discovery=False)) as services:
            ha = BleDiscovery(services.components["mqtt"])
            ha.ble_reading("kitchen", [{"n": "temperature", "u": "Cel", "v": 215, "scale_": -1}])
            ha.ble_presence("kitchen", False)
            await probe.wait_for(lambda got: any(m.topic == f"{p}/status" for m in got))
            await asyncio.sleep(0.5)
        assert not [m.topic for m in probe.received() if "/ble/" in m.topic or "/ha/" in m.topic]
        assert ha.published == 0

    asyncio.run(scenario())


class SimScanner:
    """No radio: the test calls ``on_advertisement`` where bleak would."""

    instances: ClassVar[list[SimScanner]] = []

    def __init__(self, settings: Any, on_advertisement: Callable[[Any], None]) -> None:
        self.on_advertisement = on_advertisement
        SimScanner.instances.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class NoGatt:
    """No connectable sensors in this test: a link that is never connected."""

    def __init__(self, sensor: Any, settings: Any, component: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def write_command(self, data: bytes) -> None:
        raise RuntimeError("no GATT here")


def test_a_ble_sensor_appears_in_home_assistant_through_the_running_gateway(tmp_path: Path, env: Env) -> None:
    """[ble] and [mqtt] in one gateway: the app connects them; an encrypted BTHome reading becomes a room event,
    then its discovery, state and availability; silence makes it offline, the next packet online again."""
    import lowband.gateway.app as server
    from lowband.gateway.bench.ble import bthome_objects, bthome_service_data
    from lowband.gateway.ble.advert import make_advertisement
    from lowband.gateway.ble.component import start_ble
    from lowband.gateway.ble.registry import BleRegistry, make_sensor
    from lowband.gateway.config import BleConfig
    from lowband.gateway.homeserver.accounts import hash_password

    p = env.prefix
    address, key = "A4:C1:38:8D:18:B2", bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")

    def packet(counter: int, temperature: float) -> Any:
        data = bthome_service_data(bthome_objects(counter, 87, temperature, 45.2), address=address, key=key,
                                   counter=counter)  # fmt: skip
        return make_advertisement(address, rssi=-58, service_data={0xFCD2: data})

    async def ble_component(services: Any) -> Any:
        return await start_ble(services, scanner_factory=SimScanner, gatt_factory=NoGatt)

    async def scenario() -> None:
        probe = Probe()
        probe.subscribe(f"{p}/#")
        saved = list(server.COMPONENTS)
        server.COMPONENTS[:] = [c for c in saved if getattr(c, "name", "") != "ble"] + [ble_component]
        SimScanner.instances.clear()
        try:
            async with bridge_gateway(tmp_path, env.mqtt(), ble=BleConfig(enabled=True)) as services:
                owner = "@owner:localhost"
                await services.store.create_user(owner, hash_password("pw-not-secret"), False, int(time.time() * 1000))
                room = await services.rooms.create_room(owner, {"preset": "public_chat"})
                # interval 1 s: silent after 3 s (silent_factor 3)
                BleRegistry(services.config.data_dir).add(make_sensor("kitchen", address, format="bthome", key=key,
                                                                      rooms=(room,), interval_s=1))  # fmt: skip
                component = services.components["ble"]
                deadline = time.monotonic() + 10
                while "@ble_kitchen:localhost" not in services.rooms.joined_members(room):
                    assert time.monotonic() < deadline, "the sensor did not join its room"
                    await asyncio.sleep(0.05)
                scanner = SimScanner.instances[-1]
                scanner.on_advertisement(packet(1, 21.53))
                scanner.on_advertisement(packet(1, 21.53))  # the same packet again: one event
                state_topic, avail_topic = f"{p}/ble/kitchen/state", f"{p}/ble/kitchen/availability"
                await probe.wait_for(lambda got: any(m.topic == state_topic for m in got))
                assert json.loads(probe.received(state_topic)[-1].payload) == {"battery": 87, "temperature": 21.53,
                                                                               "humidity": 45.2}  # fmt: skip
                assert [m.payload for m in probe.received(avail_topic)] == [b"online"]
                configs = {m.topic: check_ble_config(m.topic, m.payload, f"{p}/ha") for m in probe.received()
                           if m.topic.startswith(f"{p}/ha/sensor/lowband_localhost/ble_kitchen_")}  # fmt: skip
                assert sorted(c["device_class"] for c in configs.values()) == ["battery", "humidity", "temperature"]
                assert all(c["device"]["connections"] == [["bluetooth", address.lower()]] for c in configs.values())
                assert component.stats()["posted"] == 1
                # Silent for interval × silent_factor: offline, and the room is told; the next packet: online.
                await probe.wait_for(lambda got: [m.payload for m in got if m.topic == avail_topic] == [b"online", b"offline"],
                                     timeout=10)  # fmt: skip
                scanner.on_advertisement(packet(2, 21.6))
                await probe.wait_for(lambda got: len([m for m in got if m.topic == avail_topic]) == 3)
                assert probe.received(avail_topic)[-1].payload == b"online"
                await probe.wait_for(lambda got: json.loads(probe.received(state_topic)[-1].payload)["temperature"] == 21.6)
                assert len(configs) == 3 and sum(m.topic.endswith("/config") and "ble_kitchen" in m.topic
                                                 for m in probe.received()) == 3  # fmt: skip
                # `lowband ble remove`: the running gateway picks it up and its entities leave Home Assistant.
                BleRegistry(services.config.data_dir).remove("kitchen")
                await probe.wait_for(lambda got: sorted(m.topic for m in got if "ble_kitchen" in m.topic
                                                        and m.topic.endswith("/config") and m.payload == b"")
                                     == sorted(configs), timeout=10)  # fmt: skip
                assert probe.received(avail_topic)[-1].payload == b""
        finally:
            server.COMPONENTS[:] = saved

    asyncio.run(scenario())
