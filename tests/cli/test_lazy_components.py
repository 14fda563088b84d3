"""A component the config does not enable costs no memory: its dependencies are never imported.

The gateway runs as ``lowband serve`` does (the CLI's ``main`` in a fresh
interpreter), serves a few requests, and writes ``sys.modules`` when it exits
after SIGTERM: every module it imported at any point of its life is listed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from harness import LOWBAND, free_port

from lowband.gateway.app import Registered
from lowband.gateway.link.component import WATCH_SECONDS

#: Top-level packages only a component that is enabled may import. nacl signs events: always needed.
HEAVY = ("paho", "noise", "cryptography", "bleak", "aiocoap", "serial")

_RUN_AND_LIST_MODULES = """
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from lowband.gateway.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _top_level(modules: list[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


def _request(base: str, method: str, path: str, body: object, token: str | None = None) -> dict:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method=method,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _alice_with_room(base: str) -> tuple[str, str]:
    """Register alice and create ``#sensors:localhost``; (token, room ID)."""
    registered = _request(base, "POST", "/_matrix/client/v3/register",
                          {"username": "alice", "password": "secret-pw", "auth": {"type": "m.login.dummy"}})  # fmt: skip
    token = registered["access_token"]
    return token, _request(base, "POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "sensors"}, token)["room_id"]


class ServeWithModuleList:
    """``lowband serve`` in a subprocess that writes the names of its imported modules when it exits."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "data"
        self.modules_path = tmp_path / "modules.json"
        self.log_path = tmp_path / "gateway.log"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-c", _RUN_AND_LIST_MODULES, str(self.modules_path), "serve",
                "--data-dir", str(self.data_dir), "--server-name", "localhost",
                "--http", f"127.0.0.1:{self.port}", "--enable-registration"]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        self.wait_for_log(" listening on http://")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.proc.poll() is None, f"gateway exited: {self.log()[-2000:]}"
            assert time.monotonic() < deadline, f"{text!r} not logged within {timeout} s: {self.log()[-2000:]}"
            time.sleep(0.05)

    def stop(self) -> list[str]:
        """SIGTERM, wait for a clean exit; the modules the process had imported."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
        assert self.proc.returncode == 0, self.log()[-2000:]
        return list(json.loads(self.modules_path.read_text()))


def test_plain_serve_imports_no_component_dependency(tmp_path):
    gateway = ServeWithModuleList(tmp_path)
    try:
        token, room_id = _alice_with_room(gateway.base)
        _request(gateway.base, "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
                 {"msgtype": "m.text", "body": "hello"}, token)  # fmt: skip
        time.sleep(WATCH_SECONDS * 1.5)  # the link component has polled the registry at least once
    finally:
        modules = gateway.stop()
    loaded = _top_level(modules)
    assert "nacl" in loaded and "lowband.gateway.link.component" in modules  # the list is the real one
    assert "lowband.gateway.link.runtime" not in modules
    assert "lowband.gateway.bridges.mqtt.bridge" not in modules
    assert sorted(loaded & set(HEAVY)) == []


def test_first_device_starts_the_link_runtime(tmp_path):
    gateway = ServeWithModuleList(tmp_path)
    try:
        _alice_with_room(gateway.base)
        added = subprocess.run(
            [LOWBAND, "device", "add", "kitchen", "--room", "#sensors:localhost",
             "--link", f"serial:{tmp_path / 'no-such-port'}?bps=100", "--data-dir", str(gateway.data_dir)],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        gateway.wait_for_log("first device provisioned: starting the link runtime", timeout=WATCH_SECONDS * 5)
        gateway.wait_for_log("link serial:", timeout=10)
    finally:
        modules = gateway.stop()
    assert {"noise", "cryptography"} <= _top_level(modules)
    assert "lowband.gateway.link.runtime" in modules


def test_a_disabled_component_is_not_imported():
    services = SimpleNamespace(config=SimpleNamespace(components={}))
    missing = Registered("nothing", "lowband.no_such_module:start", lambda config: "nothing" in config.components)
    assert missing.__name__ == "start"
    assert asyncio.run(missing(services)) is None  # not enabled: never imported
    services.config.components["nothing"] = {}
    with pytest.raises(ModuleNotFoundError):
        asyncio.run(missing(services))
