"""``lowband ble scan|add|list|remove``: find BLE sensors in range and make them room members.

``scan`` listens with the gateway's own scanner (bleak on BlueZ) and prints
what is in range with its decoded values; ``add``/``list``/``remove`` edit
the sensor registry in the data dir (``<data-dir>/ble/sensors.json``), whether
the gateway runs or not: a running gateway picks changes up within seconds.
See ``docs/ble.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowband.gateway.cli.main import UsageError
from lowband.gateway.matrix.identifiers import is_room_id

_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_ADDRESS = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}")
_ADAPTER = re.compile(r"hci[0-9]{1,3}")
#: --format values; "auto" picks the decoder by the advertisement's content (gateway/ble/decode.py).
FORMATS = ("auto", "bthome", "xiaomi", "govee", "inkbird", "ruuvitag")
#: Refusals of an encrypted sensor whose key is missing or wrong: listed by ``scan`` even without --all.
_LOCKED = ("no_key", "decrypt_failed")


def register(subparsers: Any) -> None:
    """Add ``ble`` and its actions."""
    ble = subparsers.add_parser(
        "ble",
        help="find BLE sensors in range and make them room members",
        description=(
            "Bluetooth Low Energy sensors (BTHome, Xiaomi, Govee, Inkbird, RuuviTag advertisements; GATT "
            "Environmental Sensing) as room members: each configured sensor becomes the user @ble_NAME, joins "
            "its rooms and posts its readings as telemetry events. `scan` shows what is in range; `add`, "
            "`list` and `remove` manage the sensors in a gateway's data dir, whether the gateway runs or not (a "
            "running one picks changes up within seconds; the first sensor of a data dir at the gateway's next "
            "start, unless [ble] enabled = true). The [ble] section of the config file sets the adapter and the "
            "scanning mode; see docs/ble.md."
        ),
    )
    sub = ble.add_subparsers(dest="ble_command", metavar="ACTION", required=True)

    scan = sub.add_parser(
        "scan",
        help="list the BLE sensors in range with their decoded values",
        description=(
            "Listen for BLE advertisements for --seconds and print one line per device heard: address, "
            "signal strength, name, format and the decoded values of its last advertisement. Devices no "
            "decoder understands are counted, not listed (--all lists them). With --data-dir, encrypted "
            "BTHome sensors registered there are decrypted with their keys. Needs BlueZ (bluetoothd) and an "
            "adapter; passive scanning where BlueZ allows it, --active asks for scan responses."
        ),
    )
    scan.add_argument("--seconds", type=float, default=10.0, metavar="N", help="how long to listen (default 10)")
    scan.add_argument("--adapter", metavar="hciX", help="which adapter (default: BlueZ's default adapter)")
    scan.add_argument("--active", action="store_true", help="active scanning: ask every device for its scan response")
    scan.add_argument("--data-dir", metavar="DIR", help="a gateway data dir: decrypt its registered sensors' packets")
    scan.add_argument("--all", action="store_true", help="also list devices whose advertisements nothing decodes")
    scan.set_defaults(handler=run_scan)

    add = sub.add_parser(
        "add",
        help="add a sensor (it becomes @ble_NAME in its rooms)",
        description=(
            "Add a BLE sensor to the gateway's data dir. Its readings are posted by @ble_NAME in every --room. "
            "An encrypted BTHome sensor needs --key, its 16-byte bindkey as 32 hex "
            "digits; a plaintext packet from it is then refused as a downgrade. --gatt: a connectable sensor "
            "read over GATT (Environmental Sensing temperature, humidity, pressure) instead of its "
            "advertisements. --replace changes an existing sensor."
        ),
    )
    add.add_argument("name", help="sensor name: 1-32 of a-z, 0-9, _ and -")
    add.add_argument("--address", required=True, metavar="AA:BB:CC:DD:EE:FF", help="the sensor's Bluetooth address")
    add.add_argument("--format", default="auto", choices=FORMATS,
                     help="its advertisement format (default auto: recognised by content)")  # fmt: skip
    add.add_argument("--key", metavar="HEX32", help="BTHome / Xiaomi bindkey: 32 hex digits (16 bytes)")
    add.add_argument("--room", action="append", default=[], metavar="ROOM",
                     help="room ID or alias (#name:server) it posts to; repeat for more rooms")  # fmt: skip
    add.add_argument("--interval", type=float, metavar="S",
                     help="seconds between its readings; silent for [ble] silent_factor (3) x this and the rooms are "
                          "told (default 600)")  # fmt: skip
    add.add_argument("--gatt", action="store_true", help="read it over a GATT connection (Environmental Sensing)")
    add.add_argument("--gatt-char", action="append", default=[], metavar="UUID",
                     help="with --gatt: read only these of temperature 2A6E, humidity 2A6F, pressure 2A6D "
                          "(repeat; default all three)")  # fmt: skip
    add.add_argument("--command-char", metavar="UUID",
                     help="with --gatt: characteristic that `!NAME ...` commands from the room are written to")  # fmt: skip
    add.add_argument("--poll", type=float, metavar="S",
                     help="with --gatt: read every S seconds instead of subscribing to notifications")  # fmt: skip
    add.add_argument("--replace", action="store_true", help="replace an existing sensor of that name")
    add.add_argument("--data-dir", required=True, metavar="DIR", help="the gateway's data dir")
    add.set_defaults(handler=run_add)

    listing = sub.add_parser("list", help="list sensors", description="List the sensors of a data dir (never their keys).")
    listing.add_argument("--data-dir", required=True, metavar="DIR")
    listing.add_argument("--json", action="store_true", help="one JSON object per sensor")
    listing.set_defaults(handler=run_list)

    remove = sub.add_parser("remove", help="remove a sensor",
                            description="Remove a sensor: a running gateway stops posting for it and its user "
                                        "says so and leaves its rooms (the rooms keep its history).")  # fmt: skip
    remove.add_argument("name")
    remove.add_argument("--data-dir", required=True, metavar="DIR")
    remove.set_defaults(handler=run_remove)


# ---------------------------------------------------------------- checks


def check_address(text: str) -> str:
    """``text`` as ``AA:BB:CC:DD:EE:FF`` (``:`` or ``-`` separators, any case); UsageError otherwise."""
    if not _ADDRESS.fullmatch(text.strip()):
        raise UsageError(f"--address {text!r} is not a Bluetooth address: six hex bytes, e.g. A4:C1:38:0B:5E:7F")
    return text.strip().replace("-", ":").upper()


def check_key(text: str | None) -> bytes | None:
    """A bindkey from 32 hex digits (spaces and a 0x prefix allowed); UsageError otherwise."""
    if text is None:
        return None
    compact = text.strip().replace(" ", "")
    if compact.lower().startswith("0x"):
        compact = compact[2:]
    if not _HEX32.fullmatch(compact):
        raise UsageError(f"--key must be the 16-byte bindkey as 32 hex digits; got {len(compact)} characters"
                         + ("" if re.fullmatch(r"[0-9a-fA-F]*", compact) else " that are not all hex digits"))  # fmt: skip
    return bytes.fromhex(compact)


def check_uuid(text: str, option: str) -> str:
    """A characteristic UUID (16-bit ``2a6e`` / ``0x2A6E`` or 128-bit) as the full lower-case form; UsageError otherwise."""
    from lowband.gateway.ble.advert import full_uuid

    try:
        return full_uuid(text)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a UUID: 4 hex digits (2a6e) or 128-bit "
                         "(00002a6e-0000-1000-8000-00805f9b34fb)") from None  # fmt: skip


def _data_dir(data_dir: str) -> tuple[Path, str]:
    """(the data dir, its server name); UsageError if it is not a gateway's data dir."""
    path = Path(data_dir)
    marker = path / "server_name"
    if not marker.exists():
        raise UsageError(f"{data_dir} is not a gateway data dir (start `lowband serve --data-dir {data_dir}` once)")
    return path, marker.read_text().strip()


def _resolve_rooms(path: Path, rooms: list[str]) -> list[str]:
    """Room IDs for IDs and aliases, checked against the data dir's store; UsageError for one it does not hold."""
    if not rooms:
        return []
    from lowband.gateway.app import open_store
    from lowband.gateway.config import Config

    store = open_store(Config(data_dir=path).db_path)
    try:
        resolved = []
        for room in rooms:
            if room.startswith("#"):
                found = store.get_alias(room)
                if found is None:
                    raise UsageError(f"no room has the alias {room} on this gateway")
                resolved.append(str(found[0]))
            elif is_room_id(room):
                if store.get_room(room) is None:
                    raise UsageError(f"this gateway has no room {room}")
                resolved.append(room)
            else:
                raise UsageError(f"--room {room!r} is neither a room ID (!id:server) nor an alias (#name:server)")
        return list(dict.fromkeys(resolved))
    finally:
        store.close()


@contextlib.contextmanager
def _registry(data_dir: str) -> Iterator[Any]:
    """The data dir's BLE sensor registry; its errors become UsageErrors."""
    from lowband.gateway.ble.registry import BleRegistry, BleRegistryError

    path, _ = _data_dir(data_dir)
    try:
        yield BleRegistry(path)
    except BleRegistryError as exc:
        raise UsageError(str(exc)) from None


# --------------------------------------------------------------- actions


def run_add(args: argparse.Namespace) -> int:
    """Handler of ``ble add``."""
    from lowband.gateway.ble.registry import ENVIRONMENTAL_SENSING, GattConfig, SensorConfig, user_id

    address = check_address(args.address)
    key = check_key(args.key)
    if args.interval is not None and not 1 <= args.interval <= 7 * 86400:
        raise UsageError("--interval must be between 1 and 604800 seconds")
    if not args.gatt and (args.gatt_char or args.command_char or args.poll is not None):
        raise UsageError("--gatt-char, --command-char and --poll describe a GATT sensor: add --gatt")
    if args.gatt and args.format != "auto":
        raise UsageError("--format names an advertisement format; a --gatt sensor is read over its connection")
    if args.gatt and key is not None:
        raise UsageError("--key is for encrypted advertisements; a --gatt sensor is read over its connection")
    if args.poll is not None and not 1 <= args.poll <= 86400:
        raise UsageError("--poll must be between 1 and 86400 seconds")
    gatt = None
    if args.gatt:
        options: dict[str, Any] = {}
        if args.gatt_char:
            chars = tuple(dict.fromkeys(check_uuid(c, "--gatt-char") for c in args.gatt_char))
            unknown = [c for c in chars if c not in ENVIRONMENTAL_SENSING]
            if unknown:
                raise UsageError(f"--gatt-char {unknown[0]} is not read by the gateway: it reads Environmental "
                                 "Sensing temperature 2A6E, humidity 2A6F and pressure 2A6D")  # fmt: skip
            options["characteristics"] = chars
        if args.command_char:
            options["command"] = check_uuid(args.command_char, "--command-char")
        if args.poll is not None:
            options.update(subscribe=False, poll_s=args.poll)
        gatt = GattConfig(**options)
    with _registry(args.data_dir) as registry:
        path, server_name = _data_dir(args.data_dir)
        rooms = _resolve_rooms(path, args.room)
        fmt = "gatt" if gatt is not None else args.format
        fields: dict[str, Any] = {"name": args.name, "address": address, "format": fmt, "key": key,
                                  "rooms": tuple(rooms), "gatt": gatt}  # fmt: skip
        if args.interval is not None:
            fields["interval_s"] = args.interval
        sensor = registry.add(SensorConfig(**fields), replace=args.replace)
    who = user_id(sensor.name, server_name)
    how = "over GATT" if sensor.gatt is not None else f"from its {sensor.format} advertisements"
    print(f"{'replaced' if args.replace else 'added'} {sensor.name}: {sensor.address}, read {how}, "
          f"posting as {who}{' (encrypted)' if sensor.key else ''}")  # fmt: skip
    if not rooms:
        print("it is in no room yet: its readings are kept out of rooms until `ble add --replace` gives it one")
    else:
        print(f"rooms: {', '.join(rooms)}")
    print("a running gateway picks it up within seconds (the first sensor of a data dir at its next start, "
          "unless [ble] enabled = true)")
    return 0


def _summary(sensor: Any, server_name: str) -> dict[str, Any]:
    from lowband.gateway.ble.registry import user_id

    summary: dict[str, Any] = {
        "name": sensor.name, "address": sensor.address, "format": sensor.format, "encrypted": sensor.key is not None,
        "user_id": user_id(sensor.name, server_name), "rooms": list(sensor.rooms), "interval_s": sensor.interval_s,
    }  # fmt: skip
    if sensor.gatt is not None:
        summary["gatt"] = {"characteristics": list(sensor.gatt.characteristics), "subscribe": sensor.gatt.subscribe,
                           "poll_s": sensor.gatt.poll_s, "command": sensor.gatt.command}  # fmt: skip
    return summary


def run_list(args: argparse.Namespace) -> int:
    """Handler of ``ble list``."""
    import json

    with _registry(args.data_dir) as registry:
        _, server_name = _data_dir(args.data_dir)
        sensors = registry.sensors()
    if args.json:
        for sensor in sensors:
            print(json.dumps(_summary(sensor, server_name)))
        return 0
    if not sensors:
        print("no BLE sensors")
        return 0
    print(f"{'name':<20} {'address':<17} {'format':<8} {'key':<4} {'interval':>8}  rooms")
    for sensor in sensors:
        fmt = sensor.format
        rooms = ", ".join(sensor.rooms) or "-"
        print(f"{sensor.name:<20} {sensor.address:<17} {fmt:<8} {'yes' if sensor.key else 'no':<4} "
              f"{sensor.interval_s:>7g}s  {rooms}")  # fmt: skip
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Handler of ``ble remove``."""
    with _registry(args.data_dir) as registry:
        sensor = registry.remove(args.name)
    print(f"removed {sensor.name} ({sensor.address}): the gateway stops posting for it and its user leaves its rooms")
    return 0


# ------------------------------------------------------------------ scan


def scan_table(heard: dict[str, tuple[Any, Any]], names: dict[str, str], show_all: bool) -> str:
    """The table ``scan`` prints: one line per device (address → (last advertisement, its decode result)).

    Strongest signal first. Encrypted sensors whose key is missing or wrong
    are listed with the reason; devices nothing decodes only with
    ``show_all`` (then with the refusal's kind); ``names`` marks registered
    sensors.
    """
    from lowband.gateway.ble.decode import Decoded

    lines = [f"{'address':<17} {'rssi':>4}  {'name':<16} {'format':<9} values"]
    decoded = locked = undecoded = 0
    order = sorted(heard.items(), key=lambda item: -(item[1][0].rssi if item[1][0].rssi is not None else -999))
    for address, (adv, result) in order:
        if isinstance(result, Decoded):
            decoded += 1
            fmt = result.format + ("*" if result.encrypted else "")
            values = ", ".join(f"{n} {_number(v)}{' ' + result.units[n] if result.units.get(n) else ''}"
                               for n, v in result.values.items())  # fmt: skip
        else:
            detail = f"({result.kind}{': ' + result.detail if result.detail else ''})"
            if result.kind in _LOCKED:
                locked += 1
                fmt, values = "*", detail
            else:
                undecoded += 1
                if not show_all:
                    continue
                fmt, values = "-", detail
        label = names.get(address) or (adv.local_name or "")[:16]
        rssi = "" if adv.rssi is None else str(adv.rssi)
        lines.append(f"{address:<17} {rssi:>4}  {label:<16} {fmt:<9} {values}")
    footer = [f"{decoded} sensor{'s' if decoded != 1 else ''} decoded"]
    if locked:
        footer.append(f"{locked} encrypted without a usable key (--data-dir with their keys)")
    if undecoded:
        listed = "listed" if show_all else "(--all lists them)"
        footer.append(f"{undecoded} other device{'s' if undecoded != 1 else ''} {listed}")
    lines.append(", ".join(footer) + "; * = encrypted")
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_scan(args: argparse.Namespace) -> int:
    """Handler of ``ble scan``: listen, decode, print the table."""
    if not 0 < args.seconds <= 3600:
        raise UsageError("--seconds must be more than 0 and at most 3600")
    if args.adapter is not None and not _ADAPTER.fullmatch(args.adapter):
        raise UsageError(f"--adapter {args.adapter!r} is not an adapter name like hci0")
    keys: dict[str, tuple[str, str, bytes | None]] = {}  # address → (name, format, key)
    if args.data_dir is not None:
        with _registry(args.data_dir) as registry:
            keys = {s.address: (s.name, s.format, s.key) for s in registry.sensors()}
    heard = asyncio.run(_listen(args.seconds, args.adapter, args.active, keys))
    print(scan_table(heard, {address: name for address, (name, _, _) in keys.items()}, args.all))
    return 0


async def _listen(seconds: float, adapter: str | None, active: bool,
                  keys: dict[str, tuple[str, str, bytes | None]]) -> dict[str, tuple[Any, Any]]:  # fmt: skip
    """address → (last advertisement, its decode result) of everything heard in ``seconds``.

    UsageError naming the cause when there is no D-Bus, no BlueZ or no usable adapter.
    """
    from lowband.gateway.ble.decode import Decoded, decode
    from lowband.gateway.ble.scanner import BleScanner, BleUnavailable

    heard: dict[str, tuple[Any, Any]] = {}

    def on_advertisement(adv: Any) -> None:
        _, fmt, key = keys.get(adv.address, (None, "auto", None))
        result = decode(adv, fmt, key)
        previous = heard.get(adv.address)
        # Keep the last decoded advertisement: a scan response without data must not hide the values.
        if previous is None or isinstance(result, Decoded) or not isinstance(previous[1], Decoded):
            heard[adv.address] = (adv, result)

    # The scanner logs its troubles for the gateway's log; here the one-line error below says it instead.
    logging.getLogger("lowband.gateway.ble").addHandler(logging.NullHandler())
    scanner = BleScanner(on_advertisement, adapter=adapter, mode="active" if active else "passive")
    try:
        await scanner.start()
    except BleUnavailable as exc:
        raise UsageError(f"cannot scan: {exc}") from None
    try:
        stats = scanner.stats()
        if not active and stats.get("mode_in_use") == "active":
            sys.stderr.write(f"lowband: scanning actively: {stats.get('mode_reason') or 'passive scanning unavailable'}\n")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    finally:
        await scanner.stop()
    return heard
