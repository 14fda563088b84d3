"""The aiohttp application: routes from each API module, errors as Matrix JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lowband.gateway.api.http import (
    client_account,
    client_appservice,
    client_auth,
    client_keys,
    client_legacy,
    client_misc,
    client_presence,
    client_push,
    client_relations,
    client_retention,
    client_room_keys,
    client_rooms,
    client_search,
    client_sync,
    client_tags,
    client_thirdparty,
    client_timestamp,
    federation_base,
    federation_keys,
    federation_query,
    federation_rooms,
    media,
    metrics,
    status,
    status_page,
    workers,
)
from lowband.gateway.api.http.base import SERVICES, read_limit
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}


def _error_response(http_status: int, errcode: str, message: str, **extra: object) -> web.Response:
    body = json.dumps({"errcode": errcode, "error": message, **extra})
    return web.Response(status=http_status, text=body, content_type="application/json", headers=_CORS)


@web.middleware
async def matrix_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the spec's JSON error body; add CORS headers."""
    if request.method == "OPTIONS":
        return web.Response(headers=_CORS)
    try:
        response = await handler(request)
    except MatrixError as exc:
        if not exc.errcode:  # a user-interactive auth challenge before any attempt: no error (homeserver/uia.py)
            return web.json_response(exc.extra, status=exc.status, headers=_CORS)
        refused = _error_response(exc.status, exc.errcode, exc.message, **exc.extra)
        if exc.status == 408:  # the rest of a body that came too slowly is not waited for
            refused.force_close()
        return refused
    except web.HTTPRequestEntityTooLarge:
        return _error_response(413, "M_TOO_LARGE", "the request body is too large")
    except web.HTTPMethodNotAllowed:
        return _error_response(405, "M_UNRECOGNIZED", "method not allowed on this endpoint")
    except web.HTTPNotFound:
        return _error_response(404, "M_UNRECOGNIZED", "unrecognized request")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error_response(exc.status, "M_UNKNOWN", exc.reason)
        raise
    except Exception:
        log.exception("error handling %s %s", request.method, request.path)
        return _error_response(500, "M_UNKNOWN", "internal server error")
    if not response.prepared:
        response.headers.update(_CORS)
    return response


@web.middleware
async def plain_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a request body sent compressed (``Content-Encoding`` other than identity), before reading it.

    Inflating is where a 10 KB request becomes 10 MB; no Matrix client or server compresses requests. The
    server runs with aiohttp's ``auto_decompress`` off, so nothing is inflated even while this answers.
    """
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise MatrixError(415, "M_UNKNOWN", "compressed request bodies (Content-Encoding) are not accepted")
    return await handler(request)


@web.middleware
async def no_nul_in_path(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a path with a NUL character (``%00``) in it: no Matrix identifier, event type or state key holds
    one, and the PostgreSQL store cannot keep or look up such text (400 M_INVALID_PARAM on either store)."""
    if "\x00" in request.path:
        raise MatrixError(400, "M_INVALID_PARAM", "the request path holds a NUL character")
    return await handler(request)


_READ_PREFIXES = ("/_matrix/client/", "/_matrix/media/")


@web.middleware
async def bounded_reads(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every client and media API GET takes from its user's (or address's) read bucket: 429 when empty.

    Writes have their own buckets in the handlers; federation is bounded per request (federation_base).
    """
    if request.method in ("GET", "HEAD") and request.path.startswith(_READ_PREFIXES):
        read_limit(request)
    return await handler(request)


def make_app(services: Services, *, workers_secret: str | None = None) -> web.Application:
    """The application serving the client-server, media and server-server APIs.

    In a reader worker (``services`` holds a :class:`~.workers.ReaderWorker`) only the reads of
    :data:`.workers.LOCAL` run here; the rest go to the main process. ``workers_secret``: the main process of
    reader workers, which serves their forwarded requests as coming from the client (docs/scaling.md).
    """
    # The largest body any endpoint takes is a media upload; JSON endpoints
    # check their own, smaller limit in json_body via max_request_bytes.
    limit = max(services.config.max_upload_bytes, services.config.max_request_bytes)
    # The metrics are made before the app so their middleware can come first: it sees every final status.
    gateway_metrics = metrics.GatewayMetrics(services)
    middlewares: list[Any] = [gateway_metrics.middleware(), matrix_errors, no_nul_in_path, plain_bodies, bounded_reads,
                              federation_base.bounded_bodies]  # fmt: skip
    worker = workers.reader_worker_of(services)
    if worker is not None:  # after matrix_errors (a 502 is a Matrix error), before every limit: the main applies them
        middlewares.insert(2, worker.middleware)
    if workers_secret is not None:  # first: every later middleware sees the client's address
        middlewares.insert(0, workers.forwarded_by_workers(workers_secret))
    app = web.Application(middlewares=middlewares, client_max_size=limit)
    if worker is not None:
        app.on_response_prepare.append(worker.on_response_prepare)
    app[SERVICES] = services
    metrics.install(app, services, gateway_metrics)
    status.add_status_routes(app)  # GET /_lowband/admin/v1/status (admin only), docs/status.md
    status_page.install(app, services)  # the status web page, device readings, live events (docs/status.md)
    app[federation_base.BODY_BUDGET] = federation_base.BodyBudget()
    app[media.UPLOADS_IN_FLIGHT] = {}
    for module in (client_account, client_appservice, client_auth, client_keys, client_rooms, client_sync, client_misc,
                   client_presence, client_relations, client_room_keys, client_thirdparty, client_timestamp, media,
                   federation_keys, federation_query, federation_rooms):  # fmt: skip
        app.router.add_routes(module.routes())
    for module in (client_legacy, client_push, client_search, client_tags):  # push, search, directory, tags, legacy
        app.router.add_routes(module.routes())
    app.router.add_routes(client_retention.routes())  # MSC1763 retention configuration (docs/retention.md)
    if workers_secret is not None:  # the feed of the workers' /sync and their presence updates (worker_feed.py)
        app.router.add_routes(workers.feed_routes())
    return app
