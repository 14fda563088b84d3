"""The homeserver every real-client test in this folder talks to, chosen here in one place.

``start_homeserver`` is the switch: ``start_lowband`` (``lowband serve`` with
registration open, what the suite checks) or ``start_synapse`` (the reference
the clients are known to work with, to tell a client's quirk from ours). ``LOWBAND_E2E_HOMESERVER=lowband|synapse`` overrides it
for one run, and ``LOWBAND_E2E_HOMESERVER=http://127.0.0.1:PORT`` points the
tests at a server already running there (open registration, no rate limits;
not started or stopped here). One server serves the whole folder (package
scope): Synapse takes several seconds to start, and every test registers
users of its own. A failed test's report ends with the server's log.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Generator, Iterator

import pytest

from .homeservers import JS_DIR, Homeserver, start_lowband, start_synapse

#: The homeserver under test: the one line to change.
start_homeserver = start_lowband

_BY_NAME = {"synapse": start_synapse, "lowband": start_lowband}


@pytest.fixture(scope="package")
def homeserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homeserver]:
    """The running homeserver under test, shared by the folder's tests."""
    choice = os.environ.get("LOWBAND_E2E_HOMESERVER", "")
    if choice.startswith("http://"):
        tag = f"{int(time.time()) % 100_000:05d}"  # user names of this run apart from earlier runs' on the same server
        yield Homeserver("external", choice.rstrip("/"), tmp_path_factory.mktemp("homeserver") / "no-log", tag)
        return
    start = _BY_NAME[choice] if choice else start_homeserver
    with start(tmp_path_factory.mktemp("homeserver")) as server:
        yield server


@pytest.fixture(scope="package")
def node_modules() -> None:
    """The pinned npm packages of js/ are installed (``npm ci`` there; ``make test`` and ``.ci/run`` do it)."""
    assert shutil.which("node"), "node is not on PATH (the machine's Node.js runs the js-sdk and Hydrogen tests)"
    missing = [name for name in ("matrix-js-sdk", "hydrogen-view-sdk", "playwright-core")
               if not (JS_DIR / "node_modules" / name / "package.json").exists()]  # fmt: skip
    assert not missing, f"run `npm ci` in {JS_DIR} first (missing: {', '.join(missing)})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used the homeserver gets the end of the server's log as a report section."""
    report = yield
    server = getattr(item, "funcargs", {}).get("homeserver")
    if report.failed and isinstance(server, Homeserver):
        report.sections.append((f"{server.name} log (end)", server.log_tail()))
    return report
