"""``lowband serve`` and ``lowband user``: run a gateway, manage its users."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
import time
from pathlib import Path
from typing import Any

from lowband.gateway.cli.allocator import limit_retention
from lowband.gateway.cli.logs import setup_logging
from lowband.gateway.cli.main import UsageError
from lowband.gateway.config import ConfigError, check_database_url, load_config, parse_listen, parse_peer


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``user``."""
    serve = subparsers.add_parser(
        "serve",
        help="run the gateway (Matrix homeserver on embedded SQLite)",
        description=(
            "Run the gateway: a Matrix client-server API on HTTP, with rooms, users and media kept in "
            "SQLite inside --data-dir (created on first start, with the server's signing key). "
            "Stops cleanly on SIGTERM or Ctrl-C."
        ),
    )
    serve.add_argument("--config", metavar="FILE.toml", help="configuration file; flags override its values")
    serve.add_argument("--data-dir", metavar="DIR", help="where the database, signing key and media live")
    serve.add_argument("--server-name", metavar="NAME", help="the Matrix server name, e.g. gw.example")
    serve.add_argument("--http", metavar="HOST:PORT", help="address of the client-server API (default 127.0.0.1:8008)")
    serve.add_argument("--database", metavar="URL",
                       help="postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DBNAME[?schema=NAME]: keep the store in "
                            "PostgreSQL (default: the SQLite file in the data dir; [database] url; docs/storage.md)")
    serve.add_argument(
        "--enable-registration",
        action="store_true",
        default=None,
        help="let anyone register an account (closed unless this flag or the config says so)",
    )
    serve.add_argument("--tls-cert", metavar="FILE.pem", help="certificate chain: the listener speaks HTTPS (client and federation APIs)")
    serve.add_argument("--tls-key", metavar="FILE.pem", help="private key of --tls-cert")
    serve.add_argument(
        "--peer",
        action="append",
        metavar="NAME=HOST:PORT",
        help="reach the server NAME at HOST:PORT without DNS (repeatable; adds to [federation] peers)",
    )
    serve.add_argument("--workers", type=_worker_count, default=0, metavar="N",
                       help="start N reader worker processes beside this one, on the same address: they serve "
                            "/sync (woken by this process), /messages, events, state, members, relations and media "
                            "downloads from the store and pass every other request (every write) to this process "
                            "(PostgreSQL store only; docs/scaling.md)")
    # how the main process starts a worker (NUMBER@URL of the main process's loopback listener): not for users
    serve.add_argument("--worker-of", metavar="NUMBER@URL", help=argparse.SUPPRESS)
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    serve.set_defaults(handler=run_serve)

    user = subparsers.add_parser(
        "user",
        help="manage users (works whether the gateway runs or not)",
        description="Manage the gateway's users directly in its data dir.",
    )
    sub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="create a user", description="Create a user with a password.")
    add.add_argument("name", help="user name (localpart, e.g. alice) or full user ID")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--password-file", metavar="FILE",
                        help="read the password from the first line of FILE ('-': standard input)")
    secret.add_argument("--password", help="the password on the command line (other local users can see it in ps; "
                                           "prefer the prompt or --password-file)")  # fmt: skip
    add.add_argument("--data-dir", required=True, metavar="DIR", help="the gateway's data dir")
    add.add_argument("--server-name", metavar="NAME", help="server name (default: the one the data dir was started with)")
    add.add_argument("--config", metavar="FILE.toml", help="configuration file to read the server name from")
    add.add_argument("--admin", action="store_true", help="make the user a server admin")
    add.add_argument("--allow-reserved", action="store_true",
                     help="create it even in a namespace an edge reserves (dev.*, the MQTT bridge's prefix, as the "
                          "config sets them): it is a person's account, and no device or bridge will ever speak as it")  # fmt: skip
    add.set_defaults(handler=run_user_add)


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers") from None
    if not 0 <= count <= 64:
        raise argparse.ArgumentTypeError(f"{count} workers: 0 to 64")
    return count


def _config_from(args: argparse.Namespace) -> Any:
    overrides: dict[str, Any] = {"data_dir": args.data_dir, "server_name": args.server_name}
    if getattr(args, "http", None):
        overrides["http_host"], overrides["http_port"] = parse_listen(args.http)
    if getattr(args, "enable_registration", None):
        overrides["registration_enabled"] = True
    if getattr(args, "database", None):
        overrides["database_url"] = check_database_url(args.database)
    overrides["tls_cert"] = getattr(args, "tls_cert", None)
    overrides["tls_key"] = getattr(args, "tls_key", None)
    peers: dict[str, str] = {}
    for item in getattr(args, "peer", None) or []:
        name, sep, address = item.partition("=")
        if not sep:
            raise ConfigError(f"--peer {item!r} must be NAME=HOST:PORT")
        peers.update([parse_peer(name, address, "--peer")])
    overrides["peers"] = peers or None
    return load_config(args.config, **overrides)


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``serve``."""
    from lowband.gateway.app import run_gateway

    try:
        config = _config_from(args)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    setup_logging(args.log_level)
    _check_server_name(config)
    logging.getLogger("lowband").debug("allocator: %s", limit_retention())  # before the first thread starts
    try:
        if args.worker_of:
            asyncio.run(_run_worker(config, args.worker_of))
        else:
            asyncio.run(run_gateway(config, workers=args.workers, worker_argv=sys.argv[1:]))
    except (OSError, ConfigError) as exc:  # ConfigError: a component (links, MQTT) refused its section at start
        raise UsageError(str(exc)) from None
    return 0


async def _run_worker(config: Any, worker_of: str) -> None:
    import os

    from lowband.gateway.app import WORKER_SECRET_ENV, run_worker

    number, _, url = worker_of.partition("@")
    secret = os.environ.get(WORKER_SECRET_ENV, "")
    if not number.isdigit() or not url.startswith("http://127.0.0.1:") or not secret:
        raise ConfigError("--worker-of is how `lowband serve --workers N` starts its workers, not an option to use")
    await run_worker(config, int(number), url, secret)


def _check_server_name(config: Any) -> None:
    from lowband.gateway.app import claim_data_dir
    from lowband.gateway.config import ConfigError

    try:
        claim_data_dir(config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _password(args: argparse.Namespace) -> str:
    """The new user's password: ``--password``, ``--password-file`` (``-``: stdin), else asked twice at the
    terminal, else the first line of standard input. UsageError when empty or the two answers differ."""
    if args.password is not None:
        password = args.password
    elif args.password_file is not None:
        try:
            text = sys.stdin.read() if args.password_file == "-" else Path(args.password_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the password from {args.password_file}: {exc}") from None
        password = text.splitlines()[0] if text else ""
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("the password is empty")
    return password


def run_user_add(args: argparse.Namespace) -> int:
    """Handler of ``user add``."""
    from lowband.gateway.app import open_store, reserved_namespaces
    from lowband.gateway.homeserver.accounts import hash_password, user_id_for
    from lowband.gateway.store.interfaces import UserExists

    marker = Path(args.data_dir) / "server_name"
    server_name = args.server_name or (marker.read_text().strip() if marker.exists() else None)
    try:
        config = load_config(args.config, data_dir=args.data_dir, server_name=server_name)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    _check_server_name(config)
    name = args.name
    if name.startswith("@"):
        localpart, _, server = name[1:].partition(":")
        if server != config.server_name:
            raise UsageError(f"{name} is not a user of {config.server_name}")
        name = localpart
    try:
        user_id = user_id_for(name, config.server_name)
    except Exception as exc:  # MatrixError M_INVALID_USERNAME
        raise UsageError(str(exc)) from None
    holder = reserved_namespaces(config).owner_of(name, user_id)
    if holder is not None and not args.allow_reserved:
        raise UsageError(f"{user_id} is in a namespace reserved for {holder}; pass --allow-reserved if you mean it "
                         f"(the account is then a person's: {holder} will never speak as it)")  # fmt: skip
    password = _password(args)
    store = open_store(config.db_path, config.database_url)
    try:
        store.create_user_sync(user_id, hash_password(password), args.admin, int(time.time() * 1000))
    except UserExists:
        raise UsageError(f"user {user_id} already exists") from None
    finally:
        store.close()
    print(f"created {user_id}" + (" (admin)" if args.admin else ""))
    return 0
