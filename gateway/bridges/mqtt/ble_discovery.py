"""Home Assistant discovery for BLE sensors, published by the MQTT bridge.

The BLE component (``gateway/ble/``) and the bridge are siblings that do not
import each other: the app hands a :class:`BleDiscovery` to the component as
its sensor observer (``gateway/app.py``), and the component calls it with
plain values only. For each BLE sensor, on every broker of the bridge:

* ``<base>/ble/<name>/state`` — retained JSON object of the sensor's last
  reading, one key per SenML record name (``{"temperature": 21.5, ...}``);
* ``<base>/ble/<name>/availability`` — retained ``online`` / ``offline``:
  ``online`` with its first reading and when it is heard again, ``offline``
  when the component says it went silent (its interval × the silence factor);
* one discovery config per reading name, the first time that reading is
  seen (``discovery.reading_config``: ``sensor`` or ``binary_sensor``, SenML
  units mapped to Home Assistant's), whose availability is *both* the
  gateway's status topic and the sensor's topic (``availability_mode: all``),
  so an entity is unavailable when the gateway is gone or the sensor is
  silent. The device names the sensor's Bluetooth address as a
  ``connection``, so Home Assistant can match it to the same sensor seen by
  its own Bluetooth integration.

``<base>`` is the bridge's status topic without its last level
(``lowband/{server}/status`` → ``lowband/{server}``). Discovery configs and
the availability are kept in the bridge's discovery table, so the bridge
publishes them again on every (re)connection; the state is retained by the
broker and replaced by the next reading. Nothing is published when the
``[mqtt]`` section turns ``discovery`` off.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from lowband.gateway.bridges.mqtt import discovery
from lowband.gateway.bridges.mqtt.payload import reading_text

if TYPE_CHECKING:
    from lowband.gateway.bridges.mqtt.bridge import MqttBridge

log = logging.getLogger(__name__)


def ble_base_topic(status_topic: str) -> str:
    """The topic under which BLE sensors are published: the status topic without its last level."""
    parent, slash, _ = status_topic.rpartition("/")
    return parent if slash and parent else status_topic


class BleDiscovery:
    """The MQTT bridge's side of the BLE sensor observer interface (``ble_sensor``, ``ble_reading``, ``ble_presence``).

    Every method is called from the event loop, returns at once (publishes are
    queued to the broker links) and never raises.
    """

    def __init__(self, bridge: MqttBridge) -> None:
        self.bridge = bridge
        self.base = ble_base_topic(bridge.config.status_topic) + "/ble"
        self._addresses: dict[str, str] = {}
        self._online: dict[str, bool] = {}
        self._announced: set[tuple[str, str]] = set()
        self._configs: dict[str, set[str]] = {}  # sensor → discovery config topics published in this run
        self._tasks: set[asyncio.Future[None]] = set()
        self.published = 0  # messages handed to the broker links (for tests and stats)

    @property
    def enabled(self) -> bool:
        """Whether the bridge's config asks for Home Assistant discovery."""
        return bool(self.bridge.config.discovery)

    def state_topic(self, name: str) -> str:
        """Where the sensor's last reading is published."""
        return f"{self.base}/{discovery.discovery_id(name)}/state"

    def availability_topic(self, name: str) -> str:
        """Where the sensor's ``online`` / ``offline`` is published."""
        return f"{self.base}/{discovery.discovery_id(name)}/availability"

    # ---------------------------------------------------------- observer

    def ble_sensor(self, name: str, address: str, user_id: str) -> None:
        """A configured sensor (told once when the observer is added, and for each sensor added later)."""
        self._addresses[name] = address

    def ble_reading(self, name: str, senml: list[dict[str, Any]]) -> None:
        """A reading whose room event is committed: publish its state, announce new readings, mark it online."""
        if not self.enabled:
            return
        try:
            self._reading(name, senml)
        except Exception:  # an observer must never fail the component
            log.exception("ble discovery: cannot publish the reading of %s", name)

    def ble_removed(self, name: str) -> None:
        """The sensor was removed (``lowband ble remove``): its entities leave Home Assistant.

        Empty retained messages clear its discovery configs, state and
        availability on the brokers (and replace them in the discovery table,
        so a broker that still holds them is cleared on the next connection).
        """
        if not self.enabled:
            return
        try:
            state_topic = self.state_topic(name)
            configs = self._configs.pop(name, set()) | self._config_topics(state_topic)
            for topic in [*sorted(configs), state_topic, self.availability_topic(name)]:
                self._publish(topic, b"", store=topic != state_topic)
            self._announced = {k for k in self._announced if k[0] != name}
            self._online.pop(name, None)
            self._addresses.pop(name, None)
        except Exception:
            log.exception("ble discovery: cannot clear the entities of %s", name)

    def ble_presence(self, name: str, online: bool) -> None:
        """The sensor went silent (False) or was heard again (True)."""
        if not self.enabled:
            return
        try:
            self._availability(name, online)
        except Exception:
            log.exception("ble discovery: cannot publish the availability of %s", name)

    # ---------------------------------------------------------- internals

    def _reading(self, name: str, senml: list[dict[str, Any]]) -> None:
        state: dict[str, str] = {}  # key → the value as exact JSON text (a SenML "v" is scaled by "scale_")
        for record in senml:
            if not isinstance(record, dict) or not isinstance(record.get("n"), str):
                continue
            kind = discovery.record_kind(record)
            text = reading_text(record)
            if kind is None or text is None:
                continue
            key = discovery.discovery_id(record["n"])
            state[key] = text
            if (name, key) not in self._announced:
                self._announced.add((name, key))
                self._announce(name, key, str(record.get("u", "")), kind)
        if not state:
            return
        if not self._online.get(name, False):
            self._availability(name, True)
        payload = "{" + ",".join(f"{json.dumps(key)}:{text}" for key, text in state.items()) + "}"
        self._publish(self.state_topic(name), payload.encode(), store=False)

    def _announce(self, name: str, key: str, unit: str, kind: str) -> None:
        """Publish the discovery config of one reading of sensor ``name``."""
        origin = self.bridge.origin
        device = f"ble_{name}"
        topic, payload = discovery.reading_config(origin, device=device, device_name=f"BLE {name}", reading=key,
                                                  state_topic=self.state_topic(name), json_path=key, unit=unit,
                                                  kind=kind)  # fmt: skip
        config = json.loads(payload)
        for single in ("availability_topic", "payload_available", "payload_not_available"):
            config.pop(single, None)
        config["availability"] = [
            {"topic": origin.status_topic, "payload_available": discovery.ONLINE,
             "payload_not_available": discovery.OFFLINE},
            {"topic": self.availability_topic(name), "payload_available": discovery.ONLINE,
             "payload_not_available": discovery.OFFLINE},
        ]  # fmt: skip
        config["availability_mode"] = "all"
        address = self._addresses.get(name)
        if address:
            config["device"]["connections"] = [["bluetooth", address.lower()]]
        config["device"]["model"] = "BLE sensor"
        self._configs.setdefault(name, set()).add(topic)
        self._publish(topic, json.dumps(config, ensure_ascii=False, separators=(",", ":")).encode(), store=True)

    def _config_topics(self, state_topic: str) -> set[str]:
        """The stored discovery configs (announced before this run too) whose state topic is ``state_topic``."""
        topics: set[str] = set()
        for broker in self.bridge.sessions:
            for topic, payload in self.bridge.tables.discovery(broker):
                if not topic.endswith("/config") or not payload:
                    continue
                try:
                    config = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(config, dict) and config.get("state_topic") == state_topic:
                    topics.add(topic)
        return topics

    def _availability(self, name: str, online: bool) -> None:
        self._online[name] = online
        payload = (discovery.ONLINE if online else discovery.OFFLINE).encode()
        self._publish(self.availability_topic(name), payload, store=True)

    def _publish(self, topic: str, payload: bytes, *, store: bool) -> None:
        """Retained QoS 1 on every broker; ``store`` keeps it in the discovery table (published again on connect)."""
        for broker, session in self.bridge.sessions.items():
            link = session.link
            if link.connected.is_set():
                link.publish(topic, payload, 1, True)
                self.published += 1
            if store:
                self._background(self.bridge.tables.add_discovery(broker, topic, payload))

    def _background(self, awaitable: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("ble discovery: storing a retained message failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
