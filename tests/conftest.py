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


# The suite on PostgreSQL (docs/storage.md): LOWBAND_TEST_DATABASE_URL=postgresql://... makes every store opened
# through app.open_store a schema of that database, one per data dir, named with this run's prefix (gateways the
# tests start inherit it) and dropped when the run ends; so are those of tests that open a PostgreSQL store
# themselves (they set LOWBAND_TEST_POSTGRES_USED to the URL).
os.environ["LOWBAND_TEST_SCHEMA_PREFIX"] = f"t{os.getpid()}_"


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("LOWBAND_TEST_DATABASE_URL"):
        return
    skip = pytest.mark.skip(reason="reads or writes the SQLite file itself (sqlite_only); the run is on PostgreSQL")
    for item in items:
        if "sqlite_only" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    url = os.environ.get("LOWBAND_TEST_DATABASE_URL") or os.environ.get("LOWBAND_TEST_POSTGRES_USED")
    prefix = os.environ.get("LOWBAND_TEST_SCHEMA_PREFIX")
    if not url or not prefix:
        return
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        names = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,))]
        for name in names:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture(scope="session")
def ctx():
    from lowband.codecs.context import load_context

    return load_context(DATA / "context_v1.json")
