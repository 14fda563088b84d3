"""The CoAP API on plain UDP: an aiocoap server context whose one root resource serves every path.

aiocoap does the message layer (RFC 7252: parsing, deduplication, piggybacked and separate
responses, retransmission of confirmable messages). The root resource, :class:`CoapSite`, implements
aiocoap's public ``render_to_pipe`` resource interface and does the rest itself:

* each request becomes an :class:`~lowband.gateway.coap.exchange.CoapRequest` for the one
  :data:`~lowband.gateway.coap.exchange.Handler` (``mapping.Gateway.handle``), with one
  :class:`~lowband.gateway.coap.exchange.Peer` per remote address (:class:`PeerTable`: least recently
  used dropped past ``max_peers``, forgotten after ``peer_idle_s`` of silence);
* blockwise transfer (RFC 7959) in the bounded stores of :mod:`.blockwise`, the same ones the Noise
  listener uses. aiocoap's own ``Block1Spool`` keeps every half-finished upload for 93 s with no bound
  on how many there are nor on how large one grows (each block is appended to the previous ones), so a
  flood of block-0 requests or an endless upload costs unbounded memory; it is not used. The
  ``Block1Assembler`` here caps one body at ``max_request_bytes`` (4.13 past it, also when Size1
  announces more), the uploads per client and in all, their bytes together (least recently fed dropped
  first) and their age. A ``Block2Cache`` keeps the large answers whose later blocks a client will ask
  for, bounded the same way. Both take our own :class:`~lowband.codecs.coap.Message`: a request is
  reduced to what names it across its blocks (code, Uri-Path, Uri-Query; :func:`identity`) plus its
  block options and payload, and their answers are turned back into aiocoap messages (:func:`to_aiocoap`);
* OBSERVE (RFC 7641) on ``/sync`` (code ``7`` or the full path), as MSC3079 describes: the first
  answer is the ordinary ``/sync`` answer; then a loop long-polls ``/sync?since=<next_batch>`` and pushes
  each answer that carries news as a confirmable notification. Nothing is sent while idle. A
  notification that is never acknowledged (or is answered with a reset) makes aiocoap end the
  request, which ends the loop. Registrations are keyed by (access token, CoAP token); at most
  ``max_observations``, the oldest ended (5.03) for a new one. A notification larger than one block
  carries its first block; the client GETs the rest with Block2 and gets the same bytes, because the
  last pushed answer is kept (in a bounded store of its own: at most one per observation, 16 MiB together,
  93 s each; past that the client gets 4.08 and registers again).

Option 257 is critical (odd number) and unknown to aiocoap: aiocoap's UDP message layer does not
refuse requests for unknown critical options (only its TCP signalling does), and this resource
understands it, so such requests are served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiocoap  # type: ignore[import-untyped]
from aiocoap import interfaces
from aiocoap.numbers.optionnumbers import OptionNumber  # type: ignore[import-untyped]
from aiocoap.pipe import Pipe  # type: ignore[import-untyped]
from aiocoap.resource import PathCapable  # type: ignore[import-untyped]
from aiocoap.util import hostportsplit  # type: ignore[import-untyped]

from lowband.codecs import coap
from lowband.codecs.coap import CoapFormatError
from lowband.gateway.coap import blockwise
from lowband.gateway.coap.config import CoapConfig
from lowband.gateway.coap.exchange import CoapRequest, CoapResponse, Handler, Peer
from lowband.gateway.coap.mapping import MIN_POLL_INTERVAL_S, has_news, next_batch, with_query

log = logging.getLogger("lowband.coap")

#: a half-finished upload or an unfetched large answer is dropped after this long (RFC 7252's MAX_TRANSMIT_WAIT
#: is 93 s: a client that has not sent the next block by then has given up)
BLOCK_TTL_S = 93.0
#: uploads in progress at once, and answers waiting for their later blocks
MAX_BLOCK_ENTRIES = 256
#: uploads in progress at once from one client address (a new one past it drops that client's oldest)
MAX_PEER_UPLOADS = 4
#: bytes of large answers kept for Block2 requests, all clients together
BLOCK2_BYTES = 8 * 1024 * 1024
#: bytes of pushed notifications kept for Block2 requests, all observations together
PUSHED_BYTES = 16 * 1024 * 1024
#: requests being served at once (observation long-polls not counted: ``max_observations`` bounds those);
#: past it a request is answered 5.03 with Max-Age 1
MAX_IN_FLIGHT = 512
#: answers after which an observation tries again (Max-Age seconds later, at least 1 s) instead of ending
_TRANSIENT = (coap.TOO_MANY_REQUESTS, coap.SERVICE_UNAVAILABLE, coap.GATEWAY_TIMEOUT)
#: RFC 7959: a block size exponent of 7 (BERT) is for reliable transports only
_MAX_SZX = 6
#: the /sync paths an observation may be registered on (MSC3079 code 7, and the full path in both spellings)
_SYNC_PATHS = {("7",), ("_matrix", "client", "r0", "sync"), ("_matrix", "client", "v3", "sync")}
#: the options that name a request across its blocks, with the block options the stores read
_IDENTITY_OPTIONS = frozenset({coap.OPT_URI_PATH, coap.OPT_URI_QUERY, coap.OPT_BLOCK1, coap.OPT_BLOCK2, coap.OPT_SIZE1})


def address_of(hostinfo: str) -> tuple[str, str, int]:
    """aiocoap's ``remote.hostinfo`` (``"127.0.0.1:40000"``, ``"[::1]:40000"``, port omitted when 5683)
    -> (peer address ``"udp:HOST:PORT"``, host, port)."""
    host, port = hostportsplit(hostinfo)
    port = coap.DEFAULT_PORT if port is None else int(port)
    shown = f"[{host}]" if ":" in host else host
    return f"udp:{shown}:{port}", host, port


class PeerTable:
    """One :class:`Peer` per remote address: least recently heard dropped past ``max_peers``, and any
    silent for ``idle_s`` (sans-I/O: ``now`` comes in)."""

    def __init__(self, max_peers: int, idle_s: float) -> None:
        self.max_peers, self.idle_s = max_peers, idle_s
        self._peers: OrderedDict[str, tuple[Peer, float]] = OrderedDict()
        #: peers dropped to stay within max_peers
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, address: object) -> bool:
        return address in self._peers

    def touch(self, address: str, host: str, port: int, now: float) -> Peer:
        """The peer for ``address`` (a new one if unknown or forgotten), marked as heard at ``now``."""
        self.expire(now)
        found = self._peers.pop(address, None)
        peer = found[0] if found is not None else Peer(address=address, host=host, port=port)
        self._peers[address] = (peer, now)
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
            self.evicted += 1
        return peer

    def refresh(self, address: str, now: float) -> None:
        """Mark a known peer as heard at ``now`` (an unknown one is not added)."""
        found = self._peers.pop(address, None)
        if found is not None:
            self._peers[address] = (found[0], now)

    def expire(self, now: float) -> None:
        """Forget the peers silent for ``idle_s`` or longer."""
        while self._peers:
            address, (_, heard) = next(iter(self._peers.items()))
            if now - heard < self.idle_s:
                return
            del self._peers[address]


def _uint(raw: bytes) -> int | None:
    return int.from_bytes(raw, "big") if len(raw) <= 4 else None


class BadOption(ValueError):
    """A request option this resource cannot read (the client broke the protocol): answered 4.02."""


def to_request(message: aiocoap.Message, method: str, body: bytes) -> CoapRequest:
    """The :class:`CoapRequest` for an aiocoap request ``message`` (its body already reassembled).

    Raises :class:`BadOption` for an access token (256) that is not UTF-8 or a uint option (257, 65000)
    longer than 4 bytes.
    """
    opt = message.opt
    auth_options = opt.get_option(coap.OPT_AUTH)
    try:
        auth = auth_options[-1].encode().decode("utf-8") if auth_options else None
    except UnicodeDecodeError:
        raise BadOption("the access token option (256) is not UTF-8") from None
    uints: dict[int, int | None] = {}
    for number in (coap.OPT_CBOR_VERSION, coap.OPT_PROFILE):
        found = opt.get_option(number)
        value = _uint(found[-1].encode()) if found else None
        if found and value is None:
            raise BadOption(f"option {number} is longer than a 4-byte uint")
        uints[number] = value
    content_format = opt.content_format
    accept = opt.accept
    return CoapRequest(
        method=method,
        path=tuple(opt.uri_path),
        query=tuple(opt.uri_query),
        body=body,
        content_format=None if content_format is None else int(content_format),
        accept=None if accept is None else int(accept),
        auth=auth,
        cbor_version=uints[coap.OPT_CBOR_VERSION],
        profile=uints[coap.OPT_PROFILE],
        observe=opt.observe,
    )


def identity(message: aiocoap.Message) -> coap.Message:
    """An aiocoap request as the :mod:`.blockwise` stores read it: its code, Uri-Path, Uri-Query, Block1,
    Block2 and Size1 and its payload. Other options (the sticky 256/257/65000 a client may send on the
    first block only, Accept, tokens) do not make two blocks of one transfer look like two requests.

    Raises :class:`~lowband.codecs.coap.CoapFormatError` for what our codec cannot hold (answered 4.02);
    a malformed block option is found later, when the stores read it.
    """
    options = tuple((int(o.number), bytes(o.encode())) for o in message.opt.option_list()
                    if o.number in _IDENTITY_OPTIONS)  # fmt: skip
    return coap.Message(coap.CON, int(message.code), options=options, payload=bytes(message.payload))


def to_aiocoap(message: coap.Message) -> aiocoap.Message:
    """The aiocoap answer for one of ours (code, options, payload; type, message ID and token are aiocoap's)."""
    answer = aiocoap.Message(code=aiocoap.Code(message.code), payload=message.payload)
    for number, value in message.options:
        answer.opt.add_option(OptionNumber(number).create_option(decode=value))
    return answer


def _whole(response: CoapResponse) -> coap.Message:
    """A handler's answer as one of our messages, before it is cut into blocks."""
    options = []
    if response.content_format is not None:
        options.append((coap.OPT_CONTENT_FORMAT, coap.uint_encode(response.content_format)))
    if response.max_age is not None:
        options.append((coap.OPT_MAX_AGE, coap.uint_encode(response.max_age)))
    return coap.Message(coap.ACK, response.code, options=tuple(options), payload=response.body)


def _plain(code: int, diagnostic: str = "") -> aiocoap.Message:
    """An answer made here (not by the handler), with an RFC 7252 diagnostic payload."""
    return aiocoap.Message(code=aiocoap.Code(code), payload=diagnostic.encode())


@dataclass(eq=False)
class Observation:
    """One registration on /sync: its key (``_registrant``, CoAP token), its loop's task and the peer state it
    was registered with."""

    key: tuple[str, bytes]
    task: asyncio.Task[Any] | None
    peer: Peer
    #: set by :meth:`end`: the code of the final notification
    end_code: int | None = None
    pushed: int = 0

    def end(self, code: int) -> None:
        """End the observation: its loop sends a final notification with ``code`` and stops."""
        if self.end_code is None and self.task is not None:
            self.end_code = code
            self.task.cancel()


class CoapSite(interfaces.ObservableResource, PathCapable):
    """The root resource: every request, whatever its path, goes to ``handler`` (see the module docstring).

    ``clock`` is ``time.monotonic`` unless a test gives another; ``notify_tuning`` the aiocoap transport
    tuning of notifications (a test shortens the retransmissions with a ``aiocoap.Reliable`` subclass).
    """

    def __init__(self, handler: Handler, config: CoapConfig, max_request_bytes: int,
                 clock: Callable[[], float] = time.monotonic,
                 notify_tuning: type[aiocoap.Reliable] = aiocoap.Reliable) -> None:  # fmt: skip
        super().__init__()
        self.notify_tuning = notify_tuning
        self.handler = handler
        self.config = config
        self.clock = clock
        self.peers = PeerTable(config.max_peers, config.peer_idle_s)
        self.block1 = blockwise.Block1Assembler(max_body=max_request_bytes, per_peer=MAX_PEER_UPLOADS,
                                                max_assemblies=MAX_BLOCK_ENTRIES, max_bytes=4 * max_request_bytes,
                                                lifetime=BLOCK_TTL_S)  # fmt: skip
        self.block2 = blockwise.Block2Cache(lifetime=BLOCK_TTL_S, max_entries=MAX_BLOCK_ENTRIES, max_bytes=BLOCK2_BYTES,
                                            etag=True)  # fmt: skip
        self.max_request_bytes = max_request_bytes
        #: registrations on /sync, oldest first
        self.observations: OrderedDict[tuple[str, bytes], Observation] = OrderedDict()
        #: the large answers observations pushed (first block sent), kept for the client's Block2 requests
        self.pushed = blockwise.Block2Cache(lifetime=BLOCK_TTL_S, max_entries=config.max_observations,
                                            max_bytes=PUSHED_BYTES, etag=True)  # fmt: skip
        self.in_flight = 0
        self.closing = False

    # aiocoap's older resource interface: not used, since render_to_pipe is implemented (interfaces.Resource)
    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        return _plain(coap.INTERNAL_SERVER_ERROR)

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # the bounded stores above do it, see the module docstring

    async def add_observation(self, request: aiocoap.Message, serverobservation: Any) -> None:
        return None

    async def render_to_pipe(self, pipe: Pipe) -> None:
        """Answer one request (aiocoap calls this; the task is cancelled when the client loses interest)."""
        request = pipe.request
        now = self.clock()
        address, host, port = address_of(request.remote.hostinfo)
        peer = self.peers.touch(address, host, port, now)
        method = coap.METHODS.get(int(request.code))
        if method is None:
            pipe.add_response(_plain(coap.METHOD_NOT_ALLOWED), is_last=True)
            return
        if self.closing:
            pipe.add_response(_plain(coap.SERVICE_UNAVAILABLE, "shutting down"), is_last=True)
            return
        try:
            ident = identity(request)
            block2 = ident.block2
        except CoapFormatError as exc:  # SZX 7 (BERT is for reliable transports), an overlong block number …
            pipe.add_response(_plain(coap.BAD_OPTION, str(exc)[:100]), is_last=True)
            return
        if block2 is not None and block2.num > 0:
            pipe.add_response(self._later_block(address, ident, block2, now), is_last=True)
            return
        outcome = self.block1.feed(address, ident, now)
        if not isinstance(outcome, blockwise.Block1Done):  # 2.31 Continue, 4.13, 4.08, 4.02 or 4.00
            pipe.add_response(to_aiocoap(outcome.response()), is_last=True)
            return
        try:
            creq = to_request(request, method, outcome.body)
        except BadOption as exc:
            pipe.add_response(_plain(coap.BAD_OPTION, str(exc)), is_last=True)
            return
        if creq.observe == 0 and method == "GET" and creq.path in _SYNC_PATHS:
            await self._observe(pipe, request, ident, creq, peer)
            return
        if self.in_flight >= MAX_IN_FLIGHT:
            busy = _plain(coap.SERVICE_UNAVAILABLE, "busy")
            busy.opt.max_age = 1
            pipe.add_response(busy, is_last=True)
            return
        self.in_flight += 1
        try:
            response = await self.handler(creq, peer)
        finally:
            self.in_flight -= 1
        answer = self._message(response, request, ident, address)
        if outcome.block is not None:  # RFC 7959 2.3: the answer to the last block echoes its Block1
            answer.opt.block1 = (outcome.block.num, False, outcome.block.szx)
        pipe.add_response(answer, is_last=True)

    # ------------------------------------------------------------------------------------------ blockwise

    def _later_block(self, address: str, ident: coap.Message, block2: coap.Block, now: float) -> aiocoap.Message:
        """Block 1, 2 … of an answer kept from block 0: the last notification pushed, else the cache."""
        found = self.pushed.block(address, ident, block2.num, block2.szx, now)
        if found is None:
            found = self.block2.block(address, ident, block2.num, block2.szx, now)
        if found is None:
            return _plain(coap.REQUEST_ENTITY_INCOMPLETE, "no such answer (expired, or past its end): ask for block 0")
        return to_aiocoap(found)

    def _message(self, response: CoapResponse, request: aiocoap.Message, ident: coap.Message, address: str,
                 pushed: bool = False) -> aiocoap.Message:  # fmt: skip
        """The aiocoap answer for ``response``: whole, or its first block (the whole kept for the rest, with the
        pushed notifications when ``pushed``)."""
        szx = min(request.remote.maximum_block_size_exp, _MAX_SZX)
        asked = ident.block2  # already read once: it is well-formed
        if asked is not None:
            szx = min(szx, asked.szx)
        store = self.pushed if pushed else self.block2
        return to_aiocoap(store.first(address, ident, _whole(response), szx, self.clock()))

    # ------------------------------------------------------------------------------------------- observe

    async def _observe(self, pipe: Pipe, request: aiocoap.Message, ident: coap.Message, creq: CoapRequest,
                       peer: Peer) -> None:  # fmt: skip
        """Serve an observation of /sync until the client leaves, it is ended, or an answer is an error."""
        first = await self.handler(creq, peer)
        since = next_batch(first)
        if since is None:  # an error (or not a sync answer): no registration, the answer is final
            pipe.add_response(self._message(first, request, ident, peer.address), is_last=True)
            return
        # The loop keeps the token and key-table version it was registered with, whatever the peer sends later.
        own_peer = dataclasses.replace(peer, state={})
        poll = dataclasses.replace(creq, auth=None, cbor_version=None, observe=None)
        observation = Observation((_registrant(creq, peer), bytes(request.token)), asyncio.current_task(), own_peer)
        self._register(observation)
        message = self._message(first, request, ident, peer.address, pushed=True)
        message.opt.observe = 0
        pipe.add_response(message, is_last=False)
        timeout_ms = int(self.config.observe_timeout_s * 1000)
        try:
            while True:
                started = self.clock()
                response = await self.handler(with_query(poll, since=since, timeout=timeout_ms), own_peer)
                if response.code in _TRANSIENT:
                    await asyncio.sleep(max(1, response.max_age or 1))
                    continue
                token = next_batch(response)
                if token is None:  # the token was revoked, the user left …: the observation ends with the answer
                    pipe.add_response(self._message(response, request, ident, peer.address), is_last=True)
                    return
                if not has_news(response):
                    since = token
                    if self.clock() - started < self.config.observe_timeout_s / 2:  # it did not long-poll
                        await asyncio.sleep(min(MIN_POLL_INTERVAL_S, self.config.observe_timeout_s))
                    continue
                observation.pushed += 1
                notification = self._message(response, request, ident, peer.address, pushed=True)
                notification.opt.observe = observation.pushed & 0xFFFFFF
                # MSC3079: pushed events are confirmable, whatever type the registration had
                notification.transport_tuning = self.notify_tuning
                pipe.add_response(notification, is_last=False)
                self.peers.refresh(peer.address, self.clock())  # an observed client keeps its sticky state
                since = token
        except asyncio.CancelledError:
            if observation.end_code is None:
                raise  # the client went away (reset, unacknowledged notification, new request on the token)
            final = _plain(observation.end_code, "observation ended")
            final.transport_tuning = aiocoap.Unreliable  # the client may be gone: no retransmissions
            pipe.add_response(final, is_last=True)
        finally:
            self._unregister(observation)

    def _register(self, observation: Observation) -> None:
        old = self.observations.pop(observation.key, None)
        if old is not None and old.peer.address != observation.peer.address:
            # the same token and CoAP token again from another address (a new NAT binding): the new one wins.
            # From the same address aiocoap has already ended the old request (same token): a final message
            # now would carry the new registration's token.
            old.end(coap.SERVICE_UNAVAILABLE)
        self.observations[observation.key] = observation
        while len(self.observations) > self.config.max_observations:
            _, oldest = self.observations.popitem(last=False)
            oldest.end(coap.SERVICE_UNAVAILABLE)

    def _unregister(self, observation: Observation) -> None:
        if self.observations.get(observation.key) is observation:
            del self.observations[observation.key]

    async def end_observations(self, timeout: float = 5.0) -> None:
        """End every observation (a final 5.03 to each client) and wait for their loops to finish."""
        tasks = [o.task for o in self.observations.values() if o.task is not None]
        for observation in list(self.observations.values()):
            observation.end(coap.SERVICE_UNAVAILABLE)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


def _registrant(creq: CoapRequest, peer: Peer) -> str:
    """Who an observation belongs to, for its key (MSC3079: the access token with the CoAP token).

    The sticky token, else an ``access_token`` query value; a request with neither is keyed by its address,
    because CoAP tokens are unique only per client endpoint.
    """
    if peer.token:
        return "token:" + peer.token
    for value in creq.query:
        name, _, token = value.partition("=")
        if name == "access_token" and token:
            return "token:" + token
    return "address:" + peer.address


class UndecodableDatagrams(logging.Filter):
    """Counts, and keeps out of the log, the datagrams aiocoap's decoder fails on with an exception.

    aiocoap 0.4 catches only its own ``UnparsableMessage`` when it decodes a datagram; a string option
    (Uri-Path, Uri-Query …) that is not UTF-8 raises ``UnicodeDecodeError`` out of its receive callback
    (chrysn/aiocoap#176). asyncio logs that with a traceback and the socket keeps serving, so nothing
    breaks, but each such datagram would put a traceback in the log. This filter, on the ``asyncio``
    logger while the listener runs, drops exactly those records (their traceback ends in aiocoap's
    ``Message.decode``) and counts them; one warning is logged per :data:`REPORT_EVERY`.
    """

    REPORT_EVERY = 1000

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, ValueError) or error.__traceback__ is None:
            return True
        frames = traceback.extract_tb(error.__traceback__)
        if not any(f.name == "decode" and f.filename.replace("\\", "/").endswith("aiocoap/message.py") for f in frames):
            return True
        self.count += 1
        if self.count % self.REPORT_EVERY == 1:
            log.warning("CoAP: undecodable datagrams dropped (%d so far; the last: %s)", self.count, error)
        return False


class CoapServer:
    """A running plain-UDP CoAP listener (:func:`start_server`)."""

    def __init__(self, site: CoapSite, context: aiocoap.Context, host: str, port: int) -> None:
        self.site = site
        self.context = context
        self.host = host
        self.port = port
        #: datagrams aiocoap could not decode (see :class:`UndecodableDatagrams`)
        self.undecodable = UndecodableDatagrams()
        logging.getLogger("asyncio").addFilter(self.undecodable)

    async def stop(self) -> None:
        """Refuse new requests, end the observations (a final 5.03 each), close the socket."""
        self.site.closing = True
        try:
            await self.site.end_observations()
            await self.context.shutdown()
        finally:
            logging.getLogger("asyncio").removeFilter(self.undecodable)


async def start_server(handler: Handler, config: CoapConfig, max_request_bytes: int,
                       clock: Callable[[], float] = time.monotonic,
                       notify_tuning: type[aiocoap.Reliable] = aiocoap.Reliable) -> CoapServer:  # fmt: skip
    """Listen on ``config.bind`` (plain UDP) and serve every request through ``handler``.

    Raises OSError when the address cannot be bound, ValueError when ``config.bind`` is None.
    """
    if config.bind is None:
        raise ValueError("no plain CoAP listener configured (coap.bind)")
    host, port = config.bind
    site = CoapSite(handler, config, max_request_bytes, clock, notify_tuning)
    # aiocoap logs each malformed datagram at warning level: a flood of them must not flood the log.
    udp_log = logging.getLogger("lowband.coap.udp")
    if udp_log.level == logging.NOTSET:
        udp_log.setLevel(logging.ERROR)
    try:
        context = await aiocoap.Context.create_server_context(site, bind=(host, port), loggername="lowband.coap.udp",
                                                              transports=["udp6"])  # fmt: skip
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen for CoAP on UDP {host}:{port}: {exc.strerror}") from None
    log.info("CoAP API (plain UDP) listening on %s:%d", host, port)
    return CoapServer(site, context, host, port)
