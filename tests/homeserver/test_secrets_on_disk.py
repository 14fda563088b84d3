"""The data dir is the owner's alone: it holds access tokens, password hashes, link session keys and media;
and what it holds of tokens and passwords is hashed.

Found: lowband.db and its WAL were 0644 in a 0755 directory, and media files 0644.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import aiohttp
import pytest
from harness import Client, gateway_in_loop

from lowband.gateway.app import open_store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _use(tmp_path: Path, user: str = "alice") -> Path:
    """Start a gateway on ``tmp_path/data``, register, upload a file; the stored file's path."""
    async with gateway_in_loop(tmp_path) as base, aiohttp.ClientSession() as session:
        client = Client(session, base)
        await client.register(user)
        status, body = await client.request("POST", "/_matrix/media/v3/upload", raw=b"secret picture",
                                            headers={"Content-Type": "image/png"})  # fmt: skip
        assert status == 200, body
    media = tmp_path / "data" / "media"
    return next(p for p in media.rglob("*") if p.is_file())


@pytest.mark.sqlite_only  # the modes of lowband.db and its WAL
def test_a_new_data_dir_and_everything_in_it_are_private(tmp_path):
    stored = asyncio.run(_use(tmp_path))
    data = tmp_path / "data"
    assert _mode(data) == 0o700 and _mode(data / "media") == 0o700
    for name in ("lowband.db", "lowband.db-wal", "lowband.db-shm", "signing.key"):
        if (data / name).exists():
            assert _mode(data / name) == 0o600, name
    assert _mode(data / "lowband.db") == 0o600
    assert _mode(stored) == 0o600


@pytest.mark.sqlite_only  # the modes of lowband.db and its WAL
def test_a_data_dir_made_before_is_made_private_at_start(tmp_path):
    asyncio.run(_use(tmp_path))
    data = tmp_path / "data"
    data.chmod(0o755)
    (data / "media").chmod(0o755)
    for name in ("lowband.db", "lowband.db-wal"):
        if (data / name).exists():
            (data / name).chmod(0o644)
    asyncio.run(_use(tmp_path, "bob"))
    assert _mode(data) == 0o700 and _mode(data / "media") == 0o700
    assert _mode(data / "lowband.db") == 0o600
    if (data / "lowband.db-wal").exists():
        assert _mode(data / "lowband.db-wal") == 0o600


# ------------------------------------------------------------ tokens and password hashes
# Found: access tokens were stored in clear (a copy of lowband.db logged anyone in), and passwords were hashed
# with scrypt N=2^14, r=8, p=1, a fifth of the work OWASP asks for.


def _db_bytes(data: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("lowband.db"))


async def _whoami(base: str, token: str) -> int:
    async with aiohttp.ClientSession() as session:
        status, _ = await Client(session, base, token).request("GET", "/_matrix/client/v3/account/whoami")
        return status


@pytest.mark.sqlite_only  # reads the bytes of the SQLite file
def test_access_tokens_are_kept_only_as_hashes(tmp_path):
    async def main() -> None:
        async with gateway_in_loop(tmp_path) as base, aiohttp.ClientSession() as session:
            alice = Client(session, base)
            await alice.register("alice")
            assert alice.token is not None
            assert await _whoami(base, alice.token) == 200
            assert alice.token.encode() not in _db_bytes(tmp_path / "data")
            status, _ = await alice.request("POST", "/_matrix/client/v3/logout", {})
            assert status == 200
            assert await _whoami(base, alice.token) == 401

    asyncio.run(main())


@pytest.mark.sqlite_only  # an older SQLite file, its bytes before and after VACUUM
def test_tokens_of_an_older_database_are_hashed_at_start_and_keep_working(tmp_path):
    async def register() -> str:
        async with gateway_in_loop(tmp_path) as base, aiohttp.ClientSession() as session:
            alice = Client(session, base)
            await alice.register("alice")
            assert alice.token is not None
            return alice.token

    token = asyncio.run(register())
    db = sqlite3.connect(tmp_path / "data" / "lowband.db")
    with db:  # what a database written before tokens were hashed holds (and before schema versions existed)
        db.execute("UPDATE access_tokens SET token = ?", (token,))
        db.execute("DROP TABLE schema_migrations")
    db.close()
    assert token.encode() in _db_bytes(tmp_path / "data")

    async def reuse() -> None:
        async with gateway_in_loop(tmp_path) as base:
            assert await _whoami(base, token) == 200

    asyncio.run(reuse())
    db = sqlite3.connect(tmp_path / "data" / "lowband.db")
    db.execute("VACUUM")  # the clear token may linger in a free page until the space is reused
    db.close()
    assert token.encode() not in _db_bytes(tmp_path / "data")


def test_a_password_hash_with_old_parameters_is_replaced_at_login(tmp_path):
    from lowband.gateway.homeserver.accounts import needs_rehash

    async def register() -> None:
        async with gateway_in_loop(tmp_path) as base, aiohttp.ClientSession() as session:
            await Client(session, base).register("alice", "right horse")

    asyncio.run(register())
    salt = os.urandom(16)
    digest = hashlib.scrypt(b"right horse", salt=salt, n=2**14, r=8, p=1, dklen=32)
    old = f"scrypt$16384$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert needs_rehash(old)
    sql = "UPDATE users SET password_hash = ? WHERE user_id = '@alice:localhost'"
    with contextlib.closing(open_store(tmp_path / "data" / "lowband.db")) as store:
        store.db.write_sync(lambda c: c.execute(sql, (old,)))

    def stored_hash() -> str:
        with contextlib.closing(open_store(tmp_path / "data" / "lowband.db")) as store:
            row = store.db.query_one("SELECT password_hash FROM users WHERE user_id = '@alice:localhost'")
        assert row is not None
        return str(row[0])

    async def login(password: str) -> int:
        async with gateway_in_loop(tmp_path) as base, aiohttp.ClientSession() as session:
            status, _ = await Client(session, base).request("POST", "/_matrix/client/v3/login", {
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                "password": password}, token=False)  # fmt: skip
            return status

    assert asyncio.run(login("wrong horse")) == 403
    stored = stored_hash()
    assert stored == old  # a wrong password changes nothing
    assert asyncio.run(login("right horse")) == 200
    stored = stored_hash()
    assert stored.startswith("scrypt$16384$8$5$") and not needs_rehash(stored)
    assert asyncio.run(login("right horse")) == 200  # the new hash checks
