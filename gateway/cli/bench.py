"""``lowband bench NAME``: benchmarks that report numbers, not pass/fail.

Each benchmark is a function returning a JSON-able dict and a readable
table; ``--json`` prints the dict as one line, last. Benchmarks are listed
in :data:`BENCHMARKS` explicitly, each with the options it takes, by module
path: a benchmark's module (with what it pulls in: paho, noise, aiohttp's
client, the simulators) is imported only when that benchmark runs, so
building the parser for ``lowband serve`` costs nothing.

``--plot FILE.png`` also draws the result beside its anchor
(``bench/plot.py``, matplotlib from the ``plot`` extra); the file and
matplotlib are checked before the benchmark starts. On a terminal, and
without ``--json``, the phases a benchmark reports on stderr show as
spinners (``cli/progress.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Runner = Callable[..., tuple[dict[str, Any], str]]

#: name → (one-line description, module whose ``run`` is the benchmark, names of the options it takes).
BENCHMARKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "wire": ("bytes per event in each encoding (HTTP+JSON, MSC3079, compact, framed)", "lowband.gateway.bench.wire", ()),
    "link": ("bytes on the air, handshake, goodput and reading-to-sync latency at 100 bps, LoRa airtime",
             "lowband.gateway.bench.link", ()),
    "firmware": ("peak heap, .mpy size, handshake and per-reading CPU time of the device stack on the MicroPython unix port",
                 "lowband.gateway.bench.firmware", ("messages", "rounds")),
    "mqtt": ("MQTT to room events/s, durable, against raw Mosquitto QoS 1 in the same run; lost and duplicated",
             "lowband.gateway.bench.mqtt", ("messages", "seconds")),
    "homeserver": (
        "sends/s, send-to-sync latency and memory, side by side with a real Synapse",
        "lowband.gateway.bench.homeserver",
        ("only", "messages", "seconds", "latency_rounds", "database"),
    ),
    "storage": (
        ("bytes on disk per telemetry event and per text message (SQLite, PostgreSQL, Synapse on both), send, "
         "/sync and /messages latency as the store grows, sends/s, reads/s, initial /syncs/s and long-poll "
         "wake-ups with 1, 2 and 4 gateway processes on PostgreSQL"),
        "lowband.gateway.bench.storage",
        ("only", "messages", "seconds", "latency_rounds", "database", "events"),
    ),
    "federation": (
        ("three gateways replicating a room (events/s, send-to-remote-sync latency, catch-up of a restarted "
         "gateway after 1,000 and 100,000 missed events, memory, lost), Synapse to Synapse in the same run"),
        "lowband.gateway.bench.federation",
        ("only", "messages", "latency_rounds", "catch_up", "synapse_catch_up"),
    ),
    "appservice": (
        ("events/s pushed to a bridge (an application service inside the bench) and send-to-bridge latency "
         "(median, p99), lost and duplicated, memory, side by side with a real Synapse pushing to the same bridge"),
        "lowband.gateway.bench.appservice",
        ("only", "messages", "seconds", "latency_rounds"),
    ),
    "ble": (
        ("BLE adverts → room events: adverts/s and advert-to-event latency (median, p99) with 500 simulated BTHome "
         "v2 sensors (real packets, 1 in 5 encrypted) in an in-process gateway, events and lost; anchor: the "
         "decoder alone"),
        "lowband.gateway.bench.ble",
        ("sensors", "messages", "seconds"),
    ),
    "coap": (
        ("bytes on the wire (request + response, all framing) for login, send, 10 idle minutes and a sync of 5 "
         "messages: HTTP/1.1+JSON (matrix-nio), MSC3079 CoAP+CBOR, compact mode in a Noise session; the compact "
         "send's time at 100 bps"),
        "lowband.gateway.bench.coap",
        ("seconds", "json"),
    ),
}


def runner(name: str) -> Runner:
    """Import benchmark ``name``'s module and return its ``run``; KeyError for an unknown name."""
    function: Runner = importlib.import_module(BENCHMARKS[name][1]).run
    return function


def register(subparsers: Any) -> None:
    """Add ``bench``."""
    names = "; ".join(f"{name}: {desc}" for name, (desc, _, _) in BENCHMARKS.items())
    bench = subparsers.add_parser(
        "bench",
        help="run a benchmark and print its numbers",
        description=f"Run one benchmark. Available: {names}.",
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    bench.add_argument("--only", choices=("lowband", "synapse"),
                       help="homeserver, federation, appservice, storage: measure one side only")  # fmt: skip
    bench.add_argument("--database", metavar="URL",
                       help="homeserver, storage: a postgresql:// URL; our gateway runs in a fresh schema of it "
                            "(bench_<pid>_<n>) and Synapse in a fresh database on the same server, both dropped "
                            "afterwards (homeserver: both on PostgreSQL instead of SQLite; storage: the PostgreSQL "
                            "side, default postgresql://postgres@127.0.0.1:5432/test when it answers)")  # fmt: skip
    bench.add_argument("--events", metavar="N,N,...",
                       help="storage: the stored-event counts latency is measured at (default 10000,100000; "
                            "the store is filled at about 2,000 events/s)")  # fmt: skip
    bench.add_argument("--messages", type=int,
                       help="homeserver, mqtt, federation, appservice, storage: how many messages (homeserver: per phase; "
                            "federation: replicated across the gateways, default 3000; appservice: the burst sent "
                            "by 8 users at once, default 2000; ble: readings per sensor in the flood phase, "
                            "default 10; storage: telemetry notices, then as many text messages, sent to each server "
                            "for the bytes on disk, default 2000)")  # fmt: skip
    bench.add_argument("--seconds", type=float,
                       help="homeserver, mqtt, appservice, ble, storage: at most this long (homeserver: per phase; appservice: "
                            "sending the burst, default 30; ble: the paced latency phase, default 10; coap: the "
                            "measured idle HTTP long-poll, default 30; storage: the sends/s phase, default 5)")  # fmt: skip
    bench.add_argument("--latency-rounds", type=int,
                       help="homeserver, federation, appservice, storage: latency samples (appservice: paced messages, "
                            "each sent once the previous one reached the bridge, default 100; storage: samples of "
                            "each latency at each size, default 30)")  # fmt: skip
    bench.add_argument("--catch-up", type=int,
                       help="federation: events a killed gateway misses in the big catch-up (default 100000; 0 skips it)")
    bench.add_argument("--synapse-catch-up", type=int,
                       help="federation: the same big catch-up on Synapse (default 0: skipped, it takes many minutes)")
    bench.add_argument("--rounds", type=int, help="firmware: timing repetitions")
    bench.add_argument("--sensors", type=int, help="ble: simulated sensors (default 500)")
    bench.add_argument("--plot", metavar="FILE.png",
                       help="also draw what was measured beside its anchor (with the ratios) as a PNG; needs "
                            "matplotlib: pip install 'lowband[plot]'. Checked before the benchmark runs")  # fmt: skip
    bench.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``bench``."""
    _, _, accepted = BENCHMARKS[args.name]
    options = {name: getattr(args, name) for name in accepted if getattr(args, name) is not None}
    given = [name for name in ("only", "messages", "seconds", "latency_rounds", "rounds", "catch_up", "synapse_catch_up",
                               "sensors", "database", "events") if getattr(args, name) is not None]  # fmt: skip
    unsupported = [name for name in given if name not in accepted]
    if unsupported:
        sys.stderr.write(f"lowband: error: bench {args.name} takes no --{unsupported[0].replace('_', '-')}\n")
        return 2
    plot_path = Path(args.plot) if args.plot else None
    if plot_path is not None and not _plot_ready(args.name, plot_path):
        return 2
    from lowband.gateway.bench.homeserver import BenchError  # every benchmark's one-line failure
    from lowband.gateway.cli import progress

    function = runner(args.name)
    try:
        # The benchmarks report their phases as lines on stderr; on a terminal each becomes a spinner.
        phases = progress.phases(enabled=progress.interactive(machine_output=args.json))
        with phases as phase_lines, contextlib.redirect_stderr(phase_lines):
            result, table = function(**options)
    except BenchError as exc:
        sys.stderr.write(f"lowband: bench {args.name} failed: {exc}\n")
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(table)
    sys.stdout.flush()
    if plot_path is not None:
        from lowband.gateway.bench import plot

        try:
            plot.write_plot(args.name, result, plot_path)
        except OSError as exc:
            sys.stderr.write(f"lowband: bench {args.name}: could not write the plot {plot_path}: {exc}\n")
            return 1
        sys.stderr.write(f"lowband: bench {args.name}: plot written to {plot_path}\n")
    return 0


def _plot_ready(name: str, path: Path) -> bool:
    """Whether ``--plot PATH`` can be honoured; says why not on stderr (before a long run, not after it)."""
    from lowband.gateway.bench import plot

    reason = None
    if name not in plot.DESCRIPTIONS:
        reason = f"bench {name} has no plot"
    else:
        try:
            plot.require_matplotlib()
            plot.check_writable(path)
        except plot.PlotUnavailable as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"--plot {path}: cannot write there ({exc.strerror or exc})"
        if reason is None and path.suffix.lower() != ".png":
            reason = f"--plot writes a PNG: give a file name ending in .png, not {path.name!r}"
    if reason is not None:
        sys.stderr.write(f"lowband: error: {reason}\n")
    return reason is None
