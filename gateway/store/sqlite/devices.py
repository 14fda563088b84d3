"""The device registry's tables in SQLite (``link_devices``, ``link_sessions``, ``link_announcements``).

The :class:`~lowband.gateway.store.interfaces.LinkDeviceStore` of
:class:`~lowband.gateway.store.sqlite.store.SQLiteStore`. The command line
provisions and revokes with the blocking methods, whether a gateway runs
on the same file or not (SQLite's busy timeout lets the two writers take
turns); key handling and names are the registry's business
(``gateway/devices/registry.py``), not this module's.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from lowband.gateway.store.interfaces import DeviceNameTaken, DeviceRecord, NoFreeAddress
from lowband.gateway.store.sqlite.database import Database

_ADDRESSES = range(1, 255)  # 0 and 255 are reserved (docs/protocol/link.md)


class SQLiteLinkDevices:
    """Provisioned link devices, their sessions and announcements."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -------------------------------------------------------------- reading

    def devices(self) -> list[DeviceRecord]:
        """Every device, revoked ones included, by name."""
        rows = self.db.query(
            "SELECT name, address, user_id, static_public, rooms, context, link, created_ts, key_ts, revoked"
            " FROM link_devices ORDER BY name"
        )
        return [_record(r) for r in rows]

    def version(self) -> tuple[int, int, int]:
        """(count, newest key_ts, revoked count): changes whenever a device is added, re-keyed or revoked."""
        row = self.db.query_one("SELECT COUNT(*), COALESCE(MAX(key_ts), 0), COALESCE(SUM(revoked), 0) FROM link_devices")
        return (row[0], row[1], row[2]) if row else (0, 0, 0)

    def session_state(self, name: str, key_ts: int) -> dict[str, Any] | None:
        """The stored link session of the device's key ``key_ts``, or None."""
        row = self.db.query_one("SELECT state FROM link_sessions WHERE name = ? AND key_ts = ?", (name, key_ts))
        return json.loads(row[0]) if row else None

    def announced(self, name: str, room_id: str, key_ts: int) -> bool:
        """Whether the room was told about this device key."""
        row = self.db.query_one(
            "SELECT 1 FROM link_announcements WHERE name = ? AND room_id = ? AND key_ts = ?", (name, room_id, key_ts)
        )
        return row is not None

    # -------------------------------------------------------------- writing

    def provision(self, name: str, user_id: str, static_public: bytes, rooms: list[str], context: dict[str, Any],
                  link: str, now_ms: int, *, rekey: bool) -> int:  # fmt: skip
        """Add a device or re-key it (see LinkDeviceStore.provision); blocking. Returns its address."""
        public, rooms_text, context_text = static_public.hex(), json.dumps(rooms), json.dumps(context)

        def fn(c: sqlite3.Connection) -> int:
            row = c.execute("SELECT address, revoked FROM link_devices WHERE name = ?", (name,)).fetchone()
            if row is not None and not rekey:
                raise DeviceNameTaken(name)
            if row is not None:
                c.execute(
                    "UPDATE link_devices SET static_public = ?, key_ts = MAX(key_ts + 1, ?), revoked = 0, rooms = ?,"
                    " context = ?, link = ? WHERE name = ?",
                    (public, now_ms, rooms_text, context_text, link, name),
                )
                return int(row[0])
            used = {r[0] for r in c.execute("SELECT address FROM link_devices")}
            free = next((a for a in _ADDRESSES if a not in used), None)
            if free is None:
                raise NoFreeAddress(name)
            c.execute(
                "INSERT INTO link_devices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (name, free, user_id, public, rooms_text, context_text, link, now_ms, now_ms),
            )
            return free

        return self.db.write_sync(fn)

    def revoke(self, name: str) -> None:
        """Mark a device revoked; blocking."""
        self.db.write_sync(lambda c: c.execute("UPDATE link_devices SET revoked = 1 WHERE name = ?", (name,)))

    async def save_session(self, name: str, key_ts: int, state: dict[str, Any] | None) -> None:
        """Store (or with None forget) a device's session state; committed on return."""
        if state is None:
            await self.db.write(lambda c: c.execute("DELETE FROM link_sessions WHERE name = ?", (name,)))
            return
        text = json.dumps(state)
        await self.db.write(
            lambda c: c.execute(
                "INSERT INTO link_sessions VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET key_ts = excluded.key_ts,"
                " state = excluded.state",
                (name, key_ts, text),
            )
        )

    async def mark_announced(self, name: str, room_id: str, key_ts: int) -> None:
        """Remember that the room was told about this device key; committed on return."""
        await self.db.write(
            lambda c: c.execute("INSERT OR IGNORE INTO link_announcements VALUES (?, ?, ?)", (name, room_id, key_ts))
        )


def _record(row: tuple[Any, ...]) -> DeviceRecord:
    return DeviceRecord(
        name=row[0], address=row[1], user_id=row[2], static_public=bytes.fromhex(row[3]), rooms=json.loads(row[4]),
        context=json.loads(row[5]), link=row[6], created_ts=row[7], key_ts=row[8], revoked=bool(row[9]),
    )  # fmt: skip
