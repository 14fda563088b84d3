"""``lowband fuzz TARGET --runs N``: coverage-guided fuzzing of one decoder, with a summary.

libFuzzer owns the process it fuzzes in (it ends it with ``exit``), so
each run is a subprocess, ``python -m lowband.gateway.fuzz.runner``; this
command prepares its corpus (the target's seeds plus ``--corpus``), shows
its progress, and ends with the figures: inputs run, exec/s, coverage
(libFuzzer's ``cov:`` and ``ft:``), crashes. A crash saves the input and
its Python traceback under ``--artifacts`` and exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lowband.gateway.cli.main import UsageError

EXIT_FINDING = 1
EXIT_USAGE = 2

_DESCRIPTION = """\
Fuzz one decoder of remote input with atheris (libFuzzer for Python).
Each target feeds the fuzzer's bytes to a decoder and checks its property:
any input gives a value or the decoder's one documented error, and where it
applies a round trip holds (decode(encode(x)) == x). Anything else is a
crash: the input is saved under --artifacts with its traceback, the run
stops and the exit status is 1. Keep a crash as a regression vector in
tests/fuzz/vectors/TARGET/ (docs/fuzzing.md).

The summary gives inputs run, exec/s and coverage: cov is the number of
code edges of the instrumented lowband modules reached, ft libFuzzer's finer
"features" (edge counts and comparisons). Needs atheris:
pip install 'lowband[fuzz]'."""


def register(subparsers: Any) -> None:
    """Add ``fuzz``."""
    fuzz = subparsers.add_parser(
        "fuzz",
        help="fuzz a decoder of remote input (coverage-guided, atheris) and report coverage and crashes",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fuzz.add_argument("target", nargs="?", help="which decoder (see --list)")
    fuzz.add_argument("--list", action="store_true", help="list the targets and their properties, then exit")
    fuzz.add_argument("--runs", type=_positive, default=100_000, help="inputs to run (default 100000)")
    fuzz.add_argument("--seed", type=int, help="libFuzzer's random seed, to repeat a run (default: from the clock; "
                      "the summary says which)")  # fmt: skip
    fuzz.add_argument("--corpus", type=Path, help="corpus directory: read at the start, new inputs added to it "
                      "(default: a temporary one, starting from the target's seeds)")  # fmt: skip
    fuzz.add_argument("--timeout", type=_positive, default=10, metavar="SECONDS",
                      help="one input running longer than this is a finding (default 10)")  # fmt: skip
    fuzz.add_argument("--max-time", type=_positive, metavar="SECONDS", help="stop after this long even if --runs "
                      "are not done")  # fmt: skip
    fuzz.add_argument(
        "--max-len", type=_positive, metavar="BYTES", help="largest input to build (default: the target's)"
    )
    fuzz.add_argument("--artifacts", type=Path, default=Path("fuzz-artifacts"),
                      help="where crashing inputs and their tracebacks go, under TARGET/ (default ./fuzz-artifacts)")  # fmt: skip
    fuzz.add_argument("--verbose", action="store_true", help="show libFuzzer's own output as it comes")
    fuzz.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    fuzz.set_defaults(handler=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    """Handle ``lowband fuzz``; returns the exit status (0 clean, 1 a finding, 2 usage)."""
    from lowband.gateway.fuzz import registry
    from lowband.gateway.fuzz.runner import INSTALL_HINT

    if args.list:
        for name in registry.visible():
            target = registry.load(name)
            print(f"{name:15} {target.summary}")
            print(f"{'':15} property: {target.prop}; documented error: {', '.join(target.errors)}")
        return 0
    if args.target is None:
        raise UsageError("name a target (lowband fuzz --list shows them)")
    if args.target not in registry.TARGETS:
        raise UsageError(f"unknown fuzz target {args.target!r}; known: {', '.join(registry.visible())}")
    if importlib.util.find_spec("atheris") is None:
        sys.stderr.write(INSTALL_HINT + "\n")
        return EXIT_USAGE
    target = registry.load(args.target)
    artifacts = (args.artifacts / target.name).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"lowband-fuzz-{target.name}-") as scratch:
        seeds = Path(scratch, "seeds")
        seeds.mkdir()
        for index, seed in enumerate(target.seeds()):
            (seeds / f"seed-{index}").write_bytes(seed)
        corpus = args.corpus or Path(scratch, "corpus")
        corpus.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "lowband.gateway.fuzz.runner", target.name, f"-runs={args.runs}",
                   f"-timeout={args.timeout}", f"-max_len={args.max_len or target.max_len}", "-print_final_stats=1",
                   f"-artifact_prefix={artifacts}{os.sep}", str(corpus), str(seeds)]  # fmt: skip
        if args.seed is not None:
            command.insert(5, f"-seed={args.seed}")
        if args.max_time:
            command.insert(5, f"-max_total_time={args.max_time}")
        status = _supervise(target.name, command, args)
    for folder in (artifacts, artifacts.parent):  # a clean run leaves no empty folders behind
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return status


def _supervise(name: str, command: list[str], args: argparse.Namespace) -> int:
    from lowband.gateway.fuzz.report import FuzzLog

    log = FuzzLog()
    print(f"fuzz {name}: {args.runs} inputs", flush=True)
    started = time.monotonic()
    shown = 0.0
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    assert process.stdout is not None
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            if args.verbose:
                print(line, flush=True)
            progress = log.feed(line)
            now = time.monotonic()
            # A line every few seconds at most: libFuzzer writes one per new input found.
            if progress and not args.verbose and (progress.event in ("INITED", "DONE") or now - shown >= 5):
                shown = now
                print(f"  {progress.runs:>10} inputs  cov {progress.cov:>5}  ft {progress.ft:>6}  corpus "
                      f"{progress.corpus:>5}  {progress.exec_per_s:>6} exec/s  {progress.rss_mb} MB", flush=True)  # fmt: skip
        status = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait(timeout=10)
        raise
    summary = log.summary(name, time.monotonic() - started, status)
    if log.artifact and log.traceback:
        trace = Path(log.artifact + ".txt")
        trace.write_text("\n".join(log.traceback) + "\n")
        summary["traceback"] = str(trace)
    _print_summary(summary, log)
    if args.json:
        print(json.dumps(summary))
    return EXIT_FINDING if summary["crashes"] or status != 0 else 0


def _print_summary(summary: dict[str, Any], log: Any) -> None:
    print(f"{summary['target']}: {summary['inputs']} inputs in {summary['seconds']} s ({summary['exec_per_s']} exec/s), "
          f"cov {summary['cov']}, ft {summary['ft']}, corpus {summary['corpus']}, seed {summary['seed']}")  # fmt: skip
    if not summary["crashes"]:
        if summary["exit_status"] != 0:
            print(f"the fuzzer ended with status {summary['exit_status']} without a finding; run with --verbose")
        else:
            print("crashes: 0")
        return
    print(f"CRASH ({summary['finding']}): input saved to {summary['artifact']}")
    if log.traceback:
        print("\n".join(log.traceback[-25:]))
        print(f"traceback saved to {summary.get('traceback')}")
    print(f"repeat it: python -m lowband.gateway.fuzz.runner {summary['target']} {summary['artifact']}")
