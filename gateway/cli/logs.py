"""Logging of ``lowband serve`` and ``lowband demo``: one line per record, whatever a record quotes.

A message may quote text from outside (a request path, an MQTT topic, a
server name, a device's frame). A newline or another control character in
it would start a line that looks like a record of its own, so the message
part of every line shows them escaped (``\\n``, ``\\x1b``). Tracebacks are
written after the line as usual.
"""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["OneLineFormatter", "setup_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}" if ord(char) < 0x100 else
                                                               f"\\u{ord(char):04x}")  # fmt: skip


class OneLineFormatter(logging.Formatter):
    """A formatter whose message part never spans lines (control characters escaped)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _CONTROL.sub(_escape, record.message)
        return super().formatMessage(record)


def setup_logging(level: int | str) -> None:
    """Log to stderr at ``level`` with :class:`OneLineFormatter` (what basicConfig would do, once)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
