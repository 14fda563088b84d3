"""Blockwise transfer (RFC 7959) for transports that do not have aiocoap: sans-I/O, bounded.

Server side: :class:`Block1Assembler` puts request bodies sent with Block1
back together (bounded in total size, per peer and overall), and
:class:`Block2Cache` keeps a whole response for a short while and serves it
block by block (:func:`response_block` slices one). Client side:
:class:`Block2Fetcher` asks for a large response block by block, and
:class:`Block1Sender` sends a large body block by block. Neither side does
I/O: they take and return :class:`~lowband.codecs.coap.Message` values; the
message layer (``messaging.Endpoint``) fills message IDs and tokens.

A request is identified across its blocks by :func:`request_key`: its code
and options without the block options (RFC 7959 §2.4: tokens may differ
from block to block).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from lowband.codecs.coap import (
    ACK,
    BAD_OPTION,
    BAD_REQUEST,
    CONTINUE,
    OPT_BLOCK1,
    OPT_BLOCK2,
    OPT_ETAG,
    OPT_OBSERVE,
    OPT_SIZE1,
    OPT_SIZE2,
    REQUEST_ENTITY_INCOMPLETE,
    REQUEST_ENTITY_TOO_LARGE,
    Block,
    CoapFormatError,
    Message,
    block_size,
)
from lowband.codecs.errors import WireError

__all__ = [
    "Block1Assembler",
    "Block1Continue",
    "Block1Done",
    "Block1Refused",
    "Block1Sender",
    "Block2Cache",
    "Block2Fetcher",
    "BlockwiseError",
    "request_key",
    "response_block",
]

#: Options that change from block to block of one request, so they are not part of its identity.
_BLOCK_OPTIONS = frozenset({OPT_BLOCK1, OPT_BLOCK2, OPT_SIZE1, OPT_SIZE2, OPT_OBSERVE})


class BlockwiseError(WireError):
    """The peer broke a blockwise transfer (a block out of order, a changed representation, too much data)."""


def request_key(msg: Message) -> tuple[Hashable, ...]:
    """What identifies a request across its blocks: its code and its options other than
    Block1, Block2, Size1, Size2 and Observe."""
    return (msg.code, tuple(o for o in msg.options if o[0] not in _BLOCK_OPTIONS))


# ---------------------------------------------------------------------------- server: Block1


@dataclass(frozen=True)
class Block1Continue:
    """Block accepted, more to come: answer 2.31 Continue with this Block1 option (:meth:`response`)."""

    block: Block

    def response(self) -> Message:
        """The 2.31 Continue answer (type and IDs are filled by the message layer)."""
        return Message(ACK, CONTINUE, options=((OPT_BLOCK1, self.block.encode()),))


@dataclass(frozen=True)
class Block1Done:
    """The last block arrived: ``body`` is the whole request body; echo ``block`` as Block1 in the final
    response (None: the request came whole, without Block1)."""

    body: bytes
    block: Block | None


@dataclass(frozen=True)
class Block1Refused:
    """The transfer cannot go on: answer ``code`` (4.08, 4.13 with Size1, or 4.00), see :meth:`response`."""

    code: int
    reason: str
    size1: int | None = None

    def response(self) -> Message:
        """The error answer, with Size1 (the largest body we take) on 4.13."""
        options = ((OPT_SIZE1, _uint(self.size1)),) if self.size1 is not None else ()
        return Message(ACK, self.code, options=options, payload=self.reason.encode())


Block1Outcome = Block1Continue | Block1Done | Block1Refused


def _uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


@dataclass
class _Assembly:
    body: bytearray
    last_activity: float


class Block1Assembler:
    """Reassembles Block1 request bodies, one per (peer, request key).

    Bounds: a body over ``max_body`` bytes is refused with 4.13 (and Size1 = ``max_body``, also
    when the client announces a larger Size1, on any block or on a request sent whole); at most
    ``per_peer`` assemblies per peer and ``max_assemblies`` in all, the oldest forgotten first (its
    next block then gets 4.08); at most ``max_bytes`` held by all assemblies together (default
    ``max_assemblies × max_body``), the least recently fed forgotten first; an assembly idle for
    ``lifetime`` seconds is forgotten. A block that does not continue the body exactly where it
    stands (missing, repeated or overlapping) gets 4.08 and ends the assembly: the client starts
    again from block 0.
    """

    def __init__(
        self,
        *,
        max_body: int = 64 * 1024,
        per_peer: int = 2,
        max_assemblies: int = 64,
        max_bytes: int | None = None,
        lifetime: float = 60.0,
    ) -> None:
        self.max_body = max_body
        self.per_peer = per_peer
        self.max_assemblies = max_assemblies
        self.max_bytes = max_assemblies * max_body if max_bytes is None else max_bytes
        self.lifetime = lifetime
        self._assemblies: OrderedDict[tuple[Hashable, Hashable], _Assembly] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._assemblies)

    @property
    def held_bytes(self) -> int:
        """Bytes held in unfinished assemblies (at most ``max_bytes``)."""
        return self._bytes

    def feed(self, peer: Hashable, request: Message, now: float) -> Block1Outcome:
        """Take one request carrying a Block1 option; say what to answer.

        A request without Block1 is the whole body at once (:class:`Block1Done` with no block).
        A malformed Block1 or Size1 gives :class:`Block1Refused` with 4.02.
        """
        self.expire(now)
        try:
            block = request.block1
            announced = request.uint_opt(OPT_SIZE1)
        except CoapFormatError as exc:
            return Block1Refused(BAD_OPTION, str(exc))
        if announced is not None and announced > self.max_body:  # RFC 7959 §4: refuse before the bytes come
            if block is not None:
                self._drop((peer, request_key(request)))
            return self._too_large()
        if block is None:
            if len(request.payload) > self.max_body:
                return self._too_large()
            return Block1Done(request.payload, None)
        slot = (peer, request_key(request))
        payload = request.payload
        if block.more and len(payload) != block.size:
            self._drop(slot)
            return Block1Refused(BAD_REQUEST, f"block {block.num} has {len(payload)} bytes, not {block.size}")
        if len(payload) > block.size:
            self._drop(slot)
            return Block1Refused(BAD_REQUEST, f"block {block.num} is larger than its size {block.size}")
        if block.num == 0:
            assembly = _Assembly(bytearray(), now)
            self._drop(slot)
            self._make_room(peer)
            self._assemblies[slot] = assembly
        else:
            found = self._assemblies.get(slot)
            if found is None:
                return Block1Refused(REQUEST_ENTITY_INCOMPLETE, f"block {block.num} without the blocks before it")
            assembly = found
            if block.offset != len(assembly.body):
                self._drop(slot)
                return Block1Refused(
                    REQUEST_ENTITY_INCOMPLETE, f"block {block.num} at {block.offset}, expected {len(assembly.body)}"
                )
        if len(assembly.body) + len(payload) > min(self.max_body, self.max_bytes):
            self._drop(slot)
            return self._too_large()
        assembly.body += payload
        self._bytes += len(payload)
        assembly.last_activity = now
        self._assemblies.move_to_end(slot)
        while self._bytes > self.max_bytes:  # the least recently fed go first; this one is the most recent
            self._drop(next(iter(self._assemblies)))
        if block.more:
            return Block1Continue(Block(block.num, True, block.szx))
        self._drop(slot)
        return Block1Done(bytes(assembly.body), Block(block.num, False, block.szx))

    def expire(self, now: float) -> None:
        """Forget assemblies idle for longer than ``lifetime``."""
        for slot in [s for s, a in self._assemblies.items() if now - a.last_activity > self.lifetime]:
            self._drop(slot)

    def _drop(self, slot: tuple[Hashable, Hashable]) -> None:
        assembly = self._assemblies.pop(slot, None)
        if assembly is not None:
            self._bytes -= len(assembly.body)

    def _make_room(self, peer: Hashable) -> None:
        mine = [slot for slot in self._assemblies if slot[0] == peer]
        while len(mine) >= self.per_peer:
            self._drop(mine.pop(0))
        while len(self._assemblies) >= self.max_assemblies:
            self._drop(next(iter(self._assemblies)))

    def _too_large(self) -> Block1Refused:
        return Block1Refused(REQUEST_ENTITY_TOO_LARGE, f"body over {self.max_body} bytes", self.max_body)


# ---------------------------------------------------------------------------- server: Block2


def response_block(response: Message, num: int, szx: int) -> Message | None:
    """Block ``num`` (of ``16 << szx`` bytes) of a whole ``response``, with Block2 (and Size2 on block 0).

    The response's options are kept; None when ``num`` starts beyond the end (answer 4.02 Bad
    Option, RFC 7959 §2.2). A response that fits in one block comes back whole, without Block2,
    when block 0 is asked for.
    """
    size = block_size(szx)
    total = len(response.payload)
    start = num * size
    if num == 0 and total <= size:
        return response
    if start >= total and not (num == 0 and total == 0):
        return None
    piece = response.payload[start : start + size]
    more = start + size < total
    options = [o for o in response.options if o[0] not in (OPT_BLOCK2, OPT_SIZE2)]
    options.append((OPT_BLOCK2, Block(num, more, szx).encode()))
    if num == 0:
        options.append((OPT_SIZE2, _uint(total)))
    return dataclasses.replace(response, options=tuple(options), payload=piece)


@dataclass
class _Cached:
    response: Message
    expires: float


class Block2Cache:
    """Whole responses kept per (peer, request key) for ``lifetime`` seconds, served block by block.

    The handler runs once for block 0; the later blocks come from here, so every block is cut
    from the same representation. With ``etag=True`` a response without an ETag gets one (the
    first 4 bytes of its payload's SHA-256) so a client notices when a re-run gives another
    representation. Bounded by ``max_entries`` and ``max_bytes`` (the oldest go first).
    """

    def __init__(
        self, *, lifetime: float = 30.0, max_entries: int = 64, max_bytes: int = 1 << 20, etag: bool = False
    ) -> None:
        self.lifetime = lifetime
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.etag = etag
        self._entries: OrderedDict[tuple[Hashable, Hashable], _Cached] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def first(self, peer: Hashable, request: Message, response: Message, szx: int, now: float) -> Message:
        """Block 0 of a fresh ``response`` to ``request``; keeps the response when more blocks follow.

        ``szx`` is the block size: the smaller of the client's Block2 SZX and ours.
        """
        if self.etag and response.opt(OPT_ETAG) is None and len(response.payload) > block_size(szx):
            response = response.with_option(OPT_ETAG, hashlib.sha256(response.payload).digest()[:4])
        block = response_block(response, 0, szx)
        assert block is not None  # block 0 always exists
        if block is not response:
            self._put((peer, request_key(request)), response, now)
        return block

    def block(self, peer: Hashable, request: Message, num: int, szx: int, now: float) -> Message | None:
        """Block ``num`` of the kept response to ``request``; None when none is kept (expired or evicted:
        run the request again and use :meth:`first`'s response with :func:`response_block`) or
        when ``num`` is beyond its end."""
        self.expire(now)
        cached = self._entries.get((peer, request_key(request)))
        if cached is None:
            return None
        return response_block(cached.response, num, szx)

    def expire(self, now: float) -> None:
        """Forget responses older than ``lifetime``."""
        for slot in [s for s, c in self._entries.items() if c.expires <= now]:
            self._drop(slot)

    def _put(self, slot: tuple[Hashable, Hashable], response: Message, now: float) -> None:
        self._drop(slot)
        size = len(response.payload)
        if size > self.max_bytes:
            return  # too large to keep: later blocks will run the request again
        while self._entries and (len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes):
            self._drop(next(iter(self._entries)))
        self._entries[slot] = _Cached(response, now + self.lifetime)
        self._bytes += size

    def _drop(self, slot: tuple[Hashable, Hashable]) -> None:
        cached = self._entries.pop(slot, None)
        if cached is not None:
            self._bytes -= len(cached.response.payload)


# ---------------------------------------------------------------------------- client


class Block2Fetcher:
    """Fetch a response block by block (client side of Block2).

    ``first_request()`` is the request to send (with Block2 asking for ``szx``-sized blocks when
    ``szx`` is given); give each response to :meth:`feed`, which returns the next request to send
    or None when :attr:`response` holds the whole response. Raises :class:`BlockwiseError` for a
    block out of order, a representation that changed (ETag), a block of the wrong size, or a body
    over ``max_body``.
    """

    def __init__(self, request: Message, *, szx: int | None = 6, max_body: int = 1 << 20) -> None:
        self._request = request.without_option(OPT_BLOCK2)
        self._szx = szx
        self._max_body = max_body
        self._body = bytearray()
        self._first: Message | None = None
        self.response: Message | None = None

    def first_request(self) -> Message:
        """The request for block 0."""
        if self._szx is None:
            return self._request
        return self._request.with_option(OPT_BLOCK2, Block(0, False, self._szx).encode())

    def feed(self, response: Message) -> Message | None:
        """Take the response to the last request; the next request, or None when done."""
        if self.response is not None:
            raise BlockwiseError("the transfer is already complete")
        try:
            block = response.block2
        except CoapFormatError as exc:
            raise BlockwiseError(str(exc)) from None
        if response.code >> 5 != 2 or (block is None and self._first is None):
            self.response = response  # an error, or the whole response at once
            return None
        if block is None:
            raise BlockwiseError("a later block came without Block2")
        if self._first is None:
            if block.num != 0:
                raise BlockwiseError(f"first block is number {block.num}")
            self._first = response
        elif response.opt(OPT_ETAG) != self._first.opt(OPT_ETAG):
            raise BlockwiseError("the representation changed between blocks (ETag)")
        if block.offset != len(self._body):
            raise BlockwiseError(f"block {block.num} at {block.offset}, expected {len(self._body)}")
        if block.more and len(response.payload) != block.size:
            raise BlockwiseError(f"block {block.num} has {len(response.payload)} bytes, not {block.size}")
        if len(self._body) + len(response.payload) > self._max_body:
            raise BlockwiseError(f"response over {self._max_body} bytes")
        self._body += response.payload
        if not block.more:
            head = self._first.without_option(OPT_BLOCK2).without_option(OPT_SIZE2)
            self.response = dataclasses.replace(head, payload=bytes(self._body))
            return None
        # The server chose the block size (it may be smaller than we asked): keep to it.
        next_block = Block(len(self._body) // block.size, False, block.szx)
        return self._request.without_option(OPT_OBSERVE).with_option(OPT_BLOCK2, next_block.encode())


class Block1Sender:
    """Send a request body block by block (client side of Block1).

    ``first_request()`` is block 0 (with Size1, the whole size); give each response to
    :meth:`feed`, which returns the next block's request, or None when :attr:`response` is the
    final response (2.xx after the last block, or any error on the way). The server may ask for
    smaller blocks in its 2.31; a 2.31 for a block we did not send raises :class:`BlockwiseError`.
    A body that fits in one block is sent whole, without Block1.
    """

    def __init__(self, request: Message, *, szx: int = 6) -> None:
        self._request = request.without_option(OPT_BLOCK1).without_option(OPT_SIZE1)
        self._body = request.payload
        self._szx = szx
        self._block: Block | None = None
        self.response: Message | None = None

    def first_request(self) -> Message:
        """The request carrying block 0 (or the whole body when it fits in one block)."""
        if len(self._body) <= block_size(self._szx):
            return self._request
        request = self._block_request(Block(0, True, self._szx))
        return request.with_option(OPT_SIZE1, _uint(len(self._body)))

    def _block_request(self, block: Block) -> Message:
        self._block = block
        piece = self._body[block.offset : block.offset + block.size]
        return dataclasses.replace(self._request, payload=piece).with_option(OPT_BLOCK1, block.encode())

    def feed(self, response: Message) -> Message | None:
        """Take the response to the last block; the next request, or None when done."""
        if self.response is not None:
            raise BlockwiseError("the transfer is already complete")
        sent = self._block
        if sent is None or not sent.more or response.code != CONTINUE:
            self.response = response
            return None
        try:
            echoed = response.block1
        except CoapFormatError as exc:
            raise BlockwiseError(str(exc)) from None
        if echoed is None or echoed.num != sent.num:
            raise BlockwiseError("2.31 Continue without the Block1 of the block sent")
        szx = min(echoed.szx, sent.szx)
        done = sent.offset + sent.size
        size = block_size(szx)
        more = done + size < len(self._body)
        return self._block_request(Block(done // size, more, szx))
