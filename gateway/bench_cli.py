"""``lowband bench NAME``: benchmarks that report numbers, not pass/fail.

Each benchmark is a function returning a JSON-able dict and a readable
table; ``--json`` prints the dict as one line, last. Benchmarks are listed
in :data:`BENCHMARKS` explicitly.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from lowband.gateway import bench_wire

#: name → (one-line description, function returning (result dict, table text)).
BENCHMARKS: dict[str, tuple[str, Callable[[], tuple[dict[str, Any], str]]]] = {
    "wire": ("bytes per event in each encoding (HTTP+JSON, MSC3079, compact, framed)", bench_wire.run),
}


def register(subparsers: Any) -> None:
    """Add ``bench``."""
    names = "; ".join(f"{name}: {desc}" for name, (desc, _) in BENCHMARKS.items())
    bench = subparsers.add_parser(
        "bench",
        help="run a benchmark and print its numbers",
        description=f"Run one benchmark. Available: {names}.",
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    bench.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``bench``."""
    _, function = BENCHMARKS[args.name]
    result, table = function()
    if args.json:
        print(json.dumps(result))
    else:
        print(table)
    return 0
