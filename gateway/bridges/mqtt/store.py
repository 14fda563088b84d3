"""The bridge's view of its tables: :class:`PendingRow` in and out of the store's in-flight rows.

The tables themselves and what each holds are the store's
(``store/sqlite/mqtt.py``, behind :class:`MqttBridgeStore`); this module only
translates the bridge's in-memory bookkeeping rows, which carry per-
connection fields the store never sees (``gen``, ``acked_gen``, ``ack_no``).
Everything else passes straight through.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from lowband.gateway.bridges.mqtt.ingest import PendingRow
from lowband.gateway.store.interfaces import InflightRow, MqttBridgeStore


class BridgeTables:
    """The MQTT bridge's tables, with in-flight rows as :class:`PendingRow`."""

    def __init__(self, store: MqttBridgeStore) -> None:
        self.store = store
        # The rest needs no translation: the store's own methods, bound once (their contracts are in
        # MqttBridgeStore), so callers keep one object for all of the bridge's tables.
        self.purge_inflight = store.purge_inflight
        self.drop_inflight = store.drop_inflight
        self.cursor = store.cursor
        self.set_cursor = store.set_cursor
        self.bridge_users = store.bridge_users
        self.add_bridge_user = store.add_bridge_user
        self.discovery = store.discovery
        self.add_discovery = store.add_discovery
        self.subscriptions = store.subscriptions
        self.set_subscriptions = store.set_subscriptions

    def inflight(self, broker: str, not_before_ms: int) -> list[PendingRow]:
        """Rows of ``broker`` newer than ``not_before_ms``, as loaded from disk (``gen`` 0)."""
        return [PendingRow(r.txn_id, r.topic, r.digest, r.mid, 0, r.created_ms)
                for r in self.store.inflight(broker, not_before_ms)]  # fmt: skip

    def add_inflight(self, broker: str, rows: Iterable[PendingRow]) -> Future[Any]:
        """Queue the insert of new rows (not awaited: queue order puts them before their events)."""
        return self.store.add_inflight(broker, [InflightRow(r.txn_id, r.topic, r.digest, r.mid, r.created_ms)
                                                for r in rows])  # fmt: skip
