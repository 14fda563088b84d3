"""What every HTTP handler shares: the services, auth, JSON bodies, limits.

Handlers are plain ``async def handler(request) -> web.Response`` functions;
each API area is a module with ``routes(services) -> list[web.RouteDef]``.
Errors are raised as :class:`~lowband.gateway.matrix.errors.MatrixError` and turned
into the spec's JSON error bodies by the middleware in ``app.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lowband.gateway.appservices.registration import AppService, appservices_of
from lowband.gateway.homeserver.guests import guest_route_allowed
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError, bad_json
from lowband.gateway.matrix.numbers import parse_digits

CLIENT = "/_matrix/client/{version:(?:v3|r0)}"


SERVICES = web.AppKey("services", Services)

#: services.components key of a reader worker process's ReaderWorker (workers.py); absent in the main process
READER_WORKER = "reader_worker"


class ForwardToMain(Exception):
    """Raised in a reader worker by a handler that finds it needs the main process after all (/messages reaching
    the oldest stored event: only the main process backfills from federation); the request goes there."""


def services(request: web.Request) -> Services:
    """The services of the app serving ``request``."""
    return request.app[SERVICES]


@dataclass(frozen=True)
class Requester:
    """The authenticated user behind a request (for an application service: the user it acts as)."""

    user_id: str
    device_id: str
    token: str
    #: the bridge whose as_token authenticated the request, or None for a user's own token
    appservice: AppService | None = None


def access_token(request: web.Request) -> str | None:
    """The access token from the Authorization header or the query string."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip() or None
    return request.query.get("access_token") or None


def authenticate(request: web.Request) -> Requester:
    """The requester, or 401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN.

    An application service's ``as_token`` acts as its sender, or as ``?user_id=`` when that user is in its
    namespaces and exists (403 M_EXCLUSIVE / M_FORBIDDEN otherwise), on ``?device_id=`` (also
    ``org.matrix.msc3202.device_id``) when that device is the user's (400 M_UNKNOWN_DEVICE otherwise).
    """
    token = access_token(request)
    if token is None:
        raise MatrixError(401, "M_MISSING_TOKEN", "missing access token")
    svc = services(request)
    bridge = appservices_of(svc).by_token(token)
    if bridge is not None:
        return _as_appservice(request, svc, bridge, token)
    found = svc.store.lookup_token(token)
    if found is None:
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "unknown access token", soft_logout=False)
    if svc.guests.is_guest(found[0]):
        _guest_gate(request, svc)
    return Requester(found[0], found[1], token)


def _guest_gate(request: web.Request, svc: Services) -> None:
    """403 M_GUEST_ACCESS_FORBIDDEN for a guest outside the spec's guest endpoints, or joining a room whose
    ``m.room.guest_access`` is not ``can_join`` (guests.py)."""
    info = request.match_info
    template = info.route.resource.canonical if info.route.resource is not None else ""
    if not guest_route_allowed(request.method, template, info.get("event_type")):
        raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "guests may not use this endpoint")
    target = info.get("room_id") if template.endswith("/join") else info.get("room_or_alias")
    if request.method == "POST" and target is not None and template.endswith(("/join", "/join/{room_or_alias}")):
        room_id = target
        if target.startswith("#"):
            found = svc.store.get_alias(target)
            room_id = found[0] if found is not None else ""
        content = svc.rooms.state_content(svc.rooms.current_state(room_id), "m.room.guest_access") \
            if room_id and svc.rooms.head(room_id) is not None else None  # fmt: skip
        if (content or {}).get("guest_access") != "can_join":
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "guests may not join this room")


def _as_appservice(request: web.Request, svc: Services, bridge: AppService, token: str) -> Requester:
    user_id = request.query.get("user_id") or bridge.sender
    if not bridge.may_act_as(user_id):
        raise MatrixError(403, "M_EXCLUSIVE", f"{user_id[:100]} is outside the application service's namespaces")
    if user_id != bridge.sender:
        row = svc.store.get_user(user_id)
        if row is None or row["deactivated"]:
            raise MatrixError(403, "M_FORBIDDEN", f"the application service has not registered {user_id[:100]}")
    device_id = request.query.get("device_id") or request.query.get("org.matrix.msc3202.device_id") or ""
    if device_id and svc.store.user_device(user_id, device_id) is None:
        raise MatrixError(400, "M_UNKNOWN_DEVICE", f"{user_id[:100]} has no device {device_id[:100]}")
    return Requester(user_id, device_id, token, bridge)


def rate_limit(request: web.Request, requester: Requester | None = None) -> None:
    """Apply the per-IP and (when authenticated) per-user limits; none for a bridge registered unlimited."""
    svc = services(request)
    if requester is not None and requester.appservice is not None and not requester.appservice.rate_limited:
        return
    if svc.ip_limiter is not None:
        svc.ip_limiter.check(request.remote or "unknown")
    if svc.user_limiter is not None and requester is not None:
        svc.user_limiter.check(requester.user_id)


def read_limit(request: web.Request) -> None:
    """Take a token from the read bucket of the request's user (by access token), or of its address without one.

    Called for every client and media API GET by the ``bounded_reads`` middleware: a read can cost a bounded
    scan (sync.MAX_SCAN_ROWS), and without a limit ten parallel readers of a big room held the loop for
    seconds. An unknown token counts against the address; the handler then answers it 401 as before.
    """
    svc = services(request)
    limiter = svc.read_limiter
    if limiter is None:
        return
    token = access_token(request)
    bridge = appservices_of(svc).by_token(token) if token is not None else None
    if bridge is not None:  # a bridge reads for all its users: its own bucket, or none when registered unlimited
        if bridge.rate_limited:
            limiter.check("appservice:" + bridge.id)
        return
    found = svc.store.lookup_token(token) if token is not None else None
    limiter.check(found[0] if found is not None else "ip:" + (request.remote or "unknown"))


async def json_body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object.

    M_NOT_JSON when it is not JSON, M_BAD_JSON when it is not an object,
    M_TOO_LARGE when over the configured size (aiohttp's limit).
    """
    limit = services(request).config.max_request_bytes
    if (request.content_length or 0) > limit:
        raise MatrixError(413, "M_TOO_LARGE", f"the request body is larger than {limit} bytes")
    async with body_deadline(request, limit):
        if request.content_length is not None:
            raw = await request.read()
        else:  # chunked: stop at this route's limit, not at the upload limit aiohttp applies to every route
            parts, size = [], 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise MatrixError(413, "M_TOO_LARGE", f"the request body is larger than {limit} bytes")
                parts.append(chunk)
            raw = b"".join(parts)
    if len(raw) > limit:
        raise MatrixError(413, "M_TOO_LARGE", f"the request body is larger than {limit} bytes")
    if not raw.strip():
        if allow_empty:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "the request body must be a JSON object")
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise MatrixError(400, "M_NOT_JSON", "the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad_json("the request body must be a JSON object")
    try:  # JSON escapes can spell lone surrogates, which have no UTF-8 form
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise bad_json("the request body contains a lone surrogate (\\ud800-\\udfff)") from None
    return value


@asynccontextmanager
async def body_deadline(request: web.Request, largest: int) -> AsyncIterator[None]:
    """Bound the time reading ``request``'s body may take; 408 M_UNKNOWN (and the connection closed) past it.

    The allowance is ``body_timeout_s`` plus one second per ``min_body_bytes_per_s`` bytes of the announced
    length (``largest`` when none is announced), so a big upload over a slow link gets its time while a
    client that trickles a byte now and then cannot hold a connection open for ever.
    """
    config = services(request).config
    size = request.content_length if request.content_length is not None else largest
    allowed = config.body_timeout_s + min(size, largest) / config.min_body_bytes_per_s
    try:
        async with asyncio.timeout(allowed):
            yield
    except TimeoutError:
        raise MatrixError(408, "M_UNKNOWN", f"the request body did not arrive within {allowed:.0f} s") from None


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def ok(body: Any = None, status: int = 200) -> web.Response:
    """A JSON response (``{}`` by default)."""
    return web.json_response({} if body is None else body, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def get_str(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    """A string field of a JSON body; M_BAD_JSON / M_MISSING_PARAM otherwise."""
    value = body.get(key)
    if value is None:
        if required:
            raise MatrixError(400, "M_MISSING_PARAM", f"missing '{key}'")
        return None
    if not isinstance(value, str):
        raise bad_json(f"'{key}' must be a string")
    return value


def query_int(request: web.Request, key: str, default: int, *, low: int = 0, high: int = 1 << 31) -> int:
    """An integer query parameter within [low, high]; M_INVALID_PARAM otherwise."""
    raw = request.query.get(key)
    if raw is None:
        return default
    negative = raw.startswith("-")
    value = parse_digits(raw[1:] if negative else raw)  # ASCII digits only: int() took ' 5 ', '1_0' and '٣'
    if value is None:
        raise MatrixError(400, "M_INVALID_PARAM", f"'{key}' must be an integer")
    return max(low, min(high, -value if negative else value))
