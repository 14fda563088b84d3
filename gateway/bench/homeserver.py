"""``lowband bench homeserver``: our gateway against a real Synapse, side by side.

Both servers run on loopback, one after the other, each on a fresh data
directory, and the same load client measures both:

* ``sends_per_s`` — one user posts messages one after another, each waiting
  for its response (``PUT …/send/m.room.message/{txnId}``);
* ``sends_per_s_8`` — eight users joined to one room send in a loop at once;
* ``sync_latency_ms`` — median time from the start of user A's send request
  until user B's parked long-poll ``/sync`` returns that event;
* ``rss_idle_mb`` / ``rss_load_mb`` — resident memory of the server process
  and its children (``VmRSS``), idle after start-up and right after the load.

Each load phase stops at a message count or a duration, whichever comes
first, so a slow server is measured for the duration and a fast one for the
count. Synapse is installed from PyPI into its own cache venv
(``~/.cache/lowband/synapse-venv``) on first use and is never a dependency of
the project. Progress goes to stderr; nothing here prints to stdout.

A server that cannot be installed, will not start, or answers a request with
an error ends the run with :class:`BenchError` (one line) — never numbers made
up in its place.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

SERVERS = ("lowband", "synapse")
#: The keys every server's figures carry; the result may add others.
FIGURE_KEYS = ("sends_per_s", "sends_per_s_8", "sync_latency_ms", "rss_idle_mb", "rss_load_mb")

# Targets from DESIGN.md "Numbers to beat", as ratios lowband / synapse.
TARGET_SENDS = 20.0
TARGET_RSS = 0.25
TARGET_LATENCY = 0.2

SENDERS = 8
WARMUP_SENDS = 5  # per user, before anything is timed
READY_TIMEOUT_S = 120.0
IDLE_SETTLE_S = 2.0  # after /versions answers, before the idle RSS is read
REQUEST_TIMEOUT_S = 30.0
SYNC_TIMEOUT_MS = 30_000
PARK_DELAY_S = 0.1  # lets B's long-poll reach the server before A sends
STOP_TIMEOUT_S = 15.0
RSS_SAMPLE_S = 0.25

_SERVER_NAME = "localhost"
_PASSWORD = "bench-password-not-secret"


class BenchError(Exception):
    """The benchmark could not measure a server; the message (one line) says why."""


# --------------------------------------------------------------------------
# Pure parts: parsing, statistics, configuration, result assembly.


def parse_vmrss_kib(status_text: str) -> int:
    """``VmRSS`` in KiB from the text of ``/proc/PID/status``.

    A process without the line (a zombie, a kernel thread) holds no user
    memory, so that is 0. Raises ValueError on a VmRSS line it cannot read.
    """
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit() or (len(parts) > 2 and parts[2] != "kB"):
                raise ValueError(f"unreadable VmRSS line: {line!r}")
            return int(parts[1])
    return 0


def median(values: list[float]) -> float:
    """The median of ``values``; raises ValueError when there are none."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def _limit(per_second: float = 100_000, burst: int = 100_000) -> dict[str, float]:
    return {"per_second": per_second, "burst_count": burst}


def synapse_rate_limits() -> dict[str, Any]:
    """Every client-side Synapse rate limit raised far above what the load reaches."""
    return {
        "rc_message": _limit(),
        "rc_registration": _limit(),
        "rc_room_creation": _limit(),
        "rc_login": {"address": _limit(), "account": _limit(), "failed_attempts": _limit()},
        "rc_joins": {"local": _limit(), "remote": _limit()},
        "rc_joins_per_room": _limit(),
        "rc_invites": {"per_room": _limit(), "per_user": _limit(), "per_issuer": _limit()},
        "rc_presence": {"per_user": _limit()},
        "rc_3pid_validation": _limit(),
        "rc_delayed_event_mgmt": _limit(),
        "rc_user_directory": _limit(),
        "rc_reports": _limit(),
        "rc_media_create": _limit(),
    }


def configure_synapse(config: dict[str, Any], *, port: int, data_dir: str) -> dict[str, Any]:
    """Synapse's generated config edited for the benchmark; ``config`` is left as it was.

    One plain-HTTP client listener on 127.0.0.1:``port`` (no federation),
    SQLite and media under ``data_dir``, open registration without
    verification, no key servers, no stats, rate limits out of the way.
    Everything else keeps Synapse's generated defaults.
    """
    edited = dict(config)
    edited["listeners"] = [
        {
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": False,
            "x_forwarded": False,
            "resources": [{"names": ["client"], "compress": False}],
        }
    ]
    edited["database"] = {"name": "sqlite3", "args": {"database": f"{data_dir}/homeserver.db"}}
    edited["media_store_path"] = f"{data_dir}/media_store"
    edited["pid_file"] = f"{data_dir}/homeserver.pid"
    edited["enable_registration"] = True
    edited["enable_registration_without_verification"] = True
    edited["trusted_key_servers"] = []
    edited["suppress_key_server_warning"] = True
    edited["report_stats"] = False
    edited.update(synapse_rate_limits())
    return edited


def _ratio(figures: dict[str, dict[str, Any]], key: str) -> float | None:
    ours, theirs = figures.get("lowband"), figures.get("synapse")
    if ours is None or theirs is None:
        return None
    a, b = ours.get(key), theirs.get(key)
    if a is None or not b:
        return None
    return round(float(a) / float(b), 4)


def assemble(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The benchmark result from each measured server's figures.

    ``figures`` maps ``"lowband"`` and/or ``"synapse"`` to dicts with at
    least :data:`FIGURE_KEYS`. A ratio whose two sides were not both measured
    (or whose anchor is 0) is None.
    """
    result: dict[str, Any] = {name: dict(figures[name]) for name in SERVERS if name in figures}
    result["ratio_sends"] = _ratio(figures, "sends_per_s_8")
    result["ratio_rss"] = _ratio(figures, "rss_load_mb")
    result["ratio_latency"] = _ratio(figures, "sync_latency_ms")
    return result


_ROWS = (
    ("sends/s, 1 sender", "sends_per_s", "{:.1f}"),
    ("sends/s, 8 senders", "sends_per_s_8", "{:.1f}"),
    ("send → /sync, median ms", "sync_latency_ms", "{:.1f}"),
    ("RSS idle, MiB", "rss_idle_mb", "{:.1f}"),
    ("RSS after load, MiB", "rss_load_mb", "{:.1f}"),
)
# figure key → (ratio key, target text, is the ratio good?)
_TARGETS: dict[str, tuple[str, str, Callable[[float], bool]]] = {
    "sends_per_s_8": ("ratio_sends", f"≥ {TARGET_SENDS:g}×", lambda r: r >= TARGET_SENDS),
    "sync_latency_ms": ("ratio_latency", "≤ ⅕", lambda r: r <= TARGET_LATENCY),
    "rss_load_mb": ("ratio_rss", "≤ ¼", lambda r: r <= TARGET_RSS),
}


def render_table(result: dict[str, Any]) -> str:
    """A readable table of :func:`assemble`'s result: both servers, ratios, targets."""
    lines = [f"{'':<26}{'lowband':>10}{'synapse':>10}{'ratio':>10}  target"]
    for label, key, fmt in _ROWS:
        cells = []
        for name in SERVERS:
            value = result.get(name, {}).get(key)
            cells.append(f"{fmt.format(value) if value is not None else '—':>10}")
        ratio_cell, target_cell = f"{'':>10}", ""
        if key in _TARGETS:
            ratio_key, target, good = _TARGETS[key]
            ratio = result.get(ratio_key)
            if ratio is not None:
                ratio_cell = f"{ratio:>9.3g}×"
                target_cell = f"{target:<8}{'met' if good(ratio) else 'missed'}"
            else:
                target_cell = target
        lines.append(f"{label:<26}{''.join(cells)}{ratio_cell}  {target_cell}".rstrip())
    for name in SERVERS:
        if name in result:
            f = result[name]
            lines.append(
                f"{name} {f.get('version', '?')}: {f.get('messages_1', '?')} sequential sends in "
                f"{f.get('seconds_1', '?')} s, {f.get('messages_8', '?')} with {SENDERS} senders in "
                f"{f.get('seconds_8', '?')} s (load client at {f.get('client_cpu_8', '?')} of a core), "
                f"{f.get('latency_rounds', '?')} latency rounds, peak RSS {f.get('rss_peak_mb', '?')} MiB, "
                f"load average {f.get('loadavg_1m', '?')} before"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Processes: memory, start, stop.


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` found through /proc/PID/task/*/children."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            pending.extend(kids)
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MiB."""
    total_kib = 0
    for p in [pid, *_descendants(pid)]:
        try:
            total_kib += parse_vmrss_kib(Path(f"/proc/{p}/status").read_text())
        except FileNotFoundError:
            continue  # exited between listing and reading
    return total_kib / 1024


def _progress(message: str) -> None:
    sys.stderr.write(f"bench homeserver: {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A server under test: how to start it and where its output goes."""

    name: str
    argv: list[str]
    cwd: Path
    log: Path
    version: str
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process in its own session, output to :attr:`log`."""
        with open(self.log, "ab") as out:
            # Own session: the terminal's Ctrl-C reaches only us, and stop()
            # ends the server and anything it forked as one group.
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )

    def last_log_line(self) -> str:
        try:
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after :data:`STOP_TIMEOUT_S`."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


def lowband_argv() -> list[str]:
    """argv prefix that runs this installation's ``lowband`` command."""
    script = Path(sys.executable).with_name("lowband")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "lowband.gateway.cli.main"]


def _lowband_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lowband")
    except PackageNotFoundError:
        return "?"


def prepare_lowband(workdir: Path) -> ServerProcess:
    """The gateway as a subprocess on a fresh data dir, rate limits off."""
    port = free_port()
    data = workdir / "data"
    data.mkdir()
    config = workdir / "lowband.toml"
    config.write_text("[rate_limits]\nenabled = false\n")
    argv = lowband_argv() + [
        "serve",
        "--data-dir", str(data),
        "--server-name", _SERVER_NAME,
        "--http", f"127.0.0.1:{port}",
        "--config", str(config),
        "--enable-registration",
    ]  # fmt: skip
    return ServerProcess("lowband", argv, workdir, workdir / "lowband.log", _lowband_version(), port)


def synapse_venv_dir() -> Path:
    """Where Synapse is installed: ``$LOWBAND_SYNAPSE_VENV`` or the user cache."""
    override = os.environ.get("LOWBAND_SYNAPSE_VENV")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lowband" / "synapse-venv"


def _run_tool(argv: list[str], what: str, timeout: float, cwd: Path | None = None) -> str:
    """Run a setup command, its output shown on stderr; returns its stdout."""
    try:
        done = subprocess.run(argv, check=False, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise BenchError(f"{what} failed with status {done.returncode}: {tail[-1] if tail else 'no output'}")
    return done.stdout


def ensure_synapse() -> Path:
    """The Python of a venv with matrix-synapse in it, installing from PyPI on first use.

    Raises BenchError when the venv cannot be made or pip fails.
    """
    venv = synapse_venv_dir()
    python = venv / "bin" / "python"
    marker = venv / ".lowband-installed"
    if python.exists() and marker.exists():
        return python
    _progress(f"installing matrix-synapse from PyPI into {venv} (once; about a minute)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run_tool([sys.executable, "-m", "venv", "--clear", str(venv)], "creating the Synapse venv", 300)
    pip = [str(python), "-m", "pip", "install", "--progress-bar", "off", "matrix-synapse"]
    try:
        # pip's own lines ("Collecting …") are the progress, so they go to stderr.
        code = subprocess.run(pip, check=False, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr, timeout=1800).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"pip install matrix-synapse failed: {exc}") from exc
    if code != 0:
        raise BenchError(f"pip install matrix-synapse failed with status {code} (see the lines above)")
    marker.write_text("matrix-synapse\n")
    return python


def prepare_synapse(workdir: Path) -> ServerProcess:
    """Synapse with a generated, then edited, config in ``workdir``."""
    python = ensure_synapse()
    version = _run_tool([str(python), "-c", "import synapse; print(synapse.__version__)"], "reading Synapse's version", 120).strip()
    port = free_port()
    config_path = workdir / "homeserver.yaml"
    _run_tool(
        [
            str(python), "-m", "synapse.app.homeserver",
            "--server-name", _SERVER_NAME,
            "--config-path", str(config_path),
            "--data-directory", str(workdir),
            "--generate-config", "--report-stats=no",
        ],
        # Synapse puts its log file in the working directory of this step.
        "generating the Synapse config", 120, cwd=workdir,
    )  # fmt: skip
    # The project has no YAML library; Synapse's venv has one, and JSON is YAML.
    as_json = _run_tool(
        [str(python), "-c", "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)", str(config_path)],
        "reading the generated Synapse config", 60,
    )  # fmt: skip
    config = configure_synapse(json.loads(as_json), port=port, data_dir=str(workdir))
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    argv = [str(python), "-m", "synapse.app.homeserver", "-c", str(config_path)]
    return ServerProcess("synapse", argv, workdir, workdir / "synapse.stdout.log", version, port)


# --------------------------------------------------------------------------
# The load client: raw Matrix client-server HTTP over aiohttp.


@dataclass
class Counters:
    rate_limited: int = 0


class MatrixUser:
    """One registered user: raw requests with its access token."""

    def __init__(self, http: aiohttp.ClientSession, server: ServerProcess, counters: Counters) -> None:
        self.http = http
        self.server = server
        self.counters = counters
        self.token = ""
        self.user_id = ""
        self._txn = 0

    async def request(self, method: str, path: str, body: Any = None, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """One request; retries on 429, raises BenchError on any other failure."""
        return await _request(self.http, self.server, method, path, body, self.token, timeout_s, self.counters)

    async def register(self, username: str) -> None:
        """Register with the ``m.login.dummy`` flow, answering a UIA 401 with its session."""
        body: dict[str, Any] = {"username": username, "password": _PASSWORD, "auth": {"type": "m.login.dummy"}}
        reply = await _request(self.http, self.server, "POST", "/_matrix/client/v3/register", body, None,
                               REQUEST_TIMEOUT_S, self.counters, accept_401=True)  # fmt: skip
        if "access_token" not in reply and reply.get("session"):
            body["auth"]["session"] = reply["session"]
            reply = await self.request("POST", "/_matrix/client/v3/register", body)
        if "access_token" not in reply:
            raise BenchError(f"{self.server.name}: /register gave no access token: {json.dumps(reply)[:200]}")
        self.token, self.user_id = reply["access_token"], reply.get("user_id", username)

    async def send(self, room_id: str, text: str) -> str:
        """Post an ``m.text`` message; returns its event ID."""
        self._txn += 1
        path = "/_matrix/client/v3/rooms/{}/send/m.room.message/{}".format(
            quote(room_id, safe=""), f"b{self._txn}-{time.time_ns()}"
        )
        reply = await self.request("PUT", path, {"msgtype": "m.text", "body": text})
        return str(reply.get("event_id", ""))

    async def sync(self, since: str | None, timeout_ms: int) -> dict[str, Any]:
        path = f"/_matrix/client/v3/sync?timeout={timeout_ms}"
        if since:
            path += f"&since={quote(since, safe='')}"
        return await self.request("GET", path, timeout_s=timeout_ms / 1000 + REQUEST_TIMEOUT_S)


async def _request(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    method: str,
    path: str,
    body: Any,
    token: str | None,
    timeout_s: float,
    counters: Counters,
    accept_401: bool = False,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    while True:
        try:
            async with http.request(method, server.base_url + path, json=body, headers=headers, timeout=timeout) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise BenchError(f"{server.name}: {method} {path.split('?')[0]} failed: {exc!r}") from exc
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError:
            reply = {"error": raw[:120].decode(errors="replace")}
        if status == 429:
            counters.rate_limited += 1
            await asyncio.sleep(min(5.0, reply.get("retry_after_ms", 100) / 1000))
            continue
        if 200 <= status < 300 or (accept_401 and status == 401):
            return reply if isinstance(reply, dict) else {}
        raise BenchError(
            f"{server.name}: {method} {path.split('?')[0]} answered {status} "
            f"{reply.get('errcode', '')} {str(reply.get('error', ''))[:120]}".rstrip()
        )


async def wait_ready(http: aiohttp.ClientSession, server: ServerProcess, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Seconds until ``/_matrix/client/versions`` answers 200.

    Raises BenchError when the process exits first or the timeout passes.
    """
    assert server.proc is not None
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        code = server.proc.poll()
        if code is not None:
            raise BenchError(
                f"{server.name} exited with status {code} before answering /_matrix/client/versions; "
                f"its last line: {server.last_log_line() or '(none)'}"
            )
        try:
            async with http.get(server.base_url + "/_matrix/client/versions", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return time.perf_counter() - start
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.1)
    raise BenchError(f"{server.name} did not answer /_matrix/client/versions within {timeout_s:.0f} s")


@dataclass
class LoadPlan:
    """How much load each phase gets: a count cap and a time cap, whichever is reached first."""

    messages: int = 20_000
    seconds: float = 10.0
    latency_rounds: int = 30


async def sequential_sends(user: MatrixUser, room_id: str, plan: LoadPlan) -> tuple[int, float]:
    """(messages sent, seconds) for one user sending one message at a time."""
    start = time.perf_counter()
    deadline = start + plan.seconds
    sent = 0
    while sent < plan.messages and time.perf_counter() < deadline:
        await user.send(room_id, f"sequential {sent}")
        sent += 1
    return sent, time.perf_counter() - start


async def concurrent_sends(users: list[MatrixUser], room_id: str, plan: LoadPlan) -> tuple[int, float]:
    """(messages sent, seconds) for every user sending in its own loop at once."""
    start = time.perf_counter()
    deadline = start + plan.seconds
    claimed = 0

    async def sender(user: MatrixUser) -> int:
        nonlocal claimed
        mine = 0
        while claimed < plan.messages and time.perf_counter() < deadline:
            claimed += 1  # claim before awaiting, so the total never overshoots
            await user.send(room_id, f"concurrent {claimed}")
            mine += 1
        return mine

    counts = await asyncio.gather(*(sender(u) for u in users))
    return sum(counts), time.perf_counter() - start


def _timeline_bodies(sync: dict[str, Any], room_id: str) -> list[str]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    events = room.get("timeline", {}).get("events", [])
    return [str(e.get("content", {}).get("body", "")) for e in events if isinstance(e, dict)]


async def sync_latencies(sender: MatrixUser, receiver: MatrixUser, room_id: str, rounds: int) -> list[float]:
    """Milliseconds from the start of each send until the receiver's long-poll returns it."""
    since = str((await receiver.sync(None, 0)).get("next_batch", ""))
    latencies: list[float] = []
    for i in range(rounds):
        marker = f"latency probe {i} {uuid.uuid4().hex}"

        async def wait_for_marker(since: str = since, marker: str = marker) -> tuple[float, str]:
            while True:
                reply = await receiver.sync(since, SYNC_TIMEOUT_MS)
                arrived = time.perf_counter()
                since = str(reply.get("next_batch", since))
                if marker in _timeline_bodies(reply, room_id):
                    return arrived, since

        poll = asyncio.create_task(wait_for_marker())
        try:
            await asyncio.sleep(PARK_DELAY_S)
            sent_at = time.perf_counter()
            await sender.send(room_id, marker)
            arrived, since = await asyncio.wait_for(poll, SYNC_TIMEOUT_MS / 1000 + REQUEST_TIMEOUT_S)
        except TimeoutError as exc:
            raise BenchError(f"{receiver.server.name}: /sync never returned message {i}") from exc
        finally:
            poll.cancel()
        latencies.append((arrived - sent_at) * 1000)
    return latencies


async def _sample_peak(pid: int, peak: list[float]) -> None:
    while True:
        peak[0] = max(peak[0], rss_mib(pid))
        await asyncio.sleep(RSS_SAMPLE_S)


async def measure(server: ServerProcess, plan: LoadPlan) -> dict[str, Any]:
    """Every figure of one started server; raises BenchError when it misbehaves."""
    assert server.proc is not None
    pid = server.proc.pid
    counters = Counters()
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        startup_s = await wait_ready(http, server)
        _progress(f"{server.name} {server.version} answering after {startup_s:.1f} s; settling")
        await asyncio.sleep(IDLE_SETTLE_S)
        rss_idle = rss_mib(pid)

        _progress(f"{server.name}: registering {SENDERS} users, one room")
        users = [MatrixUser(http, server, counters) for _ in range(SENDERS)]
        for n, user in enumerate(users):
            await user.register(f"bench{n}")
        created = await users[0].request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "bench"})
        room_id = str(created.get("room_id", ""))
        if not room_id:
            raise BenchError(f"{server.name}: /createRoom gave no room_id")
        for user in users[1:]:
            await user.request("POST", f"/_matrix/client/v3/join/{quote(room_id, safe='')}", {})
        for user in users:
            for _ in range(WARMUP_SENDS):
                await user.send(room_id, "warm-up")

        peak = [rss_mib(pid)]
        sampler = asyncio.create_task(_sample_peak(pid, peak))
        try:
            _progress(f"{server.name}: sequential sends (≤ {plan.messages} or {plan.seconds:g} s)")
            sent_1, seconds_1 = await sequential_sends(users[0], room_id, plan)
            _progress(f"{server.name}: sends with {SENDERS} senders (≤ {plan.messages} or {plan.seconds:g} s)")
            cpu_before = time.process_time()
            sent_8, seconds_8 = await concurrent_sends(users, room_id, plan)
            client_cpu_8 = (time.process_time() - cpu_before) / seconds_8
            _progress(f"{server.name}: send → /sync latency, {plan.latency_rounds} rounds")
            latencies = await sync_latencies(users[0], users[1], room_id, plan.latency_rounds)
            rss_load = rss_mib(pid)
        finally:
            sampler.cancel()
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited during the load: {server.last_log_line()}")

    return {
        "sends_per_s": round(sent_1 / seconds_1, 1),
        "sends_per_s_8": round(sent_8 / seconds_8, 1),
        "sync_latency_ms": round(median(latencies), 2),
        "rss_idle_mb": round(rss_idle, 1),
        "rss_load_mb": round(rss_load, 1),
        "rss_peak_mb": round(max(peak[0], rss_load), 1),
        "version": server.version,
        "startup_s": round(startup_s, 2),
        "messages_1": sent_1,
        "seconds_1": round(seconds_1, 2),
        "messages_8": sent_8,
        "seconds_8": round(seconds_8, 2),
        "latency_rounds": len(latencies),
        "sync_latency_ms_min": round(min(latencies), 2),
        "sync_latency_ms_max": round(max(latencies), 2),
        "rate_limited": counters.rate_limited,
        # Near 1.0 the load client, not the server, was the limit with 8 senders.
        "client_cpu_8": round(client_cpu_8, 2),
        "loadavg_1m": round(load_before, 2),
    }


_PREPARE = {"lowband": prepare_lowband, "synapse": prepare_synapse}


def measure_server(name: str, plan: LoadPlan) -> dict[str, Any]:
    """Prepare, start, measure and stop one server; the process is stopped whatever happens."""
    with tempfile.TemporaryDirectory(prefix=f"lowband-bench-{name}-") as tmp:
        server = _PREPARE[name](Path(tmp))
        _progress(f"starting {name} on {server.base_url}")
        try:
            server.start()
            return asyncio.run(measure(server, plan))
        except OSError as exc:
            raise BenchError(f"{name} could not be started: {exc}") from exc
        finally:
            server.stop()
            _progress(f"{name} stopped")


def run(
    only: str | None = None,
    messages: int = 20_000,
    seconds: float = 10.0,
    latency_rounds: int = 30,
) -> tuple[dict[str, Any], str]:
    """Measure lowband and Synapse (or ``only`` one); result dict and readable table.

    ``messages`` and ``seconds`` cap each send phase (whichever is reached
    first); ``latency_rounds`` is the number of send → /sync samples. Lowband
    runs first so a gateway that will not start fails before Synapse is
    installed. Raises BenchError (one line) when a server cannot be measured,
    ValueError on a bad argument.
    """
    if only is not None and only not in SERVERS:
        raise ValueError(f"only must be one of {', '.join(SERVERS)}, not {only!r}")
    if messages < 1 or seconds <= 0 or latency_rounds < 1:
        raise ValueError("messages, seconds and latency_rounds must be positive")
    plan = LoadPlan(messages=messages, seconds=seconds, latency_rounds=latency_rounds)
    figures = {name: measure_server(name, plan) for name in SERVERS if only in (None, name)}
    result = assemble(figures)
    return result, render_table(result)
