"""`lowband device add|list|show|revoke|flash` on a data dir, gateway stopped."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess

import pytest
from harness import LOWBAND, gateway_in_loop


def lowband(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LOWBAND, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def data_dir(tmp_path):
    """A data dir with one public room #sensors:localhost, gateway stopped again."""

    async def make() -> None:
        import aiohttp
        from harness import Client

        async with gateway_in_loop(tmp_path) as base, aiohttp.ClientSession() as session:
            alice = Client(session, base)
            await alice.register("alice")
            status, _ = await alice.request("POST", "/_matrix/client/v3/createRoom",
                                            {"preset": "public_chat", "room_alias_name": "sensors"})  # fmt: skip
            assert status == 200

    asyncio.run(make())
    return tmp_path / "data"


def test_add_list_show_revoke(data_dir):
    added = lowband("device", "add", "kitchen", "--room", "#sensors:localhost", "--data-dir", str(data_dir),
                    "--channel", "temperature:Cel:-1", "--channel", "co2:ppm:0")  # fmt: skip
    assert added.returncode == 0, added.stderr
    config_path = data_dir / "devices" / "kitchen.json"
    assert stat.S_IMODE(os.stat(config_path).st_mode) == 0o600
    config = json.loads(config_path.read_text())
    assert config["user_id"] == "@dev.kitchen:localhost" and config["address"] == 1
    assert [c["n"] for c in config["context"]["channels"]] == ["temperature", "co2"]
    assert len(bytes.fromhex(config["device_private"])) == 32
    second = lowband("device", "add", "porch", "--room", "#sensors:localhost", "--data-dir", str(data_dir))
    assert second.returncode == 0 and json.loads((data_dir / "devices" / "porch.json").read_text())["address"] == 2
    listing = lowband("device", "list", "--data-dir", str(data_dir))
    assert "kitchen" in listing.stdout and "porch" in listing.stdout
    shown = json.loads(lowband("device", "show", "kitchen", "--data-dir", str(data_dir)).stdout)
    assert shown["address"] == 1 and "device_private" not in json.dumps(shown)
    assert lowband("device", "revoke", "porch", "--data-dir", str(data_dir)).returncode == 0
    assert "porch" not in lowband("device", "list", "--data-dir", str(data_dir)).stdout
    assert "revoked" in lowband("device", "list", "--all", "--data-dir", str(data_dir)).stdout
    rekeyed = lowband("device", "add", "kitchen", "--rekey", "--room", "#sensors:localhost", "--data-dir", str(data_dir))
    assert rekeyed.returncode == 0
    assert json.loads(config_path.read_text())["device_public"] != config["device_public"]
    assert json.loads(config_path.read_text())["context"]["version"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "Bad Name", "--room", "#sensors:localhost"], "device names"),
        (["add", "x", "--room", "#nowhere:localhost"], "no room has the alias"),
        (["add", "x", "--room", "!nosuch:localhost"], "no room"),
        (["add", "x", "--room", "#sensors:localhost", "--link", "tcp:1.2.3.4"], "--link"),
        (["add", "x", "--room", "#sensors:localhost", "--channel", "temp"], "NAME:UNIT:SCALE"),
        (["add", "x", "--room", "#sensors:localhost", "--channel", "bad name:C:0"], "SenML name"),
        (["show", "ghost"], "no device named"),
        (["revoke", "ghost"], "no device named"),
        (["flash", "ghost", "--port", "/dev/null"], "no device config"),
    ],
)
def test_bad_input_is_one_line_and_status_2(data_dir, args, message):
    done = lowband("device", *args, "--data-dir", str(data_dir))
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_refuses_a_dir_that_is_no_gateway(tmp_path):
    done = lowband("device", "list", "--data-dir", str(tmp_path))
    assert done.returncode == 2 and "not a gateway data dir" in done.stderr


def test_duplicate_name_needs_rekey(data_dir):
    assert lowband("device", "add", "kitchen", "--room", "#sensors:localhost", "--data-dir", str(data_dir)).returncode == 0
    again = lowband("device", "add", "kitchen", "--room", "#sensors:localhost", "--data-dir", str(data_dir))
    assert again.returncode == 2 and "--rekey" in again.stderr


def test_flash_dry_run_lists_firmware_config_and_board(data_dir):
    assert lowband("device", "add", "kitchen", "--room", "#sensors:localhost", "--data-dir", str(data_dir)).returncode == 0
    done = lowband("device", "flash", "kitchen", "--port", "/dev/ttyUSB9", "--data-dir", str(data_dir), "--dry-run",
                   "--board", "heltec-wifi-lora-32-v3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert ":lib/lbwire/frame.py" in done.stdout and ":lib/lbcrypto/x25519.py" in done.stdout
    assert ":lowband.json" in done.stdout and ":board.json" in done.stdout and ":region.json" in done.stdout
    assert "nothing written" in done.stdout
    compiled = lowband("device", "flash", "kitchen", "--port", "/dev/ttyUSB9", "--data-dir", str(data_dir), "--dry-run", "--mpy")
    assert compiled.returncode == 0 and ":lib/lbwire/frame.mpy" in compiled.stdout
    unknown = lowband("device", "flash", "kitchen", "--port", "x", "--data-dir", str(data_dir), "--dry-run", "--board", "nope")
    assert unknown.returncode == 2
