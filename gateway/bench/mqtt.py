"""``lowband bench mqtt``: MQTT → room with durable storage, against raw Mosquitto.

Both phases use one private Mosquitto on loopback, configured to lose
nothing (queue and in-flight limits lifted, see ``sim/mosquitto.py``),
one paho publisher and 60-byte payloads at QoS 1:

* ``raw_per_s`` — the anchor: a paho subscriber in its own process (MQTT 5,
  QoS 1, automatic acknowledgements) receives the messages; from the first
  publish to the last message received. The publisher is in this process
  in both phases, the receiver in another;
* ``events_per_s`` — ``lowband serve`` in a subprocess with an ``[mqtt]``
  mapping from the bench topic to a room; from the first publish until the
  database holds an event for every message (each acknowledged to the
  broker only after its commit, ``synchronous=FULL``);
* ``lost`` / ``duplicated`` — counted in the gateway's database after it
  stopped: messages without an event, and events beyond one per message.

Progress goes to stderr. A broker or gateway that will not start, or a
phase that does not finish within ``seconds``, ends the run with
:class:`~lowband.gateway.bench.processes.BenchError`.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lowband.gateway.bench.processes import BenchError, lowband_argv
from lowband.gateway.bridges.mqtt.discovery import ONLINE
from lowband.gateway.store.sqlite.readonly import ReadOnlyEvents
from lowband.sim.mosquitto import MosquittoError, PrivateMosquitto
from lowband.sim.ports import free_port

PAYLOAD_BYTES = 60
WARMUP = 200
TARGET_EVENTS = 5000.0
TARGET_RATIO = 0.7
TOPIC = "bench/sensor"
STATUS_TOPIC = "bench/status"  # the bridge's availability topic, set in the gateway's config below


def _reader(db_path: Path) -> Any:
    """A reading connection to the gateway's store (its SQLite file, or PostgreSQL when the data dir says so)."""
    from lowband.gateway.app import open_reader

    conn = open_reader(db_path)
    if conn is None:
        raise sqlite3.OperationalError(f"no store at {db_path}")
    return conn

def payload(seq: int) -> bytes:
    """A 60-byte JSON reading carrying its sequence number."""
    head = '{"seq":%d,"t":21.5,"pad":"' % seq
    return (head + "x" * (PAYLOAD_BYTES - len(head) - 2) + '"}').encode()


def _progress(text: str) -> None:
    sys.stderr.write(f"bench mqtt: {text}\n")
    sys.stderr.flush()


def _client(client_id: str, port: int) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, 30, clean_start=True, properties=props)
    return client


def _publish_all(port: int, first: int, count: int) -> float:
    """Publish ``count`` QoS 1 messages as fast as paho allows; returns the start time."""
    publisher = _client(f"bench-pub-{first}", port)
    publisher.loop_start()
    try:
        start = time.perf_counter()
        infos = [publisher.publish(TOPIC, payload(first + i), qos=1) for i in range(count)]
        for info in infos:
            info.wait_for_publish(60)
        return start
    finally:
        publisher.disconnect()
        publisher.loop_stop()


def _counter(count: int, finished: Callable[[mqtt.Client], None]) -> Callable[..., None]:
    """An on_message callback that calls ``finished(client)`` when the ``count``-th message arrives."""
    got = [0]

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        got[0] += 1
        if got[0] == count:
            finished(client)

    return on_message


#: The raw subscriber: its own process, as the gateway is, so the publisher and
#: the subscriber do not share one interpreter lock (that would lower the anchor).
RAW_SUBSCRIBER = (
    "import sys, time\n"
    "from lowband.gateway.bench import mqtt as b\n"
    "port, count = int(sys.argv[1]), int(sys.argv[2])\n"
    "def finished(client):\n"
    "    print(time.perf_counter(), flush=True)\n"
    "    client.disconnect()\n"
    "client = b._client('bench-raw-sub', port)\n"
    "client.on_message = b._counter(count, finished)\n"
    "client.on_subscribe = lambda *args: print('ready', flush=True)\n"
    "client.subscribe(b.TOPIC, qos=1)\n"
    "client.loop_forever()\n"
)


def measure_raw(port: int, count: int, timeout: float) -> float:
    """Messages/s from the first publish to the last one a paho subscriber (another process) received.

    ``time.perf_counter`` is the system-wide monotonic clock on Linux, so the
    two processes' readings compare.
    """
    proc = subprocess.Popen([sys.executable, "-c", RAW_SUBSCRIBER, str(port), str(count)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while "ready\n" not in lines:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError("the raw subscriber did not subscribe")
            time.sleep(0.01)
        start = _publish_all(port, 0, count)
        reader.join(timeout)
        if reader.is_alive() or len(lines) < 2:
            raise BenchError(f"the raw subscriber did not get all {count} messages in {timeout:.0f} s")
        return count / (float(lines[1]) - start)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def measure_raw_one_process(port: int, count: int, timeout: float) -> float:
    """As :func:`measure_raw`, with the subscriber in this process (sharing its interpreter lock).

    Shown for comparison only: it is how the anchor was first measured, and
    it is lower because the publisher and the subscriber take turns.
    """
    done = threading.Event()
    ended: list[float] = []
    subscriber = _client("bench-raw-sub-1", port)

    def finished(client: mqtt.Client) -> None:
        ended.append(time.perf_counter())
        done.set()

    subscriber.on_message = _counter(count, finished)
    subscriber.subscribe(TOPIC, qos=1)
    subscriber.loop_start()
    time.sleep(0.3)
    try:
        start = _publish_all(port, 0, count)
        if not done.wait(timeout):
            raise BenchError(f"the raw subscriber did not get all {count} messages in {timeout:.0f} s")
        return count / (ended[0] - start)
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()


class _Gateway:
    """``lowband serve`` with the bridge, in a subprocess."""

    def __init__(self, root: Path, broker_port: int) -> None:
        self.data_dir = root / "gateway"
        self.port = free_port()
        self.config = root / "gateway.toml"
        self.config.write_text(
            "[rate_limits]\nenabled = false\n\n"
            f'[mqtt]\nstats_interval_s = 0\ndiscovery = false\nstatus_topic = "{STATUS_TOPIC}"\n\n'
            f'[[mqtt.brokers]]\nname = "bench"\nhost = "127.0.0.1"\nport = {broker_port}\nreceive_maximum = 5000\n\n'
            f'[[mqtt.inbound]]\nname = "bench"\ntopic = "bench/+"\nroom = "#bench:localhost"\nsender = "mapping"\n'
            "rate_per_s = 1000000.0\nburst = 1000000\n"
        )  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "gateway.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = lowband_argv() + [
            "serve", "--data-dir", str(self.data_dir), "--server-name", "localhost",
            "--http", f"127.0.0.1:{self.port}", "--enable-registration", "--config", str(self.config),
        ]  # fmt: skip
        # The log goes to a file: a pipe nobody reads would stop the gateway once it filled up.
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log_file)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"gateway exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/_matrix/client/versions", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise BenchError("gateway did not start within 60 s")

    def request(self, method: str, path: str, body: Any, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return json.loads(response.read())
        except OSError as exc:
            raise BenchError(f"{method} {path} failed: {exc}") from exc

    def create_room(self) -> str:
        """The ID of ``#bench:localhost``, which the bridge created at start (it creates a missing alias itself)."""
        body = {"username": "bench", "password": "bench-password-not-secret", "auth": {"type": "m.login.dummy"}}
        reply = self.request("POST", "/_matrix/client/v3/register", body)
        req = urllib.request.Request(self.url + "/_matrix/client/v3/directory/room/%23bench:localhost",
                                     headers={"Authorization": f"Bearer {reply['access_token']}"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return str(json.loads(response.read())["room_id"])
        except OSError as exc:
            raise BenchError(f"the bridge did not create #bench:localhost: {exc}") from exc

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def log_tail(self, size: int = 600) -> str:
        """The end of the gateway's log, for error messages."""
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace").strip()
        except OSError:
            return ""


def _wait_online(port: int, timeout: float) -> None:
    """Wait for the gateway's retained status "online": it is published after the bridge subscribed."""
    seen = threading.Event()
    watcher = _client("bench-status", port)
    watcher.on_message = lambda client, userdata, message: seen.set() if message.payload == ONLINE.encode() else None
    watcher.subscribe(STATUS_TOPIC, qos=1)
    watcher.loop_start()
    try:
        if not seen.wait(timeout):
            raise BenchError(f"the gateway did not report itself online on {STATUS_TOPIC} within {timeout:.0f} s")
    finally:
        watcher.disconnect()
        watcher.loop_stop()


def count_sequences(db_path: Path, room_id: str) -> dict[int, int]:
    """seq → number of events carrying it, read from the gateway's database."""
    with ReadOnlyEvents(_reader(db_path)) as events:
        contents = events.contents(room_id, "m.room.message")
    counts: dict[int, int] = {}
    for content in contents:
        senml = content.get("org.lowband.senml")
        first = senml[0] if isinstance(senml, list) and senml else None
        seq = first.get("v") if isinstance(first, dict) else None
        if isinstance(seq, int) and not isinstance(seq, bool):
            counts[seq] = counts.get(seq, 0) + 1
    return counts


def _wait_for_events(db_path: Path, room_id: str, want: int, timeout: float) -> float:
    """Poll the database until ``want`` message events exist; returns when that was seen.

    Each poll counts only rows newer than the last one seen, every 20 ms, so
    the watching costs the gateway next to no CPU on a machine both share.
    """
    deadline = time.perf_counter() + timeout
    with ReadOnlyEvents(_reader(db_path)) as events:
        have, after = 0, -1
        while time.perf_counter() < deadline:
            count, last = events.count_after(room_id, "m.room.message", after)
            have += count
            after = last if last is not None else after
            if have >= want:
                return time.perf_counter()
            time.sleep(0.02)
    raise BenchError(f"only {have} of {want} events arrived within {timeout:.0f} s")


def run(messages: int = 20000, seconds: float = 180.0) -> tuple[dict[str, Any], str]:
    """Run both phases; returns (result, table). ``messages`` per phase, ``seconds`` to wait at most per phase."""
    if messages <= 0:
        raise BenchError("--messages must be positive")
    with tempfile.TemporaryDirectory(prefix="lowband-bench-mqtt-") as tmp:
        root = Path(tmp)
        broker = PrivateMosquitto(root / "broker", persistence=False)
        try:
            broker.start()
        except MosquittoError as exc:
            raise BenchError(str(exc)) from exc
        gateway = _Gateway(root, broker.port)
        try:
            _progress(f"raw Mosquitto pub→sub, {messages} QoS 1 messages of {PAYLOAD_BYTES} bytes")
            raw = measure_raw(broker.port, messages, seconds)
            raw_shared = measure_raw_one_process(broker.port, messages, seconds)
            _progress(f"raw: {raw:.0f} msg/s ({raw_shared:.0f} with both clients in one process); starting the gateway")
            gateway.start()
            room_id = gateway.create_room()
            db_path = gateway.data_dir / "lowband.db"
            try:
                _wait_online(broker.port, 30)
                _publish_all(broker.port, 10_000_000, WARMUP)
                _wait_for_events(db_path, room_id, WARMUP, seconds)
                _progress(f"gateway bridging; publishing {messages} messages")
                start = _publish_all(broker.port, 0, messages)
                end = _wait_for_events(db_path, room_id, WARMUP + messages, seconds)
            except BenchError as exc:
                raise BenchError(f"{exc}; the gateway's log ends with: {gateway.log_tail()}") from None
            events = messages / (end - start)
            time.sleep(1.0)  # anything posted twice would show up now
        finally:
            gateway.stop()
            broker.stop()
        counts = count_sequences(db_path, room_id)
    measured = {seq: n for seq, n in counts.items() if seq < 10_000_000}
    lost = sum(1 for seq in range(messages) if seq not in measured)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    ratio = events / raw if raw else 0.0
    result = {"events_per_s": round(events, 1), "raw_per_s": round(raw, 1), "ratio": round(ratio, 3),
              "sent": messages, "lost": lost, "duplicated": duplicated}  # fmt: skip
    table = "\n".join([
        f"MQTT → room, QoS 1, {PAYLOAD_BYTES}-byte payloads, {messages} messages, durable (fsync per commit)",
        f"{'':28}{'measured':>12}{'target':>12}",
        f"{'raw Mosquitto pub→sub /s':28}{raw:12.0f}{'anchor':>12}",
        f"{'  (pub and sub one process)':28}{raw_shared:12.0f}{'':>12}",
        f"{'MQTT → room events/s':28}{events:12.0f}{TARGET_EVENTS:12.0f}",
        f"{'ratio':28}{ratio:12.2f}{TARGET_RATIO:12.2f}",
        f"{'lost':28}{lost:12d}{0:12d}",
        f"{'duplicated':28}{duplicated:12d}{0:12d}",
    ])  # fmt: skip
    return result, table


if __name__ == "__main__":  # pragma: no cover - manual runs
    res, text = run(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
    print(text)
    print(json.dumps(res))
