"""Hydrogen, a real Matrix web client, in headless Chromium, with a nio client in the same encrypted room.

``js/hydrogen_drive.mjs`` serves Hydrogen (npm ``hydrogen-view-sdk``, the
whole app) on 127.0.0.1 and drives Debian's Chromium through playwright-core:
it logs in through the login form, opens the room, waits for the nio client's
message, types one back and takes a screenshot, kept under the test's tmp dir
(its path is printed). The nio client decrypts Hydrogen's message.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from .homeservers import Homeserver, NodeScript
from .nio_device import NioDevice, pump

pytestmark = pytest.mark.slow

#: Debian's package; `.ci/run` installs it.
CHROMIUM = "/usr/bin/chromium"


def test_hydrogen_in_chromium_logs_in_and_talks_with_a_nio_client_in_an_encrypted_room(
        homeserver: Homeserver, node_modules: None, tmp_path: Path) -> None:  # fmt: skip
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does)"
    person, bot = homeserver.register("hydrogen-user"), homeserver.register("hydrogen-nio")
    room_id = homeserver.encrypted_room(bot, [person], name="hydrogen and nio")
    screenshot = tmp_path / "hydrogen.png"
    to_hydrogen, from_hydrogen = "nio: hello Hydrogen", "hydrogen: hello nio"
    timings: dict[str, float] = {}
    steps: list[dict] = []

    async def main() -> dict:
        nio_client = NioDevice(homeserver, bot, tmp_path / "nio")
        started = time.monotonic()
        try:
            await nio_client.login()
            await nio_client.step()
            config = {"baseUrl": homeserver.base_url, "roomId": room_id, "chromium": CHROMIUM,
                      "user": {"userId": person.user_id, "password": person.password},
                      "expect": to_hydrogen, "send": from_hydrogen, "screenshot": str(screenshot),
                      "timeoutMs": 100_000}  # fmt: skip
            async with NodeScript("hydrogen_drive.mjs", config, tmp_path / "hydrogen-drive.stderr") as browser:
                ready = await browser.wait_for("step", "ready", timeout=60)
                timings["hydrogen ready"] = time.monotonic() - started
                # nio learns Hydrogen's new device (device_lists, keys/query), then shares its room key with it.
                await pump([nio_client], lambda: nio_client.knows(person.user_id, ready["device"]), "Hydrogen's device")
                await nio_client.send(room_id, to_hydrogen)
                await browser.wait_for("step", "shown", timeout=40)
                timings["shown in Hydrogen"] = time.monotonic() - started
                await pump([nio_client], lambda: nio_client.got(from_hydrogen) is not None, "Hydrogen's message", 40)
                timings["decrypted by nio"] = time.monotonic() - started
                result = (await browser.wait_for("result", timeout=30))["result"]
                steps.extend(browser.lines)
            assert nio_client.got(from_hydrogen) == (from_hydrogen, person.user_id, True, False)
            assert nio_client.undecryptable == 0
            return result
        finally:
            await nio_client.client.close()

    result = asyncio.run(asyncio.wait_for(main(), 150))
    print(f"Hydrogen on {homeserver.name}: {timings}; screenshot: {screenshot}")
    print(f"its steps: {steps}; failed homeserver requests (optional endpoints): {result['http_errors']}")
    assert result["homeserver_field"] == homeserver.base_url
    assert result["composer_placeholder"] == "Send an encrypted message…"  # Hydrogen sees the room encrypted
    assert result["shown_sender"] == bot.user_id
    assert result["sent_event_id"].startswith("$")
    assert result["page_errors"] == []
    assert screenshot.stat().st_size > 10_000
