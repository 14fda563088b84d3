"""The ``[coap]`` section (gateway/coap/config.py): defaults, addresses, the plain-UDP rule, every refusal."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from lowband.gateway.coap.config import CoapConfig, is_loopback, parse_address, parse_coap_config
from lowband.gateway.config import ConfigError, load_config


def test_bind_alone_on_loopback_turns_the_api_on_with_the_defaults() -> None:
    config = parse_coap_config({"bind": "127.0.0.1:5683"})
    assert config == CoapConfig(bind=("127.0.0.1", 5683))
    assert (config.plain, config.secure_bind, config.max_peers, config.peer_idle_s, config.observe_timeout_s,
            config.max_observations) == (False, None, 1024, 3600.0, 300.0, 1024)  # fmt: skip


def test_every_key() -> None:
    config = parse_coap_config({"bind": "0.0.0.0:6000", "plain": True, "secure_bind": "0.0.0.0:6001",
                                "max_peers": 10, "peer_idle_s": 60, "observe_timeout_s": 2.5,
                                "max_observations": 3})  # fmt: skip
    assert config == CoapConfig(("0.0.0.0", 6000), True, ("0.0.0.0", 6001), 10, 60.0, 2.5, 3)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:40000", ("127.0.0.1", 40000)),
    ("127.0.0.1", ("127.0.0.1", 5683)),
    ("localhost:7000", ("127.0.0.1", 7000)),
    ("localhost", ("127.0.0.1", 5683)),
    ("[::1]:7000", ("::1", 7000)),
    ("[::1]", ("::1", 5683)),
    ("::1", ("::1", 5683)),
    ("::", ("::", 5683)),
    ("[::ffff:127.0.0.1]:9", ("::ffff:127.0.0.1", 9)),
])  # fmt: skip
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    host, port = parse_address(text, "coap.bind")
    # the host comes back as ipaddress writes it (its spelling of IPv4-mapped addresses varies by Python version)
    assert (ipaddress.ip_address(host), port) == (ipaddress.ip_address(expected[0]), expected[1])


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":5683",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:x",
        "gw.example:5683",
        "[::1",
        "[::1]x",
        "[::1]:",
        "1.2.3:5",
    ],
)
def test_bad_addresses_are_refused_naming_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^coap\.bind "):
        parse_coap_config({"bind": text})


def test_plain_udp_beyond_loopback_needs_plain_true() -> None:
    for address in ("0.0.0.0:5683", "192.168.1.2:5683", "[::]:5683", "[2001:db8::1]:5683"):
        with pytest.raises(ConfigError, match="coap.plain = true"):
            parse_coap_config({"bind": address})
        assert parse_coap_config({"bind": address, "plain": True}).plain
    for address in ("127.0.0.1:5683", "127.9.9.9:5683", "[::1]:5683", "[::ffff:127.0.0.1]:5683", "localhost"):
        assert parse_coap_config({"bind": address}).bind is not None
    # the secure listener needs no such permission
    assert parse_coap_config({"secure_bind": "0.0.0.0:5684"}).bind is None


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")


@pytest.mark.parametrize(("section", "message"), [
    ({}, "needs bind"),
    ({"plain": True}, "needs bind"),
    ({"bind": 5683}, r"coap\.bind must be"),
    ({"bind": "127.0.0.1:5683", "plain": "yes"}, r"coap\.plain must be true or false"),
    ({"bind": "127.0.0.1:5683", "max_peers": 0}, r"coap\.max_peers must be a positive integer"),
    ({"bind": "127.0.0.1:5683", "max_peers": 1.5}, r"coap\.max_peers must be a positive integer"),
    ({"bind": "127.0.0.1:5683", "max_peers": True}, r"coap\.max_peers must be a positive integer"),
    ({"bind": "127.0.0.1:5683", "max_observations": -1}, r"coap\.max_observations must be a positive"),
    ({"bind": "127.0.0.1:5683", "peer_idle_s": 0}, r"coap\.peer_idle_s must be a positive number"),
    ({"bind": "127.0.0.1:5683", "peer_idle_s": float("inf")}, r"coap\.peer_idle_s must be a positive number"),
    ({"bind": "127.0.0.1:5683", "peer_idle_s": float("nan")}, r"coap\.peer_idle_s must be a positive number"),
    ({"bind": "127.0.0.1:5683", "observe_timeout_s": 7200}, r"coap\.observe_timeout_s .* at most 3600"),
    ({"bind": "127.0.0.1:5683", "observe_timeout_s": "30"}, r"coap\.observe_timeout_s must be"),
    ({"bind": "127.0.0.1:5683", "secure_bind": "127.0.0.1:5683"}, "both use UDP port 5683"),
    ({"bind": "0.0.0.0:5683", "plain": True, "secure_bind": "127.0.0.1:5683"}, "both use UDP port 5683"),
    ({"bind": "127.0.0.1:5683", "listen": "x"}, r"unknown config key coap\.listen"),
    ("bind", r"\[coap\] must be a table"),
])  # fmt: skip
def test_bad_values_are_refused_with_one_clear_line(section: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_coap_config(section)
    assert "\n" not in str(caught.value)


def test_the_section_comes_from_the_gateway_config_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[coap]\nbind = "127.0.0.1:5700"\nmax_peers = 5\n')
    config = load_config(path)
    assert parse_coap_config(config.components["coap"]) == CoapConfig(bind=("127.0.0.1", 5700), max_peers=5)


def test_the_same_port_on_different_hosts_is_fine() -> None:
    config = parse_coap_config({"bind": "127.0.0.1:5683", "secure_bind": "127.0.0.2:5683"})
    assert config.bind == ("127.0.0.1", 5683) and config.secure_bind == ("127.0.0.2", 5683)
