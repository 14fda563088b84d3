"""The status page of ``lowband demo`` in headless Chromium, and the demo's promises about it.

``lowband demo --device python`` runs in a subprocess (the gateway, a 9600 bps
emulated serial line and the CPython reference board sending a reading every
2 s). Its banner must name the status page with the demo login and the
token-less metrics URL, which must answer in the Prometheus text format.
``js/status_page_drive.mjs`` then drives Debian's Chromium through
playwright-core: a user without the admin flag is refused, ``demo`` signs in
and sees board1 with its last reading, the temperature plot gains a point when
the board sends again (live, without a reload), Tab from the top reaches the
range selector, the text contrast is at least 4.5:1, a 320 px wide viewport
does not scroll sideways, and logging out forgets the session. The screenshots
(desktop and phone width) are kept under the test's tmp dir; their paths are
printed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from harness import LOWBAND, free_port
from prometheus_client.parser import text_string_to_metric_families

from .homeservers import Homeserver, NodeScript

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"


def _wait_for_banner(log: Path, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        if "Ctrl-C stops" in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"lowband demo exited with {proc.returncode}: {text[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no demo banner within {timeout} s: {text[-3000:]}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def test_demo_status_page_in_chromium(node_modules: None, tmp_path: Path) -> None:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does)"
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        demo = subprocess.Popen([LOWBAND, "demo", "--data-dir", str(tmp_path / "data"), "--http", f"127.0.0.1:{port}",
                                 "--metrics", f"127.0.0.1:{metrics_port}", "--bps", "9600", "--interval", "2",
                                 "--device", "python"], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        banner = _wait_for_banner(log, demo, 60)
        base = f"http://127.0.0.1:{port}"
        # The banner's promises: the page with the demo login, and the metrics URL (the contract line).
        assert f"Status page: {base}/_lowband/status/  (log in as demo, password demo" in banner
        metrics_url = re.search(r"http://127\.0\.0\.1:\d+/metrics", banner)
        assert metrics_url is not None and metrics_url.group(0) == f"http://127.0.0.1:{metrics_port}/metrics", banner
        with urllib.request.urlopen(metrics_url.group(0), timeout=10) as response:
            names = {f.name for f in text_string_to_metric_families(response.read().decode())}
        assert "lowband_http_requests" in names and all(n.startswith("lowband_") for n in names), names

        server = Homeserver("demo", base, log)
        other = server.register("not-an-admin")
        screenshot, phone = tmp_path / "status-page.png", tmp_path / "status-page-320px.png"
        config = {"baseUrl": base, "chromium": CHROMIUM, "device": "board1", "series": "temperature",
                  "admin": {"user": "demo", "password": "demo"},
                  "other": {"user": other.user_id, "password": other.password},
                  "screenshot": str(screenshot), "phoneScreenshot": str(phone),
                  "growTimeoutMs": 40_000, "timeoutMs": 100_000}  # fmt: skip

        async def drive() -> dict:
            async with NodeScript("status_page_drive.mjs", config, tmp_path / "drive.stderr") as browser:
                return (await browser.wait_for("result", timeout=110))["result"]

        result = asyncio.run(drive())
    finally:
        assert _stop(demo) == 0, log.read_text(errors="replace")[-3000:]
    print(f"status page screenshots: {screenshot} and {phone}")
    print(json.dumps({k: result[k] for k in ("tab_order", "contrast", "points_before", "points_after")}))
    assert "not a server admin" in result["refused_text"]
    assert result["refused_dashboard_hidden"] and result["refused_token_kept"] is None
    assert re.search(r"temperature \d+\.\d Cel, humidity 40 %RH, battery 3\.7 V", result["last_reading"])
    assert result["health"] == "OK"
    assert {"Last seen", "Link quality", "Battery", "Duty-cycle budget", "Frames in / out"} <= set(result["facts"])
    assert result["points_after"] > result["points_before"] >= 1
    assert result["navigations"] == []  # the point came live, not by reloading the page
    assert result["connection"].startswith("Live")
    assert result["tooltip"].startswith("board1 temperature ") and " Cel at " in result["tooltip"]
    assert result["tab_order"][-1] == "range" and len(result["tab_order"]) <= 4, result["tab_order"]
    assert result["range_outline"] != "none"
    assert result["range_after_key"] == "604800000"  # the arrow key chose "last 7 days"
    assert result["contrast"]["checked"] > 20 and result["contrast"]["min"] >= 4.5, result["contrast"]
    assert result["phone_overflow_px"] <= 0
    assert result["after_logout_token"] is None
    assert result["page_errors"] == [] and result["requests_elsewhere"] == []
    assert result["http_errors"] == ["403 GET /_lowband/admin/v1/status"]  # the non-admin's refusal, nothing else
    assert screenshot.stat().st_size > 10_000 and phone.stat().st_size > 5_000
