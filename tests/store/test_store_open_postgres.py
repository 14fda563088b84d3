"""app.open_store with a PostgreSQL URL: the data dir records its database, refusals are one clear line.

Skipped when no PostgreSQL answers on 127.0.0.1:5432 (CI starts one: .ci/run).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from lowband.gateway.app import DATABASE_MARKER, open_store
from lowband.gateway.config import ConfigError

URL = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_or_skip() -> None:
    try:
        import psycopg

        psycopg.connect(URL, connect_timeout=3).close()
    except Exception as exc:  # not installed, not running
        pytest.skip(f"no PostgreSQL at {URL}: {exc}")


def _schema(tmp_path: Path) -> str:
    return f"t_open_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"


def _drop(schema: str) -> None:
    import psycopg

    with psycopg.connect(URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_the_data_dir_records_its_database_and_refuses_another(tmp_path):
    _postgres_or_skip()
    schema = _schema(tmp_path)
    data = tmp_path / "data"
    url = f"{URL}?schema={schema}"
    try:
        store = open_store(data / "lowband.db", url)
        store.create_user_sync("@a:localhost", "hash", False, 1)
        store.close()
        marker = data / DATABASE_MARKER
        assert marker.read_text().strip() == url
        assert stat.S_IMODE(marker.stat().st_mode) == 0o600  # the URL may hold a password
        assert not (data / "lowband.db").exists()
        again = open_store(data / "lowband.db")  # a tool given only the data dir finds the same store
        try:
            assert again.get_user("@a:localhost") is not None
        finally:
            again.close()
        with pytest.raises(ConfigError, match="is served from the database in"):
            open_store(data / "lowband.db", f"{URL}?schema={schema}x")
    finally:
        _drop(schema)


def test_a_sqlite_data_dir_is_not_switched_silently(tmp_path):
    _postgres_or_skip()
    data = tmp_path / "data"
    data.mkdir()
    (data / "lowband.db").write_bytes(b"")
    with pytest.raises(ConfigError, match="has a SQLite store.*lowband db migrate"):
        open_store(data / "lowband.db", f"{URL}?schema={_schema(tmp_path)}")
    assert not (data / DATABASE_MARKER).exists()


def test_an_unreachable_server_is_one_line_with_the_password_masked(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConfigError) as caught:
        open_store(tmp_path / "data" / "lowband.db", f"postgresql://gw:hunter2@127.0.0.1:{port}/test")
    message = str(caught.value)
    assert "cannot open PostgreSQL database" in message and "hunter2" not in message and "***" in message
    assert not (tmp_path / "data" / DATABASE_MARKER).exists()


def test_a_second_gateway_on_one_schema_is_refused(tmp_path):
    _postgres_or_skip()
    schema = _schema(tmp_path)
    first = open_store(tmp_path / "a" / "lowband.db", f"{URL}?schema={schema}")
    second = open_store(tmp_path / "b" / "lowband.db", f"{URL}?schema={schema}")  # a tool may open it
    try:
        first.claim_serving()  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="another gateway process serves schema"):
            second.claim_serving()  # type: ignore[attr-defined]
    finally:
        first.close()
        second.close()
        _drop(schema)
