"""Outbound federation HTTP: signed requests to other servers, bounded and refusable.

Rules:

* every request is signed with ``X-Matrix`` (``matrix.request_auth``) as
  this server, addressed to the destination's server name;
* where to connect comes from :class:`~lowband.gateway.federation.resolver.Resolver`;
  every address is checked against ``[federation] ip_range_blocklist``
  before connecting (a configured or discovered peer is exempt), so a room
  cannot make the gateway probe its own network;
* TLS always; certificates are verified unless ``verify_certificates`` is
  false (self-signed test peers, a LAN without a CA);
* every request has a timeout and a response size limit; a response that
  is not JSON, too large, or an error status becomes a :class:`FederationError`
  (``PeerUnreachable`` when nothing usable came back: refused connection,
  timeout, TLS failure, 5xx, 429) — never another exception type.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from lowband.gateway.config import FederationConfig
from lowband.gateway.federation.resolver import Resolver, ServerNameError, Target
from lowband.gateway.matrix.request_auth import authorization_header
from lowband.gateway.matrix.signing import SigningKey

__all__ = ["FederationClient", "FederationError", "PeerUnreachable", "path_segment"]

log = logging.getLogger("lowband.federation")

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RESPONSE = 16 * 1024 * 1024
_WELL_KNOWN_MAX = 64 * 1024


class FederationError(Exception):
    """A request to another server failed; ``status`` 0 when no HTTP answer came back."""

    def __init__(self, destination: str, status: int, errcode: str, message: str,
                 retry_after_ms: int | None = None) -> None:  # fmt: skip
        super().__init__(f"{destination}: {status} {errcode}: {message}")
        self.destination = destination
        self.status = status
        self.errcode = errcode
        self.message = message
        self.retry_after_ms = retry_after_ms


class PeerUnreachable(FederationError):
    """Nothing usable came back (connection, TLS, timeout, 5xx, 429): worth retrying later."""


def path_segment(value: str) -> str:
    """One URL path segment, percent-encoded (room IDs, event IDs and user IDs carry ``!$@:``)."""
    return quote(value, safe="")


@dataclass(frozen=True)
class _Blocklist:
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def of(cls, ranges: tuple[str, ...]) -> _Blocklist:
        return cls(tuple(ipaddress.ip_network(r, strict=False) for r in ranges))

    def blocks(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)


class FederationClient:
    """Signed requests from ``server_name`` to other servers; one aiohttp session, made on first use."""

    def __init__(self, server_name: str, key: SigningKey, config: FederationConfig,
                 resolver: Resolver | None = None) -> None:  # fmt: skip
        self.server_name = server_name
        self.key = key
        self.config = config
        self.resolver = resolver or Resolver(self.fetch_well_known, lookup_srv, dict(config.peers))
        self._blocklist = _Blocklist.of(config.ip_range_blocklist)
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None

    # ------------------------------------------------------------- plumbing

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context()
            if not self.config.verify_certificates:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._ssl = context
        return self._ssl

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=200, limit_per_host=8, ssl=self._tls(), ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _addresses(self, target: Target) -> list[str]:
        """The addresses to try for ``target``, blocklisted ones removed (unless trusted)."""
        try:
            ipaddress.ip_address(target.host)
            found = [target.host]
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM), timeout=10.0
                )
            except (OSError, asyncio.TimeoutError) as exc:
                raise OSError(f"cannot resolve {target.host}: {exc}") from None
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if target.trusted:
            return found
        allowed = [a for a in found if not self._blocklist.blocks(a)]
        if not allowed:
            raise PermissionError(f"{target.host} resolves only to blocked addresses ({', '.join(found[:4])})")
        return allowed

    async def _fetch(self, destination: str, target: Target, method: str, path_and_query: str,
                     headers: dict[str, str], body: bytes | None, timeout: float,
                     max_bytes: int) -> tuple[int, bytes, Any]:  # fmt: skip
        """One HTTPS exchange with the first reachable address; (status, body, response headers)."""
        try:
            addresses = await self._addresses(target)
        except PermissionError as exc:
            raise FederationError(destination, 0, "M_FORBIDDEN", str(exc)) from None
        except OSError as exc:
            raise PeerUnreachable(destination, 0, "M_UNREACHABLE", str(exc)) from None
        last: Exception | None = None
        for address in addresses[:3]:
            host = f"[{address}]" if ":" in address else address
            # encoded=True: the path and query go out byte for byte as signed (yarl would re-quote them)
            url = URL(f"https://{host}:{target.port}{path_and_query}", encoded=True)
            try:
                async with asyncio.timeout(timeout):
                    async with self._http().request(
                        method, url, data=body, headers={**headers, "Host": target.host_header},
                        server_hostname=target.tls_name, allow_redirects=False,
                    ) as response:  # fmt: skip
                        return response.status, await _read_at_most(response, destination, max_bytes), response.headers
            except FederationError:
                raise
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                last = exc
        reason = f"{type(last).__name__}: {last}" if last is not None else "no address"
        raise PeerUnreachable(destination, 0, "M_UNREACHABLE", reason[:300])

    # ------------------------------------------------------------- requests

    async def request(self, destination: str, method: str, path: str, *, query: dict[str, Any] | None = None,
                      body: Any = None, timeout: float = DEFAULT_TIMEOUT_S,
                      max_bytes: int = DEFAULT_MAX_RESPONSE) -> Any:  # fmt: skip
        """A signed request; the decoded JSON answer, or :class:`FederationError`.

        ``path`` is already percent-encoded (use :func:`path_segment`);
        ``query`` values may be strings or lists of strings.
        """
        if destination == self.server_name:
            raise FederationError(destination, 0, "M_FORBIDDEN", "a server does not federate with itself")
        try:
            target = await self.resolver.resolve(destination)
        except ServerNameError as exc:
            raise FederationError(destination, 0, "M_INVALID_PARAM", str(exc)) from None
        uri = path + (("?" + urlencode(query, doseq=True)) if query else "")
        headers = {"Authorization": authorization_header(method, uri, self.server_name, destination, self.key, body)}
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        status, raw, _ = await self._fetch(destination, target, method, uri, headers, data, timeout, max_bytes)
        try:
            decoded = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            decoded = None
        if 200 <= status < 300:
            if decoded is None:
                raise FederationError(destination, status, "M_NOT_JSON", "the answer is not JSON")
            return decoded
        errcode = decoded.get("errcode") if isinstance(decoded, dict) else None
        message = decoded.get("error") if isinstance(decoded, dict) else None
        retry = decoded.get("retry_after_ms") if isinstance(decoded, dict) else None
        kind = PeerUnreachable if status >= 500 or status == 429 else FederationError
        raise kind(destination, status, str(errcode or "M_UNKNOWN")[:100], str(message or raw[:200])[:300],
                   retry if isinstance(retry, int) else None)  # fmt: skip

    async def fetch_well_known(self, host: str) -> tuple[int, bytes, str | None]:
        """``GET https://HOST/.well-known/matrix/server`` for the resolver (unsigned, small, blocklisted)."""
        target = Target(host, 443, host, host)
        try:
            status, body, headers = await self._fetch(host, target, "GET", "/.well-known/matrix/server", {}, None,
                                                      10.0, _WELL_KNOWN_MAX)  # fmt: skip
        except FederationError as exc:
            raise OSError(str(exc)) from None
        return status, body, headers.get("Cache-Control")


async def _read_at_most(response: aiohttp.ClientResponse, destination: str, max_bytes: int) -> bytes:
    """The whole body, or FederationError M_TOO_LARGE as soon as it passes ``max_bytes``.

    ``content.read(n)`` returns what has arrived so far, not ``n`` bytes: an
    answer longer than the first chunk would come back cut short.
    """
    if (response.content_length or 0) > max_bytes:
        raise FederationError(destination, response.status, "M_TOO_LARGE", f"response larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            raise FederationError(destination, response.status, "M_TOO_LARGE", f"response larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def lookup_srv(name: str) -> list[tuple[str, int]]:
    """SRV records of ``name`` as (target, port), by priority then weight; [] when none or no DNS."""
    import dns.asyncresolver  # dnspython: imported only when a name needs SRV
    import dns.exception
    try:
        answer = await dns.asyncresolver.resolve(name, "SRV", lifetime=5.0)
    except dns.exception.DNSException:
        return []
    records = sorted(answer, key=lambda r: (r.priority, -r.weight))
    return [(str(r.target).rstrip("."), int(r.port)) for r in records if str(r.target) != "."]
