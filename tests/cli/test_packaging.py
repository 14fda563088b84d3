"""A regular install works: every package listed, and a built wheel run outside the source tree.

The editable install the other tests use maps the source folders onto the
``lowband.*`` names and hides a package missing from ``pyproject.toml``;
a wheel does not. The slow test here builds the wheel, installs it into a
fresh venv and runs the installed ``lowband`` from a directory that has no
source tree in it, as a new user would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
FOLDERS = {"gateway": "lowband.gateway", "codecs": "lowband.codecs", "sim": "lowband.sim",
           "hardware": "lowband.hardware", "firmware": "lowband.firmware"}  # fmt: skip


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_python_package_of_the_tree_is_listed_and_mapped():
    setuptools = _project()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set()
    for folder, name in FOLDERS.items():
        assert setuptools["package-dir"][name] == folder
        found.add(name)
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            if relative.parts:
                found.add(".".join((name, *relative.parts)))
    assert listed == found, f"missing from pyproject: {sorted(found - listed)}; stale: {sorted(listed - found)}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel built from this tree (and the firmware extra) installed; its bin dir."""
    work = tmp_path_factory.mktemp("wheel")
    wheels = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    wheel = next(wheels.glob("lowband-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[firmware]"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]
    yield venv / "bin"


def _run(bin_dir: Path, cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / "lowband"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _help_tree(bin_dir: Path, cwd: Path, path: list[str]) -> Iterator[list[str]]:
    """Every subcommand path below ``path``, read from the installed CLI's own ``--help``; each help checked."""
    done = _run(bin_dir, cwd, *path, "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: lowband"), (path, done.stderr)
    yield path
    # argparse lists subcommands under "positional arguments", four spaces in, below their metavar line
    section = done.stdout.partition("positional arguments:\n")[2].partition("\n\n")[0]
    if re.match(r"  [A-Z]+\n", section):
        for name in re.findall(r"^    ([a-z][a-z0-9_-]*)(?:\s|$)", section, flags=re.M):
            yield from _help_tree(bin_dir, cwd, [*path, name])


def _get(url: str, token: str | None = None, body: dict | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen[str], log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        assert proc.poll() is None, f"exited with {proc.returncode} before {what}: {log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


@pytest.mark.slow
def test_the_installed_wheel_helps_serves_flashes_and_runs_the_demo(installed: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"  # no source tree here or above
    elsewhere.mkdir()
    firmware = next((installed.parent / "lib").glob("python3*/site-packages/lowband/firmware"))
    tracked = subprocess.run(["git", "ls-files", "firmware"], cwd=ROOT, capture_output=True, text=True, check=True)
    shipped = {f"firmware/{p.relative_to(firmware)}" for p in firmware.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}  # fmt: skip
    assert set(tracked.stdout.split()) <= shipped, set(tracked.stdout.split()) - shipped

    # the default context table is package data
    decoded = _run(installed, elsewhere, "wire", "decode", "--profile", "compact", "11000718d71828190172")
    assert decoded.returncode == 0 and '"m.notice"' in decoded.stdout, decoded.stderr

    commands = list(_help_tree(installed, elsewhere, []))
    assert {"serve", "demo", "device", "wire", "bench"} <= {c[0] for c in commands if c}
    assert ["device", "flash"] in commands and ["wire", "demo"] in commands

    # serve answers the client API
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen([str(installed / "lowband"), "serve", "--data-dir", str(tmp_path / "serve"),
                                  "--server-name", "localhost", "--http", f"127.0.0.1:{port}"], cwd=elsewhere,
                                 stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        versions = _wait_for(lambda: _get(f"http://127.0.0.1:{port}/_matrix/client/versions"), 30, "versions",
                             serve, log)  # fmt: skip
        assert "v1.1" in versions["versions"]
    finally:
        assert _stop(serve) == 0

    # the demo starts the board (the real firmware on the unix port) and its reading reaches the room
    port, coap_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        demo = subprocess.Popen([str(installed / "lowband"), "demo", "--data-dir", str(tmp_path / "demo"),
                                 "--http", f"127.0.0.1:{port}", "--coap", f"127.0.0.1:{coap_port}", "--bps", "1200",
                                 "--interval", "2"], cwd=elsewhere, stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        _wait_for(lambda: "MicroPython unix port, pid" in log.read_text(), 60, "board", demo, log)
        base = f"http://127.0.0.1:{port}/_matrix/client/v3"
        token = _get(f"{base}/login", body={"type": "m.login.password", "user": "demo", "password": "demo"})
        alias = urllib.parse.quote("#sensors:localhost")
        room_id = _get(f"{base}/directory/room/{alias}")["room_id"]

        def reading() -> bool:
            page = _get(f"{base}/rooms/{urllib.parse.quote(room_id)}/messages?dir=b&limit=50", token["access_token"])
            return any(e["sender"].startswith("@dev.board1:") and "org.lowband.senml" in e.get("content", {})
                       for e in page["chunk"])  # fmt: skip

        _wait_for(reading, 90, "reading from the board", demo, log)
        # the demo's CoAP API answers the installed `lowband coap` (aiocoap server, our client)
        versions = _run(installed, elsewhere, "coap", "--url", f"coap://127.0.0.1:{coap_port}", "GET", "0")
        assert versions.returncode == 0 and json.loads(versions.stdout)["m.low_bandwidth"]["coap"] == coap_port, (
            versions.stdout, versions.stderr)  # fmt: skip
    finally:
        _stop(demo)

    # the firmware a flash would copy comes from the installed package
    data = tmp_path / "demo"  # the demo made #sensors:localhost there
    assert _run(installed, elsewhere, "device", "add", "kitchen", "--room", "#sensors:localhost",
                "--data-dir", str(data)).returncode == 0  # fmt: skip
    flash = _run(installed, elsewhere, "device", "flash", "kitchen", "--port", "/dev/ttyUSB9", "--data-dir",
                 str(data), "--dry-run")  # fmt: skip
    assert flash.returncode == 0, flash.stderr
    assert ":lib/lbwire/frame.py" in flash.stdout and ":lib/lbnode/node.py" in flash.stdout
    assert str(installed.parent / "lib") in flash.stdout  # copied from site-packages, not from a checkout
