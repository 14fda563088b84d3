"""A hostile federation peer we write ourselves, and a real gateway for it to attack, both in the test's loop.

``HostilePeer`` is a small aiohttp HTTPS server on 127.0.0.1 with its own
ed25519 key. It serves ``/_matrix/key/v2/server`` (so the gateway fetches
its key as from any server; as a notary it vouches for the keys in
``vouches``), answers the fetch endpoints (``/event``,
``/event_auth``, ``/get_missing_events``, ``/state_ids``, ``/state``,
``/backfill``, ``/send``) honestly from the events it holds unless a test
puts its own handler in ``overrides``, and counts every request the
gateway makes to it (``hits``). As a client it signs its requests with
``X-Matrix`` as the spec says, or breaks them on purpose.

``attacked_gateway`` runs a real gateway (``run_gateway``, TLS on
loopback, a ``127.0.0.1:PORT`` name) inside the test's loop, so a test can
look at its services and its log. Every server started here is stopped by
the context manager that started it; every request has a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, unquote

import aiohttp
import yarl
from aiohttp import web
from fed_harness import tls_pair
from harness import Client, free_port

from lowband.gateway.config import DEFAULT_IP_RANGE_BLOCKLIST, FederationConfig, RateLimits
from lowband.gateway.matrix import room_versions
from lowband.gateway.matrix.events import Event, build_event, compute_event_id
from lowband.gateway.matrix.request_auth import authorization_header
from lowband.gateway.matrix.room_versions import RoomVersion
from lowband.gateway.matrix.server_keys import key_document
from lowband.gateway.matrix.signing import SigningKey, sign_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StateKey = tuple[str, str]


def q(value: str) -> str:
    """One path segment, percent-encoded."""
    return quote(value, safe="")


# ----------------------------------------------------------------- the gateway


@dataclass
class Gateway:
    """A running gateway: its base URL, server name and services (to look inside)."""

    url: str
    server_name: str
    services: Any

    @property
    def federation(self) -> Any:
        return self.services.components["federation"]


@contextlib.asynccontextmanager
async def attacked_gateway(tmp_path: Path, *, peers: dict[str, str] | None = None,
                           blocklist: tuple[str, ...] = DEFAULT_IP_RANGE_BLOCKLIST,
                           trusted_key_servers: tuple[str, ...] = (), **config: Any) -> AsyncIterator[Gateway]:  # fmt: skip
    """A federating gateway in this loop, named ``127.0.0.1:PORT``, HTTPS with a self-signed certificate.

    ``peers`` are the ``--peer`` mappings; the IP blocklist is the default
    one (private and loopback ranges included) unless given.
    """
    from lowband.gateway.app import run_gateway
    from lowband.gateway.config import load_config

    port = free_port()
    cert, key = tls_pair(tmp_path)
    federation = FederationConfig(peers=dict(peers or {}), verify_certificates=False, ip_range_blocklist=blocklist,
                                  trusted_key_servers=trusted_key_servers)  # fmt: skip
    settings = {"data_dir": tmp_path / "gw", "server_name": f"127.0.0.1:{port}", "http_port": port,
                "registration_enabled": True, "tls_cert": cert, "tls_key": key, "federation": federation,
                "rate_limits": RateLimits(enabled=False), **config}  # fmt: skip
    ready: list[Any] = []
    started, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_gateway(load_config(None, **settings), started, stop, ready.append))
    waiter = asyncio.create_task(started.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()
    if waiter not in done:
        task.cancel()
        raise TimeoutError("gateway did not start")
    try:
        yield Gateway(f"https://127.0.0.1:{port}", f"127.0.0.1:{port}", ready[0])
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def http_session(limit: int = 100) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that accepts self-signed certificates."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False, limit=limit)) as session:
        yield session


async def local_user(session: aiohttp.ClientSession, gateway: Gateway, name: str) -> Client:
    """A registered user of the gateway."""
    client = Client(session, gateway.url)
    await client.register(name)
    return client


async def public_room(alice: Client, version: str = "10") -> str:
    """A public room made by ``alice``; its ID."""
    status, created = await alice.request("POST", "/_matrix/client/v3/createRoom",
                                          {"preset": "public_chat", "room_version": version})  # fmt: skip
    assert status == 200, created
    return str(created["room_id"])


# ----------------------------------------------------------------- the hostile peer


class HostilePeer:
    """Another server, written by the test: see the module docstring.

    ``name`` defaults to ``127.0.0.1:PORT``; give another (``evil.test``)
    and map it with ``peers`` on the gateway to reach it without DNS.
    """

    def __init__(self, tmp_path: Path, name: str | None = None, version: RoomVersion = room_versions.V10) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.name = name or f"127.0.0.1:{self.port}"
        self.key = SigningKey.from_seed(hashlib.sha256(self.name.encode()).digest(), "h1")
        self.version = version
        self.hits: collections.Counter[str] = collections.Counter()
        self.overrides: dict[str, Handler] = {}
        self.events: dict[str, Event] = {}
        self.state_before: dict[str, dict[StateKey, str]] = {}
        self.state: dict[StateKey, Event] = {}
        self.latest: list[Event] = []
        self.received: list[dict[str, Any]] = []  # transactions the gateway sent us
        self.vouches: dict[str, SigningKey] = {}  # as a notary: other servers' keys we answer /key/v2/query with
        self.room_id: str | None = None
        self.ts = int(time.time() * 1000)
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def user(self, localpart: str = "mallory") -> str:
        return f"@{localpart}:{self.name}"

    async def __aenter__(self) -> Self:
        cert, key = tls_pair(self.tmp_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), 30)

    # ------------------------------------------------------------- serving

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        parts = request.raw_path.split("?")[0].split("/")
        kind = "key" if request.path.startswith("/_matrix/key/") else (parts[4] if len(parts) > 4 else request.path)
        self.hits[kind] += 1
        handler = self.overrides.get(kind)
        if handler is not None:
            return await handler(request)
        return await self._honest(kind, request, [unquote(p) for p in parts])

    async def _honest(self, kind: str, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if kind == "key" and request.path.startswith("/_matrix/key/v2/query/"):
            server = unquote(request.path.rsplit("/", 1)[1])
            vouched = self.vouches.get(server)
            docs = [] if vouched is None else [sign_json(self.key_document(server, vouched), self.name, self.key)]
            return web.json_response({"server_keys": docs})
        if kind == "key":
            return web.json_response(self.key_document(self.name, self.key))
        if kind == "version":
            return web.json_response({"server": {"name": "hostile", "version": "0"}})
        if kind == "send":
            body = await request.json()
            self.received.append(body)
            return web.json_response({"pdus": {}})
        if kind == "event" and parts[5] in self.events:
            return web.json_response({"origin": self.name, "origin_server_ts": self.now(),
                                      "pdus": [self.events[parts[5]].pdu]})  # fmt: skip
        if kind == "event_auth" and parts[6] in self.events:
            return web.json_response({"auth_chain": [e.pdu for e in self.auth_chain([parts[6]])]})
        if kind == "get_missing_events":
            body = await request.json()
            return web.json_response({"events": [e.pdu for e in self.missing(body["latest_events"],
                                                                          set(body["earliest_events"]),
                                                                          int(body.get("limit", 10)))]})  # fmt: skip
        if kind in ("state_ids", "state"):
            event_id = request.query.get("event_id", "")
            if event_id in self.state_before:
                state = list(self.state_before[event_id].values())
                chain = self.auth_chain(state)
                if kind == "state_ids":
                    return web.json_response({"pdu_ids": state, "auth_chain_ids": [e.event_id for e in chain]})
                return web.json_response({"pdus": [self.events[s].pdu for s in state],
                                          "auth_chain": [e.pdu for e in chain]})  # fmt: skip
        if kind == "backfill":
            starts = request.query.getall("v", [])
            limit = int(request.query.get("limit", "10"))
            events = [self.events[s] for s in starts if s in self.events] + self.missing(starts, set(), limit)
            return web.json_response({"origin": self.name, "origin_server_ts": self.now(),
                                      "pdus": [e.pdu for e in events[:limit]]})  # fmt: skip
        return web.json_response({"errcode": "M_NOT_FOUND", "error": f"no {kind}"}, status=404)

    @staticmethod
    def key_document(server: str, key: SigningKey) -> dict[str, Any]:
        """``server``'s key document for ``key``, valid for a day."""
        return key_document(server, key, int(time.time() * 1000) + 86_400_000)

    def auth_chain(self, event_ids: list[str]) -> list[Event]:
        """The auth chain of ``event_ids`` among the events we hold (not including them)."""
        seen: dict[str, Event] = {}
        todo = [a for e in event_ids if e in self.events for a in self.events[e].auth_events]
        while todo:
            current = todo.pop()
            if current in seen or current not in self.events:
                continue
            seen[current] = self.events[current]
            todo.extend(self.events[current].auth_events)
        return sorted(seen.values(), key=lambda e: e.depth)

    def missing(self, latest: list[str], earliest: set[str], limit: int) -> list[Event]:
        """Prev events of ``latest`` back to ``earliest`` (breadth first), at most ``limit``, oldest first."""
        out: dict[str, Event] = {}
        frontier = list(latest)
        while frontier and len(out) < limit:
            event = self.events.get(frontier.pop(0))
            for prev in event.prev_events if event else []:
                if prev not in earliest and prev in self.events and prev not in out and len(out) < limit:
                    out[prev] = self.events[prev]
                    frontier.append(prev)
        return sorted(out.values(), key=lambda e: e.depth)

    # ------------------------------------------------------------- events

    def now(self) -> int:
        self.ts = max(self.ts + 1, int(time.time() * 1000))
        return self.ts

    def make(self, event_type: str, content: dict[str, Any], *, sender: str | None = None,
             prev: list[Event] | None = None, auth: list[Event] | None = None, state_key: str | None = None,
             depth: int | None = None, keep: bool = True, prev_ids: list[str] | None = None,
             auth_ids: list[str] | None = None, server_name: str | None = None,
             key: SigningKey | None = None) -> Event:  # fmt: skip
        """An event of ours in the room, signed by us (or by ``server_name``/``key``), on ``prev`` (default: our latest).

        ``auth`` defaults to the create, power levels and sender's member
        events of our view of the state. ``keep``: remember it, so the
        fetch endpoints serve it and ``latest`` moves on.
        """
        assert self.room_id is not None, "join a room first"
        sender = sender or self.user()
        prev = self.latest if prev is None else prev
        if auth is None:
            wanted = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", sender)]
            auth = [self.state[k] for k in wanted if k in self.state]
        event = build_event(room_id=self.room_id, sender=sender, type=event_type, content=content,
                            prev_events=prev_ids if prev_ids is not None else [e.event_id for e in prev],
                            auth_events=auth_ids if auth_ids is not None else [e.event_id for e in auth],
                            depth=depth if depth is not None else max([e.depth for e in prev], default=0) + 1,
                            origin_server_ts=self.now(), server_name=server_name or self.name,
                            signing_key=key or self.key, state_key=state_key, room_version=self.version)  # fmt: skip
        if keep:
            self.events[event.event_id] = event
            self.state_before[event.event_id] = {k: e.event_id for k, e in self.state.items()}
            self.latest = [event]
            if state_key is not None:
                self.state[(event_type, state_key)] = event
        return event

    def message(self, text: str, **kwargs: Any) -> Event:
        """An ``m.room.message`` of ours."""
        return self.make("m.room.message", {"msgtype": "m.text", "body": text}, **kwargs)

    def chain(self, length: int, prefix: str = "m") -> list[Event]:
        """``length`` messages, each on the one before, on our latest event."""
        return [self.message(f"{prefix}{i}") for i in range(length)]

    def learn(self, pdus: list[Any]) -> None:
        """Hold events another server sent (to build on them and serve them)."""
        for pdu in pdus:
            if isinstance(pdu, dict):
                event = Event(compute_event_id(pdu, self.version), pdu)
                self.events.setdefault(event.event_id, event)

    async def join(self, session: aiohttp.ClientSession, gateway: Gateway, room_id: str,
                   localpart: str = "mallory") -> Event:  # fmt: skip
        """Join ``@localpart:us`` to a room the gateway holds (make_join, send_join v2); our join event."""
        user_id = self.user(localpart)
        status, answer = await self.call(session, gateway, "GET",
                                         f"/_matrix/federation/v1/make_join/{q(room_id)}/{q(user_id)}",
                                         query=[("ver", self.version.identifier)])  # fmt: skip
        assert status == 200, answer
        self.room_id = room_id
        template = answer["event"]
        join = build_event(room_id=room_id, sender=user_id, type="m.room.member", content={"membership": "join"},
                           prev_events=template["prev_events"], auth_events=template["auth_events"],
                           depth=template["depth"], origin_server_ts=self.now(), server_name=self.name,
                           signing_key=self.key, state_key=user_id, room_version=self.version)  # fmt: skip
        status, answer = await self.call(session, gateway, "PUT",
                                         f"/_matrix/federation/v2/send_join/{q(room_id)}/{q(join.event_id)}",
                                         body=join.pdu)  # fmt: skip
        assert status == 200, answer
        self.learn(answer["auth_chain"])
        self.learn(answer["state"])
        before: dict[StateKey, str] = {}
        for pdu in answer["state"]:
            event = self.events[compute_event_id(pdu, self.version)]
            self.state[(event.type, event.state_key or "")] = event
            before[(event.type, event.state_key or "")] = event.event_id
        self.events[join.event_id] = join
        self.state_before[join.event_id] = before
        self.state[("m.room.member", user_id)] = join
        self.latest = [join]
        return join

    def create_room(self, localpart: str = "mallory") -> str:
        """Make a public room of our own (create, join, power levels, join rules, history visibility); its ID."""
        creator = self.user(localpart)
        self.room_id = f"!hostile{self.port}:{self.name}"
        self.state, self.latest = {}, []
        create = self.make("m.room.create", {"creator": creator, "room_version": self.version.identifier},
                           sender=creator, prev=[], auth=[], state_key="")  # fmt: skip
        join = self.make("m.room.member", {"membership": "join"}, sender=creator, state_key=creator, auth=[create])
        levels = self.make("m.room.power_levels", {"users": {creator: 100}}, sender=creator, state_key="",
                           auth=[create, join])  # fmt: skip
        for event_type, content in (("m.room.join_rules", {"join_rule": "public"}),
                                    ("m.room.history_visibility", {"history_visibility": "shared"})):  # fmt: skip
            self.make(event_type, content, sender=creator, state_key="", auth=[create, join, levels])
        self.overrides.setdefault("make_join", self._make_join)
        self.overrides.setdefault("send_join", self._send_join)
        return self.room_id

    async def _make_join(self, request: web.Request) -> web.StreamResponse:
        user_id = unquote(request.raw_path.split("?")[0].split("/")[6])
        auth = [self.state[k].event_id for k in (("m.room.create", ""), ("m.room.power_levels", ""),
                                                 ("m.room.join_rules", ""))]  # fmt: skip
        template = {"room_id": self.room_id, "sender": user_id, "state_key": user_id, "type": "m.room.member",
                    "content": {"membership": "join"}, "prev_events": [e.event_id for e in self.latest],
                    "auth_events": auth, "depth": max(e.depth for e in self.latest) + 1,
                    "origin_server_ts": self.now()}  # fmt: skip
        return web.json_response({"room_version": self.version.identifier, "event": template})

    def join_answer(self, join: Event) -> dict[str, Any]:
        """What ``send_join`` answers: the state before ``join`` and its auth chain."""
        state = [e.pdu for e in self.state.values()]
        chain = self.auth_chain([e.event_id for e in self.state.values()])
        return {"origin": self.name, "state": state, "auth_chain": [e.pdu for e in chain], "event": join.pdu,
                "members_omitted": False}  # fmt: skip

    async def _send_join(self, request: web.Request) -> web.StreamResponse:
        join = Event(compute_event_id(await request.json(), self.version), await request.json())
        answer = self.join_answer(join)
        self.events[join.event_id] = join
        self.state_before[join.event_id] = {k: e.event_id for k, e in self.state.items()}
        self.state[("m.room.member", join.sender)] = join
        self.latest = [join]
        return web.json_response(answer)

    # ------------------------------------------------------------- requests

    async def call(self, session: aiohttp.ClientSession, gateway: Gateway, method: str, path: str,
                   body: Any = None, *, query: list[tuple[str, str]] | None = None, raw: bytes | None = None,
                   origin: str | None = None, destination: str | None = None, key: SigningKey | None = None,
                   signed_content: Any = ..., authorization: str | None = ...,
                   timeout: float = 60.0) -> tuple[int, Any]:  # fmt: skip
        """A request to the gateway signed as the spec says (or broken as asked); (status, JSON or bytes).

        ``signed_content``: sign this instead of ``body``; ``authorization``:
        send this header instead (None: none at all); ``raw``: send these
        bytes as the body (signed as ``body``).
        """
        uri = path + (("?" + "&".join(f"{q(k)}={q(v)}" for k, v in query)) if query else "")
        content = body if signed_content is ... else signed_content
        headers: dict[str, str] = {}
        if authorization is ...:
            headers["Authorization"] = authorization_header(method, uri, origin or self.name,
                                                            destination or gateway.server_name, key or self.key,
                                                            content)  # fmt: skip
        elif authorization is not None:
            headers["Authorization"] = authorization
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = yarl.URL(gateway.url + uri, encoded=True)
        async with session.request(method, url, data=data, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as response:  # fmt: skip
            payload = await response.read()
        try:
            return response.status, json.loads(payload)
        except ValueError:
            return response.status, payload

    async def send(self, session: aiohttp.ClientSession, gateway: Gateway, pdus: list[Any] = (),  # type: ignore[assignment]
                   edus: list[Any] = (), txn_id: str | None = None, **kwargs: Any) -> tuple[int, Any]:  # type: ignore[assignment]  # fmt: skip
        """``PUT /send/{txnId}`` with these PDUs (events or raw dicts) and EDUs."""
        txn_id = txn_id or f"t{time.monotonic_ns()}"
        body = {"origin": self.name, "origin_server_ts": self.now(),
                "pdus": [p.pdu if isinstance(p, Event) else p for p in pdus], "edus": list(edus)}  # fmt: skip
        return await self.call(session, gateway, "PUT", f"/_matrix/federation/v1/send/{q(txn_id)}", body, **kwargs)


async def visible_to(client: Client, room_id: str, event_id: str) -> bool:
    """Whether a local user can see an event: ``/event``, ``/messages`` or ``/sync``."""
    status, _ = await client.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/event/{q(event_id)}")
    if status == 200:
        return True
    status, page = await client.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=200")
    assert status == 200, page
    if any(e.get("event_id") == event_id for e in page["chunk"]):
        return True
    status, synced = await client.request("GET", "/_matrix/client/v3/sync?timeout=0")
    assert status == 200, synced
    timeline = synced["rooms"]["join"].get(room_id, {}).get("timeline", {}).get("events", [])
    return any(e.get("event_id") == event_id for e in timeline)


async def messages(client: Client, room_id: str) -> list[str]:
    """Bodies of the messages a local user sees in a room, oldest first."""
    status, page = await client.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=500")
    assert status == 200, page
    return [e["content"].get("body") for e in reversed(page["chunk"]) if e.get("type") == "m.room.message"]
