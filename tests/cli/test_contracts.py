"""The project's own rules, checked by tools: the import contract of the layers.

``lint-imports`` reads its contracts from ``pyproject.toml``
(``[tool.importlinter]``), so `make test` and CI fail when a module imports
a layer above it. Run just these with
``.venv/bin/python -m pytest tests/cli/test_contracts.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}: pip install -e '.[dev]'")
    return str(path)


def test_the_checked_code_is_this_tree() -> None:
    """lint-imports finds lowband.* through the installed package: it must be the editable install of this tree."""
    import lowband.gateway

    assert Path(lowband.gateway.__file__).resolve().parent == ROOT / "gateway", (
        f"lowband.gateway is imported from {lowband.gateway.__file__}, not from this tree: "
        "the contract would check another copy (pip install -e '.[dev]')"
    )


def test_import_contracts_hold() -> None:
    """`lint-imports` keeps every contract in pyproject.toml; its report is the failure message."""
    contracts = PROJECT["tool"]["importlinter"]["contracts"]
    result = subprocess.run(
        [_tool("lint-imports"), "--no-logo", "--no-cache", str(ROOT / "pyproject.toml")],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    # Every contract was checked and kept, none skipped.
    assert f"Contracts: {len(contracts)} kept, 0 broken." in report, report


def test_hypothesis_runs_derandomised() -> None:
    """tests/conftest.py loads a derandomised profile without a database, so a CI failure replays exactly."""
    from hypothesis import settings

    if os.environ.get("HYPOTHESIS_PROFILE", "default") != "default":
        pytest.skip(f"HYPOTHESIS_PROFILE={os.environ['HYPOTHESIS_PROFILE']} chosen on purpose")
    assert settings.default.derandomize is True
    assert settings.default.database is None
