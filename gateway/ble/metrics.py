"""Prometheus families of the BLE component (``lowband_ble_*``, docs/metrics.md), read at scrape time.

/metrics reaches the running component through ``Services.components["ble"]``
and calls its ``metrics()``; this module turns its ``stats()`` into families,
so the HTTP layer needs to know nothing of BLE.
"""

from __future__ import annotations

from typing import Any


def metric_families(stats: dict[str, Any], now_s: float) -> list[Any]:
    """Prometheus metric families of one :meth:`BleComponent.stats` (docs/metrics.md, ``lowband_ble_*``).

    Labels are bounded: sensors are the configured ones, kinds the decoder's
    and tracker's refusal names. ``now_s`` is the Unix time of the scrape.
    """
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def counter(name: str, text: str, value: float) -> Any:
        family = CounterMetricFamily(f"lowband_ble_{name}", text)
        family.add_metric([], value)
        return family

    refused = CounterMetricFamily("lowband_ble_refused_advertisements", "advertisements of configured sensors "
                                  "that gave no reading, by sensor and reason", labels=["sensor", "kind"])  # fmt: skip
    readings = CounterMetricFamily("lowband_ble_readings", "new readings, by sensor", labels=["sensor"])
    present = GaugeMetricFamily("lowband_ble_sensor_present", "1 while the sensor is heard within its interval "
                                "times [ble] silent_factor", labels=["sensor"])  # fmt: skip
    rssi = GaugeMetricFamily("lowband_ble_sensor_rssi_dbm", "signal of the sensor's last advertisement",
                             labels=["sensor"])  # fmt: skip
    seen = GaugeMetricFamily("lowband_ble_sensor_last_seen_timestamp_seconds", "Unix time the sensor was last "
                             "heard (absent until it is)", labels=["sensor"])  # fmt: skip
    for name, entry in (stats.get("sensors") or {}).items():
        readings.add_metric([name], entry.get("readings", 0))
        present.add_metric([name], 1 if entry.get("present") else 0)
        for kind, count in (entry.get("refused") or {}).items():
            refused.add_metric([name, kind], count)
        if entry.get("rssi") is not None:
            rssi.add_metric([name], entry["rssi"])
        if entry.get("last_seen_s_ago") is not None:
            seen.add_metric([name], round(now_s - entry["last_seen_s_ago"], 1))
    return [
        counter("advertisements", "advertisements handled (configured sensors and unknown devices)",
                stats.get("adverts", 0)),
        counter("duplicate_advertisements", "repeats of a packet already taken", stats.get("duplicates", 0)),
        counter("posted_events", "reading events committed to rooms", stats.get("posted", 0)),
        counter("failed_events", "reading events not stored after every retry", stats.get("post_failed", 0)),
        counter("dropped_advertisements", "advertisements dropped because the queue was full",
                stats.get("queue_full", 0)),
        counter("unknown_evicted", "unknown addresses forgotten to stay within [ble] unknown_cap",
                stats.get("unknown_evicted", 0)),
        GaugeMetricFamily("lowband_ble_unknown_devices", "unknown addresses remembered (at most [ble] unknown_cap)",
                          value=stats.get("unknown_tracked", 0)),
        readings, refused, present, rssi, seen,
    ]  # fmt: skip
