"""CoAP request -> the gateway's own HTTP API -> CoAP response (MSC3079), for every CoAP transport.

:class:`Gateway` ``.handle`` is the :data:`~lowband.gateway.coap.exchange.Handler` the transports call.
It serves each request through the HTTP API's aiohttp server in memory (:mod:`.inproc`), so a CoAP
client meets the same handlers, homeserver services, auth, rate limits (per CoAP peer address) and
metrics as an HTTP client.

Request
    * path: the MSC3079 path code and its parameters, or a full ``/_matrix/...`` path
      (:mod:`.paths`); Uri-Query values pass through percent-encoded (``access_token=`` works there
      too, the HTTP API reads it);
    * access token: option 256 replaces the peer's sticky token (an empty value clears it); a
      ``Bearer`` prefix is accepted and removed;
    * key-table version: option 257 is sticky per peer. 0 means "string keys"; 1 is the MSC's table;
      a higher value is taken as 1: the tables only ever add keys, so a client that knows version N
      reads version 1 keys. (4.02 Bad Option would refuse a client for no gain.)
    * body: Content-Format 60 (CBOR, integer keys of the v1 table accepted) or none -> JSON for the HTTP
      request; 50 (JSON) passes as it is; any other format -> 4.15. CBOR that does not decode -> 4.00
      ``M_NOT_JSON``; a body larger than ``http.max_request_bytes`` -> 4.13 ``M_TOO_LARGE``.
    * Accept: 60 or none -> CBOR answer, 50 -> JSON answer, anything else -> 4.06 (before serving).
      A JSON request without Accept is answered in JSON (MSC3079: no CBOR to a JSON request unless
      the client accepts it).

Response
    The JSON answer is re-encoded as CBOR: with the v1 integer keys when the peer's version is 1 or the
    request body itself used integer keys (MSC3079 "Versioning"), string keys otherwise. Error bodies
    the same way (``errcode``/``error`` become 102/103). A non-JSON answer (media, text) keeps its
    bytes; its Content-Format is set when CoAP has a number for its type. ``Retry-After`` (seconds) or
    ``retry_after_ms`` in the body becomes ``max_age`` (seconds, rounded up).

HTTP status -> CoAP code
    ======================  ==========================================================
    200, 202, 204 and 2xx   2.05 Content for GET, 2.04 Changed for PUT and POST,
                            2.02 Deleted for DELETE (RFC 7252 5.8.4: DELETE answers 2.02)
    201                     2.01 Created
    400                     4.00 Bad Request (also 408 and any 4xx without a CoAP twin)
    401, 403, 404, 405      4.01 Unauthorized, 4.03 Forbidden, 4.04 Not Found, 4.05 Method Not Allowed
    406, 409, 412, 413      4.06 Not Acceptable, 4.09 Conflict, 4.12 Precondition Failed,
                            4.13 Request Entity Too Large
    415, 429                4.15 Unsupported Content-Format, 4.29 Too Many Requests
    500, 501, 502, 503, 504 5.00, 5.01, 5.02, 5.03, 5.04 (any other 5xx: 5.00)
    1xx, 3xx                5.02 Bad Gateway (the HTTP API answered something CoAP cannot carry)
    ======================  ==========================================================

Scope: paths under ``/_matrix/client`` except ``/_matrix/client/v1/media`` (MSC3079 leaves media to HTTP);
any other full path is 4.04.

Failures of the mapping itself: an unknown path code 4.04, a wrong parameter count 4.00, a request
HTTP cannot carry (CR/LF in the token) 4.00, an answer over the in-memory size cap 5.00 (logged), no
answer in time 5.04, anything unexpected 5.00 (logged). ``handle`` never raises except on cancellation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any
from urllib.parse import quote

from aiohttp import web

from lowband.codecs import cbor, coap, msc3079
from lowband.codecs.errors import WireError
from lowband.gateway.coap.exchange import CoapRequest, CoapResponse, Peer
from lowband.gateway.coap.inproc import HttpAnswer, InProcError, InProcessHttp
from lowband.gateway.coap.paths import PathError, expand
from lowband.gateway.homeserver.services import Services

log = logging.getLogger(__name__)


#: the only MSC3079 key-table version this gateway knows
CBOR_KEYS_VERSION = 1

_SUCCESS_BY_METHOD = {"GET": coap.CONTENT, "POST": coap.CHANGED, "PUT": coap.CHANGED, "DELETE": coap.DELETED}
_CODE_BY_STATUS = {
    201: coap.CREATED,
    400: coap.BAD_REQUEST, 401: coap.UNAUTHORIZED, 403: coap.FORBIDDEN, 404: coap.NOT_FOUND,
    405: coap.METHOD_NOT_ALLOWED, 406: coap.NOT_ACCEPTABLE, 409: coap.CONFLICT, 412: coap.PRECONDITION_FAILED,
    413: coap.REQUEST_ENTITY_TOO_LARGE, 415: coap.UNSUPPORTED_CONTENT_FORMAT, 429: coap.TOO_MANY_REQUESTS,
    500: coap.INTERNAL_SERVER_ERROR, 501: coap.NOT_IMPLEMENTED, 502: coap.BAD_GATEWAY, 503: coap.SERVICE_UNAVAILABLE,
    504: coap.GATEWAY_TIMEOUT,
}  # fmt: skip
#: CoAP Content-Formats of the non-JSON media types the HTTP API may answer with
_FORMAT_BY_TYPE = {"text/plain": coap.FORMAT_TEXT, "application/link-format": coap.FORMAT_LINK,
                   "application/octet-stream": 42, "application/cbor": coap.FORMAT_CBOR}  # fmt: skip
#: largest Max-Age (uint of 4 bytes)
_MAX_AGE_LIMIT = 0xFFFFFFFF


def coap_code(http_status: int, method: str) -> int:
    """The CoAP response code for an HTTP status to ``method`` (the table in the module docstring)."""
    if 200 <= http_status < 300:
        return _CODE_BY_STATUS.get(http_status) or _SUCCESS_BY_METHOD.get(method, coap.CHANGED)
    found = _CODE_BY_STATUS.get(http_status)
    if found is not None:
        return found
    if 400 <= http_status < 500:
        return coap.BAD_REQUEST
    if 500 <= http_status < 600:
        return coap.INTERNAL_SERVER_ERROR
    return coap.BAD_GATEWAY


def _has_integer_keys(value: Any) -> bool:
    # Depth is bounded by the CBOR decoder's own nesting limit.
    if isinstance(value, dict):
        return any(isinstance(k, int) or _has_integer_keys(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_integer_keys(v) for v in value)
    return False


class _Refusal(Exception):
    """A request the mapping answers itself, without reaching the HTTP API."""

    def __init__(self, code: int, errcode: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.errcode = errcode


def _http_query(values: tuple[str, ...]) -> str:
    """``?k=v&…`` from Uri-Query values, each side percent-encoded (a value may hold ``&``, ``=``, spaces)."""
    parts = []
    for value in values:
        key, sep, rest = value.partition("=")
        parts.append(quote(key, safe="") + ("=" + quote(rest, safe="") if sep else ""))
    return "?" + "&".join(parts) if parts else ""


#: MSC3079 covers /_matrix/client, and leaves media to HTTP (a media download is also a FileResponse, which
#: aiohttp sends with the loop's sendfile: that refuses any transport but asyncio's own, see inproc.py)
_CLIENT_API = ("_matrix", "client")
_MEDIA = ("v1", "media")

#: characters RFC 3986 allows unencoded in a path segment besides unreserved ones
_SEGMENT_SAFE = "!$&'()*+,;=:@"


class Gateway:
    """The CoAP API over the HTTP API of one running gateway.

    ``http_server`` is ``services.components[HTTP_SERVER]`` (aiohttp ``web.Server``). ``handle`` is safe
    to call concurrently for any number of peers.
    """

    def __init__(self, services: Services, http_server: web.Server, *,
                 max_response_bytes: int | None = None, timeout_s: float | None = None) -> None:  # fmt: skip
        self.services = services
        self.http = InProcessHttp(http_server)
        if max_response_bytes is not None:
            self.http.max_response_bytes = max_response_bytes
        if timeout_s is not None:
            self.http.timeout_s = timeout_s

    async def handle(self, req: CoapRequest, peer: Peer) -> CoapResponse:
        """Serve ``req`` from ``peer`` (updating its sticky token and key-table version); never raises.

        The answer's code, body and format follow the module docstring; anything unexpected is logged
        and answered 5.00.
        """
        integer_keys = False
        try:
            self._take_sticky_options(req, peer)
            integer_keys = peer.cbor_version == CBOR_KEYS_VERSION
            answer_json = self._answer_in_json(req)
            target = self._target(req)
            body, integer_keys = self._http_body(req, peer)
            headers = [("Host", self.services.config.server_name)]
            if peer.token:
                headers.append(("Authorization", "Bearer " + peer.token))
            if body:
                headers.append(("Content-Type", "application/json"))
            try:
                answer = await self.http.request(req.method, target, headers, body, (peer.host, peer.port),
                                                 _time_bound(req.query, self.http.timeout_s))  # fmt: skip
            except InProcError as exc:
                raise self._refusal_for(exc) from None
            return self._coap_answer(req, answer, answer_json, integer_keys)
        except _Refusal as refusal:
            return _error(refusal.code, refusal.errcode, str(refusal), self._error_json(req), integer_keys)
        except Exception:
            log.exception("CoAP %s %s from %s failed", req.method, "/".join(req.path)[:200], peer.address)
            return _error(coap.INTERNAL_SERVER_ERROR, "M_UNKNOWN", "internal server error", self._error_json(req),
                          integer_keys)  # fmt: skip

    # ------------------------------------------------------------------------------------------- request

    @staticmethod
    def _take_sticky_options(req: CoapRequest, peer: Peer) -> None:
        """MSC3079: the latest token and key-table version a connection sent hold until it sends others."""
        if req.auth is not None:
            token = req.auth.strip()
            if token[:7].lower() == "bearer ":
                token = token[7:].strip()
            peer.token = token or None
        if req.cbor_version is not None:
            peer.cbor_version = min(req.cbor_version, CBOR_KEYS_VERSION) if req.cbor_version > 0 else None

    @staticmethod
    def _answer_in_json(req: CoapRequest) -> bool:
        if req.accept is None:
            return req.content_format == coap.FORMAT_JSON
        if req.accept in (coap.FORMAT_JSON, coap.FORMAT_CBOR):
            return req.accept == coap.FORMAT_JSON
        raise _Refusal(coap.NOT_ACCEPTABLE, "M_UNKNOWN", "only application/cbor (60) and JSON (50) are answered")

    @staticmethod
    def _error_json(req: CoapRequest) -> bool:
        try:
            return Gateway._answer_in_json(req)
        except _Refusal:
            return False

    @staticmethod
    def _target(req: CoapRequest) -> str:
        if req.method not in _SUCCESS_BY_METHOD:
            raise _Refusal(coap.METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "method not allowed")
        try:
            segments = expand(req.path)
        except PathError as exc:
            raise _Refusal(coap.NOT_FOUND if exc.unknown else coap.BAD_REQUEST, "M_UNRECOGNIZED", str(exc)) from None
        if segments[:2] != _CLIENT_API or segments[2:4] == _MEDIA:
            raise _Refusal(coap.NOT_FOUND, "M_UNRECOGNIZED", "CoAP serves the client API without media (MSC3079)")
        path = "/" + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in segments)
        return path + _http_query(req.query)

    def _http_body(self, req: CoapRequest, peer: Peer) -> tuple[bytes, bool]:
        """The JSON request body, and whether to answer with integer keys."""
        integer_keys = peer.cbor_version == CBOR_KEYS_VERSION
        if not req.body:
            return b"", integer_keys
        limit = self.services.config.max_request_bytes
        if len(req.body) > limit:
            too_large = f"the request body is larger than {limit} bytes"
            raise _Refusal(coap.REQUEST_ENTITY_TOO_LARGE, "M_TOO_LARGE", too_large)
        if req.content_format == coap.FORMAT_JSON:
            return req.body, integer_keys  # the HTTP API checks it as it checks any JSON body
        if req.content_format not in (None, coap.FORMAT_CBOR):
            raise _Refusal(coap.UNSUPPORTED_CONTENT_FORMAT, "M_UNKNOWN", "request bodies are CBOR (60) or JSON (50)")
        try:
            raw = cbor.loads(req.body, strict=False)
            document = msc3079.decode(req.body)
            text = json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (WireError, ValueError, RecursionError) as exc:
            raise _Refusal(coap.BAD_REQUEST, "M_NOT_JSON", f"the request body is not valid CBOR: {exc}") from None
        return text, integer_keys or _has_integer_keys(raw)

    @staticmethod
    def _refusal_for(exc: InProcError) -> _Refusal:
        if exc.kind == "refused":
            return _Refusal(coap.BAD_REQUEST, "M_UNKNOWN", str(exc))
        if exc.kind == "timeout":
            return _Refusal(coap.GATEWAY_TIMEOUT, "M_UNKNOWN", "the request took too long")
        if exc.kind == "malformed":
            log.error("the HTTP API wrote a malformed answer: %s", exc)
        return _Refusal(coap.INTERNAL_SERVER_ERROR, "M_UNKNOWN", "the answer could not be carried")

    # ------------------------------------------------------------------------------------------ response

    def _coap_answer(self, req: CoapRequest, answer: HttpAnswer, in_json: bool, integer_keys: bool) -> CoapResponse:
        code = coap_code(answer.status, req.method)
        max_age = _retry_after(answer.header("retry-after"))
        media_type = (answer.header("content-type") or "").split(";", 1)[0].strip().lower()
        if not answer.body:
            return CoapResponse(code, b"", None, max_age)
        if media_type != "application/json":
            return CoapResponse(code, answer.body, _FORMAT_BY_TYPE.get(media_type), max_age)
        document = json.loads(answer.body)  # our own API's JSON: a failure here is ours (5.00, logged)
        if max_age is None and isinstance(document, dict):
            max_age = _retry_after_ms(document.get("retry_after_ms"))
        if in_json:
            return CoapResponse(code, answer.body, coap.FORMAT_JSON, max_age)
        return CoapResponse(code, _encode(document, integer_keys), coap.FORMAT_CBOR, max_age)


def _encode(document: Any, integer_keys: bool) -> bytes:
    return msc3079.encode(document) if integer_keys else cbor.dumps(document)


def _error(code: int, errcode: str, message: str, in_json: bool, integer_keys: bool) -> CoapResponse:
    document = {"errcode": errcode, "error": message}
    if in_json:
        return CoapResponse(code, json.dumps(document).encode(), coap.FORMAT_JSON)
    return CoapResponse(code, _encode(document, integer_keys), coap.FORMAT_CBOR)


def _retry_after(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None  # an HTTP-date form is not produced by our API
    return min(int(value.strip()), _MAX_AGE_LIMIT)


def _retry_after_ms(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(math.ceil(value / 1000), _MAX_AGE_LIMIT)


# --------------------------------------------------------------------------------- helpers for transports


#: what a long-poll may add to the time bound of one request beyond its own ``timeout`` (the /sync of an
#: OBSERVE loop asks for up to ``[coap] observe_timeout_s``, 3,600 s at most; /sync itself waits 300 s at most)
_LONG_POLL_MARGIN_S = 30.0


def _time_bound(query: tuple[str, ...], default_s: float) -> float:
    """The bound of one in-memory request: the default, or a long-poll's ``timeout`` (ms) and a margin if longer."""
    for item in query:
        name, _, value = item.partition("=")
        if name == "timeout" and value.isdigit() and len(value) <= 9:
            return max(default_s, int(value) / 1000 + _LONG_POLL_MARGIN_S)
    return default_s


def next_batch(resp: CoapResponse) -> str | None:
    """The ``next_batch`` token of a /sync answer (CBOR with key 19 or the string key, or JSON), else None.

    Never raises: a body that does not decode, an error answer or a missing token give None.
    """
    if coap.code(2, 0) > resp.code or resp.code >= coap.code(3, 0) or not resp.body:
        return None
    try:
        if resp.content_format == coap.FORMAT_JSON:
            document = json.loads(resp.body)
        else:
            document = cbor.loads(resp.body, strict=False)
    except (WireError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    found = document.get("next_batch", document.get(19))  # the string key wins, as in MSC3079
    return found if isinstance(found, str) else None


#: an observation whose long-poll returned nothing new in under half its timeout waits this long (at most the
#: timeout) before the next one, so a handler that does not long-poll cannot spin the loop
MIN_POLL_INTERVAL_S = 1.0
#: the /sync sections whose content is news for a client (anything else, e.g. one-time key counts, is not)
_NEWS = (("rooms", "join"), ("rooms", "invite"), ("rooms", "leave"), ("rooms", "knock"), ("account_data", "events"),
         ("presence", "events"), ("to_device", "events"), ("device_lists", "changed"), ("device_lists", "left"))  # fmt: skip


def has_news(response: CoapResponse) -> bool:
    """Whether a /sync answer carries something for the client (events, invites, account data, presence,
    to-device messages, device list changes), so an observation pushes it. Never raises: an answer that
    does not decode counts as news (the client should see what the handler said)."""
    try:
        if response.content_format == coap.FORMAT_JSON:
            document = json.loads(response.body)
        else:
            document = msc3079.decode(response.body)
    except (WireError, ValueError, RecursionError):
        return True
    if not isinstance(document, dict):
        return True
    for section, item in _NEWS:
        part = document.get(section)
        if isinstance(part, dict) and part.get(item):
            return True
    return False


def with_query(req: CoapRequest, **params: str | int) -> CoapRequest:
    """``req`` with Uri-Query ``name=value`` set for each of ``params`` (replacing that name's values).

    For the OBSERVE loops: ``with_query(req, since=token, timeout=30000)``. Other query values stay in order.
    """
    kept = tuple(q for q in req.query if q.partition("=")[0] not in params)
    added = tuple(f"{name}={value}" for name, value in params.items())
    return dataclasses.replace(req, query=kept + added)
