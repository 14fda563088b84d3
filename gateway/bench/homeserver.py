"""``lowband bench homeserver``: our gateway against a real Synapse, side by side.

Both servers run on loopback, one after the other, each on a fresh data
directory, and the same load client measures both:

* ``sends_per_s`` — one user posts messages one after another, each waiting
  for its response (``PUT …/send/m.room.message/{txnId}``);
* ``sends_per_s_8`` — eight users joined to one room send in a loop at once;
* ``sync_latency_ms`` — median time from the start of user A's send request
  until user B's parked long-poll ``/sync`` returns that event;
* ``rss_idle_mb`` / ``rss_load_mb`` — resident memory of the server process
  and its children (``VmRSS``), idle after start-up and right after the load;
* ``e2ee_sends_per_s`` / ``e2ee_latency_ms`` — the same in an encrypted room
  with two matrix-nio clients doing Olm and Megolm (``encrypted_room.py``),
  send → *decrypted* by the other client; None without ``matrix-nio[e2e]``.

With ``database`` (``--database postgresql://…``) both run on PostgreSQL:
our gateway in a fresh schema of that database, Synapse in a fresh database
on the same server (C collation), each dropped afterwards
(``postgres.py``); each server's figures say which database it used.

Each load phase stops at a message count or a duration, whichever comes
first, so a slow server is measured for the duration and a fast one for the
count. Synapse is installed from PyPI into its own cache venv
(``~/.cache/lowband/synapse-venv``) on first use and is never a dependency of
the project. Progress goes to stderr; nothing here prints to stdout.

A server that cannot be installed, will not start, or answers a request with
an error ends the run with :class:`BenchError` (one line) — never numbers made
up in its place.

This module measures and reports; the processes are in ``processes.py``,
Synapse's installation and config in ``synapse.py``, the load client in
``matrix_load.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from lowband.gateway.bench import postgres
from lowband.gateway.bench.encrypted_room import MISSING, measure_encrypted
from lowband.gateway.bench.figures import median, ratio
from lowband.gateway.bench.matrix_load import (
    Counters,
    LoadPlan,
    concurrent_sends,
    sequential_sends,
    sync_latencies,
    users_in_one_room,
    wait_ready,
)
from lowband.gateway.bench.processes import BenchError, ServerProcess, lowband_argv, progress, rss_mib
from lowband.gateway.bench.synapse import SERVER_NAME, prepare_synapse
from lowband.sim.ports import free_port

SERVERS = ("lowband", "synapse")
#: The keys every server's figures carry; the result may add others.
FIGURE_KEYS = ("sends_per_s", "sends_per_s_8", "sync_latency_ms", "rss_idle_mb", "rss_load_mb")

# Targets from DESIGN.md "Numbers to beat", as ratios lowband / synapse.
TARGET_SENDS = 20.0
TARGET_RSS = 0.25
TARGET_LATENCY = 0.2

SENDERS = 8
WARMUP_SENDS = 5  # per user, before anything is timed
IDLE_SETTLE_S = 2.0  # after /versions answers, before the idle RSS is read
RSS_SAMPLE_S = 0.25

__all__ = ["FIGURE_KEYS", "SERVERS", "BenchError", "assemble", "median", "render_table", "run"]


def assemble(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The benchmark result from each measured server's figures.

    ``figures`` maps ``"lowband"`` and/or ``"synapse"`` to dicts with at
    least :data:`FIGURE_KEYS`. A ratio whose two sides were not both measured
    (or whose anchor is 0) is None.
    """
    result: dict[str, Any] = {name: dict(figures[name]) for name in SERVERS if name in figures}
    result["ratio_sends"] = ratio(figures, "sends_per_s_8")
    result["ratio_rss"] = ratio(figures, "rss_load_mb")
    result["ratio_latency"] = ratio(figures, "sync_latency_ms")
    result["ratio_e2ee_sends"] = ratio(figures, "e2ee_sends_per_s")
    result["ratio_e2ee_latency"] = ratio(figures, "e2ee_latency_ms")
    return result


_ROWS = (
    ("sends/s, 1 sender", "sends_per_s", "{:.1f}"),
    ("sends/s, 8 senders", "sends_per_s_8", "{:.1f}"),
    ("send → /sync, median ms", "sync_latency_ms", "{:.1f}"),
    ("RSS idle, MiB", "rss_idle_mb", "{:.1f}"),
    ("RSS after load, MiB", "rss_load_mb", "{:.1f}"),
    ("encrypted sends/s", "e2ee_sends_per_s", "{:.1f}"),
    ("send → decrypted, median ms", "e2ee_latency_ms", "{:.1f}"),
)
# figure key → (ratio key, target text, is the ratio good?)
_TARGETS: dict[str, tuple[str, str, Callable[[float], bool]]] = {
    "sends_per_s_8": ("ratio_sends", f"≥ {TARGET_SENDS:g}×", lambda r: r >= TARGET_SENDS),
    "sync_latency_ms": ("ratio_latency", "≤ ⅕", lambda r: r <= TARGET_LATENCY),
    "rss_load_mb": ("ratio_rss", "≤ ¼", lambda r: r <= TARGET_RSS),
    "e2ee_sends_per_s": ("ratio_e2ee_sends", f"≥ {TARGET_SENDS:g}×", lambda r: r >= TARGET_SENDS),
    "e2ee_latency_ms": ("ratio_e2ee_latency", "≤ ⅕", lambda r: r <= TARGET_LATENCY),
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
                f"load average {f.get('loadavg_1m', '?')} before, database {f.get('database', 'sqlite')}"
            )
    if any(name in result and result[name].get("e2ee_sends_per_s") is None for name in SERVERS):
        lines.append(MISSING)
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Measuring one server.


def _progress(message: str) -> None:
    progress("homeserver", message)


def _lowband_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lowband")
    except PackageNotFoundError:
        return "?"


def prepare_lowband(workdir: Path, extra_config: str = "", database_url: str | None = None,
                    env: dict[str, str] | None = None) -> ServerProcess:
    """The gateway as a subprocess on a fresh data dir, rate limits off, ``extra_config`` (TOML) added; its store
    on ``database_url`` (``--database``) when given, else SQLite in the data dir; ``env``: its environment."""
    port = free_port()
    data = workdir / "data"
    data.mkdir(exist_ok=True)  # kept: the storage bench restarts a gateway on the store it filled
    config = workdir / "lowband.toml"
    config.write_text("[rate_limits]\nenabled = false\n" + extra_config)
    argv = lowband_argv() + [
        "serve",
        "--data-dir", str(data),
        "--server-name", SERVER_NAME,
        "--http", f"127.0.0.1:{port}",
        "--config", str(config),
        "--enable-registration",
    ]  # fmt: skip
    if database_url is not None:
        argv += ["--database", database_url]
    return ServerProcess("lowband", argv, workdir, workdir / "lowband.log", _lowband_version(), port, env=env)


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
        users, room_id = await users_in_one_room(http, server, counters, SENDERS)
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
            encrypted = await measure_encrypted(server, plan.seconds, plan.messages, plan.latency_rounds, _progress)
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
        **encrypted,
    }


def prepare_on(name: str, workdir: Path, database: str | None, stack: contextlib.ExitStack) -> tuple[ServerProcess, str]:
    """Server ``name`` prepared in ``workdir``: on SQLite, or on PostgreSQL ``database`` (our gateway in a fresh
    schema, Synapse in a fresh database, dropped when ``stack`` closes); (server, the database it uses, in words)."""
    if database is None:
        server = prepare_lowband(workdir) if name == "lowband" else prepare_synapse(workdir)
        return server, "sqlite"
    where = f"postgresql {postgres.server_version(database)} at {postgres.safe_url(database.split('?')[0])}"
    if name == "lowband":
        schema = stack.enter_context(postgres.fresh_schema(database))
        return prepare_lowband(workdir, database_url=schema.url), f"{where}, schema {schema.name}"
    fresh = stack.enter_context(postgres.fresh_database(database))
    return prepare_synapse(workdir, database=fresh.synapse_config()), f"{where}, database {fresh.name}"


def measure_server(name: str, plan: LoadPlan, database: str | None = None) -> dict[str, Any]:
    """Prepare, start, measure and stop one server (on PostgreSQL ``database`` when given); the process is
    stopped, and its schema or database dropped, whatever happens."""
    with tempfile.TemporaryDirectory(prefix=f"lowband-bench-{name}-") as tmp, contextlib.ExitStack() as stack:
        server, used = prepare_on(name, Path(tmp), database, stack)
        _progress(f"starting {name} on {server.base_url} ({used})")
        try:
            server.start()
            figures = asyncio.run(measure(server, plan))
        except OSError as exc:
            raise BenchError(f"{name} could not be started: {exc}") from exc
        finally:
            server.stop()
            _progress(f"{name} stopped")
        figures["database"] = used
        return figures


def run(
    only: str | None = None,
    messages: int = 20_000,
    seconds: float = 10.0,
    latency_rounds: int = 30,
    database: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Measure lowband and Synapse (or ``only`` one); result dict and readable table.

    ``database``: a ``postgresql://`` URL both servers run on (see the module
    docstring); without it both use SQLite.

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
    if database is not None:
        why = postgres.reachable(database)
        if why is not None:
            raise BenchError(why)
    figures = {name: measure_server(name, plan, database) for name in SERVERS if only in (None, name)}
    result = assemble(figures)
    result["database"] = "postgresql" if database is not None else "sqlite"  # each side's figures say which one
    return result, render_table(result)
