"""``lowband device add|list|show|revoke``: provision devices for the link."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from lowband.gateway.cli import UsageError


def register(subparsers: Any) -> None:
    """Add ``device`` and its actions."""
    device = subparsers.add_parser(
        "device",
        help="provision and manage devices on serial and LoRa links",
        description=(
            "Provision devices: each gets an X25519 key pair, a link address, a Matrix user "
            "(@dev.NAME:SERVER) that joins its rooms when the gateway next looks (within seconds if "
            "it runs), and a configuration file to flash onto the board."
        ),
    )
    sub = device.add_subparsers(dest="device_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="provision a device", description="Provision a device and write its config file.")
    add.add_argument("name", help="device name: 1-32 of a-z, 0-9, _ and -")
    add.add_argument("--room", action="append", required=True, metavar="ROOM",
                     help="room ID or alias (#name:server) the device posts to; repeat for more rooms, the first is its default")  # fmt: skip
    add.add_argument("--link", default="serial:/dev/ttyUSB0",
                     help="serial:PORT[?bps=N] or lora:PORT[?region=EU868&dr=0] (default serial:/dev/ttyUSB0)")  # fmt: skip
    add.add_argument("--channel", action="append", metavar="NAME:UNIT:SCALE",
                     help="telemetry channel, e.g. temperature:Cel:-1 (repeat; default temperature, humidity, battery)")  # fmt: skip
    add.add_argument("--data-dir", required=True, metavar="DIR", help="the gateway's data dir")
    add.add_argument("--out", metavar="FILE", help="where to write the device config (default DIR/devices/NAME.json)")
    add.add_argument("--rekey", action="store_true", help="give an existing device a new key (the rooms are told)")
    add.set_defaults(handler=run_add)

    listing = sub.add_parser("list", help="list devices", description="List provisioned devices.")
    listing.add_argument("--data-dir", required=True, metavar="DIR")
    listing.add_argument("--all", action="store_true", help="include revoked devices")
    listing.set_defaults(handler=run_list)

    show = sub.add_parser("show", help="show one device", description="Show a device (never its private key).")
    show.add_argument("name")
    show.add_argument("--data-dir", required=True, metavar="DIR")
    show.set_defaults(handler=run_show)

    revoke = sub.add_parser("revoke", help="revoke a device", description="Refuse a device's frames from now on.")
    revoke.add_argument("name")
    revoke.add_argument("--data-dir", required=True, metavar="DIR")
    revoke.set_defaults(handler=run_revoke)


def _open(data_dir: str) -> tuple[Any, Any, str]:
    from lowband.gateway.link.registry import Registry
    from lowband.gateway.store.database import Database
    from lowband.gateway.store.schema import SCHEMA

    path = Path(data_dir)
    marker = path / "server_name"
    if not marker.exists():
        raise UsageError(f"{data_dir} is not a gateway data dir (start `lowband serve --data-dir {data_dir}` once)")
    db = Database(path / "lowband.db", SCHEMA)
    return db, Registry(db), marker.read_text().strip()


def _resolve_room(db: Any, room: str) -> str:
    if room.startswith("#"):
        row = db.query_one("SELECT room_id FROM room_aliases WHERE alias = ?", (room,))
        if row is None:
            raise UsageError(f"no room has the alias {room}")
        return str(row[0])
    if not room.startswith("!") or ":" not in room:
        raise UsageError(f"{room!r} is neither a room ID (!id:server) nor an alias (#name:server)")
    if db.query_one("SELECT 1 FROM rooms WHERE room_id = ?", (room,)) is None:
        raise UsageError(f"this gateway has no room {room}")
    return room


def _check_link(link: str) -> str:
    kind, _, rest = link.partition(":")
    if kind not in ("serial", "lora") or not rest:
        raise UsageError(f"--link {link!r} must be serial:PORT[?bps=N] or lora:PORT[?...]")
    return link


def run_add(args: argparse.Namespace) -> int:
    """Handler of ``device add``."""
    from lowband.codecs.context import ContextError, parse_context
    from lowband.gateway.link.registry import (
        DEFAULT_CHANNELS, RegistryError, device_config, load_or_create_link_key, parse_channel, write_device_config,
    )  # fmt: skip

    db, registry, server_name = _open(args.data_dir)
    try:
        rooms = [_resolve_room(db, room) for room in args.room]
        link = _check_link(args.link)
        channels = [parse_channel(c) for c in args.channel] if args.channel else DEFAULT_CHANNELS
        user_id = f"@dev.{args.name}:{server_name}"
        previous = None
        try:
            previous = registry.device(args.name)
        except RegistryError:
            pass
        version = 1 if previous is None else previous.context.get("version", 0) % 15 + 1
        context_doc = {
            "format": "lowband-context", "version": version, "rooms": rooms, "senders": [user_id],
            "event_types": ["m.room.message"], "keys": ["content", "msgtype", "body"], "channels": channels,
        }  # fmt: skip
        parse_context(context_doc)  # refuse a bad channel list before anything is written
        record, private = registry.add(args.name, server_name=server_name, rooms=rooms, context=context_doc,
                                       link=link, rekey=args.rekey)  # fmt: skip
        gateway_key = load_or_create_link_key(Path(args.data_dir) / "link.key")
        out = Path(args.out) if args.out else Path(args.data_dir) / "devices" / f"{args.name}.json"
        write_device_config(out, device_config(record, private, gateway_key))
    except (RegistryError, ContextError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        db.close()
    action = "re-keyed" if args.rekey else "provisioned"
    print(f"{action} {record.user_id} at link address {record.address} on {record.link}")
    print(f"device config (holds the device's private key): {out}")
    print(f"flash it with: lowband device flash {args.name} --port PORT   (or copy the file to the board)")
    return 0


def _summary(record: Any) -> dict[str, Any]:
    from lowband.gateway.link.registry import fingerprint

    return {
        "name": record.name, "user_id": record.user_id, "address": record.address, "link": record.link,
        "rooms": record.rooms, "key_fingerprint": fingerprint(record.static_public),
        "provisioned": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.key_ts / 1000)),
        "revoked": record.revoked, "context_version": record.context.get("version"),
    }  # fmt: skip


def run_list(args: argparse.Namespace) -> int:
    """Handler of ``device list``."""
    db, registry, _ = _open(args.data_dir)
    try:
        records = registry.devices(include_revoked=args.all)
    finally:
        db.close()
    if not records:
        print("no devices")
    for record in records:
        state = " (revoked)" if record.revoked else ""
        print(f"{record.name:<20} addr {record.address:<4} {record.user_id:<36} {record.link}{state}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Handler of ``device show``."""
    from lowband.gateway.link.registry import RegistryError

    db, registry, _ = _open(args.data_dir)
    try:
        record = registry.device(args.name)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    finally:
        db.close()
    print(json.dumps(_summary(record), indent=2))
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Handler of ``device revoke``."""
    from lowband.gateway.link.registry import RegistryError

    db, registry, _ = _open(args.data_dir)
    try:
        record = registry.revoke(args.name)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    finally:
        db.close()
    print(f"revoked {record.user_id}: its frames are refused from now on")
    return 0
