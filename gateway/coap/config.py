"""The ``[coap]`` section: where the CoAP API listens and what it keeps per peer (docs/config.md).

Example::

    [coap]
    bind = "127.0.0.1:5683"        # plain UDP (MSC3079); loopback needs nothing else
    # bind = "0.0.0.0:5683"        # any other address needs plain = true as well
    # plain = true
    secure_bind = "0.0.0.0:5684"   # Noise sessions on UDP (docs/coap.md), optional
    links = ["serial:/dev/ttyUSB1?bps=100"]  # Noise sessions on serial lines / LoRa modems, optional
    max_peers = 1024
    peer_idle_s = 3600
    observe_timeout_s = 300
    max_observations = 1024

Rules kept here:

* the section turns the API on; it needs ``bind``, ``secure_bind`` or ``links`` (any of them together);
* an address is ``"HOST:PORT"`` or a bare ``"HOST"`` (port 5683, CoAP's default); an IPv6 host is
  written ``"[::1]:5683"`` (or bare ``"::1"``); ``HOST`` is an IP literal or ``localhost`` (bound as
  127.0.0.1): a listener's address is checked here, not resolved at start-up; port 0 is refused because
  the port is advertised in ``/versions``;
* plain UDP carries access tokens in clear: on an address that is not loopback it is refused unless
  ``plain = true`` says the operator wants it (the issue's contract: loopback needs no further setting);
* ``bind`` and ``secure_bind`` may not name the same port on the same host.

Every bad value raises :class:`~lowband.gateway.config.ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from lowband.codecs.coap import DEFAULT_PORT
from lowband.gateway.config import ConfigError


@dataclass(frozen=True)
class CoapConfig:
    """The parsed ``[coap]`` section (defaults as documented in docs/config.md)."""

    #: plain UDP listener (host, port), None: no plain listener
    bind: tuple[str, int] | None = None
    #: the operator allows plain UDP on a non-loopback address
    plain: bool = False
    #: Noise-session UDP listener (host, port), None: none
    secure_bind: tuple[str, int] | None = None
    #: sticky peer states (token, key-table version, compact session) kept, least recently used dropped first
    max_peers: int = 1024
    #: a peer silent this long is forgotten (its client sends its token again)
    peer_idle_s: float = 3600.0
    #: how long one long-poll inside an observation of /sync waits before it is renewed (nothing is sent then)
    observe_timeout_s: float = 300.0
    #: observations of /sync kept at once, the oldest ended first
    max_observations: int = 1024
    #: serial lines and LoRa modems for CoAP clients ("serial:/dev/ttyUSB1?bps=100"; gateway/coap/link_transport.py)
    links: tuple[str, ...] = ()


_KEYS = ("bind", "plain", "secure_bind", "max_peers", "peer_idle_s", "observe_timeout_s", "max_observations", "links")
_LINK = re.compile(r"(serial|lora):[^?\s]+(\?\S*)?")
#: an observation's long-poll is one HTTP /sync; an hour is far past anything a client or NAT needs
_MAX_OBSERVE_TIMEOUT_S = 3600.0
_PORT = re.compile(r"[0-9]{1,5}")


def parse_address(value: str, key: str) -> tuple[str, int]:
    """``"HOST:PORT"``, ``"HOST"``, ``"[V6]:PORT"`` or ``"V6"`` -> (host, port); ConfigError naming ``key``.

    The host must be an IP literal or ``localhost`` (returned as ``127.0.0.1``); the port 1-65535
    (5683 when absent).
    """
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f'{key} {value[:80]!r} must be "HOST:PORT" (IPv6 as "[::1]:5683")')
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, None  # a bare IPv4 or IPv6 address, or localhost
    if port_text is None:
        port = DEFAULT_PORT
    elif _PORT.fullmatch(port_text) and 0 < int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ConfigError(f"{key} {value[:80]!r}: the port must be a number from 1 to 65535")
    if host == "localhost":
        return "127.0.0.1", port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{key} {value[:80]!r}: the host must be an IP address or localhost") from None
    return str(address), port


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP literal) is a loopback address, IPv4-mapped IPv6 included."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _take(section: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = section[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ConfigError(f"coap.{key} must be {what} (got {type(value).__name__})")
    return value


def _positive_int(section: dict[str, Any], key: str, default: int) -> int:
    if key not in section:
        return default
    value: int = _take(section, key, int, "a positive integer")
    if value <= 0:
        raise ConfigError(f"coap.{key} must be a positive integer (got {value})")
    return value


def _seconds(section: dict[str, Any], key: str, default: float, limit: float | None = None) -> float:
    if key not in section:
        return default
    value = float(_take(section, key, (int, float), "a number of seconds"))
    if not 0 < value < float("inf") or (limit is not None and value > limit):
        upper = f" and at most {limit:g}" if limit is not None else ""
        raise ConfigError(f"coap.{key} must be a positive number of seconds{upper} (got {value:g})")
    return value


def parse_coap_config(section: Any) -> CoapConfig:
    """The ``[coap]`` table (as TOML gave it) -> :class:`CoapConfig`; ConfigError for anything wrong.

    Refused: a section that is not a table, unknown keys, wrong types, non-positive numbers, an
    address that does not parse, no listener at all, plain UDP on a non-loopback address without
    ``plain = true``, both listeners on the same port.
    """
    if not isinstance(section, dict):
        raise ConfigError("[coap] must be a table")
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key coap.{unknown[0]} (known: {', '.join(_KEYS)})")
    bind = parse_address(_take(section, "bind", str, '"HOST:PORT"'), "coap.bind") if "bind" in section else None
    secure_bind = (parse_address(_take(section, "secure_bind", str, '"HOST:PORT"'), "coap.secure_bind")
                   if "secure_bind" in section else None)  # fmt: skip
    plain = bool(_take(section, "plain", bool, "true or false")) if "plain" in section else False
    links = _links(section)
    if bind is None and secure_bind is None and not links:
        raise ConfigError('[coap] needs bind = "HOST:PORT" (plain UDP) or secure_bind = "HOST:PORT" (Noise sessions)')
    if bind is not None and not plain and not is_loopback(bind[0]):
        raise ConfigError(f"coap.bind {bind[0]}:{bind[1]} is not a loopback address: plain UDP carries access tokens "
                          "in clear, so set coap.plain = true to allow it (or use secure_bind)")  # fmt: skip
    if bind is not None and secure_bind is not None and bind[1] == secure_bind[1]:
        wildcard = {"0.0.0.0", "::"}
        if bind[0] == secure_bind[0] or bind[0] in wildcard or secure_bind[0] in wildcard:
            raise ConfigError(f"coap.bind and coap.secure_bind both use UDP port {bind[1]}")
    return CoapConfig(
        bind=bind,
        plain=plain,
        secure_bind=secure_bind,
        max_peers=_positive_int(section, "max_peers", CoapConfig.max_peers),
        peer_idle_s=_seconds(section, "peer_idle_s", CoapConfig.peer_idle_s),
        observe_timeout_s=_seconds(section, "observe_timeout_s", CoapConfig.observe_timeout_s, _MAX_OBSERVE_TIMEOUT_S),
        max_observations=_positive_int(section, "max_observations", CoapConfig.max_observations),
        links=links,
    )


def _links(section: dict[str, Any]) -> tuple[str, ...]:
    """``links = ["serial:PATH?bps=N", "lora:PATH?region=EU868&dr=5"]``: each a line spec, no path twice."""
    if "links" not in section:
        return ()
    value = section["links"]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError('coap.links must be a list of strings like "serial:/dev/ttyUSB1?bps=100"')
    paths: set[str] = set()
    for spec in value:
        if not _LINK.fullmatch(spec):
            raise ConfigError(f'coap.links: {spec[:80]!r} is not "serial:PATH?bps=N" or "lora:PATH?region=…&dr=N"')
        path = spec.partition(":")[2].partition("?")[0]
        if path in paths:
            raise ConfigError(f"coap.links names {path[:80]} twice")
        paths.add(path)
    return tuple(value)
