"""Namespaces edges keep for themselves, and who created an account (``users.owner``).

* ``/register`` and ``/register/available`` refuse ``dev.*`` and the MQTT
  bridge's bot and prefix (as configured) with M_EXCLUSIVE naming the holder;
* ``lowband user add`` refuses them too, unless ``--allow-reserved``;
* an older database gets the ``owner`` column, and the accounts edges
  demonstrably made are claimed for them, once;
* the MQTT bridge speaks as an account it made even when a crash kept it out
  of its own table, and never as one a person made.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from harness import LOWBAND

from lowband.gateway.api.http.app import make_app
from lowband.gateway.app import open_services, open_store
from lowband.gateway.config import load_config
from lowband.gateway.store.sqlite.store import SQLiteStore

V3 = "/_matrix/client/v3"
DUMMY = {"type": "m.login.dummy"}


def test_register_refuses_reserved_names_with_m_exclusive(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = load_config(None, data_dir=tmp_path / "data", server_name="localhost", registration_enabled=True,
                             components={"mqtt": {"bot": "bridge", "user_prefix": "z2m."}})  # fmt: skip
        services = open_services(config)
        client = TestClient(TestServer(make_app(services)))
        await client.start_server()
        try:

            async def register(name: str) -> tuple[int, Any]:
                response = await client.post(V3 + "/register", json={"username": name, "password": "pw", "auth": DUMMY})
                return response.status, await response.json()

            async def available(name: str) -> tuple[int, Any]:
                response = await client.get(V3 + "/register/available", params={"username": name})
                return response.status, await response.json()

            for name, holder in (("dev.kitchen", "device links"), ("z2m.lamp", "the MQTT bridge"),
                                 ("bridge", "the MQTT bridge")):  # fmt: skip
                for status, body in (await register(name), await available(name)):
                    assert status == 400 and body["errcode"] == "M_EXCLUSIVE", body
                    assert f"@{name}:localhost" in body["error"] and holder in body["error"]
                assert services.store.get_user(f"@{name}:localhost") is None
            # Near misses are anyone's.
            for name in ("dev", "devkitchen", "z2m", "mqtt_lamp"):
                assert await available(name) == (200, {"available": True})
            status, body = await register("devkitchen")
            assert status == 200 and body["user_id"] == "@devkitchen:localhost"
            assert services.store.get_user("@devkitchen:localhost")["owner"] is None  # a person's
        finally:
            await client.close()
            services.store.close()

    asyncio.run(scenario())


def _user_add(data: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LOWBAND, "user", "add", name, "--password", "pw", "--data-dir", str(data), *extra],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_user_add_refuses_reserved_names_unless_the_operator_insists(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "server_name").write_text("localhost\n")
    config = tmp_path / "gw.toml"
    config.write_text('[mqtt]\nuser_prefix = "z2m."\n')
    refused = _user_add(data, "dev.kitchen")
    assert refused.returncode != 0 and "reserved for device links" in refused.stderr and "--allow-reserved" in refused.stderr
    refused = _user_add(data, "z2m.lamp", "--config", str(config))
    assert refused.returncode != 0 and "reserved for the MQTT bridge" in refused.stderr
    assert _user_add(data, "z2m.lamp").returncode == 0  # without the [mqtt] section the prefix is free
    forced = _user_add(data, "dev.kitchen", "--allow-reserved")
    assert forced.returncode == 0, forced.stderr
    store = open_store(data / "lowband.db")
    try:
        assert store.get_user("@dev.kitchen:localhost")["owner"] is None  # a person's: no device will speak as it
        assert store.get_user("@z2m.lamp:localhost")["owner"] is None
    finally:
        store.close()


_OLD_USERS = """
CREATE TABLE users (user_id TEXT PRIMARY KEY, password_hash TEXT NOT NULL, admin INTEGER NOT NULL DEFAULT 0,
    created_ts INTEGER NOT NULL, displayname TEXT, avatar_url TEXT, deactivated INTEGER NOT NULL DEFAULT 0);
CREATE TABLE mqtt_users (user_id TEXT PRIMARY KEY, created_ts INTEGER NOT NULL);
"""


@pytest.mark.sqlite_only  # upgrades an older version's SQLite file
def test_an_older_database_gets_owners_claimed_once(tmp_path: Path) -> None:
    path = tmp_path / "lowband.db"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_USERS)
    from lowband.gateway.store.sqlite.schema import _LINK_DEVICES  # the device tables as every version had them

    conn.executescript(_LINK_DEVICES)
    rows = [
        ("@alice:gw", 100),
        ("@dev.kitchen:gw", 2000),  # made by the link after the device was provisioned at 1000
        ("@dev.garage:gw", 500),  # registered before the device garage existed (provisioned at 1000)
        ("@mqtt:gw", 50),
        ("@mqtt_lamp:gw", 60),
        ("@mqtt_fan:gw", 70),  # not in mqtt_users: a person took the name
    ]
    conn.executemany("INSERT INTO users (user_id, password_hash, created_ts) VALUES (?, 'x', ?)", rows)
    for name in ("kitchen", "garage"):
        conn.execute("INSERT INTO link_devices VALUES (?, ?, ?, 'aa', '[]', '{}', 'serial:/dev/null', 1000, 1000, 0)",
                     (name, 1 if name == "kitchen" else 2, f"@dev.{name}:gw"))  # fmt: skip
    conn.executemany("INSERT INTO mqtt_users VALUES (?, 0)", [("@mqtt:gw",), ("@mqtt_lamp:gw",)])
    conn.commit()
    conn.close()

    def owners() -> dict[str, str | None]:
        store = SQLiteStore(path)
        try:
            return {user_id: store.get_user(user_id)["owner"] for user_id, _ in rows}
        finally:
            store.close()

    expected = {"@alice:gw": None, "@dev.kitchen:gw": "device:kitchen", "@dev.garage:gw": None, "@mqtt:gw": "mqtt",
                "@mqtt_lamp:gw": "mqtt", "@mqtt_fan:gw": None}  # fmt: skip
    assert owners() == expected
    # Once: a later start claims nothing more, even for an account that would have matched then.
    conn = sqlite3.connect(path)
    conn.execute("UPDATE users SET owner = NULL WHERE user_id = '@dev.kitchen:gw'")
    conn.commit()
    conn.close()
    assert owners() == expected | {"@dev.kitchen:gw": None}


@pytest.mark.parametrize(("owner", "usable"), [("mqtt", True), (None, False), ("device:x", False)])
def test_mqtt_bridge_speaks_only_as_accounts_it_made(tmp_path: Path, owner: str | None, usable: bool) -> None:
    from lowband.gateway.bridges.mqtt.rooms import RoomAccess, UserTaken

    class Tables:  # the bridge's own table, empty as after a crash between creating the user and recording it
        def __init__(self) -> None:
            self.users: set[str] = set()

        def bridge_users(self) -> set[str]:
            return set(self.users)

        async def add_bridge_user(self, user_id: str, now_ms: int) -> None:
            self.users.add(user_id)

    async def scenario() -> None:
        store = open_store(tmp_path / "lowband.db")
        try:
            await store.create_user("@mqtt_lamp:gw", "!x", False, 1, owner=owner)
            tables = Tables()
            access = RoomAccess(None, store, tables, "gw", "mqtt")  # type: ignore[arg-type]
            if usable:
                await access.ensure_user("@mqtt_lamp:gw", "lamp")
                assert access.is_bridged("@mqtt_lamp:gw") and tables.users == {"@mqtt_lamp:gw"}
            else:
                with pytest.raises(UserTaken):
                    await access.ensure_user("@mqtt_lamp:gw", "lamp")
                assert not access.is_bridged("@mqtt_lamp:gw") and tables.users == set()
            await access.ensure_user("@mqtt_new:gw", "new")  # one it makes itself carries its name
            assert store.get_user("@mqtt_new:gw")["owner"] == "mqtt"
        finally:
            store.close()

    asyncio.run(scenario())
