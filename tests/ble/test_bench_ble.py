"""`lowband bench ble`: its simulated sensors send real BTHome v2 packets, and a small run has the promised shape.

The numbers themselves come from `lowband bench ble`, never from a test:
this checks what the bench counts (every reading one event, none lost)
and its output, on 20 sensors.
"""

from __future__ import annotations

import json
import struct

import pytest

from lowband.gateway.bench import ble as bench
from lowband.gateway.ble.advert import make_advertisement
from lowband.gateway.ble.decode import Decoded, Refusal, decode
from lowband.gateway.cli.main import main

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


def test_plain_packet_bytes() -> None:
    objects = bench.bthome_objects(7, 87, 21.53, 45.2)
    # 0x00 packet id 7, 0x01 battery 87 %, 0x02 temperature 2153 × 0.01, 0x03 humidity 4520 × 0.01
    assert objects == bytes.fromhex("0007" "0157" "026908" "03a811")
    assert bench.bthome_service_data(objects) == b"\x40" + objects


def test_encrypted_packet_layout_and_the_parser_reads_it() -> None:
    """The nonce and layout of the BTHome v2 spec: bthome-ble (through decode.py) decrypts it with the key only."""
    address = "54:48:E6:8F:80:A5"
    objects = bench.bthome_objects(1, 50, -3.25, 55.5)
    data = bench.bthome_service_data(objects, address=address, key=KEY, counter=0x00112233)
    assert data[0] == 0x41 and len(data) == 1 + len(objects) + 4 + 4
    assert data[-8:-4] == struct.pack("<I", 0x00112233)
    assert objects not in data  # encrypted
    adv = make_advertisement(address, rssi=-60, service_data={0xFCD2: data})
    decoded = decode(adv, "bthome", KEY)
    assert isinstance(decoded, Decoded) and decoded.encrypted and decoded.counter == 0x00112233
    assert decoded.values == {"battery": 50, "temperature": -3.25, "humidity": 55.5}
    wrong = decode(adv, "bthome", bytes(16))
    assert isinstance(wrong, Refusal) and wrong.kind == "decrypt_failed"
    # The address is part of the nonce: the same bytes from another address do not decrypt.
    moved = make_advertisement("54:48:E6:8F:80:A6", service_data={0xFCD2: data})
    assert isinstance(decode(moved, "bthome", KEY), Refusal)
    with pytest.raises(ValueError, match="address"):
        bench.bthome_service_data(objects, key=KEY)


def test_sim_sensors_are_fixed_and_their_readings_distinct() -> None:
    sensors = bench.sim_sensors(10, encrypted_every=5)
    assert [s.key is not None for s in sensors] == [True, False, False, False, False] * 2
    assert [s.address for s in sensors] == [s.address for s in bench.sim_sensors(10, encrypted_every=5)]
    assert len({s.address for s in sensors}) == 10
    sensor = sensors[0]
    seen = set()
    for _ in range(50):
        values, data = sensor.reading()
        decoded = decode(make_advertisement(sensor.address, service_data={0xFCD2: data}), "bthome", sensor.key)
        assert isinstance(decoded, Decoded) and decoded.values["humidity"] == values[1]
        seen.add(values)
    assert len(seen) == 50


def test_reading_key_reads_scaled_senml() -> None:
    content = {"org.lowband.senml": [{"n": "temperature", "u": "Cel", "v": -1999, "scale_": -2},
                                     {"n": "humidity", "u": "%RH", "v": 3, "scale_": -2}]}  # fmt: skip
    assert bench.reading_key("@ble_a:x", content) == ("@ble_a:x", 0.03)
    assert bench.reading_key("@ble_a:x", {"body": "BLE sensor a went silent"}) is None
    assert bench.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert bench.percentile([float(i) for i in range(1, 101)], 0.99) == 99.0


def test_a_small_run_posts_every_reading_once(capsys: pytest.CaptureFixture[str]) -> None:
    sensors, readings, seconds = 20, 3, 0.5
    assert main(["bench", "ble", "--json", "--sensors", str(sensors), "--messages", str(readings),
                 "--seconds", str(seconds)]) == 0  # fmt: skip
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert list(result)[:5] == ["adverts_per_s", "latency_ms_p50", "latency_ms_p99", "events", "lost"]
    expected = sensors * readings + int(bench.PACED_PER_S * seconds)
    assert result["events"] == expected and result["lost"] == 0 and result["duplicated"] == 0
    assert result["adverts"] == expected * bench.REPEATS and result["refused"] == 0
    assert result["adverts_per_s"] > 0 and result["decode_only_per_s"] > 0
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p99"]


def test_bad_sizes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "ble", "--sensors", "0"]) == 1
    assert "must be positive" in capsys.readouterr().err
    assert main(["bench", "ble", "--sensors", "1", "--messages", "300"]) == 1
    assert "packet ids wrap" in capsys.readouterr().err
