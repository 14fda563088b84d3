"""Prometheus metrics of one gateway (``/metrics``, docs/metrics.md).

Rules:

* one private :class:`~prometheus_client.CollectorRegistry` per gateway, never
  the library's global one: tests run several gateways in one process, and
  one gateway's figures must not leak into another's;
* the request path pays for two metric updates (a counter and a histogram
  observation) in :meth:`GatewayMetrics.middleware`, nothing else; every other
  figure is read at scrape time, by :class:`_StateCollector`, from counters the
  components already keep (``LinkRuntime.refusal_counts`` and ``device_stats``, the MQTT bridge's
  ``stats``, the store's queue rows …), so nothing is counted twice;
* labels have bounded values: a request is labelled by its route *template*
  (``/_matrix/client/v3/rooms/{room_id}/send/...``), ``unmatched`` when no
  route took it, and its method only when it is one of the methods the API
  serves (``other`` otherwise) — a client choosing paths and methods cannot
  grow the number of series;
* the components are reached through ``Services.components`` at scrape time,
  by duck typing where this layer may not import them (the link runtime is a
  sibling layer); a component that is not running yields no series;
* ``/metrics`` on the client listener answers only an admin's access token
  (401 without a token, 403 for anyone else); :func:`make_metrics_app` is the
  token-less listener ``[metrics] listen`` asks for, on loopback only
  (``gateway/config.py`` refuses any other address).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lowband.gateway.api.http.base import authenticate, services
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: the key of the gateway's :class:`GatewayMetrics` in ``Services.components`` (and its aiohttp app key)
NAME = "metrics"

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"})
#: seconds; up to a minute because a long-polling /sync lasts its timeout (30 s from most clients)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: MQTT counter name prefixes that become their own family, the rest after the dot its ``reason`` label
_MQTT_FAMILIES = ("refused", "dropped", "skipped")


class GatewayMetrics:
    """The registry of one gateway: request metrics fed by the middleware, the rest read when scraped."""

    def __init__(self, services: Services) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("lowband_http_requests", "HTTP requests answered, by route template and status class",
                                ["method", "route", "status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("lowband_http_request_duration_seconds",
                                 "Time from a request's arrival to its response, by route template", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        # RSS, CPU seconds, open files, start time: read from /proc at scrape time (Linux; nothing elsewhere).
        ProcessCollector(namespace="lowband", registry=self.registry)
        self.registry.register(_StateCollector(services))

    def middleware(self) -> Middleware:
        """The aiohttp middleware counting every request; put it first so it sees the final status.

        It never changes a response and re-raises what the handler raised.
        """
        requests, latency = self.requests, self.latency

        @web.middleware
        async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = "none"  # the client went away (cancelled) before an answer
            try:
                response = await handler(request)
                status = f"{response.status // 100}xx"
                return response
            except web.HTTPException as exc:
                status = f"{exc.status // 100}xx"
                raise
            except asyncio.CancelledError:
                raise
            except Exception:
                status = "5xx"
                raise
            finally:
                resource = request.match_info.route.resource
                route = resource.canonical if resource is not None else "unmatched"
                method = request.method if request.method in _METHODS else "other"
                requests.labels(method, route, status).inc()
                latency.labels(route).observe(time.perf_counter() - started)

        return count_requests

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what a scrape gets)."""
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", GatewayMetrics)


def metrics_of(svc: Services) -> GatewayMetrics | None:
    """The gateway's metrics, or None before the HTTP app was made."""
    found = svc.components.get(NAME)
    return found if isinstance(found, GatewayMetrics) else None


def install(app: web.Application, svc: Services, metrics: GatewayMetrics) -> None:
    """Hang the gateway's ``metrics`` on ``app`` and ``svc``; add ``GET /metrics`` (admin only).

    The caller has put :meth:`GatewayMetrics.middleware` in front of the app's middlewares.
    """
    app[METRICS] = metrics
    svc.components[NAME] = metrics
    app.router.add_get("/metrics", _scrape_as_admin)


async def _scrape_as_admin(request: web.Request) -> web.Response:
    """``GET /metrics`` on the client listener: 401 without a valid token, 403 unless its user is an admin."""
    requester = authenticate(request)
    user = services(request).store.get_user(requester.user_id)
    if user is None or not user["admin"] or user["deactivated"]:
        raise MatrixError(403, "M_FORBIDDEN", "metrics are for server admins")
    return _exposition_response(request.app[METRICS])


def _exposition_response(metrics: GatewayMetrics) -> web.Response:
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_metrics_app(metrics: GatewayMetrics) -> web.Application:
    """The token-less metrics listener's application (``[metrics] listen``): ``GET /metrics`` and nothing else."""

    async def scrape(request: web.Request) -> web.Response:
        return _exposition_response(metrics)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


# ------------------------------------------------------------------ read at scrape time


class _StateCollector(Collector):
    """Figures the components keep anyway, turned into metric families when Prometheus asks."""

    def __init__(self, svc: Services) -> None:
        self.services = svc

    def collect(self) -> Iterator[Metric]:
        """Every family below; a part that fails is logged and left out, so one broken part spoils no scrape."""
        for part in (self._homeserver, self._links, self._devices, self._mqtt, self._ble, self._federation,
                     self._appservices):  # fmt: skip
            try:
                yield from part()
            except Exception:
                log.exception("metrics: %s could not be read", part.__name__.strip("_"))

    def _homeserver(self) -> Iterator[Metric]:
        svc = self.services
        yield GaugeMetricFamily("lowband_stream_position",
                                "The highest event stream position committed (grows with every event persisted)",
                                value=svc.store.persisted)  # fmt: skip
        dropped = CounterMetricFamily("lowband_to_device_dropped", "To-device messages dropped, by reason",
                                      labels=["reason"])  # fmt: skip
        for reason, count in svc.to_device.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped

    def _ble(self) -> Iterator[Metric]:
        # Duck-typed like the links: the BLE component (gateway/ble, a sibling layer) builds its own families.
        ble = self.services.components.get("ble")
        if ble is not None and hasattr(ble, "metrics"):
            yield from ble.metrics()

    def _links(self) -> Iterator[Metric]:
        # Duck-typed: the link runtime is a sibling layer (gateway/link), and absent until a device exists.
        runtime = self.services.components.get("links")
        if runtime is None or not hasattr(runtime, "refusal_counts"):
            return
        refused = CounterMetricFamily("lowband_link_refused_frames", "Frames refused on a device link, by kind",
                                      labels=["link", "kind"])  # fmt: skip
        for spec, kinds in runtime.refusal_counts().items():
            for kind, count in kinds.items():
                refused.add_metric([spec, kind], count)
        yield refused
        outcomes = CounterMetricFamily("lowband_link_outcomes",
                                       "What the link runtime did, all links together (readings stored, commands "
                                       "queued and acknowledged, deliveries failed or refused by reason)",
                                       labels=["outcome"])  # fmt: skip
        for outcome, count in dict(runtime.stats).items():
            outcomes.add_metric([outcome], count)
        yield outcomes
        yield GaugeMetricFamily("lowband_link_devices", "Devices provisioned on the links", value=len(runtime.devices))

    def _devices(self) -> Iterator[Metric]:
        # Duck-typed like _links; LinkRuntime.device_stats() gives the figures the link core counted (one dict per
        # device, docs/metrics.md), so a scrape costs a copy of them and nothing between scrapes.
        runtime = self.services.components.get("links")
        if runtime is None or not hasattr(runtime, "device_stats"):
            return
        labels = ["device"]

        def counter(name: str, text: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(f"lowband_device_{name}", text, labels=labels + list(extra))

        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"lowband_device_{name}", text, labels=labels)

        counters = {
            "frames_in": counter("frames_received", "Link frames received with the device's address, refused or not"),
            "frames_out": counter("frames_sent", "Link frames the gateway sent to the device"),
            "bytes_in": counter("received_bytes", "Link frame bytes received from the device (before serial framing)"),
            "bytes_out": counter("sent_bytes", "Link frame bytes sent to the device (before serial framing)"),
            "handshakes": counter("handshakes", "Handshakes the device started and the gateway answered"),
        }  # fmt: skip
        refused = counter("refused_frames", "Frames from the device's address refused, by kind", ("kind",))
        retransmissions = counter("retransmissions", "Frames repeated: the device's retries (in), the gateway's "
                                  "repeated answers and commands (out)", ("direction",))  # fmt: skip
        gauges = {
            "session": gauge("session", "1 while the device has a confirmed link session"),
            "last_seen_ms": gauge("last_seen_timestamp_seconds",
                                  "Unix time of the device's last authenticated frame (absent: not since start)"),
            "rssi_dbm": gauge("rssi_dbm", "Signal strength of the device's last frame (only radios that report it)"),
            "snr_db": gauge("snr_db", "Signal to noise ratio of the device's last frame (only radios that report it)"),
            "airtime_s_window": gauge("airtime_seconds", "Seconds the device was on the air in the last hour (the "
                                      "duty-cycle window)"),
            "duty_cycle_budget_s": gauge("duty_cycle_budget_seconds",
                                         "Seconds on air the device may use per window (absent: no limit)"),
            "duty_cycle_left": gauge("duty_cycle_left_ratio", "Share of the device's duty-cycle budget left, 0 to 1"),
            "commands_pending": gauge("commands_pending", "Commands waiting for the device's next uplink"),
        }  # fmt: skip
        volts = gauge("battery_volts", "Battery voltage in the device's latest reading")
        charge = gauge("battery_ratio", "Battery charge in the device's latest reading, 0 to 1 (from %)")
        for name, figures in runtime.device_stats().items():
            key = [name]
            for field, family in counters.items():
                family.add_metric(key, figures[field])
            for kind, count in figures["refused"].items():
                refused.add_metric([name, kind], count)
            retransmissions.add_metric([name, "in"], figures["retransmissions_in"])
            retransmissions.add_metric([name, "out"], figures["retransmissions_out"])
            for field, gauge_family in gauges.items():
                value = figures[field]
                if value is None:
                    continue
                gauge_family.add_metric(key, value / 1000 if field == "last_seen_ms" else float(value))
            battery = figures["battery"]
            if battery is not None:
                (volts if battery["unit"] == "V" else charge).add_metric(
                    key, battery["value"] if battery["unit"] == "V" else battery["value"] / 100)
        yield from counters.values()
        yield from (refused, retransmissions, *gauges.values(), volts, charge)

    def _mqtt(self) -> Iterator[Metric]:
        # Duck-typed too: importing the bridge module would import paho-mqtt into gateways without [mqtt].
        bridge = self.services.components.get("mqtt")
        if bridge is None or not hasattr(bridge, "stats"):
            return
        families = {
            prefix: CounterMetricFamily(f"lowband_mqtt_{prefix}_messages", f"MQTT messages {prefix}, by mapping and reason",
                                        labels=["mapping", "reason"])
            for prefix in _MQTT_FAMILIES
        }  # fmt: skip
        messages = CounterMetricFamily("lowband_mqtt_messages",
                                       "MQTT messages by mapping and what happened to them (received, posted, "
                                       "published, redelivered, delayed, requeued_by_broker)",
                                       labels=["mapping", "outcome"])  # fmt: skip
        for mapping, counters in bridge.stats().items():
            for name, count in counters.items():
                prefix, dot, reason = name.partition(".")
                if dot and prefix in families:
                    families[prefix].add_metric([mapping, reason], count)
                else:
                    messages.add_metric([mapping, name], count)
        yield messages
        yield from families.values()

    def _federation(self) -> Iterator[Metric]:
        from lowband.gateway.federation.component import federation_of

        federation = federation_of(self.services)
        if federation is None:
            return
        tables, sender = federation.store, federation.sender
        head = tables.log_head()
        behind = GaugeMetricFamily("lowband_federation_positions_behind",
                                   "Federation log positions a peer has not accepted yet (not all are for it)",
                                   labels=["destination"])  # fmt: skip
        in_flight = GaugeMetricFamily("lowband_federation_transaction_in_flight",
                                      "1 while a transaction to the peer is sent and not yet accepted",
                                      labels=["destination"])  # fmt: skip
        failures = GaugeMetricFamily("lowband_federation_consecutive_failures",
                                     "Failed attempts to reach the peer since its last success",
                                     labels=["destination"])  # fmt: skip
        for name, cursor, _seq, upto in tables.destinations():
            behind.add_metric([name], max(0, head - cursor))
            in_flight.add_metric([name], 0 if upto is None else 1)
            failures.add_metric([name], sender.schedule.failures(name))
        yield from (behind, in_flight, failures)
        yield CounterMetricFamily("lowband_federation_transactions_sent", "Transactions accepted by peers since start",
                                  value=sender.sent_transactions)  # fmt: skip

    def _appservices(self) -> Iterator[Metric]:
        from lowband.gateway.appservices.component import runtime_of

        runtime = runtime_of(self.services)
        if runtime is None:
            return
        head = self.services.store.persisted
        labels = ["appservice"]
        behind = GaugeMetricFamily("lowband_appservice_positions_behind",
                                   "Stream positions the bridge has not been pushed yet (not all are for it)", labels=labels)  # fmt: skip
        in_flight = GaugeMetricFamily("lowband_appservice_transaction_in_flight",
                                      "1 while a transaction to the bridge is sent and not yet accepted", labels=labels)  # fmt: skip
        last_ok = GaugeMetricFamily("lowband_appservice_last_success_timestamp_seconds",
                                    "Unix time the bridge last accepted a transaction (absent: never)", labels=labels)  # fmt: skip
        failures = GaugeMetricFamily("lowband_appservice_consecutive_failures",
                                     "Failed pushes to the bridge since its last success", labels=labels)  # fmt: skip
        txns = CounterMetricFamily("lowband_appservice_transactions_sent", "Transactions the bridge accepted",
                                   labels=labels)  # fmt: skip
        events = CounterMetricFamily("lowband_appservice_events_sent", "Events in the transactions the bridge accepted",
                                     labels=labels)  # fmt: skip
        for appservice_id, row in self.services.store.appservices.queues().items():
            key = [appservice_id]
            behind.add_metric(key, max(0, head - row.cursor))
            in_flight.add_metric(key, 0 if row.txn_upto is None else 1)
            if row.last_ok_ts is not None:
                last_ok.add_metric(key, row.last_ok_ts / 1000)
            failures.add_metric(key, row.failures)
            txns.add_metric(key, row.sent_txns)
            events.add_metric(key, row.sent_events)
        yield from (behind, in_flight, last_ok, failures, txns, events)
