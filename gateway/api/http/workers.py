"""Reader workers: more gateway processes serving the reads of one PostgreSQL store (docs/scaling.md).

``lowband serve --workers N`` starts N worker processes beside the main one. Every process listens on the
same address (``SO_REUSEPORT``: the kernel hands each new connection to one of them). A worker answers the
requests in :data:`LOCAL` itself, from the store, and forwards every other request to the main process over
loopback, unchanged, with the client's address; the main process is the only one that writes (room heads,
stream positions, typing, presence and the /sync wake-ups live there).

What a worker keeps in memory must not go stale behind the main process's writes, so it keeps little: room
heads and state events are held for one request at most (the main process keeps both), access tokens are
looked up per request (a logout in the main process ends them at once), the newest committed event position
is read per request, and whether a sender was erased is asked of the store, once per sender and request.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from lowband.gateway.api.http import client_relations, client_rooms, media
from lowband.gateway.api.http.base import READER_WORKER, ForwardToMain
from lowband.gateway.matrix.errors import MatrixError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: request headers the worker adds to a forwarded request; the main process believes them only with the secret
SECRET_HEADER = "X-Lowband-Worker-Secret"
CLIENT_HEADER = "X-Lowband-Client-Address"
#: response header of a request a worker answered itself: its number (1..N)
SERVED_BY_HEADER = "X-Lowband-Worker"
#: request key: a worker runs the request's handler itself
SERVED_HERE = web.RequestKey("served_here", bool)

#: the handlers a worker runs itself: reads of stored events, state and media, none of which writes
LOCAL: frozenset[Callable[..., Any]] = frozenset({
    client_rooms.messages,
    client_rooms.get_event,
    client_rooms.get_state,
    client_rooms.get_state_event,
    client_rooms.members,
    client_rooms.joined_members,
    client_relations.get_relations,
    client_relations.get_threads,
    client_relations.get_context,
    media.download,
    media.legacy_download,
    media.thumbnail,
    media.legacy_thumbnail,
})

#: headers that describe one connection, not the request: never passed on (RFC 9110 section 7.6.1)
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                         "upgrade", "host", SECRET_HEADER.lower(), CLIENT_HEADER.lower()})  # fmt: skip


#: headers aiohttp's client would add of its own: the main process sees the client's, or none
_CLIENT_DEFAULTS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class ReaderWorker:
    """A worker's link to its main process: forwards requests there over one connection pool."""

    def __init__(self, number: int, main_url: str, secret: str, services: Any) -> None:
        self.number = number
        self.services = services
        self.main_url = main_url.rstrip("/")
        self.secret = secret
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # no total timeout: a forwarded /sync long-poll waits as long as the client asked; connecting is bounded.
        # No pool limit either: one loopback connection per request in flight, as if the client had reached the
        # main process itself (whose own limits then apply); a limit would hold reads behind parked long-polls.
        timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_connect=10.0)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False,
                                              connector=aiohttp.TCPConnector(limit=0))  # fmt: skip

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Send ``request`` to the main process and stream its answer back (502 when it cannot be reached)."""
        if self._session is None:
            raise MatrixError(503, "M_UNKNOWN", "the gateway is stopping")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers[SECRET_HEADER] = self.secret
        headers[CLIENT_HEADER] = request.remote or ""
        body = request.content.iter_chunked(65536) if request.body_exists else None
        try:
            # the path as the client sent it, percent-escapes and all (%2F in a state key is not a slash)
            url = URL(self.main_url + request.raw_path, encoded=True)
            async with self._session.request(request.method, url, headers=headers, data=body, allow_redirects=False,
                                              skip_auto_headers=_CLIENT_DEFAULTS) as answer:  # fmt: skip
                response = web.StreamResponse(status=answer.status, reason=answer.reason)
                for key, value in answer.headers.items():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        response.headers.add(key, value)
                if answer.content_length is not None:
                    response.content_length = answer.content_length
                await response.prepare(request)
                async for chunk in answer.content.iter_chunked(65536):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, ConnectionError) as exc:
            log.warning("worker %d: forwarding %s %s to the main process failed: %s", self.number, request.method,
                        request.path, exc)  # fmt: skip
            raise MatrixError(502, "M_UNKNOWN", "the gateway's main process cannot be reached") from None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run a :data:`LOCAL` handler here, forward the rest (and what raises :class:`ForwardToMain`)."""
        if request.match_info.handler not in LOCAL:
            return await self.forward(request)
        # what the main process committed up to now, not when this process started (read your writes); heads
        # and state events are held for one request at most
        self.services.store.see_committed_events()
        self.services.rooms.lookups.forget_cached()
        self.services.sync.erased.forget()  # an ErasedInStore (app.run_worker)
        request[SERVED_HERE] = True
        try:
            response = await handler(request)
        except ForwardToMain:
            request[SERVED_HERE] = False
            return await self.forward(request)
        return response

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Name this worker on every answer it gave itself, errors too (aiohttp's on_response_prepare)."""
        if request.get(SERVED_HERE):
            response.headers[SERVED_BY_HEADER] = str(self.number)


def reader_worker_of(services: Any) -> ReaderWorker | None:
    """The process's :class:`ReaderWorker` when it is a worker, else None."""
    found = services.components.get(READER_WORKER)
    return found if isinstance(found, ReaderWorker) else None


def forwarded_by_workers(secret: str) -> Callable[..., Any]:
    """Middleware of the main process: a request forwarded by one of its workers (it carries the secret) is
    served as coming from the client's address; a request carrying the headers without the secret is refused."""

    expected = secret.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(SECRET_HEADER)
        if given is None:
            return await handler(request)
        if not hmac.compare_digest(given.encode(), expected):
            # before matrix_errors (it must run before every rate limit): aiohttp's own error, a JSON body
            raise web.HTTPForbidden(text='{"errcode":"M_FORBIDDEN","error":"not a request from one of this '
                                         'gateway\'s workers"}', content_type="application/json")
        client = request.headers.get(CLIENT_HEADER)
        return await handler(request.clone(remote=client) if client else request)

    return middleware
