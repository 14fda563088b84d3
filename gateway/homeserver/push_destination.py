"""Push gateway addresses: which URL a pusher may name, and which addresses a notification may be sent to.

A pusher's URL is chosen by any user, so without a check the gateway would post to whatever it can reach:
its own loopback listeners, the LAN, a cloud metadata service (server-side request forgery).

Rules:

* a URL is ``http`` or ``https`` (``[push] url_schemes``), carries no user name or password, and its host
  is a DNS name or an IP address written the one canonical way: four decimal octets, or IPv6 in
  brackets. A host whose last label is a number (``2130706433``, ``127.1``, ``0x7f.1``, ``0177.0.0.1``)
  is refused as ambiguous: the C library reads such names as IPv4 addresses in forms Python's
  ``ipaddress`` refuses, so what is checked and what is connected to could differ;
* an address is refused when it is special-purpose (:data:`_SPECIAL`: loopback, private, link-local,
  shared/CGNAT, documentation, benchmarking, reserved, multicast, broadcast, unspecified, and anything
  else ``ipaddress`` does not call global). An IPv6 address carrying an IPv4 one (mapped
  ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is judged as that IPv4 address;
  IPv4-compatible (``::a.b.c.d``) and Teredo addresses are refused;
* ``[push] allowed_ranges`` wins over every rule; ``allow_private`` allows every address but the
  unspecified, multicast and broadcast ones, which are never a push gateway (``0.0.0.0`` even reaches
  this host on Linux);
* the check runs on IP literals when a pusher is set, again on the URL before each delivery, and on every
  address a name resolves to when connecting (:class:`CheckedResolver`): a name that pointed to a public
  address when the pusher was set and to 127.0.0.1 later (DNS rebinding) reaches nothing. A delivery
  that finds only refused addresses raises :class:`RefusedDestination`.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from lowband.gateway.config import PushConfig

__all__ = ["AddressPolicy", "CheckedResolver", "PushURLError", "RefusedDestination", "check_push_url"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: special-purpose ranges, most specific first: (range, what it is, refused even with allow_private)
_SPECIAL: tuple[tuple[IPNetwork, str, bool], ...] = tuple(
    (ipaddress.ip_network(net), what, never)
    for net, what, never in (
        ("0.0.0.0/8", "unspecified ('this network')", True),
        ("127.0.0.0/8", "loopback", False),
        ("10.0.0.0/8", "private", False),
        ("172.16.0.0/12", "private", False),
        ("192.168.0.0/16", "private", False),
        ("100.64.0.0/10", "shared (CGNAT)", False),
        ("169.254.0.0/16", "link-local (cloud metadata)", False),
        ("192.0.0.0/24", "IETF protocol assignment", False),
        ("192.0.2.0/24", "documentation", False),
        ("198.51.100.0/24", "documentation", False),
        ("203.0.113.0/24", "documentation", False),
        ("198.18.0.0/15", "benchmarking", False),
        ("192.88.99.0/24", "6to4 relay anycast", False),
        ("224.0.0.0/4", "multicast", True),
        ("255.255.255.255/32", "broadcast", True),
        ("240.0.0.0/4", "reserved", False),
        ("::/128", "unspecified", True),
        ("::1/128", "loopback", False),
        ("::/96", "IPv4-compatible", False),
        ("64:ff9b:1::/48", "local-use NAT64", False),
        ("100::/64", "discard-only", False),
        ("2001::/32", "Teredo", False),
        ("2001:db8::/32", "documentation", False),
        ("2001::/23", "IETF protocol assignment", False),
        ("fc00::/7", "unique local (private)", False),
        ("fe80::/10", "link-local", False),
        ("fec0::/10", "site-local", False),
        ("ff00::/8", "multicast", True),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::([0-9]{1,5}))?")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class PushURLError(ValueError):
    """A pusher URL is refused; the message says why (for a 400 ``M_INVALID_PARAM``)."""


class RefusedDestination(OSError):
    """A push gateway's host is, or resolves only to, refused addresses: a permanent failure of its pusher."""


def _address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # a scope (fe80::1%eth0) does not change the range


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _special(ip: IPAddress) -> tuple[str, bool] | None:
    for net, what, never in _SPECIAL:
        if ip.version == net.version and ip in net:
            return what, never
    if not ip.is_global or ip.is_multicast:
        return "special-purpose", False
    return None


class AddressPolicy:
    """Which addresses push deliveries may reach, from ``[push]`` (rules: module docstring)."""

    def __init__(self, config: PushConfig) -> None:
        self.config = config
        self.allowed: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(r) for r in config.allowed_ranges)

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why ``address`` is refused (``"loopback"``, ``"IPv4-mapped 127.0.0.1: loopback"`` …), or None.

        ValueError when ``address`` is not an IP address.
        """
        ip = _address(address) if isinstance(address, str) else address
        inner = _embedded_ipv4(ip)
        if any(candidate.version == net.version and candidate in net
               for candidate in (ip, inner) if candidate is not None for net in self.allowed):  # fmt: skip
            return None
        if inner is not None:
            found = _special(inner)
            if found is None:
                return None
            what, never = found
            found = (f"IPv6 carrying {inner}: {what}", never)
        else:
            found = _special(ip)
        if found is None:
            return None
        what, never = found
        return what if never or not self.config.allow_private else None


def check_push_url(url: str, policy: AddressPolicy) -> str:
    """Check a pusher URL's scheme, user info and host (the path is the caller's); returns the host.

    Raises :class:`PushURLError` naming the reason. A DNS name is not resolved here: its addresses are
    checked at each connection (:class:`CheckedResolver`).
    """
    if not url.isascii() or any(c <= " " or c in "\\\x7f" for c in url):
        raise PushURLError("'data.url' must be printable ASCII without spaces or backslashes")
    match = _URL.fullmatch(url)
    if match is None:
        raise PushURLError("'data.url' must be an absolute URL such as https://push.example/_matrix/push/v1/notify")
    scheme, authority = match.group(1).lower(), match.group(2)
    if scheme not in policy.config.url_schemes:
        raise PushURLError(f"'data.url' scheme {scheme!r} is not allowed here (allowed: "
                           f"{', '.join(policy.config.url_schemes)})")  # fmt: skip
    if "@" in authority:
        raise PushURLError("'data.url' must not carry a user name or password (user:password@)")
    parts = _AUTHORITY.fullmatch(authority)
    if parts is None or (parts.group(2) is not None and not 0 < int(parts.group(2)) <= 65535):
        raise PushURLError("'data.url' host must be a DNS name or an IP address, with an optional port 1-65535")
    host = parts.group(1)
    ip: IPAddress
    if host.startswith("["):
        try:
            ip = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise PushURLError(f"'data.url' host {host} is not an IPv6 address") from None
    else:
        labels = host.removesuffix(".").split(".")
        if _NUMERIC_LABEL.fullmatch(labels[-1]):
            try:
                ip = ipaddress.IPv4Address(host)
                canonical = str(ip) == host
            except ValueError:
                canonical = False
            if not canonical:
                raise PushURLError(f"'data.url' host {host!r} is ambiguous: an IPv4 address must be written as "
                                   "four decimal numbers (127.1, 2130706433 or 0x7f.1 are read differently by "
                                   "different parsers)")  # fmt: skip
        elif all(_LABEL.fullmatch(label) for label in labels):
            return host.lower()
        else:
            raise PushURLError(f"'data.url' host {host!r} is not a valid DNS name")
    why = policy.refusal(ip)
    if why is not None:
        raise PushURLError(f"'data.url' host {host} is refused ({why} address): push gateways must have "
                           "public addresses (the server's operator can allow others with [push] allowed_ranges)")  # fmt: skip
    return str(ip)


class CheckedResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver and drops the addresses ``policy`` refuses.

    When nothing is left, :class:`RefusedDestination` (an OSError, so aiohttp's connector raises it as the
    ``os_error`` of a ``ClientConnectorDNSError``) names the host and its refused addresses. Made inside
    the running loop.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:  # fmt: skip
        """The addresses of ``host`` that the policy allows; RefusedDestination when there are none."""
        found = await self.inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refused: list[str] = []
        for result in found:
            try:
                why = self.policy.refusal(result["host"])
            except ValueError:
                why = "not an IP address"
            if why is None:
                kept.append(result)
            else:
                refused.append(f"{result['host']} ({why})")
        if not kept:
            raise RefusedDestination(f"{host} resolves only to refused addresses: {', '.join(refused[:4])}")
        return kept

    async def close(self) -> None:
        """Close the inner resolver."""
        await self.inner.close()
