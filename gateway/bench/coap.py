"""``lowband bench coap``: bytes on the wire for the low-bandwidth client API, three columns.

One gateway runs in this process (embedded SQLite in a temporary directory)
with the HTTP API and ``[coap]`` (plain UDP and the Noise port). One user
logs in and, in one room, does the same four things in each column:

* ``login`` — password login;
* ``send`` — one text message ``{"msgtype": "m.text", "body": "temp 21.5 C"}``;
* ``idle_10min`` — ten minutes with nothing to deliver;
* ``sync_5`` — the incremental sync that carries 5 new messages (posted by
  another user over HTTP, not counted), with its request.

How each column is counted, everything included at the layer it is sent on:

* ``http_json`` — matrix-nio (the real client, encryption off) talks to the
  HTTP API through a TCP relay that counts the payload bytes each way: the
  HTTP/1.1 request and response, headers and JSON bodies, on one kept-alive
  connection (TCP/IP headers and the connection set-up are not counted, as
  UDP/IP headers are not counted in the other columns). Idle: a long-poll
  ``/sync`` with ``timeout=30000`` returns empty every 30 s, so ten minutes
  are 20 polls: one real empty poll is measured and multiplied by 20
  (``--seconds`` shortens that poll's wait, and its ``timeout`` parameter).
* ``msc3079`` — :class:`~lowband.gateway.coap.client.CoapClient` on plain
  UDP: MSC3079 path codes, CBOR with integer keys, the access token once per
  connection; every UDP payload each way (blockwise blocks, ACKs, OBSERVE
  notifications). Idle: the OBSERVE registration on ``/sync``, then nothing
  from the server, plus the client's keep-alive as often as its interval
  says: computed from the measured registration and keep-alive bytes.
* ``compact`` — the same client over the Noise session on ``secure_bind``
  with compact mode: the UDP payloads of the Noise frames (tag included)
  around the compact CoAP. The handshake is reported apart
  (``session_setup``), as TCP's is not counted for HTTP.

``send_100bps_ms``: the compact send (request then response) written
through the :class:`~lowband.sim.link_model.LinkModel` at 100 bps, 8 bits
per byte, no latency, in simulated time: the time from the first request
byte leaving to the last response byte arriving.

Idle keep-alives: one every :data:`~lowband.gateway.coap.client.DEFAULT_KEEPALIVE_S`
(600 s) in both CoAP columns: a CoAP ping and its reset (8 bytes) on plain
UDP, an empty DATA frame (11 bytes, not answered) in a Noise session. A
serial or LoRa link needs none; behind a NAT that forgets UDP bindings
sooner the client sends them more often (``idle_10min_steady_by_interval_s``
in the details).

Output: the result (the issue's contract) is ``send``, ``login``,
``idle_10min``, ``sync_5`` (each ``{"http_json", "msc3079", "compact"}``
in bytes) and ``send_100bps_ms``. With ``--json`` one more JSON line comes
first, ``{"details": …}``: bytes each way, ratios against HTTP+JSON, how
each idle figure was obtained, the connection set-up, and ``missing``.
A benchmark that cannot measure a part ends with :class:`BenchError` (one
line), never with a made-up number.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from lowband.gateway.bench.processes import BenchError, progress
from lowband.sim.ports import free_port

TEXT = {"msgtype": "m.text", "body": "temp 21.5 C"}
USER, PASSWORD, FEEDER = "bench", "bench-password-1", "feeder"
IDLE_S = 600.0
HTTP_POLL_MS = 30_000  # the long-poll timeout a Matrix client uses (matrix-nio's and Element's default)
BATCH = 5
COLUMNS = ("http_json", "msc3079", "compact")
PHASES = ("login", "send", "idle_10min", "sync_5")
# Targets of issue 16 / DESIGN.md: compact send request + response, idle per 10 minutes.
TARGET_SEND = 60
TARGET_IDLE = 20


@dataclass
class Tally:
    """Bytes each way of one measured exchange."""

    out: int = 0
    back: int = 0

    @property
    def total(self) -> int:
        return self.out + self.back


class CountingRelay:
    """A TCP relay on 127.0.0.1 that counts the payload bytes each way (what TCP segments carry).

    Every connection accepted is relayed to ``target_port``; ``up`` counts
    client → server bytes, ``down`` server → client, over all connections.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = 0
        self.down = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on a free port; returns it."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def mark(self) -> tuple[int, int]:
        """The counters now, for :meth:`since`."""
        return self.up, self.down

    def since(self, mark: tuple[int, int]) -> Tally:
        """Bytes each way since ``mark``."""
        return Tally(self.up - mark[0], self.down - mark[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while data := await src.read(65536):
                    if upstream:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        for task in (
            asyncio.create_task(pump(reader, up_writer, True)),
            asyncio.create_task(pump(up_reader, writer, False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


# ------------------------------------------------------------------ the gateway and the feeding user


class Feeder:
    """The second user, on plain HTTP (not counted): posts the messages the ``sync_5`` phase fetches."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.token = ""
        self.sent = 0

    async def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"} if (token or self.token) else {}
        async with self.session.request(method, self.base + path, json=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=60)) as response:  # fmt: skip
            data = await response.json(content_type=None)
            if response.status != 200:
                raise BenchError(f"{method} {path} answered {response.status}: {data}")
            return data

    async def post_one(self, room: str) -> None:
        """Post one text message into ``room``."""
        self.sent += 1
        content = {"msgtype": "m.text", "body": f"temp {20 + self.sent % 10}.5 C"}
        await self.call("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/feed{self.sent}", content)

    async def post_batch(self, room: str) -> None:
        """Post :data:`BATCH` text messages into ``room``, each committed before the next."""
        for _ in range(BATCH):
            await self.post_one(room)


async def _register(feeder: Feeder, name: str, password: str) -> dict[str, Any]:
    body = {"username": name, "password": password, "auth": {"type": "m.login.dummy"}}
    result: dict[str, Any] = await feeder.call("POST", "/_matrix/client/v3/register", body)
    return result


# ------------------------------------------------------------------ HTTP/1.1 + JSON with matrix-nio


async def measure_http(relay: CountingRelay, room: str, feeder: Feeder, poll_ms: int) -> dict[str, Any]:
    """The ``http_json`` column: matrix-nio through the counting relay; raises BenchError on a failed call."""
    import nio

    config = nio.AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False)
    client = nio.AsyncClient(f"http://127.0.0.1:{relay.port}", USER, config=config)
    tallies: dict[str, Tally] = {}
    try:
        mark = relay.mark()
        login = await client.login(PASSWORD)  # no device name: the CoAP logins send none either
        tallies["login"] = relay.since(mark)
        if not isinstance(login, nio.LoginResponse):
            raise BenchError(f"matrix-nio login failed: {login}")
        first = await client.sync(timeout=0)
        if not isinstance(first, nio.SyncResponse):
            raise BenchError(f"matrix-nio sync failed: {first}")
        since = first.next_batch

        mark = relay.mark()
        sent = await client.room_send(room, "m.room.message", dict(TEXT))
        tallies["send"] = relay.since(mark)
        if not isinstance(sent, nio.RoomSendResponse):
            raise BenchError(f"matrix-nio send failed: {sent}")
        echoed = await client.sync(timeout=0, since=since)
        if not isinstance(echoed, nio.SyncResponse):
            raise BenchError(f"matrix-nio sync failed: {echoed}")
        since = echoed.next_batch

        # One empty long-poll, really waited out (nothing arrives for this user meanwhile).
        mark = relay.mark()
        idle = await client.sync(timeout=poll_ms, since=since)
        poll = relay.since(mark)
        if not isinstance(idle, nio.SyncResponse):
            raise BenchError(f"matrix-nio idle sync failed: {idle}")
        if idle.rooms.join.get(room) and idle.rooms.join[room].timeline.events:
            raise BenchError("the idle /sync carried events: the measurement is not of an idle poll")
        polls = math.ceil(IDLE_S * 1000 / HTTP_POLL_MS)
        tallies["idle_10min"] = Tally(poll.out * polls, poll.back * polls)

        await feeder.post_batch(room)
        mark = relay.mark()
        batch = await client.sync(timeout=HTTP_POLL_MS, since=idle.next_batch)
        tallies["sync_5"] = relay.since(mark)
        if not isinstance(batch, nio.SyncResponse):
            raise BenchError(f"matrix-nio sync failed: {batch}")
        got = len(batch.rooms.join[room].timeline.events) if room in batch.rooms.join else 0
        if got != BATCH:
            raise BenchError(f"the /sync after {BATCH} messages carried {got} events")
    finally:
        await client.close()
    return {
        **{phase: tallies[phase].total for phase in PHASES},
        "detail": {phase: [tallies[phase].out, tallies[phase].back] for phase in PHASES},
        "idle_poll_bytes": poll.total,
        "idle_method": f"one empty /sync long-poll (timeout={poll_ms} ms) measured, times {polls} polls of 30 s",
    }


# ------------------------------------------------------------------ MSC3079 and compact over CoAP


def _timeline(doc: Any, room: str) -> list[Any]:
    if not isinstance(doc, dict):
        return []
    events = doc.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
    return events if isinstance(events, list) else []


async def measure_coap(url: str, room: str, feeder: Feeder, *, key_file: Path | None, compact: bool,
                       keepalive_s: float) -> dict[str, Any]:  # fmt: skip
    """The ``msc3079`` (plain UDP) or ``compact`` (Noise session, compact mode) column; BenchError on a failure."""
    from lowband.codecs.coap import code_text
    from lowband.gateway.coap.client import CoapClient, CoapClientError
    from lowband.gateway.coap.messaging import TransmissionParams

    # Loopback answers in milliseconds, but a login's password hash can take a second on a busy machine:
    # a long ACK_TIMEOUT keeps retransmissions (load, not protocol) out of the byte counts.
    params = TransmissionParams(ack_timeout=8.0)
    tallies: dict[str, Tally] = {}
    extra: dict[str, Any] = {}
    try:
        client = await CoapClient.connect(url, key_file=key_file, compact=compact, params=params, timeout=60)
    except CoapClientError as exc:
        raise BenchError(f"CoAP connect to {url}: {exc}") from None
    client.keepalive_interval = None  # the keep-alive is measured once and counted, not waited for

    def mark() -> tuple[int, int]:
        return client.bytes_out, client.bytes_in

    def since(start: tuple[int, int]) -> Tally:
        return Tally(client.bytes_out - start[0], client.bytes_in - start[1])

    def check(what: str, code: int, body: Any) -> Any:
        if code >> 5 != 2:
            raise BenchError(f"CoAP {what} answered {code_text(code)}: {body}")
        return body

    try:
        extra["session_setup"] = client.bytes_out + client.bytes_in
        start = mark()
        check("login", *await client.login(USER, PASSWORD))
        tallies["login"] = since(start)
        batch = check("sync", *await client.sync(None, 0))["next_batch"]  # carries the token: it is sticky now

        start = mark()
        check("send", *await client.send_text(room, TEXT["body"]))
        tallies["send"] = since(start)
        extra["send_datagrams"] = client.last_send_datagrams
        batch = check("sync", *await client.sync(batch, 0))["next_batch"]

        # Idle: the OBSERVE registration and its first (empty) answer, then nothing from the gateway.
        start = mark()
        observation = client.observe_sync(batch)
        first = await asyncio.wait_for(observation.__anext__(), 60)
        await asyncio.sleep(0.5)  # the ACK of a separate answer, if any
        registration = since(start)
        if _timeline(first, room):
            raise BenchError("the observation's first answer carried events: not an idle registration")
        batch = first["next_batch"]
        start = mark()
        await client.keepalive()
        await asyncio.sleep(0.2)
        keepalive = since(start)
        count = math.floor(IDLE_S / keepalive_s)
        tallies["idle_10min"] = Tally(
            registration.out + count * keepalive.out, registration.back + count * keepalive.back
        )
        extra["idle_method"] = (f"OBSERVE registration with its first answer measured ({registration.total} B), "
                                f"then {count} keep-alive(s) of {keepalive.total} B (one measured) every "
                                f"{keepalive_s:g} s; the gateway sends nothing while idle")  # fmt: skip
        extra["observe_registration_bytes"] = registration.total
        # Once an observation is open, ten idle minutes cost only the keep-alives.
        extra["idle_10min_steady"] = count * keepalive.total
        # Behind a NAT whose UDP binding expires sooner, the client must send keep-alives more often.
        extra["idle_10min_steady_by_interval_s"] = {f"{s:g}": math.floor(IDLE_S / s) * keepalive.total
                                                     for s in (60.0, 120.0, 300.0, 600.0)}  # fmt: skip
        extra["keepalive_bytes"] = keepalive.total
        # A notification proves the observation works; then the client leaves it (a reset ends it there).
        await feeder.post_one(room)
        pushed = await asyncio.wait_for(observation.__anext__(), 30)
        if not _timeline(pushed, room):
            raise BenchError("the observation's notification carried no event")
        await observation.aclose()
        batch = pushed["next_batch"]
        await feeder.post_one(room)  # its notification meets the reset now, before the batch is measured
        await asyncio.sleep(1.0)
        batch = check("sync", *await client.sync(batch, 0))["next_batch"]

        await feeder.post_batch(room)
        start = mark()
        code, body = await client.sync(batch, HTTP_POLL_MS)
        tallies["sync_5"] = since(start)
        got = len(_timeline(check("sync", code, body), room))
        if got != BATCH:
            raise BenchError(f"the CoAP sync after {BATCH} messages carried {got} events")
    except CoapClientError as exc:
        raise BenchError(f"CoAP ({url}): {exc}") from None
    finally:
        await client.close()
    return {
        **{phase: tallies[phase].total for phase in PHASES},
        "detail": {phase: [tallies[phase].out, tallies[phase].back] for phase in PHASES},
        **extra,
    }


def send_time_ms(datagrams: list[tuple[str, int]], bps: float = 100.0, bits_per_byte: int = 8) -> float:
    """Milliseconds from the first byte of the send's request leaving to the last byte of its answer arriving.

    The datagrams (``("out", n)`` client → gateway, ``("in", n)`` back) go one after the other through a
    half-duplex :class:`~lowband.sim.link_model.LinkModel` at ``bps``, no latency, in simulated time;
    each is written when the one before it has arrived (the gateway answers what it received).
    """
    from lowband.sim.link_model import LinkModel

    line = LinkModel(bps, bits_per_byte=bits_per_byte, latency=0.0, seed=0)
    now = 0.0
    for direction, size in datagrams:
        side = "B" if direction == "out" else "A"  # the client is side B, the gateway side A
        line.write(side, bytes(size), now)
        got = 0
        while got < size:
            deadline = line.next_deadline()
            if deadline is None:
                raise BenchError("the link emulator lost a datagram")
            now = max(now, deadline)
            got += sum(len(data) for _, data in line.poll(now))
    return round(now * 1000, 1)


# ------------------------------------------------------------------ the run


async def _provision(data_dir: Path, name: str, user_id: str, out: Path) -> None:
    """``lowband coap-client add`` (a process: the benchmarks sit below the CLI); BenchError if it fails."""
    command = "import sys; from lowband.gateway.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", command, "coap-client", "add", name, "--user", user_id, "--data-dir", str(data_dir),
        "--out", str(out), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"lowband coap-client add {name} failed ({proc.returncode}): {stderr.decode().strip()}")


def _udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _gateway(tmp: Path, coap_port: int, secure_port: int) -> AsyncIterator[int]:
    """A gateway in this loop with the HTTP API and ``[coap]`` on both ports; yields its HTTP port."""
    from lowband.gateway.app import run_gateway
    from lowband.gateway.config import load_config

    http_port = free_port()
    coap = {"bind": f"127.0.0.1:{coap_port}", "secure_bind": f"127.0.0.1:{secure_port}"}
    config = load_config(None, data_dir=tmp / "data", server_name="localhost", http_port=http_port,
                         registration_enabled=True, components={"coap": coap})  # fmt: skip
    started, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_gateway(config, started, stop))
    waiter = asyncio.create_task(started.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        raise BenchError(f"the gateway did not start: {task.exception()!r}")
    if waiter not in done:
        task.cancel()
        raise BenchError("the gateway did not start within 60 s")
    try:
        yield http_port
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _measure(poll_ms: int, keepalive_s: float, columns: tuple[str, ...]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    missing: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="lowband-bench-coap-") as name:
        tmp = Path(name)
        coap_port, secure_port = _udp_port(), _udp_port()
        async with _gateway(tmp, coap_port, secure_port) as http_port, aiohttp.ClientSession() as session:
            feeder = Feeder(session, f"http://127.0.0.1:{http_port}")
            user = await _register(feeder, USER, PASSWORD)
            feeder.token = (await _register(feeder, FEEDER, PASSWORD))["access_token"]
            room = (await feeder.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}))["room_id"]
            await feeder.call("POST", f"/_matrix/client/v3/join/{room}", {}, token=user["access_token"])

            if "http_json" in columns:
                progress("coap", f"HTTP/1.1+JSON with matrix-nio (one idle long-poll of {poll_ms / 1000:g} s) …")
                relay = CountingRelay(http_port)
                await relay.start()
                try:
                    results["http_json"] = await measure_http(relay, room, feeder, poll_ms)
                finally:
                    await relay.close()
            if "msc3079" in columns:
                progress("coap", "MSC3079 over plain UDP …")
                results["msc3079"] = await measure_coap(f"coap://127.0.0.1:{coap_port}", room, feeder, key_file=None,
                                                        compact=False, keepalive_s=keepalive_s)  # fmt: skip
            if "compact" in columns:
                progress("coap", "compact mode over a Noise session …")
                key = tmp / "bench-client.json"
                await _provision(tmp / "data", "bench", user["user_id"], key)
                await asyncio.sleep(1.5)  # the secure listener notices the new client list
                results["compact"] = await measure_coap(f"coap://127.0.0.1:{secure_port}", room, feeder,
                                                        key_file=key, compact=True, keepalive_s=keepalive_s)  # fmt: skip
    for column in COLUMNS:
        if column not in results:
            missing[column] = "not measured in this run"
    results["missing"] = missing
    return results


def assemble(results: dict[str, Any], keepalive_s: float) -> dict[str, Any]:
    """The benchmark's result (the last key order is the contract's) from the measured columns."""
    out: dict[str, Any] = {}
    for column in COLUMNS:
        if column in results:
            out[f"{column}_detail"] = {k: v for k, v in results[column].items() if k not in PHASES}
    ratios: dict[str, dict[str, float | None]] = {}
    for phase in PHASES:
        anchor = results.get("http_json", {}).get(phase)
        ratios[phase] = {c: (round(results[c][phase] / anchor, 4) if c in results and anchor else None)
                         for c in ("msc3079", "compact")}  # fmt: skip
    out["ratio_vs_http_json"] = ratios
    out["keepalive_interval_s"] = keepalive_s
    out["missing"] = results.get("missing", {})
    send_ms = None
    if "compact" in results:
        datagrams = results["compact"].get("send_datagrams") or []
        send_ms = send_time_ms(datagrams)
        out["send_100bps_ms_serial_8n1"] = send_time_ms(datagrams, bits_per_byte=10)
        out["send_100bps_method"] = ("the compact send's datagrams (request, answer) through sim.link_model.LinkModel "
                                     "at 100 bps, 8 bits per byte, no latency, simulated time")  # fmt: skip
    out["targets"] = {"send_compact_max": TARGET_SEND, "idle_10min_compact_max": TARGET_IDLE}
    for phase in PHASES:
        out[phase] = {c: results[c][phase] if c in results else None for c in COLUMNS}
    out["send_100bps_ms"] = send_ms
    return out


_CONTRACT_KEYS = ("send", "login", "idle_10min", "sync_5", "send_100bps_ms")


def _contract_line(result: dict[str, Any]) -> dict[str, Any]:
    """The keys of the issue's contract, in its order (printed last with ``--json``)."""
    return {"send": result["send"], "login": result["login"], "idle_10min": result["idle_10min"],
            "sync_5": result["sync_5"], "send_100bps_ms": result["send_100bps_ms"]}  # fmt: skip


def render_table(result: dict[str, Any]) -> str:
    """A readable table: bytes per phase in each column, ratios against HTTP+JSON, how idle was counted."""
    lines = [f"{'bytes on the wire (request + response)':<40}{'HTTP+JSON':>11}{'MSC3079':>10}{'compact':>10}"]
    for phase, label in (("login", "login"), ("send", "send one text message"), ("idle_10min", "idle 10 minutes"),
                         ("sync_5", "sync with 5 new messages")):  # fmt: skip
        cells = [result[phase].get(c) for c in COLUMNS]
        lines.append(f"{label:<40}" + "".join(f"{'—' if v is None else v:>{w}}" for v, w in zip(cells, (11, 10, 10))))
        ratio = result["ratio_vs_http_json"][phase]
        lines.append(f"{'  vs HTTP+JSON':<40}{'':>11}" + "".join(
            f"{'—' if ratio[c] is None else f'{ratio[c]:.1%}':>10}" for c in ("msc3079", "compact")))  # fmt: skip
    send_ms = result.get("send_100bps_ms")
    lines.append(f"compact send at 100 bps: {'—' if send_ms is None else f'{send_ms:.0f} ms'} "
                 "(request + answer through the link emulator, 8 bits/byte; "
                 f"{result.get('send_100bps_ms_serial_8n1', '—')} ms on an 8N1 serial line)")  # fmt: skip
    lines.append(f"targets: compact send ≤ {TARGET_SEND} B, idle ≤ {TARGET_IDLE} B per 10 min")
    lines.append(f"keep-alive every {result['keepalive_interval_s']:g} s (none is needed on a serial or LoRa link; "
                 "behind a NAT that forgets UDP bindings sooner, more often: idle_10min_steady_by_interval_s)")  # fmt: skip
    for column in COLUMNS:
        detail = result.get(f"{column}_detail", {})
        if "idle_method" in detail:
            lines.append(f"idle, {column}: {detail['idle_method']}")
        if "idle_10min_steady" in detail:
            lines.append(f"idle 10 minutes, {column}, observation already open: {detail['idle_10min_steady']} B")
        if "session_setup" in detail:
            lines.append(f"connection set-up, {column}: {detail['session_setup']} B (not in the rows above)")
    for column, reason in result.get("missing", {}).items():
        lines.append(f"missing: {column}: {reason}")
    return "\n".join(lines)


def run(seconds: float | None = None, json: bool = False) -> tuple[dict[str, Any], str]:
    """Run the benchmark; ``seconds``: how long the measured idle HTTP long-poll waits (default 30).

    Returns the issue's contract object (``send``, ``login``, ``idle_10min``, ``sync_5``,
    ``send_100bps_ms``) and a readable table. With ``json`` the details (ratios, per-direction
    bytes, how each figure was obtained, what is missing) are printed first as one JSON line of
    their own, so that the contract object is the last line. Raises :class:`BenchError` when a
    part cannot be measured.
    """
    import json as json_module

    poll_s = 30.0 if seconds is None else seconds
    if not 0 < poll_s <= 30:
        raise BenchError("--seconds (the idle long-poll) must be in (0, 30]")
    from lowband.gateway.coap.client import DEFAULT_KEEPALIVE_S

    results = asyncio.run(_measure(int(poll_s * 1000), DEFAULT_KEEPALIVE_S, COLUMNS))
    result = assemble(results, DEFAULT_KEEPALIVE_S)
    if json:
        details = {k: v for k, v in result.items() if k not in _CONTRACT_KEYS}
        print(json_module.dumps({"details": details}))
    return _contract_line(result), render_table(result)
