"""A CoAP client and the gateway's side of it over a slow link, on simulated time (tests and benches).

The same cores as the real thing, driven by a ``now`` the caller passes:

* :class:`LinkCoapClient` — what a laptop with a serial radio or a LoRa
  modem runs: a :class:`~lowband.gateway.coap.secure_core.SecureClient`
  (Noise KK, one CoAP message per DATA frame), a
  :class:`~lowband.gateway.coap.messaging.Endpoint` (CON retransmission,
  deduplication) and, in compact mode, a
  :class:`~lowband.gateway.coap.compact_client.CompactClient`. On top of CoAP's
  own retransmissions it retries a request that the message layer gave up
  on (``Failed``) as a new CoAP message with the same content: for a send,
  the same transaction ID, so the gateway answers a retry whose first try
  did arrive with the first event instead of making a second one. Bodies
  and answers larger than one block travel with Block1 and Block2
  (``gateway/coap/blockwise.py``); OBSERVE of ``/sync`` collects the
  gateway's confirmable pushes; in compact mode, aliases that an answer uses
  without defining them (their definitions were in an answer that was lost)
  are looked up before the answer is decoded.
* :class:`LinkGatewaySide` — the gateway's end of the line: the real
  :class:`~lowband.gateway.coap.secure_server.SecureServer` (what
  ``link_transport`` runs per line: message layer, blockwise, compact
  sessions, provisioned users) in front of a gateway (the real
  ``mapping.Gateway`` of an in-process gateway in the tests), reading the
  simulated clock, its timers run by the simulation. A request is served at
  the ``now`` it arrived: simulated time stands still while the API serves.
  It records every request that went to the API
  (:attr:`LinkGatewaySide.served`), so a test can tell that a CoAP
  retransmission was answered from the deduplication table and never
  reached the API twice.
* :class:`SimSerialLine` — frames between the two over a
  :class:`~lowband.sim.link_model.LinkModel` as on a serial line
  (``COBS(frame) || 0x00``), with outages (both directions dead).
* :class:`SimRun` — the loop that moves simulated time from one deadline to
  the next and carries bytes between the three.

The real gateway runtime for serial lines is ``gateway/coap/link_transport.py``;
this module exists so the protocol can be tested at 100 bps with 4 s latency
and 40 % loss without waiting hours of wall time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lowband.codecs import coap as C
from lowband.codecs import msc3079
from lowband.codecs.link_frame import SerialFramer, serial_encode
from lowband.gateway.coap import blockwise, compact_client
from lowband.gateway.coap.link_transport import block_lifetime, line_params, serial_airtime
from lowband.gateway.coap.messaging import (
    Endpoint,
    Event,
    Failed,
    Limits,
    Reset,
    Response,
    TransmissionParams,
)
from lowband.gateway.coap.secure_core import SecureClient, SecureListener
from lowband.gateway.coap.secure_server import Handles, SecureServer

from .link_model import A, B, LinkModel

__all__ = [
    "LinkCoapClient",
    "LinkGatewaySide",
    "Operation",
    "SimRun",
    "SimSerialLine",
    "block_szx_for",
    "link_params",
]

#: CoAP header, token and options a block must leave room for inside one frame
BLOCK_HEADROOM = 64


def block_szx_for(max_message: int) -> int:
    """The largest block size exponent whose block plus :data:`BLOCK_HEADROOM` fits ``max_message`` (0 at least)."""
    szx = 6
    while szx > 0 and (16 << szx) + BLOCK_HEADROOM > max_message:
        szx -= 1
    return szx


def link_params(bps: float, *, latency: float = 0.0, frame_limit: int = 255) -> TransmissionParams:
    """The transmission parameters the gateway uses on a serial line of ``bps`` (link_transport.line_params)."""
    return line_params(serial_airtime(bps), latency=latency, answer_bytes=frame_limit)


# ----------------------------------------------------------------------------------------- client


@dataclass(eq=False)
class Operation:
    """One request as the caller sees it: what to send, and (once ``done``) the answer.

    ``path`` is in MSC3079 path-code form with full IDs (``("9", room_id,
    "m.room.message", txn)``); ``body`` a JSON value or None. ``attempts``:
    how many times the request may go as a new CoAP message after the
    message layer gave up on the previous one. ``failed``: every attempt
    failed (no answer); otherwise ``code`` is the CoAP code and ``result``
    the decoded answer (JSON, or None for an empty body).
    """

    method: str
    path: tuple[str, ...]
    body: Any = None
    query: tuple[str, ...] = ()
    attempts: int = 3
    done: bool = False
    failed: bool = False
    code: int | None = None
    result: Any = None
    tries: int = 0
    started: float | None = None
    finished: float | None = None
    #: frame bytes this operation put on the line and got back (COBS and delimiter not included)
    frames_out: int = 0
    frames_in: int = 0
    _sent_path: tuple[str, ...] = ()
    _sender: blockwise.Block1Sender | None = None
    _fetcher: blockwise.Block2Fetcher | None = None
    _last: C.Message | None = None  # the request message last sent (sent again, new message ID, on failure)
    _answer: C.Message | None = None  # the whole answer, kept while its unknown aliases are looked up
    _lookups: list[tuple[str, int]] = field(default_factory=list)
    _lookup_tries: int = 0
    #: an OBSERVE registration (``observe_sync``): the pushes that came after the first answer, decoded
    observe: bool = False
    notifications: list[Any] = field(default_factory=list)
    observing: bool = False
    _registration: int | None = None  # message ID of the registration the gateway answered
    _sent_query: tuple[str, ...] = ()
    _prepared: C.Message | None = None  # the first request of an internal operation (a push's later blocks)
    _notify_into: Operation | None = None  # the observation whose push this operation completes


class LinkCoapClient:
    """A CoAP client over one link session (see the module docstring); sans-I/O, one request at a time.

    ``submit`` queues an :class:`Operation`; ``receive(frame, now)`` takes
    each link frame from the gateway; ``poll(now)`` returns the frames to
    put on the line (call it after every ``receive`` and at
    ``next_deadline()``). Never raises for anything the gateway sends.
    """

    def __init__(self, secure: SecureClient, params: TransmissionParams, *, compact_mode: bool = False,
                 rng: random.Random | None = None, max_message: int = 244,
                 handshake_timeout: float | None = None) -> None:  # fmt: skip
        """``max_message``: the largest CoAP message one frame holds (answers come in blocks below it)."""
        self.secure = secure
        self.params = params
        self.rng = rng or random.Random(0)
        self.endpoint = Endpoint(params, rng=self.rng, token_length=0 if compact_mode else 1)
        self.compact = compact_client.CompactClient() if compact_mode else None
        self.szx = block_szx_for(max_message)
        self.max_message = max_message
        self.token: str | None = None
        self._token_sent: str | None = None
        self._version_sent = False
        self._queue: deque[Operation] = deque()
        self._observing: dict[int, Operation] = {}  # registration message ID -> its observation
        self._current: Operation | None = None
        self._current_mid: int | None = None
        self._outbox: list[bytes] = []
        self._held: list[bytes] = []
        self._hs_timeout = handshake_timeout or params.ack_timeout
        self._hs_wait = self._hs_timeout
        self._hs_due: float | None = None
        self._epoch: int | None = None
        self._now = 0.0
        #: what went on the line and came back: frames and their bytes (before COBS), handshakes begun
        self.counters: dict[str, int] = dict.fromkeys(
            ("frames_out", "bytes_out", "frames_in", "bytes_in", "handshakes", "retries", "failed", "lookups",
             "restarts"), 0,
        )  # fmt: skip

    # ------------------------------------------------------------------ operations

    def submit(self, op: Operation) -> Operation:
        """Queue ``op``; it starts at the next ``poll`` once the operations before it are done."""
        self._queue.append(op)
        return op

    def request(self, method: str, path: tuple[str, ...], body: Any = None, *, query: tuple[str, ...] = (),
                attempts: int = 3) -> Operation:  # fmt: skip
        """Queue a request (path-code form, full IDs); returns its :class:`Operation`."""
        return self.submit(Operation(method.upper(), tuple(path), body, tuple(query), attempts))

    def login(self, user: str, password: str) -> Operation:
        """Queue a password login (``POST 1``); the token is kept and sent once, sticky, from then on."""
        body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}
        return self.request("POST", ("1",), body)

    def send_text(self, room_id: str, text: str, txn: str, *, attempts: int = 4) -> Operation:
        """Queue ``PUT 9/{room}/m.room.message/{txn}``; every attempt carries the same ``txn``."""
        return self.request("PUT", ("9", room_id, "m.room.message", txn), {"msgtype": "m.text", "body": text},
                            attempts=attempts)  # fmt: skip

    def sync(self, since: str | None = None, *, attempts: int = 1_000_000) -> Operation:
        """Queue ``GET 7`` (timeout 0: the answer comes at once); retried until it gets an answer."""
        query = (f"since={since}",) if since else ()
        return self.request("GET", ("7",), query=(*query, "timeout=0"), attempts=attempts)

    def observe_sync(self, since: str | None = None, *, attempts: int = 1_000_000) -> Operation:
        """Queue ``GET 7`` with Observe (RFC 7641): done at the first answer, then each push the gateway sends
        (confirmable, acknowledged here) is appended to ``notifications`` while ``observing``. A push larger
        than one block is completed with Block2 requests before the operations queued after it."""
        query = (f"since={since}",) if since else ()
        op = Operation("GET", ("7",), None, query, attempts)
        op.observe = True
        return self.submit(op)

    @property
    def idle(self) -> bool:
        """No operation running or queued."""
        return self._current is None and not self._queue

    # ------------------------------------------------------------------ line

    def receive(self, frame: bytes, now: float) -> None:
        """One link frame from the gateway."""
        self._now = now
        self.counters["frames_in"] += 1
        self.counters["bytes_in"] += len(frame)
        if self._current is not None:
            self._current.frames_in += len(frame)
        plain = self.secure.receive(frame)
        if self.secure.needs_handshake:
            self._handshake(now)
            return
        if self.secure.established and not self.secure.handshaking and self.secure.epoch != self._epoch:
            self._new_session(now)
        if plain is not None:
            self._events(self.endpoint.receive(plain, now), now)
        self._pump(now)

    def poll(self, now: float) -> list[bytes]:
        """Run what is due at ``now``; the frames to transmit, in order."""
        self._now = now
        if self._hs_due is not None and now >= self._hs_due and self.secure.handshaking:
            self._emit(self.secure.connect(now))  # the same HS1 again: its HS2 (or itself) was lost
            self._hs_wait = min(self._hs_wait * 2, 8 * self._hs_timeout)
            self._hs_due = now + self._hs_wait
        self._start_next(now)
        self._pump(now)
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> float | None:
        """When ``poll`` next has work (None: only a frame from the gateway can change anything)."""
        times = [t for t in (self.endpoint.next_deadline(), self._hs_due if self.secure.handshaking else None)
                 if t is not None]  # fmt: skip
        if self._current is None and self._queue:
            times.append(self._now)
        return min(times, default=None)

    # ------------------------------------------------------------------ internals

    def _emit(self, frame: bytes) -> None:
        self._outbox.append(frame)
        self.counters["frames_out"] += 1
        self.counters["bytes_out"] += len(frame)
        if self._current is not None:
            self._current.frames_out += len(frame)

    def _handshake(self, now: float) -> None:
        if not self.secure.handshaking:
            self.counters["handshakes"] += 1
        self._hs_wait = self._hs_timeout
        self._hs_due = now + self._hs_wait * (1 + self.rng.random() / 2)
        self._emit(self.secure.connect(now))

    def _new_session(self, now: float) -> None:
        # A new session is a new connection for the gateway: sticky options and compact mode start over.
        self._epoch = self.secure.epoch
        self._hs_due = None
        self._token_sent, self._version_sent = None, False
        if self.compact is not None:
            self.compact.reset()
        held, self._held = self._held, []
        for datagram in held:
            self._emit(self.secure.seal(datagram))

    def _pump(self, now: float) -> None:
        for datagram in self.endpoint.poll(now):
            if self.secure.established and not self.secure.handshaking:
                self._emit(self.secure.seal(datagram))
            else:  # it waits for the session; the message layer's retransmissions repeat the HS1 meanwhile
                if datagram not in self._held:
                    self._held.append(datagram)
                if not self.secure.handshaking:
                    self._handshake(now)
        self._events(self.endpoint.take_events(), now)

    def _start_next(self, now: float) -> None:
        if self._current is None and self._queue:
            op = self._queue.popleft()
            op.started = now
            self._current = op
            if op._prepared is not None:
                op.tries += 1
                self._send(op, op._prepared, now)
            else:
                self._try(op, now)

    def _options(self, payload: bytes) -> list[C.Option]:
        active = self.compact is not None and self.compact.active
        options: list[C.Option] = []
        if payload and not active:
            options.append((C.OPT_CONTENT_FORMAT, C.uint_encode(C.FORMAT_CBOR)))
        if self.token is not None and self._token_sent != self.token:
            options.append((C.OPT_AUTH, self.token.encode()))
        if not self._version_sent and not active:
            options.append((C.OPT_CBOR_VERSION, C.uint_encode(1)))
        if self.compact is not None and (profile := self.compact.profile_option()) is not None:
            options.append((C.OPT_PROFILE, C.uint_encode(profile)))
        return options

    def _try(self, op: Operation, now: float) -> None:
        """Start ``op`` (again, from its first block) as a new CoAP message with the same content."""
        op.tries += 1
        if self.compact is not None:
            path, payload = self.compact.encode_request(op.method, op.path, op.body)
            query = self.compact.encode_query(path, op.query)
        else:
            path, payload = op.path, (b"" if op.body is None else msc3079.encode(op.body))
            query = op.query
        op._sent_path, op._sent_query = tuple(path), tuple(query)
        code = C.METHOD_CODES[op.method]
        request = C.Message.request(code, path, query=query, payload=payload, options=self._options(payload))
        if op.observe:  # a token of its own, apart from the requests' (compact mode's are empty)
            request = dataclasses.replace(request.with_option(C.OPT_OBSERVE, b""),
                                          token=bytes((0x80 | self.rng.randrange(128),)))  # fmt: skip
        # A body larger than one block goes up with Block1; a large answer comes back with Block2, asked for
        # with the same code, path and query (the gateway names a transfer by those, not by sticky options).
        op._sender = blockwise.Block1Sender(request, szx=self.szx)
        op._fetcher = blockwise.Block2Fetcher(C.Message.request(code, path, query=query), szx=None)
        self._send(op, op._sender.first_request(), now)

    def _send(self, op: Operation, msg: C.Message, now: float) -> None:
        op._last = msg
        self._current_mid = self.endpoint.send(msg, now).mid
        if op.observe and msg.opt(C.OPT_OBSERVE) is not None:
            op._registration = self._current_mid

    def _events(self, events: list[Event], now: float) -> None:
        for event in events:
            if isinstance(event, Response) and event.request.mid != self._current_mid:
                observation = self._observing.get(event.request.mid)
                if observation is not None:
                    self._notified(observation, event.msg)
                continue
            op = self._current
            if op is None:
                continue
            if isinstance(event, Response) and event.request.mid == self._current_mid:
                self._answered(op, event.msg, now)
            elif isinstance(event, (Failed, Reset)) and event.mid == self._current_mid:
                if op._answer is not None and op._lookup_tries < 8:
                    op._lookup_tries += 1
                    self._lookup(op, now)
                elif op._answer is not None:  # lookups keep failing: the answer as it is, "~n" and all
                    msg, op._answer = op._answer, None
                    self._complete(op, msg, now)
                elif op.tries < op.attempts and op._last is not None:
                    # The same message again under a new message ID: the same body, so the same transaction
                    # ID; in the middle of a blockwise transfer, the same block.
                    op.tries += 1
                    self.counters["retries"] += 1
                    self._send(op, op._last, now)
                else:
                    self.counters["failed"] += 1
                    self._finish(op, now, failed=True)

    def _lookup(self, op: Operation, now: float) -> None:
        assert self.compact is not None
        kind, number = op._lookups[0]
        msg = C.Message.request(C.GET, self.compact.lookup_path(kind, number), options=self._options(b""))
        self._current_mid = self.endpoint.send(msg, now).mid

    def _answered(self, op: Operation, msg: C.Message, now: float) -> None:
        if op._answer is not None:  # the answer to an alias lookup
            kind, number = op._lookups.pop(0)
            if self.compact is not None:
                self.compact.learn_lookup(kind, number, msg.code, msg.payload)
            if op._lookups:
                self._lookup(op, now)
                return
            msg, op._answer = op._answer, None
            self._complete(op, msg, now)
            return
        if op._last is not None:  # what the gateway has now seen: sticky options need not go again
            for number, value in op._last.options:
                if number == C.OPT_AUTH:
                    self._token_sent = value.decode()
                elif number == C.OPT_CBOR_VERSION:
                    self._version_sent = True
        if self.compact is not None:
            try:
                self.compact.note_profile(msg.uint_opt(C.OPT_PROFILE))
            except C.CoapFormatError:
                pass
        try:
            if op._sender is not None and op._sender.response is None:
                following = op._sender.feed(msg)
                if following is not None:
                    self._send(op, following, now)
                    return
                msg = op._sender.response or msg
            if op._fetcher is not None:
                following = op._fetcher.feed(msg)
                if following is not None:
                    self._send(op, following, now)
                    return
                msg = op._fetcher.response or msg
        except blockwise.BlockwiseError as exc:  # the gateway broke a transfer: a value, not a crash
            op.code, op.result = C.BAD_GATEWAY, {"blockwise": str(exc)}
            self._finish(op, now, failed=False)
            return
        if msg.code == C.REQUEST_ENTITY_INCOMPLETE and op._last is not None and op.tries < op.attempts:
            try:
                midway = op._last.block1 is not None or op._last.block2 is not None
            except C.CoapFormatError:
                midway = False
            if midway:  # the gateway no longer holds the transfer (it expired): start it again from block 0
                self.counters["restarts"] += 1
                self._try(op, now)
                return
        op.code = msg.code
        decoded = self._decoded(op, msg)
        op.result = decoded.value
        if decoded.retry and op.tries < op.attempts:
            # 4.04 unknown alias: the gateway evicted an alias this request used; the compact layer dropped
            # the request's aliases, so the request goes again naming those values in full.
            self._try(op, now)
            return
        if decoded.unknown:
            # The answer names aliases this client never saw defined (CompactClient.decode says why): look
            # each up (GET ~/{kind}/{n}), then decode the answer again.
            op._answer, op._lookups, op._lookup_tries = msg, list(decoded.unknown), 0
            self.counters["lookups"] += len(op._lookups)
            self._lookup(op, now)
            return
        self._complete(op, msg, now)

    def _notified(self, op: Operation, msg: C.Message) -> None:
        try:
            observe, block = msg.observe, msg.block2
        except C.CoapFormatError:
            observe, block = None, None
        if observe is None or msg.code >> 5 != 2:  # a final answer: the observation is over
            op.observing = False
            self._observing.pop(op._registration or -1, None)
        if block is not None and block.more:
            # The rest of the push comes with Block2 requests (path and query of the registration), fetched
            # before any operation queued later.
            rest = Operation("GET", op.path, None, op.query, op.attempts)
            rest._sent_path, rest._sent_query, rest._notify_into = op._sent_path, op._sent_query, op
            rest._fetcher = blockwise.Block2Fetcher(C.Message.request(C.GET, op._sent_path, query=op._sent_query),
                                                    szx=None)  # fmt: skip
            try:
                rest._prepared = rest._fetcher.feed(msg)
            except blockwise.BlockwiseError:
                rest._prepared = None
            if rest._prepared is not None:
                self._queue.appendleft(rest)
        elif msg.payload:
            op.notifications.append(self._decode(op, msg))

    def _complete(self, op: Operation, msg: C.Message, now: float) -> None:
        op.result = self._decode(op, msg)
        if op._notify_into is not None:
            op._notify_into.notifications.append(op.result)
        if op.observe and op._registration is not None and msg.opt(C.OPT_OBSERVE) is not None:
            op.observing = True
            self._observing[op._registration] = op
        if op.path == ("1",) and msg.code >> 5 == 2 and isinstance(op.result, dict):
            token = op.result.get("access_token")
            if isinstance(token, str):
                self.token = token
        self._finish(op, now, failed=False)

    def _decode(self, op: Operation, msg: C.Message) -> Any:
        return self._decoded(op, msg).value

    def _decoded(self, op: Operation, msg: C.Message) -> compact_client.Decoded:
        if not msg.payload:
            return compact_client.Decoded(None)
        try:
            if self.compact is not None:
                return self.compact.decode(op._sent_path, msg.code, msg.payload)
            return compact_client.Decoded(msc3079.decode(msg.payload))
        except ValueError as exc:  # CompactError and WireError are ValueErrors: a value, not a crash
            return compact_client.Decoded({"undecodable": str(exc)})

    def _finish(self, op: Operation, now: float, *, failed: bool) -> None:
        op.done, op.failed, op.finished = True, failed, now
        self._current, self._current_mid = None, None
        self._start_next(now)


# ----------------------------------------------------------------------------------------- gateway side


@dataclass(frozen=True)
class Served:
    """One request that went to the API: the client's address, the CoAP message ID, method and path as sent."""

    address: int
    mid: int
    method: str
    path: tuple[str, ...]
    query: tuple[str, ...]
    at: float


class _Outbox(asyncio.DatagramTransport):
    """The server's transport: what it sends waits here until the simulation puts it on the line."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[bytes] = []

    def sendto(self, data: Any, addr: Any = None) -> None:
        """Keep one frame (``addr``, the client's route, is the line itself)."""
        self.frames.append(bytes(data))

    def close(self) -> None:
        """Nothing to close (``SecureServer.stop`` calls it)."""


class LinkGatewaySide:
    """The gateway's end of a line of CoAP clients: the real SecureServer, on simulated time.

    ``gateway`` serves the requests (``mapping.Gateway`` of an in-process
    gateway in the tests). The server runs without its timer loop and reads
    the simulated clock: :meth:`poll` runs its timers at ``now``, and
    :meth:`receive` feeds it a frame, then awaits the requests that started
    (``SecureServer.settle``), so simulated time stands still while the API
    serves. Blockwise transfers are kept as long as on a real line
    (``link_transport.block_lifetime``). ``limits`` go to every client's
    endpoint (``Limits(dedup=0)`` switches deduplication off, to show what it
    does). Observation loops run on the event loop's own time: simulate
    polling with plain syncs.
    """

    def __init__(self, listener: SecureListener, gateway: Handles, params: TransmissionParams, *,
                 max_message: int = 244, limits: Limits | None = None, rng: random.Random | None = None,
                 name: str = "sim", max_request_bytes: int = 1 << 20) -> None:  # fmt: skip
        self.now = 0.0
        self.name = name
        self._outbox = _Outbox()
        #: every request that went to the API, in order (not the later blocks of an answer)
        self.served: list[Served] = []
        self.server = SecureServer(gateway, listener, data_dir=None, max_request_bytes=max_request_bytes,
                                   observe_timeout_s=30.0, max_observations=16, mtu=max_message, params=params,
                                   clock=lambda: self.now, block_lifetime=block_lifetime(params),
                                   rng=rng or random.Random(1), limits=limits, on_request=self._served)  # fmt: skip

    def endpoint(self, address: int) -> Endpoint:
        """The CoAP endpoint towards the client at ``address`` (for counters); LookupError before it spoke."""
        endpoint = self.server.endpoint(address)
        if endpoint is None:
            raise LookupError(f"client {address} has not spoken")
        return endpoint

    async def receive(self, frame: bytes, now: float) -> None:
        """One link frame from a client; returns once every request it started is answered."""
        self.now = now
        if self.server.transport is None:
            await self.server.attach(self._outbox, self.name, timers=False)
        # The route as link_transport names it: the line and the client's address byte.
        address = frame[1] if len(frame) > 1 else 0
        self.server.datagram_received(frame, (f"link:{self.name}#{address}", address))
        await self.server.settle()

    def poll(self, now: float) -> list[bytes]:
        """Frames to transmit at ``now`` (answers, retransmissions, empty ACKs)."""
        self.now = now
        self.server.run_timers(now)
        out, self._outbox.frames = self._outbox.frames, []
        return out

    def next_deadline(self) -> float | None:
        """When ``poll`` next has work, or None."""
        return self.server.next_deadline()

    def _served(self, address: int, msg: C.Message) -> None:
        method = C.METHODS.get(msg.code, str(msg.code))
        self.served.append(Served(address, msg.mid, method, msg.path, msg.query, self.now))


# ----------------------------------------------------------------------------------------- the line


class SimSerialLine:
    """Link frames between the client (side A) and the gateway (side B) over a LinkModel, COBS-framed.

    ``outage(start, end)``: from ``start`` to ``end`` nothing gets through
    (what is written is lost, what would arrive is lost); ``senders`` limits
    it to what those sides send (``(B,)``: the downlink only).
    ``wire_bytes[side]`` counts what each side put on the line, COBS and
    delimiters included.
    """

    def __init__(self, model: LinkModel) -> None:
        self.model = model
        self.framers = {A: SerialFramer(), B: SerialFramer()}
        self.outages: list[tuple[float, float, tuple[str, ...]]] = []
        self.wire_bytes = {A: 0, B: 0}
        self.lost_in_outage = 0

    def outage(self, start: float, end: float, senders: tuple[str, ...] = (A, B)) -> None:
        """Cut the line from ``start`` to ``end`` (seconds of simulated time) for what ``senders`` send."""
        self.outages.append((start, end, tuple(senders)))

    def down(self, now: float, sender: str = A) -> bool:
        """Whether what ``sender`` sends is lost at ``now``."""
        return any(start <= now < end and sender in senders for start, end, senders in self.outages)

    def send(self, side: str, frame: bytes, now: float) -> None:
        """``side`` writes one frame (COBS-encoded here)."""
        wire = serial_encode(frame)
        self.wire_bytes[side] += len(wire)
        if self.down(now, side):
            self.lost_in_outage += len(wire)
            return
        self.model.write(side, wire, now)

    def deliveries(self, now: float) -> list[tuple[str, bytes]]:
        """Frames that arrive by ``now``: (side it arrives at, frame)."""
        out: list[tuple[str, bytes]] = []
        for side, data in self.model.poll(now):
            if self.down(now, B if side == A else A):
                self.lost_in_outage += len(data)
                continue
            out.extend((side, frame) for frame in self.framers[side].feed(data))
        return out

    def next_deadline(self) -> float | None:
        """When something next arrives."""
        return self.model.next_deadline()


class SimRun:
    """Moves simulated time between deadlines and carries frames: client on side A, gateway on side B."""

    def __init__(self, client: LinkCoapClient, gateway: LinkGatewaySide, line: SimSerialLine, now: float = 0.0) -> None:
        self.client = client
        self.gateway = gateway
        self.line = line
        self.now = now

    async def until(self, done: Callable[[], bool], limit: float, *, max_steps: int = 1_000_000) -> bool:
        """Run until ``done()`` or simulated time ``limit``; whether ``done()`` holds. Never sleeps."""
        for _ in range(max_steps):
            if done():
                return True
            await self.step(limit)
            if self.now >= limit:
                return done()
        raise RuntimeError("the simulation made no progress")

    async def run_to(self, limit: float) -> None:
        """Run until simulated time ``limit`` (everything due by then happens)."""
        await self.until(lambda: False, limit)

    async def step(self, limit: float) -> None:
        """Advance to the next deadline (at most ``limit``) and do what falls due."""
        deadlines = [d for d in (self.client.next_deadline(), self.gateway.next_deadline(), self.line.next_deadline())
                     if d is not None]  # fmt: skip
        self.now = min(limit, max(self.now, min(deadlines, default=limit)))
        for side, frame in self.line.deliveries(self.now):
            if side == A:
                self.client.receive(frame, self.now)
            else:
                await self.gateway.receive(frame, self.now)
        for frame in self.client.poll(self.now):
            self.line.send(A, frame, self.now)
        for frame in self.gateway.poll(self.now):
            self.line.send(B, frame, self.now)
