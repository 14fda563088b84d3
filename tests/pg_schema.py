"""A PostgreSQL schema of one test's own, for the tests that open a PostgreSQL store themselves.

The server is the suite's (``LOWBAND_TEST_DATABASE_URL``) or the development one at 127.0.0.1:5432; a test
using :func:`fresh_schema` is skipped, saying why, where none answers. The schema is named with the run's
prefix (conftest drops what a run left behind) and dropped when the test ends.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

POSTGRES_URL = os.environ.get("LOWBAND_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
_serial = itertools.count()


def unreachable() -> str | None:
    """Why PostgreSQL cannot be used here, or None."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed: {exc}"
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:  # nothing listening, refused, no such database
        return f"no PostgreSQL at {POSTGRES_URL}: {exc}"
    return None


def fresh_schema(tag: str) -> Iterator[str]:
    """A schema name not used before in this run (for a fixture to yield from); dropped afterwards."""
    reason = unreachable()
    if reason:
        pytest.skip(reason)
    import psycopg

    os.environ["LOWBAND_TEST_POSTGRES_USED"] = POSTGRES_URL  # conftest drops the run's schemas at the end too
    name = f"{os.environ.get('LOWBAND_TEST_SCHEMA_PREFIX', 't_')}{tag}_{os.getpid()}_{next(_serial)}"
    yield name
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
