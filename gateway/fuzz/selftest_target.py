"""A target that crashes on purpose, so the tests can see ``lowband fuzz`` report a crash.

It is an ordinary target run the ordinary way (subprocess, libFuzzer,
artifact, traceback); only its decoder is fake. Any input starting with
``crash`` raises ``ZeroDivisionError``, which no property allows.
"""

from __future__ import annotations

from lowband.gateway.fuzz.target import Target


def _decode(data: bytes) -> int:
    if data.startswith(b"crash"):
        return len(data) // 0
    return len(data)


def check(data: bytes) -> None:
    """Crashes for inputs starting with ``crash``; returns for every other input."""
    _decode(data)


SELFTEST_CRASH = Target(
    name="selftest_crash",
    summary="a fake decoder that divides by zero on inputs starting with 'crash' (for the CLI's tests)",
    prop="never raises (false on purpose)",
    errors=(),
    check=check,
    seeds=lambda: [b"hello"],
    max_len=64,
    hidden=True,
)
