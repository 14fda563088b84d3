"""What every server-server handler shares: the federation runtime and request authentication."""

from __future__ import annotations

import json
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
    """The JSON body, or None when there is none; 400 M_NOT_JSON / 413 M_TOO_LARGE."""
    if (request.content_length or 0) > MAX_FEDERATION_BODY:
        raise MatrixError(413, "M_TOO_LARGE", f"the request body is larger than {MAX_FEDERATION_BODY} bytes")
    raw = await request.content.read(MAX_FEDERATION_BODY + 1)
    if len(raw) > MAX_FEDERATION_BODY:
        raise MatrixError(413, "M_TOO_LARGE", f"the request body is larger than {MAX_FEDERATION_BODY} bytes")
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
