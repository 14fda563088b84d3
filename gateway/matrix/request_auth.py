"""Federation request authentication: the ``X-Matrix`` Authorization scheme.

Rules (server-server API, "Request Authentication"):

* the sender signs ``{"method", "uri", "origin", "destination"[, "content"]}``
  with its server key (``signing.sign_json``); ``uri`` is the path and query
  exactly as sent, ``content`` the JSON body when there is one;
* the header is ``X-Matrix origin="…",destination="…",key="ed25519:…",sig="…"``:
  parameter names are case-insensitive, values may be quoted (backslash
  escapes undone) or bare tokens, colons are accepted bare for old senders,
  unknown parameters are ignored;
* the receiver refuses (401) a header it cannot parse, a ``destination`` that
  is not its own name, and a signature that does not verify with the origin's
  key. A missing ``destination`` is accepted, as the spec asks, for old
  servers.

Pure: the caller supplies the origin's verify key (fetched by the key ring).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lowband.gateway.matrix.signing import SignatureError, SigningKey, sign_json, verify_json

__all__ = ["AuthHeaderError", "XMatrix", "authorization_header", "parse_authorization", "request_json", "verify_request"]

SCHEME = "X-Matrix"
_MAX_HEADER = 4096
# One name=value pair: a token name, then a quoted string (with escapes) or a bare value (no quote) up to a comma.
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s"]*)\s*(?:,|$)')


class AuthHeaderError(ValueError):
    """The ``Authorization`` header is missing, not ``X-Matrix`` or malformed; the message says which."""


@dataclass(frozen=True)
class XMatrix:
    """The parameters of one ``X-Matrix`` header."""

    origin: str
    key: str
    sig: str
    destination: str | None = None


def request_json(method: str, uri: str, origin: str, destination: str, content: Any = None) -> dict[str, Any]:
    """The object a federation request's signature covers (``content`` only when not None)."""
    obj: dict[str, Any] = {"method": method.upper(), "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    return obj


def authorization_header(method: str, uri: str, origin: str, destination: str, key: SigningKey,
                         content: Any = None) -> str:  # fmt: skip
    """The ``Authorization`` value for a request we send (quoted values, lower-case names)."""
    signed = sign_json(request_json(method, uri, origin, destination, content), origin, key)
    signature = signed["signatures"][origin][key.key_id]
    return f'{SCHEME} origin="{origin}",destination="{destination}",key="{key.key_id}",sig="{signature}"'


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_authorization(header: str | None) -> XMatrix:
    """Parse an ``Authorization`` header; :class:`AuthHeaderError` if it is not a usable ``X-Matrix`` one."""
    if not header:
        raise AuthHeaderError("missing Authorization header")
    if len(header) > _MAX_HEADER:
        raise AuthHeaderError("Authorization header too long")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():
        raise AuthHeaderError("Authorization scheme is not X-Matrix")
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            raise AuthHeaderError("malformed X-Matrix parameters")
        params.setdefault(match.group(1).lower(), _unquote(match.group(2)))
        position = match.end()
    missing = [name for name in ("origin", "key", "sig") if not params.get(name)]
    if missing:
        raise AuthHeaderError(f"X-Matrix header lacks {', '.join(missing)}")
    return XMatrix(params["origin"], params["key"], params["sig"], params.get("destination") or None)


def verify_request(auth: XMatrix, method: str, uri: str, our_name: str, content: Any, verify_key: bytes) -> None:
    """Check a parsed header against the request; :class:`SignatureError` or AuthHeaderError if it fails.

    ``verify_key`` is the origin's key named ``auth.key``. The signed object
    is rebuilt from what we received, with ``our_name`` as the destination.
    """
    if auth.destination is not None and auth.destination != our_name:
        raise AuthHeaderError(f"request is addressed to {auth.destination[:100]!r}, not to this server")
    signed = request_json(method, uri, auth.origin, our_name, content)
    signed["signatures"] = {auth.origin: {auth.key: auth.sig}}
    try:
        verify_json(signed, auth.origin, auth.key, verify_key)
    except SignatureError:
        raise
    except ValueError as exc:  # no canonical form of the content
        raise SignatureError(f"cannot check the request signature: {exc}") from None
