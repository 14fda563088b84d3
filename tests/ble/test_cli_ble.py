"""`lowband ble add|list|remove` on a data dir (gateway stopped), their refusals, and `ble scan`'s table."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import LOWBAND, gateway_in_loop

from lowband.gateway.bench.ble import bthome_objects, bthome_service_data
from lowband.gateway.ble.advert import make_advertisement
from lowband.gateway.ble.decode import FORMATS, decode
from lowband.gateway.cli import ble as cli_ble
from lowband.gateway.cli.main import main

KEY = "231d39c1d7cc1ab1aee224cd096db932"


@pytest.fixture(scope="module")
def made_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with the public room #sensors:localhost, gateway stopped again (made once per module)."""
    tmp_path = tmp_path_factory.mktemp("ble-cli")

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


@pytest.fixture
def data_dir(made_data_dir: Path) -> Path:
    """The module's data dir with no BLE sensors."""
    (made_data_dir / "ble" / "sensors.json").unlink(missing_ok=True)
    return made_data_dir


def ble(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``lowband ble ARGS`` in this process: (status, stdout, stderr)."""
    status = main(["ble", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_add_list_remove_through_the_installed_command(data_dir: Path) -> None:
    def lowband(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LOWBAND, "ble", *args, "--data-dir", str(data_dir)], capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip

    added = lowband("add", "kitchen", "--address", "a4-c1-38-8d-18-b2", "--format", "bthome", "--key", KEY,
                    "--room", "#sensors:localhost", "--interval", "60")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "@ble_kitchen:localhost" in added.stdout and "(encrypted)" in added.stdout
    path = data_dir / "ble" / "sensors.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds the bindkey
    stored = json.loads(path.read_text())["sensors"]
    assert len(stored) == 1 and stored[0]["address"] == "A4:C1:38:8D:18:B2" and stored[0]["key"] == KEY
    assert stored[0]["rooms"][0].startswith("!") and stored[0]["interval_s"] == 60
    porch = lowband("add", "porch", "--address", "C4:7C:8D:6A:3E:11", "--gatt", "--command-char", "2a56",
                    "--room", "#sensors:localhost")  # fmt: skip
    assert porch.returncode == 0, porch.stderr
    listing = lowband("list")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:4] == ["name", "address", "format", "key"]
    assert lines[1].split()[:4] == ["kitchen", "A4:C1:38:8D:18:B2", "bthome", "yes"]
    assert lines[2].split()[:4] == ["porch", "C4:7C:8D:6A:3E:11", "gatt", "no"]
    assert KEY not in listing.stdout
    removed = lowband("remove", "kitchen")
    assert removed.returncode == 0 and "removed kitchen" in removed.stdout
    assert [line.split()[0] for line in lowband("list").stdout.splitlines()[1:]] == ["porch"]


def test_list_json_and_gatt_options(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = ble(capsys, "add", "plant", "--address", "C4:7C:8D:6A:3E:11", "--gatt", "--gatt-char", "2a6e",
                         "--gatt-char", "0x2A6F", "--poll", "30", "--room", "#sensors:localhost",
                         "--data-dir", str(data_dir))  # fmt: skip
    assert status == 0, err
    status, out, _ = ble(capsys, "list", "--json", "--data-dir", str(data_dir))
    summary = json.loads(out)
    assert summary["user_id"] == "@ble_plant:localhost" and summary["format"] == "gatt"
    assert summary["gatt"] == {"characteristics": ["00002a6e-0000-1000-8000-00805f9b34fb",
                                                   "00002a6f-0000-1000-8000-00805f9b34fb"],
                               "subscribe": False, "poll_s": 30.0, "command": None}  # fmt: skip
    assert "key" not in summary
    status, out, _ = ble(capsys, "add", "plant", "--address", "C4:7C:8D:6A:3E:11", "--replace",
                         "--data-dir", str(data_dir))  # fmt: skip
    assert status == 0 and "replaced plant" in out and "in no room yet" in out
    status, out, _ = ble(capsys, "list", "--data-dir", str(data_dir))
    assert out.splitlines()[1].split()[2] == "auto"
    assert ble(capsys, "remove", "plant", "--data-dir", str(data_dir))[0] == 0
    assert ble(capsys, "list", "--data-dir", str(data_dir))[1].strip() == "no BLE sensors"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "x", "--address", "A4:C1:38:8D:18"], "not a Bluetooth address"),
        (["add", "x", "--address", "A4:C1:38:8D:18:ZZ"], "not a Bluetooth address"),
        (["add", "x", "--address", "A4:C1-38:8D:18:B2"], "not a Bluetooth address"),
        (["add", "x", "--address", "A4:C1:38:8D:18:B2", "--key", "abcd"], "32 hex digits; got 4"),
        (["add", "x", "--address", "A4:C1:38:8D:18:B2", "--key", "g" * 32], "not all hex digits"),
        (["add", "x", "--address", "A4:C1:38:8D:18:B2", "--format", "govee", "--key", KEY], "has no encryption"),
        (["add", "Bad Name", "--address", "A4:C1:38:8D:18:B2"], "sensor names"),
        (["add", "x", "--address", "A4:C1:38:8D:18:B2", "--room", "#nowhere:localhost"], "no room has the alias"),
        (["add", "x", "--address", "A4:C1:38:8D:18:B2", "--room", "!nosuch:localhost"], "no room"),
        (["add", "x", "--address", "A4:C1:38:8D:18:B2", "--room", "sensors"], "neither a room ID"),
        (["add", "x", "--address", "A4:C1:38:8D:18:B2", "--interval", "0"], "--interval"),
        (["add", "x", "--address", "A4:C1:38:8D:18:B2", "--command-char", "2a56"], "add --gatt"),
        (["add", "x", "--address", "A4:C1:38:8D:18:B2", "--gatt", "--key", KEY], "--key is for encrypted"),
        (["add", "x", "--address", "A4:C1:38:8D:18:B2", "--gatt", "--gatt-char", "xyz"], "not a UUID"),
        (["add", "x", "--address", "A4:C1:38:8D:18:B2", "--gatt", "--gatt-char", "2a19"], "is not read by the gateway"),
        (["remove", "ghost"], "no BLE sensor named 'ghost'"),
    ],
)
def test_bad_input_is_one_line_and_status_2(data_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                            message: str) -> None:  # fmt: skip
    status, _, err = ble(capsys, *args, "--data-dir", str(data_dir))
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert not (data_dir / "ble" / "sensors.json").exists()


def test_unknown_format_is_refused_by_the_parser(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["ble", "add", "x", "--address", "A4:C1:38:8D:18:B2", "--format", "eddystone", "--data-dir", str(data_dir)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'eddystone'" in err and err.count("\n") == 1


def test_duplicate_name_and_address_are_refused(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(data_dir)]
    assert ble(capsys, "add", "kitchen", "--address", "A4:C1:38:8D:18:B2", *d)[0] == 0
    status, _, err = ble(capsys, "add", "kitchen", "--address", "A4:C1:38:00:00:01", *d)
    assert status == 2 and "'kitchen' exists" in err
    status, _, err = ble(capsys, "add", "porch", "--address", "a4:c1:38:8d:18:b2", *d)
    assert status == 2 and "A4:C1:38:8D:18:B2 is sensor 'kitchen' already" in err


def test_not_a_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = ble(capsys, "list", "--data-dir", str(tmp_path))
    assert status == 2 and "is not a gateway data dir" in err


def test_scan_arguments_are_checked_before_any_bluetooth(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = ble(capsys, "scan", "--seconds", "0")
    assert status == 2 and "--seconds" in err
    status, _, err = ble(capsys, "scan", "--adapter", "usb0")
    assert status == 2 and "not an adapter name" in err


def test_the_cli_offers_the_decoders_formats() -> None:
    assert cli_ble.FORMATS == FORMATS


def test_scan_table_lists_decoded_sensors_strongest_first() -> None:
    address_a, address_b, address_c = "A4:C1:38:00:00:01", "A4:C1:38:00:00:02", "11:22:33:44:55:66"
    key = bytes.fromhex(KEY)
    plain = make_advertisement(address_a, rssi=-70, local_name="porch",
                               service_data={0xFCD2: bthome_service_data(bthome_objects(1, 90, 21.5, 40.0))})  # fmt: skip
    sealed = make_advertisement(address_b, rssi=-50, service_data={
        0xFCD2: bthome_service_data(bthome_objects(7, 80, -3.25, 55.5), address=address_b, key=key, counter=7)})
    other = make_advertisement(address_c, rssi=-40, manufacturer_data={0x004C: b"\x02\x15" + bytes(21)})
    heard: dict[str, tuple[Any, Any]] = {
        adv.address: (adv, decode(adv, "auto", key if adv.address == address_b else None)) for adv in (plain, sealed, other)
    }  # fmt: skip
    table = cli_ble.scan_table(heard, {address_b: "freezer"}, show_all=False).splitlines()
    assert table[0].split() == ["address", "rssi", "name", "format", "values"]
    assert table[1].split()[:4] == [address_b, "-50", "freezer", "bthome*"]
    assert "temperature -3.25 Cel" in table[1] and "humidity 55.5 %RH" in table[1] and "battery 80 %EL" in table[1]
    assert table[2].split()[:4] == [address_a, "-70", "porch", "bthome"] and "temperature 21.5 Cel" in table[2]
    assert table[3] == "2 sensors decoded, 1 other device (--all lists them); * = encrypted"
    everything = cli_ble.scan_table(heard, {}, show_all=True).splitlines()
    assert everything[1].startswith(address_c) and "(" in everything[1]
    # Without its key the encrypted one is not decoded: it is listed all the same, saying why.
    heard[address_b] = (sealed, decode(sealed, "auto", None))
    table = cli_ble.scan_table(heard, {}, show_all=False).splitlines()
    assert table[1].split()[:3] == [address_b, "-50", "*"] and "(no_key: encrypted BTHome" in table[1]
    assert table[-1] == ("1 sensor decoded, 1 encrypted without a usable key (--data-dir with their keys), "
                         "1 other device (--all lists them); * = encrypted")  # fmt: skip


# ------------------------------------------------------------------ scan against a fake BlueZ (bleak, D-Bus)
# (the fake_bluez fixture is tests/ble/conftest.py's)

RUUVI_RAWV2 = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")  # Ruuvi's documented RAWv2 example


def test_scan_lists_what_is_in_range_with_decoded_values(fake_bluez: Any, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    plain, sealed, ruuvi, phone = "A4:C1:38:00:00:01", "A4:C1:38:00:00:02", "C8:25:2D:8E:E5:2F", "11:22:33:44:55:66"
    fake_bluez.add_adapter("hci0", passive=True)
    fake_bluez.add_device(plain, name="porch", rssi=-70,
                          service_data={0xFCD2: bthome_service_data(bthome_objects(1, 90, 21.5, 40.0))})  # fmt: skip
    fake_bluez.add_device(sealed, rssi=-50, service_data={0xFCD2: bthome_service_data(
        bthome_objects(3, 80, -3.25, 55.5), address=sealed, key=bytes.fromhex(KEY), counter=3)})
    fake_bluez.add_device(ruuvi, name="Ruuvi E52F", rssi=-80, manufacturer_data={0x0499: RUUVI_RAWV2})
    fake_bluez.add_device(phone, rssi=-40, manufacturer_data={0x004C: b"\x10\x05\x01\x18\x44\x00\x00"})
    # A data dir that knows the encrypted sensor's key (the gateway need not run for scan).
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "server_name").write_text("localhost\n")
    assert ble(capsys, "add", "freezer", "--address", sealed, "--key", KEY, "--data-dir", str(data_dir))[0] == 0

    status, out, err = ble(capsys, "scan", "--seconds", "1.5", "--data-dir", str(data_dir))
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["address", "rssi", "name", "format", "values"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert set(rows) == {plain, sealed, ruuvi}  # the phone is counted, not listed
    assert rows[sealed].split()[1:4] == ["-50", "freezer", "bthome*"] and "temperature -3.25 Cel" in rows[sealed]
    assert rows[plain].split()[1:4] == ["-70", "porch", "bthome"] and "humidity 40 %RH" in rows[plain]
    assert "ruuvitag" in rows[ruuvi] and "temperature 24.3 Cel" in rows[ruuvi] and "pressure 1000.44 hPa" in rows[ruuvi]
    assert [line.split()[0] for line in lines[1:-1]] == [sealed, plain, ruuvi]  # strongest first
    assert lines[-1] == "3 sensors decoded, 1 other device (--all lists them); * = encrypted"
    # Without the data dir the encrypted one cannot be read: it says why; --all lists the phone too.
    status, out, _ = ble(capsys, "scan", "--seconds", "1.5", "--all")
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert "(no_key" in rows[sealed] and phone in rows


def test_scan_falls_back_to_active_scanning_and_says_so(fake_bluez: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake_bluez.add_adapter("hci0", passive=False)  # BlueZ without --experimental: no advertisement monitors
    fake_bluez.add_device("A4:C1:38:00:00:01", rssi=-60,
                          service_data={0xFCD2: bthome_service_data(bthome_objects(1, 90, 21.5, 40.0))})  # fmt: skip
    status, out, err = ble(capsys, "scan", "--seconds", "1")
    assert status == 0 and "A4:C1:38:00:00:01" in out
    assert err.startswith("lowband: scanning actively:") and err.count("\n") == 1


def test_scan_without_bluez_or_adapter_is_one_clear_line(fake_bluez: Any, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    status, _, err = ble(capsys, "scan", "--seconds", "1")  # BlueZ runs, but has no adapter
    assert status == 2 and "no Bluetooth adapter" in err and err.count("\n") == 1, err
    fake_bluez.add_adapter("hci0")
    status, _, err = ble(capsys, "scan", "--seconds", "1", "--adapter", "hci1")
    assert status == 2 and "hci1 not found (have hci0)" in err and err.count("\n") == 1, err
    fake_bluez.stop_bluez()
    status, _, err = ble(capsys, "scan", "--seconds", "1")
    assert status == 2 and "BlueZ (bluetoothd) is not running" in err and err.count("\n") == 1, err
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-such-bus")
    status, _, err = ble(capsys, "scan", "--seconds", "1")
    assert status == 2 and "no system D-Bus" in err and err.count("\n") == 1, err
