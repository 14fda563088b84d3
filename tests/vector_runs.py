"""Running a vector script (CPython or MicroPython) and reading its summary line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

_SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")


def run_vector_script(cmd: list[str], *, cwd: Path, timeout: float) -> tuple[int, int, str]:
    """Run a vector script; returns (passed, failed, full output).

    The script's last line must be ``N passed, M failed`` and its exit
    status 1 exactly when something failed; nothing may fail.
    """
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    output = f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    match = _SUMMARY.match(lines[-1]) if lines else None
    assert match, f"no 'N passed, M failed' line:\n{output}"
    passed, failed = int(match.group(1)), int(match.group(2))
    assert proc.returncode == (1 if failed else 0), output
    assert failed == 0, output
    return passed, failed, output


def need_tool(tool: Path) -> None:
    """Fail (never skip) when a dev-dependency tool such as micropython is missing."""
    if not tool.exists():
        pytest.fail(
            f"{tool.name} not found at {tool}: it is a dev dependency "
            "(pip install -e '.[dev]'), and these tests must not be skipped"
        )
