"""The MQTT network process: one paho-mqtt client per broker, outside the gateway's interpreter.

Why a process: paho decodes every PUBLISH in Python. In the gateway's own
interpreter that work competes for the one GIL with building, signing and
storing events; in a process of its own it runs on the other core. The
gateway (``client.BrokerLink``) starts ``python -m
lowband.gateway.bridges.mqtt.worker FD`` with one end of a socket pair.

Frames both ways: 4-byte big-endian length, then a ``marshal`` (version 4)
list of tuples. Only the gateway's own child reads and writes them.

* gateway → worker: first frame ``[settings]`` (a dict, see ``BrokerLink``);
  then ``("ack", gen, mid)``, ``("publish", id, topic, payload, qos,
  retain)``, ``("barrier", id)``, ``("stop",)``;
* worker → gateway: ``("msg", gen, mid, qos, retain, dup, topic or None
  when it is not UTF-8, payload, user properties or None)``, ``("connect",
  gen, session_present)``, ``("disconnect", reason)``, ``("published", id,
  error)``, ``("unsuback", gen, id)``, ``("subscribed", filters)``,
  ``("fallback",)``, ``("log", level, text)``.

Rules:

* one thread and paho's public external-loop API: the worker waits in
  ``select()`` on the gateway's socket and on ``client.socket()``, then
  calls ``loop_read``, ``loop_write`` and ``loop_misc``, and reconnects
  with ``reconnect()`` on its own back-off. paho's callbacks therefore
  run inside those calls, on this thread;
* manual acknowledgements (``manual_ack=True``): a PUBACK goes out only
  when the gateway says ``ack``, and only on the connection (``gen``) the
  message came on. The acks of one command frame are queued with
  ``client.ack`` and written by one ``loop_write`` (paho queues instead of
  writing at once because ``on_socket_register_write`` is set);
* what paho reports while the worker reads (messages, connects,
  disconnects, answers) goes to the gateway in the order the callbacks
  fired, one frame per turn of the loop;
* the worker never outlives the gateway: end of file on the socket (the
  gateway exited, even by ``kill -9``) ends the process at once without a
  DISCONNECT, so the broker publishes the last will;
* flow control: the worker stops reading from the broker while more than
  ``receive_maximum`` QoS 1 messages it reported on the current
  connection are unacknowledged (no ``loop_read``, the socket left out of
  ``select``), and TCP holds the broker's further messages back.
  ``receive_maximum`` is also what the CONNECT asks of an MQTT 5 broker;
  this enforces it against brokers that overrun it (Mosquitto 2.0.11 does
  once a PUBACK came back while messages were queued) and on MQTT 3.1.1,
  which has no such limit. At exactly ``receive_maximum`` the worker still
  reads, so a broker that keeps to it never causes a pause, and the
  PINGRESP of a connection waiting for acknowledgements is read. The
  bound is ``receive_maximum`` + 1 plus one per QoS 1 publish of ours
  awaiting its PUBACK: ``loop_read`` reads that many packets more. A pause
  longer than about the keepalive leaves a PINGRESP unread and paho drops
  the connection; the session resumes on the next one, where the broker
  sends the unacknowledged messages again;
* ``("stop",)`` disconnects cleanly (no will) and exits;
* MQTT 5 is refused with "unsupported protocol version" and the protocol
  is ``auto``: the worker reports ``fallback``, stops reconnecting, and the
  gateway starts a new worker with MQTT 3.1.1.
"""

from __future__ import annotations

import gc
import logging
import marshal
import os
import select
import socket
import ssl
import struct
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from lowband.gateway.matrix.numbers import parse_digits

_READ_SIZE = 1 << 16  # bytes one recv() of the gateway's socket asks for
#: Packets read from the broker in one turn before the gateway's commands
#: (the acks that let the broker send more) get theirs.
_PACKETS_PER_TURN = 512
_MISC_INTERVAL_S = 0.5  # how often loop_misc runs (keepalive pings, ping timeout)
_STOP_WRITE_S = 2.0  # how long a clean stop waits for its DISCONNECT to be written
_UNSUPPORTED_PROTOCOL = 132  # CONNACK reason "Unsupported Protocol Version" (0x84; 3.1.1 return code 1)
ORIGIN_PROPERTY = "lowband-origin"
_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30


def read_frame(sock: socket.socket) -> list[Any] | None:
    """The next frame's list, or None at end of file (blocking socket).

    Raises ValueError for a frame that is too large or does not hold a list.
    """
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


class FrameBuffer:
    """Frames out of a byte stream, wherever the stream was cut (no I/O)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        """Add ``data``; the frames it completed, in order.

        Raises ValueError for a malformed frame (the stream cannot be
        trusted after one: the caller drops it).
        """
        buf = self._buf
        buf += data
        frames = []
        pos = 0
        while len(buf) - pos >= 4:
            size = frame_size(bytes(buf[pos : pos + 4]))
            if len(buf) - pos - 4 < size:
                break
            frames.append(decode_frame(bytes(buf[pos + 4 : pos + 4 + size])))
            pos += 4 + size
        del buf[:pos]
        return frames


class Backoff:
    """Reconnect delays: ``min_s``, then doubled each failure up to ``max_s``; back to ``min_s`` after a CONNACK."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self._delay: float | None = None

    def next(self) -> float:
        """The delay before the next attempt."""
        self._delay = self.min_s if self._delay is None else min(self._delay * 2, self.max_s)
        return self._delay

    def reset(self) -> None:
        """The broker accepted a connection: the next failure waits ``min_s`` again."""
        self._delay = None


class Worker:
    """One broker connection, driven by the gateway's commands (see the module's rules)."""

    def __init__(self, sock: socket.socket, settings: dict[str, Any]) -> None:
        self.sock = sock
        self.s = settings
        self.protocol = mqtt.MQTTv311 if settings["protocol"] == "3.1.1" else mqtt.MQTTv5
        self.net_gen: int = settings["gen"]
        self.filters: dict[str, int] = dict(settings["filters"])
        self.known_filters: set[str] = set(settings["known_filters"])
        self._out: list[Any] = []  # reports for the gateway, sent at the end of each turn
        self._frames = FrameBuffer()
        # paho mid → the gateway's id. One thread calls publish() and runs the callbacks, so a mid is
        # always recorded before its answer can be read.
        self._published: dict[int, int] = {}
        self._barriers: dict[int, int] = {}  # UNSUBSCRIBE mid → barrier id (-1: not a barrier)
        self._progress = 0  # callbacks paho made: a loop_read that made none completed no packet
        self._backoff = Backoff(settings["reconnect_min_s"], settings["reconnect_max_s"])
        self._connect_at: float | None = 0.0  # when to (re)connect; None: not scheduled
        self._reconnects = True  # False once the gateway is replacing this worker
        self._stopping = False
        self._window: int = settings["receive_maximum"]
        self._unacked: set[int] = set()  # packet ids of QoS 1 messages reported on this connection, not acknowledged
        self._origin: Properties | None = None
        if self.protocol == mqtt.MQTTv5:
            self._origin = Properties(PacketTypes.PUBLISH)
            self._origin.UserProperty = [(ORIGIN_PROPERTY, settings["origin"])]
        self.client = self._make_client()

    def emit(self, item: tuple[Any, ...]) -> None:
        """Queue a report for the gateway (sent at the end of this turn)."""
        self._out.append(item)

    def log(self, level: int, text: str) -> None:
        """A line for the gateway's log."""
        self.emit(("log", level, text))

    # ------------------------------------------------------------ client

    def _make_client(self) -> mqtt.Client:
        s = self.s
        kwargs: dict[str, Any] = {
            "callback_api_version": mqtt.CallbackAPIVersion.VERSION2, "client_id": s["client_id"],
            "protocol": self.protocol, "manual_ack": True,
        }  # fmt: skip
        if self.protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = False
        client = mqtt.Client(**kwargs)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        # Set, paho queues what publish(), ack() and the rest produce instead of writing each at once;
        # the loop writes the whole queue with one loop_write per turn. Nothing to do in it: the loop
        # asks want_write() every turn.
        client.on_socket_register_write = _no_op
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
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s["session_expiry_s"]
            props.ReceiveMaximum = s["receive_maximum"]
            # connect_async only records where to connect; _connect() opens the socket.
            client.connect_async(s["host"], s["port"], s["keepalive_s"], clean_start=False, properties=props)
        else:
            client.connect_async(s["host"], s["port"], s["keepalive_s"])
        return client

    def _connect(self) -> None:
        """One connection attempt (blocking TCP connect and TLS handshake); on failure, schedule the next."""
        self._connect_at = None
        try:
            self.client.reconnect()
        except OSError as exc:  # refused, unreachable, TLS failure
            self._retry_later(f"cannot connect: {exc}")
        except Exception as exc:  # anything else paho raises: still a failed attempt, not a dead worker
            self._retry_later(f"cannot connect: {exc!r}", logging.ERROR)

    def _retry_later(self, why: str, level: int = logging.INFO) -> None:
        if self._stopping or not self._reconnects or self._connect_at is not None:
            return
        delay = self._backoff.next()
        self._connect_at = time.monotonic() + delay
        self.log(level, f"mqtt broker {self.s['name']}: {why}; retrying in {delay:g} s")

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        """Serve the gateway until it says ``stop`` (returns) or goes away (exits the process)."""
        misc_at = 0.0
        while not self._stopping:
            now = time.monotonic()
            if self.client.socket() is None and self._connect_at is None:
                # Every way paho closes the socket reports on_disconnect, which schedules the next attempt;
                # this only keeps the worker from waiting for ever should a paho release not do so.
                self._retry_later("connection closed")
            if self.client.socket() is None and self._connect_at is not None and now >= self._connect_at:
                self._connect()
            conn = self.client.socket()
            readers: list[Any] = [self.sock]
            writers: list[Any] = []
            paused = self.paused()
            # Decrypted bytes can wait inside the SSL object, where select() cannot see them.
            pending = isinstance(conn, ssl.SSLSocket) and conn.pending() > 0 and not paused
            timeout: float | None
            if conn is not None:
                if not paused:
                    readers.append(conn)
                if self.client.want_write():
                    writers.append(conn)
                timeout = 0.0 if pending else max(0.0, misc_at - now)
            elif self._connect_at is not None:
                timeout = max(0.0, self._connect_at - now)
            else:
                timeout = None  # nothing to do until the gateway speaks
            readable, _, _ = select.select(readers, writers, [], timeout)
            if self.sock in readable:
                self._read_commands()
            if conn is not None and self.client.socket() is conn:
                if (pending or conn in readable) and not self.paused():
                    self._read_packets()
                self._write()
                if time.monotonic() >= misc_at:
                    self.client.loop_misc()  # keepalive: may queue a PINGREQ, or find the broker silent
                    misc_at = time.monotonic() + _MISC_INTERVAL_S
                    self._write()
            self._flush()
        self._disconnect()

    def paused(self) -> bool:
        """Whether reading from the broker waits for acknowledgements (flow control, see the rules)."""
        return len(self._unacked) > self._window

    def _read_packets(self) -> None:
        """Read what the broker sent, packet after packet, while packets keep completing.

        ``loop_read`` reads at most one packet and says the same whether it
        read one or found nothing, so the callbacks it made tell: none
        means the socket is drained, a packet is only partly there (select
        will say when the rest comes), or it was a packet without a
        callback (a PINGRESP: select says the socket is still readable).
        """
        for _ in range(_PACKETS_PER_TURN):
            before = self._progress
            rc = self.client.loop_read()
            if rc != mqtt.MQTT_ERR_SUCCESS or self.client.socket() is None or self._progress == before:
                return
            if self.paused():
                return

    def _write(self) -> None:
        """Write what paho queued, as far as the socket takes it (select waits for the rest)."""
        if self.client.want_write():
            self.client.loop_write()

    def _flush(self) -> None:
        if self._out:
            items, self._out = self._out, []
            try:
                self.sock.sendall(encode_frame(items))
            except OSError:
                os._exit(1)  # the gateway is gone

    def _read_commands(self) -> None:
        try:
            data = self.sock.recv(_READ_SIZE)
        except OSError:
            data = b""
        if not data:
            os._exit(0)  # the gateway is gone: no DISCONNECT, so the broker sends the will
        try:
            frames = self._frames.feed(data)
        except ValueError:
            os._exit(1)  # only the gateway writes here: a broken stream means a broken gateway
        for frame in frames:
            for command in frame:
                if command[0] == "stop":
                    self._stopping = True
                    return
                try:
                    self._command(command)
                except Exception as exc:  # a bad command must not end the connection
                    self.log(logging.ERROR, f"command {command[0]!r} failed: {exc!r}")

    def _command(self, command: tuple[Any, ...]) -> None:
        kind = command[0]
        if kind == "ack":
            if command[1] == self.net_gen:  # never on another connection than the message's
                self.client.ack(command[2], 1)
                self._unacked.discard(command[2])
        elif kind == "publish":
            _, ident, topic, payload, qos, retain = command
            info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=self._origin)
            queued = info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0  # paho sends it after reconnecting
            if info.rc != mqtt.MQTT_ERR_SUCCESS and not queued:
                self.emit(("published", ident, f"publish failed: {mqtt.error_string(info.rc)}"))
            else:
                self._published[info.mid] = ident
        elif kind == "barrier":
            rc, mid = self.client.unsubscribe(self.s["barrier_topic"])
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                self.emit(("unsuback", -1, command[1]))  # no barrier on this connection: it never completes
            else:
                self._barriers[mid] = command[1]

    def _disconnect(self) -> None:
        """A clean DISCONNECT (the broker then drops the will), written before the process ends."""
        self.client.disconnect()
        deadline = time.monotonic() + _STOP_WRITE_S
        while (conn := self.client.socket()) is not None and self.client.want_write():
            if time.monotonic() >= deadline:
                break
            select.select([], [conn], [], max(0.0, deadline - time.monotonic()))
            self.client.loop_write()
        self._flush()

    # --------------------------------------------------- paho callbacks

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._progress += 1
        try:
            if reason.is_failure:
                if reason.value == _UNSUPPORTED_PROTOCOL and self.protocol == mqtt.MQTTv5 and self.s["auto"]:
                    self._reconnects = False  # the gateway starts a worker with MQTT 3.1.1 instead
                    self.emit(("fallback",))
                else:
                    self.log(logging.WARNING, f"mqtt broker {self.s['name']} refused the connection: {reason}")
                return
            self._backoff.reset()
            self.net_gen += 1
            self._unacked.clear()  # the broker sends the unacknowledged messages again
            session_present = bool(flags.session_present)
            self._subscribe(client, session_present)
            self.emit(("connect", self.net_gen, session_present))
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
                self._barriers[mid] = -1  # not a barrier: its UNSUBACK is ignored
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
        self._progress += 1
        self.net_gen += 1
        self._unacked.clear()  # the next connection's CONNACK must be read
        self.emit(("disconnect", str(reason)))
        self._retry_later(f"disconnected ({reason})")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._progress += 1
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:
            topic = None  # the gateway refuses it (counted, acknowledged)
        pairs = getattr(message.properties, "UserProperty", None)
        if message.qos > 0:
            self._unacked.add(message.mid)
        self.emit(("msg", self.net_gen, message.mid, message.qos, bool(message.retain), bool(message.dup), topic,
                   message.payload, [tuple(p) for p in pairs] if pairs else None))  # fmt: skip

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._progress += 1
        failed = str(reason) if reason is not None and getattr(reason, "is_failure", False) else ""
        ident = self._published.pop(mid, None)
        if ident is not None:
            self.emit(("published", ident, failed))

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self._progress += 1
        ident = self._barriers.pop(mid, None)
        if ident is not None and ident >= 0:
            self.emit(("unsuback", self.net_gen, ident))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self._progress += 1
        for reason in reasons:
            if getattr(reason, "is_failure", False):
                self.log(logging.ERROR, f"mqtt broker {self.s['name']} refused a subscription: {reason}")


def _no_op(*args: Any) -> None:
    pass


def main(argv: list[str]) -> int:
    """Entry point: ``worker FD`` (FD: this end of the socket pair). Returns the exit status."""
    fd = parse_digits(argv[0], 9) if len(argv) == 1 else None
    if fd is None:
        sys.stderr.write("usage: python -m lowband.gateway.bridges.mqtt.worker FD (started by the gateway)\n")
        return 2
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    first = read_frame(sock)
    if not first or not isinstance(first[0], dict):
        return 1
    worker = Worker(sock, first[0])
    gc.freeze()  # as the gateway does (app.py)
    gc.set_threshold(20_000, 20, 20)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
