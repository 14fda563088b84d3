"""Provisioned devices and their link sessions, in the gateway's database.

The command line (``lowband device add|list|show|revoke``) writes here,
whether the gateway runs or not; a running gateway picks changes up within
seconds (:mod:`lowband.gateway.link.runtime` polls :meth:`Registry.version`).
Rooms are only ever changed by the gateway process itself.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowband.gateway.devices.keys import generate_keypair, public_from_private
from lowband.gateway.homeserver.accounts import Reservation
from lowband.gateway.store.sqlite.database import Database

#: Every device speaks as @dev.NAME: registration refuses the prefix, the link never adopts an account it did not make.
USER_PREFIX = "dev."
RESERVATION = Reservation("device links", prefix=USER_PREFIX)

LINK_SCHEMA = """
CREATE TABLE IF NOT EXISTS link_devices (
    name TEXT PRIMARY KEY,
    address INTEGER NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    static_public TEXT NOT NULL,
    rooms TEXT NOT NULL,            -- JSON list of room IDs
    context TEXT NOT NULL,          -- JSON context table (compact profile)
    link TEXT NOT NULL,             -- e.g. serial:/dev/ttyUSB0?bps=100
    created_ts INTEGER NOT NULL,
    key_ts INTEGER NOT NULL,        -- when the current key was provisioned
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS link_sessions (
    name TEXT PRIMARY KEY,
    key_ts INTEGER NOT NULL,        -- the device key this session belongs to
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS link_announcements (
    name TEXT NOT NULL,
    room_id TEXT NOT NULL,
    key_ts INTEGER NOT NULL,
    PRIMARY KEY (name, room_id, key_ts)
);
"""

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
DEFAULT_CHANNELS = [
    {"n": "temperature", "u": "Cel", "scale": -1},
    {"n": "humidity", "u": "%RH", "scale": 0},
    {"n": "battery", "u": "V", "scale": -2},
]


class RegistryError(ValueError):
    """A device command cannot be done (bad name, unknown device, no free address)."""


@dataclass(frozen=True)
class DeviceRecord:
    """A provisioned device."""

    name: str
    address: int
    user_id: str
    static_public: bytes
    rooms: list[str]
    context: dict[str, Any]
    link: str
    created_ts: int
    key_ts: int
    revoked: bool


def parse_channel(text: str) -> dict[str, Any]:
    """``name:unit:scale`` → a context channel; RegistryError if malformed."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise RegistryError(f"channel {text!r} must be NAME:UNIT:SCALE, e.g. temperature:Cel:-1")
    try:
        scale = int(parts[2])
    except ValueError:
        raise RegistryError(f"channel {text!r}: SCALE must be an integer") from None
    return {"n": parts[0], "u": parts[1], "scale": scale}


def load_or_create_link_key(path: Path) -> bytes:
    """The gateway's X25519 link key (private bytes), created 0600 on first use."""
    if path.exists():
        raw = path.read_text().strip()
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            raise RegistryError(f"{path} is not a hex X25519 key") from None
        if len(key) != 32:
            raise RegistryError(f"{path} does not hold a 32-byte key")
        return key
    private, _ = generate_keypair()
    _write_private(path, private.hex() + "\n")
    return private


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Registry:
    """Devices and sessions in a :class:`Database` (the gateway's SQLite file)."""

    def __init__(self, db: Database) -> None:
        self.db = db  # its schema is part of the gateway's (store/schema.py)

    # -------------------------------------------------------------- reading

    def devices(self, *, include_revoked: bool = False) -> list[DeviceRecord]:
        """All devices, by name."""
        rows = self.db.query(
            "SELECT name, address, user_id, static_public, rooms, context, link, created_ts, key_ts, revoked"
            " FROM link_devices ORDER BY name"
        )
        records = [_record(r) for r in rows]
        return records if include_revoked else [r for r in records if not r.revoked]

    def device(self, name: str) -> DeviceRecord:
        """One device by name; RegistryError if unknown."""
        for record in self.devices(include_revoked=True):
            if record.name == name:
                return record
        raise RegistryError(f"no device named {name!r}")

    def version(self) -> tuple[int, int, int]:
        """Changes whenever a device is added, re-keyed or revoked (cheap to poll)."""
        row = self.db.query_one("SELECT COUNT(*), COALESCE(MAX(key_ts), 0), COALESCE(SUM(revoked), 0) FROM link_devices")
        return (row[0], row[1], row[2]) if row else (0, 0, 0)

    def session_state(self, name: str, key_ts: int) -> dict[str, Any] | None:
        """The stored session of a device's current key, or None."""
        row = self.db.query_one("SELECT state FROM link_sessions WHERE name = ? AND key_ts = ?", (name, key_ts))
        return json.loads(row[0]) if row else None

    def announced(self, name: str, room_id: str, key_ts: int) -> bool:
        """Whether the room was told about this device key already."""
        row = self.db.query_one(
            "SELECT 1 FROM link_announcements WHERE name = ? AND room_id = ? AND key_ts = ?", (name, room_id, key_ts)
        )
        return row is not None

    # -------------------------------------------------------------- writing

    def add(self, name: str, *, server_name: str, rooms: list[str], context: dict[str, Any], link: str,
            rekey: bool = False) -> tuple[DeviceRecord, bytes]:  # fmt: skip
        """Provision (or with ``rekey`` re-key) a device; returns it and its private key.

        RegistryError for a bad name, a name in use (without ``rekey``), or
        no free address (1–254).
        """
        if not _NAME.fullmatch(name):
            raise RegistryError("device names are 1-32 of a-z, 0-9, _ and -, starting with a letter or digit")
        private, public = generate_keypair()
        now = int(time.time() * 1000)
        user_id = f"@{USER_PREFIX}{name}:{server_name}"

        def fn(c: sqlite3.Connection) -> int:
            row = c.execute("SELECT address, revoked FROM link_devices WHERE name = ?", (name,)).fetchone()
            if row is not None and not rekey:
                raise RegistryError(f"device {name!r} exists; use --rekey to give it a new key")
            if row is not None:
                c.execute(
                    "UPDATE link_devices SET static_public = ?, key_ts = MAX(key_ts + 1, ?), revoked = 0, rooms = ?,"
                    " context = ?, link = ? WHERE name = ?",
                    (public.hex(), now, json.dumps(rooms), json.dumps(context), link, name),
                )
                return int(row[0])
            used = {r[0] for r in c.execute("SELECT address FROM link_devices")}
            free = next((a for a in range(1, 255) if a not in used), None)
            if free is None:
                raise RegistryError("all 254 device addresses are in use")
            c.execute(
                "INSERT INTO link_devices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (name, free, user_id, public.hex(), json.dumps(rooms), json.dumps(context), link, now, now),
            )
            return free

        self.db.write_sync(fn)
        return self.device(name), private

    def revoke(self, name: str) -> DeviceRecord:
        """Revoke a device: its frames are refused from now on."""
        self.device(name)
        self.db.write_sync(lambda c: c.execute("UPDATE link_devices SET revoked = 1 WHERE name = ?", (name,)))
        return self.device(name)

    async def save_session(self, name: str, key_ts: int, state: dict[str, Any] | None) -> None:
        """Store (or with None forget) a device's session state; durable when this returns."""
        if state is None:
            await self.db.write(lambda c: c.execute("DELETE FROM link_sessions WHERE name = ?", (name,)))
            return
        text = json.dumps(state)
        await self.db.write(
            lambda c: c.execute(
                "INSERT INTO link_sessions VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET key_ts = excluded.key_ts,"
                " state = excluded.state",
                (name, key_ts, text),
            )
        )

    async def mark_announced(self, name: str, room_id: str, key_ts: int) -> None:
        """Remember that the room was told about this device key."""
        await self.db.write(
            lambda c: c.execute("INSERT OR IGNORE INTO link_announcements VALUES (?, ?, ?)", (name, room_id, key_ts))
        )


def _record(row: tuple[Any, ...]) -> DeviceRecord:
    return DeviceRecord(
        name=row[0], address=row[1], user_id=row[2], static_public=bytes.fromhex(row[3]), rooms=json.loads(row[4]),
        context=json.loads(row[5]), link=row[6], created_ts=row[7], key_ts=row[8], revoked=bool(row[9]),
    )  # fmt: skip


def device_config(record: DeviceRecord, private: bytes, gateway_private: bytes) -> dict[str, Any]:
    """The file a device is flashed with: its keys, the gateway's public key, address, link and context."""
    return {
        "format": "lowband-device",
        "version": 1,
        "name": record.name,
        "user_id": record.user_id,
        "address": record.address,
        "device_private": private.hex(),
        "device_public": public_from_private(private).hex(),
        "gateway_public": public_from_private(gateway_private).hex(),
        "link": record.link,
        "context": record.context,
    }


def write_device_config(path: Path, config: dict[str, Any]) -> None:
    """Write a device config file (it holds a private key: mode 0600)."""
    _write_private(path, json.dumps(config, indent=2) + "\n")


def fingerprint(public: bytes) -> str:
    """A short readable fingerprint of a device key for room notices."""
    import hashlib

    digest = hashlib.sha256(public).hexdigest()[:16].upper()
    return " ".join(digest[i : i + 4] for i in range(0, 16, 4))
