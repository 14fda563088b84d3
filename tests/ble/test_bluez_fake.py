"""The bleak-backed scanner against a fake BlueZ on a private D-Bus (sim/bluez.py, python3-dbusmock bluez5).

Real bleak, real dbus-fast, a real dbus-daemon: the devices carry typed
advertisement properties (ServiceData a{sv} of ay, ManufacturerData a{qv},
RSSI n) and new advertisements arrive as PropertiesChanged, as bluetoothd
sends them. The decoded values come from blecore's decoder on what the
scanner produced.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from harness import until
from test_decode import KEY, bthome_encrypted, bthome_plain, temp_hum

from lowband.gateway.ble.advert import Advertisement, full_uuid
from lowband.gateway.ble.decode import Decoded, decode
from lowband.gateway.ble.gatt_core import Backoff
from lowband.gateway.ble.scanner import SEEN_DEVICES, BleScanner, BleUnavailable, make_scanner, probe_adapter
from lowband.gateway.config import BleConfig
from lowband.sim.bluez import FakeBluez, FakeBluezError, fake_bluez_missing

PLAIN = "A4:C1:38:00:00:01"
SECRET = "A4:C1:38:00:00:02"
RUUVI = "C7:3A:2B:00:00:03"
BTHOME = full_uuid(0xFCD2)
RUUVI_RAW = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")


def by_address(got: list[Advertisement], address: str) -> list[Advertisement]:
    return [a for a in got if a.address == address]


def test_scanner_hears_plain_and_encrypted_bthome_and_a_vendor_format_passively(fake_bluez: FakeBluez) -> None:
    fake_bluez.add_adapter("hci0", passive=True)
    first = bthome_plain(b"\x00\x21" + temp_hum(2150, 4020))
    fake_bluez.add_device(PLAIN, name="ATC_000001", rssi=-61, service_data={0xFCD2: first})
    fake_bluez.add_device(SECRET, rssi=-70, service_data={0xFCD2: bthome_encrypted(SECRET, temp_hum(1900, 6000), 700)})
    fake_bluez.add_device(RUUVI, name="Ruuvi 0003", rssi=-80, manufacturer_data={0x0499: RUUVI_RAW})

    async def scenario() -> None:
        got: list[Advertisement] = []
        scanner = BleScanner(got.append)  # passive by default
        await scanner.start()
        try:
            assert scanner.stats()["mode_in_use"] == "passive", scanner.stats()
            monitors, _ = fake_bluez.adapter_state()
            assert len(monitors) == 1  # bleak registered an advertisement monitor: no StartDiscovery
            await until(lambda: all(by_address(got, a) for a in (PLAIN, SECRET, RUUVI)))
            # A new advertisement (new packet id, new values) from the plain sensor.
            second = bthome_plain(b"\x00\x22" + temp_hum(2160, 4000))
            fake_bluez.advertise(PLAIN, service_data={0xFCD2: second}, rssi=-58)
            await until(lambda: any(a.service_data.get(BTHOME) == second for a in by_address(got, PLAIN)))
        finally:
            await scanner.stop()
        assert fake_bluez.adapter_state()[0] == []  # the monitor is gone again

        plain = by_address(got, PLAIN)
        assert plain[0].service_data == {BTHOME: first}
        assert plain[0].local_name == "ATC_000001" and plain[0].rssi == -61
        assert isinstance(plain[0].time, float) and plain[0].wall_ms > 1_600_000_000_000
        latest = next(a for a in plain if a.service_data[BTHOME] == second)
        assert latest.rssi == -58
        assert (decode(plain[0]).values, decode(latest).values) == (  # type: ignore[union-attr]
            {"temperature": 21.5, "humidity": 40.2},
            {"temperature": 21.6, "humidity": 40.0},
        )

        secret = by_address(got, SECRET)[0]
        assert secret.local_name is None and secret.rssi == -70
        assert decode(secret).kind == "no_key"  # type: ignore[union-attr]
        opened = decode(secret, "bthome", KEY)
        assert isinstance(opened, Decoded) and opened.encrypted and opened.counter == 700
        assert opened.values == {"temperature": 19.0, "humidity": 60.0}

        ruuvi = by_address(got, RUUVI)[0]
        assert ruuvi.manufacturer_data == {0x0499: RUUVI_RAW} and ruuvi.service_data == {}
        vendor = decode(ruuvi)
        assert isinstance(vendor, Decoded) and vendor.format == "ruuvitag"
        assert vendor.values["temperature"] == 24.3 and vendor.values["pressure"] == 1000.44

        assert SEEN_DEVICES.get(RUUVI) is not None  # what gatt.py connects with

    asyncio.run(scenario())


def test_passive_without_the_monitor_api_scans_actively_and_says_why(
    fake_bluez: FakeBluez, caplog: pytest.LogCaptureFixture
) -> None:
    fake_bluez.add_adapter("hci0", passive=False)  # bluetoothd without --experimental
    fake_bluez.add_device(PLAIN, service_data={0xFCD2: bthome_plain(temp_hum(2000, 5000))})

    async def scenario() -> None:
        got: list[Advertisement] = []
        scanner = BleScanner(got.append, mode="passive")
        with caplog.at_level(logging.WARNING, logger="lowband.gateway.ble.scanner"):
            await scanner.start()
        try:
            stats = scanner.stats()
            assert stats["mode_in_use"] == "active"
            assert "--experimental" in stats["mode_reason"]
            assert [r.getMessage() for r in caplog.records if "--experimental" in r.getMessage()] == [
                f"BLE: {stats['mode_reason']}"]  # fmt: skip
            _, discovery_filter = fake_bluez.adapter_state()
            assert discovery_filter.get("Transport") == "le"  # an active discovery, LE only
            await until(lambda: bool(by_address(got, PLAIN)))
        finally:
            await scanner.stop()

    asyncio.run(scenario())


def test_active_mode_when_asked_even_where_passive_works(fake_bluez: FakeBluez) -> None:
    fake_bluez.add_adapter("hci0", passive=True)
    fake_bluez.add_device(PLAIN, rssi=-50)

    async def scenario() -> None:
        got: list[Advertisement] = []
        scanner = make_scanner(BleConfig(enabled=True, mode="active", adapter="hci0"), got.append)
        await scanner.start()
        try:
            assert scanner.stats()["mode_in_use"] == "active"
            assert fake_bluez.adapter_state()[0] == []  # no monitor
            await until(lambda: bool(by_address(got, PLAIN)))
        finally:
            await scanner.stop()

    asyncio.run(scenario())


def test_clear_errors_without_bus_bluez_or_adapter(fake_bluez: FakeBluez, monkeypatch: pytest.MonkeyPatch) -> None:
    async def cause(adapter: str | None = None) -> str:
        with pytest.raises(BleUnavailable) as raised:
            await BleScanner(lambda _a: None, adapter=adapter).start()
        return str(raised.value)

    async def scenario() -> None:
        assert await cause() == "BlueZ has no Bluetooth adapter"
        fake_bluez.add_adapter("hci0")
        assert await cause("hci1") == "Bluetooth adapter hci1 not found (have hci0)"
        assert await probe_adapter(None) == ("hci0", True)
        with pytest.raises(FakeBluezError, match="does not exist"):
            fake_bluez.add_device(PLAIN, adapter="hci7")
        with pytest.raises(ValueError):
            fake_bluez.add_device("A4:C1:38:00:00", adapter="hci0")
        fake_bluez.stop_bluez()
        assert "BlueZ (bluetoothd) is not running" in await cause()
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={fake_bluez.directory}/no-such-socket")
        assert (await cause()).startswith("no system D-Bus to reach BlueZ")

    asyncio.run(scenario())


def test_scanner_restarts_when_the_adapter_goes_and_comes_back(
    fake_bluez: FakeBluez, caplog: pytest.LogCaptureFixture
) -> None:
    fake_bluez.add_adapter("hci0")
    fake_bluez.add_device(PLAIN, rssi=-50)

    async def scenario() -> None:
        got: list[Advertisement] = []
        scanner = BleScanner(got.append, persistent=True, watch_s=0.1,
                             backoff=Backoff(initial=0.1, maximum=0.4, jitter=0))  # fmt: skip
        await scanner.start()
        try:
            await until(lambda: bool(by_address(got, PLAIN)))
            fake_bluez.remove_adapter("hci0")  # the dongle is pulled
            await until(lambda: scanner.stats()["state"] == "unavailable")
            assert "hci0" in scanner.stats()["last_error"]
            fake_bluez.add_adapter("hci0")  # plugged in again
            fake_bluez.add_device(SECRET, rssi=-40)
            await until(lambda: scanner.stats()["state"] == "running" and bool(by_address(got, SECRET)))
            assert scanner.stats()["restarts"] == 1
            # bluetoothd itself goes away: a persistent scanner keeps trying, says why, and recovers.
            fake_bluez.stop_bluez()
            await until(lambda: "not running" in scanner.stats()["last_error"]
                        or "stopped" in scanner.stats()["last_error"])  # fmt: skip
            fake_bluez.start_bluez()
            fake_bluez.add_adapter("hci0")
            fake_bluez.add_device(RUUVI, rssi=-45, manufacturer_data={0x0499: RUUVI_RAW})
            await until(lambda: bool(by_address(got, RUUVI)), timeout=15)
        finally:
            await scanner.stop()
        assert scanner.stats()["state"] == "stopped"

    asyncio.run(scenario())


def test_persistent_scanner_starts_without_bluez_and_picks_it_up_later(fake_bluez: FakeBluez) -> None:
    async def scenario() -> None:
        got: list[Advertisement] = []
        scanner = BleScanner(got.append, persistent=True, watch_s=0.1, backoff=Backoff(initial=0.1, maximum=0.2))
        await scanner.start()  # no adapter yet: does not raise
        try:
            assert scanner.stats()["state"] == "unavailable"
            assert scanner.stats()["last_error"] == "BlueZ has no Bluetooth adapter"
            fake_bluez.add_adapter("hci0")
            fake_bluez.add_device(PLAIN, rssi=-50)
            await until(lambda: bool(by_address(got, PLAIN)))
        finally:
            await scanner.stop()

    asyncio.run(scenario())


def test_fake_bluez_cleans_up_its_processes_and_directory() -> None:
    from bluez_fixture import require_fake_bluez

    require_fake_bluez()
    fake = FakeBluez()
    with fake:
        directory = fake.directory
        assert Path(fake.socket_path).exists()
        daemon, mock = fake.processes()
    assert daemon.poll() is not None and mock.poll() is not None
    assert not directory.exists()
    # Where Debian's python3-dbusmock cannot run, the reason the tests skip with (or fail with, in CI).
    assert fake_bluez_missing("/nonexistent/python3") == (
        "/nonexistent/python3 does not exist (python3-dbusmock runs under Debian's Python)"
    )
    broken = FakeBluez(python="/nonexistent/python3")
    with pytest.raises(FakeBluezError, match="does not exist"):
        broken.start()
    assert not broken.directory.exists()  # nothing left behind
