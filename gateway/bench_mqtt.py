"""``lowband bench mqtt``: MQTT → room with durable storage, against raw Mosquitto.

Both phases use one private Mosquitto on loopback, configured to lose
nothing (queue and in-flight limits lifted, see ``bridges/mosquitto.py``),
one paho publisher and 60-byte payloads at QoS 1:

* ``raw_per_s`` — the anchor: a paho subscriber (MQTT 5, QoS 1, automatic
  acknowledgements) receives the messages; from the first publish to the
  last message received;
* ``events_per_s`` — ``lowband serve`` in a subprocess with an ``[mqtt]``
  mapping from the bench topic to a room; from the first publish until the
  database holds an event for every message (each acknowledged to the
  broker only after its commit, ``synchronous=FULL``);
* ``lost`` / ``duplicated`` — counted in the gateway's database after it
  stopped: messages without an event, and events beyond one per message.

Progress goes to stderr. A broker or gateway that will not start, or a
phase that does not finish within ``seconds``, ends the run with
:class:`~lowband.gateway.bench_homeserver.BenchError`.
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
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lowband.gateway.bench_homeserver import BenchError
from lowband.gateway.bridges.mosquitto import MosquittoError, PrivateMosquitto, free_port

PAYLOAD_BYTES = 60
WARMUP = 200
TARGET_EVENTS = 5000.0
TARGET_RATIO = 0.7
TOPIC = "bench/sensor"

#: Runs ``lowband`` with the MQTT bridge registered as a component, whether
#: or not ``server.COMPONENTS`` lists it already.
GATEWAY_SHIM = (
    "import sys\n"
    "from lowband.gateway import server\n"
    "from lowband.gateway.bridges.mqtt_bridge import start_mqtt\n"
    "if not any(getattr(c, '__name__', '') == 'start_mqtt' for c in server.COMPONENTS):\n"
    "    server.COMPONENTS.append(start_mqtt)\n"
    "from lowband.gateway.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def gateway_command() -> list[str]:
    """argv prefix that runs ``lowband`` with the MQTT bridge component."""
    return [sys.executable, "-c", GATEWAY_SHIM]


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


def measure_raw(port: int, count: int, timeout: float) -> float:
    """Messages/s from the first publish to the last one a paho subscriber received."""
    done = threading.Event()
    received = [0, 0.0]

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received[0] += 1
        if received[0] == count:
            received[1] = time.perf_counter()
            done.set()

    subscriber = _client("bench-raw-sub", port)
    subscriber.on_message = on_message
    subscriber.subscribe(TOPIC, qos=1)
    subscriber.loop_start()
    time.sleep(0.3)
    try:
        start = _publish_all(port, 0, count)
        if not done.wait(timeout):
            raise BenchError(f"raw subscriber got {received[0]} of {count} messages in {timeout:.0f} s")
        return count / (received[1] - start)
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
            "[mqtt]\nstats_interval_s = 0\ndiscovery = false\n\n"
            f'[[mqtt.brokers]]\nname = "bench"\nhost = "127.0.0.1"\nport = {broker_port}\nreceive_maximum = 5000\n\n'
            f'[[mqtt.inbound]]\nname = "bench"\ntopic = "bench/+"\nroom = "#bench:localhost"\nsender = "mapping"\n'
            "rate_per_s = 1000000.0\nburst = 1000000\n"
        )  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = gateway_command() + [
            "serve", "--data-dir", str(self.data_dir), "--server-name", "localhost",
            "--http", f"127.0.0.1:{self.port}", "--enable-registration", "--config", str(self.config),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BenchError(f"gateway exited with {self.proc.returncode}: {err.strip()[-300:]}")
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
        body = {"username": "bench", "password": "bench-password-not-secret", "auth": {"type": "m.login.dummy"}}
        reply = self.request("POST", "/_matrix/client/v3/register", body)
        room = self.request("POST", "/_matrix/client/v3/createRoom",
                            {"preset": "public_chat", "room_alias_name": "bench"}, reply["access_token"])  # fmt: skip
        return str(room["room_id"])

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
        if proc.stderr:
            proc.stderr.close()


def count_sequences(db_path: Path, room_id: str) -> dict[int, int]:
    """seq → number of events carrying it, read from the gateway's database."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute(
            "SELECT json_extract(pdu, '$.content.\"org.lowband.senml\"[0].v') FROM events"
            " WHERE room_id = ? AND type = 'm.room.message'",
            (room_id,),
        ).fetchall()
    counts: dict[int, int] = {}
    for (seq,) in rows:
        if isinstance(seq, int):
            counts[seq] = counts.get(seq, 0) + 1
    return counts


def _wait_for_events(db_path: Path, room_id: str, want: int, timeout: float) -> float:
    """Poll the database until ``want`` message events exist; returns when that was seen."""
    deadline = time.perf_counter() + timeout
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        have = 0
        while time.perf_counter() < deadline:
            row = conn.execute("SELECT COUNT(*) FROM events WHERE room_id = ? AND type = 'm.room.message'",
                               (room_id,)).fetchone()  # fmt: skip
            have = int(row[0])
            if have >= want:
                return time.perf_counter()
            time.sleep(0.01)
        raise BenchError(f"only {have} of {want} events arrived within {timeout:.0f} s")
    finally:
        conn.close()


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
            _progress(f"raw: {raw:.0f} msg/s; starting the gateway")
            gateway.start()
            room_id = gateway.create_room()
            db_path = gateway.data_dir / "lowband.db"
            _publish_all(broker.port, 10_000_000, WARMUP)
            _wait_for_events(db_path, room_id, WARMUP, seconds)
            _progress(f"gateway bridging; publishing {messages} messages")
            start = _publish_all(broker.port, 0, messages)
            end = _wait_for_events(db_path, room_id, WARMUP + messages, seconds)
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
