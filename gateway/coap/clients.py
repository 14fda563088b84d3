"""Provisioned CoAP clients of the Noise session layer (docs/protocol/coap-noise.md): keys, addresses, key files.

``lowband coap-client add|list|remove`` writes here, whether the gateway
runs or not; a running gateway's secure listener re-reads the list when the
file changes (:func:`version`). Two files in the gateway's data dir:

* ``coap_clients.json`` — the list the gateway reads: each client's name,
  Matrix user, address (1-254, a namespace of its own, apart from the device
  links' addresses) and static public key. No secret in it.
* ``coap-clients/NAME.json`` — the client's key file (mode 0600), written
  once by ``add`` and handed to the person who runs the client: its private
  key, its address, the gateway's link public key. The gateway never reads
  it back and does not need it.

The gateway's static key is its link key (``link.key``, shared with the
device links: devices.registry.load_or_create_link_key).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowband.gateway.coap.secure_core import ClientEntry
from lowband.gateway.devices.keys import generate_keypair, public_from_private
from lowband.gateway.devices.registry import load_or_create_link_key, write_file_atomically
from lowband.gateway.matrix.identifiers import is_user_id, server_name_of

__all__ = [
    "CLIENTS_FILE",
    "KEY_DIR",
    "ClientRecord",
    "ClientsError",
    "add_client",
    "entries",
    "key_file",
    "load_clients",
    "remove_client",
    "version",
]

CLIENTS_FILE = "coap_clients.json"
KEY_DIR = "coap-clients"
_FORMAT = "lowband-coap-clients"
_KEY_FORMAT = "lowband-coap-client"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_ADDRESSES = range(1, 255)


class ClientsError(ValueError):
    """A client command cannot be done (bad name or user, unknown client, no free address, a broken file)."""


@dataclass(frozen=True)
class ClientRecord:
    """One provisioned CoAP client, as the gateway knows it."""

    name: str
    user_id: str
    address: int
    static_public: bytes
    added_ts: int  # ms since the epoch

    def entry(self) -> ClientEntry:
        """The secure listener's view of this client."""
        return ClientEntry(self.address, self.name, self.static_public, self.user_id)


def _path(data_dir: Path) -> Path:
    return Path(data_dir) / CLIENTS_FILE


def load_clients(data_dir: Path) -> list[ClientRecord]:
    """The provisioned clients, by name; none if the file does not exist.

    Raises :class:`ClientsError` if the file is not a client list (the
    gateway then keeps the list it had).
    """
    path = _path(data_dir)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ClientsError(f"{path} cannot be read: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("clients"), list):
        raise ClientsError(f"{path} is not a {_FORMAT} file")
    records = []
    for item in doc["clients"]:
        try:
            record = ClientRecord(str(item["name"]), str(item["user_id"]), int(item["address"]),
                                  bytes.fromhex(item["public"]), int(item["added_ts"]))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            raise ClientsError(f"{path} holds a malformed client entry") from None
        if record.address not in _ADDRESSES or len(record.static_public) != 32:
            raise ClientsError(f"{path}: client {record.name!r} has a bad address or key")
        records.append(record)
    return sorted(records, key=lambda r: r.name)


def entries(data_dir: Path) -> list[ClientEntry]:
    """The clients as the secure listener takes them (:meth:`SecureListener.set_clients`); ClientsError as above."""
    return [record.entry() for record in load_clients(data_dir)]


def version(data_dir: Path) -> tuple[int, int] | None:
    """Changes whenever the client list is written (cheap to poll); None while there is no list."""
    try:
        stat = _path(data_dir).stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


def add_client(data_dir: Path, name: str, user_id: str, *, server_name: str | None = None,
               rekey: bool = False) -> tuple[ClientRecord, bytes]:  # fmt: skip
    """Provision (or with ``rekey`` re-key, keeping its address) a client; returns it and its private key.

    ``server_name``: when given, ``user_id`` must be a user of this server.
    Raises :class:`ClientsError` for a bad name or user, a name in use
    (without ``rekey``), an unknown name (with ``rekey``), or no free
    address.
    """
    if not _NAME.fullmatch(name):
        raise ClientsError("client names are 1-32 of a-z, 0-9, _ and -, starting with a letter or digit")
    if not is_user_id(user_id):
        raise ClientsError(f"{user_id!r} is not a Matrix user ID (@name:server)")
    if server_name is not None and server_name_of(user_id) != server_name:
        raise ClientsError(f"{user_id} is not a user of this gateway ({server_name})")
    private, public = generate_keypair()
    with _locked(data_dir):
        records = {r.name: r for r in load_clients(data_dir)}
        old = records.get(name)
        if old is not None and not rekey:
            raise ClientsError(f"client {name!r} exists; use --rekey to give it a new key")
        if old is None and rekey:
            raise ClientsError(f"no client named {name!r}")
        if old is not None:
            address = old.address
        else:
            used = {r.address for r in records.values()}
            address = next((a for a in _ADDRESSES if a not in used), 0)
            if not address:
                raise ClientsError("all 254 client addresses are in use")
        record = ClientRecord(name, user_id, address, public, int(time.time() * 1000))
        records[name] = record
        _save(data_dir, list(records.values()))
    return record, private


def remove_client(data_dir: Path, name: str) -> ClientRecord:
    """Remove a client: the gateway refuses its frames from its next look at the list on.

    Its key file (if still in the data dir) is deleted too. Raises
    :class:`ClientsError` for an unknown name.
    """
    with _locked(data_dir):
        records = {r.name: r for r in load_clients(data_dir)}
        record = records.pop(name, None)
        if record is None:
            raise ClientsError(f"no client named {name!r}")
        _save(data_dir, list(records.values()))
    (Path(data_dir) / KEY_DIR / f"{name}.json").unlink(missing_ok=True)
    return record


def key_file(record: ClientRecord, private: bytes, data_dir: Path, endpoint: str | None = None) -> dict[str, Any]:
    """The client's key file: its keys and address, the gateway's link public key, where to reach it.

    Creates the gateway's link key if the data dir has none yet.
    """
    gateway_private = load_or_create_link_key(Path(data_dir) / "link.key")
    return {
        "format": _KEY_FORMAT,
        "version": 1,
        "name": record.name,
        "user_id": record.user_id,
        "address": record.address,
        "client_private": private.hex(),
        "client_public": public_from_private(private).hex(),
        "gateway_public": public_from_private(gateway_private).hex(),
        "endpoint": endpoint,
    }


def read_key_file(path: Path) -> dict[str, Any]:
    """A client key file written by :func:`write_key_file`, checked; ClientsError if it is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ClientsError(f"{path} cannot be read: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != _KEY_FORMAT:
        raise ClientsError(f"{path} is not a {_KEY_FORMAT} file")
    try:
        ok = len(bytes.fromhex(doc["client_private"])) == 32 and len(bytes.fromhex(doc["gateway_public"])) == 32
        ok = ok and int(doc["address"]) in _ADDRESSES
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ClientsError(f"{path} has a malformed key or address")
    return doc


def write_key_file(path: Path, doc: dict[str, Any]) -> None:
    """Write a client key file (it holds a private key: mode 0600)."""
    write_file_atomically(Path(path), json.dumps(doc, indent=2) + "\n", 0o600)


def _save(data_dir: Path, records: list[ClientRecord]) -> None:
    doc = {
        "format": _FORMAT,
        "version": 1,
        "clients": [
            {
                "name": r.name,
                "user_id": r.user_id,
                "address": r.address,
                "public": r.static_public.hex(),
                "added_ts": r.added_ts,
            }
            for r in sorted(records, key=lambda r: r.address)
        ],
    }
    write_file_atomically(_path(data_dir), json.dumps(doc, indent=2) + "\n", 0o644)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    # Two `lowband coap-client add` at once must not hand out one address twice.
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(data_dir) / ".coap_clients.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
