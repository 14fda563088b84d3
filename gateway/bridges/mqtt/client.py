"""One broker connection: a worker process running paho-mqtt on one side, the event loop on the other.

The worker (``worker.py``) owns the paho client and its network loop, so
decoding MQTT packets does not compete with the gateway's own work for the
interpreter. Its reports arrive in batches on a socket pair and are handled
on the event loop's thread in the order the worker's callbacks fired;
commands (acknowledge, publish, barrier) go back in one frame per loop turn.

* MQTT 5 first (clean start off, a session expiry, a receive maximum);
  when the broker answers "unsupported protocol version" and the broker's
  ``protocol`` is ``auto``, the link starts a new worker with MQTT 3.1.1
  and clean session off.
* Manual acknowledgements: the bridge calls :meth:`ack` once a message's
  event is committed. ``net_gen`` counts connects and disconnects; a ticket
  taken on one connection is never acknowledged on another, where the same
  packet id may name a different message (the worker checks again).
* Subscriptions are made by the worker right after CONNACK, QoS 1, with No
  Local and "retained only for a new subscription" on MQTT 5.
* A worker that dies is a disconnect: a new one is started after
  ``reconnect_min_s`` and resumes the broker session; everything not
  acknowledged is delivered again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from lowband.gateway.aio import cancel_and_wait
from lowband.gateway.bridges.mqtt.config import BrokerConfig
from lowband.gateway.bridges.mqtt.worker import ORIGIN_PROPERTY, decode_frame, encode_frame, frame_size

log = logging.getLogger(__name__)

__all__ = ["ORIGIN_PROPERTY", "BrokerLink", "LinkHandler", "Received"]

_STOP_WAIT_S = 5.0


@dataclass(slots=True)
class Received:
    """One PUBLISH as the worker reported it (the attributes of paho's MQTTMessage the bridge reads)."""

    mid: int
    qos: int
    retain: bool
    dup: bool
    topic: str | None  # None: the topic name is not UTF-8 (a broken publisher; the bridge refuses it)
    payload: bytes
    user_properties: dict[str, str]


class LinkHandler(Protocol):
    """What a link reports to (called on the event loop's thread)."""

    def link_connected(self, link: BrokerLink, gen: int, session_present: bool) -> None: ...

    def link_disconnected(self, link: BrokerLink, reason: str) -> None: ...

    def link_messages(self, link: BrokerLink, batch: list[tuple[int, Received]]) -> None: ...

    def link_subscribed(self, link: BrokerLink, filters: set[str]) -> None: ...

    def link_barrier(self, link: BrokerLink, gen: int, mid: int) -> None: ...


class BrokerLink:
    """The gateway's side of one ``[[mqtt.brokers]]`` entry and its worker process."""

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
        self.net_gen = 0  # the worker's count of connects and disconnects, as last reported
        self.connected = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._publishes: dict[int, asyncio.Future[None]] = {}
        self._next_id = 0
        self._commands: list[tuple[Any, ...]] = []
        self._flush_scheduled = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker (it connects in the background, and again after any failure)."""
        self._runner = asyncio.create_task(self._run(), name=f"mqtt-link-{self.name}")

    async def stop(self) -> None:
        """Disconnect cleanly and end the worker."""
        self._stopping = True
        if self._writer is not None and self._proc is not None and self._proc.poll() is None:
            self._send(("stop",))
            self._flush()
            await asyncio.to_thread(_wait, self._proc, _STOP_WAIT_S)
        if self._runner is not None:
            await cancel_and_wait(self._runner)
        self.connected.clear()
        self._fail_publishes(ConnectionError("the bridge is stopping"))

    async def _run(self) -> None:
        """Run workers one after another until stopped."""
        while not self._stopping:
            fallback = False
            try:
                fallback = await self._run_worker()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mqtt broker %s: the worker failed", self.name)
            finally:
                self._end_worker()
            if self._stopping:
                return
            # What is still queued belonged to the worker that ended: acknowledgements and barriers of
            # its connection, and publishes whose futures fail here (their owners publish them again).
            self._commands.clear()
            self.net_gen += 1
            if fallback:
                log.warning("mqtt broker %s does not speak MQTT 5; using MQTT 3.1.1", self.name)
                self.protocol = mqtt.MQTTv311
                self._fail_publishes(ConnectionError("reconnecting with MQTT 3.1.1"))
                continue
            self._fail_publishes(ConnectionError("the MQTT worker process ended"))
            if self.connected.is_set():
                self.connected.clear()
                self.handler.link_disconnected(self, "the worker process ended")
            await asyncio.sleep(self.config.reconnect_min_s)

    async def _run_worker(self) -> bool:
        """One worker process, until its socket closes; True when it asks for MQTT 3.1.1."""
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "lowband.gateway.bridges.mqtt.worker", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._writer.write(encode_frame([self._settings()]))
        self._flush()  # commands queued while no worker ran
        while True:
            try:
                size = frame_size(await reader.readexactly(4))
                items = decode_frame(await reader.readexactly(size))
            except (asyncio.IncompleteReadError, ConnectionError):
                return False
            if self._handle(items):
                return True

    def _end_worker(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()

    def _settings(self) -> dict[str, Any]:
        """The worker's first frame: the broker's config, and what this link adds to it."""
        return {
            **asdict(self.config),
            "protocol": "3.1.1" if self.protocol == mqtt.MQTTv311 else "5", "auto": self.config.protocol == "auto",
            "will_topic": self.will[0], "will_payload": self.will[1], "filters": self.filters,
            "known_filters": sorted(self.known_filters), "origin": self.origin, "barrier_topic": self.barrier_topic,
            "gen": self.net_gen,
        }  # fmt: skip

    # ------------------------------------------------------------ loop side

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> asyncio.Future[None]:
        """Publish; the future completes on PUBACK (QoS 1) or once written (QoS 0).

        paho keeps unacknowledged QoS 1 publishes and sends them again after
        a reconnect; the future fails if the link is stopped, or its worker
        replaced, first. A failure is marked as retrieved, so a caller that
        does not care about the outcome may drop the future.
        """
        future: asyncio.Future[None] = self._loop.create_future()
        if self._stopping:
            future.set_exception(ConnectionError("not connected"))
            future.exception()
            return future
        self._next_id += 1
        self._publishes[self._next_id] = future
        self._send(("publish", self._next_id, topic, bytes(payload), qos, bool(retain)))
        return future

    def ack(self, gen: int, mid: int) -> bool:
        """Send the PUBACK of ``mid`` if the connection it arrived on is still the current one."""
        if self._writer is None or gen != self.net_gen:
            return False
        self._send(("ack", gen, mid))
        return True

    def barrier(self) -> tuple[int, int] | None:
        """Send a packet the broker must answer: (connection gen, id), or None when not connected.

        An UNSUBSCRIBE of a filter the bridge never subscribes to has no
        effect but an UNSUBACK, and a broker answers a connection's packets
        in order: when it arrives (``link_barrier``), every PUBACK written
        before on that connection was processed.
        """
        if self._writer is None or not self.connected.is_set():
            return None
        self._next_id += 1
        self._send(("barrier", self._next_id))
        return self.net_gen, self._next_id

    def _send(self, command: tuple[Any, ...]) -> None:
        self._commands.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._writer is None or not self._commands:
            return  # kept for the next worker
        commands, self._commands = self._commands, []
        self._writer.write(encode_frame(commands))

    def _fail_publishes(self, exc: Exception) -> None:
        publishes, self._publishes = self._publishes, {}
        for future in publishes.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()

    def _handle(self, items: Iterable[tuple[Any, ...]]) -> bool:
        """Dispatch a worker's batch; True when it asks for MQTT 3.1.1."""
        batch: list[tuple[int, Received]] = []
        for item in items:
            if item[0] == "msg":
                _, gen, mid, qos, retain, dup, topic, payload, pairs = item
                batch.append((gen, Received(mid, qos, retain, dup, topic, payload, dict(pairs) if pairs else {})))
                continue
            if batch:
                self._deliver(batch)
                batch = []
            if item[0] == "fallback":
                return True
            self._report(item)
        if batch:
            self._deliver(batch)
        return False

    def _deliver(self, batch: list[tuple[int, Received]]) -> None:
        try:
            self.handler.link_messages(self, batch)
        except Exception:  # a bug must not stop the link; the messages stay unacknowledged
            log.exception("mqtt broker %s: handling %d messages failed", self.name, len(batch))

    def _report(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        try:
            if kind == "connect":
                self.net_gen = item[1]
                self.connected.set()
                self.handler.link_connected(self, item[1], item[2])
            elif kind == "disconnect":
                self.net_gen += 1
                self.connected.clear()
                if not self._stopping:
                    self.handler.link_disconnected(self, item[1])
            elif kind == "published":
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
                self.known_filters = set(item[1])
                self.handler.link_subscribed(self, self.known_filters)
            elif kind == "log":
                log.log(item[1], "%s", item[2])
        except Exception:
            log.exception("mqtt broker %s: handling %s failed", self.name, kind)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
