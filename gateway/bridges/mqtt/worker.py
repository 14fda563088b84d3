"""The MQTT network process: one paho-mqtt client per broker, outside the gateway's interpreter.

Why a process: paho decodes every PUBLISH in Python. In the gateway's own
interpreter that work competes for the one GIL with building, signing and
storing events; in a process of its own it runs on the other core. The
gateway (``mqtt_client.BrokerLink``) starts ``python -m
lowband.gateway.bridges.mqtt.worker FD`` with one end of a socket pair.

Frames both ways: 4-byte big-endian length, then a ``marshal`` (version 4)
list of tuples. Only the gateway's own child reads and writes them.

* gateway → worker: first frame ``[settings]`` (a dict, see ``BrokerLink``);
  then ``("ack", gen, mid)``, ``("publish", id, topic, payload, qos,
  retain)``, ``("barrier", id)``, ``("stop",)``;
* worker → gateway: ``("msg", gen, mid, qos, retain, dup, topic bytes,
  payload, user properties or None)``, ``("connect", gen,
  session_present)``, ``("disconnect", reason)``, ``("published", id,
  error)``, ``("unsuback", gen, id)``, ``("subscribed", filters)``,
  ``("fallback",)``, ``("log", level, text)``.

Rules:

* manual acknowledgements: a PUBACK goes out only when the gateway says
  ``ack``, and only on the connection (``gen``) the message came on;
* the worker never outlives the gateway: end of file on the socket (the
  gateway exited, even by ``kill -9``) ends the process at once without a
  DISCONNECT, so the broker publishes the last will;
* ``("stop",)`` disconnects cleanly (no will) and exits;
* what paho reports while it reads (messages, connects, disconnects,
  answers) goes to the gateway in the order the callbacks fired, one frame
  per read; the acks of one command frame are written together (``_Client``);
* MQTT 5 is refused with "unsupported protocol version" and the protocol
  is ``auto``: the worker reports ``fallback`` and the gateway starts a new
  worker with MQTT 3.1.1.
"""

from __future__ import annotations

import gc
import logging
import marshal
import os
import socket
import ssl
import struct
import sys
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

_READ_SIZE = 1 << 16  # bytes one recv() asks for
_READS_PER_WAKE = 8  # recv() calls one loop_read makes before select() gets a turn again
_PUBACK = 0x40
_UNSUPPORTED_PROTOCOL = 132  # CONNACK reason "Unsupported Protocol Version" (0x84; 3.1.1 return code 1)
ORIGIN_PROPERTY = "lowband-origin"
_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30


def read_frame(sock: socket.socket) -> list[Any] | None:
    """The next frame's list, or None at end of file (blocking socket)."""
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    body = _read_exactly(sock, frame_size(head))
    if body is None:
        return None
    return decode_frame(body)


def frame_size(head: bytes) -> int:
    """The body length a frame's 4-byte head announces; ValueError above MAX_FRAME."""
    (size,) = _HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    return int(size)


def decode_frame(body: bytes) -> list[Any]:
    """The list a frame's body holds; ValueError when it holds anything else or is cut."""
    try:
        value = marshal.loads(body)
    except (EOFError, TypeError, ValueError):
        raise ValueError("malformed frame") from None
    if not isinstance(value, list):
        raise ValueError("a frame must hold a list")
    return value


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def encode_frame(items: list[Any]) -> bytes:
    """Length prefix and marshalled list."""
    body = marshal.dumps(items, 4)
    return _HEADER.pack(len(body)) + body


class _MidMap:
    """paho message ID → the gateway's ID, whichever of bind() and done() comes first.

    paho can report a PUBACK (in its network thread) before ``publish()``
    has returned the mid to the caller, so either side may arrive first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[int, int] = {}
        self._early: set[int] = set()

    def bind(self, mid: int, ident: int) -> bool:
        """Remember ``mid`` → ``ident``; True if its answer already came."""
        with self._lock:
            if mid in self._early:
                self._early.discard(mid)
                return True
            self._ids[mid] = ident
            return False

    def done(self, mid: int) -> int | None:
        """The gateway's ID of an answered mid, or None if bind() has not happened yet."""
        with self._lock:
            ident = self._ids.pop(mid, None)
            if ident is None:
                self._early.add(mid)
            return ident


class _Client(mqtt.Client):
    """paho's client with its socket I/O batched; the protocol is paho's, unchanged.

    paho reads a packet in three or more ``recv()`` calls (the command byte,
    the remaining length a byte at a time, the rest) and, with no QoS 2 flow
    open, one packet per ``select()``; it writes each queued packet with its
    own ``send()`` and wakes its network thread once per packet queued. At
    thousands of messages a second those system calls were most of the
    worker's time. Here:

    * one ``recv()`` takes up to 64 KiB and paho's small reads are served
      from it (kept per socket: a new connection starts empty);
    * ``loop_read`` reads every packet available, then calls ``after_read``
      once (the worker sends what it gathered to the gateway there);
    * :meth:`ack_many` queues PUBACKs with one wake-up, and consecutive
      PUBACKs go out in one ``send()``.
    """

    def __init__(self, *args: Any, after_read: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after_read = after_read
        self.reading_thread: int | None = None  # the thread inside loop_read, if any
        self._rsock: Any = None
        self._rbuf = b""
        self._rpos = 0
        self._reads = 0
        self._quiet_thread: int | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._sock is not self._rsock:  # a new connection: nothing buffered belongs to it
            self._rsock, self._rbuf, self._rpos = self._sock, b"", 0
        if self._rpos >= len(self._rbuf):
            self._reads += 1
            data = super()._sock_recv(_READ_SIZE)  # BlockingIOError when nothing is there
            if not data:
                return data  # end of file
            self._rbuf, self._rpos = data, 0
        end = self._rpos + bufsize
        chunk = self._rbuf[self._rpos:end]
        self._rpos = min(end, len(self._rbuf))
        return chunk

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        if self._sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
        self._reads = 0
        self.reading_thread = threading.get_ident()
        try:
            while True:
                rc = self._packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
                    return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
                if self._sock is None:
                    return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
                # Whatever is buffered is read now: select() cannot see it. The socket gets its turn.
                if self._rpos >= len(self._rbuf) and self._reads >= _READS_PER_WAKE:
                    return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            self.reading_thread = None
            self.after_read()

    def ack_many(self, mids: list[int]) -> None:
        """Queue the PUBACKs of ``mids`` (manual acknowledgement) and wake the network thread once."""
        self._quiet_thread = threading.get_ident()
        try:
            for mid in mids:
                self.ack(mid, 1)
        finally:
            self._quiet_thread = None
        if self._sockpairW is not None:
            try:
                self._sockpairW.send(b"0")
            except BlockingIOError:
                pass  # a wake-up is pending already

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: mqtt.MQTTMessageInfo | None = None) -> mqtt.MQTTErrorCode:  # fmt: skip
        if self._quiet_thread == threading.get_ident():  # inside ack_many: it wakes the thread once
            self._out_packet.append({"command": command, "mid": mid, "qos": qos, "pos": 0,
                                     "to_process": len(packet), "packet": packet, "info": info})  # fmt: skip
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._packet_queue(command, packet, mid, qos, info)

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        out = self._out_packet
        if len(out) > 1 and out[0]["command"] == _PUBACK and out[0]["pos"] == 0:
            merged = []
            while out and out[0]["command"] == _PUBACK and out[0]["pos"] == 0 and len(merged) < 4096:
                merged.append(out.popleft()["packet"])
            data = b"".join(merged)
            out.appendleft({"command": _PUBACK, "mid": 0, "qos": 1, "pos": 0, "to_process": len(data),
                            "packet": data, "info": None})  # fmt: skip
        return super()._packet_write()


_TABLE_NAMES = ("packetType", "types", "names", "properties")


class _SharedTablesProperties(Properties):
    """paho's ``Properties`` with its lookup tables built once instead of for every packet.

    paho builds two tables of 27 entries in ``Properties.__init__``, and
    clears an instance by probing all 27 names, for every PUBLISH it decodes
    (MQTT 5): about a quarter of the worker's time under load. Nothing
    changes the tables after they are built, so every instance here shares
    one set. Installed in the worker process only (:func:`_share_property_tables`).
    """

    _template = Properties(PacketTypes.PUBLISH)

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's name
        object.__setattr__(self, "packetType", packetType)
        for name in _TABLE_NAMES[1:]:
            object.__setattr__(self, name, getattr(self._template, name))

    def clear(self) -> None:
        for name in [n for n in vars(self) if n not in _TABLE_NAMES]:
            delattr(self, name)


def _share_property_tables() -> None:
    """Make paho's packet decoding (and its client) build :class:`_SharedTablesProperties`."""
    import paho.mqtt

    for module_name in ("_packet", "client"):
        module = getattr(paho.mqtt, module_name, None)
        if module is not None and getattr(module, "Properties", None) is Properties:
            module.Properties = _SharedTablesProperties


class Worker:
    """One broker connection, driven by the gateway's commands."""

    def __init__(self, sock: socket.socket, settings: dict[str, Any]) -> None:
        self.sock = sock
        self.s = settings
        self.protocol = mqtt.MQTTv311 if settings["protocol"] == "3.1.1" else mqtt.MQTTv5
        self.net_gen: int = settings["gen"]
        self.filters: dict[str, int] = dict(settings["filters"])
        self.known_filters: set[str] = set(settings["known_filters"])
        self._out: list[Any] = []
        self._inbox: list[Any] = []  # reports gathered during one loop_read (network thread only)
        self._cond = threading.Condition()
        self._closing = False
        self._published = _MidMap()
        self._barriers = _MidMap()
        self.client = self._make_client()

    # ------------------------------------------------------------ output

    def emit(self, item: tuple[Any, ...]) -> None:
        with self._cond:
            self._out.append(item)
            if len(self._out) == 1:
                self._cond.notify()

    def emit_network(self, item: tuple[Any, ...]) -> None:
        """Report from a paho callback: gathered while paho reads, sent as one batch after."""
        if self.client.reading_thread == threading.get_ident():
            self._inbox.append(item)
        else:
            self.emit(item)

    def _after_read(self) -> None:
        if self._inbox:
            items, self._inbox = self._inbox, []
            with self._cond:
                self._out.extend(items)
                self._cond.notify()

    def log(self, level: int, text: str) -> None:
        self.emit(("log", level, text))

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._out and not self._closing:
                    self._cond.wait()
                items, self._out = self._out, []
            if items:
                try:
                    self.sock.sendall(encode_frame(items))
                except OSError:
                    os._exit(1)  # the gateway is gone
            elif self._closing:
                return

    # ------------------------------------------------------------ client

    def _make_client(self) -> mqtt.Client:
        s = self.s
        kwargs: dict[str, Any] = {
            "callback_api_version": mqtt.CallbackAPIVersion.VERSION2, "client_id": s["client_id"],
            "protocol": self.protocol, "manual_ack": True, "reconnect_on_failure": True,
        }  # fmt: skip
        if self.protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = False
        client = _Client(after_read=self._after_read, **kwargs)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.reconnect_delay_set(s["reconnect_min_s"], s["reconnect_max_s"])
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.will_set(s["will_topic"], s["will_payload"], qos=1, retain=True)
        if s["username"] is not None:
            client.username_pw_set(s["username"], s["password"])
        if s["tls"]:
            client.tls_set(ca_certs=s["ca_file"], certfile=s["cert_file"], keyfile=s["key_file"],
                           cert_reqs=ssl.CERT_REQUIRED)  # fmt: skip
            if s["tls_insecure"]:
                client.tls_insecure_set(True)
        return client

    def connect(self) -> None:
        s = self.s
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s["session_expiry_s"]
            props.ReceiveMaximum = s["receive_maximum"]
            self.client.connect_async(s["host"], s["port"], s["keepalive_s"], clean_start=False, properties=props)
        else:
            self.client.connect_async(s["host"], s["port"], s["keepalive_s"])
        self.client.loop_start()

    # ---------------------------------------------------------- commands

    def run(self) -> None:
        sender = threading.Thread(target=self._send_loop, name="mqtt-worker-send", daemon=True)
        sender.start()
        self.connect()
        while True:
            try:
                frame = read_frame(self.sock)
            except (OSError, ValueError):
                frame = None
            if frame is None:
                os._exit(0)  # the gateway is gone: no DISCONNECT, so the broker sends the will
            acks: list[int] = []
            for command in frame:
                if command[0] == "ack":
                    if command[1] == self.net_gen:  # never on another connection than the message's
                        acks.append(command[2])
                    continue
                if acks:
                    self.client.ack_many(acks)
                    acks = []
                if command[0] == "stop":
                    self.client.disconnect()
                    self.client.loop_stop()
                    with self._cond:
                        self._closing = True
                        self._cond.notify()
                    sender.join(5)
                    return
                try:
                    self._command(command)
                except Exception as exc:  # a bad command must not end the connection
                    self.log(logging.ERROR, f"command {command[0]!r} failed: {exc!r}")
            if acks:
                self.client.ack_many(acks)

    def _command(self, command: tuple[Any, ...]) -> None:
        kind = command[0]
        if kind == "publish":
            _, ident, topic, payload, qos, retain = command
            properties = None
            if self.protocol == mqtt.MQTTv5:
                properties = Properties(PacketTypes.PUBLISH)
                properties.UserProperty = [(ORIGIN_PROPERTY, self.s["origin"])]
            info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
            queued = info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0  # paho sends it after reconnecting
            if info.rc != mqtt.MQTT_ERR_SUCCESS and not queued:
                self.emit(("published", ident, f"publish failed: {mqtt.error_string(info.rc)}"))
            elif self._published.bind(info.mid, ident):
                self.emit(("published", ident, ""))
        elif kind == "barrier":
            gen = self.net_gen
            rc, mid = self.client.unsubscribe(self.s["barrier_topic"])
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                self.emit(("unsuback", -1, command[1]))  # no barrier on this connection: it never completes
            elif self._barriers.bind(mid, command[1]):  # answered before bind() could run
                self.emit(("unsuback", gen, command[1]))

    # --------------------------------------------------- network thread

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        try:
            if reason.is_failure:
                if reason.value == _UNSUPPORTED_PROTOCOL and self.protocol == mqtt.MQTTv5 and self.s["auto"]:
                    self.emit(("fallback",))
                else:
                    self.log(logging.WARNING, f"mqtt broker {self.s['name']} refused the connection: {reason}")
                return
            self.net_gen += 1
            session_present = bool(flags.session_present)
            self._subscribe(client, session_present)
            self.emit_network(("connect", self.net_gen, session_present))
            version = "5" if self.protocol == mqtt.MQTTv5 else "3.1.1"
            self.log(logging.INFO, f"mqtt broker {self.s['name']} connected (MQTT {version}, session "
                                   f"{'resumed' if session_present else 'new'})")  # fmt: skip
        except Exception as exc:
            self.log(logging.ERROR, f"mqtt broker {self.s['name']}: on_connect failed: {exc!r}")

    def _subscribe(self, client: mqtt.Client, session_present: bool) -> None:
        current = set(self.filters)
        stale = sorted(self.known_filters - current) if session_present else []
        if stale:
            rc, mid = client.unsubscribe(stale)
            if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._barriers.bind(mid, -1)  # not a barrier: its UNSUBACK is ignored
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
        self.known_filters = current
        self.emit(("subscribed", sorted(current)))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.net_gen += 1
        self.emit_network(("disconnect", str(reason)))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        pairs = getattr(getattr(message, "properties", None), "UserProperty", None)
        self.emit_network(("msg", self.net_gen, message.mid, message.qos, bool(message.retain), bool(message.dup),
                           message._topic, message.payload, [tuple(p) for p in pairs] if pairs else None))  # fmt: skip

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        failed = str(reason) if reason is not None and getattr(reason, "is_failure", False) else ""
        ident = self._published.done(mid)
        if ident is not None:
            self.emit_network(("published", ident, failed))

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        ident = self._barriers.done(mid)
        if ident is not None and ident >= 0:
            self.emit_network(("unsuback", self.net_gen, ident))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        for reason in reasons:
            if getattr(reason, "is_failure", False):
                self.log(logging.ERROR, f"mqtt broker {self.s['name']} refused a subscription: {reason}")


def main(argv: list[str]) -> int:
    """Entry point: ``mqtt_worker FD`` (FD: this end of the socket pair)."""
    if len(argv) != 1 or not argv[0].isdigit():
        sys.stderr.write("usage: python -m lowband.gateway.bridges.mqtt.worker FD (started by the gateway)\n")
        return 2
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    first = read_frame(sock)
    if not first or not isinstance(first[0], dict):
        return 1
    _share_property_tables()
    worker = Worker(sock, first[0])
    gc.freeze()  # as the gateway does (app.py)
    gc.set_threshold(20_000, 20, 20)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
