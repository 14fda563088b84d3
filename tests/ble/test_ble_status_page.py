"""The status page's "BLE sensors" section in headless Chromium (Debian ``chromium`` + playwright-core).

An in-process gateway whose BLE component is fed advertisements directly (test_component.py's scanner
stand-in); ``tests/e2e_clients/js/status_page_ble_drive.mjs`` signs in as an admin and finds the sensor's
card with its health, last reading, RSSI, readings and refused count, the scanner's facts, and a temperature
plot from the room history that gains a point live when the sensor sends again (the test sends a new packet
every 0.7 s while the page is open). The screenshot is kept in the test's tmp dir (its path is printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from pathlib import Path

import pytest
from e2e_clients.homeservers import JS_DIR, NodeScript
from harness import until
from test_component import PORCH, ble_gateway
from test_decode import bthome_plain, temp_hum

from lowband.gateway.ble.component import BleComponent
from lowband.gateway.ble.registry import BleRegistry, make_sensor
from lowband.gateway.config import BleConfig
from lowband.gateway.homeserver.accounts import hash_password

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"


def test_ble_sensor_card_and_live_plot_in_chromium(tmp_path: Path) -> None:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does)"
    assert (JS_DIR / "node_modules" / "playwright-core" / "package.json").exists(), f"run `npm ci` in {JS_DIR}"
    screenshot = tmp_path / "status-page-ble.png"

    async def scenario() -> dict:
        async with ble_gateway(tmp_path, BleConfig(enabled=True)) as (base, services, scanner, _gatt):
            services.store.create_user_sync("@root:localhost", hash_password("root-secret-pw"), True,
                                            int(time.time() * 1000))  # fmt: skip
            room = await services.rooms.create_room("@root:localhost", {"preset": "public_chat"})
            registry = BleRegistry(tmp_path / "data")
            registry.add(make_sensor("porch", PORCH, format="bthome", rooms=[room], interval_s=60))
            component: BleComponent = services.components["ble"]
            await component.reload()
            await until(lambda: component.joined_rooms("porch") == [room])
            scanner.send(PORCH, bthome_plain(b"\x00\x01" + temp_hum(2150, 4020)), rssi=-67)
            scanner.send(PORCH, bthome_plain(b"\x40\x00"))  # no values: refused
            await until(lambda: component.stats()["posted"] == 1)

            async def keep_sending() -> None:
                for packet in range(2, 200):
                    await asyncio.sleep(0.7)
                    scanner.send(PORCH, bthome_plain(bytes([0x00, packet]) + temp_hum(2150 + packet, 4020)), rssi=-67)

            config = {"baseUrl": base, "chromium": CHROMIUM, "admin": {"user": "root", "password": "root-secret-pw"},
                      "sensor": "porch", "series": "temperature", "screenshot": str(screenshot),
                      "growTimeoutMs": 20_000, "timeoutMs": 60_000}  # fmt: skip
            async with NodeScript("status_page_ble_drive.mjs", config, tmp_path / "drive.stderr") as browser:
                await browser.wait_for("step", "signed in", timeout=60)
                sender = asyncio.create_task(keep_sending())
                try:
                    result = (await browser.wait_for("result", timeout=60))["result"]
                finally:
                    sender.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sender
            return result

    result = asyncio.run(scenario())
    print(f"status page screenshot: {screenshot}")
    print(json.dumps({k: result[k] for k in ("facts", "scanner", "points_before", "points_after")}))
    assert result["heading"] == "BLE sensors" and result["card_labelled_by"] == "porch"
    assert result["health"] == "OK"
    assert result["last_reading"].startswith("Last reading: temperature 21.5 Cel, humidity 40.2 %RH")
    facts = result["facts"]
    assert facts["Signal (RSSI)"] == "-67 dBm" and facts["Readings"] == "1" and facts["Format"] == "bthome"
    assert facts["Refused advertisements"] == "1 (no_values 1)" and facts["Address"] == PORCH
    assert result["scanner"]["Scanner"] == "running" and result["scanner"]["Mode"] == "passive"
    assert result["ble_off_hidden"] is True
    assert result["points_after"] > result["points_before"] >= 1
    assert result["navigations"] == [] and "temperature 21.5 Cel" not in result["last_reading_after"]
    assert result["tooltip"].startswith("porch temperature ") and " Cel at " in result["tooltip"]
    assert result["page_errors"] == [] and result["http_errors"] == []
    assert screenshot.stat().st_size > 10_000
