"""``lowband bench federation``: rooms replicated across three gateways, and Synapse↔Synapse beside them.

Three ``lowband serve`` processes federate on loopback (TLS with a
self-signed certificate, server names ``127.0.0.1:PORT``, the issue's CLI
contract); a room on A is joined by users of B and C through their own
gateways. Then, in this order:

* ``events_per_s`` — every gateway's users send ``messages`` events between
  them at once; events divided by the seconds from the first send until the
  last of them is in every gateway's ``/sync``;
* ``latency_ms_p50`` — median time from the start of a send on one gateway
  until a user's parked long-poll ``/sync`` on another returns it
  (A→B, B→C, C→A in turn);
* ``catch_up_1k_s`` / ``catch_up_100k_s`` — B is killed (``kill -9``),
  A and C send 1,000 (then ``catch_up``, 100,000 by default) events, B is
  started again on the same data: seconds from its start until its user
  has read every missed event through ``/messages``. ``catch_up_peak_rss_mb``
  is B's highest resident memory meanwhile;
* ``lost`` / ``duplicated`` — at the end, each gateway's user pages the
  whole room through ``/messages``: every event sent must be there, once.

The same figures (two servers: a room on S1 joined from S2) are then
measured on two Synapses federating on loopback, under ``synapse``; the
100,000-event catch-up is measured on Synapse only when
``synapse_catch_up`` asks for it (Synapse takes its events at a few
hundred per second, so it would add many minutes). ``ratio_*`` compare the
two. Progress goes to stderr; a server that fails ends the run with
:class:`BenchError`, never with made-up numbers.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from lowband.gateway.bench.matrix_load import Counters, MatrixUser, sync_latencies, wait_ready
from lowband.gateway.bench.processes import BenchError, ServerProcess, lowband_argv, progress, rss_mib
from lowband.sim.ports import free_port

BENCH = "federation"
MESSAGES = 3000
CATCH_UP_SMALL = 1000
CATCH_UP = 100_000
LATENCY_ROUNDS = 30
#: sending loops per server at once
SENDERS = 4
PAGE = 1000
#: a phase that makes no progress for this long ends the run
STALL_S = 300.0
#: replication: page /messages for events not pushed once none has arrived for this long
SCAN_AFTER_S = 2.0
#: replication: give up waiting (and count what is missing) after this long without a new arrival
QUIET_S = 60.0

FED_CONFIG = """\
[rate_limits]
enabled = false
[federation]
verify_certificates = false
ip_range_blocklist = []
"""

Scan = Callable[[], Awaitable[list[str]]]


def q(value: str) -> str:
    return quote(value, safe="")


# ------------------------------------------------------------------------------------------------ servers


class Gateway:
    """One federating ``lowband serve`` with a fixed port, data dir and key, restartable."""

    def __init__(self, workdir: Path, name: str, cert: Path, key: Path) -> None:
        port = free_port()
        self.server_name = f"127.0.0.1:{port}"
        data = workdir / name
        data.mkdir(parents=True, exist_ok=True)
        config = workdir / "federation.toml"
        argv = [*lowband_argv(), "serve", "--data-dir", str(data), "--server-name", self.server_name,
                "--http", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key),
                "--enable-registration", "--config", str(config)]  # fmt: skip
        self.process = ServerProcess(f"lowband-{name}", argv, data, data / "serve.log", "", port, scheme="https")

    def start(self) -> None:
        self.process.start()

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()


class SynapseServer:
    """A :class:`lowband.sim.synapse.SynapsePeer` seen as a ServerProcess by the load client."""

    def __init__(self, workdir: Path, name: str) -> None:
        from lowband.sim.synapse import SynapsePeer

        self.peer = SynapsePeer(workdir / name)
        self.server_name = self.peer.server_name
        self.process = ServerProcess(f"synapse-{name}", [], self.peer.workdir, self.peer.log, "", self.peer.port,
                                     scheme="https")  # fmt: skip

    def start(self) -> None:
        from lowband.sim.synapse import SynapseError

        try:
            self.peer.start(timeout=120)
        except SynapseError as exc:
            raise BenchError(f"{self.process.name}: {exc}") from exc
        self.process.proc = self.peer.proc

    def kill(self) -> None:
        self.peer.kill()

    def stop(self) -> None:
        self.peer.stop()


# ------------------------------------------------------------------------------------------------ room reads


async def read_room(user: MatrixUser, room_id: str, prefix: str, want: int | None = None) -> list[str]:
    """Bodies starting with ``prefix`` that ``user`` reads through ``/messages``, newest first.

    Pages back to the room's start, or until ``want`` of them are found.
    """
    found: list[str] = []
    token: str | None = None
    room = q(room_id)
    while True:
        path = f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit={PAGE}" + (f"&from={q(token)}" if token else "")
        page = await user.request("GET", path, timeout_s=120)
        chunk = page.get("chunk") or []
        for event in chunk:
            body = event.get("content", {}).get("body") if isinstance(event, dict) else None
            if isinstance(body, str) and body.startswith(prefix):
                found.append(body)
        if want is not None and len(found) >= want:
            return found
        token = page.get("end")
        if not chunk or not token:
            return found


async def until_joined(user: MatrixUser, room_id: str, members: set[str], timeout_s: float = 120.0) -> None:
    """Wait until ``user``'s server lists every one of ``members`` as joined; BenchError after ``timeout_s``."""
    start = time.perf_counter()
    while True:
        answer = await user.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members")
        joined = set(answer.get("joined") or {})
        if members <= joined:
            return
        if time.perf_counter() - start > timeout_s:
            raise BenchError(f"{user.user_id}'s server still lacks {sorted(members - joined)} after {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


async def until_read(user: MatrixUser, room_id: str, prefix: str, expected: set[str], what: str,
                     newest: str | None = None, stall_s: float = STALL_S) -> float:  # fmt: skip
    """Seconds until ``user`` reads every body of ``expected`` in the room; BenchError on a stall.

    With ``newest`` (the body sent last), first waits until the newest page
    of the room holds it, so that the whole room is paged only once it can
    be complete.
    """
    start = time.perf_counter()
    next_note = 15.0
    while newest is not None:
        page = await user.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=100",
                                  timeout_s=120)  # fmt: skip
        if any(e.get("content", {}).get("body") == newest for e in page.get("chunk") or [] if isinstance(e, dict)):
            break
        waited = time.perf_counter() - start
        if waited > STALL_S * 4:
            raise BenchError(f"{what}: the newest event did not arrive within {STALL_S * 4:.0f} s")
        if waited >= next_note:
            progress(BENCH, f"{what}: waiting for the newest event, {waited:.0f} s")
            next_note += 15
        await asyncio.sleep(0.2)
    best, best_at = 0, time.perf_counter()
    while True:
        got = set(await read_room(user, room_id, prefix, want=len(expected)))
        have = len(got & expected)
        now = time.perf_counter()
        if have == len(expected):
            return now - start
        if have > best:
            best, best_at = have, now
            progress(BENCH, f"{what}: {have}/{len(expected)} after {now - start:.0f} s")
        elif now - best_at > stall_s:
            missing = sorted(expected - got)
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise BenchError(f"{what}: stuck at {have} of {len(expected)} events for {stall_s:.0f} s"
                             f" (missing: {shown})")  # fmt: skip
        await asyncio.sleep(0.5)


class TimelineWatch:
    """A user's long-poll ``/sync`` loop that notes when each body with a prefix first appears."""

    def __init__(self, user: MatrixUser, room_id: str, prefix: str) -> None:
        self.user, self.room_id, self.prefix = user, room_id, prefix
        self.seen: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        since = str((await self.user.sync(None, 0)).get("next_batch", ""))
        self._task = asyncio.create_task(self._loop(since))

    async def _loop(self, since: str) -> None:
        room_filter = json.dumps({"room": {"timeline": {"limit": PAGE}}})
        while True:
            path = f"/_matrix/client/v3/sync?timeout=10000&since={q(since)}&filter={q(room_filter)}"
            reply = await self.user.request("GET", path, timeout_s=60)
            now = time.perf_counter()
            since = str(reply.get("next_batch", since))
            timeline = reply.get("rooms", {}).get("join", {}).get(self.room_id, {}).get("timeline", {})
            for event in timeline.get("events", []):
                body = event.get("content", {}).get("body")
                if isinstance(body, str) and body.startswith(self.prefix):
                    self.seen.setdefault(body, now)
            if timeline.get("limited"):
                # A gap in the timeline: read what it skipped through /messages.
                for body in await read_room(self.user, self.room_id, self.prefix):
                    self.seen.setdefault(body, time.perf_counter())

    def raise_if_failed(self) -> None:
        """BenchError when the sync loop ended on an error (it never ends otherwise)."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            raise BenchError(f"/sync of {self.user.user_id} failed: {error}") from error

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# ------------------------------------------------------------------------------------------------ load


async def send_all(senders: Sequence[MatrixUser], room_id: str, bodies: list[str]) -> float:
    """Send ``bodies`` from ``senders`` (round robin, SENDERS loops each); seconds taken."""
    start = time.perf_counter()
    queues: list[list[str]] = [[] for _ in senders]
    for i, body in enumerate(bodies):
        queues[i % len(senders)].append(body)
    total, done = len(bodies), 0
    step = max(1000, total // 10)

    async def loop(user: MatrixUser, mine: list[str]) -> None:
        nonlocal done
        for body in mine:
            await user.send(room_id, body)
            done += 1
            if done % step == 0:
                progress(BENCH, f"sent {done}/{total} ({done / (time.perf_counter() - start):.0f}/s)")

    await asyncio.gather(*(loop(user, mine[i::SENDERS]) for user, mine in zip(senders, queues, strict=True)
                           for i in range(SENDERS)))  # fmt: skip
    return time.perf_counter() - start


async def register(http: aiohttp.ClientSession, process: ServerProcess, name: str, counters: Counters) -> MatrixUser:
    user = MatrixUser(http, process, counters)
    await user.register(name)
    return user


async def join(user: MatrixUser, room_id: str, via: str) -> None:
    deadline = time.perf_counter() + 120
    while True:
        try:
            await user.request("POST", f"/_matrix/client/v3/join/{q(room_id)}?server_name={q(via)}", {}, timeout_s=60)
            return
        except BenchError:
            if time.perf_counter() > deadline:
                raise
            await asyncio.sleep(1)


async def replicate(
    readers: list[MatrixUser], senders: list[MatrixUser], room_id: str, messages: int
) -> dict[str, Any]:
    """Events/s replicated: from the first send until every reader holds every event.

    A reader holds an event once its ``/sync`` returned it or, once no event
    has arrived for :data:`SCAN_AFTER_S`, once paging ``/messages`` shows it
    (a server may fetch what it was not sent when a client pages back, as
    Synapse does). Events still missing after :data:`QUIET_S` without a new
    arrival are counted under ``replication_missing``, and the rate is then
    not given: it would describe a replication that did not finish.
    """
    bodies = [f"rep {i}" for i in range(messages)]
    watches = [TimelineWatch(user, room_id, "rep ") for user in readers]
    for watch in watches:
        await watch.start()
    want = set(bodies)
    try:
        start = time.perf_counter()
        send_s = await send_all(senders, room_id, bodies)
        last_count, last_change = -1, time.perf_counter()
        while True:
            for watch in watches:
                watch.raise_if_failed()
            count = sum(len(want & watch.seen.keys()) for watch in watches)
            now = time.perf_counter()
            if count == len(want) * len(watches):
                break
            if count != last_count:
                last_count, last_change = count, now
            elif now - last_change > QUIET_S:
                break
            if now - last_change > SCAN_AFTER_S:
                for watch in watches:
                    if not want <= watch.seen.keys():
                        for body in await read_room(watch.user, room_id, "rep "):
                            watch.seen.setdefault(body, time.perf_counter())
            await asyncio.sleep(0.1)
    finally:
        for watch in watches:
            await watch.stop()
    arrived = [watch.seen[body] for watch in watches for body in want if body in watch.seen]
    missing = len(want) * len(watches) - len(arrived)
    elapsed = max(arrived, default=start) - start
    return {
        "events_per_s": round(messages / elapsed, 1) if not missing and elapsed > 0 else None,
        "replicate_s": round(elapsed, 2),
        "replication_missing": missing,
        "send_s": round(send_s, 2),
    }


async def latencies(pairs: list[tuple[MatrixUser, MatrixUser]], room_id: str, rounds: int) -> list[float]:
    found: list[float] = []
    per_pair = max(1, rounds // len(pairs))
    for sender, receiver in pairs:
        found += await sync_latencies(sender, receiver, room_id, per_pair)
    return found


async def catch_up(
    down: Any, reader: MatrixUser, senders: list[MatrixUser], room_id: str, count: int, tag: str,
    http: aiohttp.ClientSession,
) -> dict[str, Any]:  # fmt: skip
    """Kill ``down``, send ``count`` events from the others, restart it: seconds until its user read them all."""
    progress(BENCH, f"{tag}: kill -9 {down.process.name}, {count} events sent meanwhile")
    down.kill()
    bodies = [f"{tag} {i}" for i in range(count)]
    send_s = await send_all(senders, room_id, bodies)
    started = time.perf_counter()
    down.start()
    peak = 0.0

    async def sample() -> None:
        nonlocal peak
        while True:
            if down.process.proc is not None:
                peak = max(peak, rss_mib(down.process.proc.pid))
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    try:
        await wait_ready(http, down.process)
        await until_read(reader, room_id, f"{tag} ", set(bodies), f"{tag} on {down.process.name}", newest=bodies[-1])
    finally:
        sampler.cancel()
    return {"seconds": round(time.perf_counter() - started, 2), "send_s": round(send_s, 2),
            "peak_rss_mb": round(peak, 1)}  # fmt: skip


async def audit(readers: list[MatrixUser], room_id: str, sent: list[str]) -> tuple[int, int]:
    """(lost, duplicated) summed over every reader: each must read each sent body exactly once."""
    lost = duplicated = 0
    for reader in readers:
        counts = Counter(await read_room(reader, room_id, ""))
        lost += sum(1 for body in sent if counts[body] == 0)
        duplicated += sum(counts[body] - 1 for body in sent if counts[body] > 1)
    return lost, duplicated


# ------------------------------------------------------------------------------------------------ one side


#: words of the log lines a stall's error quotes
_FEDERATION_WORDS = ("dropped PDU", "refused", "rejected", "soft-failed", "failed", "cannot get the keys", "WARNING",
                     "ERROR")


def _federation_log(servers: list[Any]) -> str:
    return " | ".join(f"{s.process.name}: " + (" / ".join(s.process.log_lines(_FEDERATION_WORDS)) or "nothing")
                      for s in servers)  # fmt: skip


async def measure(servers: list[Any], names: list[str], messages: int, small: int, big: int | None,
                  rounds: int) -> dict[str, Any]:  # fmt: skip
    """Every figure for one set of servers: ``servers[0]`` hosts the room, ``servers[1]`` is the one restarted."""
    counters = Counters()
    connector = aiohttp.TCPConnector(ssl=False, limit=200)
    async with aiohttp.ClientSession(connector=connector) as http:
        for server in servers:
            if server.process.proc is None:
                server.start()
            await wait_ready(http, server.process)
        users = [await register(http, s.process, f"bench{n}", counters) for s, n in zip(servers, names, strict=True)]
        made = await users[0].request(
            "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "bench"}
        )
        room_id = str(made["room_id"])
        for user in users[1:]:
            await join(user, room_id, servers[0].server_name)
        # Every server knows every member before anyone sends: an event goes to the servers its sender's
        # server knows to be in the room, so one sent before a join arrived would reach the new server
        # only when a later event of that sender leads to it.
        everyone = {user.user_id for user in users}
        for user in users:
            await until_joined(user, room_id, everyone)
        for user in users:
            await user.send(room_id, f"ready {user.user_id}")
        ready = {f"ready {u.user_id}" for u in users}
        try:
            for user in users:
                await until_read(user, room_id, "ready ", ready, f"joins seen by {user.user_id}", stall_s=60)
        except BenchError as exc:  # say what each server made of its federation traffic (a rare stall in CI)
            raise BenchError(f"{exc}; what the servers logged: {_federation_log(servers)}") from None

        progress(BENCH, f"{names}: replicating {messages} events")
        figures = await replicate(users, users, room_id, messages)
        figures["rss_mb"] = round(max(rss_mib(s.process.proc.pid) for s in servers if s.process.proc), 1)
        progress(BENCH, f"{names}: send→/sync latency, {rounds} rounds")
        pairs = [(users[i], users[(i + 1) % len(users)]) for i in range(len(users))]
        lat = await latencies(pairs, room_id, rounds)
        figures["latency_ms_p50"] = round(statistics.median(lat), 2)
        others = [u for i, u in enumerate(users) if i != 1]
        sent = [f"rep {i}" for i in range(messages)]
        small_run = await catch_up(servers[1], users[1], others, room_id, small, "cu1k", http)
        figures["catch_up_1k_s"] = small_run["seconds"]
        figures["catch_up_1k_peak_rss_mb"] = small_run["peak_rss_mb"]
        sent += [f"cu1k {i}" for i in range(small)]
        if big:
            big_run = await catch_up(servers[1], users[1], others, room_id, big, "cu100k", http)
            figures["catch_up_100k_s"] = big_run["seconds"]
            figures["catch_up_100k_peak_rss_mb"] = big_run["peak_rss_mb"]
            figures["catch_up_100k_send_s"] = big_run["send_s"]
            sent += [f"cu100k {i}" for i in range(big)]
        else:
            figures["catch_up_100k_s"] = None
        progress(BENCH, f"{names}: reading the whole room on every server")
        figures["lost"], figures["duplicated"] = await audit(users, room_id, sent)
        figures["events"] = len(sent)
        figures["rate_limited"] = counters.rate_limited
        return figures


def _ratio(ours: Any, theirs: Any) -> float | None:
    if not isinstance(ours, (int, float)) or not isinstance(theirs, (int, float)) or not theirs:
        return None
    return round(ours / theirs, 3)


def run(messages: int | None = None, catch_up: int | None = None, latency_rounds: int | None = None,
        only: str | None = None, synapse_catch_up: int | None = None) -> tuple[dict[str, Any], str]:  # fmt: skip
    """Run the benchmark; (result, table)."""
    messages = messages if messages is not None else MESSAGES
    big = catch_up if catch_up is not None else CATCH_UP
    rounds = latency_rounds if latency_rounds is not None else LATENCY_ROUNDS
    for label, value in (("--messages", messages), ("--latency-rounds", rounds)):
        if value < 1:
            raise BenchError(f"{label} must be at least 1")
    if big < 0 or (synapse_catch_up or 0) < 0:
        raise BenchError("--catch-up must be 0 (skip) or more")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lowband-bench-fed-") as tmp:
        workdir = Path(tmp)
        if only in (None, "lowband"):
            result.update(asyncio.run(_lowband(workdir, messages, big, rounds)))
        if only in (None, "synapse"):
            try:
                result["synapse"] = asyncio.run(_synapse(workdir, messages, synapse_catch_up or 0, rounds))
            except BenchError as exc:
                if only == "synapse":
                    raise
                # Our figures stand; the anchor's failure is reported in their place.
                progress(BENCH, f"synapse failed: {exc}")
                result["synapse"] = {"error": str(exc)}
    if "events_per_s" in result.get("synapse", {}) and "events_per_s" in result:
        theirs = result["synapse"]
        result["ratio_events_per_s"] = _ratio(result["events_per_s"], theirs["events_per_s"])
        result["ratio_latency"] = _ratio(result["latency_ms_p50"], theirs["latency_ms_p50"])
        result["ratio_catch_up_1k"] = _ratio(result["catch_up_1k_s"], theirs["catch_up_1k_s"])
    return result, table(result)


async def _lowband(workdir: Path, messages: int, big: int, rounds: int) -> dict[str, Any]:
    from lowband.sim.tls import self_signed

    cert, key = self_signed(workdir, ["127.0.0.1"])
    (workdir / "federation.toml").write_text(FED_CONFIG)
    servers = [Gateway(workdir, name, cert, key) for name in ("a", "b", "c")]
    try:
        figures = await measure(servers, ["a", "b", "c"], messages, CATCH_UP_SMALL, big, rounds)
    finally:
        for server in servers:
            server.stop()
    figures["servers"] = 3
    return figures


async def _synapse(workdir: Path, messages: int, big: int, rounds: int) -> dict[str, Any]:
    servers = [SynapseServer(workdir, name) for name in ("s1", "s2")]
    try:
        figures = await measure(servers, ["s1", "s2"], messages, CATCH_UP_SMALL, big or None, rounds)
    finally:
        for server in servers:
            server.stop()
    figures["servers"] = 2
    figures["version"] = synapse_version()
    return figures


def synapse_version() -> str:
    from lowband.sim.synapse import SynapseError, ensure_synapse, run_setup

    try:
        return run_setup([str(ensure_synapse()), "-c", "import synapse; print(synapse.__version__)"],
                         "reading Synapse's version", 60).strip()  # fmt: skip
    except SynapseError as exc:
        raise BenchError(str(exc)) from exc


def table(result: dict[str, Any]) -> str:
    keys = ("servers", "events_per_s", "latency_ms_p50", "catch_up_1k_s", "catch_up_100k_s", "rss_mb",
            "catch_up_1k_peak_rss_mb", "catch_up_100k_peak_rss_mb", "replication_missing", "lost", "duplicated")  # fmt: skip
    synapse = result.get("synapse", {})
    lines = [f"{'':28} {'lowband':>12} {'synapse':>12}"]
    for key in keys:
        ours, theirs = ("-" if v is None else str(v) for v in (result.get(key, "-"), synapse.get(key, "-")))
        lines.append(f"{key:28} {ours:>12} {theirs:>12}")
    for key in ("ratio_events_per_s", "ratio_latency", "ratio_catch_up_1k"):
        if key in result:
            lines.append(f"{key:28} {result[key]!s:>12}")
    return "\n".join(lines)
