"""``lowband bench storage``: bytes on disk per event, latency as the store grows, 1, 2 and 4 processes on PostgreSQL.

Three measurements, in one run:

* **bytes on disk** — each server (our gateway on SQLite and on PostgreSQL,
  Synapse on SQLite and on PostgreSQL) gets one user and one room, then
  ``messages`` telemetry notices (an ``m.notice`` with its SenML, as the MQTT
  bridge posts a reading) and as many text messages, one at a time through
  the client API. The growth of the store over each kind, divided by the
  count, is its bytes per event. SQLite: ``page_count × page_size`` (the
  file as a checkpoint leaves it, WAL folded in); PostgreSQL, after
  ``VACUUM ANALYZE``: ``pg_total_relation_size`` summed over our schema's
  tables, ``pg_database_size`` of Synapse's own database. Ratios are ours
  over Synapse's on the same engine.
* **latency at stored-event counts** — a gateway's store is filled to each
  size in ``events`` (in process, through the gateway's own event path:
  ``storage_fill.py``) with telemetry and text alternating in one room, then
  a gateway started on it is measured through HTTP: send (median, p95),
  send → parked incremental ``/sync``, initial ``/sync`` with a 10-event
  timeline, ``/messages`` at the newest page and deep in history (the page
  before the 50th filled event, its token found with ``/context``). Each figure's
  ratio to the smallest size says how flat it stays. On PostgreSQL the
  schema is ANALYZEd after each fill, as autovacuum would after such growth
  (the server's ``autovacuum`` setting is in the result): with an empty
  table's estimates the planner scans the whole room for the newest page.
  Then one round of the store's own upkeep runs (VACUUM where due, as the
  serving gateway does every minute): the fill writes thousands of events a
  second, and the notification rows it trimmed since its last round would
  otherwise be counted by every ``/sync`` of the first minute.
* **sends/s, reads/s and /sync with 1, 2 and 4 processes on PostgreSQL** — a
  gateway started with ``--workers 0``, ``1`` and ``3`` on a fresh schema:
  eight users sending at once, then sixteen clients reading the newest
  ``/messages`` page, then sixteen making initial ``/sync``s, then sixteen
  long-polls woken by a message every 0.1 s (``scaling.py``). The sends/s of one process on each
  store after the bytes phase are kept too (``sends_per_s_after_bytes``).

PostgreSQL: ``database`` (``--database``), else the development server's
``postgresql://postgres@127.0.0.1:5432/test`` if it answers (else the
PostgreSQL figures are None and ``postgres_skipped`` says why). Our gateway
runs in fresh schemas, Synapse in a fresh database, all dropped afterwards
(``postgres.py``). ``only="lowband"`` skips Synapse, ``only="synapse"``
measures Synapse's bytes only. A server that fails ends the run with
:class:`BenchError`. Progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from lowband.gateway.bench import postgres
from lowband.gateway.bench.figures import median
from lowband.gateway.bench.homeserver import prepare_lowband
from lowband.gateway.bench.matrix_load import (
    Counters,
    LoadPlan,
    MatrixUser,
    concurrent_sends,
    join_path,
    sync_latencies,
    users_in_one_room,
    wait_ready,
)
from lowband.gateway.bench.processes import BenchError, ServerProcess, progress, run_started
from lowband.gateway.bench.scaling import measure_processes
from lowband.gateway.bench.storage_fill import telemetry_content, text_content
from lowband.gateway.bench.synapse import prepare_synapse

DEFAULT_EVENTS = (10_000, 100_000)
DEFAULT_MESSAGES = 2_000
DEFAULT_SECONDS = 5.0
DEFAULT_ROUNDS = 30
#: the bytes servers, in the order they run; ``<engine>`` is ours, ``synapse_<engine>`` the anchor
BYTES_SERVERS = ("sqlite", "postgres", "synapse_sqlite", "synapse_postgres")
ENGINES = ("sqlite", "postgres")
SENDERS = 8
WARMUP = 20  # sends before the baseline size is read: first-use tables, caches, Synapse's background writes
MULTI_PROCESS = ("lowband serve --workers P-1: the main process writes (every send goes to it), reader workers "
                 "answer /sync, /messages, events, state, members, relations and media (docs/scaling.md)")  # fmt: skip
FILL_METHOD = ("RoomService.send_batch in a child process on the stopped gateway's store (build, authorise, "
               "sign, persist: the send path without HTTP; push rules judge each event), 1,000 events per commit")  # fmt: skip
#: latency figures at each size, in table order: (key, label)
LATENCIES = (
    ("send", "send"),
    ("sync", "send → incremental /sync"),
    ("initial_sync", "initial /sync, 10-event timeline"),
    ("messages_newest", "/messages, newest page"),
    ("messages_deep", "/messages, deep history"),
)
PAGE = 20
POSTGRES_STATISTICS = ("ANALYZE of the schema after each fill, then one round of the store's own upkeep (VACUUM"
                       " where due), before the gateway starts on it")  # fmt: skip
#: "deep history" is the page before the DEEP_MARK-th event of the first fill: the oldest full page
DEEP_MARK = 50
_TEST_DATABASE_ENV = "LOWBAND_TEST_DATABASE_URL"  # app.TEST_DATABASE_ENV, without importing the gateway here

__all__ = ["BenchError", "assemble", "parse_events", "percentile", "render_table", "run"]


def _progress(message: str) -> None:
    progress("storage", message)


def parse_events(text: str | list[int] | tuple[int, ...] | None) -> list[int]:
    """``"10000,100000"`` → [10000, 100000], sorted, each ≥ 100; ValueError otherwise."""
    if text is None:
        return list(DEFAULT_EVENTS)
    values = text if isinstance(text, (list, tuple)) else [v for v in text.replace("_", "").split(",") if v.strip()]
    try:
        sizes = sorted({int(v) for v in values})
    except ValueError:
        raise ValueError(f"--events takes counts separated by commas, like 10000,100000, not {text!r}") from None
    if not sizes or sizes[0] < 100:
        raise ValueError("--events: each count must be at least 100")
    return sizes


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.95 → p95); ValueError when there are no values."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)])


def _child_env() -> dict[str, str]:
    """This environment without the test suite's hook that sends every store without a URL to PostgreSQL:
    the bench's SQLite side must be SQLite."""
    return {k: v for k, v in os.environ.items() if k != _TEST_DATABASE_ENV}


# --------------------------------------------------------------------------
# Sizes on disk.


def sqlite_bytes(path: Path) -> int:
    """``page_count × page_size`` of a SQLite database (what its file holds once the WAL is checkpointed)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return int(pages) * int(size)


@dataclass
class Side:
    """One server of the bytes measurement: how to start it and how to read its size."""

    server: ServerProcess
    size: Callable[[], int]
    database: str


@contextlib.contextmanager
def _side(name: str, workdir: Path, pg_url: str | None) -> Iterator[Side]:
    """Server ``name`` (one of :data:`BYTES_SERVERS`) prepared in ``workdir``; its schema or database dropped after."""
    synapse = name.startswith("synapse")
    on_pg = name.endswith("postgres")
    if not on_pg:
        if synapse:
            server = prepare_synapse(workdir)
            yield Side(server, lambda: sqlite_bytes(workdir / "homeserver.db"), "sqlite")
        else:
            server = prepare_lowband(workdir, env=_child_env())
            yield Side(server, lambda: sqlite_bytes(workdir / "data" / "lowband.db"), "sqlite")
        return
    assert pg_url is not None
    if synapse:
        with postgres.fresh_database(pg_url) as database:
            yield Side(prepare_synapse(workdir, database=database.synapse_config()), database.size_bytes,
                       f"postgresql, database {database.name}")  # fmt: skip
    else:
        with postgres.fresh_schema(pg_url) as schema:
            yield Side(prepare_lowband(workdir, database_url=schema.url, env=_child_env()), schema.table_bytes,
                       f"postgresql, schema {schema.name}")  # fmt: skip


async def _put(user: MatrixUser, room_id: str, body: dict[str, Any]) -> None:
    user._txn += 1  # our own load client's transaction counter
    path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/s{user._txn}-{time.time_ns()}"
    await user.request("PUT", path, body)


async def _measure_bytes(side: Side, name: str, messages: int, seconds: float) -> dict[str, Any]:
    server = side.server
    counters = Counters()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await wait_ready(http, server)
        users, room_id = await users_in_one_room(http, server, counters, 1)
        for n in range(WARMUP):
            await _put(users[0], room_id, telemetry_content(n) if n % 2 else text_content(n))
        before = side.size()
        _progress(f"{name}: {messages} telemetry notices")
        for n in range(messages):
            await _put(users[0], room_id, telemetry_content(n))
        middle = side.size()
        _progress(f"{name}: {messages} text messages")
        for n in range(messages):
            await _put(users[0], room_id, text_content(n))
        after = side.size()
        figures: dict[str, Any] = {
            "telemetry": round((middle - before) / messages, 1),
            "text": round((after - middle) / messages, 1),
            "store_bytes": after,
            "database": side.database,
            "version": server.version,
        }
        if server.name == "lowband":  # the store with ~2 × messages events: sends/s of one process on it
            _progress(f"{name}: sends/s with {SENDERS} senders for {seconds:g} s")
            more = [MatrixUser(http, server, counters) for _ in range(SENDERS - 1)]
            for n, user in enumerate(more, start=1):
                await user.register(f"bench{n}")
                await user.request("POST", join_path(room_id), {})
            sent, took = await concurrent_sends(users + more, room_id, LoadPlan(messages=10**9, seconds=seconds))
            figures["sends_per_s"] = round(sent / took, 1)
    if server.proc is not None and server.proc.poll() is not None:
        raise BenchError(f"{server.name} exited during the load: {server.last_log_line()}")
    return figures


def measure_bytes(name: str, pg_url: str | None, messages: int, seconds: float) -> dict[str, Any]:
    """Bytes per telemetry event and per text message of server ``name`` (and sends/s for ours)."""
    with (
        tempfile.TemporaryDirectory(prefix=f"lowband-bench-storage-{name}-") as tmp,
        _side(name, Path(tmp), pg_url) as side,
    ):
        _progress(f"starting {name} ({side.server.name} {side.server.version}, {side.database})")
        result: dict[str, Any] = run_started(side.server, functools.partial(_measure_bytes, side, name, messages,
                                                                            seconds), name)  # fmt: skip
        return result


# --------------------------------------------------------------------------
# Latency as the store grows.


async def _timed(call: Callable[[], Awaitable[Any]], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


@dataclass
class Grown:
    """The store a latency run grows: the data dir, its users' tokens, the room."""

    workdir: Path
    database_url: str | None
    tokens: list[tuple[str, str]]
    room_id: str = ""
    stored: int = 0  # events filled in so far
    deep_event_id: str = ""

    def gateway(self) -> ServerProcess:
        """A gateway on this store (a fresh port each time: the data dir is kept)."""
        return prepare_lowband(self.workdir, database_url=self.database_url, env=_child_env())


def _user(http: aiohttp.ClientSession, server: ServerProcess, counters: Counters, token: tuple[str, str]) -> MatrixUser:
    user = MatrixUser(http, server, counters)
    user.user_id, user.token = token
    return user


async def _set_up(grown: Grown, server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        await wait_ready(http, server)
        users, grown.room_id = await users_in_one_room(http, server, Counters(), 2)
        grown.tokens = [(u.user_id, u.token) for u in users]


async def _measure_latency(grown: Grown, server: ServerProcess, rounds: int) -> dict[str, Any]:
    counters = Counters()
    room = quote(grown.room_id, safe="")
    initial_filter = quote(json.dumps({"room": {"timeline": {"limit": 10}}}, separators=(",", ":")), safe="")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await wait_ready(http, server)
        sender, receiver = (_user(http, server, counters, t) for t in grown.tokens)
        for n in range(5):  # connections, caches
            await _put(sender, grown.room_id, telemetry_content(n))
        context = await sender.request("GET", f"/_matrix/client/v3/rooms/{room}/context/"
                                              f"{quote(grown.deep_event_id, safe='')}?limit=0")  # fmt: skip
        deep_from = quote(str(context.get("start", "")), safe="")
        if not deep_from:
            raise BenchError(f"{server.name}: /context gave no start token")
        numbers = iter(range(10**9))
        samples = {
            "send": await _timed(lambda: _put(sender, grown.room_id, telemetry_content(next(numbers))), rounds),
            "sync": await sync_latencies(sender, receiver, grown.room_id, rounds),
            "initial_sync": await _timed(
                lambda: receiver.request("GET", f"/_matrix/client/v3/sync?timeout=0&filter={initial_filter}"), rounds),
            "messages_newest": await _timed(
                lambda: receiver.request("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit={PAGE}"), rounds),
            "messages_deep": await _timed(
                lambda: receiver.request("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit={PAGE}"
                                                f"&from={deep_from}"), rounds),
        }  # fmt: skip
        deep = await receiver.request(
            "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit={PAGE}&from={deep_from}"
        )
        if len(deep.get("chunk", [])) < PAGE // 2:
            raise BenchError(f"{server.name}: /messages deep in history gave {len(deep.get('chunk', []))} events")
    figures: dict[str, Any] = {}
    for key, values in samples.items():
        figures[f"{key}_p50"] = round(median(values), 2)
        figures[f"{key}_p95"] = round(percentile(values, 0.95), 2)
    return figures


def _run_gateway(server: ServerProcess, job: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return run_started(server, job, "lowband")


def _fill(grown: Grown, count: int) -> float:
    """Fill ``count`` more events into the stopped gateway's store (``storage_fill.py``); seconds it took."""
    argv = [
        sys.executable,
        "-m",
        "lowband.gateway.bench.storage_fill",
        "--data-dir",
        str(grown.workdir / "data"),
        "--room",
        grown.room_id,
        "--sender",
        grown.tokens[0][0],
        "--count",
        str(count),
        "--first",
        str(grown.stored),
        "--mark",
        str(min(count - 1, DEEP_MARK)),
    ]
    if grown.database_url is not None:
        argv += ["--database", grown.database_url]
    try:
        done = subprocess.run(argv, env=_child_env(), capture_output=True, text=True, timeout=max(600, count / 50),
                              check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"filling the store with {count} events took too long") from exc
    if done.returncode != 0:
        lines = (done.stderr or "").strip().splitlines()
        raise BenchError(lines[-1] if lines else f"filling the store failed with status {done.returncode}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if not grown.deep_event_id:
        grown.deep_event_id = str(found["marked_event_id"])
    grown.stored += count
    return float(found["seconds"])


def measure_latency(engine: str, pg_url: str | None, sizes: list[int], rounds: int) -> dict[str, Any]:
    """Latency figures at each stored-event count on ``engine`` ("sqlite" or "postgres"), and the fill rate."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"lowband-bench-storage-{engine}-")))
        url, schema = None, None
        if engine == "postgres":
            assert pg_url is not None
            schema = stack.enter_context(postgres.fresh_schema(pg_url))
            url = schema.url
        grown = Grown(workdir, url, [])
        _progress(f"{engine}: a gateway to register two users and make the room")
        first = prepare_lowband(workdir, database_url=url, env=_child_env())
        _run_gateway(first, lambda: _set_up(grown, first))
        by_size: dict[str, Any] = {}
        fill_seconds = 0.0
        for size in sizes:
            _progress(f"{engine}: filling the store to {size:,} events ({size - grown.stored:,} more)")
            fill_seconds += _fill(grown, size - grown.stored)
            if schema is not None:  # fresh statistics, as autovacuum leaves them after such growth (if it runs)
                schema.analyze()
                schema.upkeep_round()  # the dead rows of the fill's last minute, as the gateway's next round would
            server = grown.gateway()
            _progress(f"{engine}: {size:,} events stored; measuring ({rounds} rounds each)")
            by_size[str(size)] = _run_gateway(server, functools.partial(_measure_latency, grown, server, rounds))
            if engine == "sqlite":
                by_size[str(size)]["store_bytes"] = sqlite_bytes(workdir / "data" / "lowband.db")
        return {"sizes": by_size, "fill_events_per_s": round(grown.stored / fill_seconds, 1) if fill_seconds else None}


def flatness(by_size: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each latency figure at each size over the same figure at the smallest size."""
    if not by_size:
        return {}
    smallest = by_size[min(by_size, key=int)]
    out: dict[str, dict[str, float | None]] = {}
    for size, figures in by_size.items():
        out[size] = {key: (round(value / smallest[key], 3) if smallest.get(key) else None)
                     for key, value in figures.items() if key.endswith(("_p50", "_p95"))}  # fmt: skip
    return out


# --------------------------------------------------------------------------
# The result.


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def assemble(bytes_figures: dict[str, dict[str, Any]], latency: dict[str, dict[str, Any]], *, messages: int,
             sizes: list[int], postgres_skipped: str | None, database: str | None,
             autovacuum: str | None = None, processes: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The benchmark's JSON result from what was measured (a server not measured is None throughout)."""
    per_kind = {kind: {name: bytes_figures.get(name, {}).get(kind) for name in BYTES_SERVERS}
                for kind in ("telemetry", "text")}  # fmt: skip
    return {
        "bytes_per_event": per_kind["telemetry"],
        "bytes_per_text": per_kind["text"],
        "ratio_bytes": {e: _ratio(per_kind["telemetry"][e], per_kind["telemetry"][f"synapse_{e}"]) for e in ENGINES},
        "ratio_bytes_text": {e: _ratio(per_kind["text"][e], per_kind["text"][f"synapse_{e}"]) for e in ENGINES},
        "latency_ms": {e: latency[e]["sizes"] for e in ENGINES if e in latency},
        "flatness": {e: flatness(latency[e]["sizes"]) for e in ENGINES if e in latency},
        "fill_events_per_s": {e: latency[e]["fill_events_per_s"] for e in ENGINES if e in latency},
        "fill_method": FILL_METHOD,
        "sends_per_s": (processes or {}).get("sends_per_s") or {"1": None, "2": None, "4": None},
        "reads_per_s": (processes or {}).get("reads_per_s") or {"1": None, "2": None, "4": None},
        "reads_by_workers": (processes or {}).get("reads_by_workers"),
        "syncs_per_s": (processes or {}).get("syncs_per_s") or {"1": None, "2": None, "4": None},
        "syncs_by_workers": (processes or {}).get("syncs_by_workers"),
        "sync_wake_ms": (processes or {}).get("sync_wake_ms"),
        "sends_per_s_after_bytes": {e: bytes_figures.get(e, {}).get("sends_per_s") for e in ENGINES},
        "multi_process": MULTI_PROCESS,
        "servers": {
            name: {k: v for k, v in bytes_figures[name].items() if k in ("database", "version", "store_bytes")}
            for name in BYTES_SERVERS
            if name in bytes_figures
        },
        "messages": messages,
        "events": sizes,
        "database": postgres.safe_url(database) if database else None,
        "postgres_skipped": postgres_skipped,
        "postgres_statistics": POSTGRES_STATISTICS if "postgres" in latency else None,
        "postgres_autovacuum": autovacuum,
    }


def _cell(value: Any, fmt: str = "{:,.0f}") -> str:
    return fmt.format(value) if value is not None else "—"


def render_table(result: dict[str, Any]) -> str:
    """A readable report of :func:`assemble`'s result."""
    lines = [f"{'bytes on disk per event':<28}{'lowband':>12}{'synapse':>12}{'ratio':>9}"]
    for engine in ENGINES:
        for kind, key, ratio_key in (("telemetry", "bytes_per_event", "ratio_bytes"),
                                     ("text", "bytes_per_text", "ratio_bytes_text")):  # fmt: skip
            ours, theirs = result[key][engine], result[key][f"synapse_{engine}"]
            ratio = result[ratio_key][engine]
            lines.append(f"{engine + ', ' + kind:<28}{_cell(ours):>12}{_cell(theirs):>12}{_cell(ratio, '{:.3g}×'):>9}")
    for engine, by_size in result["latency_ms"].items():
        sizes = sorted(by_size, key=int)
        lines.append("")
        lines.append(f"{'latency, ms (p50 / p95), ' + engine:<36}" + "".join(f"{int(s):>16,}" for s in sizes)
                     + f"{'largest/smallest':>18}")  # fmt: skip
        for key, label in LATENCIES:
            cells = "".join(f"{by_size[s][key + '_p50']:>8.1f} /{by_size[s][key + '_p95']:>6.1f}" for s in sizes)
            flat = result["flatness"][engine][sizes[-1]].get(key + "_p50")
            lines.append(f"{label:<36}{cells}{_cell(flat, '{:.2f}×'):>18}")
        lines.append(f"store filled at {_cell(result['fill_events_per_s'].get(engine))} events/s "
                     f"({result['fill_method'].split(' (')[0]})")  # fmt: skip
    lines.append("")
    lines.append(f"{'PostgreSQL, gateway processes':<36}" + "".join(f"{p:>10}" for p in ("1", "2", "4")))
    for key, label in (("sends_per_s", f"sends/s, {SENDERS} senders"), ("reads_per_s", "/messages pages/s"),
                       ("syncs_per_s", "initial /syncs/s")):  # fmt: skip
        lines.append(f"{label:<36}" + "".join(f"{_cell(result[key].get(p), '{:,.1f}'):>10}" for p in ("1", "2", "4")))
    for key, label in (("reads_by_workers", "pages answered by a worker"), ("syncs_by_workers",
                                                                           "/syncs answered by a worker")):  # fmt: skip
        shares = result.get(key) or {}
        lines.append(f"{label:<36}" + "".join(f"{_cell(shares.get(p), '{:.0%}'):>10}" for p in ("1", "2", "4")))
    wakes = result.get("sync_wake_ms") or {}
    lines.append(f"{'long-poll wake-up, ms p50 / p95':<36}" + "".join(
        f"{(_cell(wakes[p]['p50'], '{:.1f}') + ' / ' + _cell(wakes[p]['p95'], '{:.1f}')) if p in wakes else '—':>14}"
        for p in ("1", "2", "4")))  # fmt: skip
    after = result["sends_per_s_after_bytes"]
    lines.append(f"({result['multi_process']}; sends/s of 1 process after the bytes phase: SQLite "
                 f"{_cell(after.get('sqlite'), '{:,.1f}')}, PostgreSQL {_cell(after.get('postgres'), '{:,.1f}')})")
    for name, server in result["servers"].items():
        lines.append(f"{name}: {server.get('version')} on {server.get('database')}")
    if result.get("postgres_statistics"):
        lines.append(
            f"PostgreSQL statistics: {result['postgres_statistics']} (autovacuum: {result['postgres_autovacuum']})"
        )
    if result["postgres_skipped"]:
        lines.append(f"PostgreSQL not measured: {result['postgres_skipped']}")
    return "\n".join(lines)


def run(
    only: str | None = None,
    messages: int = DEFAULT_MESSAGES,
    seconds: float = DEFAULT_SECONDS,
    latency_rounds: int = DEFAULT_ROUNDS,
    database: str | None = None,
    events: str | list[int] | None = None,
    *,
    try_postgres: bool = True,
) -> tuple[dict[str, Any], str]:
    """Measure everything (see the module docstring); the result dict and a readable table.

    ``messages``: telemetry notices, then text messages, per server for the
    bytes; ``events``: stored-event counts for the latency ("10000,100000");
    ``seconds``: the sends/s phase; ``latency_rounds``: samples of each
    latency at each size. Raises BenchError (one line) when a server cannot
    be measured, ``database`` does not answer or ``events`` is malformed, ValueError on another bad argument.
    ``try_postgres=False`` (no ``database``): SQLite and Synapse on SQLite only.
    """
    if only not in (None, "lowband", "synapse"):
        raise ValueError(f"only must be lowband or synapse, not {only!r}")
    if messages < 1 or seconds <= 0 or latency_rounds < 2:
        raise ValueError("messages and seconds must be positive, latency_rounds at least 2")
    try:
        sizes = parse_events(events)
    except ValueError as exc:  # text from the command line: the one-line failure, not a traceback
        raise BenchError(str(exc)) from None
    pg_url, skipped = database, None
    if database is not None:
        why = postgres.reachable(database)
        if why is not None:
            raise BenchError(why)
    elif not try_postgres:
        skipped = "not asked for"
    else:
        why = postgres.reachable(postgres.DEFAULT_URL)
        if why is None:
            pg_url = postgres.DEFAULT_URL
        else:
            skipped = f"no --database, and {why}"
            _progress(f"PostgreSQL not measured: {skipped}")
    names = [n for n in BYTES_SERVERS if (pg_url is not None or not n.endswith("postgres"))
             and (only is None or (only == "synapse") == n.startswith("synapse"))]  # fmt: skip
    bytes_figures = {name: measure_bytes(name, pg_url, messages, seconds) for name in names}
    latency: dict[str, dict[str, Any]] = {}
    if only != "synapse":
        for engine in ENGINES:
            if engine == "sqlite" or pg_url is not None:
                latency[engine] = measure_latency(engine, pg_url, sizes, latency_rounds)
    processes = measure_processes(pg_url, seconds, _child_env()) if pg_url is not None and only != "synapse" else None
    result = assemble(bytes_figures, latency, messages=messages, sizes=sizes, postgres_skipped=skipped,
                      database=pg_url, autovacuum=postgres.autovacuum(pg_url) if pg_url else None,
                      processes=processes)  # fmt: skip
    return result, render_table(result)
