"""``lowband db migrate``: a real gateway's SQLite data dir moved to PostgreSQL is the same store there (rooms,
history, tokens, link sessions, MQTT bridge state, media), a gateway then serves it from PostgreSQL; what cannot
be migrated is refused with a clear message and exit status 2. Skipped when PostgreSQL at 127.0.0.1:5432 is
unreachable. Each test migrates into a schema of its own, dropped at its end."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from harness import Client, expect, gateway_in_loop, users_gateway
from pg_schema import POSTGRES_URL, fresh_schema, unreachable

from lowband.gateway.cli.main import main

V3 = "/_matrix/client/v3"
SERVER = POSTGRES_URL
_UNREACHABLE = unreachable()
pytestmark = pytest.mark.skipif(_UNREACHABLE is not None, reason=_UNREACHABLE or "")


@contextlib.contextmanager
def _sqlite_env() -> Iterator[None]:
    """The suite's PostgreSQL hook off: the deployment to migrate must be a SQLite one."""
    saved = os.environ.pop("LOWBAND_TEST_DATABASE_URL", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["LOWBAND_TEST_DATABASE_URL"] = saved


@pytest.fixture()
def schema() -> Iterator[str]:
    """A schema name of this test's own, dropped when it ends."""
    yield from fresh_schema("migrate")


def _url(schema: str) -> str:
    return f"{SERVER}?schema={schema}"


async def _send(client: Client, room_id: str, content: dict[str, Any], kind: str = "m.room.message") -> str:
    path = f"{V3}/rooms/{quote(room_id, safe='')}/send/{kind}/{time.monotonic_ns()}"
    return str(expect(await client.request("PUT", path, content), 200)["event_id"])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A stopped gateway's SQLite data dir: rooms, messages (a thread, a reaction), an upload, a provisioned link
    device with a session, MQTT bridge state; and what the test needs to know of it."""
    tmp = tmp_path_factory.mktemp("migrate")
    facts: dict[str, Any] = {}

    async def run() -> None:
        async with users_gateway(tmp, "alice", "bob") as ((alice, bob), _, _):
            room = expect(await alice.request("POST", V3 + "/createRoom",
                                              {"preset": "public_chat", "room_alias_name": "sensors"}), 200)["room_id"]  # fmt: skip
            expect(await bob.request("POST", f"{V3}/join/{quote(room, safe='')}", {}), 200)
            other = expect(await bob.request("POST", V3 + "/createRoom", {"name": "second"}), 200)["room_id"]
            first = await _send(alice, room, {"msgtype": "m.text", "body": "hello lighthouse"})
            await _send(bob, room, {"msgtype": "m.text", "body": "in a thread",
                                    "m.relates_to": {"rel_type": "m.thread", "event_id": first}})  # fmt: skip
            await _send(bob, room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": first, "key": "+1"}},
                        "m.reaction")  # fmt: skip
            for n in range(20):
                await _send(alice if n % 2 else bob, room, {"msgtype": "m.text", "body": f"note {n} \u00e9\u4e2d"})
            await _send(bob, other, {"msgtype": "m.text", "body": "elsewhere"})
            status, body = await alice.request("POST", "/_matrix/media/v3/upload?filename=a.bin", raw=b"\x00\x01media",
                                               headers={"Content-Type": "application/octet-stream"})  # fmt: skip
            assert status == 200, body
            facts.update(room=room, other=other, first=first, alice_token=alice.token, bob_token=bob.token,
                         media_id=body["content_uri"].rsplit("/", 1)[1])  # fmt: skip

    with _sqlite_env():
        asyncio.run(asyncio.wait_for(run(), 60))
        data = tmp / "data"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["device", "add", "kitchen", "--room", "#sensors:localhost", "--data-dir", str(data),
                         "--link", "serial:/dev/null?bps=9600"]) == 0  # fmt: skip
        from lowband.gateway.link.gateway_core import Session, SessionKeys
        from lowband.gateway.store.interfaces import InflightRow
        from lowband.gateway.store.sqlite.store import SQLiteStore

        session = Session(SessionKeys(epoch=1, k_up=bytes(range(32)), k_down=bytes(range(32, 64)))).to_state()
        facts["session"] = session
        store = SQLiteStore(data / "lowband.db")
        try:
            device = store.link_devices.devices()[0]

            async def edges() -> None:
                await store.link_devices.save_session("kitchen", device.key_ts, session)
                await store.mqtt.add_bridge_user("@mqtt_porch:localhost", 1_700_000_000_000)
                await store.mqtt.add_discovery("broker1", "homeassistant/sensor/x/config", b"{\"name\": \"x\"}\xff")
                await store.mqtt.set_subscriptions("broker1", {"sensors/#", "lights/+/state"})
                await store.mqtt.set_cursor("lights", facts["room"], 12)
                await asyncio.wrap_future(store.mqtt.add_inflight(
                    "broker1", [InflightRow("txn-1", "sensors/a", b"\x00\xfe digest", 3, 1_700_000_000_001)]))  # fmt: skip

            asyncio.run(asyncio.wait_for(edges(), 30))
        finally:
            store.close()
    return data, facts


def _copy(deployment: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(deployment[0], target)
    return target


def _migrate(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["db", "migrate", *args])
    return status, out.getvalue(), err.getvalue()


def _rows(conn: Any, table: str, order: str) -> list[tuple[Any, ...]]:
    rows = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]


def test_migrate_data_dir_then_serve_from_postgres(deployment: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                   schema: str) -> None:  # fmt: skip
    import psycopg

    from lowband.gateway.store.postgres.store import PostgresStore

    data, facts = _copy(deployment, tmp_path), deployment[1]
    url = _url(schema)
    status, out, err = _migrate("--from", f"sqlite:{data}", "--to", url)
    assert status == 0, out + err
    assert "row counts   equal" in out and "on both sides" in out and "migrated and verified" in out
    # the data dir now names the database; the SQLite file is kept under another name
    marker = data / "database_url"
    assert marker.read_text().strip() == url and stat.S_IMODE(marker.stat().st_mode) == 0o600
    assert not (data / "lowband.db").exists() and (data / "lowband.db.migrated").is_file()

    old = sqlite3.connect(data / "lowband.db.migrated")
    new = psycopg.connect(SERVER, options=f"-c search_path={schema}")
    try:
        for table, order in [("events", "stream"), ("rooms", "room_id"), ("memberships", "room_id, user_id"),
                             ("state_groups", "id"), ("users", "user_id"), ("access_tokens", "token"),
                             ("link_devices", "name"), ("link_sessions", "name"), ("media", "media_id"),
                             ("mqtt_users", "user_id"), ("mqtt_discovery", "topic"), ("mqtt_subscriptions", "filter"),
                             ("mqtt_cursor", "mapping"), ("mqtt_inflight", "txn_id"), ("receipts", "room_id, user_id"),
                             ("push_notifications", "user_id, stream")]:  # fmt: skip
            mine, theirs = _rows(old, table, order), _rows(new, table, order)
            assert mine == theirs, table
            if table in ("events", "link_sessions", "media", "mqtt_inflight", "mqtt_discovery"):
                assert mine, f"the deployment has no {table} rows"
        # identity sequences past the copied rows: the next state group gets a new number
        top = new.execute("SELECT MAX(id) FROM state_groups").fetchone()[0]
        assert new.execute("SELECT nextval(pg_get_serial_sequence('state_groups', 'id'))").fetchone()[0] > top
    finally:
        old.close()
        new.close()

    store = PostgresStore(url)
    try:
        assert store.lookup_token(facts["alice_token"]) is not None
        assert store.get_media(facts["media_id"]) is not None
        assert store.link_devices.session_state("kitchen", store.link_devices.devices()[0].key_ts) == facts["session"]
    finally:
        store.close()

    async def serve() -> None:
        import aiohttp

        # no URL given: the gateway finds the database in the data dir's database_url
        async with gateway_in_loop(tmp_path) as base, aiohttp.ClientSession() as session:
            alice = Client(session, base, facts["alice_token"])
            assert expect(await alice.request("GET", V3 + "/account/whoami"), 200)["user_id"] == "@alice:localhost"
            room = quote(facts["room"], safe="")
            history = expect(await alice.request("GET", f"{V3}/rooms/{room}/messages?dir=b&limit=100"), 200)
            bodies = [e["content"].get("body") for e in history["chunk"] if e["type"] == "m.room.message"]
            assert "hello lighthouse" in bodies and "note 19 \u00e9\u4e2d" in bodies
            relations = expect(await alice.request(
                "GET", f"/_matrix/client/v1/rooms/{room}/relations/{quote(facts['first'], safe='')}"), 200)  # fmt: skip
            assert len(relations["chunk"]) == 2  # the thread reply and the reaction, indexed again by PostgreSQL
            after = await _send(alice, facts["room"], {"msgtype": "m.text", "body": "after the move"})
            assert after.startswith("$")

    with _sqlite_env():
        asyncio.run(asyncio.wait_for(serve(), 60))


def test_migrate_refuses_what_it_cannot_move(deployment: tuple[Path, dict[str, Any]], tmp_path: Path,
                                             schema: str) -> None:  # fmt: skip
    data = _copy(deployment, tmp_path)
    url = _url(schema)

    def refused(*args: str) -> str:
        status, out, err = _migrate(*args)
        assert status == 2, out + err
        assert err.startswith("lowband: error: ") and err.count("\n") == 1, err
        return err

    assert "postgresql://" in refused("--from", f"sqlite:{data}", "--to", "mysql://root@127.0.0.1/x")
    assert "sqlite:PATH" in refused("--from", "postgresql://127.0.0.1/x", "--to", url)
    assert "cannot connect to PostgreSQL" in refused("--from", f"sqlite:{data}", "--to",
                                                "postgresql://postgres@127.0.0.1:1/test?schema=x")  # fmt: skip
    assert "no SQLite database" in refused("--from", f"sqlite:{tmp_path}/nothing.db", "--to", url)
    assert "not a Lowband data dir" in refused("--from", f"sqlite:{tmp_path}", "--to", url)
    (tmp_path / "text.db").write_text("hello, I am not a database\n" * 10)
    assert "not a SQLite database" in refused("--from", f"sqlite:{tmp_path}/text.db", "--to", url)
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE notes (body TEXT)")
    other.commit()
    other.close()
    assert "not a Lowband database" in refused("--from", f"sqlite:{tmp_path}/other.db", "--to", url)
    whole = (data / "lowband.db").read_bytes()
    (tmp_path / "cut.db").write_bytes(whole[: len(whole) // 2 + 100])
    assert "damaged" in refused("--from", f"sqlite:{tmp_path}/cut.db", "--to", url)
    (tmp_path / "cut2.db").write_bytes(whole[: (len(whole) // 2) // 4096 * 4096])  # whole pages, missing ones
    assert "damaged" in refused("--from", f"sqlite:{tmp_path}/cut2.db", "--to", url)

    # a gateway (here a store: the same connection) holding the file
    from lowband.gateway.store.sqlite.store import SQLiteStore

    with _sqlite_env():
        live = SQLiteStore(data / "lowband.db")
        try:
            assert "is the gateway running" in refused("--from", f"sqlite:{data}", "--to", url)
        finally:
            live.close()
    # none of the refusals touched the data dir
    assert (data / "lowband.db").is_file() and not (data / "database_url").exists()

    # a destination that already holds a store: the first migration (of the file, data dir untouched) fills it
    shutil.copy(data / "lowband.db", tmp_path / "spare.db")
    status, out, err = _migrate("--from", f"sqlite:{tmp_path}/spare.db", "--to", url)
    assert status == 0, out + err
    assert "already holds a store" in refused("--from", f"sqlite:{data}", "--to", url)
    assert (data / "lowband.db").is_file() and not (data / "database_url").exists()


def test_migrate_verification_sees_a_difference(deployment: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                schema: str) -> None:  # fmt: skip
    from lowband.gateway.store.migrate import Migration

    data = _copy(deployment, tmp_path)
    job = Migration(data / "lowband.db", _url(schema))
    try:
        job.copy()
        assert job.verify().ok
        # one stored PDU a byte off (compressed: any byte of it)
        job.pg.execute("UPDATE events SET pdu = set_byte(pdu, length(pdu) - 1, get_byte(pdu, length(pdu) - 1) # 1)"
                       " WHERE stream = (SELECT MAX(stream) FROM events WHERE type = 'm.room.message')")
        job.pg.execute("DELETE FROM link_sessions")
        result = job.verify()
        assert not result.ok
        assert result.source_digest != result.destination_digest
        assert [t.name for t in result.tables if not t.ok] == ["link_sessions"]
    finally:
        job.close()


def test_migrate_reads_what_only_the_wal_holds(deployment: tuple[Path, dict[str, Any]], tmp_path: Path,
                                               schema: str) -> None:  # fmt: skip
    """A gateway killed with commits still in lowband.db-wal (never checkpointed): the migration has them."""
    import psycopg

    from lowband.gateway.store.sqlite.store import SQLiteStore

    data = _copy(deployment, tmp_path)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    with _sqlite_env():
        live = SQLiteStore(data / "lowband.db")
        try:
            live.create_user_sync("@late:localhost", "x", False, 1)
            assert (data / "lowband.db-wal").stat().st_size > 0
            for name in ("lowband.db", "lowband.db-wal"):  # what a power cut leaves: the file and its WAL
                shutil.copy(data / name, crashed / name)
        finally:
            live.close()
    status, out, err = _migrate("--from", f"sqlite:{crashed}", "--to", _url(schema))
    assert status == 0, out + err
    assert not (crashed / "lowband.db-wal").exists() and (crashed / "lowband.db.migrated").is_file()
    with psycopg.connect(SERVER, options=f"-c search_path={schema}") as conn:
        assert conn.execute("SELECT 1 FROM users WHERE user_id = '@late:localhost'").fetchone() is not None


def test_migrate_rolls_back_a_failed_copy_and_adapts_what_postgres_cannot_hold(
        deployment: tuple[Path, dict[str, Any]], tmp_path: Path, schema: str) -> None:  # fmt: skip
    import psycopg

    url = _url(schema)
    bad, odd = tmp_path / "bad.db", tmp_path / "odd.db"
    for path in (bad, odd):
        shutil.copy(deployment[0] / "lowband.db", path)
    with contextlib.closing(sqlite3.connect(bad)) as conn, conn:
        conn.execute("UPDATE link_devices SET address = 'not a number'")  # SQLite keeps text in an INTEGER column
    with contextlib.closing(sqlite3.connect(odd)) as conn, conn:
        conn.execute("UPDATE users SET displayname = 'Al' || char(0) || 'ice' WHERE user_id = '@alice:localhost'")
        conn.execute("UPDATE mqtt_discovery SET payload = 'text, not bytes'")

    status, out, err = _migrate("--from", f"sqlite:{bad}", "--to", url)
    assert status == 1, out + err
    assert "copying link_devices failed" in err and "rolled back" in err
    with psycopg.connect(SERVER, options=f"-c search_path={schema}") as conn:
        assert conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0

    # the same schema takes the next attempt as it is
    status, out, err = _migrate("--from", f"sqlite:{odd}", "--to", url)
    assert status == 0, out + err
    assert "note: users: 1 value: NUL characters dropped from text" in out
    assert "note: mqtt_discovery: 1 value: text encoded as UTF-8 bytes" in out
    assert "left as it is" in out and odd.is_file()
    with psycopg.connect(SERVER, options=f"-c search_path={schema}") as conn:
        name = conn.execute("SELECT displayname FROM users WHERE user_id = '@alice:localhost'").fetchone()[0]
        assert name == "Alice"
        assert conn.execute("SELECT payload FROM mqtt_discovery").fetchone()[0] == b"text, not bytes"
