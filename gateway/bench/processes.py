"""Servers under test as processes: start, stop, memory, and the error every benchmark reports.

Shared by the benchmarks that run a server as a child process
(``homeserver``, ``mqtt``): a :class:`ServerProcess` runs in its own
session and is stopped as a group; memory is ``VmRSS`` of the process and
all its descendants. Nothing here prints to stdout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowband.gateway.matrix.numbers import parse_digits

STOP_TIMEOUT_S = 15.0


class BenchError(Exception):
    """The benchmark could not measure a server; the message (one line) says why."""


def progress(bench: str, message: str) -> None:
    """One line of progress on stderr (stdout is the benchmark's result)."""
    sys.stderr.write(f"bench {bench}: {message}\n")
    sys.stderr.flush()


def parse_vmrss_kib(status_text: str) -> int:
    """``VmRSS`` in KiB from the text of ``/proc/PID/status``.

    A process without the line (a zombie, a kernel thread) holds no user
    memory, so that is 0. Raises ValueError on a VmRSS line it cannot read.
    """
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) < 2 or parse_digits(parts[1]) is None or (len(parts) > 2 and parts[2] != "kB"):
                raise ValueError(f"unreadable VmRSS line: {line!r}")
            return int(parts[1])
    return 0


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` found through /proc/PID/task/*/children."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            pending.extend(kids)
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MiB."""
    total_kib = 0
    for p in [pid, *_descendants(pid)]:
        try:
            total_kib += parse_vmrss_kib(Path(f"/proc/{p}/status").read_text())
        except FileNotFoundError:
            continue  # exited between listing and reading
    return total_kib / 1024


@dataclass
class ServerProcess:
    """A server under test: how to start it and where its output goes."""

    name: str
    argv: list[str]
    cwd: Path
    log: Path
    version: str
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: "https" for a listener started with a TLS certificate (federating servers)
    scheme: str = "http"
    #: the child's whole environment (None: this process's)
    env: dict[str, str] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process in its own session, output to :attr:`log`."""
        with open(self.log, "ab") as out:
            # Own session: the terminal's Ctrl-C reaches only us, and stop()
            # ends the server and anything it forked as one group.
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                env=self.env,
            )

    def last_log_line(self) -> str:
        try:
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def log_lines(self, words: tuple[str, ...], last: int = 8, width: int = 300) -> list[str]:
        """The last ``last`` lines of the output holding any of ``words``, each cut at ``width`` characters."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        found = [line.strip()[:width] for line in text.splitlines() if any(word in line for word in words)]
        return found[-last:]

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after :data:`STOP_TIMEOUT_S`."""
        self._end(((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)))

    def kill(self) -> None:
        """``kill -9`` the process group at once, as a crash or a power cut would."""
        self._end(((signal.SIGKILL, 10.0),))

    def _end(self, steps: tuple[tuple[signal.Signals, float], ...]) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in steps:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


def lowband_argv() -> list[str]:
    """argv prefix that runs this installation's ``lowband`` command."""
    script = Path(sys.executable).with_name("lowband")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "lowband.gateway.cli.main"]


def run_started(server: ServerProcess, job: Callable[[], Coroutine[Any, Any, Any]], what: str) -> Any:
    """Start ``server``, run ``job()`` in an event loop of its own and return its result; the server is stopped
    whatever happens. A server that cannot be started is a :class:`BenchError` naming ``what``."""
    try:
        server.start()
        return asyncio.run(job())
    except OSError as exc:
        raise BenchError(f"{what} could not be started: {exc}") from exc
    finally:
        server.stop()
