"""``lowband appservice list|show|ping``: the registered bridges and how pushing to them goes.

The bridges are those the config's ``[appservices] config_files`` lists; what
was pushed to each is read from the data dir's database, opened read-only
(the gateway may be running, and is never disturbed). ``ping`` calls the
bridge itself, as the gateway would, with its ``hs_token``.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from lowband.gateway.cli.main import UsageError

EXIT_PING_FAILED = 1


def register(subparsers: Any) -> None:
    """Add ``appservice`` and its actions."""
    appservice = subparsers.add_parser(
        "appservice",
        help="list the registered bridges (application services), their push queues, and ping them",
        description=(
            "The application services (bridges) registered in the config's [appservices] config_files, and how "
            "pushing events to each goes: the transaction in flight, how many timeline events the gateway has "
            "not yet looked at for it (behind), the last success and the last error. Reads the data dir "
            "read-only; works whether the gateway runs or not."
        ),
    )
    sub = appservice.add_subparsers(dest="appservice_command", metavar="ACTION", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, metavar="FILE.toml",
                            help="the gateway's configuration file (its [appservices] config_files)")  # fmt: skip
        parser.add_argument("--data-dir", metavar="DIR", help="the gateway's data dir (default: the config's)")

    listing = sub.add_parser("list", help="one line per bridge",
                             description="One line per registered bridge: ID, URL, the transaction in flight, "
                                         "events behind, last success, last error.")  # fmt: skip
    common(listing)
    listing.set_defaults(handler=run_list)

    show = sub.add_parser("show", help="everything about one bridge",
                          description="One bridge's registration (never its tokens) and push queue.")  # fmt: skip
    show.add_argument("id", help="the bridge's id, as in its registration file")
    common(show)
    show.set_defaults(handler=run_show)

    ping = sub.add_parser("ping", help="ping a bridge and print the round trip",
                          description="POST {url}/_matrix/app/v1/ping with the bridge's hs_token, as the gateway "
                                      "does, and print how long the bridge took to answer. Exit status 1 when "
                                      "it cannot be reached or answers with an error.")  # fmt: skip
    ping.add_argument("id", help="the bridge's id, as in its registration file")
    ping.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS", help="give up after this long (15)")
    common(ping)
    ping.set_defaults(handler=run_ping)


def _bridges(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """(config, registered bridges) from ``--config``; UsageError with the one-line reason."""
    from lowband.gateway.appservices.registration import load_appservices
    from lowband.gateway.config import ConfigError, load_config

    try:
        config = load_config(args.config, data_dir=args.data_dir)
        marker = config.data_dir / "server_name"
        if marker.exists():  # the data dir keeps the name it was started with; a bridge's sender carries it
            config = load_config(args.config, data_dir=args.data_dir, server_name=marker.read_text().strip())
        bridges = load_appservices(config.components.get("appservices"), config.server_name).all
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if not bridges:
        raise UsageError(f"{args.config} registers no application service ([appservices] config_files)")
    return config, bridges


def _status(db_path: Path) -> tuple[int, dict[str, Any]]:
    from lowband.gateway.app import open_reader
    from lowband.gateway.store.sqlite.appservices import read_queue_status

    try:
        conn = open_reader(db_path)
        if conn is None:
            return 0, {}
        return read_queue_status(conn)
    except sqlite3.Error as exc:
        raise UsageError(f"cannot read {db_path}: {exc}") from None


def _when(ts: int | None) -> str:
    if ts is None:
        return "never"
    ago = max(0, int(time.time() - ts / 1000))
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts / 1000))
    return f"{stamp} ({_duration(ago)} ago)"


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def run_list(args: argparse.Namespace) -> int:
    """Handler of ``appservice list``."""
    config, bridges = _bridges(args)
    _, queues = _status(config.db_path)
    print(f"{'ID':<20} {'URL':<32} {'IN FLIGHT':<14} {'BEHIND':>7}  {'LAST SUCCESS':<34} LAST ERROR")
    for bridge in bridges:
        found = queues.get(bridge.id)
        if bridge.url is None:
            print(f"{bridge.id:<20} {'(no url: never pushed to)':<32}")
            continue
        if found is None:
            print(f"{bridge.id:<20} {bridge.url:<32} {'-':<14} {'-':>7}  {'not started yet':<34} -")
            continue
        row = found.row
        flight = f"{found.in_flight_events} events" if row.txn_upto is not None else "-"
        error = "-" if row.failures == 0 or not row.last_error else f"{row.last_error[:80]} ({row.failures} failed)"
        print(f"{bridge.id:<20} {bridge.url:<32} {flight:<14} {found.events_behind:>7}  {_when(row.last_ok_ts):<34} "
              f"{error}")  # fmt: skip
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Handler of ``appservice show``."""
    config, bridges = _bridges(args)
    bridge = next((b for b in bridges if b.id == args.id), None)
    if bridge is None:
        raise UsageError(f"no application service {args.id!r} in {args.config} (known: "
                         f"{', '.join(b.id for b in bridges)})")  # fmt: skip
    head, queues = _status(config.db_path)
    lines: list[tuple[str, Any]] = [
        ("id", bridge.id), ("registration", bridge.path), ("url", bridge.url or "none (never pushed to)"),
        ("sender", bridge.sender),
        ("users", ", ".join(("exclusive " if n.exclusive else "") + n.regex.pattern for n in bridge.users) or "-"),
        ("aliases", ", ".join(("exclusive " if n.exclusive else "") + n.regex.pattern for n in bridge.aliases) or "-"),
        ("rooms", ", ".join(("exclusive " if n.exclusive else "") + n.regex.pattern for n in bridge.rooms) or "-"),
        ("receive_ephemeral", bridge.receive_ephemeral), ("msc3202", bridge.msc3202),
        ("rate_limited", bridge.rate_limited),
    ]  # fmt: skip
    found = queues.get(bridge.id)
    if found is None:
        lines.append(("queue", "not started yet (the gateway has not run with this bridge)"))
    else:
        row = found.row
        in_flight = (f"{row.txn_prefix}.{row.txn_seq}: {found.in_flight_events} events, up to position {row.txn_upto}"
                     if row.txn_upto is not None else "none")  # fmt: skip
        lines += [
            ("cursor", f"{row.cursor} (newest event {head})"), ("behind", f"{found.events_behind} timeline events"),
            ("in flight", in_flight), ("last success", _when(row.last_ok_ts)),
            ("failed attempts", f"{row.failures} in a row"),
            ("last error", f"{row.last_error} at {_when(row.last_error_ts)}" if row.last_error else "none"),
            ("pushed", f"{row.sent_txns} transactions, {row.sent_events} events"),
        ]  # fmt: skip
    for key, value in lines:
        print(f"{key + ':':<19} {value}")
    return 0


def run_ping(args: argparse.Namespace) -> int:
    """Handler of ``appservice ping``: 0 and the round trip, or 1 and why."""
    import sys

    from lowband.gateway.appservices.client import BridgeClient, BridgeError, BridgeUnreachable

    _, bridges = _bridges(args)
    bridge = next((b for b in bridges if b.id == args.id), None)
    if bridge is None:
        raise UsageError(f"no application service {args.id!r} in {args.config}")
    if bridge.url is None:
        raise UsageError(f"{bridge.id} has no url: the gateway never calls it")
    if not 0 < args.timeout <= 300:
        raise UsageError("--timeout must be between 0 and 300 seconds")

    async def ping() -> float:
        client = BridgeClient()
        started = time.monotonic()
        try:
            await client.request(bridge, "POST", "/_matrix/app/v1/ping", {"transaction_id": f"lowband-cli-{started}"},
                                 timeout_s=args.timeout)  # fmt: skip
        except BridgeError as exc:
            if not 200 <= exc.status < 300:  # a 2xx with an odd body still answered the ping
                raise
        finally:
            await client.close()
        return (time.monotonic() - started) * 1000

    try:
        took = asyncio.run(ping())
    except BridgeUnreachable as exc:
        sys.stderr.write(f"lowband: {bridge.id} at {bridge.url} cannot be reached: {exc}\n")
        return EXIT_PING_FAILED
    except BridgeError as exc:
        sys.stderr.write(f"lowband: {bridge.id} at {bridge.url} answered {exc.status}: "
                         f"{' '.join(exc.body.split())[:200]}\n")  # fmt: skip
        return EXIT_PING_FAILED
    print(f"{bridge.id} at {bridge.url} answered in {took:.1f} ms")
    return 0
