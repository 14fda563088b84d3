"""Application service registration files: the YAML every Matrix bridge generates, read and checked.

A file holds::

    id: heisenbridge                    # unique among the gateway's bridges
    url: http://127.0.0.1:9898          # where transactions are pushed; null: the bridge only calls us
    as_token: …                         # the bridge authenticates with it
    hs_token: …                         # we authenticate to the bridge with it
    sender_localpart: heisenbridge      # the bridge's own user
    rate_limited: false                 # default true
    protocols: [irc]                    # third-party protocols it answers for
    receive_ephemeral: true             # typing, receipts (MSC2409; also de.sorunome.msc2409.push_ephemeral)
    org.matrix.msc3202: true            # to-device messages and device lists for encrypted bridges
    namespaces:
      users:   [{exclusive: true, regex: '@irc_.*:gw\\.example'}]
      aliases: [{exclusive: true, regex: '#irc_.*:gw\\.example'}]
      rooms:   []

Regexes are Python regular expressions matched from the start of the full
user ID, alias or room ID (``re.match``, as Synapse does, so a bridge's
file means the same on both). Anything else — a missing or mistyped field, a
bad regex, an ``as_token`` or ``id`` shared by two files — stops the gateway
with one line naming the file and the field (:class:`ConfigError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowband.gateway.config import ConfigError
from lowband.gateway.homeserver.services import Services

#: the key of the registered bridges in ``Services.components``
APPSERVICES = "appservices"
MAX_FILE_BYTES = 256 * 1024
MAX_REGEX_CHARS = 1024
#: what a bridge may name its own user: the spec's historical user ID grammar (printable ASCII but ':'), as
#: Synapse takes it (mautrix bridges generate a random mixed-case sender_localpart)
_LOCALPART = re.compile(r"[!-9;-~]{1,255}")
_KINDS = ("users", "aliases", "rooms")
_KNOWN = {"id", "url", "as_token", "hs_token", "sender_localpart", "rate_limited", "protocols", "receive_ephemeral",
          "de.sorunome.msc2409.push_ephemeral", "org.matrix.msc3202", "namespaces", "push_ephemeral",
          "org.matrix.msc3202.push_ephemeral", "device_management", "io.element.msc4190"}  # fmt: skip


@dataclass(frozen=True)
class Namespace:
    """One regex of a registration, and whether it is the bridge's alone."""

    regex: re.Pattern[str]
    exclusive: bool

    def covers(self, value: str) -> bool:
        """Whether ``value`` (a user ID, alias or room ID) falls in this namespace."""
        return self.regex.match(value) is not None


@dataclass(frozen=True)
class AppService:
    """One bridge, from its registration file."""

    id: str
    url: str | None
    as_token: str
    hs_token: str
    sender: str  # the full user ID of sender_localpart
    users: tuple[Namespace, ...] = ()
    aliases: tuple[Namespace, ...] = ()
    rooms: tuple[Namespace, ...] = ()
    rate_limited: bool = True
    protocols: tuple[str, ...] = ()
    receive_ephemeral: bool = False
    msc3202: bool = False
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def may_act_as(self, user_id: str) -> bool:
        """Whether the bridge may act as ``user_id`` (its sender, or a user in any of its user namespaces)."""
        return user_id == self.sender or any(n.covers(user_id) for n in self.users)

    def owns_user(self, user_id: str) -> bool:
        """Whether ``user_id`` is in one of its exclusive user namespaces (or is its sender)."""
        return user_id == self.sender or any(n.exclusive and n.covers(user_id) for n in self.users)

    def owns_alias(self, alias: str) -> bool:
        """Whether ``alias`` is in one of its exclusive alias namespaces."""
        return any(n.exclusive and n.covers(alias) for n in self.aliases)

    def wants_user(self, user_id: str) -> bool:
        """Whether events concerning ``user_id`` interest the bridge."""
        return self.may_act_as(user_id)

    def wants_alias(self, alias: str) -> bool:
        """Whether a room with ``alias`` interests the bridge."""
        return any(n.covers(alias) for n in self.aliases)

    def wants_room(self, room_id: str) -> bool:
        """Whether ``room_id`` itself is in the bridge's room namespaces."""
        return any(n.covers(room_id) for n in self.rooms)


def load_registration(path: Path, server_name: str) -> AppService:
    """Read and check one registration file; ConfigError naming the file and the field."""
    import yaml  # PyYAML: only when a gateway has bridges

    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"appservice registration {where}: cannot read it: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"appservice registration {where}: larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"appservice registration {where}: not valid YAML: {first}") from None
    return parse_registration(doc, server_name, where)


def parse_registration(doc: Any, server_name: str, where: str = "<registration>") -> AppService:
    """Check a parsed registration document; ConfigError naming ``where`` and the field."""

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"appservice registration {where}: {key}: {problem}")

    if not isinstance(doc, dict):
        raise ConfigError(f"appservice registration {where}: must be a mapping of keys to values")
    unknown = sorted(str(k) for k in doc if k not in _KNOWN)
    if unknown:
        raise fail(unknown[0], "unknown key")

    def text(key: str, *, optional: bool = False) -> str | None:
        value = doc.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise fail(key, "required, a non-empty string")
        if len(value) > 4096 or any(ord(c) < 0x20 for c in value):
            raise fail(key, "at most 4096 characters, no control characters")
        return value

    def flag(*keys: str, default: bool) -> bool:
        for key in keys:
            if key in doc and doc[key] is not None:
                if not isinstance(doc[key], bool):
                    raise fail(key, "must be true or false")
                return bool(doc[key])
        return default

    app_id = text("id")
    url = text("url", optional=True)
    if url is not None and not re.match(r"https?://[^/\s]+", url):
        raise fail("url", "must be an http:// or https:// URL, or null")
    as_token, hs_token = text("as_token"), text("hs_token")
    localpart = text("sender_localpart")
    assert app_id is not None and as_token is not None and hs_token is not None and localpart is not None
    if as_token == hs_token:
        raise fail("hs_token", "must differ from as_token")
    if not _LOCALPART.fullmatch(localpart):
        raise fail("sender_localpart", "1 to 255 printable ASCII characters, no ':' or space")
    protocols = doc.get("protocols") or []
    if not isinstance(protocols, list) or not all(isinstance(p, str) and p for p in protocols):
        raise fail("protocols", "must be a list of names")
    namespaces = doc.get("namespaces")
    if not isinstance(namespaces, dict):
        raise fail("namespaces", "required, a mapping with users, aliases and rooms")
    for key in namespaces:
        if key not in _KINDS:
            raise fail(f"namespaces.{key}", "unknown kind (users, aliases or rooms)")
    parsed: dict[str, tuple[Namespace, ...]] = {}
    for kind in _KINDS:
        entries = namespaces.get(kind) or []
        if not isinstance(entries, list):
            raise fail(f"namespaces.{kind}", "must be a list")
        found = []
        for i, entry in enumerate(entries):
            name = f"namespaces.{kind}[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("regex"), str):
                raise fail(name, "must be a mapping with a regex")
            if not isinstance(entry.get("exclusive", False), bool):
                raise fail(f"{name}.exclusive", "must be true or false")
            pattern = entry["regex"]
            if len(pattern) > MAX_REGEX_CHARS:
                raise fail(f"{name}.regex", f"longer than {MAX_REGEX_CHARS} characters")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise fail(f"{name}.regex", f"not a valid regular expression ({exc})") from None
            found.append(Namespace(compiled, bool(entry.get("exclusive", False))))
        parsed[kind] = tuple(found)
    return AppService(
        id=app_id, url=url.rstrip("/") if url else None, as_token=as_token, hs_token=hs_token,
        sender=f"@{localpart}:{server_name}", users=parsed["users"], aliases=parsed["aliases"],
        rooms=parsed["rooms"], rate_limited=flag("rate_limited", default=True), protocols=tuple(protocols),
        receive_ephemeral=flag("receive_ephemeral", "de.sorunome.msc2409.push_ephemeral", "push_ephemeral",
                               default=False),
        msc3202=flag("org.matrix.msc3202", default=False), path=where,
    )  # fmt: skip


class AppServices:
    """The gateway's registered bridges: found by token, and who owns which names."""

    def __init__(self, services: list[AppService]) -> None:
        seen_ids: set[str] = set()
        seen_tokens: set[str] = set()
        for service in services:
            if service.id in seen_ids:
                raise ConfigError(f"appservice registration {service.path}: id: {service.id!r} is used twice")
            for token in (service.as_token, service.hs_token):
                if token in seen_tokens:
                    raise ConfigError(f"appservice registration {service.path}: as_token/hs_token used by two bridges")
                seen_tokens.add(token)
            seen_ids.add(service.id)
        self.all = list(services)
        self._by_token = {s.as_token: s for s in services}
        self._by_id = {s.id: s for s in services}

    def by_token(self, token: str) -> AppService | None:
        """The bridge whose ``as_token`` this is, or None."""
        return self._by_token.get(token)

    def by_id(self, app_id: str) -> AppService | None:
        """The bridge with this ``id``, or None."""
        return self._by_id.get(app_id)

    def exclusive_owner_of_user(self, user_id: str) -> AppService | None:
        """The bridge whose exclusive namespace holds ``user_id``, or None."""
        return next((s for s in self.all if s.owns_user(user_id)), None)

    def exclusive_owner_of_alias(self, alias: str) -> AppService | None:
        """The bridge whose exclusive namespace holds ``alias``, or None."""
        return next((s for s in self.all if s.owns_alias(alias)), None)


def load_appservices(section: Any, server_name: str, base: Path | None = None) -> AppServices:
    """The ``[appservices]`` section (``config_files = [...]``) → the registered bridges; ConfigError."""
    if section is None:
        return AppServices([])
    if not isinstance(section, dict):
        raise ConfigError("[appservices] must be a table")
    unknown = [k for k in section if k != "config_files"]
    if unknown:
        raise ConfigError(f"unknown config key appservices.{unknown[0]}")
    files = section.get("config_files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise ConfigError("appservices.config_files must be a list of file paths")
    paths = [(base / f if base is not None and not Path(f).is_absolute() else Path(f)) for f in files]
    return AppServices([load_registration(p, server_name) for p in paths])


def appservices_of(services: Services) -> AppServices:
    """The gateway's registered bridges (none when it has no ``[appservices]``)."""
    found = services.components.get(APPSERVICES)
    return found if isinstance(found, AppServices) else AppServices([])
