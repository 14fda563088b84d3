"""Shared fixtures and hypothesis strategies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st

# Deterministic by default (the same examples on every run, nothing carried over in a
# local database): a CI failure is reproducible. HYPOTHESIS_PROFILE=explore searches afresh.
settings.register_profile("default", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DATA = Path(__file__).parent / "data"

# The fake BlueZ fixture of tests/ble (a conftest.py there would replace this module as ``conftest``).
pytest_plugins = ["bluez_fixture"]

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
