"""The gateway's health summary (docs/status.md): what ``lowband status`` and the status page show.

* :func:`build_status` makes the summary (the contract is
  /work/scratch/notes/status-schema.md, written out in docs/status.md). It is
  **synchronous** and cheap: it reads counters the components keep anyway
  (``LinkRuntime.device_stats()`` and ``refusal_counts()``, the MQTT bridge's
  and the BLE component's ``stats()``, the appservice and federation queue rows) and ``/proc/self``,
  and never awaits, so a handler and the snapshot task call it as is;
* the components are reached through ``Services.components`` by duck typing,
  as ``metrics.py`` does: the link runtime is a sibling layer, the MQTT bridge
  would import paho. A component that is not running gives no entries; a part
  that fails to read is logged and left empty (its name in ``"errors"``), so
  one broken part spoils no summary;
* recent refusals are a ring of :data:`RING_SIZE` entries in the gateway's
  :class:`StatusTracker`: each summary compares the refusal counters with the
  ones it saw last and adds an entry per (component, source, kind) that grew,
  stamped with the time it was noticed. Nothing is added to the paths that
  refuse frames or messages, and a flood of refusals is one entry per summary;
* ``GET /_lowband/admin/v1/status`` answers an admin's access token only (401
  without a valid token, 403 for anyone else), exactly like ``/metrics``;
* :func:`start_snapshots` writes the summary to ``DATA_DIR/status.json`` every
  :data:`SNAPSHOT_SECONDS` and once more when the gateway stops (then with
  ``stopped_at_ms``): temp file, mode 0600, ``os.replace``, no fsync (a lost
  snapshot is rewritten five seconds later).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aiohttp import web

from lowband.gateway.aio import cancel_and_wait
from lowband.gateway.api.http.base import SERVICES, Requester, authenticate, ok, services
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError

log = logging.getLogger(__name__)

#: the key of the gateway's :class:`StatusTracker` in ``Services.components``
NAME = "status"
STATUS_PATH = "/_lowband/admin/v1/status"
#: the snapshot's name in the data dir
SNAPSHOT_NAME = "status.json"
SNAPSHOT_SECONDS = 5.0
#: recent refusals kept (newest first in the summary)
RING_SIZE = 100
#: health without a known reading interval: late after 2 min without a frame, silent after 10 min
DEFAULT_LATE_S, DEFAULT_SILENT_S = 120.0, 600.0
LATE_FACTOR, SILENT_FACTOR = 1.5, 5.0
#: an interval estimated from the readings seen is never taken below this (the snapshot sees readings at most
#: every SNAPSHOT_SECONDS, and a burst of readings is not the device's pace)
MIN_ESTIMATED_INTERVAL_S = 10.0
_READINGS_KEPT = 6  # reading times per device for the estimate (5 gaps)

#: device fields of the schema, None when the link runtime cannot say (it is not running, or predates them)
DEVICE_FIELDS = (
    "link", "address", "frames_in", "frames_out", "bytes_in", "bytes_out", "refused", "retransmissions",
    "retransmissions_in", "retransmissions_out", "handshakes", "session", "last_seen_ms", "rssi_dbm", "snr_db",
    "battery", "last_reading", "airtime_s_window", "airtime_window_s", "duty_cycle_budget_s", "duty_cycle_left",
    "commands_pending",
)  # fmt: skip


@functools.cache  # a metadata lookup takes half a millisecond; the version does not change while running
def gateway_version() -> str:
    """The installed lowband distribution's version ("?" when not installed as a distribution)."""
    try:
        return version("lowband")
    except PackageNotFoundError:
        return "?"


def device_health(last_seen_ms: int | None, now_ms: int, interval_s: float | None) -> str:
    """``ok``, ``late``, ``silent`` or ``never`` for a device last heard at ``last_seen_ms``.

    Late: no frame for more than 1.5 × its reading interval (2 min when the
    interval is unknown); silent: more than 5 × the interval (10 min).
    """
    if last_seen_ms is None:
        return "never"
    late, silent = (DEFAULT_LATE_S, DEFAULT_SILENT_S) if not interval_s else (LATE_FACTOR * interval_s,
                                                                              SILENT_FACTOR * interval_s)  # fmt: skip
    age_s = (now_ms - last_seen_ms) / 1000
    return "silent" if age_s > silent else "late" if age_s > late else "ok"


@dataclass
class StatusTracker:
    """What a summary remembers from the one before: refusal counters, reading times; the recent-refusals ring."""

    started_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    refusals: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RING_SIZE))
    _totals: dict[tuple[str, str, str], int] = field(default_factory=dict)
    _readings: dict[str, deque[int]] = field(default_factory=dict)

    def note_refusals(self, component: str, counts: Iterable[tuple[str, str, int]], now_ms: int) -> None:
        """Compare ``(source, kind, total)`` counters with the last look; an entry for each that grew.

        A counter that went down (its component restarted) counts from zero again.
        """
        for source, kind, total in counts:
            key = (component, source, kind)
            before = self._totals.get(key, 0)
            self._totals[key] = total
            grown = total - before if total >= before else total
            if grown > 0:
                self.refusals.append({"ts_ms": now_ms, "component": component, "source": source, "kind": kind,
                                      "count": grown})  # fmt: skip

    def recent_refusals(self) -> list[dict[str, Any]]:
        """The ring, newest first (copies)."""
        return [dict(entry) for entry in reversed(self.refusals)]

    def reading_interval(self, device: str, reading_ts_ms: int | None) -> float | None:
        """Note a device's latest reading time; its reading interval estimated from the last few (None: too few).

        The median gap between the distinct reading times seen, at least
        :data:`MIN_ESTIMATED_INTERVAL_S`; three readings are needed.
        """
        seen = self._readings.setdefault(device, deque(maxlen=_READINGS_KEPT))
        if reading_ts_ms is not None and (not seen or reading_ts_ms > seen[-1]):
            seen.append(reading_ts_ms)
        if len(seen) < 3:
            return None
        gaps = [(b - a) / 1000 for a, b in zip(seen, list(seen)[1:], strict=False)]
        return max(MIN_ESTIMATED_INTERVAL_S, statistics.median(gaps))


def tracker_of(svc: Services) -> StatusTracker:
    """The gateway's tracker, made on first use (when the HTTP app is made, so ``started_at_ms`` is the start)."""
    found = svc.components.get(NAME)
    if not isinstance(found, StatusTracker):
        found = StatusTracker()
        svc.components[NAME] = found
    return found


# ------------------------------------------------------------------ the summary


def build_status(svc: Services) -> dict[str, Any]:
    """The health summary of the running gateway, JSON-ready (docs/status.md); synchronous, never raises.

    Also moves the tracker: refusals noticed since the last summary enter the
    ring, reading times feed the interval estimates.
    """
    tracker = tracker_of(svc)
    now_ms = int(time.time() * 1000)
    errors: list[str] = []

    def part(name: str, read: Callable[[], Any], empty: Any) -> Any:
        try:
            return read()
        except Exception:
            log.exception("status: %s could not be read", name)
            errors.append(name)
            return empty

    summary: dict[str, Any] = {
        "server_name": svc.config.server_name,
        "version": gateway_version(),
        "generated_at_ms": now_ms,
        "started_at_ms": tracker.started_at_ms,
        "devices": part("devices", lambda: _devices(svc, tracker, now_ms), []),
        "mqtt": part("mqtt", lambda: _mqtt(svc, tracker, now_ms), None),
        "ble": part("ble", lambda: _ble(svc, tracker, now_ms), None),
        "federation": part("federation", lambda: _federation(svc), []),
        "appservices": part("appservices", lambda: _appservices(svc), []),
        "process": part("process", lambda: process_figures(tracker.started_at_ms, now_ms), {}),
        "workers": part("workers", lambda: _workers(svc), None),
        "store_upkeep": part("store_upkeep", lambda: _store_upkeep(svc), None),
    }
    part("link refusals", lambda: _link_refusals(svc, tracker, now_ms), None)
    summary["refusals"] = tracker.recent_refusals()
    if errors:
        summary["errors"] = errors
    return summary


def _devices(svc: Services, tracker: StatusTracker, now_ms: int) -> list[dict[str, Any]]:
    runtime = svc.components.get("links")
    stats_of = getattr(runtime, "device_stats", None)
    stats: dict[str, dict[str, Any]] = stats_of() if callable(stats_of) else {}
    records = getattr(runtime, "devices", None)
    if not isinstance(records, dict):  # no runtime yet (no device, or it is starting): the registry says who
        from lowband.gateway.devices.registry import Registry

        records = {record.name: record for record in Registry(svc.store.link_devices).devices()}
    devices = []
    for name in sorted(records):
        record = records[name]
        own = stats.get(name) or {}
        entry: dict[str, Any] = {"name": name, "user_id": record.user_id, "rooms": list(record.rooms)}
        entry.update({key: own.get(key) for key in DEVICE_FIELDS})
        entry.update({key: value for key, value in own.items() if key not in entry})  # fields added later
        if entry["link"] is None:
            entry["link"] = record.link
        if entry["address"] is None:
            entry["address"] = record.address
        reading = entry.get("last_reading")
        reading_ts = reading.get("ts_ms") if isinstance(reading, dict) else None
        interval = _configured_interval(own, record.context)
        estimated = tracker.reading_interval(name, reading_ts if isinstance(reading_ts, int) else None)
        entry["reading_interval_s"] = interval or estimated
        entry["health"] = device_health(entry["last_seen_ms"], now_ms, entry["reading_interval_s"])
        devices.append(entry)
    return devices


def _configured_interval(stats: dict[str, Any], context: Any) -> float | None:
    """The device's reading interval where the runtime or its provisioning states one (seconds)."""
    for value in (stats.get("reading_interval_s"), context.get("interval_s") if isinstance(context, dict) else None):
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def _link_refusals(svc: Services, tracker: StatusTracker, now_ms: int) -> None:
    runtime = svc.components.get("links")
    counts_of = getattr(runtime, "refusal_counts", None)
    if not callable(counts_of):
        return
    counts = counts_of()
    tracker.note_refusals("link", ((spec, kind, n) for spec, kinds in counts.items() for kind, n in kinds.items()),
                          now_ms)  # fmt: skip
    # The runtime's ``stats`` count every refusal as ``refused_KIND``: frames (the counts above, on every link) and
    # messages the room refused after their frame was taken (``room_event``, ``account``...): the rest is those.
    frames: dict[str, int] = {}
    for kinds in counts.values():
        for kind, n in kinds.items():
            frames[kind] = frames.get(kind, 0) + n
    stats = getattr(runtime, "stats", None)
    if isinstance(stats, dict):
        delivered = (
            (kind, total - frames.get(kind, 0))
            for kind, total in (
                (key.removeprefix("refused_"), value) for key, value in stats.items() if key.startswith("refused_")
            )
        )
        tracker.note_refusals("link", (("delivery", kind, n) for kind, n in delivered if n > 0), now_ms)


def _mqtt(svc: Services, tracker: StatusTracker, now_ms: int) -> dict[str, Any] | None:
    bridge = svc.components.get("mqtt")
    stats_of = getattr(bridge, "stats", None)
    if not callable(stats_of):
        return None
    brokers = []
    for name, session in dict(getattr(bridge, "sessions", {})).items():
        link = getattr(session, "link", None)
        config = getattr(link, "config", None)
        connected = getattr(link, "connected", None)
        brokers.append({"name": name, "broker": f"{getattr(config, 'host', '?')}:{getattr(config, 'port', '?')}",
                        "connected": bool(connected.is_set()) if isinstance(connected, asyncio.Event) else None})  # fmt: skip
    queues = {name: len(getattr(state, "queue", ())) for name, state in dict(getattr(bridge, "inbound", {})).items()}
    mappings, refused = [], []
    for mapping, counters in sorted(stats_of().items()):
        by_reason = {k.partition(".")[2]: v for k, v in counters.items() if k.startswith("refused.")}
        dropped = sum(v for k, v in counters.items() if k.startswith("dropped."))
        mappings.append({"name": mapping, "received": counters.get("received", 0), "posted": counters.get("posted", 0),
                         "published": counters.get("published", 0), "refused": sum(by_reason.values()),
                         "dropped": dropped, "queued": queues.get(mapping)})  # fmt: skip
        refused += [(mapping, reason, count) for reason, count in by_reason.items()]
    tracker.note_refusals("mqtt", refused, now_ms)
    return {"brokers": brokers, "mappings": mappings}


def _ble(svc: Services, tracker: StatusTracker, now_ms: int) -> dict[str, Any] | None:
    """The BLE component's scanner, sensors and counters (None when it does not run); its refusals enter the ring."""
    component = svc.components.get("ble")
    stats_of = getattr(component, "stats", None)
    if not callable(stats_of):
        return None
    stats: dict[str, Any] = stats_of()
    settings = getattr(component, "settings", None)
    sensors, refused = [], []
    per_kind: dict[str, int] = {}
    for name, own in sorted((stats.get("sensors") or {}).items()):
        ago = own.get("last_seen_s_ago")
        last_seen_ms = None if not isinstance(ago, int | float) else int(now_ms - ago * 1000)
        interval = own.get("interval_s")
        interval = float(interval) if isinstance(interval, int | float) and interval > 0 else None
        by_kind = dict(own.get("refused") or {})
        gatt = own.get("gatt")
        sensors.append({
            "name": name, "user_id": own.get("user_id"), "address": own.get("address"), "format": own.get("format"),
            "rooms": list(own.get("rooms") or []), "reading_interval_s": interval,
            "health": device_health(last_seen_ms, now_ms, interval), "present": own.get("present"),
            "last_seen_ms": last_seen_ms, "rssi_dbm": own.get("rssi"), "readings": own.get("readings", 0),
            "refused": by_kind, "last_reading": own.get("last_reading"),
            "gatt": None if not isinstance(gatt, dict) else {
                "connected": gatt.get("connected"), "last_error": gatt.get("last_error"),
                "attempts": gatt.get("attempts")},
        })  # fmt: skip
        for kind, count in by_kind.items():
            refused.append((name, kind, count))
            per_kind[kind] = per_kind.get(kind, 0) + count
    # Refusals the tracker could not pin on a configured sensor (a GATT reading of a removed one: unknown_sensor).
    for kind, total in (stats.get("refused") or {}).items():
        if total - per_kind.get(kind, 0) > 0:
            refused.append(("other", kind, total - per_kind.get(kind, 0)))
    tracker.note_refusals("ble", refused, now_ms)
    return {
        "scanner": _ble_scanner(stats, settings),
        "sensors": sensors,
        "advertisements": stats.get("adverts", 0),
        "duplicates": stats.get("duplicates", 0),
        "posted": stats.get("posted", 0),
        "post_failed": stats.get("post_failed", 0),
        "dropped": stats.get("queue_full", 0),
        "queued": stats.get("queue", 0),
        "queue_size": stats.get("queue_size"),
        "unknown_devices": stats.get("unknown_tracked", 0),
        "unknown_cap": stats.get("unknown_cap"),
        "unknown_evicted": stats.get("unknown_evicted", 0),
        "refused_accounts": dict(stats.get("refused_accounts") or {}),
    }


def _ble_scanner(stats: dict[str, Any], settings: Any) -> dict[str, Any]:
    """The scanner's state: its own ``stats()`` where it has one (bleak), else what the component knows."""
    found = stats.get("scanner")
    own: dict[str, Any] = found if isinstance(found, dict) else {}
    mode = getattr(settings, "mode", None)
    state = own.get("state") or ("running" if stats.get("scanning") else "not started")
    return {
        "state": state, "mode": mode, "mode_in_use": own.get("mode_in_use", mode), "mode_reason": own.get("mode_reason"),
        "adapter": own.get("adapter") or getattr(settings, "adapter", None), "last_error": own.get("last_error"),
        "restarts": own.get("restarts"), "bad_adverts": own.get("bad_adverts"),
    }  # fmt: skip


def _federation(svc: Services) -> list[dict[str, Any]]:
    from lowband.gateway.federation.component import federation_of

    federation = federation_of(svc)
    if federation is None:
        return []
    tables, schedule = federation.store, federation.sender.schedule
    head = tables.log_head()
    return [{"destination": name, "behind": max(0, head - cursor), "in_flight": upto is not None,
             "failures": schedule.failures(name), "last_success_ms": None}  # not kept by the sender
            for name, cursor, _seq, upto in tables.destinations()]  # fmt: skip


def _appservices(svc: Services) -> list[dict[str, Any]]:
    from lowband.gateway.appservices.component import runtime_of

    if runtime_of(svc) is None:
        return []
    head = svc.store.persisted
    return [{"id": appservice_id, "behind": max(0, head - row.cursor), "in_flight": row.txn_upto is not None,
             "failures": row.failures, "last_success_ms": row.last_ok_ts}
            for appservice_id, row in sorted(svc.store.appservices.queues().items())]  # fmt: skip


def _described(part: Any) -> dict[str, Any] | None:
    """What ``part.describe()`` says; None where there is no such part (or it cannot describe itself)."""
    describe = getattr(part, "describe", None)
    return describe() if callable(describe) else None


def _workers(svc: Services) -> dict[str, Any] | None:
    """The reader workers of ``lowband serve --workers N`` (app.WorkerPool, docs/scaling.md); None without."""
    return _described(svc.components.get("worker_pool"))


def _store_upkeep(svc: Services) -> dict[str, Any] | None:
    """The PostgreSQL store's own VACUUM/ANALYZE where the server's autovacuum is off (docs/storage.md); None
    on SQLite, where autovacuum is on, and in a reader worker."""
    return _described(getattr(getattr(svc, "store", None), "upkeep", None))


def process_figures(started_at_ms: int, now_ms: int) -> dict[str, Any]:
    """RSS, CPU seconds and open files of this process from ``/proc/self`` (None where there is no /proc)."""
    times = os.times()
    figures: dict[str, Any] = {"rss_bytes": None, "cpu_s": round(times.user + times.system, 3), "open_fds": None,
                               "uptime_s": round((now_ms - started_at_ms) / 1000, 1)}  # fmt: skip
    try:
        with open("/proc/self/statm", "rb") as statm:
            figures["rss_bytes"] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        figures["open_fds"] = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):
        pass
    return figures


# ------------------------------------------------------------------ the endpoint


def require_admin(request: web.Request) -> Requester:
    """The requester if it is a server admin: 401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN, else 403 M_FORBIDDEN."""
    requester = authenticate(request)
    user = services(request).store.get_user(requester.user_id)
    if user is None or not user["admin"] or user["deactivated"]:
        raise MatrixError(403, "M_FORBIDDEN", "the gateway's status is for server admins")
    return requester


async def _status_as_admin(request: web.Request) -> web.Response:
    require_admin(request)
    return ok(build_status(services(request)))


def add_status_routes(app: web.Application) -> None:
    """Add ``GET /_lowband/admin/v1/status`` (admin only) to the client app; ``app[SERVICES]`` must be set."""
    tracker_of(app[SERVICES])
    app.router.add_get(STATUS_PATH, _status_as_admin)


# ------------------------------------------------------------------ the snapshot


def write_snapshot(path: Path, summary: dict[str, Any]) -> None:
    """Replace ``path`` by ``summary`` as JSON atomically (a temp file beside it, mode 0600, ``os.replace``)."""
    data = json.dumps(summary, separators=(",", ":"), allow_nan=False, default=str).encode()
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


async def start_snapshots(svc: Services, interval: float = SNAPSHOT_SECONDS) -> Callable[[], Awaitable[None]]:
    """Write ``DATA_DIR/status.json`` now and every ``interval`` seconds; returns the ``stop`` that writes it once
    more, with ``stopped_at_ms``. A failed write is logged (once until one succeeds again), never raised."""
    path = svc.config.data_dir / SNAPSHOT_NAME
    failing = False

    def snapshot(**extra: Any) -> None:
        nonlocal failing
        try:
            write_snapshot(path, {**build_status(svc), **extra})
        except (OSError, ValueError) as exc:
            if not failing:
                log.warning("cannot write the status snapshot %s: %s (retrying every %g s)", path, exc, interval)
            failing = True
        else:
            failing = False

    async def loop() -> None:
        while True:
            snapshot()
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name="status-snapshot")

    async def stop() -> None:
        await cancel_and_wait(task)
        snapshot(stopped_at_ms=int(time.time() * 1000))

    return stop


__all__ = ["NAME", "SNAPSHOT_NAME", "STATUS_PATH", "StatusTracker", "add_status_routes", "build_status",
           "device_health", "require_admin", "start_snapshots", "tracker_of", "write_snapshot"]  # fmt: skip
