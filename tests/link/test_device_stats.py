"""Figures per device (gateway/link/device_stats.py): the link core's counters on frames in memory, then the runtime
over a real pty with the scripted device, and the same figures scraped from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import LOWBAND, Client, gateway_in_loop, provision_kitchen, until
from prometheus_client.parser import text_string_to_metric_families

from lowband.codecs.link_frame import serial_encode
from lowband.gateway.homeserver.accounts import hash_password
from lowband.gateway.link.device_stats import (
    AirtimeWindow,
    DeviceCounters,
    battery_of,
    reading_from_content,
    snapshot,
    wire_len,
)  # fmt: skip
from lowband.gateway.link.gateway_core import Deliver, DeviceEntry, GatewayLink, Refused, SessionStarted, Transmit
from lowband.gateway.link.handshake import generate_keypair
from lowband.gateway.link.lora_modem import device_budget_s, frame_airtime, scheduler_for
from lowband.gateway.link.runtime import serial_airtime
from lowband.sim.device_core import DeviceLink
from lowband.sim.device_peer import ScriptedDevice
from lowband.sim.pty_link import PtyLink

READING = bytes.fromhex("11000718d71828190172")  # 21.5 Cel, 40 %RH, 3.70 V (docs/protocol/compact.md)
BPS = 100


def _transmits(actions: list[Any]) -> list[bytes]:
    return [a.frame for a in actions if isinstance(a, Transmit)]


class _Line:
    """One gateway core and one device core; frames are handed over by the test, one by one."""

    def __init__(self) -> None:
        gw_private, gw_public = generate_keypair()
        dev_private, dev_public = generate_keypair()
        self.stats = DeviceCounters()
        self.gateway = GatewayLink(gw_private, airtime_s=serial_airtime(BPS))
        self.gateway.add_device(DeviceEntry(7, "kitchen", dev_public), stats=self.stats)
        self.device = DeviceLink(7, dev_private, gw_public, rto=1.0)

    def to_device(self, frames: list[bytes], now: float) -> None:
        for frame in frames:
            self.device.receive(frame, now)


def test_core_counts_frames_handshakes_retransmissions_and_refusals_per_device() -> None:
    line = _Line()
    stats, gateway = line.stats, line.gateway
    line.device.publish(READING)
    [hs1] = line.device.poll(0.0)
    [hs2] = _transmits(gateway.receive(hs1, 0.0))
    assert (stats.frames_in, stats.bytes_in, stats.frames_out, stats.bytes_out) == (1, len(hs1), 1, len(hs2))
    assert stats.handshakes == 1 and stats.last_seen == 0.0 and stats.retransmissions_in == 0

    # HS2 lost: the device sends the same HS1 again and gets the same HS2, byte for byte
    assert _transmits(gateway.receive(hs1, 0.5)) == [hs2]
    assert (stats.retransmissions_in, stats.retransmissions_out, stats.handshakes) == (1, 1, 1)
    line.to_device([hs2], 0.5)

    [data] = line.device.poll(0.6)
    actions = gateway.receive(data, 0.6)
    assert any(isinstance(a, SessionStarted) for a in actions)
    [deliver] = [a for a in actions if isinstance(a, Deliver)]
    assert not _transmits(actions)  # nothing before the commit
    [ack] = _transmits(gateway.delivered(deliver.token, 0.7))
    assert (stats.frames_in, stats.frames_out, stats.bytes_out) == (3, 3, 2 * len(hs2) + len(ack))

    # the ACK is lost: the device's retry (or someone replaying its latest frame) gets the same ACK again
    assert _transmits(gateway.receive(data, 1.8)) == [ack]
    assert (stats.retransmissions_in, stats.retransmissions_out) == (2, 2)
    assert stats.last_seen == 1.8 and stats.refused == {}
    line.to_device([ack], 1.8)

    # a second reading, then the first frame replayed: older than the device's latest, refused, not "seen"
    line.device.publish(READING)
    [second] = line.device.poll(2.0)
    [deliver2] = [a for a in gateway.receive(second, 2.0) if isinstance(a, Deliver)]
    line.to_device(_transmits(gateway.delivered(deliver2.token, 2.0)), 2.0)
    assert [a for a in gateway.receive(data, 3.0) if isinstance(a, Refused)] == [Refused(7, "replay")]
    forged = bytearray(second)
    forged[-1] ^= 1
    assert gateway.receive(bytes(forged), 3.1) == [Refused(7, "bad_tag")]
    assert stats.refused == {"replay": 1, "bad_tag": 1}
    assert stats.retransmissions_in == 2 and stats.last_seen == 2.0
    assert stats.frames_in == 7 and stats.bytes_in == len(hs1) * 2 + len(data) * 3 + len(second) * 2

    # airtime: the frames seen (HS1 twice, the reading and its retry, the second reading; not the refused), 100 bps
    seen_frames = [hs1, hs1, data, data, second]
    assert stats.airtime.total(3.1) == pytest.approx(sum(len(serial_encode(f)) for f in seen_frames) * 10 / BPS)

    figures = snapshot(stats, link="serial:/dev/x?bps=100", address=7, session=gateway.has_session(7),
                       commands_pending=gateway.pending_commands(7), now=3.1, wall_now=1_000_000.0,
                       budget_s=36.0)  # fmt: skip
    assert figures["retransmissions"] == 4 and figures["session"] is True
    assert figures["last_seen_ms"] == 1_000_000_000 - 1100
    assert figures["duty_cycle_left"] == pytest.approx(1 - stats.airtime.total(3.1) / 36.0)
    assert figures["rssi_dbm"] is None and figures["battery"] is None and figures["last_reading"] is None
    json.dumps(figures)  # JSON-ready


def test_frames_of_an_unknown_address_count_for_no_device() -> None:
    line = _Line()
    line.device.publish(READING)
    [hs1] = line.device.poll(0.0)
    stranger = bytearray(hs1)
    stranger[1] = 9  # the address byte
    assert line.gateway.receive(bytes(stranger), 0.0) == [Refused(9, "unknown_device")]
    assert line.stats.frames_in == 0 and line.gateway.stats(9) is None


def test_wire_length_matches_the_serial_framing() -> None:
    for size in (0, 1, 20, 253, 254, 300):
        assert wire_len(size) == len(serial_encode(b"\x01" * size))  # no zero byte: the most COBS overhead
        assert wire_len(size) >= len(serial_encode(bytes(size)))
        if size < 254:
            assert wire_len(size) == len(serial_encode(bytes(size))) == size + 2


def test_airtime_window_forgets_what_is_older_than_the_window() -> None:
    window = AirtimeWindow(3600.0, 60)
    window.add(1.0, 10.0)
    window.add(2.0, 1800.0)
    assert window.total(1800.0) == 3.0
    assert window.total(3599.0) == 3.0
    assert window.total(3600.0) == 2.0  # the first minute's bucket left the window
    window.add(0.5, 3700.0)  # reuses the first bucket's slot
    assert window.total(3700.0) == 2.5 and window.total(5500.0) == 0.5 and window.total(7300.0) == 0.0
    with pytest.raises(ValueError):
        AirtimeWindow(0.0)


def test_lora_airtime_and_budget_come_from_the_region() -> None:
    eu = scheduler_for({"region": "EU868", "dr": "0", "freq": "868100000"})
    assert device_budget_s(eu) == pytest.approx(36.0)  # 1 % of an hour in sub-band 48
    assert frame_airtime(eu)(21) == pytest.approx(eu.airtime_ms(23) / 1000)  # SF12: about 1.3 s for a reading
    assert frame_airtime(eu)(2000) == pytest.approx(eu.airtime_ms(255) / 1000)  # never raises
    assert device_budget_s(scheduler_for({"region": "US915"})) is None  # no duty-cycle limit there


def test_reading_values_units_and_battery_from_the_senml_pack() -> None:
    content = {"msgtype": "m.notice", "body": "...", "org.lowband.senml": [
        {"n": "temperature", "bt": 1700000000, "u": "Cel", "v": 215, "scale_": -1},
        {"n": "humidity", "u": "%RH", "v": 40}, {"n": "battery", "u": "V", "v": 370, "scale_": -2},
        {"n": "odd", "v": True}, "not a record"]}  # fmt: skip
    reading = reading_from_content(content, 1_700_000_000_000)
    assert reading == {"ts_ms": 1_700_000_000_000, "values": {"temperature": 21.5, "humidity": 40.0, "battery": 3.7},
                       "units": {"temperature": "Cel", "humidity": "%RH", "battery": "V"}}  # fmt: skip
    assert battery_of(reading) == {"value": 3.7, "unit": "V"}
    level = reading_from_content({"org.lowband.senml": [{"n": "charge", "u": "%EL", "v": 87}]}, 1)
    assert level is not None and battery_of(level) == {"value": 87.0, "unit": "%"}
    assert reading_from_content({"msgtype": "m.text", "body": "hi"}, 1) is None
    counters = DeviceCounters()
    assert counters.note_reading(content, 5) and counters.battery == {"value": 3.7, "unit": "V"}
    assert not counters.note_reading({"body": "ok: led on"}, 6) and counters.last_reading["ts_ms"] == 5  # kept


# ------------------------------------------------------------------ the runtime on a pty, and /metrics

ADMIN, ADMIN_PW = "@root:localhost", "root-secret-pw"
V3 = "/_matrix/client/v3"
LINE_BPS = 115_200


def _families(payload: bytes) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(payload.decode())}


def _value(families: dict[str, Any], name: str, **labels: str) -> float | None:
    found = [s.value for f in families.values() for s in f.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]  # fmt: skip
    return sum(found) if found else None


def test_runtime_counts_a_real_device_and_metrics_show_it(tmp_path: Path) -> None:
    async def run() -> None:
        got: dict[str, Any] = {}

        def ready(services: Any) -> None:
            services.store.create_user_sync(ADMIN, hash_password(ADMIN_PW), True, int(time.time() * 1000))
            got["services"] = services

        with PtyLink(bps=LINE_BPS, seed=3) as line:
            async with gateway_in_loop(tmp_path, on_ready=ready) as url, aiohttp.ClientSession() as session:
                admin = Client(session, url)
                status, body = await admin.request("POST", V3 + "/login", {
                    "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "root"},
                    "password": ADMIN_PW}, token=False)  # fmt: skip
                assert status == 200, body
                admin.token, admin.user_id = body["access_token"], body["user_id"]
                status, body = await admin.request("POST", V3 + "/createRoom",
                                                   {"room_alias_name": "sensors", "preset": "public_chat"})  # fmt: skip
                assert status == 200, body
                config = json.loads(provision_kitchen(tmp_path / "data", line.path_a, LINE_BPS).read_text())
                services = got["services"]
                await until(lambda: "links" in services.components and "kitchen" in services.components["links"].devices,
                            20)  # fmt: skip
                runtime = services.components["links"]
                before = runtime.device_stats()["kitchen"]
                assert before["frames_in"] == 0 and before["last_seen_ms"] is None and before["session"] is False
                assert before["duty_cycle_budget_s"] is None and before["duty_cycle_left"] is None  # serial, no duty=

                _, first = await admin.request("GET", "/metrics")
                assert _value(_families(first), "lowband_device_frames_received_total", device="kitchen") == 0

                device = ScriptedDevice(config, line.path_b, rto=1.0)
                await device.start()
                try:
                    started = time.time()
                    device.publish_reading([(0, 215), (1, 40), (2, 370)])
                    await until(lambda: runtime.device_stats()["kitchen"]["last_reading"] is not None, 20)
                    await until(lambda: device.link.queued == 0, 10)  # the ACK arrived
                finally:
                    await device.stop()
                stats = runtime.device_stats()["kitchen"]
                assert stats["link"] == f"serial:{line.path_a}?bps={LINE_BPS}" and stats["address"] == config["address"]
                assert stats["frames_in"] >= 2 and stats["frames_out"] >= 2  # HS1 + reading, HS2 + ACK at least
                assert stats["bytes_in"] > 40 and stats["bytes_out"] > 40
                assert stats["handshakes"] >= 1 and stats["session"] is True
                assert started * 1000 - 1000 <= stats["last_seen_ms"] <= time.time() * 1000 + 1000
                assert stats["battery"] == {"value": 3.7, "unit": "V"}
                assert stats["last_reading"]["values"] == {"temperature": 21.5, "humidity": 40.0, "battery": 3.7}
                assert stats["last_reading"]["units"]["temperature"] == "Cel"
                assert stats["airtime_s_window"] > 0 and stats["airtime_window_s"] == 3600
                assert stats["rssi_dbm"] is None and stats["snr_db"] is None  # a serial line reports none
                assert stats["commands_pending"] == 0
                json.dumps(stats)

                # a forged frame with the device's address: counted as refused for it, by kind
                spec = stats["link"]
                forged = bytes([2 << 5, config["address"], 0]) + bytes(20)  # DATA, epoch 0: no_session or bad_tag
                runtime.links[spec].transport.on_bytes(serial_encode(forged))
                await until(lambda: sum(runtime.device_stats()["kitchen"]["refused"].values()) >= 1, 10)
                stats = runtime.device_stats()["kitchen"]

                _, second = await admin.request("GET", "/metrics")
                families = _families(second)
                for name, field in (("lowband_device_frames_received_total", "frames_in"),
                                    ("lowband_device_frames_sent_total", "frames_out"),
                                    ("lowband_device_received_bytes_total", "bytes_in"),
                                    ("lowband_device_sent_bytes_total", "bytes_out"),
                                    ("lowband_device_handshakes_total", "handshakes"),
                                    ("lowband_device_commands_pending", "commands_pending")):  # fmt: skip
                    assert _value(families, name, device="kitchen") == stats[field], name
                assert _value(families, "lowband_device_frames_received_total", device="kitchen") >= 3
                for kind, count in stats["refused"].items():
                    assert _value(families, "lowband_device_refused_frames_total", device="kitchen", kind=kind) == count
                assert _value(families, "lowband_device_retransmissions_total", device="kitchen",
                              direction="in") == stats["retransmissions_in"]  # fmt: skip
                assert _value(families, "lowband_device_session", device="kitchen") == 1
                assert _value(families, "lowband_device_battery_volts", device="kitchen") == pytest.approx(3.7)
                assert _value(families, "lowband_device_last_seen_timestamp_seconds",
                              device="kitchen") == pytest.approx(stats["last_seen_ms"] / 1000)  # fmt: skip
                assert _value(families, "lowband_device_airtime_seconds", device="kitchen") == pytest.approx(
                    stats["airtime_s_window"]
                )
                assert _value(families, "lowband_device_rssi_dbm", device="kitchen") is None  # not reported: absent
                assert _value(families, "lowband_device_duty_cycle_left_ratio", device="kitchen") is None

    asyncio.run(asyncio.wait_for(run(), 60))


def _device_add(data_dir: Path, spec: str) -> dict[str, Any]:
    """``lowband device add kitchen`` on link ``spec``; the device's config."""
    out = subprocess.run([LOWBAND, "device", "add", "kitchen", "--room", "#sensors:localhost", "--link", spec,
                          "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    config: dict[str, Any] = json.loads((data_dir / "devices" / "kitchen.json").read_text())
    return config


def test_runtime_charges_a_lora_device_against_its_duty_cycle(tmp_path: Path) -> None:
    """A ``lora:`` link (a transparent modem: the same frames over a pty) at EU868 DR5 (SF7): the device's frames are
    charged at their LoRa time on air against 1 % of an hour."""

    async def run() -> None:
        got: dict[str, Any] = {}
        with PtyLink(bps=LINE_BPS, seed=4) as line:
            async with gateway_in_loop(tmp_path, on_ready=lambda services: got.update(services=services)) as url:
                async with aiohttp.ClientSession() as session:
                    alice = Client(session, url)
                    await alice.register("alice")
                    status, body = await alice.request("POST", V3 + "/createRoom",
                                                       {"room_alias_name": "sensors", "preset": "public_chat"})  # fmt: skip
                    assert status == 200, body
                spec = f"lora:{line.path_a}?region=EU868&dr=5&freq=868100000&bps={LINE_BPS}"
                config = await asyncio.to_thread(_device_add, tmp_path / "data", spec)
                services = got["services"]
                await until(lambda: "links" in services.components and "kitchen" in services.components["links"].devices,
                            20)  # fmt: skip
                runtime = services.components["links"]
                device = ScriptedDevice(config, line.path_b, rto=1.0)
                await device.start()
                try:
                    device.publish_reading([(0, 215), (1, 40), (2, 370)])
                    await until(lambda: runtime.device_stats()["kitchen"]["last_reading"] is not None, 20)
                finally:
                    await device.stop()
                stats = runtime.device_stats()["kitchen"]
                scheduler = runtime.links[spec].transport.scheduler
                assert stats["duty_cycle_budget_s"] == pytest.approx(36.0) and stats["airtime_window_s"] == 3600
                # at least the HS1 and the reading, each at SF7's time on air (tens of ms), not at the serial rate
                least = (scheduler.airtime_ms(wire_len(50)) + scheduler.airtime_ms(wire_len(21))) / 1000
                assert least <= stats["airtime_s_window"] < 2.0
                assert stats["duty_cycle_left"] == pytest.approx(1 - stats["airtime_s_window"] / 36.0)
                assert 0.9 < stats["duty_cycle_left"] < 1.0
                assert stats["rssi_dbm"] is None and stats["snr_db"] is None  # the transparent modem reports none

    asyncio.run(asyncio.wait_for(run(), 60))
