"""Push gateway addresses (server-side request forgery): the URL and address rules in memory
(``homeserver/push_destination.py``), then a running gateway: ``/pushers/set`` refuses each class of
address with 400 ``M_INVALID_PARAM``, a name resolving to 127.0.0.1 (``localhost``) is refused at delivery
(suspended, counted, not retried) unless ``[push] allowed_ranges`` allows it, and ``[push]`` in the config."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from harness import Client, gateway_in_loop
from test_push_pushers import LOOPBACK_ALLOWED, V3, PushGateway, expect, make_room, pusher, say, setup
from yarl import URL

from lowband.gateway.config import ConfigError, PushConfig, RateLimits, load_config
from lowband.gateway.homeserver.push_destination import (
    AddressPolicy,
    CheckedResolver,
    PushURLError,
    RefusedDestination,
    check_push_url,
)

NOTIFY = "/_matrix/push/v1/notify"
DEFAULT = AddressPolicy(PushConfig())

#: (URL, a word the refusal must contain): one row per class of address and per URL form
REFUSED = [
    ("http://127.0.0.1:8008" + NOTIFY, "loopback"),
    ("http://127.255.0.9" + NOTIFY, "loopback"),
    ("http://[::1]:8008" + NOTIFY, "loopback"),
    ("http://10.1.2.3" + NOTIFY, "private"),
    ("http://172.16.0.1" + NOTIFY, "private"),
    ("http://172.31.255.254" + NOTIFY, "private"),
    ("http://192.168.1.20" + NOTIFY, "private"),
    ("http://[fd12:3456::1]" + NOTIFY, "unique local"),
    ("http://169.254.169.254" + NOTIFY, "link-local"),
    ("http://[fe80::1]" + NOTIFY, "link-local"),
    ("http://100.64.0.1" + NOTIFY, "CGNAT"),
    ("http://0.0.0.0" + NOTIFY, "unspecified"),
    ("http://[::]" + NOTIFY, "unspecified"),
    ("http://224.0.0.251" + NOTIFY, "multicast"),
    ("http://[ff02::1]" + NOTIFY, "multicast"),
    ("http://255.255.255.255" + NOTIFY, "broadcast"),
    ("http://192.0.2.1" + NOTIFY, "documentation"),
    ("http://198.18.0.1" + NOTIFY, "benchmarking"),
    ("http://240.0.0.1" + NOTIFY, "reserved"),
    ("http://[::ffff:127.0.0.1]" + NOTIFY, "127.0.0.1: loopback"),
    ("http://[::ffff:7f00:1]" + NOTIFY, "127.0.0.1: loopback"),
    ("http://[::ffff:169.254.169.254]" + NOTIFY, "link-local"),
    ("http://[64:ff9b::a00:1]" + NOTIFY, "10.0.0.1: private"),
    ("http://[2002:c0a8:101::1]" + NOTIFY, "192.168.1.1: private"),
    ("http://[::7f00:1]" + NOTIFY, "IPv4-compatible"),
    ("http://[2001:0:4136:e378::1]" + NOTIFY, "Teredo"),
    # numeric forms the C library reads as 127.0.0.1 and Python's ipaddress does not: ambiguous
    ("http://2130706433" + NOTIFY, "ambiguous"),
    ("http://0x7f.1" + NOTIFY, "ambiguous"),
    ("http://0x7f000001" + NOTIFY, "ambiguous"),
    ("http://127.1" + NOTIFY, "ambiguous"),
    ("http://0177.0.0.1" + NOTIFY, "ambiguous"),
    ("http://127.000.000.001" + NOTIFY, "ambiguous"),
    ("http://1.2.3.4.5" + NOTIFY, "ambiguous"),
    ("http://[1.2.3.4]" + NOTIFY, "not an IPv6 address"),
    ("http://[fe80::1%25eth0]" + NOTIFY, "DNS name or an IP address"),
    # not http(s), user info, odd hosts
    ("ftp://push.example.org" + NOTIFY, "scheme 'ftp'"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://push.example.org" + NOTIFY, "scheme"),
    ("http://user:secret@push.example.org" + NOTIFY, "user name or password"),
    ("http://push.example.org@127.0.0.1" + NOTIFY, "user name or password"),
    ("http://push.example.org\\@127.0.0.1" + NOTIFY, "backslashes"),
    ("http://push.example.org\t" + NOTIFY, "without spaces"),
    ("http://püsh.example.org" + NOTIFY, "ASCII"),
    ("http://push..example.org" + NOTIFY, "not a valid DNS name"),
    ("http://-push.example.org" + NOTIFY, "not a valid DNS name"),
    ("http://push.example.org:0" + NOTIFY, "port 1-65535"),
    ("http://push.example.org:99999" + NOTIFY, "port 1-65535"),
    ("//push.example.org" + NOTIFY, "absolute URL"),
]

ACCEPTED = [
    ("https://push.example.org" + NOTIFY, "push.example.org"),
    ("https://Push.Example.org.:8443" + NOTIFY, "push.example.org."),
    ("http://localhost:5000" + NOTIFY, "localhost"),  # a name: its addresses are checked at delivery
    ("http://8.8.8.8" + NOTIFY, "8.8.8.8"),
    ("http://[2606:4700:4700::1111]" + NOTIFY, "2606:4700:4700::1111"),
    ("http://[::ffff:8.8.8.8]" + NOTIFY, "::ffff:808:808"),  # IPv4-mapped public: judged as 8.8.8.8
    ("http://push.example.org" + NOTIFY + "?to=@127.0.0.1", "push.example.org"),  # '@' after the authority
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused_urls_name_the_reason(url: str, reason: str) -> None:
    with pytest.raises(PushURLError) as caught:
        check_push_url(url, DEFAULT)
    assert reason in str(caught.value)


@pytest.mark.parametrize(("url", "host"), ACCEPTED)
def test_public_urls_and_names_pass(url: str, host: str) -> None:
    assert check_push_url(url, DEFAULT) == host
    assert URL(url).raw_host == host  # the host checked is the one aiohttp (yarl) connects to


def test_allowed_ranges_and_allow_private() -> None:
    loopback = AddressPolicy(PushConfig(allowed_ranges=("127.0.0.1/32", "fd00::/8")))
    assert loopback.refusal("127.0.0.1") is None
    assert loopback.refusal("::ffff:127.0.0.1") is None  # the same address, mapped
    assert loopback.refusal("fd00::5") is None
    assert loopback.refusal("127.0.0.2") == "loopback"
    assert loopback.refusal("::1") == "loopback"
    assert check_push_url("http://127.0.0.1:1" + NOTIFY, loopback) == "127.0.0.1"

    lan = AddressPolicy(PushConfig(allow_private=True))
    for address in ("10.0.0.1", "192.168.1.20", "169.254.169.254", "127.0.0.1", "::1", "fe80::1%eth0", "fc00::1"):
        assert lan.refusal(address) is None, address
    for address, reason in (("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"),
                            ("255.255.255.255", "broadcast"), ("::ffff:0.0.0.0", "unspecified")):  # fmt: skip
        assert reason in (lan.refusal(address) or ""), address
    # an operator can still name even those explicitly
    assert AddressPolicy(PushConfig(allowed_ranges=("0.0.0.0/32",))).refusal("0.0.0.0") is None

    https_only = AddressPolicy(PushConfig(url_schemes=("https",)))
    with pytest.raises(PushURLError, match="scheme 'http' is not allowed"):
        check_push_url("http://push.example.org" + NOTIFY, https_only)
    assert check_push_url("https://push.example.org" + NOTIFY, https_only) == "push.example.org"
    for public in ("8.8.8.8", "2606:4700:4700::1111", "1.1.1.1"):
        assert DEFAULT.refusal(public) is None


class _Answers(AbstractResolver):
    """A resolver answering what it is told: a name that changes its addresses between lookups."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:  # fmt: skip
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=0) for a in self.answers.pop(0)]  # fmt: skip

    async def close(self) -> None:
        pass


def test_the_resolver_drops_refused_addresses_at_each_lookup() -> None:
    async def run() -> None:
        inner = _Answers(["93.184.215.14"], ["93.184.215.14", "10.0.0.7"], ["127.0.0.1", "::1"],
                         ["169.254.169.254"])  # fmt: skip
        resolver = CheckedResolver(DEFAULT, inner)
        assert [r["host"] for r in await resolver.resolve("push.example.org", 443)] == ["93.184.215.14"]
        assert [r["host"] for r in await resolver.resolve("push.example.org", 443)] == ["93.184.215.14"]
        # rebinding: the same name now points at this host
        with pytest.raises(RefusedDestination, match=r"127\.0\.0\.1 \(loopback\), ::1 \(loopback\)"):
            await resolver.resolve("push.example.org", 443)
        with pytest.raises(RefusedDestination, match="link-local"):
            await resolver.resolve("push.example.org", 443)
        allowed = CheckedResolver(
            AddressPolicy(PushConfig(allowed_ranges=("127.0.0.1/32",))), _Answers(["127.0.0.1", "::1"])
        )
        assert [r["host"] for r in await allowed.resolve("localhost", 80)] == ["127.0.0.1"]

    asyncio.run(run())


def test_push_section_of_the_config(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[push]\nallow_private = true\nallowed_ranges = ["192.168.1.20/32", "fd00::/8"]\n'
                    'url_schemes = ["https"]\n')  # fmt: skip
    assert load_config(path).push == PushConfig(True, ("192.168.1.20/32", "fd00::/8"), ("https",))
    assert load_config(None).push == PushConfig(False, (), ("http", "https"))
    for body, message in (('allowed_ranges = ["192.168.1.20/24"]', "not an address range"),
                          ('allowed_ranges = ["push.example.org"]', "not an address range"),
                          ('url_schemes = ["ftp"]', "url_schemes"), ("url_schemes = []", "url_schemes"),
                          ('allow_private = "yes"', "push.allow_private"), ("blocklist = []", "push.blocklist")):  # fmt: skip
        path.write_text(f"[push]\n{body}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_pushers_set_refuses_each_class_of_address(tmp_path: Path) -> None:
    async def run() -> None:
        async with setup(tmp_path, "mallory", push_config=PushConfig()) as ((mallory,), _, push):
            for url, reason in REFUSED:
                if not url.endswith(NOTIFY):
                    continue
                body = expect(await mallory.request("POST", V3 + "/pushers/set", pusher(url)), 400, "M_INVALID_PARAM")
                assert reason in body["error"], (url, body)
            # the test push gateway itself is on loopback: refused without an allowance
            body = expect(await mallory.request("POST", V3 + "/pushers/set", pusher(push.url)), 400, "M_INVALID_PARAM")
            assert "loopback" in body["error"] and "allowed_ranges" in body["error"]
            assert expect(await mallory.request("GET", V3 + "/pushers"), 200)["pushers"] == []
            expect(await mallory.request("POST", V3 + "/pushers/set", pusher("https://push.example.org" + NOTIFY)), 200)

    asyncio.run(run())


def _localhost_url(push: Any) -> str:
    return f"http://localhost:{push.port}{NOTIFY}"


async def _wait_until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def test_a_name_resolving_to_loopback_is_refused_at_delivery(tmp_path: Path) -> None:
    async def run() -> None:
        async with setup(tmp_path, "alice", "bob", push_config=PushConfig()) as ((alice, bob), svc, push):
            room = await make_room(alice, bob)
            # a name passes the set-time check (it is not resolved then) ...
            expect(await alice.request("POST", V3 + "/pushers/set", pusher(_localhost_url(push))), 200)
            delivery = svc.components["push"].delivery
            await say(bob, room, "hello alice", "t1")
            # ... and is refused when connecting: a permanent failure, logged once and counted, not retried
            await _wait_until(lambda: delivery.refused >= 1)
            key = next(iter(delivery.suspended))
            assert "resolves only to refused addresses" in delivery.suspended[key]
            assert "127.0.0.1 (loopback)" in delivery.suspended[key]
            await say(bob, room, "again", "t2")
            await asyncio.sleep(1.5)  # past the first retry (1 s) had it been a retryable failure
            assert delivery.refused == 1 and delivery.failed_attempts == 0 and delivery.sent == 0
            assert push.received == []
            # the pusher is kept (listed); setting it again gives it one more try, refused again
            assert len(expect(await alice.request("GET", V3 + "/pushers"), 200)["pushers"]) == 1
            expect(await alice.request("POST", V3 + "/pushers/set", pusher(_localhost_url(push))), 200)
            await say(bob, room, "third", "t3")
            await _wait_until(lambda: delivery.refused >= 2)
            assert push.received == [] and delivery.sent == 0

    asyncio.run(run())


def test_allowed_ranges_let_a_local_push_gateway_through(tmp_path: Path) -> None:
    async def run() -> None:
        async with setup(tmp_path, "alice", "bob", push_config=LOOPBACK_ALLOWED) as ((alice, bob), svc, push):
            room = await make_room(alice, bob)
            # by name: localhost's ::1 is dropped, its 127.0.0.1 is allowed
            expect(await alice.request("POST", V3 + "/pushers/set", pusher(_localhost_url(push))), 200)
            # an IP literal outside the allowed /32 is still refused
            body = expect(await alice.request("POST", V3 + "/pushers/set", pusher("http://127.0.0.2:1" + NOTIFY)),
                          400, "M_INVALID_PARAM")  # fmt: skip
            assert "loopback" in body["error"]
            hello = await say(bob, room, "hello alice", "t1")
            received = await push.wait_for(1)
            assert received[0]["notification"]["event_id"] == hello
            delivery = svc.components["push"].delivery
            assert delivery.refused == 0 and not delivery.suspended

    asyncio.run(run())


def test_a_pusher_set_before_the_allowance_was_removed_is_refused_at_delivery(tmp_path: Path) -> None:
    async def run() -> None:
        async with setup(tmp_path, "alice", "bob", push_config=LOOPBACK_ALLOWED) as ((alice, bob), _, push):
            room = await make_room(alice, bob)
            expect(await alice.request("POST", V3 + "/pushers/set", pusher(push.url)), 200)
            await say(bob, room, "allowed", "t1")
            await push.wait_for(1)
            token = bob.token
            port = push.port
        # the operator removes the allowance and restarts: the stored IP-literal pusher is refused before
        # any connection is made
        again = PushGateway()
        again.port, again.url = port, push.url
        await again.start()
        found: list[Any] = []
        try:
            async with gateway_in_loop(tmp_path, on_ready=found.append, rate_limits=RateLimits(enabled=False)) as url, \
                    aiohttp.ClientSession() as session:  # fmt: skip
                await say(Client(session, url, token), room, "not any more", "t2")
                delivery = found[0].components["push"].delivery
                await _wait_until(lambda: delivery.refused >= 1)
                assert "loopback" in next(iter(delivery.suspended.values()))
                assert delivery.failed_attempts == 0 and delivery.sent == 0
                await asyncio.sleep(0.2)
                assert again.received == []
        finally:
            await again.stop()

    asyncio.run(run())
