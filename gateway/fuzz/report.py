"""Reading libFuzzer's output (as atheris runs it) into progress and a summary. Sans-I/O.

Feed :class:`FuzzLog` the lines the runner prints, in order. It keeps the
last coverage figures (libFuzzer's ``cov:`` — edges of instrumented code
reached — and ``ft:`` — features, finer than edges), the final statistics
(``-print_final_stats=1``), the seed, and for a finding its kind, the
Python traceback atheris printed and the file libFuzzer saved the input to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)(?: corp: (\d+)/\S+)?.*?exec/s: (\d+) rss: (\d+)Mb")
_DONE = re.compile(r"^Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")
_SEED = re.compile(r"^INFO: Seed: (\d+)")
_ARTIFACT = re.compile(r"Test unit written to (.+)$")
_ERROR = re.compile(r"^==\d+== ERROR: libFuzzer: (.+)$")
_PY_EXCEPTION = "=== Uncaught Python exception: ==="


@dataclass
class Progress:
    """One status line: inputs run so far and coverage."""

    runs: int
    event: str  # INITED, NEW, REDUCE, pulse, DONE
    cov: int
    ft: int
    corpus: int
    exec_per_s: int
    rss_mb: int


@dataclass
class FuzzLog:
    """What a run's output said so far."""

    seed: int | None = None
    last: Progress | None = None
    done_runs: int | None = None
    done_seconds: int | None = None
    stats: dict[str, int] = field(default_factory=dict)
    finding: str | None = (
        None  # libFuzzer's words: "fuzz target exited", "timeout after 5 seconds", "out-of-memory ..."
    )
    artifact: str | None = None
    traceback: list[str] = field(default_factory=list)
    _in_traceback: bool = False

    def feed(self, line: str) -> Progress | None:
        """Take one line (without its newline); returns the Progress it carried, if any."""
        status = _STATUS.match(line)
        if status:
            runs, event, cov, ft, corpus, rate, rss = status.groups()
            self.last = Progress(int(runs), event, int(cov), int(ft), int(corpus or 0), int(rate), int(rss))
            return self.last
        if line.strip() == _PY_EXCEPTION:
            self._in_traceback = True
            self.traceback = []
            return None
        error = _ERROR.match(line)
        if error:
            self._in_traceback = False
            self.finding = error.group(1).strip()
            return None
        if self._in_traceback:
            self.traceback.append(line)
            return None
        for pattern, action in (
            (_SEED, self._seed),
            (_DONE, self._done),
            (_STAT, self._stat),
            (_ARTIFACT, self._artifact),
        ):
            found = pattern.search(line) if pattern is _ARTIFACT else pattern.match(line)
            if found:
                action(found)
                break
        return None

    def _seed(self, found: re.Match[str]) -> None:
        self.seed = int(found.group(1))

    def _done(self, found: re.Match[str]) -> None:
        self.done_runs, self.done_seconds = int(found.group(1)), int(found.group(2))

    def _stat(self, found: re.Match[str]) -> None:
        self.stats[found.group(1)] = int(found.group(2))

    def _artifact(self, found: re.Match[str]) -> None:
        self.artifact = found.group(1).strip()

    @property
    def runs(self) -> int:
        """Inputs executed: the final statistic, else the last status line."""
        if "number_of_executed_units" in self.stats:
            return self.stats["number_of_executed_units"]
        return self.last.runs if self.last else 0

    def summary(self, target: str, seconds: float, exit_status: int) -> dict[str, Any]:
        """The figures of a finished run, as a JSON-able dict."""
        rate = self.runs / seconds if seconds > 0 else 0.0
        return {
            "target": target,
            "seed": self.seed,
            "inputs": self.runs,
            "seconds": round(seconds, 1),
            "exec_per_s": round(rate),
            "cov": self.last.cov if self.last else 0,
            "ft": self.last.ft if self.last else 0,
            "corpus": self.last.corpus if self.last else 0,
            "new_units": self.stats.get("new_units_added", 0),
            "peak_rss_mb": self.stats.get("peak_rss_mb", self.last.rss_mb if self.last else 0),
            "crashes": 1 if self.finding or self.artifact else 0,
            "finding": self.finding,
            "artifact": self.artifact,
            "exit_status": exit_status,
        }
