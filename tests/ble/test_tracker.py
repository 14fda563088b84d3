"""The sans-I/O sensor tracker: dedup, replay, downgrade, presence, the bounded unknown set."""

from __future__ import annotations

import random
import sys
import tracemalloc

from test_decode import KEY, bthome_encrypted, bthome_plain, temp_hum

from lowband.gateway.ble.advert import Advertisement, make_advertisement
from lowband.gateway.ble.decode import Decoded
from lowband.gateway.ble.registry import make_sensor
from lowband.gateway.ble.tracker import Presence, Reading, Refused, SensorTracker

PLAIN = "A4:C1:38:00:00:01"
SECRET = "A4:C1:38:00:00:02"
BTHOME = 0xFCD2


def tracker(**kwargs: object) -> SensorTracker:
    sensors = [
        make_sensor("porch", PLAIN, format="bthome", interval_s=60),
        make_sensor("cellar", SECRET, format="bthome", key=KEY.hex(), interval_s=60),
    ]
    return SensorTracker(sensors, now=0.0, **kwargs)  # type: ignore[arg-type]


def adv(address: str, data: bytes, t: float, rssi: int = -70) -> Advertisement:
    return make_advertisement(address, service_data={BTHOME: data}, rssi=rssi, time=t, wall_ms=int(1e12 + t * 1000))


def readings(events: list[object]) -> list[Reading]:
    return [e for e in events if isinstance(e, Reading)]


def test_duplicate_packet_ids_make_one_reading_while_the_sensor_repeats_them() -> None:
    t = tracker()
    packet = bthome_plain(b"\x00\x07" + temp_hum(2000, 5000))
    got = readings(t.feed(adv(PLAIN, packet, 1.0), 1.0))
    assert [r.decoded.values for r in got] == [{"temperature": 20.0, "humidity": 50.0}]
    # The sensor repeats the packet every second for ten seconds: the window slides, nothing new.
    for second in range(2, 12):
        assert t.feed(adv(PLAIN, packet, float(second)), float(second)) == []
    assert t.stats(12.0)["duplicates"] == 10
    # The next packet id is a new reading at once; the same id again after a silence is a new packet (ids wrap).
    nxt = bthome_plain(b"\x00\x08" + temp_hum(2010, 5000))
    assert len(readings(t.feed(adv(PLAIN, nxt, 12.0), 12.0))) == 1
    assert len(readings(t.feed(adv(PLAIN, packet, 30.0), 30.0))) == 1
    txns = {r.txn for r in got}
    assert all(x.startswith(PLAIN) for x in txns)


def test_without_packet_id_an_unchanged_reading_is_posted_once_per_interval() -> None:
    t = tracker()
    same = bthome_plain(temp_hum(2000, 5000))
    assert len(readings(t.feed(adv(PLAIN, same, 0.0), 0.0))) == 1
    assert t.feed(adv(PLAIN, same, 30.0), 30.0) == []  # unchanged, within interval_s (60)
    changed = bthome_plain(temp_hum(2001, 5000))
    assert len(readings(t.feed(adv(PLAIN, changed, 31.0), 31.0))) == 1  # a change is posted at once
    assert len(readings(t.feed(adv(PLAIN, changed, 92.0), 92.0))) == 1  # unchanged, but a whole interval later


def test_encrypted_counter_replay_and_repeats() -> None:
    t = tracker()
    first = bthome_encrypted(SECRET, temp_hum(2150, 4000), counter=500)
    second = bthome_encrypted(SECRET, temp_hum(2160, 4000), counter=501)
    got = readings(t.feed(adv(SECRET, first, 1.0), 1.0))
    assert len(got) == 1 and got[0].decoded.counter == 500 and got[0].decoded.encrypted
    assert t.feed(adv(SECRET, first, 2.0), 2.0) == []  # the sensor repeats its packet: a duplicate
    assert len(readings(t.feed(adv(SECRET, second, 3.0), 3.0))) == 1
    # A recorded older packet played back: refused as a replay, counted, no reading.
    events = t.feed(adv(SECRET, first, 4.0), 4.0)
    assert events == [Refused("cellar", SECRET, "replay", events[0].detail)]  # type: ignore[union-attr]
    # The same counter with other (validly sealed) bytes: a replay too (a nonce used twice).
    again = bthome_encrypted(SECRET, temp_hum(9999, 4000), counter=501)
    assert [e.kind for e in t.feed(adv(SECRET, again, 5.0), 5.0)] == ["replay"]  # type: ignore[union-attr]
    # Counters below 100 are no exception (the library would let a restart from 0 through).
    low = bthome_encrypted(SECRET, temp_hum(2150, 4000), counter=3)
    assert [e.kind for e in t.feed(adv(SECRET, low, 6.0), 6.0)] == ["replay"]  # type: ignore[union-attr]
    stats = t.stats(6.0)
    assert stats["refused"] == {"replay": 3}
    assert stats["sensors"]["cellar"]["readings"] == 2  # type: ignore[index]
    assert got[0].txn.endswith("/c500")


def test_downgrade_wrong_key_and_garbage_are_refused_and_counted() -> None:
    t = tracker()
    plain = bthome_plain(temp_hum(2150, 4000))
    assert [e.kind for e in t.feed(adv(SECRET, plain, 1.0), 1.0)] == ["downgrade"]  # type: ignore[union-attr]
    forged = bthome_encrypted(SECRET, temp_hum(2150, 4000), counter=900, key=bytes(16))
    assert [e.kind for e in t.feed(adv(SECRET, forged, 2.0), 2.0)] == ["decrypt_failed"]  # type: ignore[union-attr]
    assert [e.kind for e in t.feed(adv(PLAIN, b"", 3.0), 3.0)] == ["malformed"]  # type: ignore[union-attr]
    assert [e.kind for e in t.feed(adv(PLAIN, b"\x40\xfe\x01", 4.0), 4.0)] == ["no_values"]  # type: ignore[union-attr]
    # A forged packet with a higher counter must not move the counter on: the real next packet still counts.
    real = bthome_encrypted(SECRET, temp_hum(2150, 4000), counter=10)
    assert len(readings(t.feed(adv(SECRET, real, 5.0), 5.0))) == 1
    assert t.stats(5.0)["refused"] == {"downgrade": 1, "decrypt_failed": 1, "malformed": 1, "no_values": 1}


def test_hostile_random_service_data_from_configured_sensors() -> None:
    t = tracker()
    rng = random.Random(7)
    for i in range(3000):
        address = PLAIN if i % 2 else SECRET
        events = t.feed(adv(address, rng.randbytes(rng.randrange(0, 30)), i * 0.01), i * 0.01)
        assert all(isinstance(e, (Reading, Refused, Presence)) for e in events)
    stats = t.stats(30.0)
    assert stats["adverts"] == 3000
    assert sum(stats["refused"].values()) + stats["readings"] + stats["duplicates"] == 3000  # type: ignore[union-attr]


def test_presence_silent_after_interval_times_factor_and_back() -> None:
    t = tracker(silent_factor=3.0)
    packet = bthome_plain(b"\x00\x01" + temp_hum(2000, 5000))
    t.feed(adv(PLAIN, packet, 10.0), 10.0)
    assert t.next_deadline() == 180.0  # cellar never heard: its clock started at 0 (interval 60 × 3)
    assert t.tick(179.0, 0) == []
    silent = sorted(t.tick(191.0, 0), key=lambda e: e.sensor)
    assert [(e.sensor, e.present) for e in silent] == [("cellar", False), ("porch", False)]  # type: ignore[union-attr]
    assert silent[1].silent_s == 181.0  # type: ignore[union-attr]
    assert t.tick(500.0, 0) == []  # reported once
    back = t.feed(adv(PLAIN, bthome_plain(b"\x00\x02" + temp_hum(2000, 5000)), 501.0), 501.0)
    assert isinstance(back[0], Presence) and back[0].present and back[0].sensor == "porch"
    assert isinstance(back[1], Reading)
    stats = t.stats(501.0)
    assert stats["sensors"]["porch"]["present"] is True  # type: ignore[index]
    assert stats["sensors"]["cellar"]["present"] is False  # type: ignore[index]
    assert stats["sensors"]["cellar"]["last_seen_s_ago"] is None  # type: ignore[index]


def test_a_flood_of_random_addresses_stays_at_the_cap() -> None:
    cap = 256
    t = tracker(unknown_cap=cap)
    rng = random.Random(20_000)
    tracemalloc.start()
    try:
        for i in range(20_000):
            address = ":".join(f"{b:02X}" for b in rng.randbytes(6))
            t.feed(make_advertisement(address, service_data={BTHOME: rng.randbytes(20)}, rssi=-90,
                                      local_name="x" * 20, time=i * 0.001, wall_ms=i), i * 0.001)  # fmt: skip
            if i == 2_000:
                baseline = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    stats = t.stats(20.0)
    assert stats["unknown_tracked"] == cap
    assert stats["unknown_evicted"] == 20_000 - cap
    assert stats["unknown_adverts"] == 20_000
    assert len(t.unknown_devices()) == cap
    assert grown < 200_000, f"memory grew by {grown} bytes after the cap was reached"
    # The configured sensors are still served.
    assert len(readings(t.feed(adv(PLAIN, bthome_plain(temp_hum(1, 1)), 21.0), 21.0))) == 1
    assert sys.getsizeof(t.unknown_devices()) < 10_000


def test_set_sensors_keeps_state_unless_the_key_changes() -> None:
    t = tracker()
    packet = bthome_encrypted(SECRET, temp_hum(2150, 4000), counter=50)
    assert len(readings(t.feed(adv(SECRET, packet, 1.0), 1.0))) == 1
    same = [make_sensor("cellar", SECRET, format="bthome", key=KEY.hex(), interval_s=120)]
    t.set_sensors(same, 2.0)
    assert [e.kind for e in t.feed(adv(SECRET, bthome_encrypted(SECRET, temp_hum(1, 1), counter=49), 3.0), 3.0)] == [  # type: ignore[union-attr]
        "replay"
    ]
    new_key = bytes(range(16))
    t.set_sensors([make_sensor("cellar", SECRET, format="bthome", key=new_key.hex())], 4.0)
    fresh = bthome_encrypted(SECRET, temp_hum(1, 1), counter=1, key=new_key)
    got = readings(t.feed(adv(SECRET, fresh, 5.0), 5.0))
    assert len(got) == 1 and "/c1" in got[0].txn
    # An address that stops being a sensor is an unknown device from then on.
    t.set_sensors([], 6.0)
    assert t.feed(adv(SECRET, fresh, 7.0), 7.0) == []
    assert [d.address for d in t.unknown_devices()] == [SECRET]


def test_gatt_readings_are_each_a_reading() -> None:
    t = SensorTracker([make_sensor("desk", "C0:FF:EE:00:00:01", format="gatt", interval_s=60)], now=0.0)
    one = Decoded({"temperature": 21.5}, {"temperature": "Cel"}, format="gatt")
    a = readings(t.feed_decoded("desk", one, 1.0, 1000))
    b = readings(t.feed_decoded("desk", one, 2.0, 2000))
    assert len(a) == len(b) == 1 and a[0].txn != b[0].txn
    assert [e.kind for e in t.feed_decoded("nobody", one, 3.0, 3000)] == ["unknown_sensor"]  # type: ignore[union-attr]


def test_a_spoofed_sensor_with_a_new_packet_id_each_time_is_rate_limited() -> None:
    t = tracker()
    made = 0
    for i in range(1000):  # 100 advertisements per second for ten seconds, every one a "new" packet
        now = 1.0 + i * 0.01
        made += len(readings(t.feed(adv(PLAIN, bthome_plain(bytes([0, i % 256]) + temp_hum(i, 1)), now), now)))
    assert 30 + 9 <= made <= 30 + 11  # the burst, then one per second
    assert t.stats(11.0)["refused"] == {"rate_limited": 1000 - made}
    # The real sensor's next reading, after a quiet second, gets through again.
    assert len(readings(t.feed(adv(PLAIN, bthome_plain(b"\x00\x07" + temp_hum(5, 5)), 13.0), 13.0))) == 1
