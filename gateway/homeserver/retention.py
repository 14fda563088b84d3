"""Message retention (MSC1763, ``m.room.retention``): the effective policy of a room, sans I/O.

A room's policy comes from its ``m.room.retention`` state event (content
``{"min_lifetime": ms, "max_lifetime": ms}``) and the server's
``[retention]`` config (:class:`~lowband.gateway.config.RetentionConfig`):

* a room with no ``m.room.retention`` takes the server default of its kind:
  ``telemetry_max_lifetime_s`` for a telemetry room (an account an edge owns
  is joined: a link device, a BLE sensor, the MQTT bridge), else
  ``default_max_lifetime_s`` (none: kept forever); a default has no
  min_lifetime;
* a room with one (MSC1763's "effective retention policy"): its max_lifetime
  clamped into ``[allowed_min_lifetime_s, allowed_max_lifetime_s]`` (a room
  cannot ask to keep more, nor less, than the server allows); a max_lifetime
  it does not give, or gives malformed (not an integer in [0, 2**53 - 1], a
  boolean), is the lower limit (``allowed_min_lifetime_s``; none: forever);
  then raised to its own min_lifetime (max_lifetime >= min_lifetime);
* an event is *expired* when it is not a state event and its
  ``origin_server_ts`` is older than now − max_lifetime. State events never
  expire: they are the room's state and the auth chain of every new event.

Nothing here reads the store or the clock: the callers pass the room's
retention content, its kind and ``now_ms``
(:mod:`lowband.gateway.homeserver.retention_job` does the I/O).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowband.gateway.config import RetentionConfig

RETENTION_EVENT = "m.room.retention"
KIND_TELEMETRY = "telemetry"
KIND_DEFAULT = "default"
#: lifetimes above this are treated as "forever" (the largest integer canonical JSON carries, 2**53 - 1)
MAX_LIFETIME_MS = (1 << 53) - 1


@dataclass(frozen=True)
class RetentionPolicy:
    """A room's effective policy: lifetimes in ms, None for no bound."""

    min_lifetime_ms: int | None = None
    max_lifetime_ms: int | None = None

    def cutoff(self, now_ms: int) -> int | None:
        """The ``origin_server_ts`` below which a non-state event is expired at ``now_ms``; None: nothing expires."""
        if self.max_lifetime_ms is None:
            return None
        return now_ms - self.max_lifetime_ms


#: the policy of a room with no retention at all
KEEP_FOREVER = RetentionPolicy()


def lifetime_field(content: dict[str, Any] | None, key: str) -> int | None:
    """A lifetime of an ``m.room.retention`` content in ms: a non-negative integer up to :data:`MAX_LIFETIME_MS`;
    None when absent or malformed (a string, a float, a boolean, negative: the event is remote input)."""
    if not isinstance(content, dict):
        return None
    value = content.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIFETIME_MS:
        return None
    return value


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else min(MAX_LIFETIME_MS, int(seconds * 1000))


def default_max_ms(config: RetentionConfig, kind: str) -> int | None:
    """The server's max_lifetime in ms for a room of ``kind`` that sets none itself (None: keep forever)."""
    if kind == KIND_TELEMETRY and config.telemetry_max_lifetime_s is not None:
        return _ms(config.telemetry_max_lifetime_s)
    return _ms(config.default_max_lifetime_s)


def effective_policy(content: dict[str, Any] | None, kind: str, config: RetentionConfig) -> RetentionPolicy:
    """The policy of a room whose current ``m.room.retention`` content is ``content`` (None: the room has none;
    a content that is not an object counts as an empty one) and whose kind is ``kind`` (:data:`KIND_TELEMETRY` or :data:`KIND_DEFAULT`); :data:`KEEP_FOREVER` when
    retention is off in the config. Never raises: malformed fields are ignored (see the module rules)."""
    if not config.enabled:
        return KEEP_FOREVER
    if content is None:  # no policy of its own: the server's for its kind
        return RetentionPolicy(None, default_max_ms(config, kind))
    min_ms = lifetime_field(content, "min_lifetime")
    max_ms = lifetime_field(content, "max_lifetime")
    low, high = _ms(config.allowed_min_lifetime_s), _ms(config.allowed_max_lifetime_s)
    if max_ms is None:  # none given: the lower limit, if any (MSC1763)
        max_ms = low
    else:  # the room's own choice is bounded by what the server allows
        if low is not None:
            max_ms = max(max_ms, low)
        if high is not None:
            max_ms = min(max_ms, high)
    if max_ms is not None and min_ms is not None:
        max_ms = max(max_ms, min_ms)
    return RetentionPolicy(min_ms, max_ms)


def expired(is_state: bool, origin_server_ts: int, cutoff: int | None) -> bool:
    """Whether an event is past its room's retention: not state, and older than ``cutoff``
    (:meth:`RetentionPolicy.cutoff`; None: nothing expires)."""
    return cutoff is not None and not is_state and origin_server_ts < cutoff


def configuration_document(config: RetentionConfig) -> dict[str, Any]:
    """MSC1763's ``GET /retention/configuration`` answer for this server: the default policy under ``"*"``
    (the one of rooms that are not telemetry), the limits on ``max_lifetime`` (ms), and, as a Lowband
    extension, the default of each room kind; ``{"policies": {}, "limits": {}}`` when retention is off."""
    if not config.enabled:
        return {"policies": {}, "limits": {}}
    policies: dict[str, Any] = {}
    default = default_max_ms(config, KIND_DEFAULT)
    if default is not None:
        policies["*"] = {"max_lifetime": default}
    bounds = {"min": _ms(config.allowed_min_lifetime_s), "max": _ms(config.allowed_max_lifetime_s)}
    limits = {"max_lifetime": {k: v for k, v in bounds.items() if v is not None}} if any(bounds.values()) else {}
    kinds = {kind: {"max_lifetime": value} for kind in (KIND_DEFAULT, KIND_TELEMETRY)
             if (value := default_max_ms(config, kind)) is not None}  # fmt: skip
    return {"policies": policies, "limits": limits, "org.lowband.kinds": kinds}
