"""Provisioned devices and their link sessions, kept in the gateway's store.

The command line (``lowband device add|list|show|revoke``) writes here,
whether the gateway runs or not; a running gateway picks changes up within
seconds (:mod:`lowband.gateway.link.runtime` polls :meth:`Registry.version`).
Rooms are only ever changed by the gateway process itself. The tables are
the store's (:class:`~lowband.gateway.store.interfaces.LinkDeviceStore`);
names, keys and device config files are this module's.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from lowband.gateway.devices.keys import generate_keypair, public_from_private
from lowband.gateway.homeserver.accounts import Reservation
from lowband.gateway.store.interfaces import DeviceNameTaken, DeviceRecord, LinkDeviceStore, NoFreeAddress

#: Every device speaks as @dev.NAME: registration refuses the prefix, the link never adopts an account it did not make.
USER_PREFIX = "dev."
RESERVATION = Reservation("device links", prefix=USER_PREFIX)

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
DEFAULT_CHANNELS = [
    {"n": "temperature", "u": "Cel", "scale": -1},
    {"n": "humidity", "u": "%RH", "scale": 0},
    {"n": "battery", "u": "V", "scale": -2},
]


class RegistryError(ValueError):
    """A device command cannot be done (bad name, unknown device, no free address)."""


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
    write_file_atomically(path, private.hex() + "\n")
    return private


def write_file_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` (created with ``mode``; default: owner only) atomically.

    A reader sees the old or the new file, never half of one; the file is
    synced before the rename. Raises OSError; no temporary file is left behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Registry:
    """Devices and sessions in the gateway's store."""

    def __init__(self, store: LinkDeviceStore) -> None:
        self.store = store

    # -------------------------------------------------------------- reading

    def devices(self, *, include_revoked: bool = False) -> list[DeviceRecord]:
        """All devices, by name."""
        records = self.store.devices()
        return records if include_revoked else [r for r in records if not r.revoked]

    def device(self, name: str) -> DeviceRecord:
        """One device by name; RegistryError if unknown."""
        for record in self.devices(include_revoked=True):
            if record.name == name:
                return record
        raise RegistryError(f"no device named {name!r}")

    def version(self) -> tuple[int, int, int]:
        """Changes whenever a device is added, re-keyed or revoked (cheap to poll)."""
        return self.store.version()

    def session_state(self, name: str, key_ts: int) -> dict[str, Any] | None:
        """The stored session of a device's current key, or None."""
        return self.store.session_state(name, key_ts)

    def announced(self, name: str, room_id: str, key_ts: int) -> bool:
        """Whether the room was told about this device key already."""
        return self.store.announced(name, room_id, key_ts)

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
        user_id = f"@{USER_PREFIX}{name}:{server_name}"
        try:
            self.store.provision(name, user_id, public, rooms, context, link, int(time.time() * 1000), rekey=rekey)
        except DeviceNameTaken:
            raise RegistryError(f"device {name!r} exists; use --rekey to give it a new key") from None
        except NoFreeAddress:
            raise RegistryError("all 254 device addresses are in use") from None
        return self.device(name), private

    def revoke(self, name: str) -> DeviceRecord:
        """Revoke a device: its frames are refused from now on."""
        self.device(name)
        self.store.revoke(name)
        return self.device(name)

    async def save_session(self, name: str, key_ts: int, state: dict[str, Any] | None) -> None:
        """Store (or with None forget) a device's session state; durable when this returns."""
        await self.store.save_session(name, key_ts, state)

    async def mark_announced(self, name: str, room_id: str, key_ts: int) -> None:
        """Remember that the room was told about this device key."""
        await self.store.mark_announced(name, room_id, key_ts)


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
    write_file_atomically(path, json.dumps(config, indent=2) + "\n")


def fingerprint(public: bytes) -> str:
    """A short readable fingerprint of a device key for room notices."""
    import hashlib

    digest = hashlib.sha256(public).hexdigest()[:16].upper()
    return " ".join(digest[i : i + 4] for i in range(0, 16, 4))
