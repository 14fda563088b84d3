"""Shared fixtures and hypothesis strategies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import strategies as st

DATA = Path(__file__).parent / "data"

_INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
json_scalars = st.none() | st.booleans() | _INT64 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)


def json_values(max_leaves: int = 30) -> st.SearchStrategy:
    """Any JSON value (the shapes json.loads returns), of bounded size."""
    return st.recursive(
        json_scalars,
        lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
        max_leaves=max_leaves,
    )


def load_json(name: str):
    return json.loads((DATA / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def ctx():
    from lowband.codecs.context import load_context

    return load_context(DATA / "context_v1.json")
