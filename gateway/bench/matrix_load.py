"""The load client of ``lowband bench homeserver``: raw Matrix client-server HTTP over aiohttp.

The same client measures every server: it registers users, sends
messages one at a time or from several users at once, and times how long
a message takes to reach another user's parked long-poll ``/sync``. Each
phase stops at a message count or a duration, whichever comes first. A
server that answers with an error (other than 429, which is waited out and
counted) ends the run with :class:`BenchError`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from lowband.gateway.bench.processes import BenchError, ServerProcess

READY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0
SYNC_TIMEOUT_MS = 30_000
PARK_DELAY_S = 0.1  # lets B's long-poll reach the server before A sends

_PASSWORD = "bench-password-not-secret"


@dataclass
class Counters:
    """What the load client counts across all its users (429 answers waited out)."""

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


def join_path(room_id: str) -> str:
    """The client API path that joins ``room_id``."""
    return f"/_matrix/client/v3/join/{quote(room_id, safe='')}"


async def users_in_one_room(http: aiohttp.ClientSession, server: ServerProcess, counters: Counters,
                            count: int) -> tuple[list[MatrixUser], str]:  # fmt: skip
    """``count`` registered users (bench0, bench1 …) joined to one public room the first made; (users, room ID)."""
    users = [MatrixUser(http, server, counters) for _ in range(count)]
    for n, user in enumerate(users):
        await user.register(f"bench{n}")
    created = await users[0].request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "bench"})
    room_id = str(created.get("room_id", ""))
    if not room_id:
        raise BenchError(f"{server.name}: /createRoom gave no room_id")
    for user in users[1:]:
        await user.request("POST", join_path(room_id), {})
    return users, room_id


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
