"""Hourly summaries of telemetry readings, made before a retention purge deletes them (sans I/O).

With ``[retention] telemetry_summaries = true``, the purge job
(:mod:`~lowband.gateway.homeserver.retention_job`) hands the expired events
of a telemetry room to :func:`plan_summaries` before it deletes them. A
*reading* is a non-state ``m.room.message`` whose content carries
``org.lowband.senml`` records with numbers (the compact codec's kind 1, the
MQTT bridge and BLE write the same shape): value = ``v × 10**scale_``.
Readings are grouped by (sender, UTC hour of ``origin_server_ts``); each
group becomes one ``m.notice`` with a readable body and the structured key
``org.lowband.summary`` (docs/retention.md has the byte-level example).

Canonical JSON has no floats, so every figure is an exact integer mantissa at
the channel's ``scale_`` (the finest scale its readings used): ``min``,
``max``, ``sum``; ``mean`` is ``sum / count`` rounded half to even at one
more decimal (``scale_ - 1``). Records that are not a named number (a
``vs``/``vb``/``vd`` value, a bad scale) are not counted; an event with no
number left is not a reading. Nothing here raises on odd content: events
are remote or device input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from lowband.codecs.compact import SENML_KEY, format_reading

#: the content key of a summary event
SUMMARY_KEY = "org.lowband.summary"
#: the device part of a summary's transaction ID (sender, SUMMARY_DEVICE, "<room>|<hour start ms>")
SUMMARY_DEVICE = "org.lowband.summary"
HOUR_MS = 3_600_000
_MAX_SCALE = 9
_SAFE_INT = (1 << 53) - 1


def hour_floor(ts_ms: int) -> int:
    """The start (ms) of the UTC hour holding ``ts_ms``."""
    return ts_ms - ts_ms % HOUR_MS


def reading_values(content: Any) -> dict[str, tuple[int, int, str]] | None:
    """``{name: (mantissa, scale, unit)}`` of a telemetry content's numeric SenML records, or None.

    A channel named twice keeps its first record. None when the content has no
    ``org.lowband.senml`` list or no named integer mantissa in it.
    """
    if not isinstance(content, dict) or content.get("msgtype") != "m.notice":
        return None
    records = content.get(SENML_KEY)
    if not isinstance(records, list):
        return None
    found: dict[str, tuple[int, int, str]] = {}
    for record in records:
        if not isinstance(record, dict):
            continue
        name, mantissa, scale = record.get("n"), record.get("v"), record.get("scale_", 0)
        if not isinstance(name, str) or not name or name in found:
            continue
        if isinstance(mantissa, bool) or not isinstance(mantissa, int) or abs(mantissa) > _SAFE_INT:
            continue  # canonical JSON carries integers only; a float here is not ours
        if isinstance(scale, bool) or not isinstance(scale, int) or not -_MAX_SCALE <= scale <= _MAX_SCALE:
            continue
        unit = record.get("u", "")
        found[name] = (mantissa, scale, unit if isinstance(unit, str) else "")
    return found or None


@dataclass
class _Channel:
    unit: str
    values: list[tuple[int, int]] = field(default_factory=list)  # (mantissa, scale)


@dataclass
class Summary:
    """One (sender, hour) group: what :func:`summary_content` turns into an event."""

    sender: str
    start_ms: int
    readings: int = 0
    first_ts: int = 0
    last_ts: int = 0
    channels: dict[str, _Channel] = field(default_factory=dict)

    def txn_id(self, room_id: str) -> str:
        """The deterministic transaction ID: a retry or a re-run for the same hour returns the first event."""
        return f"{room_id}|{self.start_ms}"


def plan_summaries(events: list[tuple[str, int, Any]], before_ms: int) -> list[Summary]:
    """Group readings into summaries: ``events`` are (sender, origin_server_ts, content) of non-state
    ``m.room.message`` events; only those older than ``before_ms`` (an hour boundary) count.
    Returns the summaries ordered by hour, then sender."""
    groups: dict[tuple[int, str], Summary] = {}
    for sender, ts, content in events:
        if ts >= before_ms:
            continue
        values = reading_values(content)
        if values is None:
            continue
        start = hour_floor(ts)
        group = groups.get((start, sender))
        if group is None:
            group = groups[(start, sender)] = Summary(sender, start, first_ts=ts, last_ts=ts)
        group.readings += 1
        group.first_ts, group.last_ts = min(group.first_ts, ts), max(group.last_ts, ts)
        for name, (mantissa, scale, unit) in values.items():
            channel = group.channels.setdefault(name, _Channel(unit))
            channel.values.append((mantissa, scale))
    return [groups[key] for key in sorted(groups)]


def _channel_figures(name: str, channel: _Channel) -> dict[str, Any]:
    scale = min(s for _, s in channel.values)  # the finest scale: every value exact at it
    mantissas = [m * 10 ** (s - scale) for m, s in channel.values]
    total = sum(mantissas)
    figures: dict[str, Any] = {"n": name}
    if channel.unit:
        figures["u"] = channel.unit
    figures.update(count=len(mantissas), min=min(mantissas), max=max(mantissas), sum=total,
                   mean=round(Fraction(total * 10, len(mantissas))))  # fmt: skip
    if scale:
        figures["scale_"] = scale
    return figures


def summary_content(summary: Summary) -> dict[str, Any]:
    """The ``m.notice`` content of one summary (see the module rules and docs/retention.md)."""
    channels = [_channel_figures(name, summary.channels[name]) for name in sorted(summary.channels)]
    start = time.strftime("%Y-%m-%d %H:%M", time.gmtime(summary.start_ms // 1000))
    words = []
    for c in channels:
        scale = c.get("scale_", 0)
        unit = f" {c['u']}" if "u" in c else ""
        words.append(f"{c['n']} min {format_reading(c['min'], scale)} max {format_reading(c['max'], scale)}"
                     f" mean {format_reading(c['mean'], scale - 1)}{unit} ({c['count']})")  # fmt: skip
    end = time.strftime("%H:%M", time.gmtime((summary.start_ms + HOUR_MS) // 1000))
    body = f"Summary of {summary.readings} readings, {start}–{end} UTC: " + "; ".join(words)
    return {
        "msgtype": "m.notice",
        "body": body,
        SUMMARY_KEY: {
            "v": 1,
            "start": summary.start_ms,
            "end": summary.start_ms + HOUR_MS,
            "count": summary.readings,
            "first_ts": summary.first_ts,
            "last_ts": summary.last_ts,
            "channels": channels,
        },
    }
