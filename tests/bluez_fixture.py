"""The fake BlueZ fixture for bleak on a private D-Bus (sim/bluez.py), used by the tests/ble files.

A plugin of tests/conftest.py (``pytest_plugins``), not a conftest.py in
tests/ble: tests import tests/conftest.py as the module ``conftest``, and a
second conftest.py outside a package would take its place.

Where dbus-daemon or Debian's python3-dbusmock is missing the tests that use
``fake_bluez`` are skipped with the reason, except in CI (``.ci/run`` exports
``LOWBAND_REQUIRE_BLUEZ=1``; ``CI`` counts too), where they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lowband.gateway.ble.scanner import SEEN_DEVICES
from lowband.sim.bluez import FakeBluez, fake_bluez_missing


def require_fake_bluez() -> None:
    """Skip (or, in CI, fail) the calling test when the fake BlueZ cannot run here."""
    missing = fake_bluez_missing()
    if missing is None:
        return
    if os.environ.get("LOWBAND_REQUIRE_BLUEZ") or os.environ.get("CI"):
        pytest.fail(f"the fake BlueZ cannot run and CI requires it: {missing}")
    pytest.skip(f"the fake BlueZ cannot run: {missing}")


@pytest.fixture
def fake_bluez(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBluez]:
    """A running fake BlueZ (no adapter yet) that bleak in this process talks to; stopped after the test."""
    require_fake_bluez()
    SEEN_DEVICES.clear()  # BLEDevices heard on another test's bus
    # The bus socket lives in a short /tmp directory: a unix socket path is limited to 107 bytes.
    with FakeBluez() as fake:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", fake.address)
        yield fake
    SEEN_DEVICES.clear()
