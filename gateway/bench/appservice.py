"""``lowband bench appservice``: events pushed to a bridge, our gateway against a real Synapse.

Each server runs on loopback on a fresh data directory with one application
service registered; the bridge is :class:`~lowband.gateway.bench.bridge_receiver.BridgeReceiver`
inside this process — the same code for both servers. The bridge's bot
(its ``sender_localpart``, acting with the ``as_token``) joins a public room,
which makes every event of the room interesting to the bridge; eight users
post into that room with the ordinary client API:

* ``push_latency_ms`` / ``push_latency_ms_p99`` — median and 99th percentile
  of the time from the start of a send request to the bridge receiving that
  event, one message at a time with the previous one already received, so
  no queue is measured;
* ``push_events_per_s`` — a burst of N messages from eight senders at once:
  events received by the bridge per second, from the first send to the last
  event received (the send rate alone is ``sends_per_s``; ``push_lag_ms``,
  how long after the last send the last push came, tells whether pushing
  kept up with sending);
* ``transactions`` / ``events_per_transaction`` — how the burst was batched;
* ``lost`` / ``duplicated`` — messages sent but never pushed, events pushed
  twice (both must be 0); ``retried_transactions`` — a transaction ID pushed
  again (allowed, answered ``{}``, not counted twice);
* ``rss_idle_mb`` / ``rss_load_mb`` — the server's resident memory.

A server that cannot be installed or started, answers a request with an
error, or pushes nothing at all ends the run with :class:`BenchError` (one
line). Progress goes to stderr; nothing here prints to stdout.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from lowband.gateway.bench import homeserver as homeserver_bench
from lowband.gateway.bench.bridge_receiver import BridgeReceiver
from lowband.gateway.bench.figures import median, ratio
from lowband.gateway.bench.matrix_load import Counters, MatrixUser, join_path, users_in_one_room, wait_ready
from lowband.gateway.bench.processes import BenchError, ServerProcess, progress, rss_mib
from lowband.gateway.bench.synapse import SERVER_NAME, prepare_synapse

SERVERS = ("lowband", "synapse")
#: The keys every server's figures carry; the result may add others.
FIGURE_KEYS = (
    "push_events_per_s", "push_latency_ms", "push_latency_ms_p99", "transactions", "events_per_transaction",
    "lost", "duplicated", "rss_idle_mb", "rss_load_mb",
)  # fmt: skip

SENDERS = 8
BRIDGE_ID = "bench-bridge"
BOT_LOCALPART = "benchbridge"
WARMUP_SENDS = 3  # per user, each waited for at the bridge before anything is timed
FIRST_PUSH_TIMEOUT_S = 60.0  # nothing at all pushed by then: the server does not push
ROUND_TIMEOUT_S = 15.0  # one paced message not pushed by then is lost
DRAIN_TIMEOUT_S = 60.0  # after the burst's last send, for the rest to arrive
DUPLICATE_WATCH_S = 1.0  # listened to after everything arrived, for late duplicates
PACE_S = 0.02  # between paced messages
IDLE_SETTLE_S = 2.0
RSS_SAMPLE_S = 0.25

__all__ = ["FIGURE_KEYS", "SERVERS", "BenchError", "assemble", "percentile", "registration", "render_table", "run"]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (0 < q ≤ 100) by the nearest-rank method.

    Nearest rank returns a value that was measured (no interpolation), so a
    p99 of 100 samples is the second largest. Raises ValueError when there
    are no values or ``q`` is out of range.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {q}")
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return float(ordered[rank - 1])


def assemble(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The benchmark result from each measured server's figures.

    ``figures`` maps ``"lowband"`` and/or ``"synapse"`` to dicts with at
    least :data:`FIGURE_KEYS`. Ratios are lowband / synapse; one whose two
    sides were not both measured (or whose anchor is 0 or None) is None.
    """
    result: dict[str, Any] = {name: dict(figures[name]) for name in SERVERS if name in figures}
    result["ratio_push"] = ratio(figures, "push_events_per_s")
    result["ratio_latency"] = ratio(figures, "push_latency_ms")
    result["ratio_latency_p99"] = ratio(figures, "push_latency_ms_p99")
    result["ratio_rss"] = ratio(figures, "rss_load_mb")
    return result


_ROWS = (
    ("events pushed/s, burst", "push_events_per_s", "{:.1f}", "ratio_push"),
    ("send → bridge, median ms", "push_latency_ms", "{:.1f}", "ratio_latency"),
    ("send → bridge, p99 ms", "push_latency_ms_p99", "{:.1f}", "ratio_latency_p99"),
    ("sends/s during the burst", "sends_per_s", "{:.1f}", None),
    ("last push after last send, ms", "push_lag_ms", "{:.1f}", None),
    ("transactions, burst", "transactions", "{:d}", None),
    ("events per transaction", "events_per_transaction", "{:.1f}", None),
    ("lost", "lost", "{:d}", None),
    ("duplicated", "duplicated", "{:d}", None),
    ("RSS idle, MiB", "rss_idle_mb", "{:.1f}", None),
    ("RSS after load, MiB", "rss_load_mb", "{:.1f}", "ratio_rss"),
)


def render_table(result: dict[str, Any]) -> str:
    """A readable table of :func:`assemble`'s result: both servers side by side and the ratios."""
    lines = [f"{'':<30}{'lowband':>10}{'synapse':>10}{'ratio':>10}"]
    for label, key, fmt, ratio_key in _ROWS:
        cells = []
        for name in SERVERS:
            value = result.get(name, {}).get(key)
            cells.append(f"{fmt.format(value) if value is not None else '—':>10}")
        ratio = result.get(ratio_key) if ratio_key else None
        ratio_cell = f"{ratio:>9.3g}×" if ratio is not None else ""
        lines.append(f"{label:<30}{''.join(cells)}{ratio_cell}".rstrip())
    for name in SERVERS:
        if name in result:
            f = result[name]
            lines.append(
                f"{name} {f.get('version', '?')}: burst of {f.get('burst_messages', '?')} messages from {SENDERS} "
                f"senders, last pushed {f.get('burst_seconds', '?')} s after the first send (load client and "
                f"bridge at {f.get('client_cpu', '?')} of a core); {f.get('latency_rounds', '?')} paced messages, "
                f"max {f.get('push_latency_ms_max', '?')} ms; {f.get('retried_transactions', '?')} transactions "
                f"retried, {f.get('refused_requests', '?')} refused; load average {f.get('loadavg_1m', '?')} before"
            )
    if any(name in result and (result[name].get("lost") or result[name].get("duplicated")) for name in SERVERS):
        lines.append("LOST OR DUPLICATED EVENTS: every message sent must reach the bridge exactly once.")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Setting up a server with the bridge registered.


def _progress(message: str) -> None:
    progress("appservice", message)


def registration(bridge_url: str, as_token: str, hs_token: str) -> dict[str, Any]:
    """The bridge's registration document, as every homeserver reads it (JSON is YAML)."""
    return {
        "id": BRIDGE_ID,
        "url": bridge_url,
        "as_token": as_token,
        "hs_token": hs_token,
        "sender_localpart": BOT_LOCALPART,
        "rate_limited": False,
        "namespaces": {
            "users": [{"exclusive": True, "regex": f"@{BOT_LOCALPART}_.*:{SERVER_NAME}"}],
            "aliases": [],
            "rooms": [],
        },
    }


def prepare_lowband(workdir: Path, registration_file: Path) -> ServerProcess:
    """The gateway as a subprocess on a fresh data dir, rate limits off, the bridge registered."""
    # A JSON string is a valid TOML basic string.
    return homeserver_bench.prepare_lowband(
        workdir, f"\n[appservices]\nconfig_files = [{json.dumps(str(registration_file))}]\n")


def _prepare(name: str, workdir: Path, registration_file: Path) -> ServerProcess:
    if name == "lowband":
        return prepare_lowband(workdir, registration_file)
    return prepare_synapse(workdir, app_service_config_files=[str(registration_file)])


# --------------------------------------------------------------------------
# Measuring one server.


async def _sample_peak(pid: int, peak: list[float]) -> None:
    while True:
        peak[0] = max(peak[0], rss_mib(pid))
        await asyncio.sleep(RSS_SAMPLE_S)


async def _send_marked(user: MatrixUser, room_id: str, marker: str, sent: dict[str, float]) -> None:
    """Send ``marker`` as a message; ``sent[marker]`` is when the request started, kept once it succeeded."""
    started = time.perf_counter()
    await user.send(room_id, marker)
    sent[marker] = started


async def _paced(
    user: MatrixUser, room_id: str, bridge: BridgeReceiver, rounds: int, run_id: str, sent: dict[str, float]
) -> list[float]:
    """Milliseconds from each send's start to its arrival at the bridge, one message in flight at a time."""
    latencies: list[float] = []
    for i in range(rounds):
        await asyncio.sleep(PACE_S)
        marker = f"paced {run_id} {i}"
        await _send_marked(user, room_id, marker, sent)
        if await bridge.wait_for([marker], ROUND_TIMEOUT_S):
            latencies.append((bridge.ledger.by_body[marker] - sent[marker]) * 1000)
        # else: counted as lost at the end; the next round goes on
    return latencies


async def _burst(
    users: list[MatrixUser], room_id: str, messages: int, seconds: float, run_id: str, sent: dict[str, float]
) -> tuple[list[str], float, float]:
    """Every user sends in its own loop until ``messages`` or ``seconds``; (markers, start, end of sending)."""
    start = time.perf_counter()
    deadline = start + seconds
    claimed = 0
    markers: list[str] = []

    async def sender(user: MatrixUser) -> None:
        nonlocal claimed
        while claimed < messages and time.perf_counter() < deadline:
            marker = f"burst {run_id} {claimed}"
            claimed += 1  # claimed before awaiting, so the total never overshoots
            markers.append(marker)
            await _send_marked(user, room_id, marker, sent)

    await asyncio.gather(*(sender(u) for u in users))
    return markers, start, time.perf_counter()


async def measure(
    server: ServerProcess, bridge: BridgeReceiver, as_token: str, messages: int, seconds: float, rounds: int
) -> dict[str, Any]:
    """Every figure of one started server pushing to ``bridge``; BenchError when it misbehaves."""
    assert server.proc is not None
    pid = server.proc.pid
    counters = Counters()
    run_id = secrets.token_hex(4)
    sent: dict[str, float] = {}
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        startup_s = await wait_ready(http, server)
        _progress(f"{server.name} {server.version} answering after {startup_s:.1f} s; settling")
        await asyncio.sleep(IDLE_SETTLE_S)
        rss_idle = rss_mib(pid)

        _progress(f"{server.name}: registering {SENDERS} users, one room, the bridge's bot joins it")
        users, room_id = await users_in_one_room(http, server, counters, SENDERS)
        bot = MatrixUser(http, server, counters)
        bot.token = as_token  # no ?user_id=: the bridge acts as its sender_localpart
        await bot.request("POST", join_path(room_id), {})

        warmup = [f"warm-up {run_id} {n} {i}" for n in range(SENDERS) for i in range(WARMUP_SENDS)]
        for n, user in enumerate(users):
            for i in range(WARMUP_SENDS):
                await _send_marked(user, room_id, f"warm-up {run_id} {n} {i}", sent)
        if not await bridge.wait_for(warmup[:1], FIRST_PUSH_TIMEOUT_S):
            raise BenchError(
                f"{server.name} pushed nothing to the bridge within {FIRST_PUSH_TIMEOUT_S:.0f} s "
                f"({bridge.ledger.transactions} transactions, {bridge.ledger.refused} refused requests)"
            )
        await bridge.wait_for(warmup, ROUND_TIMEOUT_S)

        peak = [rss_mib(pid)]
        sampler = asyncio.create_task(_sample_peak(pid, peak))
        try:
            _progress(f"{server.name}: send → bridge latency, {rounds} paced messages")
            latencies = await _paced(users[0], room_id, bridge, rounds, run_id, sent)
            if not latencies:
                raise BenchError(f"{server.name}: none of {rounds} paced messages reached the bridge")

            _progress(
                f"{server.name}: burst of {messages} messages from {SENDERS} senders (≤ {seconds:g} s of sending)"
            )
            before = (bridge.ledger.transactions, bridge.ledger.events)
            cpu_before = time.process_time()
            markers, start, sending_done = await _burst(users, room_id, messages, seconds, run_id, sent)
            delivered = [m for m in markers if m in sent]
            await bridge.wait_for(delivered, DRAIN_TIMEOUT_S)
            arrived = [bridge.ledger.by_body[m] for m in delivered if m in bridge.ledger.by_body]
            last = max(arrived) if arrived else time.perf_counter()
            client_cpu = (time.process_time() - cpu_before) / max(last - start, 1e-9)
            transactions = bridge.ledger.transactions - before[0]
            events = bridge.ledger.events - before[1]
            rss_load = rss_mib(pid)
            await asyncio.sleep(DUPLICATE_WATCH_S)
        finally:
            sampler.cancel()
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited during the load: {server.last_log_line()}")

    burst_seconds = last - start
    ledger = bridge.ledger
    return {
        "push_events_per_s": round(len(arrived) / burst_seconds, 1) if arrived else 0.0,
        "push_latency_ms": round(median(latencies), 2),
        "push_latency_ms_p99": round(percentile(latencies, 99), 2),
        "transactions": transactions,
        "events_per_transaction": round(events / transactions, 1) if transactions else 0.0,
        "lost": len(ledger.missing(sent)),
        "duplicated": ledger.duplicated,
        "rss_idle_mb": round(rss_idle, 1),
        "rss_load_mb": round(rss_load, 1),
        "rss_peak_mb": round(max(peak[0], rss_load), 1),
        "version": server.version,
        "startup_s": round(startup_s, 2),
        "sends_per_s": round(len(delivered) / (sending_done - start), 1),
        # How far pushing trailed sending: near one paced latency when the pusher kept up with the burst.
        "push_lag_ms": round(max(0.0, last - sending_done) * 1000, 1),
        "burst_messages": len(delivered),
        "burst_seconds": round(burst_seconds, 2),
        "latency_rounds": len(latencies),
        "push_latency_ms_min": round(min(latencies), 2),
        "push_latency_ms_max": round(max(latencies), 2),
        "sent": len(sent),
        "retried_transactions": ledger.retried,
        "refused_requests": ledger.refused,
        "rate_limited": counters.rate_limited,
        # Near 1.0 the load client and the bridge (one process), not the server, were the limit.
        "client_cpu": round(client_cpu, 2),
        "loadavg_1m": round(load_before, 2),
    }


async def _measure_with_bridge(name: str, workdir: Path, messages: int, seconds: float, rounds: int) -> dict[str, Any]:
    as_token, hs_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    bridge = BridgeReceiver(hs_token)
    await bridge.start()
    try:
        registration_file = workdir / "bench-bridge.yaml"
        registration_file.write_text(json.dumps(registration(bridge.url, as_token, hs_token), indent=2) + "\n")
        server_dir = workdir / name
        server_dir.mkdir()
        # Preparing Synapse may install it (minutes): off the loop, so the bridge stays responsive.
        server = await asyncio.to_thread(_prepare, name, server_dir, registration_file)
        _progress(f"starting {name} on {server.base_url}, the bridge on {bridge.url}")
        try:
            server.start()
            return await measure(server, bridge, as_token, messages, seconds, rounds)
        except OSError as exc:
            raise BenchError(f"{name} could not be started: {exc}") from exc
        finally:
            await asyncio.to_thread(server.stop)
            _progress(f"{name} stopped")
    finally:
        await bridge.stop()


def measure_server(name: str, messages: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Prepare, start, measure and stop one server and its bridge; both are stopped whatever happens."""
    with tempfile.TemporaryDirectory(prefix=f"lowband-bench-as-{name}-") as tmp:
        return asyncio.run(_measure_with_bridge(name, Path(tmp), messages, seconds, rounds))


def run(
    only: str | None = None,
    messages: int = 2_000,
    seconds: float = 30.0,
    latency_rounds: int = 100,
) -> tuple[dict[str, Any], str]:
    """Measure lowband and Synapse (or ``only`` one) pushing to the bench bridge; result dict and readable table.

    ``messages`` is the burst's size and ``seconds`` caps its sending time
    (whichever is reached first); ``latency_rounds`` is the number of paced
    send → bridge samples. Lowband runs first so a gateway that will not start
    fails before Synapse is installed. Raises BenchError (one line) when a
    server cannot be measured, ValueError on a bad argument.
    """
    if only is not None and only not in SERVERS:
        raise ValueError(f"only must be one of {', '.join(SERVERS)}, not {only!r}")
    if messages < 1 or seconds <= 0 or latency_rounds < 1:
        raise ValueError("messages, seconds and latency_rounds must be positive")
    figures = {
        name: measure_server(name, messages, seconds, latency_rounds) for name in SERVERS if only in (None, name)
    }
    result = assemble(figures)
    return result, render_table(result)
