"""A small asyncio client for the gateway's CoAP API (MSC3079, compact mode, Noise sessions).

Used by the tests, ``lowband coap`` and ``lowband bench coap``. One
:class:`CoapClient` is one connection: one UDP socket towards one gateway
port, one :class:`~lowband.gateway.coap.messaging.Endpoint` (message IDs,
retransmission, deduplication, ACKs of notifications) and, with a key file,
one :class:`~lowband.gateway.coap.secure_core.SecureClient` (Noise KK, every
CoAP message in a DATA frame).

What the client does for the caller:

* paths: a full ``/_matrix/client/...`` path is sent as its MSC3079 code when
  it has one (``paths.shorten``); a code form (``"9/!r:x/m.room.message/t"``
  or a tuple of segments) is sent as it is;
* bodies: JSON values in, MSC3079 CBOR with integer keys on the wire;
  answers decoded back to JSON (integer keys expanded);
* sticky options (MSC3079: "once per connection"): the access token
  (option 256) goes in the first request after it is known, the key-table
  version (option 257 = 1) in the first request; compact mode's profile
  option until the server echoes it. When the server has forgotten them
  (its peer table expired, or a new Noise session) a 4.01 answer to a
  request sent without the token is retried once with it;
* blockwise transfer (RFC 7959): answers with Block2 are fetched block by
  block; a body larger than one block goes up with Block1;
* OBSERVE (RFC 7641) on ``/sync``: :meth:`CoapClient.observe_sync`;
* compact mode (``compact_client.CompactClient``): aliases an answer names
  whose definitions were lost are looked up (``GET ~/{kind}/{n}``) before the
  answer is returned; a 4.04 unknown alias goes again once with full IDs;
* transaction IDs: :meth:`CoapClient.send_text` picks one and keeps it for
  its retries, so a retry after a lost answer never makes a second event;
* byte counters: every UDP payload sent and received (``bytes_out``,
  ``bytes_in``; with Noise, the frames, tags included), and the share of the
  last request (``last_request``).

Errors: :class:`BadUrl`, :class:`KeyFileError` (the caller's input),
:class:`NoAnswer` (nothing came back in time), :class:`ProtocolError` (the
gateway's answer made no sense); all are :class:`CoapClientError`. Answers
with an error code are values, not exceptions: ``(code, body)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import secrets
import string
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from lowband.codecs import coap as C
from lowband.codecs import msc3079
from lowband.codecs.errors import WireError
from lowband.gateway.coap.compact_client import Decoded
from lowband.gateway.coap.messaging import (
    Endpoint,
    Event,
    Failed,
    LocalProtocolError,
    Reset,
    Response,
    TransmissionParams,
)
from lowband.gateway.coap.paths import shorten

__all__ = [
    "BadUrl",
    "CoapClient",
    "CoapClientError",
    "KeyFileError",
    "NoAnswer",
    "ProtocolError",
    "parse_url",
]

#: Block size exponent of uploads and of the Block2 the client asks for (6: 1024 bytes, RFC 7959's largest)
DEFAULT_SZX = 6
#: Seconds between keep-alives while an observation is open and nothing else was sent (NAT bindings).
#: The Noise session does not depend on it (the gateway knows a client by its address byte, not by its
#: port), only whether pushes reach a client behind a NAT: one that forgets a UDP binding sooner than
#: this (RFC 4787 asks for at least 2 minutes; many keep 5) needs a shorter ``keepalive_interval``.
#: 10 minutes meets the idle budget of issue 16 (≤ 20 bytes per 10 minutes with Noise's 11-byte frame).
DEFAULT_KEEPALIVE_S = 600.0
#: Largest answer body assembled from blocks
MAX_BODY = 8 << 20
_TXN_ALPHABET = string.ascii_letters + string.digits


class CoapClientError(Exception):
    """Base of every error :class:`CoapClient` raises."""


class BadUrl(CoapClientError, ValueError):
    """A URL that is not ``coap://HOST:PORT``."""


class KeyFileError(CoapClientError):
    """The key file is missing, unreadable, or not a Lowband CoAP client key file."""


class NoAnswer(CoapClientError):
    """The gateway did not answer in time (or the port is closed)."""


class ProtocolError(CoapClientError):
    """The gateway's answer is malformed (a body that is not CBOR, a broken block sequence …)."""


def parse_url(url: str) -> tuple[str, int]:
    """``coap://HOST[:PORT][/]`` → (host, port); port 5683 by default. Raises :class:`BadUrl`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadUrl(f"{url!r} is not a coap:// URL ({exc})") from None
    if parts.scheme != "coap":
        raise BadUrl(f"{url!r}: only coap://HOST:PORT is supported (give --key for a Noise session)")
    if not parts.hostname:
        raise BadUrl(f"{url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadUrl(f"{url!r}: the URL names the gateway only; give the path separately")
    return parts.hostname, port or C.DEFAULT_PORT


def _split_path(path: str | Sequence[str]) -> tuple[str, ...]:
    """Uri-Path segments: a full path shortened to its code, a code form kept as it is."""
    if not isinstance(path, str):
        segments = tuple(path)
    elif path.startswith("/"):
        segments = tuple(unquote(s) for s in path[1:].split("/"))
    else:
        segments = tuple(path.split("/"))
    return shorten(segments) if segments and segments[0] == "_matrix" else segments


@dataclass
class _Keys:
    client_private: bytes
    gateway_public: bytes
    address: int


def _read_keys(path: Path) -> _Keys:
    from lowband.gateway.coap.clients import ClientsError, read_key_file

    try:
        doc = read_key_file(path)
    except ClientsError as exc:
        raise KeyFileError(str(exc)) from None
    return _Keys(bytes.fromhex(doc["client_private"]), bytes.fromhex(doc["gateway_public"]), int(doc["address"]))


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: CoapClient) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        self.owner._on_error(exc)


@dataclass
class _Observation:
    request: C.Message  # the registration as sent (mid, token)
    path: tuple[str, ...]
    query: tuple[str, ...]
    queue: asyncio.Queue[tuple[C.Message, Decoded] | BaseException]  # a whole answer, decoded


class CoapClient:
    """One connection to the gateway's CoAP API; make it with :meth:`connect`, end it with :meth:`close`."""

    def __init__(self, host: str, port: int, *, keys: _Keys | None, compact: bool, params: TransmissionParams,
                 timeout: float, szx: int) -> None:  # fmt: skip
        """Use :meth:`connect`; this only sets the state up."""
        self.host, self.port = host, port
        self.timeout = timeout
        self.szx = szx
        self.params = params
        # Tokens: 1 byte is plenty for one request at a time; compact mode uses zero-length tokens
        # (messaging serialises requests, so a response always has one match).
        self._endpoint = Endpoint(params, token_length=0 if compact else 1, rng=random.Random())
        self._keys = keys
        self._secure: Any = None
        if keys is not None:
            from lowband.gateway.coap.secure_core import SecureClient

            self._secure = SecureClient(keys.client_private, keys.gateway_public, keys.address,
                                        epoch=secrets.randbelow(8))  # fmt: skip
        self._compact: Any = None
        if compact:
            from lowband.gateway.coap.compact_client import CompactClient

            self._compact = CompactClient()
        self._transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[int, asyncio.Future[C.Message]] = {}  # mid of our request → its answer
        self._observations: dict[int, _Observation] = {}  # mid of the registration → observation
        self._lock = asyncio.Lock()  # one request at a time (NSTART = 1; compact's empty tokens)
        self._timer: asyncio.TimerHandle | None = None
        self._held: list[bytes] = []  # CoAP datagrams waiting for a Noise session
        self._session_ready = asyncio.Event()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._epoch: int | None = None  # the Noise session the sticky options were sent in
        self._closed = False
        self._keepalive_task: asyncio.Task[None] | None = None
        self._last_sent = 0.0
        #: the access token (option 256); set by :meth:`login` or by the caller
        self.token: str | None = None
        self._token_sent: str | None = None  # the token the server holds for this connection
        self._version_sent = False
        #: bytes of every UDP payload sent / received on this connection
        self.bytes_out = 0
        self.bytes_in = 0
        self.datagrams_out = 0
        self.datagrams_in = 0
        #: (bytes out, bytes in) of the last :meth:`request` (blocks and retransmissions included)
        self.last_request = (0, 0)
        #: seconds between keep-alives while observing (``None``: no automatic keep-alives)
        self.keepalive_interval: float | None = DEFAULT_KEEPALIVE_S
        self._txn_prefix = "".join(secrets.choice(_TXN_ALPHABET) for _ in range(4))
        self._txn_counter = 0
        #: the datagrams (as sent, as received) of the last :meth:`send_text`, for the benchmark's link replay
        self.last_send_datagrams: list[tuple[str, int]] = []
        self._trace: list[tuple[str, int]] | None = None

    # ------------------------------------------------------------------ set-up and tear-down

    @classmethod
    async def connect(cls, url: str, *, key_file: Path | str | None = None, compact: bool = False,
                      params: TransmissionParams | None = None, timeout: float = 60.0,
                      szx: int = DEFAULT_SZX) -> CoapClient:  # fmt: skip
        """Open a connection to ``url`` (``coap://HOST:PORT``); with ``key_file``, shake hands first.

        ``compact`` asks for compact mode (with any transport; the gateway answers in plain MSC3079 if
        it does not know it). ``timeout``: seconds each request (and the handshake) may take.
        Raises :class:`BadUrl`, :class:`KeyFileError`, :class:`NoAnswer` (no handshake answer).
        """
        host, port = parse_url(url)
        keys = _read_keys(Path(key_file)) if key_file is not None else None
        if not 0 <= szx <= 6:
            raise ValueError("szx must be 0-6")
        client = cls(host, port, keys=keys, compact=compact, params=params or TransmissionParams(),
                     timeout=timeout, szx=szx)  # fmt: skip
        try:
            client._transport, _ = await client._loop.create_datagram_endpoint(
                lambda: _Datagrams(client), remote_addr=(host, port)
            )
        except OSError as exc:
            raise NoAnswer(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
        if client._secure is not None:
            try:
                await client._handshake()
            except BaseException:
                await client.close()
                raise
        return client

    async def close(self) -> None:
        """End the connection: observations are dropped (the gateway's next push gets a reset), the socket closed."""
        if self._closed:
            return
        self._closed = True
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            with contextlib.suppress(BaseException):
                await self._keepalive_task
        for observation in list(self._observations.values()):
            observation.queue.put_nowait(NoAnswer("the client was closed"))
        self._observations.clear()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(NoAnswer("the client was closed"))
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ the pump

    def _now(self) -> float:
        return self._loop.time()

    def _send_raw(self, data: bytes) -> None:
        if self._transport is None or self._closed:
            return
        self._transport.sendto(data)
        self.bytes_out += len(data)
        self.datagrams_out += 1
        self._last_sent = self._now()
        if self._trace is not None:
            self._trace.append(("out", len(data)))

    def _transmit(self, coap_datagrams: list[bytes]) -> None:
        """Send CoAP datagrams, sealed in DATA frames when there is a Noise session."""
        for data in coap_datagrams:
            if self._secure is None:
                self._send_raw(data)
            elif self._secure.established and not self._secure.handshaking:
                self._send_raw(self._secure.seal(data))
            else:
                # A new handshake is under way: the message waits for it, and its retransmission by the
                # message layer repeats the HS1 (whose own answer may have been lost).
                if data not in self._held:
                    self._held.append(data)
                self._send_raw(self._secure.connect(self._now()))

    def _pump(self) -> None:
        """Transmit what the endpoint has, hand out timer events, re-arm the timer."""
        now = self._now()
        self._transmit(self._endpoint.poll(now))
        self._dispatch(self._endpoint.take_events())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._endpoint.next_deadline()
        if deadline is not None and not self._closed:
            self._timer = self._loop.call_at(max(deadline, now), self._pump)

    def _on_datagram(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.datagrams_in += 1
        if self._trace is not None:
            self._trace.append(("in", len(data)))
        if self._secure is not None:
            plain = self._secure.receive(data)
            if self._secure.needs_handshake:
                self._session_ready.clear()
                self._send_raw(self._secure.connect(self._now()))  # the gateway lost our session
                return
            if self._secure.established and not self._secure.handshaking and self._secure.epoch != self._epoch:
                self._new_session()
                return
            if plain is None:
                return
            data = plain
        head = C.peek_header(data)
        if head is not None and head[0] == C.RST and head[1] == C.EMPTY and head[2] in self._pings:
            future = self._pings.pop(head[2])
            if not future.done():
                future.set_result(None)
            return
        self._dispatch(self._endpoint.receive(data, self._now()))
        self._pump()

    def _on_error(self, exc: Exception) -> None:
        # ICMP port unreachable and the like, for what was just sent: nothing listens there (now). What waits
        # fails at once instead of after every retransmission; a later request tries again.
        futures: list[asyncio.Future[Any]] = [*self._waiting.values(), *self._pings.values()]
        for future in futures:
            if not future.done():
                future.set_exception(NoAnswer(f"{self.host}:{self.port}: {exc}"))

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Response):
                observation = self._observations.get(event.request.mid)
                if observation is not None:
                    self._notified(observation, event.msg)
                    continue
                future = self._waiting.get(event.request.mid)
                if future is not None and not future.done():
                    future.set_result(event.msg)
            elif isinstance(event, (Failed, Reset)):
                reason = "no answer after retransmissions" if isinstance(event, Failed) else "the gateway reset it"
                future = self._waiting.get(event.mid)
                if future is not None and not future.done():
                    future.set_exception(NoAnswer(f"request to {self.host}:{self.port}: {reason}"))
                observation = self._observations.pop(event.mid, None)
                if observation is not None:
                    observation.queue.put_nowait(NoAnswer(f"observation: {reason}"))

    # ------------------------------------------------------------------ Noise session

    async def _handshake(self) -> None:
        """HS1 → HS2, HS1 repeated with RFC 7252-style back-off until ``timeout``; NoAnswer if none."""
        self._session_ready.clear()
        deadline = self._now() + self.timeout
        wait = self.params.ack_timeout
        while True:
            self._send_raw(self._secure.connect(self._now()))
            try:
                await asyncio.wait_for(self._session_ready.wait(), min(wait, max(0.0, deadline - self._now())))
                return
            except TimeoutError:
                if self._now() >= deadline:
                    raise NoAnswer(f"no handshake answer from {self.host}:{self.port} (is it the secure_bind "
                                   "port, and is this client provisioned?)") from None  # fmt: skip
                wait *= 2

    def _new_session(self) -> None:
        # A new session is a new connection for the gateway: the sticky options must be sent again,
        # and compact mode negotiated again.
        self._epoch = self._secure.epoch
        self._token_sent = None
        self._version_sent = False
        if self._compact is not None:
            self._compact.reset()
        self._session_ready.set()
        held, self._held = self._held, []
        self._transmit(held)

    # ------------------------------------------------------------------ requests

    def _options(self, payload: bytes, path: tuple[str, ...]) -> list[C.Option]:
        options: list[C.Option] = []
        if payload and (self._compact is None or not self._compact.active):
            options.append((C.OPT_CONTENT_FORMAT, C.uint_encode(C.FORMAT_CBOR)))
        if self.token is not None and self._token_sent != self.token:
            options.append((C.OPT_AUTH, self.token.encode()))
        if not self._version_sent and (self._compact is None or not self._compact.active):
            options.append((C.OPT_CBOR_VERSION, C.uint_encode(1)))
        if self._compact is not None:
            profile = self._compact.profile_option()
            if profile is not None:
                options.append((C.OPT_PROFILE, C.uint_encode(profile)))
        return options

    def _sent_options(self, options: list[C.Option]) -> None:
        for number, value in options:
            if number == C.OPT_AUTH:
                self._token_sent = value.decode()
            elif number == C.OPT_CBOR_VERSION:
                self._version_sent = True

    async def _exchange(self, msg: C.Message) -> C.Message:
        """Send one request message and wait for its answer (NoAnswer after ``timeout``)."""
        if self._closed:
            raise NoAnswer("the client is closed")
        try:
            sent = self._endpoint.send(msg, self._now())
        except LocalProtocolError as exc:
            raise CoapClientError(f"cannot send: {exc}") from None
        future: asyncio.Future[C.Message] = self._loop.create_future()
        self._waiting[sent.mid] = future
        self._pump()
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            self._endpoint.cancel(sent.token)
            raise NoAnswer(f"no answer from {self.host}:{self.port} within {self.timeout:g} s") from None
        finally:
            self._waiting.pop(sent.mid, None)

    async def _call(self, method: str, path: tuple[str, ...], payload: bytes, query: tuple[str, ...],
                    extra: Sequence[C.Option] = ()) -> C.Message:  # fmt: skip
        """One request with Block1 for a large payload and Block2 for a large answer; the whole answer."""
        code = C.METHOD_CODES[method]
        size = C.block_size(self.szx)
        # Block1: every block but the last is answered 2.31 Continue (the gateway may ask for smaller blocks).
        offset, szx, block_options = 0, self.szx, []
        while True:
            chunk = payload
            if len(payload) > size:
                num = offset // C.block_size(szx)
                chunk = payload[offset : offset + C.block_size(szx)]
                more = offset + len(chunk) < len(payload)
                block_options = [(C.OPT_BLOCK1, C.Block(num, more, szx).encode())]
                if num == 0:
                    block_options.append((C.OPT_SIZE1, C.uint_encode(len(payload))))
            answer = await self._one(code, path, query, chunk, [*extra, *block_options])
            block1 = answer.block1
            if len(payload) <= size or answer.code != C.CONTINUE:
                break
            if block1 is None:
                raise ProtocolError("2.31 Continue without a Block1 option")
            offset += C.block_size(szx)
            if offset >= len(payload):
                raise ProtocolError("2.31 Continue after the last block")
            szx = min(szx, block1.szx)  # the gateway may want smaller blocks: go on at the same offset with them
        # Block2: fetch the rest of a large answer with the same request, block by block.
        block2 = answer.block2
        if block2 is None or not block2.more:
            return answer
        body = bytearray(answer.payload)
        etag = answer.opt(C.OPT_ETAG)
        while block2 is not None and block2.more:
            if len(body) > MAX_BODY:
                raise ProtocolError(f"answer larger than {MAX_BODY} bytes")
            following = C.Block(len(body) // block2.size, False, block2.szx)
            nxt = await self._one(C.GET if code == C.GET else code, path, query, b"",
                                  [*extra, (C.OPT_BLOCK2, following.encode())])  # fmt: skip
            if nxt.code >> 5 != 2:
                return nxt
            if etag is not None and nxt.opt(C.OPT_ETAG) not in (None, etag):
                raise ProtocolError("the answer changed between its blocks (ETag)")
            block2 = nxt.block2
            if block2 is None or block2.offset != len(body):
                raise ProtocolError("a Block2 answer out of sequence")
            body += nxt.payload
        return dataclasses.replace(
            answer, payload=bytes(body), options=tuple(o for o in answer.options if o[0] != C.OPT_BLOCK2)
        )

    async def _one(self, code: int, path: tuple[str, ...], query: tuple[str, ...], payload: bytes,
                   extra: Sequence[C.Option]) -> C.Message:  # fmt: skip
        """One request message with the sticky options; a 4.01 to a token-less request is retried with it."""
        for attempt in (0, 1):
            options = [*self._options(payload, path), *extra]
            msg = C.Message.request(code, path, query=query, payload=payload, options=options)
            answer = await self._exchange(msg)
            carried_token = any(n == C.OPT_AUTH for n, _ in options)
            self._sent_options(options)
            if self._compact is not None:
                self._note_profile(answer)
            if answer.code == C.UNAUTHORIZED and self.token is not None and not carried_token and attempt == 0:
                self._token_sent = None  # the gateway forgot this connection (restart, idle expiry)
                self._version_sent = False
                continue
            return answer
        raise AssertionError("unreachable")

    def _note_profile(self, answer: C.Message) -> None:
        try:
            value = answer.uint_opt(C.OPT_PROFILE)
        except C.CoapFormatError:
            value = None
        self._compact.note_profile(value)

    def _decoded(self, path: tuple[str, ...], answer: C.Message) -> Decoded:
        """The answer as JSON; in compact mode with the aliases it named unknown and whether to retry."""
        if not answer.payload:
            return Decoded(None)
        fmt = answer.uint_opt(C.OPT_CONTENT_FORMAT) if answer.opt(C.OPT_CONTENT_FORMAT) is not None else None
        if fmt == C.FORMAT_JSON:
            import json

            try:
                return Decoded(json.loads(answer.payload))
            except ValueError as exc:
                raise ProtocolError(f"JSON answer that does not parse: {exc}") from None
        if fmt not in (None, C.FORMAT_CBOR):
            return Decoded(answer.payload.decode("utf-8", "replace") if fmt == C.FORMAT_TEXT else answer.payload.hex())
        try:
            if self._compact is not None:
                decoded: Decoded = self._compact.decode(path, answer.code, answer.payload)
                return decoded
            return Decoded(msc3079.decode(answer.payload))
        except (WireError, ValueError) as exc:
            raise ProtocolError(f"answer body that does not decode: {exc}") from None

    async def _resolve(self, path: tuple[str, ...], answer: C.Message, decoded: Decoded) -> Any:
        """Look up the aliases ``answer`` named without this client knowing them, then decode it again.

        Their definitions came in an earlier answer that was lost (the gateway counts any later request as
        proof they arrived). Call with the lock held. A lookup the gateway refuses leaves ``"~n"`` in the
        value; raises :class:`NoAnswer` when a lookup is not answered (the request itself can be repeated).
        """
        for kind, number in decoded.unknown:
            reply = await self._one(C.GET, self._compact.lookup_path(kind, number), (), b"", ())
            self._compact.learn_lookup(kind, number, reply.code, reply.payload)
        return self._decoded(path, answer).value

    def _encode(self, method: str, path: tuple[str, ...], body: Any) -> tuple[tuple[str, ...], bytes]:
        if self._compact is not None:
            try:
                new_path, payload = self._compact.encode_request(method, path, body)
            except ValueError as exc:
                raise CoapClientError(f"body cannot be sent: {exc}") from None
            return tuple(new_path), payload
        try:
            return path, b"" if body is None else msc3079.encode(body)
        except WireError as exc:
            raise CoapClientError(f"body cannot be sent: {exc}") from None

    def _query(self, path: tuple[str, ...], query: Sequence[str] | dict[str, Any] | None) -> tuple[str, ...]:
        if query is None:
            items: tuple[str, ...] = ()
        elif isinstance(query, dict):
            # Uri-Query options carry the text itself (RFC 7252 §6.5); the gateway percent-encodes for HTTP.
            items = tuple(f"{k}={v}" for k, v in query.items() if v is not None)
        else:
            items = tuple(query)
        if self._compact is not None:
            items = tuple(self._compact.encode_query(path, items))
        return items

    async def request(self, method: str, path: str | Sequence[str], body: Any = None, *,
                      query: Sequence[str] | dict[str, Any] | None = None) -> tuple[int, Any]:  # fmt: skip
        """One API request; returns (CoAP code byte, the answer as JSON or None when empty).

        ``path``: a full path (``"/_matrix/client/r0/sync"``, sent as its code), a code form
        (``"9/!room:x/m.room.message/t1"``) or a tuple of segments. ``query``: ``"k=v"`` items or a
        dict (values as text, not percent-encoded: CoAP options are not URLs). Raises :class:`NoAnswer`, :class:`ProtocolError`, and
        :class:`CoapClientError` for a body that cannot be encoded.
        """
        method = method.upper()
        if method not in C.METHOD_CODES:
            raise CoapClientError(f"unknown method {method!r}")
        segments = _split_path(path)
        async with self._lock:
            out, back = self.bytes_out, self.bytes_in
            try:
                for attempt in (0, 1):
                    session = self._epoch
                    sent_path, payload = self._encode(method, segments, body)
                    try:
                        answer = await self._call(method, sent_path, payload, self._query(segments, query))
                    except C.CoapFormatError as exc:  # a malformed Block option in the gateway's answer
                        raise ProtocolError(f"malformed answer: {exc}") from None
                    if self._epoch != session and answer.code >> 5 == 4 and attempt == 0:
                        # The request crossed a new Noise session (the gateway restarted): it went with the old
                        # session's sticky state (compact aliases, no token) and was refused; encode it again.
                        continue
                    decoded = self._decoded(sent_path, answer)
                    if decoded.retry and attempt == 0:
                        # 4.04 unknown alias: the gateway evicted an alias this request used; the compact layer
                        # dropped the request's aliases, so encoding it again names those values in full.
                        continue
                    if decoded.unknown:
                        return answer.code, await self._resolve(sent_path, answer, decoded)
                    return answer.code, decoded.value
                raise AssertionError("unreachable")
            finally:
                self.last_request = (self.bytes_out - out, self.bytes_in - back)

    # ------------------------------------------------------------------ Matrix helpers

    async def login(self, user: str, password: str, *, device_id: str | None = None) -> tuple[int, Any]:
        """Password login (``POST 1``); on success the access token is kept and sent (once) from now on."""
        body: dict[str, Any] = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                                "password": password}  # fmt: skip
        if device_id is not None:
            body["device_id"] = device_id
        code, answer = await self.request("POST", "1", body)
        if code >> 5 == 2 and isinstance(answer, dict) and isinstance(answer.get("access_token"), str):
            self.token = answer["access_token"]
        return code, answer

    def new_txn_id(self) -> str:
        """A transaction ID unique to this connection (a random prefix and a counter; short: it is in the path)."""
        self._txn_counter += 1
        return f"{self._txn_prefix}{self._txn_counter}"

    async def send_text(self, room_id: str, text: str, *, txn_id: str | None = None,
                        attempts: int = 3) -> tuple[int, Any]:  # fmt: skip
        """Send ``text`` as m.text into ``room_id``; returns (code, answer) with ``event_id`` on success.

        The transaction ID is chosen once and reused by every attempt: when an answer is lost and the
        request goes again, the gateway answers with the first event instead of making a second one.
        Raises :class:`NoAnswer` after ``attempts`` attempts without an answer.
        """
        txn = txn_id or self.new_txn_id()
        content = {"msgtype": "m.text", "body": text}
        self._trace = []
        try:
            for attempt in range(attempts):
                try:
                    return await self.request("PUT", ("9", room_id, "m.room.message", txn), content)
                except NoAnswer:
                    if attempt == attempts - 1:
                        raise
            raise AssertionError("unreachable")
        finally:
            self.last_send_datagrams, self._trace = self._trace, None

    async def sync(self, since: str | None = None, timeout: int | None = None) -> tuple[int, Any]:
        """``GET 7`` (``/sync``) with ``since`` and ``timeout`` (ms) when given; the client timeout grows to fit."""
        query = {"since": since, "timeout": timeout}
        if timeout and timeout / 1000 + 10 > self.timeout:
            saved, self.timeout = self.timeout, timeout / 1000 + 10
            try:
                return await self.request("GET", "7", query=query)
            finally:
                self.timeout = saved
        return await self.request("GET", "7", query=query)

    async def observe_sync(self, since: str | None = None) -> AsyncGenerator[Any, None]:
        """Observe ``/sync`` (RFC 7641): yields the first answer, then every notification, as JSON.

        Notifications are confirmable and acknowledged by the message layer; a notification larger
        than one block is completed with Block2 GETs. Leaving the iterator (``aclose`` or ``break``)
        forgets the observation: the gateway's next notification is answered with a reset, which
        ends it there. Raises :class:`NoAnswer` when the registration is not answered or the
        observation fails, :class:`ProtocolError` for an error answer (``args[1]``: the body).
        """
        path = ("7",)
        query = self._query(path, {"since": since})
        async with self._lock:
            options = self._options(b"", path)
            msg = C.Message.request(C.GET, path, query=query, options=[*options, (C.OPT_OBSERVE, b"")])
            # The observation keeps a token of its own, apart from the requests' (even compact's empty ones).
            msg = dataclasses.replace(msg, token=bytes([0x80 | secrets.randbelow(128)]))
            try:
                sent = self._endpoint.send(msg, self._now())
            except LocalProtocolError as exc:
                raise CoapClientError(f"cannot register: {exc}") from None
            observation = _Observation(sent, path, query, asyncio.Queue())
            self._observations[sent.mid] = observation
            self._sent_options(options)
            self._pump()
        self._start_keepalive()
        answered = False
        try:
            while True:
                try:
                    item = await asyncio.wait_for(observation.queue.get(), None if answered else self.timeout)
                except TimeoutError:
                    raise NoAnswer("the observation registration was not answered") from None
                answered = True
                if isinstance(item, BaseException):
                    raise item
                answer, decoded = item
                code, value = answer.code, decoded.value
                if decoded.unknown:  # aliases whose definitions were lost: looked up as for any answer
                    async with self._lock:
                        value = await self._resolve(path, answer, decoded)
                if code >> 5 != 2:
                    raise ProtocolError(f"observation answered {C.code_text(code)}", value)
                yield value
        finally:
            self._observations.pop(sent.mid, None)
            self._endpoint.cancel(sent.token)

    def _notified(self, observation: _Observation, msg: C.Message) -> None:
        if self._compact is not None:
            self._note_profile(msg)
        try:
            block2 = msg.block2
        except C.CoapFormatError as exc:
            observation.queue.put_nowait(ProtocolError(f"notification with a bad Block2 option: {exc}"))
            return
        if block2 is not None and block2.more:
            asyncio.ensure_future(self._complete_notification(observation, msg))
            return
        try:
            observation.queue.put_nowait((msg, self._decoded(observation.path, msg)))
        except CoapClientError as exc:
            observation.queue.put_nowait(exc)

    async def _complete_notification(self, observation: _Observation, first: C.Message) -> None:
        """The rest of a notification larger than one block: GET with Block2 from block 1 (RFC 7959 §2.6)."""
        try:
            async with self._lock:
                body = bytearray(first.payload)
                block2 = first.block2
                while block2 is not None and block2.more:
                    following = C.Block(len(body) // block2.size, False, block2.szx)
                    nxt = await self._one(C.GET, observation.path, observation.query, b"",
                                          [(C.OPT_BLOCK2, following.encode())])  # fmt: skip
                    block2 = nxt.block2
                    if nxt.code >> 5 != 2 or block2 is None or block2.offset != len(body):
                        raise ProtocolError("a notification's later blocks did not follow")
                    body += nxt.payload
                whole = dataclasses.replace(first, payload=bytes(body))
                observation.queue.put_nowait((whole, self._decoded(observation.path, whole)))
        except CoapClientError as exc:
            observation.queue.put_nowait(exc)

    # ------------------------------------------------------------------ keep-alive

    async def keepalive(self) -> None:
        """One keep-alive: with Noise an empty DATA frame (11 bytes, not answered); on plain UDP a CoAP
        ping (Empty CON, 4 bytes) answered by a reset (4 bytes), awaited. Raises :class:`NoAnswer`."""
        if self._secure is not None:
            if self._secure.established:
                self._send_raw(self._secure.seal(b""))
            return
        mid = secrets.randbelow(0x10000)
        future: asyncio.Future[None] = self._loop.create_future()
        self._pings[mid] = future
        self._send_raw(C.encode(C.Message(C.CON, C.EMPTY, mid)))
        try:
            await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise NoAnswer("no answer to a CoAP ping") from None
        finally:
            self._pings.pop(mid, None)

    def _start_keepalive(self) -> None:
        if self._keepalive_task is None and self.keepalive_interval:
            self._keepalive_task = asyncio.ensure_future(self._keepalive_loop())

    async def _keepalive_loop(self) -> None:
        while not self._closed:
            interval = self.keepalive_interval
            if not interval:
                return
            idle_for = self._now() - self._last_sent
            if idle_for < interval:
                await asyncio.sleep(interval - idle_for)
                continue
            if self._observations:
                with contextlib.suppress(NoAnswer):
                    await self.keepalive()
            else:
                await asyncio.sleep(interval)
