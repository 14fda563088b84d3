"""``lowband db``: the gateway's database. ``db check`` verifies a store's integrity, read-only.

``lowband db check [--data-dir DIR] [--json] [--quick]`` runs every check of
the store's :class:`~lowband.gateway.store.interfaces.IntegrityCheck` (what
each one looks at: ``gateway/store/sqlite/integrity.py``) and prints a line
per check with the problems it found, or one JSON object with ``--json``.
It only reads, so it can run beside a live gateway. Exit status: 0 clean,
1 problems found, 2 the database cannot be checked (no data dir, not a
Lowband database, locked by a writer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lowband.gateway.cli.main import UsageError
from lowband.gateway.cli.progress import meter

EXIT_PROBLEMS = 1
#: the data dir ``lowband serve`` uses when given none (config.Config.data_dir)
DEFAULT_DATA_DIR = "lowband-data"


def register(subparsers: Any) -> None:
    """Add ``db`` and its subcommands."""
    db = subparsers.add_parser("db", help="check the gateway's database",
                               description="The gateway's database.")  # fmt: skip
    commands = db.add_subparsers(dest="db_command", metavar="COMMAND", parser_class=type(db))
    check = commands.add_parser(
        "check",
        help="verify the store's integrity (read-only; safe beside a running gateway)",
        description=(
            "Verify the store's integrity, read-only: SQLite's own checks, every event's JSON and event ID, "
            "that prev and auth events and the rooms' current state are stored, that the relation, search and "
            "notification indexes agree with the events. Exit status: 0 clean, 1 problems found, 2 cannot check."
        ),
    )
    check.add_argument("--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR",
                       help=f"the gateway's data dir (default {DEFAULT_DATA_DIR})")  # fmt: skip
    check.add_argument("--json", action="store_true", help="print one JSON object (for scripts), no progress")
    check.add_argument("--quick", action="store_true",
                       help="SQLite's quick_check instead of integrity_check, and no per-event hashing")  # fmt: skip
    check.set_defaults(handler=run_check)
    db.set_defaults(handler=lambda args: _no_subcommand(db))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_check(args: argparse.Namespace) -> int:
    """Run every check and report; 0 clean, 1 problems; UsageError when the database cannot be checked."""
    from lowband.gateway.store.interfaces import IntegrityCheck
    from lowband.gateway.store.sqlite.integrity import NotAStore, SQLiteIntegrity

    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"no data dir {data_dir}")
    try:
        name_file = data_dir / "server_name"
        server_name = name_file.read_text("utf-8").strip() if name_file.is_file() else None
        checker: IntegrityCheck = SQLiteIntegrity(data_dir / "lowband.db", server_name=server_name)
    except NotAStore as exc:
        raise UsageError(str(exc)) from None
    started = time.monotonic()
    findings = []
    try:
        for name, work in checker.checks(quick=args.quick):
            with meter(f"check {name}", work, enabled=False if args.json else None) as bar:
                findings.append(checker.run(name, quick=args.quick, advance=bar.advance))
    finally:
        checker.close()
    problems = sum(f.problems for f in findings)
    if args.json:
        report: dict[str, Any] = {
            "ok": problems == 0, "problems": problems, "quick": args.quick,
            "seconds": round(time.monotonic() - started, 3),
            "checks": {f.check: {"checked": f.checked, "problems": f.problems, "examples": f.examples or [],
                                 "notes": f.notes or []} for f in findings},
        }  # fmt: skip
        sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    else:
        for f in findings:
            verdict = "ok" if f.problems == 0 else f"{f.problems} problem{'s' if f.problems != 1 else ''}"
            sys.stdout.write(f"{f.check:<14} {verdict:<14} ({f.checked} checked)\n")
            for line in f.examples or []:
                sys.stdout.write(f"    {line}\n")
            if f.problems > len(f.examples or []):
                sys.stdout.write(f"    ... and {f.problems - len(f.examples or [])} more\n")
            for line in f.notes or []:
                sys.stdout.write(f"    note: {line}\n")
        sys.stdout.write("clean\n" if problems == 0 else f"{problems} problems found\n")
    return 0 if problems == 0 else EXIT_PROBLEMS
