"""``limit_retention``: glibc's malloc told not to keep freed memory, unless the environment says otherwise.

What it saves is measured by ``lowband bench homeserver`` (RSS after load), not here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lowband.gateway.cli.allocator import limit_retention

OVERRIDES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
GLIBC = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_sets_the_thresholds_and_one_arena():
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    out = subprocess.run([sys.executable, "-c", "from lowband.gateway.cli.allocator import limit_retention as f; print(f())"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert "mmap threshold 1024 KiB, trim threshold 2048 KiB, 1 arena" in out.stdout


@pytest.mark.parametrize("name", OVERRIDES)
def test_the_environment_wins(monkeypatch, name):
    monkeypatch.setenv(name, "2")
    assert "kept" in limit_retention()
