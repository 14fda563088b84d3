"""``lowband db check`` on a data dir served from PostgreSQL (store/postgres/integrity.py): clean after real use,
each kind of damage found and named, an unreachable server a usage error."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from harness import expect, users_gateway
from test_db_check import V3, _check, _failing, _send

from lowband.gateway.cli.main import main

POSTGRES_URL = os.environ.get("LOWBAND_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def on_postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every store this test opens (its gateway's too) a schema of the test database, dropped at the run's end."""
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - not installed, not running
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc}")
    monkeypatch.setenv("LOWBAND_TEST_DATABASE_URL", POSTGRES_URL)
    os.environ["LOWBAND_TEST_POSTGRES_USED"] = POSTGRES_URL  # conftest drops the run's schemas at the end
    yield


def _schema(data_dir: Path) -> str:
    from lowband.gateway.app import postgres_place

    place = postgres_place(data_dir / "lowband.db")
    assert place is not None
    return place[2]


def _sql(data_dir: Path, statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=10,
                         options=f"-c search_path={_schema(data_dir)}") as conn:  # fmt: skip
        cursor = conn.execute(statement, args)
        return cursor.fetchall() if cursor.description else []


def test_db_check_on_postgres(tmp_path: Path, on_postgres: None) -> None:
    ids: dict[str, str] = {}

    async def run() -> None:
        async with users_gateway(tmp_path, "alice", "bob") as ((alice, bob), _, _):
            room = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)["room_id"]
            expect(await bob.request("POST", f"{V3}/join/{quote(room, safe='')}", {}), 200)
            ids["first"] = await _send(alice, room, {"msgtype": "m.text", "body": "hello lighthouse"})
            ids["reply"] = await _send(bob, room, {"msgtype": "m.text", "body": "in a thread", "m.relates_to": {
                "rel_type": "m.thread", "event_id": ids["first"]}})  # fmt: skip
            for n in range(4):
                ids[f"m{n}"] = await _send(alice, room, {"msgtype": "m.text", "body": f"note {n}"})

    asyncio.run(asyncio.wait_for(run(), 60))
    data_dir = tmp_path / "data"
    status, report = _check(data_dir)
    assert status == 0, report
    assert "sqlite" not in report["checks"] and "foreign_keys" not in report["checks"]
    assert "PostgreSQL" in report["checks"]["server"]["notes"][0]
    assert report["checks"]["events"]["checked"] >= 10
    assert report["checks"]["relations"]["checked"] >= 1 and report["checks"]["search"]["checked"] >= 5

    # Damage of three kinds: an index row gone, a search row gone, a compressed PDU a byte off.
    _sql(data_dir, "DELETE FROM event_relations WHERE child_id = %s", (ids["reply"],))
    _sql(data_dir, "DELETE FROM event_search WHERE stream = (SELECT stream FROM events WHERE event_id = %s)",
         (ids["m1"],))  # fmt: skip
    _sql(data_dir, "UPDATE events SET pdu = set_byte(pdu, length(pdu) - 2, get_byte(pdu, length(pdu) - 2) # 85)"
                   " WHERE event_id = %s AND get_byte(pdu, 0) IN (1, 2)", (ids["m2"],))  # fmt: skip
    status, report = _check(data_dir)
    assert status == 1
    assert {"relations", "search", "events"} <= _failing(report)
    assert any(ids["reply"] in line for line in report["checks"]["relations"]["examples"])
    assert any(ids["m2"] in line for line in report["checks"]["events"]["examples"])


def test_db_check_postgres_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "database_url").write_text("postgresql://nobody@127.0.0.1:1/none?schema=lowband\n")
    assert main(["db", "check", "--data-dir", str(data_dir)]) == 2
    assert "cannot reach PostgreSQL" in capsys.readouterr().err
