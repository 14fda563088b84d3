"""Reader workers: more gateway processes serving the reads of one PostgreSQL store (docs/scaling.md).

``lowband serve --workers N`` starts N worker processes beside the main one. Every process listens on the
same address (``SO_REUSEPORT``: the kernel hands each new connection to one of them). A worker answers the
requests in :data:`LOCAL` itself, from the store, and forwards every other request to the main process over
loopback, unchanged, with the client's address; the main process is the only one that writes (room heads,
stream positions, typing, presence and the /sync wake-ups live there).

What a worker keeps in memory must not go stale behind the main process's writes, so it keeps little: room
heads and state events are held for one request (or one round of a /sync long-poll) at most (the main process
keeps both), access tokens are looked up per request (a logout in the main process ends them at once), the
newest committed event position is read per request, and whether a sender was erased is asked of the store,
once per sender and request. What a /sync needs of the main process's memory (positions judged, typing,
presence, wake-ups) comes over the feed it reads from the main process (homeserver/worker_feed.py); a /sync's
presence goes back with a POST.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from lowband.gateway.api.http import client_relations, client_rooms, client_sync, media
from lowband.gateway.api.http.base import READER_WORKER, ForwardToMain, json_body, services
from lowband.gateway.homeserver import worker_feed
from lowband.gateway.homeserver.presence import STATES
from lowband.gateway.homeserver.worker_feed import FeedError, FeedMirror, FeedSource
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
#: the main process's routes for its workers (loopback, with the secret only): the feed, a /sync's presence
FEED_PATH = "/_lowband/worker/v1/feed"
SYNCED_PATH = "/_lowband/worker/v1/synced"
#: services.components key of the main process's :class:`~lowband.gateway.homeserver.worker_feed.FeedSource`
FEED_SOURCE = "worker_feed"
#: presence updates a worker has in flight to the main process at most (more are left out: presence is advisory)
MAX_TELLING = 64

#: the handlers a worker runs itself: /sync and reads of stored events, state and media; none writes to a room
#: (/sync deletes the to-device messages its token acknowledges)
LOCAL: frozenset[Callable[..., Any]] = frozenset({
    client_sync.sync,
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
        self._feed: asyncio.Task[None] | None = None
        self._telling: set[asyncio.Task[None]] = set()
        #: presence updates left out because :data:`MAX_TELLING` were in flight
        self.untold = 0

    async def start(self) -> None:
        # no total timeout: a forwarded /sync long-poll waits as long as the client asked; connecting is bounded.
        # No pool limit either: one loopback connection per request in flight, as if the client had reached the
        # main process itself (whose own limits then apply); a limit would hold reads behind parked long-polls.
        timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_connect=10.0)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False,
                                              connector=aiohttp.TCPConnector(limit=0))  # fmt: skip

    async def close(self) -> None:
        if self._feed is not None:
            self._feed.cancel()
            await asyncio.gather(self._feed, return_exceptions=True)
        for task in list(self._telling):
            task.cancel()
        await asyncio.gather(*self._telling, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def follow_feed(self, mirror: FeedMirror, on_end: Callable[[], None], timeout_s: float = 60.0) -> None:
        """Read the main process's feed (worker_feed.py) into ``mirror`` until its snapshot is complete, then
        go on reading in a task; ``on_end`` is called when the feed ends (the worker then stops: started again
        by the main process, it reads a new snapshot). RuntimeError when the snapshot does not come."""
        assert self._session is not None
        try:
            answer = await self._session.get(URL(self.main_url + FEED_PATH), headers={SECRET_HEADER: self.secret},
                                             timeout=aiohttp.ClientTimeout(total=None, connect=10.0))  # fmt: skip
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise RuntimeError(f"the main process's feed cannot be reached: {exc}") from None
        if answer.status != 200:
            answer.release()
            raise RuntimeError(f"the main process refused its feed: HTTP {answer.status}")
        try:
            async with asyncio.timeout(timeout_s):
                while not mirror.ready:
                    line = await answer.content.readline()
                    if not line:
                        raise RuntimeError("the main process's feed ended before its snapshot was complete")
                    self._apply(mirror, line)
        except TimeoutError:
            answer.release()
            raise RuntimeError(f"the main process's snapshot was not complete within {timeout_s:g} s") from None
        except (aiohttp.ClientError, ConnectionError, ValueError) as exc:
            answer.release()
            raise RuntimeError(f"the main process's feed failed during its snapshot: {exc}") from None
        except BaseException:
            answer.release()
            raise
        self._feed = asyncio.create_task(self._read_feed(answer, mirror, on_end))

    def _apply(self, mirror: FeedMirror, line: bytes) -> None:
        try:
            mirror.apply(line)
        except FeedError as exc:
            mirror.refused += 1
            log.warning("worker %d: a line of the main process's feed was refused (%s; %d so far): %r", self.number,
                        exc, mirror.refused, line[:120])  # fmt: skip

    async def _read_feed(self, answer: aiohttp.ClientResponse, mirror: FeedMirror, on_end: Callable[[], None]) -> None:
        try:
            while True:
                async with asyncio.timeout(worker_feed.SILENCE_S):
                    line = await answer.content.readline()
                if not line:
                    log.warning("worker %d: the main process ended its feed; stopping", self.number)
                    break
                self._apply(mirror, line)
        except TimeoutError:
            log.warning("worker %d: nothing from the main process's feed in %g s; stopping", self.number,
                        worker_feed.SILENCE_S)  # fmt: skip
        except (aiohttp.ClientError, ConnectionError, ValueError) as exc:
            log.warning("worker %d: the main process's feed failed (%s); stopping", self.number, exc)
        finally:
            answer.release()
            on_end()

    def note_sync(self, user_id: str, set_presence: str) -> None:
        """A /sync's ``set_presence`` in this worker: told to the main process (which tracks presence) when it
        changes something there (:func:`worker_feed.must_tell`); in the background, at most :data:`MAX_TELLING`
        at once."""
        presence = self.services.sync.presence
        if presence is None or not worker_feed.must_tell(presence, user_id, set_presence, time.time()):
            return
        if len(self._telling) >= MAX_TELLING or self._session is None:
            self.untold += 1
            log.warning("worker %d: %s's presence left untold: %d updates already on their way to the main process "
                        "(%d left untold so far)", self.number, user_id, MAX_TELLING, self.untold)  # fmt: skip
            return
        task = asyncio.create_task(self._tell(user_id, set_presence))
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    async def _tell(self, user_id: str, set_presence: str) -> None:
        assert self._session is not None
        try:
            async with self._session.post(URL(self.main_url + SYNCED_PATH), headers={SECRET_HEADER: self.secret},
                                          json={"user_id": user_id, "set_presence": set_presence},
                                          timeout=aiohttp.ClientTimeout(total=10.0)) as answer:  # fmt: skip
                if answer.status != 200:
                    log.warning("worker %d: the main process refused %s's presence: HTTP %d", self.number, user_id,
                                answer.status)  # fmt: skip
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            log.warning("worker %d: %s's presence did not reach the main process: %s", self.number, user_id, exc)

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
        if request.path.startswith(WORKER_PATHS):  # the main process's routes for its workers: never a client's
            raise _workers_only()
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


#: the paths of the main process's routes for its workers
WORKER_PATHS = "/_lowband/worker/"


def _workers_only() -> MatrixError:
    """The refusal of the main process's routes for its workers to anyone else."""
    return MatrixError(403, "M_FORBIDDEN", "only this gateway's reader workers may ask this")


def _from_a_worker(request: web.Request) -> None:
    """403 unless a worker asks for itself: with the workers' secret (:func:`forwarded_by_workers` compared it)
    and without a client's address (which every request a worker forwards carries)."""
    if request.headers.get(SECRET_HEADER) is None or CLIENT_HEADER in request.headers:
        raise _workers_only()


async def feed(request: web.Request) -> web.StreamResponse:
    """GET the feed (worker_feed.py): the snapshot, then every change, until the worker goes or falls behind."""
    _from_a_worker(request)
    svc = services(request)
    source = svc.components.get(FEED_SOURCE)
    if not isinstance(source, FeedSource):
        raise MatrixError(404, "M_UNRECOGNIZED", "this gateway has no reader workers")
    sub = source.subscribe()
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
    try:
        await response.prepare(request)
        while not sub.overflowed and not svc.notifier.closed:
            if not sub.lines:
                try:
                    async with asyncio.timeout(worker_feed.HEARTBEAT_S):
                        await sub.waiting.wait()
                except TimeoutError:
                    sub.put(source.pos_line())
            if sub.overflowed:
                break
            await response.write(sub.take())
    except ConnectionError:
        pass  # the worker went: its queue goes with it
    finally:
        source.unsubscribe(sub)
    return response


async def synced(request: web.Request) -> web.Response:
    """POST a worker's /sync ``set_presence`` for a user: ``{"user_id": U, "set_presence": S}``."""
    _from_a_worker(request)
    body = await json_body(request)
    user_id, set_presence = body.get("user_id"), body.get("set_presence")
    if not isinstance(user_id, str) or not 0 < len(user_id) <= 255 or set_presence not in STATES:
        raise MatrixError(400, "M_BAD_JSON", "user_id (1 to 255 characters) and set_presence (online, unavailable "
                                             "or offline) are required")  # fmt: skip
    presence = services(request).sync.presence
    if presence is not None:
        presence.synced(user_id, set_presence)
    return web.json_response({})


def feed_routes() -> list[web.RouteDef]:
    """The main process's routes for its workers."""
    return [web.get(FEED_PATH, feed), web.post(SYNCED_PATH, synced)]
