"""The gateway's log lines: text quoted from outside cannot start a line of its own."""

from __future__ import annotations

import logging
import sys

from lowband.gateway.cli.logs import FORMAT, OneLineFormatter


def _line(message: str, *args: object, exc_info: object = None) -> str:
    record = logging.LogRecord("lowband", logging.WARNING, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]
    return OneLineFormatter(FORMAT).format(record)


def test_a_forged_line_in_a_quoted_path_stays_on_the_record_s_line():
    path = "/_matrix/x\n2026-12-04 12:00:00,000 INFO lowband: admin logged in\r"
    text = _line("error handling %s %s", "GET", path)
    assert "\n" not in text and "\r" not in text
    assert text.endswith("error handling GET /_matrix/x\\n2026-12-04 12:00:00,000 INFO lowband: admin logged in\\r")


def test_other_control_characters_are_escaped_and_text_is_kept():
    text = _line("topic %s", "a\x1b[31mred\x00\u2028b\tc é 温度")
    assert text.endswith("topic a\\x1b[31mred\\x00\\u2028b\\tc é 温度")


def test_a_traceback_still_follows_the_line():
    try:
        raise ValueError("boom")
    except ValueError:
        text = _line("failed on %s", "x\ny", exc_info=sys.exc_info())
    first, *rest = text.split("\n")
    assert first.endswith("failed on x\\ny") and rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"
