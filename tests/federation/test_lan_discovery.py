"""Two gateways on a private LAN find each other with mDNS and federate, with no DNS and no ``--peer``.

The LAN is real: two network namespaces on a bridge (``netns.private_lan``),
multicast between them, each gateway in its own namespace, named ``gw-a``
and ``gw-b`` (names no DNS could resolve) and keeping the default IP
blocklist (which covers the LAN's 10.x addresses: discovered peers are
exempt, as configured ones are). The test listens on the link itself (the
bridge's address) to see the announcements, and to announce two services
gateway A must refuse.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Self

import pytest
from fed_harness import has, http_session, q, send, tls_pair, until, user
from harness import GatewayProcess
from netns import leftovers, private_lan

from lowband.gateway.federation.discovery import SERVICE_TYPE

# The gateways run inside network namespaces of their own, whose loopback is not the host's: a PostgreSQL
# server on the host's 127.0.0.1 is out of their reach, so the PostgreSQL run of the suite leaves these out.
_NO_POSTGRES = pytest.mark.skipif(bool(os.environ.get("LOWBAND_TEST_DATABASE_URL")),
                                  reason="gateways in network namespaces cannot reach PostgreSQL on the host's loopback")

pytestmark = [pytest.mark.slow, _NO_POSTGRES]

LAN_CONFIG = """
[rate_limits]
enabled = false
[federation]
verify_certificates = false
discovery = true
"""


class LinkWatcher:
    """A DNS-SD browser and announcer on the test's end of the link (the bridge address only)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.seen: dict[str, tuple[str, list[str], int]] = {}  # instance -> (server_name, addresses, port)
        self.removed: set[str] = set()

    async def __aenter__(self) -> Self:
        from zeroconf import IPVersion, ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        self.zc = AsyncZeroconf(interfaces=[self.address], ip_version=IPVersion.V4Only)
        self._tasks: set[asyncio.Task[None]] = set()

        async def look(zeroconf, service_type, name):
            info = AsyncServiceInfo(service_type, name)
            if await info.async_request(zeroconf, 3000):
                server = (info.properties.get(b"server_name") or b"").decode(errors="replace")
                self.seen[name] = (server, info.parsed_addresses(), int(info.port or 0))

        def changed(zeroconf, service_type, name, state_change):
            if state_change is ServiceStateChange.Removed:
                self.removed.add(name)
            else:
                self.removed.discard(name)
                task = asyncio.ensure_future(look(zeroconf, service_type, name))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        self.browser = AsyncServiceBrowser(self.zc.zeroconf, [SERVICE_TYPE], handlers=[changed])
        return self

    async def announce(self, instance: str, server_name: str, port: int = 8448) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(SERVICE_TYPE, f"{instance}.{SERVICE_TYPE}", port=port,
                                properties={"txtvers": "1", "server_name": server_name},
                                server=f"{instance}.local.", parsed_addresses=[self.address])  # fmt: skip
        await (await self.zc.async_register_service(info))

    def instance_of(self, server_name: str) -> str | None:
        return next((name for name, seen in self.seen.items() if seen[0] == server_name), None)

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.browser.async_cancel()
        await asyncio.wait_for(self.zc.async_close(), 10)


def logged(gateway: GatewayProcess, text: str) -> bool:
    try:
        return text in gateway.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return False


async def log_says(gateway: GatewayProcess, text: str, timeout: float = 30.0) -> None:
    async def check() -> bool:
        return logged(gateway, text)

    await until(check, timeout, what=f"{text!r} in {gateway.log_path.name}")


def lan_gateway(tmp_path: Path, name: str, address: str, wrap: list[str], extra: list[str] | None = None,
                listen: str | None = None) -> GatewayProcess:  # fmt: skip
    return GatewayProcess(tmp_path / name, server_name=name, config=LAN_CONFIG, tls=tls_pair(tmp_path), port=8448,
                          host=address, wrap=wrap, extra_args=extra, listen=listen)  # fmt: skip


def test_two_gateways_find_each_other_on_a_lan_and_federate_by_alias(tmp_path):
    async def main(lan, gw_a: GatewayProcess, gw_b: GatewayProcess) -> None:
        async with LinkWatcher(lan.bridge_address) as link, http_session() as session:
            # both announce themselves on the link: server name, address (B's found on its interfaces), port
            await until(lambda: _both_seen(link), 30, what="both announcements on the link")
            assert link.seen[link.instance_of("gw-a")][1:] == ([lan.addresses[0]], 8448)
            assert link.seen[link.instance_of("gw-b")][1:] == ([lan.addresses[1]], 8448)
            # each finds the other; a name that is no server name, and one the operator mapped, are refused
            await log_says(gw_a, f"LAN discovery: found gw-b at {lan.addresses[1]}:8448")
            await log_says(gw_b, f"LAN discovery: found gw-a at {lan.addresses[0]}:8448")
            await link.announce("bogus", "not a server name!")
            await link.announce("impostor", "gw-c")
            await log_says(gw_a, "is not a valid server name")
            await log_says(gw_a, "gw-c is configured as a peer (--peer); its address stays")
            assert not logged(gw_a, "found gw-c") and not logged(gw_a, "found not a server name")

            # a room on A, joined from B by its alias: B knows A only from the LAN, A knows B the same way
            alice = await user(session, gw_a, "alice")
            bob = await user(session, gw_b, "bob")
            status, created = await alice.request("POST", "/_matrix/client/v3/createRoom",
                                                  {"preset": "public_chat", "room_alias_name": "lobby"})  # fmt: skip
            assert status == 200, created
            room_id = created["room_id"]
            status, joined = await bob.request("POST", f"/_matrix/client/v3/join/{q('#lobby:gw-a')}", {})
            assert status == 200 and joined["room_id"] == room_id, joined
            await send(alice, room_id, "hello over the LAN")
            await until(lambda: has(bob, room_id, ["hello over the LAN"]), 30, what="A's message on B")
            await send(bob, room_id, "hello back")
            await until(lambda: has(alice, room_id, ["hello back"]), 30, what="B's message on A")

            # B stops: its announcement is withdrawn (goodbye packets), seen on the link and by A
            b_instance = link.instance_of("gw-b")
            gw_b.stop()
            await until(lambda: _removed(link, b_instance), 15, what="gw-b's announcement withdrawn")
            await log_says(gw_a, f"{b_instance} withdrew its announcement", 15)
            assert b_instance in link.removed and link.instance_of("gw-a") not in link.removed

    with private_lan(2) as lan:
        gw_a = lan_gateway(tmp_path, "gw-a", lan.addresses[0], lan.wrap(0), ["--peer", "gw-c=10.255.255.1:8448"])
        # B listens on every interface of its namespace: it announces the LAN address, not loopback
        gw_b = lan_gateway(tmp_path, "gw-b", lan.addresses[1], lan.wrap(1), listen="0.0.0.0")
        try:
            gw_a.start()
            gw_b.start()
            asyncio.run(asyncio.wait_for(main(lan, gw_a, gw_b), 180))
        finally:
            gw_b.stop()
            gw_a.stop()
    assert leftovers(lan) == []


async def _both_seen(link: LinkWatcher) -> bool:
    return link.instance_of("gw-a") is not None and link.instance_of("gw-b") is not None


async def _removed(link: LinkWatcher, instance: str | None) -> bool:
    return instance in link.removed


def test_a_gateway_announces_nothing_once_stopped_and_leaves_no_namespace(tmp_path):
    """Stopping is clean: the process exits 0 after withdrawing, and the LAN it ran on is gone afterwards."""
    with private_lan(1) as lan:
        gw = lan_gateway(tmp_path, "gw-solo", lan.addresses[0], lan.wrap(0))
        try:
            gw.start()
            deadline = time.monotonic() + 30
            while not logged(gw, "LAN discovery: announced gw-solo") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert logged(gw, "LAN discovery: announced gw-solo"), gw.log_path.read_text()[-2000:]
        finally:
            status = gw.stop()
        assert status == 0
        assert logged(gw, "LAN discovery: announcement of gw-solo withdrawn")
    assert leftovers(lan) == []
