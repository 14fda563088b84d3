"""The ``[mqtt]`` section: validated into frozen dataclasses.

The gateway's config loader hands the raw TOML table over untouched
(``Config.components["mqtt"]``); :func:`parse_mqtt_config` checks every key
and raises :class:`~lowband.gateway.config.ConfigError` naming the key
(``mqtt.inbound[1].topic: ...``) for anything unknown, mistyped or out of
range, so a typo never silently falls back to a default. ``docs/mqtt.md``
is the reference for every key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowband.gateway.config import ConfigError
from lowband.gateway.homeserver.accounts import Reservation, valid_localpart
from lowband.gateway.matrix.identifiers import is_room_alias, is_room_id, is_user_id

PAYLOAD_KINDS = ("auto", "json", "text", "number", "binary")
SENDER_MODES = ("wildcard", "mapping")
OUT_FORMATS = ("body", "content", "state", "senml")
PROTOCOLS = ("auto", "5", "3.1.1")

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_FIELD_NAME = re.compile(r"[A-Za-z0-9][-:./_A-Za-z0-9]*")  # RFC 8428 section 4.5.1
_PLACEHOLDERS = re.compile(r"\{([a-z_]*)\}")


@dataclass(frozen=True)
class BrokerConfig:
    """One broker connection (``[[mqtt.brokers]]``)."""

    name: str
    host: str
    port: int
    protocol: str = "auto"
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = 1000
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class FieldSpec:
    """How one JSON field becomes a SenML record: its name and unit."""

    n: str
    u: str = ""


@dataclass(frozen=True)
class InboundMapping:
    """Topic filter → room (``[[mqtt.inbound]]``)."""

    name: str
    broker: str
    topic: str
    room: str
    exclude: tuple[str, ...] = ()
    qos: int = 1
    payload: str = "auto"
    sender: str = "wildcard"
    user: str = ""  # localpart for sender = "mapping"; default prefix + name
    fields: dict[str, FieldSpec] = field(default_factory=dict)
    only_fields: bool = False
    msgtype: str = "m.notice"
    rate_per_s: float = 100.0
    burst: int = 200
    retained: bool = True
    discovery: bool = True
    dedup_property: str = ""
    max_payload_bytes: int = 0  # 0: the [mqtt] default
    qos0_queue: int = 1000  # QoS 0 messages held (waiting or being sent); more are dropped


@dataclass(frozen=True)
class OutboundMapping:
    """Room events → topic (``[[mqtt.outbound]]``)."""

    name: str
    broker: str
    room: str
    topic: str
    qos: int = 1
    retain: bool = False
    format: str = "body"
    msgtypes: tuple[str, ...] = ("m.text",)
    discovery: bool = True


@dataclass(frozen=True)
class MqttConfig:
    """The whole validated ``[mqtt]`` section."""

    brokers: tuple[BrokerConfig, ...]
    inbound: tuple[InboundMapping, ...] = ()
    outbound: tuple[OutboundMapping, ...] = ()
    bot: str = "mqtt"
    user_prefix: str = "mqtt_"
    status_topic: str = "lowband/{server}/status"
    stats_topic: str = "lowband/{server}/bridge/stats"
    stats_interval_s: float = 60.0
    discovery_prefix: str = "homeassistant"
    discovery: bool = True
    max_payload_bytes: int = 65536
    new_users_burst: int = 100  # bridged users created at once before the hourly rate applies
    new_users_per_hour: float = 60.0
    room_admins: tuple[str, ...] = ()  # invited, at power level 100, into rooms the bridge creates

    def payload_limit(self, mapping: InboundMapping) -> int:
        """Largest payload ``mapping`` accepts."""
        return mapping.max_payload_bytes or self.max_payload_bytes


# ------------------------------------------------------------------ helpers


class _Table:
    """Pops typed keys from one TOML table and names them in errors."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table")
        self.raw = dict(raw)
        self.where = where

    def _pop(self, key: str, kind: type | tuple[type, ...], default: Any, required: bool) -> Any:
        if key not in self.raw:
            if required:
                raise ConfigError(f"{self.where}.{key} is required")
            return default
        value = self.raw.pop(key)
        if isinstance(value, bool) and kind is not bool and not (isinstance(kind, tuple) and bool in kind):
            raise ConfigError(f"{self.where}.{key} must not be a boolean")
        if not isinstance(value, kind):
            raise ConfigError(f"{self.where}.{key} has the wrong type ({type(value).__name__})")
        return value

    def text(self, key: str, default: str | None = None, *, required: bool = False, empty: bool = False) -> Any:
        value = self._pop(key, str, default, required)
        if isinstance(value, str) and not value and not empty:
            raise ConfigError(f"{self.where}.{key} must not be empty")
        if isinstance(value, str) and ("\x00" in value or len(value) > 4096):
            raise ConfigError(f"{self.where}.{key} is not a usable string")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self._pop(key, int, default, False)
        if not lo <= value <= hi:
            raise ConfigError(f"{self.where}.{key} must be from {lo} to {hi}")
        return int(value)

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self._pop(key, (int, float), default, False)
        if not lo <= value <= hi:
            raise ConfigError(f"{self.where}.{key} must be from {lo} to {hi}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        return bool(self._pop(key, bool, default, False))

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._pop(key, (str, int), default, False)
        value = str(value)
        if value not in choices:
            raise ConfigError(f"{self.where}.{key} must be one of {', '.join(map(repr, choices))}")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._pop(key, list, list(default), False)
        if not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.where}.{key} must be a list of non-empty strings")
        return tuple(value)

    def table(self, key: str) -> dict[str, Any]:
        value = self._pop(key, dict, {}, False)
        return dict(value)

    def done(self) -> None:
        if self.raw:
            raise ConfigError(f"unknown config key {self.where}.{next(iter(self.raw))}")


def check_topic_filter(value: str, where: str) -> str:
    """Return ``value`` if it is a valid MQTT topic filter, else ConfigError.

    ``+`` must fill a whole level and ``#`` must be the whole last level
    (MQTT 3.1.1 / 5 section 4.7).
    """
    if not value or len(value.encode()) > 65535 or "\x00" in value:
        raise ConfigError(f"{where}: {value!r} is not a topic filter")
    levels = value.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ConfigError(f"{where}: '#' must be the whole last level of {value!r}")
        if "+" in level and level != "+":
            raise ConfigError(f"{where}: '+' must fill a whole level of {value!r}")
    return value


def check_topic_name(value: str, where: str, placeholders: tuple[str, ...] = ()) -> str:
    """A topic to publish on: no wildcards; only the named ``{placeholders}``."""
    for name in _PLACEHOLDERS.findall(value):
        if name not in placeholders:
            allowed = ", ".join("{" + p + "}" for p in placeholders) or "none"
            raise ConfigError(f"{where}: unknown placeholder {{{name}}} in {value!r} (allowed: {allowed})")
    if not value or "+" in value or "#" in value or "\x00" in value:
        raise ConfigError(f"{where}: {value!r} is not a topic name (no wildcards)")
    return value


def _room(value: str, where: str) -> str:
    if not (is_room_id(value) or is_room_alias(value)):
        raise ConfigError(f"{where}: {value!r} must be a room ID (!id:server, or a v12 !hash) or alias (#name:server)")
    return value


# ------------------------------------------------------------------ parsing


def parse_mqtt_config(raw: Any, server_name: str) -> MqttConfig | None:
    """Validate the raw ``[mqtt]`` table; None when there is none.

    Raises ConfigError naming the key for every problem.
    """
    if raw is None:
        return None
    top = _Table(raw, "mqtt")
    bot = top.text("bot", "mqtt")
    prefix = top.text("user_prefix", "mqtt_")
    for key, value in (("bot", bot), ("user_prefix", prefix)):
        if not valid_localpart(value):
            raise ConfigError(f"mqtt.{key}: {value!r} may only contain a-z, 0-9 and ._=-/+")
    status = check_topic_name(top.text("status_topic", "lowband/{server}/status"), "mqtt.status_topic", ("server",))
    stats = check_topic_name(top.text("stats_topic", "lowband/{server}/bridge/stats"), "mqtt.stats_topic", ("server",))
    config_values: dict[str, Any] = {
        "bot": bot,
        "user_prefix": prefix,
        "status_topic": status.replace("{server}", _topic_safe(server_name)),
        "stats_topic": stats.replace("{server}", _topic_safe(server_name)),
        "stats_interval_s": top.number("stats_interval_s", 60.0, 0.0, 86400.0),
        "discovery_prefix": check_topic_name(top.text("discovery_prefix", "homeassistant"), "mqtt.discovery_prefix"),
        "discovery": top.flag("discovery", True),
        "max_payload_bytes": top.integer("max_payload_bytes", 65536, 1, 256 * 1024 * 1024),
        "new_users_burst": top.integer("new_users_burst", 100, 0, 10**9),
        "new_users_per_hour": top.number("new_users_per_hour", 60.0, 0.001, 1e9),
        "room_admins": top.strings("room_admins", ()),
    }
    for user in config_values["room_admins"]:
        if not is_user_id(user):
            raise ConfigError(f"mqtt.room_admins: {user!r} is not a user ID (@name:server)")
    raw_brokers = top._pop("brokers", list, None, True)
    if not raw_brokers:
        raise ConfigError("mqtt.brokers must name at least one broker")
    brokers = tuple(_broker(item, f"mqtt.brokers[{i}]", server_name) for i, item in enumerate(raw_brokers))
    _unique([b.name for b in brokers], "mqtt.brokers", "name")
    _unique([b.client_id for b in brokers], "mqtt.brokers", "client_id")
    names = [b.name for b in brokers]
    raw_in = top._pop("inbound", list, [], False)
    raw_out = top._pop("outbound", list, [], False)
    inbound = tuple(_inbound(item, f"mqtt.inbound[{i}]", names) for i, item in enumerate(raw_in))
    outbound = tuple(_outbound(item, f"mqtt.outbound[{i}]", names) for i, item in enumerate(raw_out))
    _unique([m.name for m in inbound] + [m.name for m in outbound], "mqtt.inbound/outbound", "name")
    top.done()
    if not inbound and not outbound:
        raise ConfigError("mqtt needs at least one [[mqtt.inbound]] or [[mqtt.outbound]] mapping")
    for mapping in inbound:
        if mapping.sender == "mapping" and mapping.user and not valid_localpart(mapping.user):
            raise ConfigError(f"mqtt.inbound ({mapping.name}).user: {mapping.user!r} is not a valid localpart")
    return MqttConfig(brokers=brokers, inbound=inbound, outbound=outbound, **config_values)


def _unique(values: list[str], where: str, key: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"{where}: two entries have {key} {value!r}")
        seen.add(value)


def _topic_safe(text: str) -> str:
    return re.sub(r"[+#/\x00]", "_", text)


def _broker(raw: Any, where: str, server_name: str) -> BrokerConfig:
    t = _Table(raw, where)
    name = t.text("name", required=True)
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: {name!r} must be 1-40 of a-z, 0-9, _ and - (starting with a letter or digit)")
    tls = t.flag("tls", False)
    password = t.text("password", None, empty=True)
    password_file = t.text("password_file", None)
    if password is not None and password_file is not None:
        raise ConfigError(f"{where}: give password or password_file, not both")
    if password_file is not None:
        try:
            password = Path(password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}.password_file: cannot read {password_file}: {exc.strerror}") from None
    default_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"lowband-{server_name}-{name}")[:64]
    values = {
        "name": name,
        "host": t.text("host", required=True),
        "port": t.integer("port", 8883 if tls else 1883, 1, 65535),
        "protocol": t.choice("protocol", "auto", PROTOCOLS),
        "client_id": t.text("client_id", default_id),
        "username": t.text("username", None),
        "password": password,
        "tls": tls,
        "ca_file": t.text("ca_file", None),
        "cert_file": t.text("cert_file", None),
        "key_file": t.text("key_file", None),
        "tls_insecure": t.flag("tls_insecure", False),
        "keepalive_s": t.integer("keepalive_s", 30, 5, 65535),
        "session_expiry_s": t.integer("session_expiry_s", 7 * 24 * 3600, 1, 0xFFFFFFFF),
        "receive_maximum": t.integer("receive_maximum", 1000, 1, 65535),
        "reconnect_min_s": t.number("reconnect_min_s", 1.0, 0.05, 3600.0),
        "reconnect_max_s": t.number("reconnect_max_s", 30.0, 0.05, 3600.0),
    }
    t.done()
    if values["reconnect_max_s"] < values["reconnect_min_s"]:
        raise ConfigError(f"{where}.reconnect_max_s must be at least reconnect_min_s")
    if not tls and any(values[k] for k in ("ca_file", "cert_file", "key_file", "tls_insecure")):
        raise ConfigError(f"{where}: ca_file, cert_file, key_file and tls_insecure need tls = true")
    if (values["cert_file"] is None) != (values["key_file"] is None):
        raise ConfigError(f"{where}: a client certificate needs both cert_file and key_file")
    if values["password"] is not None and values["username"] is None:
        raise ConfigError(f"{where}: a password needs a username")
    return BrokerConfig(**values)


def _which_broker(t: _Table, where: str, brokers: list[str]) -> str:
    name = t.text("broker", brokers[0] if len(brokers) == 1 else None)
    if name is None:
        raise ConfigError(f"{where}.broker is required when there are several brokers")
    if name not in brokers:
        raise ConfigError(f"{where}.broker: no broker is called {name!r}")
    return str(name)


def _inbound(raw: Any, where: str, brokers: list[str]) -> InboundMapping:
    t = _Table(raw, where)
    name = t.text("name", required=True)
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: {name!r} must be 1-40 of a-z, 0-9, _ and -")
    values: dict[str, Any] = {
        "name": name,
        "broker": _which_broker(t, where, brokers),
        "topic": check_topic_filter(t.text("topic", required=True), f"{where}.topic"),
        "room": _room(t.text("room", required=True), f"{where}.room"),
        "exclude": tuple(check_topic_filter(f, f"{where}.exclude") for f in t.strings("exclude", ())),
        "qos": t.integer("qos", 1, 0, 1),
        "payload": t.choice("payload", "auto", PAYLOAD_KINDS),
        "sender": t.choice("sender", "wildcard", SENDER_MODES),
        "user": t.text("user", ""  , empty=True),
        "only_fields": t.flag("only_fields", False),
        "msgtype": t.choice("msgtype", "m.notice", ("m.notice", "m.text")),
        "rate_per_s": t.number("rate_per_s", 100.0, 0.001, 1e9),
        "burst": t.integer("burst", 200, 1, 10**9),
        "retained": t.flag("retained", True),
        "discovery": t.flag("discovery", True),
        "dedup_property": t.text("dedup_property", "", empty=True),
        "max_payload_bytes": t.integer("max_payload_bytes", 0, 0, 256 * 1024 * 1024),
        "qos0_queue": t.integer("qos0_queue", 1000, 1, 10**7),
    }
    fields: dict[str, FieldSpec] = {}
    for key, spec in t.table("fields").items():
        fwhere = f"{where}.fields.{key}"
        st = _Table(spec, fwhere)
        n = st.text("n", key)
        u = st.text("u", "", empty=True)
        st.done()
        if not _FIELD_NAME.fullmatch(n):
            raise ConfigError(f"{fwhere}.n: {n!r} is not a SenML name (RFC 8428: letters, digits and -:./_)")
        if len(u) > 32:
            raise ConfigError(f"{fwhere}.u must be a short unit string")
        fields[key] = FieldSpec(n, u)
    values["fields"] = fields
    t.done()
    if values["only_fields"] and not fields:
        raise ConfigError(f"{where}.only_fields needs a [fields] table")
    return InboundMapping(**values)


def _outbound(raw: Any, where: str, brokers: list[str]) -> OutboundMapping:
    t = _Table(raw, where)
    name = t.text("name", required=True)
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: {name!r} must be 1-40 of a-z, 0-9, _ and -")
    fmt = t.choice("format", "body", OUT_FORMATS)
    telemetry = fmt in ("state", "senml")
    topic = check_topic_name(t.text("topic", required=True), f"{where}.topic", ("device", "sender"))
    if telemetry and "{device}" in topic:
        raise ConfigError(f"{where}.topic: {{device}} needs format 'body' or 'content' (use {{sender}})")
    values: dict[str, Any] = {
        "name": name,
        "broker": _which_broker(t, where, brokers),
        "room": _room(t.text("room", required=True), f"{where}.room"),
        "topic": topic,
        "qos": t.integer("qos", 1, 0, 1),
        "retain": t.flag("retain", False),
        "format": fmt,
        "msgtypes": t.strings("msgtypes", ("m.notice", "m.text") if telemetry else ("m.text",)),
        "discovery": t.flag("discovery", True),
    }
    t.done()
    return OutboundMapping(**values)


def reservations(components: dict[str, Any]) -> list[Reservation]:
    """The localparts the bridge keeps for itself: its bot and its puppets' prefix.

    ``components`` is ``Config.components``; none without an ``[mqtt]``
    section. A malformed section reserves the defaults (the gateway refuses
    to start with it anyway).
    """
    raw = components.get("mqtt")
    if not isinstance(raw, dict):
        return []
    bot = raw.get("bot", "mqtt")
    prefix = raw.get("user_prefix", "mqtt_")
    owner = "the MQTT bridge"
    return [Reservation(owner, exact=bot if isinstance(bot, str) else "mqtt"),
            Reservation(owner, prefix=prefix if isinstance(prefix, str) and prefix else "mqtt_")]  # fmt: skip
