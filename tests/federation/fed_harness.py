"""Federating gateways for tests: TLS on loopback, ``127.0.0.1:PORT`` names, a client per user.

Every gateway is a real ``lowband serve`` process (``GatewayProcess``):
``kill -9`` and restarts are what they are. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from harness import Client, GatewayProcess

from lowband.sim.tls import self_signed

#: What the issue's CLI contract says a federating test gateway runs with.
FED_CONFIG = """
[rate_limits]
enabled = false
[federation]
verify_certificates = false
ip_range_blocklist = []
"""


def tls_pair(tmp_path: Path) -> tuple[Path, Path]:
    """One self-signed certificate for 127.0.0.1 (made once per test directory)."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    if not cert.exists():
        self_signed(tmp_path, ["127.0.0.1"])
    return cert, key


def fed_gateway(tmp_path: Path, name: str, config: str = FED_CONFIG, **kwargs: Any) -> GatewayProcess:
    """A federating gateway (not started) with its data in ``tmp_path/name``."""
    return GatewayProcess(tmp_path / name, server_name="127.0.0.1:{port}", config=config, tls=tls_pair(tmp_path),
                          **kwargs)  # fmt: skip


@contextlib.contextmanager
def gateways(tmp_path: Path, *names: str, config: str = FED_CONFIG) -> Iterator[dict[str, GatewayProcess]]:
    """Started federating gateways by name, all stopped afterwards."""
    running: dict[str, GatewayProcess] = {}
    try:
        for name in names:
            running[name] = fed_gateway(tmp_path, name, config).start()
        yield running
    finally:
        for gateway in running.values():
            gateway.stop()


@contextlib.asynccontextmanager
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session that accepts the tests' self-signed certificates."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        yield session


async def user(session: aiohttp.ClientSession, gateway: Any, name: str) -> Client:
    """A registered user of ``gateway`` (a GatewayProcess or a SynapsePeer)."""
    client = Client(session, gateway.url)
    await client.register(name)
    return client


def q(value: str) -> str:
    """A path segment, percent-encoded."""
    return urllib.parse.quote(value, safe="")


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll the coroutine ``check`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s (last: {str(last)[:500]})")


async def bodies(client: Client, room_id: str, limit: int = 100) -> list[str]:
    """Bodies of the room's messages the user sees, oldest first (via /messages backwards)."""
    status, page = await client.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit={limit}")
    assert status == 200, page
    return [e["content"]["body"] for e in reversed(page["chunk"])
            if e.get("type") == "m.room.message" and isinstance(e.get("content", {}).get("body"), str)]  # fmt: skip


async def send(client: Client, room_id: str, body: str, txn: str | None = None) -> str:
    """Send a text message; its event ID."""
    txn = txn or f"t{time.monotonic_ns()}"
    status, answer = await client.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/{txn}",
                                          {"msgtype": "m.text", "body": body})  # fmt: skip
    assert status == 200, answer
    return str(answer["event_id"])


class CuttableLink:
    """A TCP relay on loopback between two servers, that a test can cut and heal (a network partition).

    A gateway reaches a peer through it with ``--peer NAME=127.0.0.1:<port>``;
    while cut, new connections are refused and open ones are dropped. TLS
    passes through untouched.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut = False
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> CuttableLink:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.target_port), 5)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while not self.cut:
                data = await src.read(65536)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            dst.close()

    def sever(self) -> None:
        """Cut: refuse new connections, drop the open ones."""
        self.cut = True
        for task in list(self._pipes):
            task.cancel()

    def heal(self) -> None:
        """Let connections through again."""
        self.cut = False

    async def close(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*self._pipes, return_exceptions=True)


# ---------------------------------------------------------------- room helpers shared by the federation tests


async def create_room(client: Client, alias: str | None = None, preset: str = "public_chat") -> str:
    """A room made by ``client`` (named after its alias, when it has one); its ID."""
    body: dict[str, Any] = {"preset": preset}
    if alias:
        body.update(room_alias_name=alias, name=alias)
    status, created = await client.request("POST", "/_matrix/client/v3/createRoom", body)
    assert status == 200, created
    return str(created["room_id"])


async def state(client: Client, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any] | None:
    """The content of one current state event as ``client`` sees it, or None."""
    status, content = await client.request(
        "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state/{event_type}/{q(state_key)}")
    return content if status == 200 and isinstance(content, dict) else None


async def put_state(client: Client, room_id: str, event_type: str, content: dict[str, Any], state_key: str = "") -> str:
    """Send a state event; its event ID."""
    status, answer = await client.request(
        "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/state/{event_type}/{q(state_key)}", content)
    assert status == 200, answer
    return str(answer["event_id"])


async def has(client: Client, room_id: str, wanted: list[str]) -> bool:
    """Whether every body in ``wanted`` is among the room's messages ``client`` sees."""
    seen = await bodies(client, room_id, limit=500)
    return all(w in seen for w in wanted)


async def membership_is(client: Client, room_id: str, user_id: str, membership: str) -> bool:
    """Whether ``user_id``'s current membership, as ``client`` sees it, is ``membership``."""
    content = await state(client, room_id, "m.room.member", user_id)
    return content is not None and content.get("membership") == membership


async def sync(client: Client, since: str | None = None) -> dict[str, Any]:
    """One non-blocking /sync (incremental from ``since``)."""
    path = "/_matrix/client/v3/sync?timeout=0" + (f"&since={q(since)}" if since else "")
    status, body = await client.request("GET", path)
    assert status == 200, body
    return dict(body)


async def invited(client: Client, room_id: str) -> dict[str, Any] | None:
    """The room's entry under ``rooms.invite`` in ``client``'s sync, or None."""
    found = (await sync(client)).get("rooms", {}).get("invite", {}).get(room_id)
    return dict(found) if found else None


class SyncWatcher:
    """Incremental syncs, as a client runs them: every ephemeral event of a room seen since the first token."""

    def __init__(self, client: Client, since: str) -> None:
        self.client, self.since = client, since
        self.seen: list[dict[str, Any]] = []

    async def poll(self, room_id: str) -> list[dict[str, Any]]:
        body = await sync(self.client, self.since)
        self.since = body["next_batch"]
        self.seen += body.get("rooms", {}).get("join", {}).get(room_id, {}).get("ephemeral", {}).get("events", [])
        return self.seen

    async def typing(self, room_id: str, user_id: str) -> bool:
        return any(e["type"] == "m.typing" and user_id in e["content"]["user_ids"] for e in await self.poll(room_id))

    async def receipt(self, room_id: str, user_id: str, event_id: str) -> bool:
        return any(e["type"] == "m.receipt" and user_id in e["content"].get(event_id, {}).get("m.read", {})
                   for e in await self.poll(room_id))  # fmt: skip

    @classmethod
    async def start(cls, client: Client) -> SyncWatcher:
        return cls(client, (await sync(client))["next_batch"])
