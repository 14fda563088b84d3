"""Gateway configuration: a TOML file, overridden by command-line flags.

Every setting has a default that runs a gateway on embedded SQLite with no
outside services. The file is optional; ``lowband serve --help`` lists the
flags, and ``docs/config.md`` documents every key. Unknown keys and wrong
types are refused with :class:`ConfigError` naming the key, so a typo never
silently falls back to a default.

Example::

    [server]
    server_name = "gw.example"
    data_dir = "/var/lib/lowband"

    [http]
    listen = "127.0.0.1:8008"

    [registration]
    enabled = false

    [media]
    max_upload_bytes = 10485760

    [rate_limits]
    enabled = true
    per_user_per_s = 10.0
    per_user_burst = 50
    per_ip_per_s = 20.0
    per_ip_burst = 100

    [federation]
    enabled = true
    peers = { "gw-b.lan" = "192.168.1.20:8448" }
    verify_certificates = true
    ip_range_blocklist = ["10.0.0.0/8", "127.0.0.0/8"]   # default: private, loopback, link-local …
    discovery = false

    [metrics]
    listen = "127.0.0.1:9100"   # Prometheus metrics without a token, loopback only (default: off)

    [ble]
    enabled = true              # BLE sensors (docs/ble.md); also on when `lowband ble add` made sensors
    adapter = "hci0"
    mode = "passive"

    [retention]
    enabled = true              # m.room.retention honoured, expired events purged (docs/retention.md)
    telemetry_max_lifetime_s = 2592000
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

_SERVER_NAME = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


#: Sections handed raw to the components that own them (they validate them).
COMPONENT_SECTIONS = ("mqtt", "links", "devices", "appservices", "coap")


class ConfigError(ValueError):
    """The configuration file or a flag is wrong; the message names the key."""


@dataclass(frozen=True)
class RateLimits:
    """Token buckets for requests that write (sends, joins, registrations) and, separately, that read."""

    enabled: bool = True
    per_user_per_s: float = 10.0
    per_user_burst: int = 50
    per_ip_per_s: float = 20.0
    per_ip_burst: int = 100
    #: requests that read (sync, messages, state, members, media downloads …), per user
    reads_per_user_per_s: float = 50.0
    reads_per_user_burst: int = 300


#: Addresses federation never connects to unless the config says otherwise: the ranges Synapse
#: blocks by default (private, loopback, link-local, shared, documentation, multicast), so a room
#: cannot make the gateway probe its own network. Explicitly configured and discovered peers are
#: exempt: the operator named them.
DEFAULT_IP_RANGE_BLOCKLIST: tuple[str, ...] = (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "192.0.0.0/24",
    "169.254.0.0/16", "192.88.99.0/24", "198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "0.0.0.0/8", "::1/128", "fe80::/10", "fc00::/7", "2001:db8::/32", "ff00::/8", "fec0::/10",
)  # fmt: skip


@dataclass(frozen=True)
class FederationConfig:
    """How the gateway talks to other servers (``[federation]``, ``--peer``)."""

    enabled: bool = True
    #: server name → "HOST:PORT" to connect to, bypassing name resolution (and the blocklist)
    peers: dict[str, str] = field(default_factory=dict)
    verify_certificates: bool = True
    ip_range_blocklist: tuple[str, ...] = DEFAULT_IP_RANGE_BLOCKLIST
    #: announce and find gateways on the LAN with mDNS/DNS-SD (opt-in)
    discovery: bool = False
    #: notary servers asked for keys a server cannot serve itself (none by default)
    trusted_key_servers: tuple[str, ...] = ()


#: Hosts the token-less metrics listener may bind: it answers anyone who can connect, so only this machine.
_LOOPBACK_HOSTS = ("localhost",)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics (``[metrics]``, docs/metrics.md).

    ``/metrics`` on the client listener always needs an admin's access token;
    ``listen`` adds a listener that serves them without one, on a loopback
    address only (None: no such listener).
    """

    listen: tuple[str, int] | None = None


PUSH_URL_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class PushConfig:
    """Where pushers may send (``[push]``, docs/security.md "Push gateway addresses").

    By default a push gateway must be a public address: loopback, private, link-local, shared (CGNAT),
    multicast and other special-purpose addresses are refused when a pusher is set and again for each
    address a name resolves to when a notification is sent.
    """

    #: allow every address but the unspecified, multicast and broadcast ones (a LAN push gateway)
    allow_private: bool = False
    #: CIDR ranges allowed even though special-purpose (``"127.0.0.1/32"`` for a push gateway on this host)
    allowed_ranges: tuple[str, ...] = ()
    #: the URL schemes a pusher may use (``["https"]`` refuses plain http)
    url_schemes: tuple[str, ...] = PUSH_URL_SCHEMES


BLE_MODES = ("passive", "active")


@dataclass(frozen=True)
class BleConfig:
    """BLE sensors (``[ble]``, docs/ble.md). The component also runs, with these settings, when sensors exist."""

    enabled: bool = False
    #: the BlueZ adapter to scan with (None: the default adapter)
    adapter: str | None = None
    #: passive scanning hears advertisements only; active also asks for scan responses
    mode: str = "passive"
    #: unknown addresses remembered (LRU); a flood of random addresses evicts the oldest
    unknown_cap: int = 1024
    #: the same packet id heard again within this many seconds is the same packet
    dedup_window_s: float = 4.0
    #: a sensor is reported silent after interval_s × silent_factor without a word
    silent_factor: float = 3.0
    #: advertisements waiting to be handled; past it they are dropped and counted
    queue_size: int = 4096


@dataclass(frozen=True)
class RetentionConfig:
    """Message retention (``[retention]``, MSC1763, docs/retention.md): expired non-state events hidden from every
    API at once and purged from the store by a job. Off by default (purging deletes history for good)."""

    enabled: bool = False
    #: seconds between purge runs
    interval_s: float = 3600.0
    #: events one run deletes at most (over all rooms); the rest waits for the next run
    purge_batch: int = 5000
    #: max_lifetime of a room with no ``m.room.retention`` max_lifetime (None: kept forever)
    default_max_lifetime_s: float | None = None
    #: the same for telemetry rooms (a member is an account an edge owns); None: default_max_lifetime_s
    telemetry_max_lifetime_s: float | None = None
    #: bounds a room's own max_lifetime is clamped to (None: no bound)
    allowed_min_lifetime_s: float | None = None
    allowed_max_lifetime_s: float | None = None
    #: telemetry rooms: expired readings become one summary event per (sender, hour) before the purge
    #: (docs/retention.md, "Hourly summaries")
    telemetry_summaries: bool = False


@dataclass(frozen=True)
class Config:
    """Everything ``lowband serve`` needs to run."""

    server_name: str = "localhost"
    data_dir: Path = Path("lowband-data")
    http_host: str = "127.0.0.1"
    http_port: int = 8008
    registration_enabled: bool = False
    #: /user_directory/search finds every local user and every user in a room here (False: users sharing a
    #: room with the searcher and users in rooms published in the directory)
    user_directory_search_all: bool = False
    #: /register?kind=guest makes guest accounts (limited to the spec's guest endpoints)
    guests_enabled: bool = False
    #: presence kept and shown in /sync (off: PUT is accepted and dropped, everyone reads offline)
    presence_enabled: bool = True
    #: an online user idle this long becomes unavailable, and offline after presence_offline_s
    presence_idle_s: float = 300.0
    presence_offline_s: float = 1800.0
    #: with tokens, /register asks for one of them (m.login.registration_token) instead of m.login.dummy
    registration_tokens: tuple[str, ...] = ()
    #: the client API's URL as clients should reach it, for /.well-known/matrix/client (None: the request's)
    public_base_url: str | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    #: all media one user may keep stored (uploads past it: 403)
    media_quota_bytes: int = 1024 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024
    #: a request's headers must arrive within this many seconds of the connection opening (or of the last
    #: response on it); an idle keep-alive connection is closed after as long
    header_timeout_s: float = 30.0
    #: a request body must arrive within body_timeout_s plus one second per min_body_bytes_per_s bytes
    body_timeout_s: float = 30.0
    min_body_bytes_per_s: int = 1024
    rate_limits: RateLimits = field(default_factory=RateLimits)
    federation: FederationConfig = field(default_factory=FederationConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    ble: BleConfig = field(default_factory=BleConfig)
    push: PushConfig = field(default_factory=PushConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    #: ``[database] url``: a ``postgresql://`` URL (None: the SQLite file in the data dir; docs/storage.md)
    database_url: str | None = None
    #: PEM certificate chain and key: the one listener speaks HTTPS (client and federation APIs)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Raw tables of sections owned by components (``[mqtt]``, ``[links]`` …);
    #: each component validates its own with ConfigError.
    components: dict[str, Any] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        """The SQLite database file inside the data dir."""
        return self.data_dir / "lowband.db"

    @property
    def signing_key_path(self) -> Path:
        """The server's ed25519 signing key, created on first start."""
        return self.data_dir / "signing.key"

    @property
    def media_dir(self) -> Path:
        """Where uploaded media bytes live."""
        return self.data_dir / "media"


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); ConfigError if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {value!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def check_server_name(name: str) -> str:
    """Return ``name`` if it is a valid Matrix server name, else ConfigError."""
    if not name or len(name) > 230 or not _SERVER_NAME.fullmatch(name):
        raise ConfigError(f"server name {name!r} is not a valid Matrix server name")
    return name


def parse_peer(name: str, address: str, where: str) -> tuple[str, str]:
    """A peer mapping ``NAME`` → ``HOST:PORT`` checked; ConfigError naming ``where`` otherwise."""
    check_server_name(name)
    host, sep, port = address.rpartition(":")
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) <= 65535:
        raise ConfigError(f"{where}: peer address {address!r} must be HOST:PORT")
    return name, address


def _federation(section: dict[str, Any]) -> FederationConfig:
    values: dict[str, Any] = {}
    for key in ("enabled", "verify_certificates", "discovery"):
        if key in section:
            values[key] = _take(section, key, bool, "federation")
    if "peers" in section:
        peers = _take(section, "peers", dict, "federation")
        values["peers"] = dict(parse_peer(str(k), v if isinstance(v, str) else "", "federation.peers")
                               for k, v in peers.items())  # fmt: skip
    if "ip_range_blocklist" in section:
        ranges = _take(section, "ip_range_blocklist", list, "federation")
        for item in ranges:
            try:
                ipaddress.ip_network(item)
            except (TypeError, ValueError):
                raise ConfigError(f"federation.ip_range_blocklist: {item!r} is not an address range") from None
        values["ip_range_blocklist"] = tuple(ranges)
    if "trusted_key_servers" in section:
        servers = _take(section, "trusted_key_servers", list, "federation")
        values["trusted_key_servers"] = tuple(check_server_name(s) if isinstance(s, str) else check_server_name("")
                                              for s in servers)  # fmt: skip
    return FederationConfig(**values)


def metrics_config(listen: str) -> MetricsConfig:
    """``[metrics] listen = LISTEN`` as a :class:`MetricsConfig`; ConfigError unless a loopback HOST:PORT."""
    return _metrics({"listen": listen})


def _metrics(section: dict[str, Any]) -> MetricsConfig:
    if "listen" not in section:
        return MetricsConfig()
    host, port = parse_listen(_take(section, "listen", str, "metrics"))
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in _LOOPBACK_HOSTS
    if not loopback or port == 0:
        raise ConfigError(f"metrics.listen {host}:{port} must be a loopback address with a port (127.0.0.1:9100): "
                          "it serves without a token; scrape /metrics on the client listener with an admin token "
                          "from elsewhere")  # fmt: skip
    return MetricsConfig((host, port))


def _ble(section: dict[str, Any]) -> BleConfig:
    values: dict[str, Any] = {}
    if "enabled" in section:
        values["enabled"] = _take(section, "enabled", bool, "ble")
    if "adapter" in section:
        adapter = _take(section, "adapter", str, "ble")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", adapter):
            raise ConfigError(f"ble.adapter {adapter!r} must be an adapter name such as hci0")
        values["adapter"] = adapter
    if "mode" in section:
        values["mode"] = _take(section, "mode", str, "ble")
        if values["mode"] not in BLE_MODES:
            raise ConfigError(f"ble.mode must be one of {', '.join(BLE_MODES)}")
    for key in ("unknown_cap", "queue_size"):
        if key in section:
            values[key] = _positive(_take(section, key, int, "ble"), f"ble.{key}")
    for key in ("dedup_window_s", "silent_factor"):
        if key in section:
            values[key] = _positive(_take(section, key, (int, float), "ble"), f"ble.{key}")
    return BleConfig(**values)


def _push(section: dict[str, Any]) -> PushConfig:
    values: dict[str, Any] = {}
    if "allow_private" in section:
        values["allow_private"] = _take(section, "allow_private", bool, "push")
    if "allowed_ranges" in section:
        ranges = _take(section, "allowed_ranges", list, "push")
        for item in ranges:
            try:
                ipaddress.ip_network(item)
            except (TypeError, ValueError):
                raise ConfigError(f"push.allowed_ranges: {item!r} is not an address range such as "
                                  "\"192.168.1.20/32\" (host bits must be zero)") from None  # fmt: skip
        values["allowed_ranges"] = tuple(ranges)
    if "url_schemes" in section:
        schemes = _take(section, "url_schemes", list, "push")
        if not schemes or not all(s in PUSH_URL_SCHEMES for s in schemes):
            raise ConfigError('push.url_schemes must be a non-empty list of "http" and "https"')
        values["url_schemes"] = tuple(schemes)
    return PushConfig(**values)


def _retention(section: dict[str, Any]) -> RetentionConfig:
    values: dict[str, Any] = {}
    if "enabled" in section:
        values["enabled"] = _take(section, "enabled", bool, "retention")
    if "telemetry_summaries" in section:
        values["telemetry_summaries"] = _take(section, "telemetry_summaries", bool, "retention")
    if "interval_s" in section:
        values["interval_s"] = _positive(_take(section, "interval_s", (int, float), "retention"), "retention.interval_s")
    if "purge_batch" in section:
        values["purge_batch"] = _positive(_take(section, "purge_batch", int, "retention"), "retention.purge_batch")
    for key in ("default_max_lifetime_s", "telemetry_max_lifetime_s", "allowed_min_lifetime_s",
                "allowed_max_lifetime_s"):  # fmt: skip
        if key in section:
            values[key] = _positive(_take(section, key, (int, float), "retention"), f"retention.{key}")
    low, high = values.get("allowed_min_lifetime_s"), values.get("allowed_max_lifetime_s")
    if low is not None and high is not None and low > high:
        raise ConfigError(f"retention.allowed_min_lifetime_s ({low}) is above retention.allowed_max_lifetime_s ({high})")
    return RetentionConfig(**values)


def _take(section: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = section.pop(key)
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}.{key} must be {getattr(kind, '__name__', 'a number')}, not a boolean")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key} has the wrong type ({type(value).__name__})")
    return value


def _rate_limits(section: dict[str, Any]) -> RateLimits:
    values: dict[str, Any] = {}
    for f in fields(RateLimits):
        if f.name in section:
            kind: type | tuple[type, ...] = bool if f.type == "bool" else (int, float) if f.type == "float" else int
            value = _take(section, f.name, kind, "rate_limits")
            if not isinstance(value, bool) and not 0 < value < float("inf"):
                raise ConfigError(f"rate_limits.{f.name} must be a positive finite number")
            values[f.name] = value
    return RateLimits(**values)


def load_config(path: str | Path | None, **overrides: Any) -> Config:
    """Read ``path`` (if given), then apply non-None ``overrides``.

    ``overrides`` use :class:`Config` field names. Raises ConfigError for a
    missing or unreadable file, invalid TOML, unknown sections or keys, wrong
    types and invalid values.
    """
    config = Config()
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        config = _apply_file(config, doc)
    values = {k: v for k, v in overrides.items() if v is not None}
    for key in ("data_dir", "tls_cert", "tls_key"):
        if key in values:
            values[key] = Path(values[key])
    peers = values.pop("peers", None)
    if peers:  # --peer adds to (and overrides) [federation] peers
        values["federation"] = replace(config.federation, peers={**config.federation.peers, **peers})
    config = replace(config, **values)
    check_server_name(config.server_name)
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("TLS needs both a certificate and a key (--tls-cert and --tls-key, or http.tls_cert and http.tls_key)")
    return config


def _apply_file(config: Config, doc: dict[str, Any]) -> Config:
    values: dict[str, Any] = {}
    sections = {k: dict(v) if isinstance(v, dict) else v for k, v in doc.items()}
    components = {k: sections.pop(k) for k in list(sections) if k in COMPONENT_SECTIONS}
    if components:
        values["components"] = components
    for name, section in sections.items():
        if name not in ("server", "http", "registration", "media", "rate_limits", "federation", "metrics", "ble",
                        "presence", "user_directory", "push", "retention", "database"):
            raise ConfigError(f"unknown config section [{name}]")
        if not isinstance(section, dict):
            raise ConfigError(f"[{name}] must be a table")
    server = sections.get("server", {})
    if "server_name" in server:
        values["server_name"] = check_server_name(_take(server, "server_name", str, "server"))
    if "data_dir" in server:
        values["data_dir"] = Path(_take(server, "data_dir", str, "server"))
    http = sections.get("http", {})
    if "listen" in http:
        values["http_host"], values["http_port"] = parse_listen(_take(http, "listen", str, "http"))
    for key in ("tls_cert", "tls_key"):
        if key in http:
            values[key] = Path(_take(http, key, str, "http"))
    if "max_request_bytes" in http:
        values["max_request_bytes"] = _positive(_take(http, "max_request_bytes", int, "http"), "http.max_request_bytes")
    for key in ("header_timeout_s", "body_timeout_s"):
        if key in http:
            values[key] = _positive(_take(http, key, (int, float), "http"), f"http.{key}")
    if "min_body_bytes_per_s" in http:
        values["min_body_bytes_per_s"] = _positive(_take(http, "min_body_bytes_per_s", int, "http"),
                                                   "http.min_body_bytes_per_s")  # fmt: skip
    registration = sections.get("registration", {})
    if "enabled" in registration:
        values["registration_enabled"] = _take(registration, "enabled", bool, "registration")
    if "guests" in registration:
        values["guests_enabled"] = _take(registration, "guests", bool, "registration")
    presence = sections.get("presence", {})
    if "enabled" in presence:
        values["presence_enabled"] = _take(presence, "enabled", bool, "presence")
    for key in ("idle_s", "offline_s"):
        if key in presence:
            values[f"presence_{key}"] = _positive(_take(presence, key, (int, float), "presence"), f"presence.{key}")
    if "tokens" in registration:
        tokens = _take(registration, "tokens", list, "registration")
        if not all(isinstance(t, str) and re.fullmatch(r"[A-Za-z0-9._~-]{1,64}", t) for t in tokens):
            raise ConfigError("registration.tokens must be strings of 1-64 characters A-Z a-z 0-9 . _ ~ -")
        values["registration_tokens"] = tuple(tokens)
    if "public_base_url" in http:
        url = _take(http, "public_base_url", str, "http")
        if not re.fullmatch(r"https?://[A-Za-z0-9.:\[\]-]+(?:/[A-Za-z0-9._~/-]*)?", url):
            raise ConfigError(f"http.public_base_url {url[:100]!r} must be an http(s) URL such as https://matrix.example")
        values["public_base_url"] = url.rstrip("/")
    user_directory = sections.get("user_directory", {})
    if "search_all_users" in user_directory:
        values["user_directory_search_all"] = _take(user_directory, "search_all_users", bool, "user_directory")
    media = sections.get("media", {})
    if "max_upload_bytes" in media:
        values["max_upload_bytes"] = _positive(_take(media, "max_upload_bytes", int, "media"), "media.max_upload_bytes")
    if "quota_bytes_per_user" in media:
        values["media_quota_bytes"] = _positive(_take(media, "quota_bytes_per_user", int, "media"),
                                                "media.quota_bytes_per_user")  # fmt: skip
    if "rate_limits" in sections:
        values["rate_limits"] = _rate_limits(sections["rate_limits"])
    if "federation" in sections:
        values["federation"] = _federation(sections["federation"])
    if "metrics" in sections:
        values["metrics"] = _metrics(sections["metrics"])
    if "ble" in sections:
        values["ble"] = _ble(sections["ble"])
    if "push" in sections:
        values["push"] = _push(sections["push"])
    if "retention" in sections:
        values["retention"] = _retention(sections["retention"])
    database = sections.get("database", {})
    if "url" in database:
        values["database_url"] = check_database_url(_take(database, "url", str, "database"))
    for name, section in sections.items():
        if section:
            raise ConfigError(f"unknown config key {name}.{next(iter(section))}")
    return replace(config, **values)


def check_database_url(url: str) -> str | None:
    """``url`` if it names a PostgreSQL database (``postgresql://[user[:password]@]host[:port]/dbname[?schema=NAME]``),
    None for "sqlite:" or "" (the data dir's SQLite file), else ConfigError."""
    if url in ("", "sqlite:"):
        return None
    if not re.fullmatch(r"postgres(?:ql)?://[^\s]{0,1000}", url):
        raise ConfigError(f"database.url {url[:60]!r} must be a postgresql:// URL (or \"sqlite:\" for the data dir's file)")
    schema = re.search(r"[?&]schema=([^&]*)", url)
    if schema and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema.group(1)):
        raise ConfigError(f"database.url schema {schema.group(1)[:70]!r}: lower-case letters, digits and _ (at most 63)")
    return url


def _positive(value: Any, key: str) -> Any:
    if not 0 < value < float("inf"):  # TOML spells nan and inf too: neither is a size or a duration
        raise ConfigError(f"{key} must be a positive finite number")
    return value
