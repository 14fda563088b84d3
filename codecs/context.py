"""Context tables: what both ends of a constrained link agree on in advance.

A context table is provisioned to a device together with its keys. It lists
the rooms, senders, event types, map keys and telemetry channels that the
compact profile (:mod:`lowband.codecs.compact`) replaces by small integers.
Its ``version`` (1–15) travels in the high nibble of every compact message's
header; a message whose version differs from the receiver's table is refused
with a clear error rather than expanded with the wrong names.

The file is JSON, documented in ``docs/protocol/compact.md``::

    {
      "format": "lowband-context",
      "version": 1,
      "epoch_ms": 1767225600000,
      "rooms": ["!sensors:gw.example"],
      "senders": ["@dev.kitchen:gw.example"],
      "event_types": ["m.room.message"],
      "keys": ["msgtype", "body"],
      "channels": [{"n": "temperature", "u": "Cel", "scale": -1}]
    }
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowband.codecs.errors import WireError

FORMAT_NAME = "lowband-context"
MAX_VERSION = 15
MAX_ENTRIES = 1024
MAX_CHANNELS = 32
MAX_FILE_BYTES = 256 * 1024
_SENML_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*")
_KNOWN_FIELDS = {"format", "version", "epoch_ms", "rooms", "senders", "event_types", "keys", "channels", "comment"}


class ContextError(WireError):
    """A context table is malformed, or does not match a message."""


@dataclass(frozen=True)
class Channel:
    """One telemetry channel: SenML name, SenML unit, decimal scale.

    A reading's value is ``mantissa × 10**scale``; the mantissa is what
    travels on the link and what the room event carries.
    """

    name: str
    unit: str
    scale: int


@dataclass(frozen=True)
class Context:
    """A validated context table. Index 0 of rooms and senders is the default."""

    version: int
    rooms: tuple[str, ...]
    senders: tuple[str, ...]
    event_types: tuple[str, ...]
    keys: tuple[str, ...]
    channels: tuple[Channel, ...]
    epoch_ms: int = 0

    def index(self, table: tuple[str, ...], value: Any) -> int | None:
        """Position of ``value`` in ``table`` or None (strings only)."""
        if isinstance(value, str):
            try:
                return table.index(value)
            except ValueError:
                return None
        return None

    def to_json(self) -> dict[str, Any]:
        """The table as the JSON object that :func:`parse_context` reads."""
        return {
            "format": FORMAT_NAME,
            "version": self.version,
            "epoch_ms": self.epoch_ms,
            "rooms": list(self.rooms),
            "senders": list(self.senders),
            "event_types": list(self.event_types),
            "keys": list(self.keys),
            "channels": [{"n": c.name, "u": c.unit, "scale": c.scale} for c in self.channels],
        }


def _strings(doc: dict[str, Any], field: str, *, required: bool) -> tuple[str, ...]:
    raw = doc.get(field)
    if raw is None:
        if required:
            raise ContextError(f"context field {field!r} is missing")
        return ()
    if not isinstance(raw, list):
        raise ContextError(f"context field {field!r} must be a list of strings")
    if len(raw) > MAX_ENTRIES:
        raise ContextError(f"context field {field!r} has more than {MAX_ENTRIES} entries")
    for item in raw:
        if not isinstance(item, str) or not item:
            raise ContextError(f"context field {field!r} must hold non-empty strings")
    if len(set(raw)) != len(raw):
        raise ContextError(f"context field {field!r} lists a string twice")
    return tuple(raw)


def _channels(doc: dict[str, Any]) -> tuple[Channel, ...]:
    raw = doc.get("channels", [])
    if not isinstance(raw, list) or len(raw) > MAX_CHANNELS:
        raise ContextError(f"context field 'channels' must be a list of at most {MAX_CHANNELS}")
    result = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - {"n", "u", "scale"}:
            raise ContextError(f"channel {i} must be an object with 'n', 'u' and 'scale'")
        name, unit, scale = item.get("n"), item.get("u", ""), item.get("scale", 0)
        if not isinstance(name, str) or not _SENML_NAME.fullmatch(name):
            raise ContextError(f"channel {i} needs a SenML name ('n') of letters, digits and :./_-")
        if not isinstance(unit, str) or len(unit) > 32:
            raise ContextError(f"channel {i} unit ('u') must be a short string")
        if isinstance(scale, bool) or not isinstance(scale, int) or not -9 <= scale <= 9:
            raise ContextError(f"channel {i} scale must be an integer from -9 to 9")
        result.append(Channel(name, unit, scale))
    if len({c.name for c in result}) != len(result):
        raise ContextError("two channels share a name")
    return tuple(result)


def parse_context(doc: Any) -> Context:
    """Validate a decoded context JSON object; ContextError if it is wrong."""
    if not isinstance(doc, dict):
        raise ContextError("a context table must be a JSON object")
    if doc.get("format") != FORMAT_NAME:
        raise ContextError(f"context 'format' must be {FORMAT_NAME!r}")
    unknown = set(doc) - _KNOWN_FIELDS
    if unknown:
        raise ContextError(f"unknown context field {sorted(unknown)[0]!r}")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise ContextError(f"unknown context version {version!r}: versions are 1 to {MAX_VERSION}")
    epoch = doc.get("epoch_ms", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 1 << 53:
        raise ContextError("context 'epoch_ms' must be a non-negative integer")
    return Context(
        version=version,
        rooms=_strings(doc, "rooms", required=True),
        senders=_strings(doc, "senders", required=True),
        event_types=_strings(doc, "event_types", required=False),
        keys=_strings(doc, "keys", required=False),
        channels=_channels(doc),
        epoch_ms=epoch,
    )


def load_context(path: str | Path) -> Context:
    """Read and validate a context table file; ContextError on any problem."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ContextError(f"cannot read context file {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ContextError(f"context file {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ContextError(f"context file {path} is not valid JSON: {exc}") from None
    return parse_context(doc)


def default_context() -> Context:
    """The example context table shipped with the package (``context_v1.json``, version 1).

    It is the table of the compact vectors in ``tests/data`` and of the
    README's ``lowband wire`` examples; a deployment makes its own per device.
    """
    from importlib import resources

    raw = resources.files("lowband.codecs").joinpath("context_v1.json").read_bytes()
    return parse_context(json.loads(raw))
