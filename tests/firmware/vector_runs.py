"""Running a vector script (CPython or MicroPython) and reading its summary line; the firmware on CPython."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

FIRMWARE = Path(__file__).resolve().parent.parent.parent / "firmware"

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


def load_script(path: Path) -> ModuleType:
    """A vector script loaded as a module (it is also run as a program)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def host_cryptolib(crypto_vectors: ModuleType) -> Iterator[None]:
    """Import firmware modules on CPython meanwhile: firmware/ on sys.path, the cryptolib stand-in of
    tests/firmware/firmware_crypto_vectors.py registered.

    The stand-in is unregistered again afterwards: the firmware modules keep
    their own reference, and nothing else in the test process should find a
    module named cryptolib.
    """
    had = "cryptolib" in sys.modules
    crypto_vectors.install_host_cryptolib()
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    try:
        yield
    finally:
        if not had:
            sys.modules.pop("cryptolib", None)
