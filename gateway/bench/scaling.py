"""Sends/s and reads/s of one gateway served by 1, 2 and 4 processes on one PostgreSQL store (docs/scaling.md).

For each process count P a fresh schema gets a gateway started with ``--workers P-1``; eight users join one
room and send ``HISTORY`` messages; then, each for ``seconds``:

* **sends/s** — the eight users send at once (``concurrent_sends``), every connection held open;
* **reads/s** — ``READERS`` clients each ask for the newest ``/messages`` page of 20 in a loop, each on a
  connection of its own (the kernel gives each new connection to one of the P processes: SO_REUSEPORT), and
  the share answered by a worker (``X-Lowband-Worker``) is counted.
* **syncs/s** — ``READERS`` clients each make an initial ``/sync`` with a timeline of 10 in a loop, a connection
  each, and the share a worker answered is counted;
* **wake-up** — ``READERS`` clients park a ``/sync`` long-poll each (a connection each: on every process) while
  one user sends a message every ``WAKE_EVERY_S``: the time from the start of the send to each long-poll's answer
  holding it, p50 and p95 in ms (a long-poll in a worker is woken by the main process's feed).

The load generator runs on the same machine as the gateway and PostgreSQL: what it takes is what the gateway's
processes do not get, so the figures say how the gateway shares this machine's cores, not what a bigger one gives.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from lowband.gateway.bench import postgres
from lowband.gateway.bench.homeserver import prepare_lowband
from lowband.gateway.bench.matrix_load import Counters, LoadPlan, concurrent_sends, users_in_one_room, wait_ready
from lowband.gateway.bench.processes import BenchError, ServerProcess, progress, run_started

PROCESS_COUNTS = (1, 2, 4)
SENDERS = 8
READERS = 16
HISTORY = 200
PAGE = 20
#: how long the main process may take to start its workers and say it listens
READY_S = 120.0
#: the /sync of the syncs/s phase: an initial sync, 10 events of timeline, no presence change
SYNC_QUERY = "set_presence=offline&filter=" + quote('{"room":{"timeline":{"limit":10}}}', safe="")
WAKE_EVERY_S = 0.1


def _progress(message: str) -> None:
    progress("storage", message)


async def _listening(server: ServerProcess) -> None:
    """Wait for the main process's "listening" line: it comes after every worker said it listens."""
    assert server.proc is not None
    deadline = time.monotonic() + READY_S
    while "listening on http" not in server.log.read_text(errors="replace"):
        if server.proc.poll() is not None:
            raise BenchError(f"lowband with workers exited: {server.last_log_line()}")
        if time.monotonic() > deadline:
            raise BenchError(f"lowband with workers not listening after {READY_S:g} s: {server.last_log_line()}")
        await asyncio.sleep(0.1)


async def _in_a_loop(path: str, tokens: list[str], seconds: float, what: str,
                     answered: Callable[[dict[str, Any]], bool]) -> tuple[int, int, float]:  # fmt: skip
    """(requests answered, how many a worker answered, seconds): READERS clients, each on a connection of its own
    with ``tokens[n % len(tokens)]``, GET ``path`` in a loop for ``seconds``; BenchError unless each answer is a
    200 that ``answered`` accepts."""
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()

    async def client(token: str) -> tuple[int, int]:
        done = by_worker = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            while time.perf_counter() < deadline:
                async with http.get(path, headers={"Authorization": f"Bearer {token}"},
                                    timeout=aiohttp.ClientTimeout(total=30)) as resp:  # fmt: skip
                    body = await resp.json()
                    if resp.status != 200 or not answered(body):
                        raise BenchError(f"{what} answered {resp.status}: {str(body)[:200]}")
                    done += 1
                    by_worker += resp.headers.get("X-Lowband-Worker") is not None
        return done, by_worker

    counts = await asyncio.gather(*(client(tokens[n % len(tokens)]) for n in range(READERS)))
    return sum(c[0] for c in counts), sum(c[1] for c in counts), time.perf_counter() - start


async def _reads(server: ServerProcess, token: str, room_id: str, seconds: float) -> tuple[int, int, float]:
    """(pages read, pages a worker answered, seconds): the newest /messages page of PAGE events."""
    path = f"{server.base_url}/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages?dir=b&limit={PAGE}"
    return await _in_a_loop(path, [token], seconds, "/messages", lambda body: len(body.get("chunk", [])) == PAGE)


async def _syncs(server: ServerProcess, tokens: list[str], room_id: str, seconds: float) -> tuple[int, int, float]:
    """(initial /syncs made, how many a worker answered, seconds): each holding the room."""
    path = f"{server.base_url}/_matrix/client/v3/sync?{SYNC_QUERY}"
    return await _in_a_loop(path, tokens, seconds, "/sync",
                            lambda body: room_id in body.get("rooms", {}).get("join", {}))  # fmt: skip


async def _wakes(server: ServerProcess, users: list[Any], room_id: str, seconds: float) -> tuple[list[float], float]:
    """(ms from the start of each send to each parked long-poll's answer holding it, share of the long-polls a
    worker held)."""
    sent_at: dict[str, float] = {}
    arrived: list[tuple[str, float]] = []
    stop = asyncio.Event()
    parked: list[bool] = []
    url = f"{server.base_url}/_matrix/client/v3/sync?set_presence=offline&timeout=20000"

    async def poller(token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            async with http.get(f"{server.base_url}/_matrix/client/v3/sync?set_presence=offline&filter="
                                + quote('{"room":{"timeline":{"limit":1}}}', safe=""), headers=headers,
                                timeout=aiohttp.ClientTimeout(total=30)) as resp:  # fmt: skip
                since = (await resp.json())["next_batch"]
                parked.append(resp.headers.get("X-Lowband-Worker") is not None)
            while not stop.is_set():
                async with http.get(f"{url}&since={quote(since, safe='')}", headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=40)) as resp:  # fmt: skip
                    body = await resp.json()
                    now = time.perf_counter()
                    if resp.status != 200:
                        raise BenchError(f"/sync answered {resp.status}: {str(body)[:200]}")
                since = body["next_batch"]
                timeline = body.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {})
                arrived.extend((e["event_id"], now) for e in timeline.get("events", []))

    tasks = [asyncio.create_task(poller(users[n % len(users)].token)) for n in range(READERS)]
    try:
        while len(parked) < READERS:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # every long-poll parked
        deadline = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            sent_at[await users[0].send(room_id, f"wake {n}")] = start
            n += 1
            await asyncio.sleep(max(0.0, WAKE_EVERY_S - (time.perf_counter() - start)))
        settle = time.perf_counter() + 5
        while sum(1 for e, _ in arrived if e in sent_at) < len(sent_at) * READERS and time.perf_counter() < settle:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    waits = [(at - sent_at[e]) * 1000 for e, at in arrived if e in sent_at]
    if len(waits) < len(sent_at) * READERS:
        raise BenchError(f"{len(sent_at) * READERS - len(waits)} of {len(sent_at) * READERS} wake-ups never came")
    return waits, sum(parked) / len(parked)


async def _measure(server: ServerProcess, seconds: float) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await _listening(server)
        await wait_ready(http, server)
        users, room_id = await users_in_one_room(http, server, Counters(), SENDERS)
        for n in range(HISTORY):
            await users[n % SENDERS].send(room_id, f"history {n}")
        sent, took = await concurrent_sends(users, room_id, LoadPlan(messages=10**9, seconds=seconds))
        read, by_worker, read_took = await _reads(server, users[0].token, room_id, seconds)
        synced, synced_by_worker, sync_took = await _syncs(server, [u.token for u in users], room_id, seconds)
        waits, parked_on_workers = await _wakes(server, users, room_id, seconds)
    cuts = statistics.quantiles(waits, n=20)
    wake = {"p50": round(statistics.median(waits), 2), "p95": round(cuts[18], 2), "by_workers": round(parked_on_workers, 3)}
    return {
        "sends_per_s": round(sent / took, 1),
        "reads_per_s": round(read / read_took, 1),
        "reads_by_workers": round(by_worker / read, 3) if read else None,
        "syncs_per_s": round(synced / sync_took, 1),
        "syncs_by_workers": round(synced_by_worker / synced, 3) if synced else None,
        "sync_wake_ms": wake,
    }


def measure_processes(pg_url: str, seconds: float, env: dict[str, str] | None = None,
                      counts: tuple[int, ...] = PROCESS_COUNTS) -> dict[str, Any]:  # fmt: skip
    """{"sends_per_s": {"1": x, ...}, "reads_per_s": {...}, "reads_by_workers": {...}, "syncs_per_s": {...},
    "syncs_by_workers": {...}, "sync_wake_ms": {"1": {"p50": x, "p95": x, "by_workers": x}, ...}} for each process
    count; ``env``: the gateways' environment."""
    found: dict[str, dict[str, Any]] = {key: {} for key in ("sends_per_s", "reads_per_s", "reads_by_workers",
                                                              "syncs_per_s", "syncs_by_workers", "sync_wake_ms")}  # fmt: skip
    for count in counts:
        with (
            tempfile.TemporaryDirectory(prefix=f"lowband-bench-processes-{count}-") as tmp,
            postgres.fresh_schema(pg_url) as schema,
        ):
            server = prepare_lowband(Path(tmp), database_url=schema.url, env=env)
            server.argv += ["--workers", str(count - 1)]
            _progress(f"{count} gateway process{'es' if count > 1 else ''} on PostgreSQL: {SENDERS} senders, then "
                      f"{READERS} readers of /messages, of /sync, and parked long-polls, {seconds:g} s each")  # fmt: skip
            figures = run_started(server, functools.partial(_measure, server, seconds), f"lowband with {count - 1} workers")
        for key, value in figures.items():
            found[key][str(count)] = value
    return found
