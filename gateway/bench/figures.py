"""What the side-by-side benchmarks compute alike: medians, and ratios against the anchor of the same run."""

from __future__ import annotations

import statistics
from typing import Any


def median(values: list[float]) -> float:
    """The median of ``values``; raises ValueError when there are none."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def ratio(figures: dict[str, dict[str, Any]], key: str) -> float | None:
    """lowband / synapse of one figure, rounded; None when a side was not measured or the anchor is 0 or None."""
    ours, theirs = figures.get("lowband"), figures.get("synapse")
    if ours is None or theirs is None:
        return None
    a, b = ours.get(key), theirs.get(key)
    if a is None or not b:
        return None
    return round(float(a) / float(b), 4)
