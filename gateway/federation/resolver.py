"""Where to connect for a server name (server-server API, "Resolving server names").

Rules, in the spec's order, after one Lowband rule in front:

0. a configured or discovered peer (``--peer NAME=HOST:PORT``, ``[federation]
   peers``, LAN discovery) is reached at its address, no DNS, and is exempt
   from the IP blocklist: the operator named it;
1. an IP literal, with or without a port (8448 by default): that address;
2. a hostname with a port: that hostname and port;
3. a hostname alone: ``https://HOST/.well-known/matrix/server`` may delegate
   to ``m.server`` (then 1, 2, SRV or 8448 apply to the delegated name, whose
   name is the Host header and the certificate's name); results are cached
   (24 h for an answer, 1 h for a failure; ``Cache-Control: max-age``
   within [5 min, 48 h] is honoured);
4. SRV ``_matrix-fed._tcp.HOST``, then the deprecated ``_matrix._tcp.HOST``;
5. ``HOST:8448``.

The Host header and the TLS name are the server name's host (or the
delegated name's), never the SRV target. Pure decisions live in
:func:`parse_server_name` and :class:`Resolver`; the network calls
(well-known fetch, SRV lookup) are injected, so tests run without DNS.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lowband.gateway.matrix.numbers import parse_digits

__all__ = ["DEFAULT_PORT", "ServerNameError", "Target", "Resolver", "parse_server_name"]

DEFAULT_PORT = 8448
_HOSTNAME = re.compile(r"[A-Za-z0-9.-]{1,255}")
_WELL_KNOWN_OK_S = 24 * 3600
_WELL_KNOWN_FAILED_S = 3600
_MAX_CACHE = 10_000

#: fetch(hostname) -> (status, body bytes, Cache-Control header or None); raises OSError when unreachable
WellKnownFetch = Callable[[str], Awaitable[tuple[int, bytes, str | None]]]
#: srv(name) -> [(target, port)] in the order to try; [] when none
SrvLookup = Callable[[str], Awaitable[list[tuple[str, int]]]]


class ServerNameError(ValueError):
    """Not a valid server name (``hostname``, IPv4, ``[IPv6]``, each with an optional ``:port``)."""


@dataclass(frozen=True)
class Target:
    """Where and how to connect for one server name."""

    host: str  # hostname or IP address to connect to (IPv6 without brackets)
    port: int
    host_header: str  # the Host header and the certificate's expected name (with port when one was named)
    tls_name: str | None  # SNI and certificate host name; None for IP literals
    trusted: bool = False  # named by the operator: the IP blocklist does not apply


def parse_server_name(name: str) -> tuple[str, int | None, bool]:
    """``name`` → (host, port or None, is an IP literal); ServerNameError when malformed."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise ServerNameError(f"{str(name)[:80]!r} is not a server name")
    if name.startswith("["):
        end = name.find("]")
        if end < 0:
            raise ServerNameError(f"{name[:80]!r}: unclosed IPv6 literal")
        host, rest = name[1:end], name[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ServerNameError(f"{name[:80]!r}: bad IPv6 literal") from None
        literal = True
    else:
        host, colon, port_text = name.partition(":")
        rest = colon + port_text
        literal = _is_ipv4(host)
        if not literal and not _HOSTNAME.fullmatch(host):
            raise ServerNameError(f"{name[:80]!r}: bad host name")
    port: int | None = None
    if rest:
        port = parse_digits(rest[1:], 5) if rest.startswith(":") else None
        if port is None or not 0 < port < 65536:
            raise ServerNameError(f"{name[:80]!r}: bad port")
    return host, port, literal


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _max_age(cache_control: str | None) -> float | None:
    match = re.search(r"max-age\s*=\s*(\d{1,9})", cache_control or "")
    return min(max(float(match.group(1)), 300.0), 48 * 3600.0) if match else None


class Resolver:
    """Server name → :class:`Target`, with the well-known cache.

    ``peers`` maps server names to ``HOST:PORT`` (rule 0): the operator's
    (``--peer``, ``[federation] peers``). LAN discovery adds its own
    (:meth:`add_discovered`), which never replace the operator's.
    """

    def __init__(self, fetch_well_known: WellKnownFetch, lookup_srv: SrvLookup,
                 peers: dict[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._fetch = fetch_well_known
        self._srv = lookup_srv
        self._peers = dict(peers or {})
        self._discovered: dict[str, str] = {}
        self._clock = clock
        self._well_known: dict[str, tuple[float, str | None]] = {}

    def add_peer(self, name: str, address: str) -> None:
        """Reach ``name`` at ``address`` (``HOST:PORT``) from now on, as if the operator had configured it."""
        self._peers[name] = address

    def add_discovered(self, name: str, address: str) -> bool:
        """Reach ``name`` at ``address`` (found on the LAN) unless the operator configured ``name``; added?"""
        if name in self._peers:
            return False
        self._discovered[name] = address
        return True

    def is_configured(self, name: str) -> bool:
        """Whether the operator gave ``name`` an address (``--peer``, ``[federation] peers``)."""
        return name in self._peers

    def peer_names(self) -> list[str]:
        """The server names with a configured or discovered address."""
        return list(dict.fromkeys([*self._peers, *self._discovered]))

    async def resolve(self, server_name: str) -> Target:
        """Where to connect for ``server_name``; ServerNameError for a malformed name."""
        host, port, literal = parse_server_name(server_name)
        address = self._peers.get(server_name) or self._discovered.get(server_name)
        if address is not None:
            peer_host, _, peer_port = address.rpartition(":")
            return Target(peer_host.strip("[]"), int(peer_port), server_name, None if literal else host, trusted=True)
        if literal or port is not None:
            return Target(host, port or DEFAULT_PORT, server_name, None if literal else host)
        delegated = await self._delegation(host)
        if delegated is not None:
            d_host, d_port, d_literal = delegated
            name = f"[{d_host}]" if ":" in d_host else d_host
            header = f"{name}:{d_port}" if d_port is not None else name
            if d_literal or d_port is not None:
                return Target(d_host, d_port or DEFAULT_PORT, header, None if d_literal else d_host)
            srv = await self._first_srv(d_host)
            if srv is not None:
                return Target(srv[0], srv[1], header, d_host)
            return Target(d_host, DEFAULT_PORT, header, d_host)
        srv = await self._first_srv(host)
        if srv is not None:
            return Target(srv[0], srv[1], server_name, host)
        return Target(host, DEFAULT_PORT, server_name, host)

    async def _first_srv(self, host: str) -> tuple[str, int] | None:
        for name in (f"_matrix-fed._tcp.{host}", f"_matrix._tcp.{host}"):
            try:
                found = await self._srv(name)
            except OSError:
                found = []
            if found:
                return found[0]
        return None

    async def _delegation(self, host: str) -> tuple[str, int | None, bool] | None:
        now = self._clock()
        cached = self._well_known.get(host)
        if cached is not None and cached[0] > now:
            return parse_server_name(cached[1]) if cached[1] else None
        delegated: str | None = None
        lifetime: float = _WELL_KNOWN_FAILED_S
        try:
            status, body, cache_control = await self._fetch(host)
            if status == 200:
                delegated = _m_server(body)
                if delegated is not None:
                    lifetime = _max_age(cache_control) or _WELL_KNOWN_OK_S
        except OSError:
            delegated = None
        if len(self._well_known) >= _MAX_CACHE:
            self._well_known = {k: v for k, v in self._well_known.items() if v[0] > now}
            if len(self._well_known) >= _MAX_CACHE:
                self._well_known.clear()
        self._well_known[host] = (now + lifetime, delegated)
        return parse_server_name(delegated) if delegated else None


def _m_server(body: bytes) -> str | None:
    """``m.server`` of a well-known body when it is a valid server name, else None."""
    try:
        doc: Any = json.loads(body[:65536])
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    value = doc.get("m.server") if isinstance(doc, dict) else None
    if not isinstance(value, str):
        return None
    try:
        parse_server_name(value)
    except ServerNameError:
        return None
    return value
