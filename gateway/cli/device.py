"""``lowband device add|list|show|revoke|flash``: provision devices for the link, flash them onto boards."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowband.gateway.cli.main import UsageError
from lowband.gateway.matrix.identifiers import is_room_id


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

    show = sub.add_parser("show", help="show one device",
                          description="Show a device (never its private key) and whether the gateway may speak as "
                                      "its account: an @dev.NAME someone else created is never used.")  # fmt: skip
    show.add_argument("name")
    show.add_argument("--data-dir", required=True, metavar="DIR")
    show.set_defaults(handler=run_show)

    flash = sub.add_parser(
        "flash",
        help="copy the firmware and a device's config to a board with mpremote",
        description=(
            "Copy the MicroPython firmware packages (firmware/lbwire, lbcrypto, lbnode), the board entry "
            "(firmware/main.py) and the device's config file to a board over USB with mpremote: on a terminal "
            "a bar of the bytes copied (and of the mpy-cross step with --mpy) on stderr, otherwise a line per "
            "file on stdout. --dry-run lists what would be written and writes nothing."
        ),
    )
    flash.add_argument("name", help="the provisioned device")
    flash.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0 or /dev/ttyACM0")
    flash.add_argument("--data-dir", required=True, metavar="DIR")
    flash.add_argument("--config", metavar="FILE", help="device config file (default DIR/devices/NAME.json)")
    flash.add_argument("--board", help="board profile from hardware/ to copy as /board.json (e.g. heltec-wifi-lora-32-v3)")
    flash.add_argument("--mpy", action="store_true", help="compile with mpy-cross first (needs far less RAM on the board)")
    flash.add_argument("--dry-run", action="store_true", help="list the files, copy nothing")
    flash.set_defaults(handler=run_flash)

    revoke = sub.add_parser("revoke", help="revoke a device", description="Refuse a device's frames from now on.")
    revoke.add_argument("name")
    revoke.add_argument("--data-dir", required=True, metavar="DIR")
    revoke.set_defaults(handler=run_revoke)


def _open(data_dir: str) -> tuple[Any, Any, str]:
    """(the data dir's store, its device registry, the server name); close the store when done."""
    from lowband.gateway.app import open_store
    from lowband.gateway.config import Config
    from lowband.gateway.devices.registry import Registry

    path = Path(data_dir)
    marker = path / "server_name"
    if not marker.exists():
        raise UsageError(f"{data_dir} is not a gateway data dir (start `lowband serve --data-dir {data_dir}` once)")
    store = open_store(Config(data_dir=path).db_path)
    return store, Registry(store.link_devices), marker.read_text().strip()


def _resolve_room(store: Any, room: str) -> str:
    if room.startswith("#"):
        found = store.get_alias(room)
        if found is None:
            raise UsageError(f"no room has the alias {room}")
        return str(found[0])
    if not is_room_id(room):
        raise UsageError(f"{room!r} is neither a room ID (!id:server, or a v12 !hash) nor an alias (#name:server)")
    if store.get_room(room) is None:
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
    from lowband.gateway.devices.registry import (
        DEFAULT_CHANNELS,
        RegistryError,
        device_config,
        load_or_create_link_key,
        parse_channel,
        write_device_config,
    )  # fmt: skip

    store, registry, server_name = _open(args.data_dir)
    try:
        rooms = [_resolve_room(store, room) for room in args.room]
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
        store.close()
    action = "re-keyed" if args.rekey else "provisioned"
    print(f"{action} {record.user_id} at link address {record.address} on {record.link}")
    print(f"device config (holds the device's private key): {out}")
    print(f"flash it with: lowband device flash {args.name} --port PORT   (or copy the file to the board)")
    return 0


def _summary(record: Any) -> dict[str, Any]:
    from lowband.gateway.devices.registry import fingerprint

    return {
        "name": record.name, "user_id": record.user_id, "address": record.address, "link": record.link,
        "rooms": record.rooms, "key_fingerprint": fingerprint(record.static_public),
        "provisioned": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.key_ts / 1000)),
        "revoked": record.revoked, "context_version": record.context.get("version"),
    }  # fmt: skip


@contextlib.contextmanager
def _registry(data_dir: str) -> Iterator[Any]:
    """The data dir's device registry, closed afterwards; RegistryError becomes a UsageError."""
    from lowband.gateway.devices.registry import RegistryError

    store, registry, _ = _open(data_dir)
    try:
        yield registry
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()


def run_list(args: argparse.Namespace) -> int:
    """Handler of ``device list``."""
    with _registry(args.data_dir) as registry:
        records = registry.devices(include_revoked=args.all)
    if not records:
        print("no devices")
    for record in records:
        state = " (revoked)" if record.revoked else ""
        print(f"{record.name:<20} addr {record.address:<4} {record.user_id:<36} {record.link}{state}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Handler of ``device show``: the device, and whether the gateway may speak as its account."""
    from lowband.gateway.devices.account import account_problem
    from lowband.gateway.devices.registry import RegistryError

    store, registry, _ = _open(args.data_dir)
    try:
        record = registry.device(args.name)
        user = store.get_user(record.user_id)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()
    summary = _summary(record)
    problem = account_problem(record, user)
    summary["account"] = "ok: created by the gateway for this device" if problem is None else problem
    print(json.dumps(summary, indent=2))
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Handler of ``device revoke``."""
    with _registry(args.data_dir) as registry:
        record = registry.revoke(args.name)
    print(f"revoked {record.user_id}: its frames are refused from now on")
    return 0


def flash_plan(config_path: Path, board: str | None, mpy_dir: Path | None) -> list[tuple[Path, str]]:
    """(local file, path on the board) for everything ``device flash`` copies."""
    from lowband.sim.firmware import FIRMWARE as root
    from lowband.sim.firmware import PACKAGES

    plan: list[tuple[Path, str]] = []
    for package in PACKAGES:
        folder = root / package
        if not folder.is_dir():
            continue
        for source in sorted(folder.glob("*.py")):
            if source.name == "manifest.py":
                continue
            if mpy_dir is not None:
                compiled = mpy_dir / package / (source.stem + ".mpy")
                plan.append((compiled, f"lib/{package}/{compiled.name}"))
            else:
                plan.append((source, f"lib/{package}/{source.name}"))
    if (root / "main.py").exists():
        plan.append((root / "main.py", "main.py"))
    plan.append((config_path, "lowband.json"))
    if board:
        from lowband.hardware.radio import HardwareError, load_board

        try:
            profile = load_board(board)
        except HardwareError as exc:
            raise UsageError(str(exc)) from None
        hardware = root.parent / "hardware"
        plan.append((hardware / f"board-{board}.json", "board.json"))
        region = hardware / f"region-{profile.region_name.lower()}.json"
        if region.exists():  # LoRa boards read their radio parameters from it
            plan.append((region, "region.json"))
    return plan


def _compile_mpy(target: Path) -> Path:
    """Compile the firmware packages into ``target`` with mpy-cross, one package at a time behind a bar."""
    from lowband.gateway.cli.progress import meter
    from lowband.sim.firmware import PACKAGES, FirmwareError, build_mpy

    with meter("compiling with mpy-cross", len(PACKAGES)) as bar:
        for package in PACKAGES:
            try:
                build_mpy(target, (package,))
            except FirmwareError as exc:
                raise UsageError(str(exc)) from None
            bar.advance(1, package)
    return target


def run_flash(args: argparse.Namespace) -> int:
    """Handler of ``device flash``."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from lowband.gateway.cli.progress import meter

    config_path = Path(args.config) if args.config else Path(args.data_dir) / "devices" / f"{args.name}.json"
    if not config_path.exists():
        raise UsageError(f"no device config at {config_path}; run `lowband device add {args.name} ...` first")
    try:
        config = json.loads(config_path.read_text())
    except ValueError:
        raise UsageError(f"{config_path} is not valid JSON") from None
    if config.get("name") != args.name:
        raise UsageError(f"{config_path} is the config of {config.get('name')!r}, not {args.name!r}")
    with tempfile.TemporaryDirectory() as tmp:
        mpy_dir = _compile_mpy(Path(tmp)) if args.mpy else None
        plan = flash_plan(config_path, args.board, mpy_dir)
        total = sum(source.stat().st_size for source, _ in plan)
        if args.dry_run:
            for source, target in plan:
                print(f"would write :{target}  ({source.stat().st_size} bytes from {source})")
            print(f"{len(plan)} files, {total} bytes; nothing written (dry run)")
            return 0
        tool = shutil.which("mpremote") or str(Path(sys.executable).parent / "mpremote")
        folders = sorted({str(Path(t).parent) for _, t in plan if "/" in t})
        mkdirs = "import os\nfor d in %r:\n try: os.mkdir(d)\n except OSError: pass" % (["/lib"] + ["/" + f for f in folders],)

        def mpremote(*step: str) -> None:
            done = subprocess.run([tool, "connect", args.port, *step], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise UsageError(f"mpremote failed ({' '.join(step[:3])}): {done.stderr.strip()[:300]}")

        mpremote("exec", mkdirs)
        # A bar of bytes on a terminal; elsewhere one line per file on stdout, as a log wants it.
        with meter(f"flashing {args.name}", total, unit="bytes", steps=len(plan), plain=sys.stdout) as bar:
            for source, target in plan:
                mpremote("fs", "cp", str(source), f":{target}")
                bar.advance(source.stat().st_size, f":{target}")
    print(f"flashed {args.name}: {len(plan)} files, {total} bytes; reset the board to start it")
    return 0
