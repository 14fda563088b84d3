"""Serve one HTTP request through the gateway's own aiohttp server, in memory, with no socket.

The CoAP API must behave exactly like the HTTP API: same handlers, same
middlewares (errors, read limits, metrics), same per-address rate limits.
So each CoAP request becomes one HTTP/1.1 request fed to a fresh protocol
from the HTTP API's ``aiohttp.web.Server`` (a protocol factory, public API:
``server()`` returns an ``asyncio.Protocol``), over a small
``asyncio.Transport`` of our own that reports the CoAP peer as
``peername`` and collects what the protocol writes. The request says
``Connection: close``, so aiohttp closes the transport once the response
is written; the collected bytes are then parsed.

Split as STYLE asks: :func:`build_request` and :func:`parse_response` are
pure (bytes in, bytes or values out); :class:`InProcessHttp` is the thin
runtime part that owns the loop work (transport, timeout, size cap).

Limit: an answer aiohttp sends with ``loop.sendfile`` (``web.FileResponse``, i.e. media downloads) cannot be
served this way: asyncio's sendfile refuses every transport but its own socket transports (it looks for
a private attribute of theirs), so such an answer arrives cut short and is refused as ``"malformed"``.
The CoAP mapping keeps media paths away (MSC3079 leaves media to HTTP).

Errors: everything this module refuses or cannot finish is one
:class:`InProcError`, whose ``kind`` says why (see there).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

#: default cap on one response, status line and headers included (bytes): /sync answers of busy rooms fit
DEFAULT_MAX_RESPONSE_BYTES = 4 << 20
#: default bound on one request, long enough for a /sync long-poll (its own timeout is at most a minute or so)
DEFAULT_TIMEOUT_S = 120.0
#: headers and chunk-size lines longer than this are malformed (aiohttp's own line limit is 8190)
_MAX_LINE = 16 * 1024


class InProcError(Exception):
    """An in-memory HTTP exchange that could not be made or finished.

    ``kind`` is one of:

    * ``"refused"``: the request cannot be written as HTTP/1.1 (a header value with CR, LF or NUL, a
      value outside Latin-1, a target with spaces); the caller's input is at fault (answer 4.00);
    * ``"too_large"``: the response grew past the size cap; the exchange was cut (answer 5.00, logged);
    * ``"timeout"``: no complete response within the time bound (answer 5.04);
    * ``"malformed"``: what the server wrote does not parse as an HTTP/1.1 response (answer 5.00).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class HttpAnswer:
    """A parsed HTTP response: header names lower-cased, in order, repeated names kept."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None


# ----------------------------------------------------------------------------------------------- pure part


def _check_text(value: str, what: str) -> bytes:
    if any(c in value for c in "\r\n\0"):
        raise InProcError("refused", f"{what} contains CR, LF or NUL")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise InProcError("refused", f"{what} is not Latin-1 text") from None


def build_request(method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """The bytes of one HTTP/1.1 request that closes its connection after the answer.

    ``target`` is the origin-form request target (path and query, already percent-encoded);
    ``headers`` must not include Content-Length or Connection (added here). Raises
    :class:`InProcError` ``"refused"`` for a method, target or header that HTTP/1.1 cannot carry.
    """
    if not method.isalpha() or not method.isascii():
        raise InProcError("refused", "the method is not an HTTP token")
    if not target.startswith("/") or not target.isascii() or any(c <= " " or c == "\x7f" for c in target):
        raise InProcError("refused", "the request target is not an origin-form ASCII path")
    lines = [f"{method} {target} HTTP/1.1".encode("ascii")]
    for name, value in headers:
        if not name.isascii() or not name.replace("-", "").isalnum():
            raise InProcError("refused", "a header name is not an HTTP token")
        lines.append(name.encode("ascii") + b": " + _check_text(value, f"the {name} header"))
    lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _split_head(data: bytes) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise InProcError("malformed", "the response has no complete header block")
    head, rest = data[:end].decode("latin-1").split("\r\n"), data[end + 4 :]
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise InProcError("malformed", "the response has no valid status line")
    headers: list[tuple[str, str]] = []
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or len(line) > _MAX_LINE:
            raise InProcError("malformed", "a response header line is not 'name: value'")
        headers.append((name.strip().lower(), value.strip()))
    return int(parts[1]), tuple(headers), rest


def _dechunk(data: bytes) -> bytes:
    body = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0 or eol - pos > _MAX_LINE:
            raise InProcError("malformed", "a chunk size line is missing or too long")
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise InProcError("malformed", "a chunk size is not hexadecimal") from None
        pos = eol + 2
        if size == 0:
            return bytes(body)  # trailers, if any, are of no use to the CoAP answer
        if size < 0 or pos + size + 2 > len(data) or data[pos + size : pos + size + 2] != b"\r\n":
            raise InProcError("malformed", "a chunk is truncated")
        body += data[pos : pos + size]
        pos += size + 2


def parse_response(data: bytes) -> HttpAnswer:
    """Parse one whole HTTP/1.1 response (the connection closed after it).

    The body is framed by Content-Length, chunked transfer coding, or the end of ``data``.
    Raises :class:`InProcError` ``"malformed"`` for anything else (no status line, bad header,
    truncated body or chunk).
    """
    status, headers, rest = _split_head(data)
    answer = HttpAnswer(status, headers, b"")
    coding = (answer.header("transfer-encoding") or "").lower()
    if "chunked" in coding:
        return HttpAnswer(status, headers, _dechunk(rest))
    length = answer.header("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > len(rest):
            raise InProcError("malformed", "the response body is shorter than its Content-Length")
        return HttpAnswer(status, headers, rest[: int(length)])
    if status in (204, 304) or 100 <= status < 200:
        return answer
    return HttpAnswer(status, headers, rest)


# -------------------------------------------------------------------------------------------- runtime part


class _MemoryTransport(asyncio.Transport):
    """What the aiohttp protocol writes to: collects bytes up to a cap, ends on close."""

    def __init__(self, peername: tuple[str, int], protocol: asyncio.BaseProtocol, cap: int) -> None:
        super().__init__(extra={"peername": peername})
        self._protocol = protocol
        self._cap = cap
        self._closing = False
        self.size = 0
        self.chunks: list[bytes] = []
        self.overflow = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self.size += len(data)
        if self.size > self._cap:
            self.overflow = True
            self.close()  # the handler sees a lost connection, as with a client that went away
            return
        self.chunks.append(bytes(data))

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        # As a socket transport does: the protocol learns of the close on the next loop turn.
        loop.call_soon(self._protocol.connection_lost, None)
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0  # every write is taken at once: the protocol never has to pause

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass  # the whole request is fed at once, there is nothing more to hold back

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class InProcessHttp:
    """Requests to the HTTP API served in memory by its aiohttp ``web.Server``.

    ``max_response_bytes`` caps one response (status line and headers included); ``timeout_s``
    bounds one exchange. Both apply to every :meth:`request`.
    """

    def __init__(self, server: web.Server, *, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:  # fmt: skip
        self.server = server
        self.max_response_bytes = max_response_bytes
        self.timeout_s = timeout_s

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes,
                      peer: tuple[str, int], timeout_s: float | None = None) -> HttpAnswer:  # fmt: skip
        """Serve one request from ``peer`` (host, port: the address rate limits and logs see).

        Raises :class:`InProcError`: ``"refused"`` before anything reached the server, ``"too_large"``,
        ``"timeout"`` (the handler is then told its connection was lost) or ``"malformed"``.
        """
        raw = build_request(method, target, headers, body)
        protocol: Any = self.server()
        transport = _MemoryTransport(peer, protocol, self.max_response_bytes)
        protocol.connection_made(transport)
        protocol.data_received(raw)
        try:
            async with asyncio.timeout(self.timeout_s if timeout_s is None else timeout_s):
                await asyncio.shield(transport.closed)
        except TimeoutError:
            transport.close()
            raise InProcError("timeout", f"no answer to {method} within the time bound") from None
        except asyncio.CancelledError:
            transport.close()  # the CoAP side gave up: the handler sees its client go away
            raise
        if transport.overflow:
            log.warning("in-memory HTTP answer to %s %s exceeded %d bytes; cut", method, target.split("?", 1)[0],
                        self.max_response_bytes)  # fmt: skip
            raise InProcError("too_large", f"the answer exceeded {self.max_response_bytes} bytes")
        return parse_response(b"".join(transport.chunks))
