"""The project's own rules, checked by tools: the import contract of the layers, and mypy.

Both read their configuration from ``pyproject.toml`` (``[tool.importlinter]``,
``[tool.mypy]``), so `make test` and CI fail when a module imports a layer
above it or breaks the typing baseline. Also here: property tests replay the
same examples on every run. Run just these with
``.venv/bin/python -m pytest tests/cli/test_contracts.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# What mypy checks, and how each part is judged: every error belongs to the
# longest of these names that holds its module. Strictness itself is set in
# pyproject.toml; these only say which test reports it.
MYPY_PACKAGES = ["lowband.gateway", "lowband.codecs", "lowband.hardware", "lowband.sim"]
MYPY_PARTS = [
    "lowband.codecs",
    "lowband.hardware",
    "lowband.gateway.matrix",
    "lowband.gateway",
    "lowband.sim",
]
# Where mypy finds lowband/<package>, and its own cache beside it: a fixed
# place, because the incremental cache keeps the paths of the errors it reports.
MYPY_PATH = ROOT / ".mypy_cache" / "lowband-test" / "path"
MYPY_CACHE = ROOT / ".mypy_cache" / "lowband-test" / "cache"
_MYPY_LINE = re.compile(r"^(?P<path>[^:\s]+\.pyi?):\d+: (?P<kind>error|note): ")


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}: pip install -e '.[dev]'")
    return str(path)


def test_the_checked_code_is_this_tree() -> None:
    """Both tools find lowband.* through the installed package: it must be the editable install of this tree."""
    import lowband.gateway

    assert Path(lowband.gateway.__file__).resolve().parent == ROOT / "gateway", (
        f"lowband.gateway is imported from {lowband.gateway.__file__}, not from this tree: "
        "the contracts would check another copy (pip install -e '.[dev]')"
    )


def test_import_contracts_hold() -> None:
    """`lint-imports` keeps every contract in pyproject.toml; its report is the failure message."""
    result = subprocess.run(
        [_tool("lint-imports"), "--no-logo", "--no-cache", str(ROOT / "pyproject.toml")],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report = result.stdout + result.stderr
    assert result.returncode == 0, report


class MypyReport(NamedTuple):
    lines: dict[str, list[str]]  # error and note lines by part of MYPY_PARTS; "" for those of no part
    command: str  # how to run the same check by hand


@pytest.fixture(scope="module")
def mypy_report() -> MypyReport:
    """Run mypy once over MYPY_PACKAGES and sort what it says by the part of MYPY_PARTS it is about.

    mypy does not see through setuptools' editable import hook, so the
    folders are linked as lowband/<package> under MYPY_PATH, given to mypy as
    MYPYPATH; paths in the report are turned back into the tree's own. Lines
    about no part (a note on the configuration, a crash) go under "".
    """
    folders = PROJECT["tool"]["setuptools"]["package-dir"]
    for package in MYPY_PACKAGES:
        link, folder = MYPY_PATH / "lowband" / package.split(".")[1], folders[package]
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and link.resolve() == (ROOT / folder).resolve():
            continue
        link.unlink(missing_ok=True)
        with contextlib.suppress(FileExistsError):  # made meanwhile by another run in this tree
            link.symlink_to(ROOT / folder, target_is_directory=True)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    command += ["--cache-dir", str(MYPY_CACHE), *(arg for package in MYPY_PACKAGES for arg in ("-p", package))]
    result = subprocess.run(
        command,
        check=False,
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(MYPY_PATH)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    parts = sorted((p if isinstance(p, str) else p.values[0] for p in MYPY_PARTS), key=len, reverse=True)
    lines: dict[str, list[str]] = {part: [] for part in parts} | {"": []}
    for line in (result.stdout + result.stderr).splitlines():
        if re.match(r"^(Success: no issues found|Found \d+ errors?) in ", line):
            continue
        part = ""
        match = _MYPY_LINE.match(line)
        if match and (ROOT / match["path"]).is_relative_to(MYPY_PATH):  # mypy gives it relative to ROOT, its cwd
            relative = (ROOT / match["path"]).relative_to(MYPY_PATH)  # lowband/gateway/matrix/events.py
            module = ".".join(relative.with_suffix("").parts)
            part = next((p for p in parts if module == p or module.startswith(p + ".")), "")
            source = Path(folders[".".join(relative.parts[:2])], *relative.parts[2:])  # gateway/matrix/events.py
            line = f"{source}{line[len(match['path']) :]}"
        lines[part].append(line)
    if result.returncode not in (0, 1) or (result.returncode == 1 and not any(lines.values())):
        lines[""].append(f"mypy exited with status {result.returncode}")
    return MypyReport(lines, f"(cd {ROOT} && MYPYPATH={MYPY_PATH} {' '.join(command)})")


def test_mypy_ran_cleanly(mypy_report: MypyReport) -> None:
    """mypy itself finished, and said nothing outside the checked packages (e.g. an unused config section)."""
    assert not mypy_report.lines[""], "\n".join([*mypy_report.lines[""], mypy_report.command])


@pytest.mark.parametrize("part", MYPY_PARTS)
def test_mypy_passes(mypy_report: MypyReport, part: str) -> None:
    """No mypy error in this part of the code, under the flags pyproject.toml sets for it."""
    errors = [line for line in mypy_report.lines[part] if ": error: " in line]
    assert not errors, "\n".join([*mypy_report.lines[part], mypy_report.command])


def test_hypothesis_runs_derandomised() -> None:
    """tests/conftest.py loads a derandomised profile without a database, so a CI failure replays exactly."""
    from hypothesis import settings

    if os.environ.get("HYPOTHESIS_PROFILE", "default") != "default":
        pytest.skip(f"HYPOTHESIS_PROFILE={os.environ['HYPOTHESIS_PROFILE']} chosen on purpose")
    assert settings.default.derandomize is True
    assert settings.default.database is None
