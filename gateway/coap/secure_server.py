"""The CoAP API over Noise sessions on UDP (docs/coap.md, "Noise sessions"): the asyncio pump.

One UDP socket on ``[coap] secure_bind``. Each datagram goes to the sans-I/O
:class:`~lowband.gateway.coap.secure_core.SecureListener` (handshakes, tags,
replays, routes); each CoAP message it lets through goes to the provisioned
client's own :class:`~lowband.gateway.coap.messaging.Endpoint` (deduplication,
piggybacked and separate responses, retransmission of confirmable messages);
each request to ``gateway.handle`` (``mapping.Gateway``), through the compact
session when the client asked for compact mode (``compact.serve``). Every CoAP
datagram the endpoint emits is sealed for the client and sent to the source of
its last authenticated frame.

What this module adds on top of the cores:

* blockwise transfer (RFC 7959) with the bounded stores of ``blockwise.py``
  (a transfer is named by its path and query, not by the sticky options a
  client sends once per connection): a body or answer larger
  than ``mtu`` (default 1024 bytes on UDP) travels in blocks of the largest
  power of two that fits;
* OBSERVE (RFC 7641) on ``/sync`` (code ``7`` or the full path): the first
  answer is the ordinary ``/sync`` answer; a task long-polls
  ``/sync?since=<next_batch>&timeout=<observe_timeout_s>`` and pushes each
  answer that carries news as a confirmable notification, and polls again
  only once the client acknowledged it (each notification is a delta since
  the last one, so none may be replaced by a later one). A notification the
  client resets, or never acknowledges (MAX_RETRANSMIT), ends the
  observation; the client registers again with its last ``next_batch``;
* a client is provisioned for one Matrix user (``lowband coap-client add
  NAME --user``): a request whose access token belongs to another user is
  answered 4.03 before it reaches the API;
* a new handshake is a new CoAP connection (MSC3079's "underlying
  connection"): the client's sticky access token, key-table version and
  compact session start afresh and its observations end; its message layer
  stays, so a request retransmitted across the handshake is recognised by
  its message ID and served once;
* nothing at all is sent while idle. A client keeps its NAT binding with
  empty DATA frames (11 bytes) at an interval of its choice; they are not
  answered;
* the client list (``coap_clients.json`` in the data dir) is re-read when it
  changes: a removed or re-keyed client loses its session at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lowband.codecs import coap
from lowband.codecs.coap import Block, CoapFormatError, Message
from lowband.gateway.coap import blockwise, compact
from lowband.gateway.coap import clients as provisioning
from lowband.gateway.coap.config import CoapConfig
from lowband.gateway.coap.exchange import CoapRequest, CoapResponse, Peer
from lowband.gateway.coap.mapping import MIN_POLL_INTERVAL_S, has_news, next_batch, with_query
from lowband.gateway.coap.messaging import (
    Acked,
    Endpoint,
    EndpointBusy,
    Event,
    Failed,
    Limits,
    LocalProtocolError,
    Request,
    Reset,
    TransmissionParams,
)
from lowband.gateway.coap.secure_core import Plaintext, Refused, SecureListener, SessionStarted, Transmit
from lowband.gateway.devices.registry import load_or_create_link_key
from lowband.gateway.link.refusals import RefusalLine, RefusalLog

log = logging.getLogger("lowband.coap.secure")

__all__ = ["DEFAULT_MTU", "SECURE_SERVER", "SecureServer", "start_secure"]

#: ``services.components[SECURE_SERVER]``: the running :class:`SecureServer` (counters, sessions)
SECURE_SERVER = "coap_secure_server"
#: the largest CoAP message in one DATA frame on UDP before blockwise transfer starts
DEFAULT_MTU = 1024
#: seconds between two looks at the client list for changes
CLIENTS_POLL_S = 2.0
#: requests of one client served at once (observations not counted); past it 5.03 with Max-Age 1
MAX_CLIENT_IN_FLIGHT = 8
#: observations one client may hold; a new one past it ends the oldest
MAX_CLIENT_OBSERVATIONS = 4
#: answers after which an observation tries again (Max-Age seconds later) instead of ending
_TRANSIENT = (coap.TOO_MANY_REQUESTS, coap.SERVICE_UNAVAILABLE, coap.GATEWAY_TIMEOUT)
_SYNC_PATHS = {("7",), ("_matrix", "client", "r0", "sync"), ("_matrix", "client", "v3", "sync")}
_MAX_SZX = 6
#: how long a half-finished upload, or a large answer whose later blocks were not fetched, is kept (RFC 7252's
#: MAX_TRANSMIT_WAIT: a client that has not asked for the next block by then has given up)
BLOCK_TTL_S = 93.0
#: CoAP's own framing inside a DATA frame (header, token, a few options) that a block must leave room for
_BLOCK_HEADROOM = 64


class Handles(Protocol):
    """What the server calls: ``mapping.Gateway`` (or a test double)."""

    async def handle(self, req: CoapRequest, peer: Peer) -> CoapResponse:
        """Serve one request; never raises except on cancellation."""
        ...


def _szx_for(mtu: int) -> int:
    """The block size exponent of the largest block (16 << szx) that fits ``mtu`` with CoAP's headers."""
    szx = _MAX_SZX
    while szx > 0 and (16 << szx) + _BLOCK_HEADROOM > mtu:
        szx -= 1
    return szx


def _etag(body: bytes) -> bytes:
    # Four bytes tell the blocks of two different answers apart.
    return hashlib.blake2s(body, digest_size=4).digest()


def _identity(msg: Message, *, with_blocks: bool = False) -> Message:
    """``msg`` reduced to what names one resource across its blocks: code, Uri-Path and Uri-Query (and, for
    the Block1 assembler, Block1, Size1 and the payload). The sticky options (256, 257, 65000) a client
    sends only once per connection must not make two blocks of one transfer look like two requests."""
    kept = {coap.OPT_URI_PATH, coap.OPT_URI_QUERY} | ({coap.OPT_BLOCK1, coap.OPT_SIZE1} if with_blocks else set())
    options = tuple(o for o in msg.options if o[0] in kept)
    return Message(msg.mtype, msg.code, options=options, payload=msg.payload if with_blocks else b"")


def to_request(msg: Message, method: str, body: bytes) -> CoapRequest:
    """The :class:`CoapRequest` of a parsed request (its body already reassembled).

    Raises :class:`CoapFormatError` for a path or query that is not UTF-8,
    an access token that is not UTF-8, or a uint option longer than 4 bytes.
    """
    auth_values = msg.opts(coap.OPT_AUTH)
    try:
        auth = auth_values[-1].decode("utf-8") if auth_values else None
    except UnicodeDecodeError:
        raise CoapFormatError("the access token option (256) is not UTF-8") from None
    return CoapRequest(
        method=method,
        path=msg.path,
        query=msg.query,
        body=body,
        content_format=msg.uint_opt(coap.OPT_CONTENT_FORMAT),
        accept=msg.uint_opt(coap.OPT_ACCEPT),
        auth=auth,
        cbor_version=msg.uint_opt(coap.OPT_CBOR_VERSION),
        profile=msg.uint_opt(coap.OPT_PROFILE),
        observe=msg.observe,
    )


def _plain(code: int, diagnostic: str = "") -> Message:
    """An answer made here (not by the handler), with an RFC 7252 diagnostic payload."""
    return Message(coap.ACK, code, payload=diagnostic.encode())


@dataclass(eq=False)
class _Observation:
    token: bytes
    cache_key: tuple[Any, ...]
    task: asyncio.Task[Any] | None
    last_message: Message | None = None  # the last notification pushed, whole (its later blocks are cut from it)
    pushed: int = 0


@dataclass(eq=False)
class _Conn:
    """One provisioned client's CoAP side: its message layer, sticky peer state, tasks, observations."""

    address: int
    user_id: str
    endpoint: Endpoint
    peer: Peer
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    in_flight: int = 0
    waiters: dict[int, asyncio.Future[bool]] = field(default_factory=dict)
    observations: dict[bytes, _Observation] = field(default_factory=dict)
    pushed: dict[tuple[Any, ...], _Observation] = field(default_factory=dict)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: SecureServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do, its session simply idles.
        log.debug("secure CoAP socket error: %s", exc)


class SecureServer:
    """The Noise-session CoAP listener (see the module docstring). Start with :func:`start_secure`."""

    def __init__(self, gateway: Handles, listener: SecureListener, *, data_dir: Path | None,
                 max_request_bytes: int, observe_timeout_s: float, max_observations: int, max_peers: int = 254,
                 mtu: int = DEFAULT_MTU, params: TransmissionParams | None = None,
                 clock: Callable[[], float] = time.monotonic, block_lifetime: float = BLOCK_TTL_S,
                 rng: random.Random | None = None, limits: Limits | None = None,
                 on_request: Callable[[int, Message], None] | None = None) -> None:  # fmt: skip
        """``data_dir``: where the client list lives (None: the caller sets clients on ``listener`` itself);
        ``mtu``: the largest CoAP message sent or asked for in one frame (blocks below it);
        ``block_lifetime``: seconds a half-finished upload or an answer's later blocks are kept (longer on a
        slow line); ``rng`` seeds each client's message layer and ``limits`` bounds its tables (tests and
        simulations; None: unseeded, the defaults); ``on_request(address, message)`` is told of each request
        that goes to the API (after deduplication and blockwise reassembly; not observation polls).
        ``clock`` is the time every core is given; a simulation passes its own and drives the timers
        itself (:meth:`attach` with ``timers=False``, :meth:`next_deadline`, :meth:`run_timers`,
        :meth:`settle`)."""
        self.gateway = gateway
        self.listener = listener
        self.data_dir = data_dir
        self.observe_timeout_s = observe_timeout_s
        self.max_observations = max_observations
        self.max_peers = max_peers
        self.szx = _szx_for(mtu)
        self.params = params or TransmissionParams()
        self.clock = clock
        self.block1 = blockwise.Block1Assembler(max_body=max_request_bytes, lifetime=block_lifetime)
        self.block2 = blockwise.Block2Cache(lifetime=block_lifetime, max_bytes=8 * 1024 * 1024)
        self.rng = rng
        self.limits = limits
        self.on_request = on_request
        self.max_request_bytes = max_request_bytes
        self.transport: asyncio.DatagramTransport | None = None
        self.host, self.port = "", 0
        self._conns: dict[int, _Conn] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[Any]] = []
        self._clients_version: tuple[int, int] | None = None
        #: refused datagrams by kind, and when to say so in the log (one line per kind per minute at most)
        self.refusals = RefusalLog()
        self.name = "secure CoAP"
        #: what the pump did: requests served, notifications pushed, frames without a route …
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "notifications", "observations_ended", "no_route", "busy", "user_mismatch"), 0
        )

    # ------------------------------------------------------------------ life

    async def start(self, host: str, port: int) -> None:
        """Bind the UDP socket, then :meth:`attach` to it; OSError if the address cannot be bound."""
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, port))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen for Noise CoAP on UDP {host}:{port}: {exc.strerror}") from None
        sockname = transport.get_extra_info("sockname")
        self.host, self.port = str(sockname[0]), int(sockname[1])
        self.name = f"secure CoAP udp {self.host}:{self.port}"
        await self.attach(transport, f"udp {self.host}:{self.port}")
        log.info("CoAP API (Noise sessions) listening on UDP %s:%d", self.host, self.port)

    async def attach(self, transport: asyncio.DatagramTransport, name: str, *, timers: bool = True) -> None:
        """Serve through ``transport`` (any datagram sender: a UDP socket, a serial line's framer).

        Loads the client list and starts the timer and client-list loops;
        the owner of ``transport`` feeds :meth:`datagram_received` and
        :meth:`stop` closes the transport. ``name`` names the loops' tasks.
        ``timers=False``: no timer loop; the caller runs :meth:`run_timers`
        by :meth:`next_deadline` on its own clock (a simulation).
        """
        if self.data_dir is not None:
            self._reload_clients()
        self.transport = transport
        if timers:
            self._loops.append(asyncio.create_task(self._timer_loop(), name=f"coap-secure-timers {name}"))
        if self.data_dir is not None:
            self._loops.append(asyncio.create_task(self._clients_loop(), name=f"coap-secure-clients {name}"))

    async def stop(self) -> None:
        """Stop the loops, end every request and observation (nothing more is sent), close the socket."""
        tasks = [*self._loops, *(t for conn in self._conns.values() for t in conn.tasks)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5.0)
        self._loops.clear()
        self._log_refusals(self.refusals.flush(self.clock()))
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # ------------------------------------------------------------------ clients

    def _reload_clients(self) -> None:
        assert self.data_dir is not None
        version = provisioning.version(self.data_dir)
        if version == self._clients_version:
            return
        try:
            entries = provisioning.entries(self.data_dir)
        except provisioning.ClientsError as exc:
            log.error("CoAP client list not reloaded, the old one stays: %s", exc)
            self._clients_version = version
            return
        self._clients_version = version
        self.listener.set_clients(entries)
        known = {entry.address: entry for entry in entries}
        for address, conn in list(self._conns.items()):
            entry = known.get(address)
            if entry is None or entry.user_id != conn.user_id or not self.listener.has_session(address):
                self._drop(conn)
        log.info("CoAP clients: %d provisioned", len(entries))

    async def _clients_loop(self) -> None:
        while True:
            await asyncio.sleep(CLIENTS_POLL_S)
            self._reload_clients()

    def _drop(self, conn: _Conn) -> None:
        """Forget a client's CoAP state (removed, re-keyed, or moved to another user)."""
        self._conns.pop(conn.address, None)
        for task in conn.tasks:
            task.cancel()
        for waiter in conn.waiters.values():
            if not waiter.done():
                waiter.set_result(False)

    # ------------------------------------------------------------------ datagrams in

    def datagram_received(self, data: bytes, source: tuple[Any, ...]) -> None:
        """One datagram from ``source``: to the secure core, then to the client's message layer."""
        now = self.clock()
        for action in self.listener.receive(data, now, source):
            if isinstance(action, Transmit):
                if self.transport is not None:
                    self.transport.sendto(action.frame, source)
            elif isinstance(action, SessionStarted):
                self._new_connection(action.address)
            elif isinstance(action, Plaintext):
                self._coap_in(action.address, action.data, now)
            elif isinstance(action, Refused):
                self._refused(action, now)

    def _refused(self, refused: Refused, now: float) -> None:
        # A flood of forged datagrams makes a handful of lines (link/refusals.py), not one per datagram.
        line = self.refusals.note(refused.kind, refused.address, now)
        if line is not None:
            self._log_refusals([line])
            self._wake.set()  # the timer loop owes a summary line later

    def _log_refusals(self, lines: list[RefusalLine]) -> None:
        for line in lines:
            log.info("%s: %s", self.name, line.text().replace("frame(s)", "datagram(s)"))

    def _new_connection(self, address: int) -> None:
        """A new session is a new CoAP connection (MSC3079): sticky token, key-table version and compact
        session start afresh, and observations end (the client registers again). The message layer stays,
        so a request retransmitted across the handshake is still recognised and not served twice."""
        conn = self._conns.get(address)
        if conn is None:
            return
        conn.peer = Peer(address=conn.peer.address, host=conn.peer.host, port=conn.peer.port)
        for token in list(conn.observations):
            self._end_observation(conn, token)

    def _conn(self, address: int) -> _Conn | None:
        conn = self._conns.get(address)
        if conn is None:
            entry = self.listener.client(address)
            if entry is None:
                return None
            rng = random.Random(self.rng.random()) if self.rng is not None else None
            endpoint = Endpoint(self.params, max_size=coap.DEFAULT_MAX_SIZE, rng=rng, limits=self.limits)
            conn = _Conn(address, entry.user_id, endpoint, Peer(address=f"noise:{entry.name}"))
            self._conns[address] = conn
            while len(self._conns) > self.max_peers:  # the least recently heard client's CoAP state goes
                self._drop(next(iter(self._conns.values())))
        else:
            self._conns[address] = self._conns.pop(address)  # most recently heard last
        route = self.listener.route(address)
        if isinstance(route, tuple) and len(route) >= 2:
            conn.peer.host, conn.peer.port = str(route[0]), int(route[1])
        return conn

    def _coap_in(self, address: int, data: bytes, now: float) -> None:
        conn = self._conn(address)
        if conn is None:
            return
        for event in conn.endpoint.receive(data, now):
            self._event(conn, event)
        self._flush(conn, now)

    def _event(self, conn: _Conn, event: Event) -> None:
        if isinstance(event, Request):
            self._spawn(conn, self._serve(conn, event.msg), f"coap-secure-{conn.address}")
        elif isinstance(event, Acked):
            self._settle(conn, event.mid, True)
        elif isinstance(event, (Failed, Reset)):
            self._settle(conn, event.mid, False)

    def _settle(self, conn: _Conn, mid: int, delivered: bool) -> None:
        waiter = conn.waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(delivered)

    def _spawn(self, conn: _Conn, work: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)
        return task

    # ------------------------------------------------------------------ datagrams out

    def _flush(self, conn: _Conn, now: float) -> None:
        """Seal and send what the client's endpoint has to send; handle what its timers decided."""
        for datagram in conn.endpoint.poll(now):
            self._send(conn.address, datagram)
        for event in conn.endpoint.take_events():
            self._event(conn, event)
        self._wake.set()

    def _send(self, address: int, datagram: bytes) -> None:
        route = self.listener.route(address)
        if not isinstance(route, tuple) or self.transport is None or not self.listener.has_session(address):
            self.counters["no_route"] += 1
            return
        self.transport.sendto(self.listener.seal(address, datagram), route)

    def next_deadline(self) -> float | None:
        """When :meth:`run_timers` next has work (a retransmission, an empty ACK, a give-up, a refusal
        summary), on ``clock``'s scale; None when nothing is pending."""
        deadlines = [d for conn in self._conns.values() if (d := conn.endpoint.next_deadline()) is not None]
        summary = self.refusals.next_deadline()
        if summary is not None:
            deadlines.append(summary)
        return min(deadlines, default=None)

    def run_timers(self, now: float) -> None:
        """Do what is due by ``now``: send retransmissions and empty ACKs, end what gave up, log refusal
        summaries. Never waits; a request a timer event starts runs as a task (:meth:`settle`)."""
        self._log_refusals(self.refusals.due(now))
        for conn in list(self._conns.values()):
            due = conn.endpoint.next_deadline()
            if due is not None and due <= now:
                self._flush(conn, now)

    async def settle(self) -> None:
        """Wait until every request in flight is answered (observation loops excepted: they run on).

        For a simulation that stops its clock while the API serves: after
        feeding datagrams, await this before moving time on.
        """
        while True:
            loops = {o.task for conn in self._conns.values() for o in conn.observations.values()}
            pending = [t for conn in self._conns.values() for t in conn.tasks if t not in loops and not t.done()]
            if not pending:
                return
            await asyncio.wait(pending)

    async def _timer_loop(self) -> None:
        """Run each endpoint's timers (retransmissions, empty ACKs, give-ups) when they are due."""
        while True:
            self._wake.clear()
            deadline = self.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            try:
                self.run_timers(self.clock())
            except Exception:  # a bug of ours must not stop every client's retransmissions
                log.exception("%s: timer round failed", self.name)
                await asyncio.sleep(1.0)

    def _respond(self, conn: _Conn, request: Message, answer: Message) -> None:
        now = self.clock()
        try:
            conn.endpoint.respond(request, answer, now)
        except LocalProtocolError as exc:  # EndpointBusy included: the client sent far too much at once
            log.warning("secure CoAP: answer to client %d not sent: %s", conn.address, exc)
        self._flush(conn, now)

    # ------------------------------------------------------------------ requests

    async def _serve(self, conn: _Conn, msg: Message) -> None:
        if conn.in_flight >= MAX_CLIENT_IN_FLIGHT:
            self.counters["busy"] += 1
            self._respond(conn, msg, _plain(coap.SERVICE_UNAVAILABLE, "busy").with_option(coap.OPT_MAX_AGE, 1))
            return
        conn.in_flight += 1
        try:
            answer = await self._answer(conn, msg)
        except CoapFormatError as exc:
            answer = _plain(coap.BAD_OPTION, str(exc)[:100])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("secure CoAP: a request of client %d failed", conn.address)
            answer = _plain(coap.INTERNAL_SERVER_ERROR)
        finally:
            conn.in_flight -= 1
        if answer is not None:
            self._respond(conn, msg, answer)

    async def _answer(self, conn: _Conn, msg: Message) -> Message | None:
        """The answer to one request, or None when an observation answered it itself."""
        self.counters["requests"] += 1
        method = coap.METHODS.get(msg.code)
        if method is None:
            return _plain(coap.METHOD_NOT_ALLOWED)
        cache_key = (method, msg.path, msg.query)
        block2 = msg.block2
        if block2 is not None and block2.num > 0:
            return self._later_block(conn, msg, cache_key, block2)
        body = self._body(conn, msg)
        if isinstance(body, Message):
            return body
        creq = to_request(msg, method, body)
        if self.on_request is not None:
            self.on_request(conn.address, msg)
        if creq.observe == 1:  # RFC 7641 deregistration: end it, then answer as an ordinary request
            self._end_observation(conn, msg.token)
        if creq.observe == 0 and method == "GET" and creq.path in _SYNC_PATHS:
            return await self._observe(conn, msg, creq, cache_key)
        response, echo, _ = await self._serve_request(creq, conn)
        return self._message(conn, response, echo, msg, cache_key)

    async def _serve_request(self, creq: CoapRequest, conn: _Conn) -> tuple[CoapResponse, int | None, CoapResponse]:
        """(the answer as the client gets it, the OPT_PROFILE echo, the plain MSC3079 answer behind it)."""
        plain: list[CoapResponse] = []

        async def handler(req: CoapRequest, peer: Peer) -> CoapResponse:
            refusal = self._user_refusal(req, conn)
            answer = refusal if refusal is not None else await self.gateway.handle(req, peer)
            plain.append(answer)
            return answer

        response, echo = await compact.serve(creq, conn.peer, handler)
        return response, echo, plain[-1] if plain else response

    def _user_refusal(self, req: CoapRequest, conn: _Conn) -> CoapResponse | None:
        """4.03 when the access token in use belongs to another user than the client's; else None."""
        token = conn.peer.token if req.auth is None else req.auth.strip()
        if token and token[:7].lower() == "bearer ":
            token = token[7:].strip()
        if not token or not conn.user_id:
            return None
        services = getattr(self.gateway, "services", None)
        store = getattr(services, "store", None)
        found = store.lookup_token(token) if store is not None else None
        if found is None or found[0] == conn.user_id:
            return None  # an unknown token is the API's to refuse (401, as over HTTP)
        self.counters["user_mismatch"] += 1
        return CoapResponse(coap.FORBIDDEN, f"this CoAP client is provisioned for {conn.user_id}".encode(),
                            coap.FORMAT_TEXT)  # fmt: skip

    # ------------------------------------------------------------------ blockwise

    def _body(self, conn: _Conn, msg: Message) -> bytes | Message:
        """The whole request body, or the answer to give instead (2.31 Continue, 4.13, 4.08, 4.02, 4.00)."""
        outcome = self.block1.feed(conn.address, _identity(msg, with_blocks=True), self.clock())
        if isinstance(outcome, blockwise.Block1Done):
            return outcome.body
        return outcome.response()

    def _later_block(self, conn: _Conn, msg: Message, cache_key: tuple[Any, ...], block2: Block) -> Message:
        """Block 1, 2 … of an answer kept from block 0: the last notification pushed, else the cache."""
        observation = conn.pushed.get(cache_key)
        if observation is not None and observation.last_message is not None:
            found = blockwise.response_block(observation.last_message, block2.num, block2.szx)
        else:
            found = self.block2.block(conn.address, _identity(msg), block2.num, block2.szx, self.clock())
        if found is None:
            return _plain(coap.REQUEST_ENTITY_INCOMPLETE, "no such answer (expired, or past its end): ask for block 0")
        return found

    def _message(self, conn: _Conn, response: CoapResponse, echo: int | None, request: Message,
                 cache_key: tuple[Any, ...], observation: _Observation | None = None) -> Message:  # fmt: skip
        """The CoAP answer for ``response``: whole, or its first block (the whole kept for the rest)."""
        szx = self.szx
        asked = request.block2
        if asked is not None:
            szx = min(szx, asked.szx)
        message = _with_meta(Message(coap.ACK, response.code, payload=response.body), response, echo)
        if len(response.body) > 16 << szx:
            message = message.with_option(coap.OPT_ETAG, _etag(response.body))
            if observation is None:
                message = self.block2.first(conn.address, _identity(request), message, szx, self.clock())
            else:  # a notification: its later blocks come from the observation (MSC3079: "the data being pushed")
                observation.last_message = message
                conn.pushed[cache_key] = observation
                message = blockwise.response_block(message, 0, szx) or message
        block1 = request.block1
        if block1 is not None:  # RFC 7959 2.3: the final answer to a blockwise upload names its last block
            message = message.with_option(coap.OPT_BLOCK1, Block(block1.num, False, block1.szx).encode())
        return message

    # ------------------------------------------------------------------ observe

    async def _observe(
        self, conn: _Conn, msg: Message, creq: CoapRequest, cache_key: tuple[Any, ...]
    ) -> Message | None:
        """Register an observation of /sync: answer it with the ordinary /sync answer, start its loop."""
        first, echo, plain = await self._serve_request(creq, conn)
        since = next_batch(plain)
        if since is None:  # an error (or not a sync answer): no registration, the answer is final
            return self._message(conn, first, echo, msg, cache_key)
        observation = _Observation(msg.token, cache_key, None)
        self._register(conn, observation)
        answer = self._message(conn, first, echo, msg, cache_key, observation).with_option(coap.OPT_OBSERVE, 0)
        self._respond(conn, msg, answer)
        # The loop keeps the sticky token, key-table version and compact session of the client's peer.
        poll = dataclasses.replace(creq, query=_without_since(creq.query), auth=None, cbor_version=None, observe=None)
        observation.task = self._spawn(conn, self._observe_loop(conn, msg, poll, since, observation),
                                       f"coap-secure-observe-{conn.address}")  # fmt: skip
        return None

    async def _observe_loop(self, conn: _Conn, msg: Message, poll: CoapRequest, since: str,
                            observation: _Observation) -> None:  # fmt: skip
        """Push /sync news until the client resets or misses a notification, or an answer ends it."""
        timeout_ms = int(self.observe_timeout_s * 1000)
        try:
            while True:
                started = self.clock()
                response, echo, plain = await self._serve_request(
                    with_query(poll, since=since, timeout=timeout_ms), conn
                )
                if response.code in _TRANSIENT:
                    await asyncio.sleep(max(1, response.max_age or 1))
                    continue
                token = next_batch(plain)
                if token is None:  # the token was revoked, the user left …: a final notification ends it
                    await self._push(conn, msg, self._message(conn, response, echo, msg, observation.cache_key), None)
                    return
                if not has_news(plain):
                    if isinstance(conn.peer.compact, compact.CompactSession):
                        # the compact answer of a quiet poll is not sent: its aliases and sync token must not
                        # count as known to the client (compact.py, CompactSession.not_sent)
                        conn.peer.compact.not_sent()
                    since = token
                    if self.clock() - started < MIN_POLL_INTERVAL_S:
                        await asyncio.sleep(MIN_POLL_INTERVAL_S)
                    continue
                observation.pushed += 1
                note = self._message(conn, response, echo, msg, observation.cache_key, observation)
                if not await self._push(conn, msg, note, observation.pushed & 0xFFFFFF):
                    self.counters["observations_ended"] += 1
                    return  # reset or never acknowledged: the client registers again with its next_batch
                since = token
        except Exception:  # a bug of ours ends this observation (the client registers again), not the server
            log.exception("%s: the observation of client %d failed", self.name, conn.address)
        finally:
            self._unregister(conn, observation)

    async def _push(self, conn: _Conn, registration: Message, note: Message, observe: int | None) -> bool:
        """Send a notification as CON and wait for the client's ACK; False if it resets or never answers."""
        note = dataclasses.replace(note, mtype=coap.CON, token=registration.token)
        if observe is not None:
            note = note.with_option(coap.OPT_OBSERVE, observe)
        now = self.clock()
        try:
            sent = conn.endpoint.send(note, now)
        except EndpointBusy:
            return False
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        conn.waiters[sent.mid] = waiter
        self.counters["notifications"] += 1
        self._flush(conn, now)
        try:
            return await asyncio.wait_for(waiter, self.params.max_transmit_wait + BLOCK_TTL_S)
        except TimeoutError:
            return False
        finally:
            conn.waiters.pop(sent.mid, None)

    def _register(self, conn: _Conn, observation: _Observation) -> None:
        self._end_observation(conn, observation.token)  # the same CoAP token again: the new one wins
        conn.observations[observation.token] = observation
        while len(conn.observations) > MAX_CLIENT_OBSERVATIONS:
            self._end_observation(conn, next(iter(conn.observations)))
        total = sum(len(c.observations) for c in self._conns.values())
        if total > self.max_observations:
            oldest = next((c for c in self._conns.values() if c.observations and c is not conn), conn)
            self._end_observation(oldest, next(iter(oldest.observations)))

    def _end_observation(self, conn: _Conn, token: bytes) -> None:
        observation = conn.observations.pop(token, None)
        if observation is not None and observation.task is not None and observation.task is not asyncio.current_task():
            self.counters["observations_ended"] += 1
            observation.task.cancel()

    def _unregister(self, conn: _Conn, observation: _Observation) -> None:
        if conn.observations.get(observation.token) is observation:
            del conn.observations[observation.token]
        if conn.pushed.get(observation.cache_key) is observation:
            del conn.pushed[observation.cache_key]

    # ------------------------------------------------------------------ introspection

    def observations(self) -> int:
        """Observations running now, over all clients."""
        return sum(len(conn.observations) for conn in self._conns.values())

    def endpoint(self, address: int) -> Endpoint | None:
        """The message layer towards the client at ``address`` (its counters), or None before it spoke."""
        conn = self._conns.get(address)
        return conn.endpoint if conn is not None else None


def _without_since(query: tuple[str, ...]) -> tuple[str, ...]:
    """The query without its ``since``: ``since=…`` and compact mode's bare ``~n`` (compact.py, "since alias")."""
    return tuple(q for q in query if not q.startswith("since=") and not (q.startswith("~") and not q.startswith("~~")))


def _with_meta(message: Message, response: CoapResponse, echo: int | None) -> Message:
    if response.content_format is not None:
        message = message.with_option(coap.OPT_CONTENT_FORMAT, response.content_format)
    if response.max_age is not None:
        message = message.with_option(coap.OPT_MAX_AGE, response.max_age)
    if echo is not None:
        message = message.with_option(coap.OPT_PROFILE, echo)
    return message


async def start_secure(services: Any, gateway: Handles, config: CoapConfig, *, mtu: int = DEFAULT_MTU,
                       params: TransmissionParams | None = None) -> Callable[[], Awaitable[None]]:  # fmt: skip
    """Listen on ``config.secure_bind`` for Noise-session CoAP clients; returns ``stop()``.

    The gateway's link key (``DATA/link.key``, created if missing) is the
    responder key; the clients are those of ``DATA/coap_clients.json``
    (``lowband coap-client add``). The running server is published as
    ``services.components[SECURE_SERVER]``. Raises ValueError when
    ``config.secure_bind`` is None, OSError when it cannot be bound.
    """
    if config.secure_bind is None:
        raise ValueError("no Noise CoAP listener configured (coap.secure_bind)")
    data_dir = Path(services.config.data_dir)
    listener = SecureListener(load_or_create_link_key(data_dir / "link.key"))
    server = SecureServer(gateway, listener, data_dir=data_dir, max_request_bytes=services.config.max_request_bytes,
                          observe_timeout_s=config.observe_timeout_s, max_observations=config.max_observations,
                          max_peers=config.max_peers,
                          mtu=mtu, params=params)  # fmt: skip
    await server.start(*config.secure_bind)
    services.components[SECURE_SERVER] = server

    async def stop() -> None:
        services.components.pop(SECURE_SERVER, None)
        await server.stop()

    return stop
