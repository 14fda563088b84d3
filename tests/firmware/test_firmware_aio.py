"""The firmware's asyncio loop on the MicroPython unix port: an allocation failure in the link's tasks.

Found: a MemoryError in the pump task (a handshake's big integers on a
64 KiB heap) ended the task silently; readings piled up unsent and arun()
waited for ever for the link to settle.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lowband.sim.firmware import FIRMWARE, MICROPYTHON

SCRIPT = Path(__file__).with_name("firmware_aio_memory.py")

pytestmark = pytest.mark.skipif(not MICROPYTHON.exists(), reason="the MicroPython unix port is not installed")


def test_a_transient_memory_error_is_retried_and_a_lasting_one_is_raised_not_hung():
    done = subprocess.run([str(MICROPYTHON), "-X", "heapsize=1m", str(SCRIPT), str(FIRMWARE)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    lines = done.stdout.splitlines()
    assert lines == ["transient completed 0", "lasting raised MemoryError"], (lines, done.stderr[-2000:])
