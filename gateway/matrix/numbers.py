"""Decimal integers in text from outside (paths, query parameters, tokens, ports): ASCII digits only.

``str.isdigit`` also accepts superscripts and other scripts' digits
(``"²".isdigit()`` is true), which ``int`` then refuses (a 500) or reads
(``int("٣") == 3``); and ``int`` refuses text of more than 4,300 digits.
Every parser of a number from a request uses :func:`parse_digits`, so such
text is the caller's one documented error.
"""

from __future__ import annotations

import re

__all__ = ["parse_digits"]

_DIGITS = re.compile(r"[0-9]+")


def parse_digits(text: str, max_digits: int = 18) -> int | None:
    """The value of ``text`` if it is 1 to ``max_digits`` ASCII digits (no sign, no spaces), else None."""
    if not 0 < len(text) <= max_digits or not _DIGITS.fullmatch(text):
        return None
    return int(text)
