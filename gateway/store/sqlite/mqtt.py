"""The MQTT bridge's tables in SQLite: the :class:`~lowband.gateway.store.interfaces.MqttBridgeStore`.

* ``mqtt_inflight`` — received, not yet acknowledged QoS 1 messages and the
  txn_id their event is (being) sent with (see ``bridges/mqtt/ingest.py``);
* ``mqtt_cursor`` — per outbound mapping, the stream position up to which
  room events were published and acknowledged by the broker; the room
  itself is the durable outbound queue;
* ``mqtt_users`` — users the bridge created (only these are its to use);
* ``mqtt_discovery`` — retained discovery configs, re-published on connect;
* ``mqtt_subscriptions`` — filters subscribed in each broker session.

Written through the store's group-committing writer
(``Database.submit``/``write``), so a row queued before an event commits no
later than that event. The tables are created with the rest of the schema
(``schema.py``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from lowband.gateway.store.interfaces import InflightRow
from lowband.gateway.store.sqlite.database import Database


class SQLiteMqttTables:
    """Reads and queued writes of the bridge's tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        # Shielded: cancelling the caller (the bridge stopping) must not cancel
        # the writer's future, whose later set_result would then fail.
        return await asyncio.shield(self.db.write(fn))

    # ------------------------------------------------------------ inflight

    def inflight(self, broker: str, not_before_ms: int) -> list[InflightRow]:
        """Rows of ``broker`` newer than ``not_before_ms`` (older ones belong to expired sessions)."""
        rows = self.db.query(
            "SELECT txn_id, topic, digest, mid, created_ms FROM mqtt_inflight WHERE broker = ? AND created_ms >= ?",
            (broker, not_before_ms),
        )
        return [InflightRow(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    async def purge_inflight(self, broker: str, before_ms: int) -> None:
        """Drop rows of sessions that expired."""
        await self._write(
            lambda c: c.execute("DELETE FROM mqtt_inflight WHERE broker = ? AND created_ms < ?", (broker, before_ms))
        )

    def add_inflight(self, broker: str, rows: Iterable[InflightRow]) -> Future[Any]:
        """Queue the insert of new rows (not awaited: queue order puts them before their events)."""
        values = [(broker, *r) for r in rows]
        sql = "INSERT OR IGNORE INTO mqtt_inflight VALUES (?, ?, ?, ?, ?, ?)"
        return self.db.submit(lambda c: c.executemany(sql, values))

    def drop_inflight(self, broker: str, txn_ids: Iterable[str]) -> Future[Any]:
        """Queue the delete of acknowledged rows."""
        values = [(broker, t) for t in txn_ids]
        sql = "DELETE FROM mqtt_inflight WHERE broker = ? AND txn_id = ?"
        return self.db.submit(lambda c: c.executemany(sql, values))

    # -------------------------------------------------------------- cursor

    def cursor(self, mapping: str, room_id: str) -> int | None:
        """Stream position published up to, or None before the first start."""
        row = self.db.query_one("SELECT stream FROM mqtt_cursor WHERE mapping = ? AND room_id = ?", (mapping, room_id))
        return int(row[0]) if row else None

    async def set_cursor(self, mapping: str, room_id: str, stream: int) -> None:
        """Record that everything up to ``stream`` was published."""
        await self._write(
            lambda c: c.execute(
                "INSERT INTO mqtt_cursor VALUES (?, ?, ?) ON CONFLICT (mapping, room_id) DO UPDATE SET stream = excluded.stream",
                (mapping, room_id, stream),
            )
        )

    # --------------------------------------------------------------- users

    def bridge_users(self) -> set[str]:
        """Users the bridge created."""
        return {r[0] for r in self.db.query("SELECT user_id FROM mqtt_users")}

    async def add_bridge_user(self, user_id: str, now_ms: int) -> None:
        """Remember a user the bridge created."""
        await self._write(lambda c: c.execute("INSERT OR IGNORE INTO mqtt_users VALUES (?, ?)", (user_id, now_ms)))

    # ----------------------------------------------------------- discovery

    def discovery(self, broker: str) -> list[tuple[str, bytes]]:
        """Every stored discovery config of ``broker``."""
        rows = self.db.query("SELECT topic, payload FROM mqtt_discovery WHERE broker = ?", (broker,))
        return [(r[0], bytes(r[1])) for r in rows]

    async def add_discovery(self, broker: str, topic: str, payload: bytes) -> None:
        """Store (or replace) one discovery config."""
        await self._write(
            lambda c: c.execute(
                "INSERT INTO mqtt_discovery VALUES (?, ?, ?) ON CONFLICT (broker, topic) DO UPDATE SET payload = excluded.payload",
                (broker, topic, payload),
            )
        )

    # ------------------------------------------------------- subscriptions

    def subscriptions(self, broker: str) -> set[str]:
        """Filters subscribed in ``broker``'s session."""
        return {r[0] for r in self.db.query("SELECT filter FROM mqtt_subscriptions WHERE broker = ?", (broker,))}

    async def set_subscriptions(self, broker: str, filters: set[str]) -> None:
        """Replace the recorded filters of ``broker``."""

        def fn(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM mqtt_subscriptions WHERE broker = ?", (broker,))
            c.executemany("INSERT INTO mqtt_subscriptions VALUES (?, ?)", [(broker, f) for f in sorted(filters)])

        await self._write(fn)
