"""The status web page (docs/status.md, "Status page"): its files, a device's readings, live updates.

Routes (:func:`install` adds them; every ``/_lowband/admin/v1/...`` one needs a server admin's access token,
``Authorization: Bearer``: 401 without a valid token, 403 ``M_FORBIDDEN`` for anyone else, as ``/metrics``):

* ``GET /_lowband/status/`` and its few files (HTML, JS, CSS shipped as package data in ``status-page/``, read
  once): the page itself needs no token, it asks for a Matrix login and calls the admin API with the token;
* ``GET /_lowband/admin/v1/devices/{name}/readings?since_ms=&limit=``: the device's telemetry events from its
  rooms' history, oldest first, as ``{"ts_ms", "values", "units", "room_id", "event_id"}``;
  ``GET /_lowband/admin/v1/ble/{name}/readings`` the same for a BLE sensor (one reader, :func:`account_readings`);
* ``GET /_lowband/admin/v1/events``: a ``text/event-stream`` of ``status`` events (the summary of
  ``status.build_status``, every :data:`STATUS_INTERVAL_S`) and ``reading`` events (a device's reading as soon as
  its room event is committed; a BLE sensor's too, with ``sensor`` in place of ``device``).

Rules:

* readings are read from the room history, never kept aside: a reading is a telemetry event (``m.room.message``
  with ``org.lowband.senml`` records) sent by the device's account in one of its rooms;
* every request is bounded: at most :data:`MAX_LIMIT` readings (a larger ``limit`` is refused, 400), at most
  :data:`SCAN_EVENTS` room events read per request (``truncated`` says when the answer stopped short);
* live streams are bounded too: at most :data:`MAX_STREAMS` at once (429 for one more), each with a queue of
  :data:`QUEUE_EVENTS` events; a client that does not read (its queue full, or a write blocked for
  :data:`WRITE_TIMEOUT_S`) is dropped, and reconnects;
* the room listener is one function for the app's life, and returns at once while no stream is open: the page
  costs the send path nothing when nobody watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from lowband.codecs.compact import SENML_KEY, format_reading
from lowband.gateway.api.http.base import authenticate, ok, services
from lowband.gateway.api.http.status import build_status
from lowband.gateway.ble.registry import USER_PREFIX, BleRegistry, BleRegistryError
from lowband.gateway.ble.registry import user_id as ble_user_id
from lowband.gateway.homeserver.rooms.sending import Sent
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.matrix.numbers import parse_digits
from lowband.gateway.store.interfaces import DeviceRecord, EventRow

log = logging.getLogger(__name__)

PAGE_PREFIX = "/_lowband/status"
ADMIN_PREFIX = "/_lowband/admin/v1"
#: the page's files: name -> content type (nothing else under PAGE_PREFIX is served)
PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: nothing from elsewhere: the page, its scripts, styles and API calls come from the gateway itself
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}  # fmt: skip

#: the start of a BLE sensor's Matrix user ID (``@ble_NAME:server``)
BLE_USER_PREFIX = "@" + USER_PREFIX
DEFAULT_SINCE_MS = 24 * 3600 * 1000
DEFAULT_LIMIT = 2000
MAX_LIMIT = 2000
#: room events read for one readings request, all the device's rooms together (a busy room's older readings
#: beyond them are not reached: ``truncated``)
SCAN_EVENTS = 20_000
_PAGE_EVENTS = 500

STATUS_INTERVAL_S = 5.0
MAX_STREAMS = 8
QUEUE_EVENTS = 256
WRITE_TIMEOUT_S = 10.0


# ------------------------------------------------------------------ readings from events


def reading_of(content: dict[str, Any], ts_ms: int) -> dict[str, Any] | None:
    """The reading a telemetry event's content holds: ``{"ts_ms", "values": {name: number}, "units": {name: u}}``.

    Values are the SenML ``v`` scaled by the record's ``scale_`` (decimal exponent). Records without a numeric
    value or a name are left out; None when none is left (not a telemetry event). Never raises.
    """
    records = content.get(SENML_KEY)
    if not isinstance(records, list):
        return None
    values: dict[str, float | int] = {}
    units: dict[str, str] = {}
    for record in records[:64]:
        if not isinstance(record, dict):
            continue
        name, value, scale = record.get("n"), record.get("v"), record.get("scale_", 0)
        if not isinstance(name, str) or not name or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not isinstance(scale, int) or isinstance(scale, bool) or not -30 < scale < 30:
            continue  # a scale we cannot apply: the value would be wrong
        if scale and isinstance(value, int):
            values[name] = float(
                format_reading(value, scale)
            )  # exact decimal text first: 215e-1 is 21.5, not 21.500001
        else:
            values[name] = value * 10**scale if scale else value
        unit = record.get("u")
        if isinstance(unit, str) and unit:
            units[name] = unit
    if not values:
        return None
    return {"ts_ms": ts_ms, "values": values, "units": units}


def _reading_row(row: EventRow, user_id: str) -> dict[str, Any] | None:
    event = row["event"]
    if event.sender != user_id or event.type != "m.room.message":
        return None
    found = reading_of(event.content, event.origin_server_ts)
    if found is not None:
        found.update(room_id=event.room_id, event_id=event.event_id)
    return found


def device_readings(
    svc: Services, device: DeviceRecord, since_ms: int, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """The device's readings (:func:`account_readings` of its account in its rooms)."""
    return account_readings(svc, device.user_id, device.rooms, since_ms, limit)


def account_readings(
    svc: Services, user_id: str, rooms: list[str] | tuple[str, ...], since_ms: int, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """The readings ``user_id`` (a device's or BLE sensor's account) sent into ``rooms`` at or after ``since_ms``
    (newest ``limit`` of them), oldest first, and whether the answer is short: more readings than ``limit``, or
    :data:`SCAN_EVENTS` room events read before reaching ``since_ms``. Reads each room backwards from its newest
    event."""
    store = svc.store
    head = store.persisted
    found: list[dict[str, Any]] = []
    budget, truncated = SCAN_EVENTS, False
    for room_id in rooms:
        upto = head
        while True:
            if budget <= 0:
                truncated = True
                break
            rows = store.room_events(room_id, after=0, upto=upto, limit=min(_PAGE_EVENTS, budget), backwards=True)
            budget -= len(rows)
            older = 0
            for row in rows:
                event = row["event"]
                if event.origin_server_ts < since_ms:
                    older += 1
                    continue
                reading = _reading_row(row, user_id)
                if reading is not None:
                    found.append(reading)
            # Stream order follows arrival, a device's buffered reading may be a little older than its neighbours:
            # stop once a whole page is before since_ms, not at the first such event.
            if len(rows) < _PAGE_EVENTS or older == len(rows):
                break
            upto = rows[-1]["stream"] - 1
    found.sort(key=lambda r: (r["ts_ms"], r["event_id"]))
    if len(found) > limit:
        found, truncated = found[-limit:], True
    return found, truncated


# ------------------------------------------------------------------ live streams


@dataclass(eq=False)  # compared and hashed by identity: streams live in a set
class _Stream:
    """One open event stream: its queue and whether it fell behind."""

    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_EVENTS))
    dropped: bool = False  # its queue overflowed: the handler ends the response, the client reconnects


class LiveHub:
    """The open ``/events`` streams of one gateway and the room listener that feeds them readings."""

    def __init__(self, svc: Services) -> None:
        self.services = svc
        self.streams: set[_Stream] = set()
        self.closed = False
        self._devices: dict[str, DeviceRecord] = {}  # device user ID -> record
        self._devices_read = -1.0

    def on_event(self, sent: Sent) -> None:
        """Room listener: a device's or BLE sensor's telemetry event becomes a ``reading`` on every open stream."""
        if not self.streams:
            return
        event = sent.event
        if event.type != "m.room.message" or SENML_KEY not in event.content:
            return
        if event.sender.startswith(BLE_USER_PREFIX):
            sensor = self._ble_sensor(event.sender, event.room_id)
            if sensor is None:
                return
            source = {"sensor": sensor}
        else:
            device = self._device(event.sender)
            if device is None or event.room_id not in device.rooms:
                return
            source = {"device": device.name}
        reading = reading_of(event.content, event.origin_server_ts)
        if reading is None:
            return
        reading.update(source, room_id=event.room_id, event_id=event.event_id)
        self.publish("reading", reading)

    def _ble_sensor(self, user_id: str, room_id: str) -> str | None:
        """The name of the BLE sensor speaking as ``user_id`` into ``room_id`` (None: not one of the component's)."""
        component = getattr(self.services, "components", {}).get("ble")
        sensors = getattr(component, "sensors", None)
        name = user_id[len(BLE_USER_PREFIX) :].partition(":")[0]
        if component is None or not isinstance(sensors, dict) or name not in sensors:
            return None
        if ble_user_id(name, self.services.config.server_name) != user_id:
            return None
        return name if room_id in component.joined_rooms(name) else None

    def _device(self, user_id: str) -> DeviceRecord | None:
        found = self._devices.get(user_id)
        now = time.monotonic()
        if found is None and now - self._devices_read > 1.0:  # a new device: read the registry again, once a second
            self._devices_read = now
            records = self.services.store.link_devices.devices()
            self._devices = {r.user_id: r for r in records if not r.revoked}
            found = self._devices.get(user_id)
        return found

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Queue one event on every stream; a stream whose queue is full is marked dropped and woken."""
        for stream in list(self.streams):
            if stream.dropped:
                continue
            try:
                stream.queue.put_nowait((kind, data))
            except asyncio.QueueFull:
                stream.dropped = True
                self._wake(stream)

    def open(self) -> _Stream:
        """A new stream; 429 when :data:`MAX_STREAMS` are open, 503 when the gateway is stopping."""
        if self.closed:
            raise MatrixError(503, "M_UNKNOWN", "the gateway is stopping")
        if len(self.streams) >= MAX_STREAMS:
            raise MatrixError(429, "M_LIMIT_EXCEEDED", f"at most {MAX_STREAMS} live status streams at once",
                              retry_after_ms=int(STATUS_INTERVAL_S * 1000))  # fmt: skip
        stream = _Stream()
        self.streams.add(stream)
        return stream

    def close_stream(self, stream: _Stream) -> None:
        """Forget ``stream`` (its handler ended)."""
        self.streams.discard(stream)

    def close(self) -> None:
        """The gateway is stopping: end every stream (aiohttp waits for open handlers before it stops)."""
        self.closed = True
        for stream in list(self.streams):
            self._wake(stream)

    @staticmethod
    def _wake(stream: _Stream) -> None:
        # A full queue cannot take the end marker: make room for it (the stream ends, what it held is moot).
        while True:
            try:
                stream.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                stream.queue.get_nowait()


HUB = web.AppKey("status_live_hub", LiveHub)


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _events(request: web.Request) -> web.StreamResponse:
    """``GET /_lowband/admin/v1/events``: the event stream (see the module docstring)."""
    svc = _require_admin(request)
    hub = request.app[HUB]
    stream = hub.open()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no", **_CORS_STREAM})  # fmt: skip
    try:
        await response.prepare(request)
        next_status = 0.0
        while not hub.closed and not stream.dropped:
            now = time.monotonic()
            if now >= next_status:
                next_status = now + STATUS_INTERVAL_S
                await _write(response, _sse("status", _status(svc)))
                continue
            item: tuple[str, dict[str, Any]] | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next_status - now):
                    item = await stream.queue.get()
            if item is not None:
                await _write(response, _sse(*item))
        if stream.dropped:
            log.info("status page: a live stream fell %d events behind; dropped (the page reconnects)", QUEUE_EVENTS)
    except (ConnectionResetError, TimeoutError):
        pass  # the client left, or stopped reading
    finally:
        hub.close_stream(stream)
    return response


def _status(svc: Services) -> dict[str, Any]:
    try:
        return build_status(svc)
    except Exception:  # a broken part of the summary must not end the stream of readings
        log.exception("status page: the status summary failed")
        return {"error": "the status summary failed; see the gateway's log"}


#: the error middleware adds CORS headers only to responses not yet sent; a stream is sent at once
_CORS_STREAM = {"Access-Control-Allow-Origin": "*"}


async def _write(response: web.StreamResponse, data: bytes) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT_S):  # a client that does not read blocks the write: dropped
        await response.write(data)


# ------------------------------------------------------------------ handlers


def _require_admin(request: web.Request) -> Services:
    requester = authenticate(request)
    svc = services(request)
    user = svc.store.get_user(requester.user_id)
    if user is None or not user["admin"] or user["deactivated"]:
        raise MatrixError(403, "M_FORBIDDEN", "this account is not a server admin")
    return svc


def _query_number(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    value = parse_digits(raw)
    if value is None:
        raise MatrixError(400, "M_INVALID_PARAM", f"'{key}' must be a non-negative integer")
    return value


def _readings_window(request: web.Request) -> tuple[int, int]:
    """``since_ms`` and ``limit`` of a readings request: 400 M_INVALID_PARAM for a malformed ``since_ms`` or a
    ``limit`` outside 1..MAX_LIMIT."""
    now_ms = int(time.time() * 1000)
    since_ms = _query_number(request, "since_ms", max(0, now_ms - DEFAULT_SINCE_MS))
    limit = _query_number(request, "limit", DEFAULT_LIMIT)
    if not 1 <= limit <= MAX_LIMIT:
        raise MatrixError(400, "M_INVALID_PARAM", f"'limit' must be between 1 and {MAX_LIMIT}")
    return since_ms, limit


async def _readings(request: web.Request) -> web.Response:
    """``GET .../devices/{name}/readings``: 400 as :func:`_readings_window`, 404 M_NOT_FOUND for no such device."""
    svc = _require_admin(request)
    name = request.match_info["name"]
    since_ms, limit = _readings_window(request)
    device = next((d for d in svc.store.link_devices.devices() if d.name == name), None)
    if device is None:
        raise MatrixError(404, "M_NOT_FOUND", f"no device named {name[:64]}")
    readings, truncated = device_readings(svc, device, since_ms, limit)
    return ok({"device": device.name, "user_id": device.user_id, "rooms": device.rooms, "since_ms": since_ms,
               "limit": limit, "readings": readings, "truncated": truncated})  # fmt: skip


def ble_sensor_rooms(svc: Services, name: str) -> list[str] | None:
    """The room IDs BLE sensor ``name`` posts into; None for no such sensor.

    The running component's joined rooms; without it (``[ble]`` off now, the
    history stays) the sensors file's rooms, aliases resolved here.
    """
    component = svc.components.get("ble")
    sensors = getattr(component, "sensors", None)
    if isinstance(sensors, dict) and component is not None:
        return component.joined_rooms(name) if name in sensors else None
    try:
        sensor = next((s for s in BleRegistry(svc.config.data_dir).sensors() if s.name == name), None)
    except BleRegistryError as exc:
        log.warning("status page: %s", exc)
        return None
    if sensor is None:
        return None
    rooms = []
    for room in sensor.rooms:
        found = svc.store.get_alias(room) if room.startswith("#") else (room,)
        if found is not None:
            rooms.append(found[0])
    return rooms


async def _ble_readings(request: web.Request) -> web.Response:
    """``GET .../ble/{name}/readings``: as the device's, 404 M_NOT_FOUND for no such BLE sensor."""
    svc = _require_admin(request)
    name = request.match_info["name"]
    since_ms, limit = _readings_window(request)
    rooms = ble_sensor_rooms(svc, name)
    if rooms is None:
        raise MatrixError(404, "M_NOT_FOUND", f"no BLE sensor named {name[:64]}")
    user_id = ble_user_id(name, svc.config.server_name)
    readings, truncated = account_readings(svc, user_id, rooms, since_ms, limit)
    return ok({"sensor": name, "user_id": user_id, "rooms": rooms, "since_ms": since_ms, "limit": limit,
               "readings": readings, "truncated": truncated})  # fmt: skip


def _page_files() -> dict[str, bytes]:
    folder = resources.files("lowband.gateway.api.http").joinpath("status-page")
    return {name: folder.joinpath(name).read_bytes() for name in PAGE_FILES}


def _page_routes() -> list[web.RouteDef]:
    files = _page_files()  # read once: a few KB, and a missing file fails at start, not at the first visit

    async def page_file(request: web.Request) -> web.Response:
        name = request.match_info.get("file") or "index.html"
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], headers={"Content-Type": PAGE_FILES[name], **_PAGE_HEADERS})

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(PAGE_PREFIX + "/")

    return [web.get(PAGE_PREFIX, to_page), web.get(PAGE_PREFIX + "/", page_file),
            web.get(PAGE_PREFIX + "/{file}", page_file)]  # fmt: skip


def install(app: web.Application, svc: Services) -> None:
    """Add the page, the readings and the live events routes to ``app``; listen to ``svc``'s rooms.

    Called once per app by ``app.make_app``; the live streams end when the app shuts down.
    """
    hub = LiveHub(svc)
    app[HUB] = hub
    svc.rooms.add_listener(hub.on_event)

    async def close_streams(_app: web.Application) -> None:
        hub.close()

    app.on_shutdown.append(close_streams)
    app.router.add_routes(_page_routes())
    app.router.add_get(ADMIN_PREFIX + "/devices/{name}/readings", _readings)
    app.router.add_get(ADMIN_PREFIX + "/ble/{name}/readings", _ble_readings)
    app.router.add_get(ADMIN_PREFIX + "/events", _events)
