"""``lowband coap-client add|list|remove``: provision clients of the CoAP API's Noise sessions (docs/coap.md)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from lowband.gateway.cli.main import UsageError


def register(subparsers: Any) -> None:
    """Add ``coap-client`` and its actions."""
    command = subparsers.add_parser(
        "coap-client",
        help="provision clients of the encrypted CoAP API (Noise sessions)",
        description=(
            "Provision CoAP clients for the encrypted CoAP listener ([coap] secure_bind): each gets an X25519 "
            "key pair, an address (1-254) and a key file to give to the person who runs the client. The "
            "gateway picks up changes within seconds while it runs."
        ),
    )
    sub = command.add_subparsers(dest="coap_client_command", metavar="ACTION", required=True)

    add = sub.add_parser(
        "add", help="provision a client", description="Provision a CoAP client and write its key file."
    )
    add.add_argument("name", help="client name: 1-32 of a-z, 0-9, _ and -")
    add.add_argument("--user", required=True, metavar="USER_ID",
                     help="the Matrix user (@name:server, of this gateway) who uses the client")  # fmt: skip
    add.add_argument("--data-dir", required=True, metavar="DIR", help="the gateway's data dir")
    add.add_argument("--out", metavar="FILE", help="where to write the key file (default DIR/coap-clients/NAME.json)")
    add.add_argument(
        "--endpoint", metavar="HOST:PORT", help="where the client reaches the gateway (written to the key file)"
    )
    add.add_argument("--rekey", action="store_true", help="give an existing client a new key (same address)")
    add.set_defaults(handler=run_add)

    listing = sub.add_parser("list", help="list clients", description="List provisioned CoAP clients.")
    listing.add_argument("--data-dir", required=True, metavar="DIR")
    listing.set_defaults(handler=run_list)

    remove = sub.add_parser("remove", help="remove a client",
                            description="Remove a client: the gateway refuses its frames from now on.")  # fmt: skip
    remove.add_argument("name")
    remove.add_argument("--data-dir", required=True, metavar="DIR")
    remove.set_defaults(handler=run_remove)


def _data_dir(value: str) -> tuple[Path, str]:
    """(the data dir, its server name); UsageError if it is not a gateway's data dir."""
    path = Path(value)
    marker = path / "server_name"
    if not marker.exists():
        raise UsageError(f"{value} is not a gateway data dir (start `lowband serve --data-dir {value}` once)")
    return path, marker.read_text().strip()


def run_add(args: argparse.Namespace) -> int:
    """Handler of ``coap-client add``."""
    from lowband.gateway.coap.clients import KEY_DIR, ClientsError, add_client, key_file, write_key_file
    from lowband.gateway.devices.registry import RegistryError

    data_dir, server_name = _data_dir(args.data_dir)
    try:
        record, private = add_client(data_dir, args.name, args.user, server_name=server_name, rekey=args.rekey)
        out = Path(args.out) if args.out else data_dir / KEY_DIR / f"{args.name}.json"
        write_key_file(out, key_file(record, private, data_dir, args.endpoint))
    except (ClientsError, RegistryError) as exc:
        raise UsageError(str(exc)) from None
    action = "re-keyed" if args.rekey else "provisioned"
    print(f"{action} CoAP client {record.name} for {record.user_id} at address {record.address}")
    print(f"key file (holds the client's private key): {out}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Handler of ``coap-client list``."""
    from lowband.gateway.coap.clients import ClientsError, load_clients
    from lowband.gateway.devices.registry import fingerprint

    data_dir, _ = _data_dir(args.data_dir)
    try:
        records = load_clients(data_dir)
    except ClientsError as exc:
        raise UsageError(str(exc)) from None
    if not records:
        print("no CoAP clients")
    for record in records:
        added = time.strftime("%Y-%m-%d %H:%M", time.gmtime(record.added_ts / 1000))
        print(
            f"{record.name:<20} addr {record.address:<4} {record.user_id:<36} {fingerprint(record.static_public)}  {added}"
        )
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Handler of ``coap-client remove``."""
    from lowband.gateway.coap.clients import ClientsError, remove_client

    data_dir, _ = _data_dir(args.data_dir)
    try:
        record = remove_client(data_dir, args.name)
    except ClientsError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"removed CoAP client {record.name} ({record.user_id}, address {record.address}): its frames are refused from now on"
    )
    return 0
