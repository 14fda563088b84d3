"""Server name resolution, with the network calls replaced by tables (no DNS in tests)."""

from __future__ import annotations

import asyncio
import json

import pytest

from lowband.gateway.federation.resolver import Resolver, ServerNameError, Target, parse_server_name


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("example.org", ("example.org", None, False)),
        ("example.org:8449", ("example.org", 8449, False)),
        ("127.0.0.1", ("127.0.0.1", None, True)),
        ("127.0.0.1:18481", ("127.0.0.1", 18481, True)),
        ("[::1]", ("::1", None, True)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443, True)),
    ],
)
def test_server_names_parse(name, parsed):
    assert parse_server_name(name) == parsed


@pytest.mark.parametrize("name", ["", "a b", "example.org:", "example.org:0", "example.org:65536", "example.org:x",
                                  "[::1", "[nothex]:1", "::1", "a" * 300, "ex_ample.org", "host:80:80"])  # fmt: skip
def test_bad_server_names_are_refused(name):
    with pytest.raises(ServerNameError):
        parse_server_name(name)


class Net:
    """Well-known answers and SRV records by name; records what was asked."""

    def __init__(self, well_known=None, srv=None):
        self.well_known = well_known or {}
        self.srv = srv or {}
        self.asked: list[str] = []

    async def fetch(self, host):
        self.asked.append(f"wk {host}")
        answer = self.well_known.get(host)
        if answer is None:
            raise OSError("connection refused")
        if isinstance(answer, tuple):
            return answer
        return 200, json.dumps(answer).encode(), None

    async def lookup(self, name):
        self.asked.append(f"srv {name}")
        return self.srv.get(name, [])


def resolve(net, name, peers=None, clock=lambda: 0.0):
    return asyncio.run(Resolver(net.fetch, net.lookup, peers, clock).resolve(name))


def test_ip_literals_and_explicit_ports_need_no_lookup():
    net = Net()
    assert resolve(net, "127.0.0.1:18481") == Target("127.0.0.1", 18481, "127.0.0.1:18481", None)
    assert resolve(net, "[::1]") == Target("::1", 8448, "[::1]", None)
    assert resolve(net, "gw.example:9000") == Target("gw.example", 9000, "gw.example:9000", "gw.example")
    assert net.asked == []


def test_a_peer_is_reached_at_its_address_and_trusted():
    net = Net()
    target = resolve(net, "gw-b.lan", peers={"gw-b.lan": "192.168.1.20:8448"})
    assert target == Target("192.168.1.20", 8448, "gw-b.lan", "gw-b.lan", trusted=True)
    assert net.asked == []


def test_well_known_delegation_then_srv_then_default_port():
    net = Net(well_known={"example.org": {"m.server": "matrix.example.org"}},
              srv={"_matrix-fed._tcp.matrix.example.org": [("backend.example.org", 8000)]})  # fmt: skip
    assert resolve(net, "example.org") == Target("backend.example.org", 8000, "matrix.example.org", "matrix.example.org")
    net = Net(well_known={"example.org": {"m.server": "matrix.example.org:443"}})
    assert resolve(net, "example.org") == Target("matrix.example.org", 443, "matrix.example.org:443", "matrix.example.org")
    net = Net(well_known={"example.org": {"m.server": "matrix.example.org"}})
    assert resolve(net, "example.org") == Target("matrix.example.org", 8448, "matrix.example.org", "matrix.example.org")


def test_without_well_known_srv_names_the_port_but_not_the_host_header():
    net = Net(srv={"_matrix._tcp.example.org": [("hs.example.org", 8443)]})
    assert resolve(net, "example.org") == Target("hs.example.org", 8443, "example.org", "example.org")
    assert net.asked == ["wk example.org", "srv _matrix-fed._tcp.example.org", "srv _matrix._tcp.example.org"]
    assert resolve(Net(), "example.org") == Target("example.org", 8448, "example.org", "example.org")


@pytest.mark.parametrize("answer", [(404, b"", None), (200, b"not json", None), (200, b'{"m.server": 5}', None),
                                    (200, b'{"m.server": "bad name!"}', None), (200, b"[]", None)])  # fmt: skip
def test_a_useless_well_known_falls_through(answer):
    net = Net(well_known={"example.org": answer})
    assert resolve(net, "example.org") == Target("example.org", 8448, "example.org", "example.org")


def test_well_known_answers_are_cached_for_their_lifetime():
    now = [0.0]
    net = Net(well_known={"example.org": (200, b'{"m.server": "hs.example.org:443"}', "public, max-age=600")})
    resolver = Resolver(net.fetch, net.lookup, clock=lambda: now[0])
    for t in (0.0, 599.0, 601.0):
        now[0] = t
        asyncio.run(resolver.resolve("example.org"))
    assert net.asked.count("wk example.org") == 2
    failing = Net()
    resolver = Resolver(failing.fetch, failing.lookup, clock=lambda: now[0])
    for t in (0.0, 3599.0, 3601.0):
        now[0] = t
        asyncio.run(resolver.resolve("example.org"))
    assert failing.asked.count("wk example.org") == 2  # a failure is remembered for an hour
