"""``lowband user add`` takes the password from a prompt, standard input or a file, not only the command line.

Found: ``--password`` was the only way, so the password showed in ``ps`` and the shell's history.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import aiohttp
from harness import LOWBAND, gateway_in_loop


def _add(data: Path, name: str, *extra: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([LOWBAND, "user", "add", name, "--data-dir", str(data), "--server-name", "localhost", *extra],
                          input=stdin, capture_output=True, text=True, timeout=60)  # fmt: skip


async def _logs_in(tmp_path: Path, user: str, password: str) -> bool:
    async with gateway_in_loop(tmp_path) as base, aiohttp.ClientSession() as session:
        body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}
        async with session.post(base + "/_matrix/client/v3/login", json=body) as resp:
            return resp.status == 200


def test_the_password_comes_from_stdin_a_file_or_the_flag(tmp_path):
    data = tmp_path / "data"
    assert _add(data, "ann", stdin="from stdin\n").returncode == 0  # not a terminal: the first line of stdin
    secret = tmp_path / "pw.txt"
    secret.write_text("from a file\nignored second line\n")
    secret.chmod(0o600)
    assert _add(data, "ben", "--password-file", str(secret)).returncode == 0
    assert _add(data, "cy", "--password-file", "-", stdin="piped\n").returncode == 0
    assert _add(data, "dee", "--password", "on the line").returncode == 0
    for user, password in (("ann", "from stdin"), ("ben", "from a file"), ("cy", "piped"), ("dee", "on the line")):
        assert asyncio.run(_logs_in(tmp_path, user, password)), user
    assert not asyncio.run(_logs_in(tmp_path, "ben", "ignored second line"))


def test_an_empty_or_unreadable_password_is_refused_and_nothing_is_created(tmp_path):
    data = tmp_path / "data"
    empty = _add(data, "eve", stdin="")
    assert empty.returncode == 2 and "password is empty" in empty.stderr
    missing = _add(data, "eve", "--password-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "cannot read the password" in missing.stderr
    both = _add(data, "eve", "--password", "x", "--password-file", "-")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    assert _add(data, "eve", stdin="finally\n").returncode == 0  # eve was never created before
