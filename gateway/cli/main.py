"""The ``lowband`` command: one entry point, subcommands registered below.

Each subcommand module exposes ``register(subparsers)`` that adds its parser
and sets ``handler`` to a function taking the parsed arguments and returning
an exit status. Errors a user can cause (bad input, bad configuration) are
raised as :class:`UsageError` or :class:`~lowband.codecs.WireError` and end
as exit status 2 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lowband.codecs.errors import WireError

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """The user asked for something impossible; the message says what."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser with every subcommand registered."""
    from lowband.gateway.cli import (
        appservice,
        bench,
        ble,
        coap,
        coap_clients,
        db,
        demo,
        device,
        fuzz,
        serve,
        status,
        wire,
    )

    parser = OneLineParser(
        prog="lowband",
        description=(
            "Lowband: a Matrix-compatible gateway for constrained devices. "
            "Room events travel as compact CBOR over slow serial and LoRa links."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module in (serve, demo, device, ble, status, db, wire, bench, fuzz, appservice, coap, coap_clients):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns (and exits with) the status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(handler(args))
    except (WireError, UsageError) as exc:
        sys.stderr.write(f"lowband: error: {exc}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("lowband: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
