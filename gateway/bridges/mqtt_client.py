"""One broker connection: paho-mqtt's network thread on one side, the event loop on the other.

paho runs its own thread (``loop_start``); its callbacks only append to a
queue and, at most once until the loop has drained it, schedule
:meth:`BrokerLink._drain` with ``call_soon_threadsafe``. Everything else —
routing, acknowledging, publishing — happens on the event loop's thread,
in the order the callbacks fired.

* MQTT 5 first (clean start off, a session expiry, a receive maximum);
  when the broker answers "unsupported protocol version" and the broker's
  ``protocol`` is ``auto``, the link starts again with MQTT 3.1.1 and clean
  session off.
* Manual acknowledgements (``manual_ack=True``): the bridge calls
  :meth:`ack` once a message's event is committed. ``net_gen`` counts
  connects and disconnects in the network thread; a ticket taken on one
  connection is never acknowledged on another, where the same packet id
  may name a different message.
* Subscriptions are made in the network thread right after CONNACK, QoS 1,
  with No Local and "retained only for a new subscription" on MQTT 5.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from lowband.gateway.bridges.mqtt_config import BrokerConfig

log = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = 132  # CONNACK reason "Unsupported Protocol Version" (0x84; 3.1.1 return code 1)
ORIGIN_PROPERTY = "lowband-origin"


class LinkHandler(Protocol):
    """What a link reports to (called on the event loop's thread)."""

    def link_connected(self, link: BrokerLink, gen: int, session_present: bool) -> None: ...

    def link_disconnected(self, link: BrokerLink, reason: str) -> None: ...

    def link_messages(self, link: BrokerLink, batch: list[tuple[int, mqtt.MQTTMessage]]) -> None: ...

    def link_subscribed(self, link: BrokerLink, filters: set[str]) -> None: ...

    def link_barrier(self, link: BrokerLink, gen: int, mid: int) -> None: ...


class BrokerLink:
    """A paho client for one ``[[mqtt.brokers]]`` entry."""

    def __init__(
        self,
        config: BrokerConfig,
        handler: LinkHandler,
        *,
        will: tuple[str, bytes],
        filters: dict[str, int],
        known_filters: set[str],
        origin: str,
        barrier_topic: str,
    ) -> None:
        self.config = config
        self.name = config.name
        self.handler = handler
        self.will = will
        self.filters = dict(filters)
        self.known_filters = set(known_filters)
        self.origin = origin
        self.barrier_topic = barrier_topic
        self.protocol = mqtt.MQTTv311 if config.protocol == "3.1.1" else mqtt.MQTTv5
        self.net_gen = 0  # written by the network thread only
        self.connected = asyncio.Event()
        self.session_present = False
        self.client: mqtt.Client | None = None
        self._loop = asyncio.get_running_loop()
        self._items: deque[tuple[Any, ...]] = deque()
        self._scheduled = False
        self._publishes: dict[int, asyncio.Future[None]] = {}
        self._stopping = False
        self._restart: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Create the paho client and start its network thread (connects in the background)."""
        self.client = self._make_client()
        props = None
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.config.session_expiry_s
            props.ReceiveMaximum = self.config.receive_maximum
            self.client.connect_async(self.config.host, self.config.port, self.config.keepalive_s,
                                      clean_start=False, properties=props)  # fmt: skip
        else:
            self.client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self.client.loop_start()

    def _make_client(self) -> mqtt.Client:
        kwargs: dict[str, Any] = {
            "callback_api_version": mqtt.CallbackAPIVersion.VERSION2,
            "client_id": self.config.client_id,
            "protocol": self.protocol,
            "manual_ack": True,
            "reconnect_on_failure": True,
        }
        if self.protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = False
        client = mqtt.Client(**kwargs)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.reconnect_delay_set(self.config.reconnect_min_s, self.config.reconnect_max_s)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.will_set(self.will[0], self.will[1], qos=1, retain=True)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self.config.password)
        if self.config.tls:
            client.tls_set(ca_certs=self.config.ca_file, certfile=self.config.cert_file, keyfile=self.config.key_file,
                           cert_reqs=ssl.CERT_REQUIRED)  # fmt: skip
            if self.config.tls_insecure:
                client.tls_insecure_set(True)
        return client

    async def stop(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
        client, self.client = self.client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        self.connected.clear()
        self._fail_publishes(ConnectionError("the bridge is stopping"))

    async def _fall_back(self) -> None:
        """Start again with MQTT 3.1.1 (the broker refused MQTT 5)."""
        old, self.client = self.client, None
        if old is not None:
            old.disconnect()
            await asyncio.to_thread(old.loop_stop)
        self._fail_publishes(ConnectionError("reconnecting with MQTT 3.1.1"))
        if self._stopping:
            return
        log.warning("mqtt broker %s does not speak MQTT 5; using MQTT 3.1.1", self.name)
        self.protocol = mqtt.MQTTv311
        self.start()

    # ------------------------------------------------------------ loop side

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> asyncio.Future[None]:
        """Publish; the future completes on PUBACK (QoS 1) or once written (QoS 0).

        paho keeps unacknowledged QoS 1 publishes and sends them again after
        a reconnect; the future fails only if the link is stopped or
        replaced first.
        """
        future: asyncio.Future[None] = self._loop.create_future()
        client = self.client
        if client is None:
            future.set_exception(ConnectionError("not connected"))
            return future
        properties = None
        if self.protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = [(ORIGIN_PROPERTY, self.origin)]
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        queued = info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0  # paho sends it after reconnecting
        if info.rc != mqtt.MQTT_ERR_SUCCESS and not queued:
            future.set_exception(ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}"))
            return future
        # The PUBACK is handled on this thread after this returns (call_soon_threadsafe), so no race.
        self._publishes[info.mid] = future
        return future

    def ack(self, gen: int, mid: int) -> bool:
        """Send the PUBACK of ``mid`` if the connection it arrived on is still the current one."""
        client = self.client
        if client is None or gen != self.net_gen:
            return False
        client.ack(mid, 1)
        return True

    def barrier(self) -> tuple[int, int] | None:
        """Send a packet the broker must answer: (connection gen, mid), or None when not connected.

        An UNSUBSCRIBE of a filter the bridge never subscribes to has no
        effect but an UNSUBACK, and a broker answers a connection's packets
        in order: when it arrives (``link_barrier``), every PUBACK written
        before on that connection was processed.
        """
        client = self.client
        gen = self.net_gen
        if client is None or not self.connected.is_set():
            return None
        rc, mid = client.unsubscribe(self.barrier_topic)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return None
        return gen, mid

    def _fail_publishes(self, exc: Exception) -> None:
        publishes, self._publishes = self._publishes, {}
        for future in publishes.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()

    def _drain(self) -> None:
        self._scheduled = False
        batch: list[tuple[int, mqtt.MQTTMessage]] = []
        items = self._items
        while items:
            item = items.popleft()
            if item[0] == "msg":
                batch.append((item[1], item[2]))
                continue
            if batch:
                self._deliver(batch)
                batch = []
            self._handle(item)
        if batch:
            self._deliver(batch)

    def _deliver(self, batch: list[tuple[int, mqtt.MQTTMessage]]) -> None:
        try:
            self.handler.link_messages(self, batch)
        except Exception:  # a bug must not stop the link; the messages stay unacknowledged
            log.exception("mqtt broker %s: handling %d messages failed", self.name, len(batch))

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        try:
            if kind == "connect":
                self.session_present = item[2]
                self.connected.set()
                self.handler.link_connected(self, item[1], item[2])
            elif kind == "disconnect":
                self.connected.clear()
                self.handler.link_disconnected(self, item[1])
            elif kind == "puback":
                future = self._publishes.pop(item[1], None)
                if future is not None and not future.done():
                    if item[2]:
                        future.set_exception(ConnectionError(f"broker refused the publish: {item[2]}"))
                        future.exception()
                    else:
                        future.set_result(None)
            elif kind == "unsuback":
                self.handler.link_barrier(self, item[1], item[2])
            elif kind == "subscribed":
                self.known_filters = item[1]
                self.handler.link_subscribed(self, item[1])
            elif kind == "fallback" and self._restart is None:
                self._restart = asyncio.ensure_future(self._fall_back())
        except Exception:
            log.exception("mqtt broker %s: handling %s failed", self.name, kind)

    # ------------------------------------------------------- network thread

    def _push(self, item: tuple[Any, ...]) -> None:
        self._items.append(item)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: the gateway is gone
                pass

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        try:
            if reason.is_failure:
                downgrade = self.protocol == mqtt.MQTTv5 and self.config.protocol == "auto"
                if reason.value == _UNSUPPORTED_PROTOCOL and downgrade:
                    self._push(("fallback",))
                else:
                    log.warning("mqtt broker %s refused the connection: %s", self.name, reason)
                return
            self.net_gen += 1
            session_present = bool(flags.session_present)
            self._subscribe(client, session_present)
            self._push(("connect", self.net_gen, session_present))
            version = "5" if self.protocol == mqtt.MQTTv5 else "3.1.1"
            log.info("mqtt broker %s connected (MQTT %s, session %s)", self.name, version,
                     "resumed" if session_present else "new")  # fmt: skip
        except Exception:
            log.exception("mqtt broker %s: on_connect failed", self.name)

    def _subscribe(self, client: mqtt.Client, session_present: bool) -> None:
        current = set(self.filters)
        stale = sorted(self.known_filters - current) if session_present else []
        if stale:
            client.unsubscribe(stale)
        if self.protocol == mqtt.MQTTv5:
            # Retain handling 1: retained messages only for a subscription the session did not have.
            wanted = [(f, SubscribeOptions(qos=q, noLocal=True, retainAsPublished=False,
                                           retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB))
                      for f, q in sorted(self.filters.items())]  # fmt: skip
        else:
            # MQTT 3.1.1 re-sends retained messages on every SUBSCRIBE: skip what the session holds.
            known = self.known_filters if session_present else set()
            wanted = [(f, q) for f, q in sorted(self.filters.items()) if f not in known]
        if wanted:
            client.subscribe(wanted)
        self._push(("subscribed", current))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.net_gen += 1
        self._push(("disconnect", str(reason)))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._push(("msg", self.net_gen, message))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        failed = str(reason) if reason is not None and getattr(reason, "is_failure", False) else ""
        self._push(("puback", mid, failed))

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self._push(("unsuback", self.net_gen, mid))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        for reason in reasons:
            if getattr(reason, "is_failure", False):
                log.error("mqtt broker %s refused a subscription: %s", self.name, reason)
