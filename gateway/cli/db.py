"""``lowband db``: the gateway's database. ``db check`` verifies a store's integrity, read-only.

``lowband db check [--data-dir DIR] [--json] [--quick]`` runs every check of
the store's :class:`~lowband.gateway.store.interfaces.IntegrityCheck` (what
each one looks at: ``gateway/store/sqlite/integrity.py``; on a data dir
served from PostgreSQL, ``gateway/store/postgres/integrity.py``) and prints a line
per check with the problems it found, or one JSON object with ``--json``.
It only reads, so it can run beside a live gateway. Exit status: 0 clean,
1 problems found, 2 the database cannot be checked (no data dir, not a
Lowband database, locked by a writer, PostgreSQL unreachable).

``lowband db migrate --from sqlite:PATH --to postgresql://...`` moves a
stopped gateway's store to PostgreSQL and verifies the copy (the work:
``gateway/store/migrate.py``; docs/storage.md). Exit status: 0 verified,
1 the copy failed or did not verify, 2 it cannot start.
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
    db = subparsers.add_parser("db", help="check the gateway's database, move it to PostgreSQL",
                               description="The gateway's database.")  # fmt: skip
    commands = db.add_subparsers(dest="db_command", metavar="COMMAND", parser_class=type(db))
    check = commands.add_parser(
        "check",
        help="verify the store's integrity (read-only; safe beside a running gateway)",
        description=(
            "Verify the store's integrity, read-only (SQLite, or the PostgreSQL schema the data dir is served "
            "from): SQLite's own checks (PostgreSQL: its version and size), every event's JSON and event ID, "
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
    migrate = commands.add_parser(
        "migrate",
        help="move a stopped gateway's SQLite store to PostgreSQL, verified",
        description=(
            "Copy a SQLite store into an empty PostgreSQL schema (created), with progress, then verify it: every "
            "table's row count and a digest of every event on both sides. The gateway must be stopped (a "
            "running one is detected and refused). Given a data dir, a verified migration records the URL in "
            "DIR/database_url, so `lowband serve --data-dir DIR` serves from PostgreSQL, and renames lowband.db "
            "to lowband.db.migrated (kept, never opened again). Exit status: 0 migrated and verified, "
            "1 the copy failed or did not verify, 2 cannot migrate (bad source or destination, non-empty "
            "destination, a gateway running). See docs/storage.md."
        ),
    )
    migrate.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH",
                         help="the SQLite file, or the data dir holding lowband.db")  # fmt: skip
    migrate.add_argument("--to", dest="url", required=True, metavar="postgresql://...",
                         help="the PostgreSQL database; ?schema=NAME picks the schema (default lowband)")  # fmt: skip
    migrate.set_defaults(handler=run_migrate)
    db.set_defaults(handler=lambda args: _no_subcommand(db))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_check(args: argparse.Namespace) -> int:
    """Run every check and report; 0 clean, 1 problems; UsageError when the database cannot be checked."""
    from lowband.gateway.app import postgres_place
    from lowband.gateway.store.interfaces import IntegrityCheck
    from lowband.gateway.store.sqlite.integrity import NotAStore, SQLiteIntegrity

    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"no data dir {data_dir}")
    try:
        name_file = data_dir / "server_name"
        server_name = name_file.read_text("utf-8").strip() if name_file.is_file() else None
        place = postgres_place(data_dir / "lowband.db")
        if place is None:
            checker: IntegrityCheck = SQLiteIntegrity(data_dir / "lowband.db", server_name=server_name)
        else:
            from lowband.gateway.store.postgres.integrity import PgIntegrity

            checker = PgIntegrity(place[1], place[2], server_name=server_name)
    except (NotAStore, ValueError) as exc:  # ValueError: the URL recorded in DATABASE_MARKER is malformed
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


def run_migrate(args: argparse.Namespace) -> int:
    """Migrate, verify, switch a data dir over (the work: ``store/migrate.py``); 0 verified, 1 copy failed or
    not verified; UsageError when the migration cannot start."""
    from lowband.gateway.app import DATABASE_MARKER
    from lowband.gateway.store import migrate as m

    out = sys.stdout
    started = time.monotonic()
    try:
        source, data_dir = m.source_path(args.source)
        if data_dir is not None and (data_dir / DATABASE_MARKER).exists():
            raise m.MigrationRefused(f"data dir {data_dir} is already served from PostgreSQL ({DATABASE_MARKER})")
        job = m.Migration(source, args.url)
    except m.MigrationRefused as exc:
        raise UsageError(str(exc)) from None
    try:
        size = source.stat().st_size / 1e6
        out.write(f"source       {source}: {job.total_rows:,} rows in {len(job.tables)} tables ({size:.1f} MB),"
                  " checked, locked\n")  # fmt: skip
        out.write(f"destination  {m.safe_url(job.libpq)}, schema {job.schema}"
                  f" ({'created' if job.created else 'empty'})\n")  # fmt: skip
        out.flush()
        copy_started = time.monotonic()
        try:
            with meter("copy", job.total_rows) as bar:
                job.copy(bar.advance)
        except m.MigrationRefused as exc:
            raise UsageError(str(exc)) from None
        except m.CopyFailed as exc:
            sys.stderr.write(f"lowband: {exc}\n")
            return EXIT_PROBLEMS
        seconds = time.monotonic() - copy_started
        out.write(f"copied       {job.total_rows:,} rows in {seconds:.1f} s ({job.total_rows / max(seconds, 1e-3):,.0f}"
                  " rows/s)\n")  # fmt: skip
        for table in job.tables:
            for kind, count in sorted(table.adapted.items()):
                out.write(f"    note: {table.name}: {count} value{'s' if count != 1 else ''}: {kind}\n")
        if job.sequences:
            out.write(f"sequences    {', '.join(f'{name} {top:,}' for name, top in job.sequences)}: the next value"
                      " is past these\n")  # fmt: skip
        for name in job.left_out:
            out.write(f"    note: {name} not copied: this Lowband has no such table\n")
        out.flush()
        verify_started = time.monotonic()
        with meter("verify", 2 * (job.source_rows("events") or 0)) as bar:
            result = job.verify(bar.advance)
        _report_verification(job, result, time.monotonic() - verify_started)
    finally:
        job.close()
    if not result.ok:
        out.write(f"NOT VERIFIED: schema {job.schema} holds the copy; drop it (DROP SCHEMA {job.schema} CASCADE)"
                  " before migrating again. The source is unchanged.\n")  # fmt: skip
        return EXIT_PROBLEMS
    if data_dir is not None:
        kept = m.switch_data_dir(data_dir, args.url, DATABASE_MARKER)
        out.write(f"data dir     {data_dir / DATABASE_MARKER} written: `lowband serve --data-dir {data_dir}` now serves"
                  f" from PostgreSQL; the SQLite file is kept as {kept}\n")  # fmt: skip
    else:
        out.write(f"source       {source} left as it is (--from a data dir also switches the data dir over)\n")
    out.write(f"migrated and verified in {time.monotonic() - started:.1f} s\n")
    return 0


def _report_verification(job: Any, result: Any, seconds: float) -> None:
    out = sys.stdout
    wrong = [t for t in result.tables if not t.ok]
    filled = sum(1 for t in result.tables if t.source)
    if wrong:
        out.write(f"row counts   {len(wrong)} of {len(result.tables)} tables differ:\n")
        for t in wrong:
            out.write(f"    {t.name}: {t.source:,} in SQLite, {t.destination:,} in PostgreSQL\n")
    else:
        out.write(f"row counts   equal in all {len(result.tables)} tables ({filled} with rows)\n")
    same = result.source_digest == result.destination_digest
    out.write(f"events       {result.events:,}, digest {result.source_digest[:16]}"
              f" {'on both sides' if same else 'in SQLite, ' + result.destination_digest[:16] + ' in PostgreSQL'}\n")
    if result.rebuilt:
        rebuilt = []
        for name, rows in result.rebuilt.items():
            had = job.source_rows(name)
            rebuilt.append(f"{name} {rows:,}" + (f" (SQLite {had:,})" if had is not None else ""))
        out.write(f"rebuilt      by PostgreSQL's triggers, rows: {', '.join(rebuilt)}\n")
    if result.open_error:
        out.write(f"store        does not open: {result.open_error}\n")
    out.write(f"verified in {seconds:.1f} s: {'ok' if result.ok else 'FAILED'}\n")
