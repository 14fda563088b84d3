"""One CoAP request and its response, as every CoAP transport hands them to the API (docs/coap.md).

The transports (aiocoap on plain UDP in ``server.py``, Noise sessions in
``secure_server.py``, the serial and LoRa links) each turn their messages
into a :class:`CoapRequest`, keep one :class:`Peer` per client connection
(what MSC3079 makes sticky: the access token and the CBOR key-table
version; compact mode's session), and call one :data:`Handler`
(``mapping.Gateway.handle``), which serves the request through the same
HTTP handlers and homeserver services as the HTTP API. Blockwise transfer,
deduplication, retransmission and OBSERVE stay in the transports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CoapRequest:
    """A whole request (blocks already assembled).

    ``path`` is the Uri-Path segments as sent (an MSC3079 path code and its
    parameters, or the full path); ``query`` the Uri-Query values
    (``"k=v"``); ``auth`` the access-token option (256) when this request
    carries one; ``cbor_version`` the key-table option (257); ``profile``
    the compact-mode option (:data:`lowband.codecs.coap.OPT_PROFILE`).
    """

    method: str  # "GET", "POST", "PUT" or "DELETE"
    path: tuple[str, ...]
    query: tuple[str, ...] = ()
    body: bytes = b""
    content_format: int | None = None
    accept: int | None = None
    auth: str | None = None
    cbor_version: int | None = None
    profile: int | None = None
    observe: int | None = None


@dataclass(frozen=True)
class CoapResponse:
    """A whole response: ``code`` is the CoAP code byte (``0x45`` is 2.05 Content)."""

    code: int
    body: bytes = b""
    content_format: int | None = None
    #: seconds until the next retry makes sense (4.29-style back-off, from Retry-After / retry_after_ms)
    max_age: int | None = None


@dataclass
class Peer:
    """What one client connection makes sticky (MSC3079: "for the lifetime of the underlying connection").

    ``address`` names the client for rate limits and logs (``"udp:127.0.0.1:40000"``, ``"noise:…"``);
    ``token`` is the last access token the client sent; ``cbor_version`` the last key-table version
    (None: JSON-style string keys back, unless the client itself sent integer keys); ``compact`` the
    compact-mode session once negotiated (``compact.CompactSession``), else None.
    """

    address: str
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    cbor_version: int | None = None
    compact: Any = None
    #: free for the transport (observations, last activity …)
    state: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[CoapRequest, Peer], Awaitable[CoapResponse]]
