"""The data dir is the owner's alone: it holds access tokens, password hashes, link session keys and media.

Found: lowband.db and its WAL were 0644 in a 0755 directory, and media files 0644.
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import aiohttp
from harness import Client, gateway_in_loop


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


def test_a_new_data_dir_and_everything_in_it_are_private(tmp_path):
    stored = asyncio.run(_use(tmp_path))
    data = tmp_path / "data"
    assert _mode(data) == 0o700 and _mode(data / "media") == 0o700
    for name in ("lowband.db", "lowband.db-wal", "lowband.db-shm", "signing.key"):
        if (data / name).exists():
            assert _mode(data / name) == 0o600, name
    assert _mode(data / "lowband.db") == 0o600
    assert _mode(stored) == 0o600


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
