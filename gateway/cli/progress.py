"""Progress where a user waits: a bar for work of known size, a spinner per phase for the rest.

Both draw with ``rich`` on stderr, and only when stderr is a terminal (and
``TERM`` is not ``dumb``) and the command was not asked for machine-readable
output: in a pipe, a log or under ``--json`` they fall back to plain lines
(or nothing), so stdout and logs stay clean.

* :func:`meter` — a bar toward a known total (bytes or items), e.g. the
  files ``lowband device flash`` copies, the packages it compiles, or the
  tables and rows a ``lowband db migrate`` (issue 20) copies. Without a
  terminal, each step can still be a plain line on a stream the caller
  names.
* :func:`phases` — a text stream whose every line starts a new phase: on a
  terminal each line gets a spinner until the next one comes, then a tick
  and its duration. The benchmarks report their phases as lines on stderr
  (they sit below the CLI and do not import it), so ``lowband bench``
  points stderr at this stream while one runs; :meth:`PhaseLines.start`
  does the same from code.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, TextIO, cast

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def interactive(stream: TextIO | None = None, *, machine_output: bool = False) -> bool:
    """True when progress may be drawn on ``stream`` (default stderr).

    False under ``machine_output`` (``--json``), when the stream is not a
    terminal, or when ``TERM`` is ``dumb``.
    """
    stream = sys.stderr if stream is None else stream
    if machine_output or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False


class Meter:
    """Progress toward a known total; use through :func:`meter`."""

    def __init__(self, description: str, total: float, steps: int | None, plain: TextIO | None,
                 progress: Progress | None, task: TaskID | None) -> None:  # fmt: skip
        self.description = description
        self.total = total
        self.steps = steps
        self.done = 0.0
        self.step = 0
        self._plain = plain
        self._progress = progress
        self._task = task

    def advance(self, amount: float = 1, note: str = "") -> None:
        """Count ``amount`` more done (one step) and show ``note`` (e.g. the file just written)."""
        if amount < 0:
            raise ValueError(f"progress cannot go back ({amount})")
        self.done += amount
        self.step += 1
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=amount, note=note)
        elif self._plain is not None:
            percent = int(self.done * 100 // self.total) if self.total else 100
            counter = f"[{self.step}/{self.steps}]" if self.steps else f"{self.description}:"
            self._plain.write(f"{counter} {note}  {percent}%\n" if note else f"{counter} {percent}%\n")
            self._plain.flush()


@contextlib.contextmanager
def meter(
    description: str,
    total: float,
    *,
    unit: Literal["bytes", "items"] = "items",
    steps: int | None = None,
    enabled: bool | None = None,
    plain: TextIO | None = None,
    stream: TextIO | None = None,
) -> Iterator[Meter]:
    """A progress bar toward ``total`` (bytes: with size and speed; items: ``done/total``) while the block runs.

    ``enabled`` None means :func:`interactive` on ``stream`` (default
    stderr). When not enabled, every :meth:`Meter.advance` writes a plain
    line ``[step/steps] note  NN%`` to ``plain`` if given, else nothing.
    The bar is left on screen, complete, when the block ends. Raises
    ValueError for a negative total.
    """
    if total < 0:
        raise ValueError(f"a negative total ({total})")
    stream = sys.stderr if stream is None else stream
    if not (interactive(stream) if enabled is None else enabled):
        yield Meter(description, total, steps, plain, None, None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    amount = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), *amount, TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
        console=Console(file=stream), redirect_stdout=False, redirect_stderr=False,
    )  # fmt: skip
    with progress:
        task = progress.add_task(description, total=total or None, note="")
        yield Meter(description, total, steps, None, progress, task)


class PhaseLines(io.TextIOBase):
    """A text stream whose every complete line starts a new phase; see :func:`phases`."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self._progress = progress
        self._pending = ""
        self._current: TaskID | None = None

    def writable(self) -> bool:
        """Always: this stream takes text."""
        return True

    def write(self, text: str) -> int:
        """Take ``text``; each line it completes becomes the current phase. Returns len(text)."""
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            if line.strip():
                self.start(line.rstrip())
        return len(text)

    def start(self, phase: str) -> None:
        """End the current phase (a tick and its time) and show ``phase`` with a spinner."""
        self.finish()
        self._current = self._progress.add_task(phase, total=None)

    def finish(self, failed: bool = False) -> None:
        """End the current phase, if any; ``failed`` leaves it marked as such instead of ticked."""
        if self._current is None:
            return
        task = self._current
        self._current = None
        if failed:
            description = next((t.description for t in self._progress.tasks if t.id == task), "")
            self._progress.update(task, description=f"{description} — failed")
            self._progress.stop_task(task)
        else:
            self._progress.update(task, total=1, completed=1)

    def flush(self) -> None:
        """A partial line stays pending until its newline comes."""


@contextlib.contextmanager
def phases(*, enabled: bool | None = None, stream: TextIO | None = None) -> Iterator[TextIO]:
    """A stream for phase lines while the block runs (see the module docstring).

    On a terminal (``enabled`` None: :func:`interactive` on ``stream``,
    default stderr) every line written becomes a phase with a spinner and
    its elapsed time, ticked when the next one starts or the block ends.
    Otherwise ``stream`` itself is yielded, so the lines appear unchanged.
    """
    stream = sys.stderr if stream is None else stream
    if not (interactive(stream) if enabled is None else enabled):
        yield stream
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
        console=Console(file=stream, highlight=False), redirect_stdout=False, redirect_stderr=False,
    )  # fmt: skip
    with progress:
        lines = PhaseLines(progress)
        try:
            yield cast(TextIO, lines)  # typeshed's TextIO is a class, not a protocol; PhaseLines is a text stream
        except BaseException:
            lines.finish(failed=True)
            raise
        lines.finish()
