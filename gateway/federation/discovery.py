"""LAN discovery of other gateways with mDNS/DNS-SD (opt-in: ``[federation] discovery = true``).

Rules:

* a gateway announces one service of type ``_matrix-fed._tcp.local.`` (the
  spec's federation SRV service name, on the link): its SRV record names the
  listener's port, its A records the addresses it listens on, its TXT record
  ``server_name=`` its server name (and ``txtvers=1``). Only a gateway with
  TLS announces: federation is HTTPS only;
* it browses for the same type; every answer is judged by :class:`LanPeers`
  (pure, no I/O): the TXT server name must be a valid server name, the port
  in range, and one address a usable unicast address (not loopback,
  unspecified, multicast, or an IPv6 link-local address, which needs a
  scope). Our own name is ignored, a name the operator mapped with
  ``--peer`` or ``[federation] peers`` keeps the operator's address, and at
  most :data:`MAX_DISCOVERED` names are kept, so a noisy LAN cannot grow
  memory. A refusal is logged once per service instance;
* an accepted answer becomes a resolver peer (reached at that address with no
  DNS, exempt from the IP blocklist, like a configured peer) and wakes the
  outbound queue for that server;
* a service that withdraws keeps its last address (its queue keeps retrying
  there); the announcement is withdrawn with goodbye packets on stop.

Anyone on the LAN can announce any name: discovery trusts the link as much
as the operator who turned it on. The federation keys still decide whom a
request or an event comes from.

``zeroconf`` (and ``ifaddr``, which it uses too) are imported only here, only
when discovery is enabled.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lowband.gateway.federation.resolver import Resolver, ServerNameError, parse_server_name

__all__ = ["MAX_DISCOVERED", "SERVICE_TYPE", "LanDiscovery", "LanPeers", "Sighting", "Verdict", "instance_label"]

log = logging.getLogger("lowband.federation.discovery")

SERVICE_TYPE = "_matrix-fed._tcp.local."
#: Server names kept from the LAN at most; later ones are refused until a restart.
MAX_DISCOVERED = 256
#: Services being looked up at once, and waiting for a lookup, at most.
_LOOKUPS_AT_ONCE = 4
_MAX_PENDING = 64
_LOOKUP_TIMEOUT_MS = 3000
_STOP_TIMEOUT_S = 5.0
_MAX_TXT_VALUE = 255
_MAX_REFUSALS_REMEMBERED = 1024
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9-]")


@dataclass(frozen=True)
class Sighting:
    """What one DNS-SD answer said: the service instance, its TXT keys, addresses and port."""

    instance: str
    properties: Mapping[bytes, bytes | None]
    addresses: Sequence[str]
    port: int | None


@dataclass(frozen=True)
class Verdict:
    """What :meth:`LanPeers.judge` decided about one sighting.

    ``action`` is ``added`` (a new name), ``moved`` (a known name at a new
    address), ``unchanged``, ``own`` (our own announcement) or ``refused``
    (``reason`` says why).
    """

    action: str
    server_name: str | None = None
    address: str | None = None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the resolver should reach ``server_name`` at ``address`` now."""
        return self.action in ("added", "moved")


def instance_label(server_name: str) -> str:
    """The DNS-SD instance label a gateway announces: readable, unique per server name, at most 63 bytes."""
    digest = hashlib.sha256(server_name.encode("utf-8")).hexdigest()[:8]
    return f"lowband-{_LABEL_CHARS.sub('-', server_name)[:40]}-{digest}"


def usable_address(text: str) -> str | None:
    """``text`` if it is an address another gateway may connect to on the LAN, else None."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return None
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and (ip.is_link_local or ip.ipv4_mapped is not None):
        return None  # a link-local IPv6 address means nothing without the interface's scope
    return str(ip)


class LanPeers:
    """Judges what the LAN announces (pure: no sockets, no clock).

    ``is_configured(name)`` says whether the operator mapped ``name``
    (``--peer``); such a name is never taken from the LAN.
    """

    def __init__(self, own_name: str, is_configured: Callable[[str], bool], limit: int = MAX_DISCOVERED) -> None:
        self.own_name = own_name
        self._is_configured = is_configured
        self._limit = limit
        self.known: dict[str, str] = {}  # server name -> "HOST:PORT"

    def judge(self, sighting: Sighting) -> Verdict:
        """Whether (and where) to reach the server a sighting names."""
        raw = sighting.properties.get(b"server_name")
        if not raw:
            return Verdict("refused", reason="no server_name in its TXT record")
        if len(raw) > _MAX_TXT_VALUE:
            return Verdict("refused", reason="its server_name is too long")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Verdict("refused", reason="its server_name is not UTF-8")
        try:
            parse_server_name(name)
        except ServerNameError as exc:
            return Verdict("refused", name, reason=f"{name[:80]!r} is not a valid server name ({exc})")
        if name == self.own_name:
            return Verdict("own", name)
        if self._is_configured(name):
            return Verdict("refused", name, reason=f"{name} is configured as a peer (--peer); its address stays")
        port = sighting.port
        if not isinstance(port, int) or not 0 < port < 65536:
            return Verdict("refused", name, reason=f"{name}: no usable port ({port!r})")
        usable = [a for a in (usable_address(a) for a in list(sighting.addresses)[:16]) if a is not None]
        if not usable:
            shown = ", ".join(list(sighting.addresses)[:4]) or "none"
            return Verdict("refused", name, reason=f"{name}: no usable LAN address (announced: {shown})")
        usable.sort(key=lambda a: ":" in a)  # IPv4 first: no brackets, no scope questions
        host = usable[0]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        previous = self.known.get(name)
        if previous == address:
            return Verdict("unchanged", name, address)
        if previous is None and len(self.known) >= self._limit:
            return Verdict("refused", name, reason=f"{name}: already {self._limit} gateways found on the LAN")
        self.known[name] = address
        return Verdict("moved" if previous is not None else "added", name, address)


class LanDiscovery:
    """Announce this gateway and find others on the LAN (zeroconf); see the module docstring.

    ``listen_host``/``listen_port``: the HTTPS listener to announce
    (``announce`` false: browse only). ``on_peer(name)`` is called for each
    accepted name once it is in ``resolver``.
    """

    def __init__(self, server_name: str, listen_host: str, listen_port: int, resolver: Resolver,
                 on_peer: Callable[[str], None], announce: bool = True) -> None:  # fmt: skip
        self.server_name = server_name
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.resolver = resolver
        self.on_peer = on_peer
        self.announce = announce
        self.peers = LanPeers(server_name, resolver.is_configured)
        self.refused = 0  # sightings refused, for logs and tests
        self._refusals_logged: set[tuple[str, str]] = set()
        self._zc: Any = None  # zeroconf.asyncio.AsyncZeroconf
        self._browser: Any = None
        self._info: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: set[str] = set()
        self._slots = asyncio.Semaphore(_LOOKUPS_AT_ONCE)

    async def start(self) -> None:
        """Start browsing and (in the background) announcing; OSError when no multicast socket can be opened."""
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change])
        if self.announce:
            self._spawn(self._announce())
        log.info("LAN discovery: browsing for %s", SERVICE_TYPE)

    async def stop(self) -> None:
        """Withdraw the announcement (goodbye packets), stop browsing, close the sockets."""
        if self._zc is None:
            return
        zc, self._zc = self._zc, None
        for task in list(self._tasks):
            task.cancel()
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await asyncio.gather(*self._tasks, return_exceptions=True)
                if self._browser is not None:
                    await self._browser.async_cancel()
                if self._info is not None:
                    await (await zc.async_unregister_service(self._info))
                    log.info("LAN discovery: announcement of %s withdrawn", self.server_name)
                await zc.async_close()
        except (TimeoutError, OSError) as exc:
            log.warning("LAN discovery did not stop cleanly: %r", exc)

    # ------------------------------------------------------------- announcing

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self) -> None:
        from zeroconf import NonUniqueNameException
        from zeroconf.asyncio import AsyncServiceInfo

        addresses = [a for a in await self._listen_addresses() if usable_address(a) is not None]
        if not addresses:
            log.warning("LAN discovery: listening on %s only, which no other gateway can reach: not announcing",
                        self.listen_host)  # fmt: skip
            return
        label = instance_label(self.server_name)
        info = AsyncServiceInfo(SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=self.listen_port,
                                properties={"txtvers": "1", "server_name": self.server_name},
                                server=f"{label}.local.", parsed_addresses=addresses)  # fmt: skip
        try:
            await (await self._zc.async_register_service(info))
        except NonUniqueNameException:
            log.error("LAN discovery: another gateway on the LAN announces the server name %s: not announcing",
                      self.server_name)  # fmt: skip
            return
        self._info = info
        log.info("LAN discovery: announced %s at %s port %d", self.server_name, ", ".join(addresses),
                 self.listen_port)  # fmt: skip

    async def _listen_addresses(self) -> list[str]:
        """The addresses the listener accepts connections on (every interface's for 0.0.0.0 and ::)."""
        host = self.listen_host.strip("[]")
        if host in ("", "0.0.0.0", "::"):
            import ifaddr

            return _interface_addresses(ifaddr.get_adapters(), ipv6=host == "::")
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), 10.0)
        except (OSError, TimeoutError):
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    # ------------------------------------------------------------- browsing

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        """Browser callback (on the loop): look up a service that appeared or changed."""
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            log.info("LAN discovery: %s withdrew its announcement (a known address is kept)", name[:120])
            return
        if name in self._pending:
            return
        if len(self._pending) >= _MAX_PENDING:
            self.refused += 1
            log.warning("LAN discovery: too many services to look up at once; %s skipped", name[:120])
            return
        self._pending.add(name)
        self._spawn(self._look_up(zeroconf, service_type, name))

    async def _look_up(self, zeroconf: Any, service_type: str, name: str) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo

        try:
            async with self._slots:
                info = AsyncServiceInfo(service_type, name)
                if not await info.async_request(zeroconf, _LOOKUP_TIMEOUT_MS):
                    log.info("LAN discovery: %s did not answer a lookup", name[:120])
                    return
                sighting = Sighting(name, info.properties, info.parsed_addresses(IPVersion.V4Only) +
                                    info.parsed_addresses(IPVersion.V6Only), info.port)  # fmt: skip
        finally:
            self._pending.discard(name)
        self.consider(sighting)

    def consider(self, sighting: Sighting) -> Verdict:
        """Judge one sighting and act on it (add the peer, or log the refusal once)."""
        verdict = self.peers.judge(sighting)
        if verdict.action == "refused":
            self.refused += 1
            key = (sighting.instance, verdict.reason)
            if key not in self._refusals_logged:
                if len(self._refusals_logged) >= _MAX_REFUSALS_REMEMBERED:
                    self._refusals_logged.clear()
                self._refusals_logged.add(key)
                log.warning("LAN discovery: refused %s: %s", sighting.instance[:120], verdict.reason)
        elif verdict.accepted and verdict.server_name and verdict.address \
                and self.resolver.add_discovered(verdict.server_name, verdict.address):  # fmt: skip
            log.info("LAN discovery: %s %s at %s", "found" if verdict.action == "added" else "moved",
                     verdict.server_name, verdict.address)  # fmt: skip
            self.on_peer(verdict.server_name)
        return verdict


def _interface_addresses(adapters: Iterable[Any], ipv6: bool) -> list[str]:
    """Every interface address (IPv4, and IPv6 when ``ipv6``), from ``ifaddr.get_adapters()``."""
    found: list[str] = []
    for adapter in adapters:
        for ip in adapter.ips:
            if ip.is_IPv4:
                found.append(str(ip.ip))
            elif ipv6 and ip.is_IPv6:
                found.append(str(ip.ip[0]))
    return list(dict.fromkeys(found))
