"""What every server-server handler shares: the federation runtime, request bodies and authentication.

Rules:

* a body is at most :data:`MAX_FEDERATION_BODY` bytes (413; before
  reading anything when the length is announced);
* the bodies of federation and key requests held in memory at once, all
  peers together, are at most :data:`MAX_BUFFERED_BODIES` bytes: a request
  with a body reserves its announced length (the maximum when it is sent
  chunked) before its body is read and frees it once answered. One that
  finds no room within :data:`BODY_WAIT_S` is answered 429
  M_LIMIT_EXCEEDED (honest peers retry); one whose body has not arrived
  :data:`BODY_READ_S` after it was admitted is answered 408. So a flood of
  large transactions costs bounded memory, and a body sent slowly holds its
  room for a bounded time;
* a request is authenticated (``X-Matrix``) after its body is read, since
  the signature covers it; 401 M_UNAUTHORIZED unless it verifies (a request
  without a usable header is refused before its body is read).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import services
from lowband.gateway.federation.component import Federation, federation_of
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.matrix.request_auth import AuthHeaderError, parse_authorization, verify_request
from lowband.gateway.matrix.signing import SignatureError

FEDERATION = "/_matrix/federation/{version:v1|v2}"
FEDERATION_V1 = "/_matrix/federation/v1"
FEDERATION_V2 = "/_matrix/federation/v2"
#: The largest body a peer may send (a transaction of 50 PDUs of 64 KiB and 100 EDUs fits).
MAX_FEDERATION_BODY = 8 * 1024 * 1024
#: Bytes of federation request bodies in memory at once, all peers together (four of the largest).
MAX_BUFFERED_BODIES = 32 * 1024 * 1024
#: How long a request with a body waits for room among the buffered ones before it is answered 429.
BODY_WAIT_S = 10.0
#: How long an admitted body may take to arrive before it is answered 408.
BODY_READ_S = 30.0
_BODY_PREFIXES = ("/_matrix/federation/", "/_matrix/key/")


class BodyBudget:
    """Bytes of request bodies held at once: reserved before a body is read, released once it is answered."""

    def __init__(self, capacity: int = MAX_BUFFERED_BODIES) -> None:
        self.capacity = capacity
        self.used = 0
        self._freed = asyncio.Condition()

    async def reserve(self, size: int, timeout: float) -> bool:
        """Take ``size`` bytes (at most the capacity), waiting up to ``timeout`` s for room; whether it got them."""
        size = min(size, self.capacity)
        async with self._freed:
            try:
                await asyncio.wait_for(self._freed.wait_for(lambda: self.used + size <= self.capacity), timeout)
            except TimeoutError:
                return False
            self.used += size
            return True

    async def release(self, size: int) -> None:
        """Give back what :meth:`reserve` took."""
        async with self._freed:
            self.used -= min(size, self.capacity)
            self._freed.notify_all()


BODY_BUDGET = web.AppKey("federation_body_budget", BodyBudget)


@web.middleware
async def bounded_bodies(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:  # fmt: skip
    """Admit a federation request with a body once its bytes fit :data:`MAX_BUFFERED_BODIES` (429 after a wait)."""
    if request.method not in ("PUT", "POST") or not request.path.startswith(_BODY_PREFIXES):
        return await handler(request)
    announced = request.content_length
    if announced is not None and announced > MAX_FEDERATION_BODY:
        raise MatrixError(413, "M_TOO_LARGE", f"the request body is larger than {MAX_FEDERATION_BODY} bytes")
    if request.path.startswith("/_matrix/federation/"):
        try:  # refused before anything is read or reserved: no usable X-Matrix header
            parse_authorization(request.headers.get("Authorization"))
        except AuthHeaderError as exc:
            raise unauthorized(str(exc)) from None
    size = MAX_FEDERATION_BODY if announced is None else announced
    budget = request.app[BODY_BUDGET]
    if not await budget.reserve(size, BODY_WAIT_S):
        raise MatrixError(429, "M_LIMIT_EXCEEDED", "too many request bodies in memory; retry later",
                          retry_after_ms=1000)  # fmt: skip
    try:
        return await handler(request)
    finally:
        await budget.release(size)


def federation(request: web.Request) -> Federation:
    """The federation runtime; 403 M_FORBIDDEN when this gateway does not federate."""
    found = federation_of(services(request))
    if found is None:
        raise MatrixError(403, "M_FORBIDDEN", "federation is disabled on this server")
    return found


def unauthorized(message: str) -> MatrixError:
    """401 M_UNAUTHORIZED."""
    return MatrixError(401, "M_UNAUTHORIZED", message)


async def read_body(request: web.Request) -> Any:
    """The JSON body, or None when there is none; 400 M_NOT_JSON, 413 M_TOO_LARGE, 408 when it arrives too slowly."""
    too_large = MatrixError(413, "M_TOO_LARGE", f"the request body is larger than {MAX_FEDERATION_BODY} bytes")
    if (request.content_length or 0) > MAX_FEDERATION_BODY:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_READ_S):
            # read(n) returns what has arrived so far, not the whole body: gather chunks up to the limit
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > MAX_FEDERATION_BODY:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise MatrixError(408, "M_UNKNOWN", f"the request body did not arrive within {BODY_READ_S:.0f} s") from None
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise MatrixError(400, "M_NOT_JSON", "the request body is not valid JSON") from None


async def authenticate_server(request: web.Request) -> tuple[str, Any]:
    """(origin, JSON body) of a signed federation request; 401 M_UNAUTHORIZED unless it verifies.

    The origin's key is fetched if we do not have it; a peer whose key
    cannot be found is refused like a bad signature.
    """
    fed = federation(request)
    try:
        auth = parse_authorization(request.headers.get("Authorization"))
    except AuthHeaderError as exc:
        raise unauthorized(str(exc)) from None
    body = await read_body(request)
    key = await fed.keyring.verify_key(auth.origin, auth.key)
    if key is None:
        raise unauthorized(f"no key {auth.key[:80]} of {auth.origin[:100]} could be found")
    try:
        verify_request(auth, request.method, request.raw_path, services(request).server_name, body, key)
    except (AuthHeaderError, SignatureError) as exc:
        raise unauthorized(str(exc)) from None
    return auth.origin, body
