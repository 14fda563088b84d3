"""A private LAN for tests: network namespaces on one bridge, made and removed by the test.

Multicast (mDNS) does not run over loopback, so a test that needs two hosts
on a link makes them: a bridge in the test's own namespace (with an address,
so the test can talk to the hosts and listen on the link) and one network
namespace per host, each joined to the bridge by a veth pair. Everything is
named with a per-run prefix and removed on exit, whatever happened. Tests
skip, saying why, where namespaces cannot be made (not root, no ``ip``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest


@dataclass
class Lan:
    """The link: the bridge's address here, and each namespace with its address."""

    prefix: str
    bridge: str
    bridge_address: str
    namespaces: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)

    def wrap(self, index: int) -> list[str]:
        """The command prefix that runs a program in namespace ``index``."""
        return ["ip", "netns", "exec", self.namespaces[index]]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def _free_subnet() -> ipaddress.IPv4Network:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=20, check=False).stdout
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24")
        if f"10.{net.network_address.packed[1]}.{net.network_address.packed[2]}." not in used:
            return net
    raise OSError("no free 10.x.y.0/24 subnet")


def skip_unless_namespaces() -> None:
    """Skip the calling test, with the reason, where this machine cannot make network namespaces."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed: cannot make network namespaces for a multicast LAN")
    if os.geteuid() != 0:
        pytest.skip("making network namespaces for a multicast LAN needs root")


@contextlib.contextmanager
def private_lan(hosts: int) -> Iterator[Lan]:
    """``hosts`` namespaces on one bridge, all removed on exit; skips when namespaces cannot be made."""
    skip_unless_namespaces()
    tag = f"lb{os.getpid() % 10000}{random.randint(0, 99):02d}"
    net = _free_subnet()
    hosts_in_net = list(net.hosts())
    lan = Lan(tag, f"{tag}br", f"{hosts_in_net[0]}")
    made_bridge = False
    veths: list[str] = []
    try:
        try:
            _ip("link", "add", lan.bridge, "type", "bridge")
            made_bridge = True
        except OSError as exc:
            pytest.skip(f"this machine cannot make a bridge for a private LAN: {exc}")
        _ip("addr", "add", f"{lan.bridge_address}/{net.prefixlen}", "dev", lan.bridge)
        _ip("link", "set", lan.bridge, "up")
        for i in range(hosts):
            ns, outside, inside = f"{tag}-{i}", f"{tag}v{i}", f"{tag}p{i}"
            try:
                _ip("netns", "add", ns)
            except OSError as exc:
                pytest.skip(f"this machine cannot make network namespaces: {exc}")
            lan.namespaces.append(ns)
            address = str(hosts_in_net[i + 1])
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            veths.append(outside)
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", lan.bridge, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/{net.prefixlen}", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            lan.addresses.append(address)
        yield lan
    finally:
        for veth in veths:  # removes its peer in the namespace too (a namespace's removal does it only later)
            with contextlib.suppress(OSError):
                _ip("link", "del", veth)
        for ns in lan.namespaces:
            with contextlib.suppress(OSError):
                _ip("netns", "del", ns)
        if made_bridge:
            with contextlib.suppress(OSError):
                _ip("link", "del", lan.bridge)


def leftovers(lan: Lan) -> list[str]:
    """Namespaces and links of ``lan`` still present (for the test to check its own cleanup)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20, check=False).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=20, check=False).stdout
    return [line.split()[0] for line in names.splitlines() if line.startswith(lan.prefix)] + \
        [word.rstrip(":").split("@")[0] for word in links.split() if word.startswith(lan.prefix)]  # fmt: skip
