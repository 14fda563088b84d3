"""LAN discovery's decisions, without a network: what the LAN announces becomes a peer, or is refused."""

from __future__ import annotations

import asyncio

import pytest

from lowband.gateway.federation.discovery import LanDiscovery, LanPeers, Sighting, instance_label, usable_address
from lowband.gateway.federation.resolver import Resolver, Target


def sighting(name: str | bytes | None = "gw-b", addresses=("10.1.2.3",), port: int | None = 8448,
             instance: str = "x._matrix-fed._tcp.local.") -> Sighting:  # fmt: skip
    props: dict[bytes, bytes | None] = {b"txtvers": b"1"}
    if name is not None:
        props[b"server_name"] = name.encode() if isinstance(name, str) else name
    return Sighting(instance, props, list(addresses), port)


async def _unreachable(_name):
    raise OSError("no DNS in this test")


def resolver(peers=None) -> Resolver:
    return Resolver(_unreachable, lambda _n: asyncio.sleep(0, []), peers)


def test_a_gateway_found_on_the_lan_is_reached_at_its_address_without_dns_and_trusted():
    res = resolver()
    found: list[str] = []
    discovery = LanDiscovery("gw-a", "0.0.0.0", 8448, res, found.append)
    verdict = discovery.consider(sighting("gw-b", ["fe80::1", "127.0.0.1", "192.168.7.20"], 8449))
    assert verdict.action == "added" and verdict.address == "192.168.7.20:8449"
    assert found == ["gw-b"]
    assert asyncio.run(res.resolve("gw-b")) == Target("192.168.7.20", 8449, "gw-b", "gw-b", trusted=True)
    # seen again at the same place: nothing new; at a new place: it moved
    assert discovery.consider(sighting("gw-b", ["192.168.7.20"], 8449)).action == "unchanged"
    assert discovery.consider(sighting("gw-b", ["192.168.7.21"], 8449)).action == "moved"
    assert asyncio.run(res.resolve("gw-b")).host == "192.168.7.21"
    assert found == ["gw-b", "gw-b"]


@pytest.mark.parametrize(("name", "why"), [
    (None, "no server_name"),
    (b"", "no server_name"),
    ("not a name!", "not a valid server name"),
    ("gw_b.lan", "not a valid server name"),
    ("gw-b:99999", "not a valid server name"),
    ("[::1", "not a valid server name"),
    ("a" * 256, "too long"),
    (b"\xff\xfe", "not UTF-8"),
])  # fmt: skip
def test_a_name_that_is_not_a_server_name_is_refused_and_never_resolved(name, why):
    res = resolver()
    discovery = LanDiscovery("gw-a", "0.0.0.0", 8448, res, lambda _n: None)
    verdict = discovery.consider(sighting(name))
    assert verdict.action == "refused" and why in verdict.reason
    assert discovery.refused == 1 and res.peer_names() == []


def test_a_discovered_name_never_overrides_a_configured_peer():
    res = resolver({"gw-b": "192.168.1.20:8448"})
    discovery = LanDiscovery("gw-a", "0.0.0.0", 8448, res, lambda _n: None)
    verdict = discovery.consider(sighting("gw-b", ["10.66.0.9"], 9999))
    assert verdict.action == "refused" and "configured" in verdict.reason
    assert asyncio.run(res.resolve("gw-b")) == Target("192.168.1.20", 8448, "gw-b", "gw-b", trusted=True)
    # and the resolver itself holds the line, whoever asks it
    assert res.add_discovered("gw-b", "10.66.0.9:9999") is False
    assert asyncio.run(res.resolve("gw-b")).host == "192.168.1.20"


@pytest.mark.parametrize("addresses", [[], ["127.0.0.1"], ["0.0.0.0"], ["224.0.0.251"], ["255.255.255.255"],
                                       ["fe80::1"], ["::1"], ["::ffff:127.0.0.1"], ["nonsense"], ["240.0.0.1"]])  # fmt: skip
def test_an_address_no_peer_could_use_is_refused(addresses):
    verdict = LanPeers("gw-a", lambda _n: False).judge(sighting("gw-b", addresses))
    assert verdict.action == "refused" and "no usable LAN address" in verdict.reason


@pytest.mark.parametrize("port", [None, 0, 65536, -1])
def test_a_service_without_a_usable_port_is_refused(port):
    assert LanPeers("gw-a", lambda _n: False).judge(sighting("gw-b", port=port)).action == "refused"


def test_own_announcement_is_ignored_and_ipv6_is_bracketed():
    peers = LanPeers("gw-a", lambda _n: False)
    assert peers.judge(sighting("gw-a")).action == "own"
    assert peers.known == {}
    assert peers.judge(sighting("gw-c", ["fd00::7"], 8448)).address == "[fd00::7]:8448"
    assert usable_address("169.254.3.4") == "169.254.3.4"  # a LAN with no DHCP still works


def test_the_number_of_discovered_names_is_bounded():
    peers = LanPeers("gw-a", lambda _n: False, limit=3)
    for i in range(3):
        assert peers.judge(sighting(f"gw-{i}")).action == "added"
    refused = peers.judge(sighting("gw-late"))
    assert refused.action == "refused" and "already 3" in refused.reason
    assert peers.judge(sighting("gw-1", ["10.9.9.9"])).action == "moved"  # a known name may still move
    assert len(peers.known) == 3


def test_instance_labels_are_readable_unique_and_fit_a_dns_label():
    a, b = instance_label("127.0.0.1:8448"), instance_label("127.0.0.1:8449")
    assert a != b and a.startswith("lowband-127-0-0-1-8448-")
    long = instance_label("x" * 230 + ".lan")
    assert len(long.encode()) <= 63
