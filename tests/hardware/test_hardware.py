"""Radio profiles, LoRa time on air and the duty-cycle budget (lowband.hardware)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowband.hardware import lora, radio
from lowband.hardware.lora import DutyCycleBudget, DutyCycleError, SubBandBudgets, payload_symbols, time_on_air_ms
from lowband.hardware.radio import HardwareError

# ---------------------------------------------------------------------------
# Time on air against published figures
#
# (payload bytes, sf, bandwidth Hz, keyword overrides, expected ms, where it was published)
PUBLISHED = [
    (10, 7, 125_000, {}, 41.216, "rfwireless-world LoRaWAN airtime calculator, example 1"),
    (16, 7, 125_000, {}, 51.456, "tanupoo/lorawan_toa README; avbentem/airtime-calculator tests"),
    (25, 7, 250_000, {}, 30.848, "avbentem/airtime-calculator tests, SF7BW250"),
    (16, 7, 250_000, {"cr": 4}, 34.944, "avbentem/airtime-calculator tests, SF7BW250 CR4/8"),
    (12, 9, 125_000, {}, 144.384, "lora-modulation crate documentation example"),
    (13, 9, 125_000, {}, 164.864, "TTN AN1200.13 airtime spreadsheet"),
    (253, 8, 125_000, {"cr": 2}, 827.904, "Semtech SX1261 LoRa Calculator (micropython-lib lora tests)"),
    (10, 11, 125_000, {}, 577.536, "rfwireless-world example 2, low data rate optimisation on"),
    (25, 11, 125_000, {}, 823.296, "avbentem/airtime-calculator tests, SF11BW125 (LDRO)"),
    (13, 12, 125_000, {"low_data_rate_optimize": False}, 1155.072, "brocaar/lorawan airtime tests"),
    (64, 12, 125_000, {}, 2793.472, "tanupoo/lorawan_toa README and tests, LDRO on"),
    (64, 12, 125_000, {"low_data_rate_optimize": False}, 2465.792, "tanupoo/lorawan_toa tests, LDRO off"),
    (255, 7, 500_000, {"low_data_rate_optimize": False}, 99.904, "tanupoo/lorawan_toa tests"),
    (255, 7, 500_000, {"low_data_rate_optimize": True}, 137.024, "tanupoo/lorawan_toa tests"),
    (1, 12, 500_000, {}, 206.848, "Semtech SX1261 LoRa Calculator defaults (LDRO off at 8.192 ms)"),
    (64, 12, 500_000, {"preamble": 12}, 649.216, "Semtech SX1261 LoRa Calculator"),
    (253, 12, 7_810, {"cr": 4, "preamble": 128}, 287532.907, "Semtech SX1261 LoRa Calculator, 7.81 kHz, LDRO on"),
    (16, 11, 10_420, {"cr": 3, "preamble": 25}, 12824.568, "Semtech SX1261 LoRa Calculator, 10.42 kHz, LDRO on"),
    (16, 11, 10_420, {"cr": 3, "preamble": 25, "explicit_header": False, "crc": False}, 11448.752,
     "Semtech SX1261 LoRa Calculator, implicit header, no CRC"),
]


@pytest.mark.parametrize(("payload", "sf", "bw", "options", "expected", "source"), PUBLISHED)
def test_time_on_air_matches_published_figures(payload, sf, bw, options, expected, source):
    assert time_on_air_ms(payload, sf, bw, **options) == pytest.approx(expected, abs=1e-3), source


def test_loratools_figures_truncated_to_milliseconds():
    # loratools.nl values as quoted (truncated to whole ms) by the lorareg tests.
    assert math.floor(time_on_air_ms(7, 12, 125_000)) == 991
    assert math.floor(time_on_air_ms(51, 12, 125_000)) == 2465
    assert math.floor(time_on_air_ms(7, 11, 125_000)) == 495
    assert math.floor(time_on_air_ms(51, 11, 125_000)) == 1314
    assert math.floor(time_on_air_ms(7, 10, 125_000)) == 247
    assert math.floor(time_on_air_ms(51, 10, 125_000)) == 616


@pytest.mark.parametrize(
    ("payload", "sf", "cr", "explicit", "ldro", "expected"),
    [(13, 12, 1, True, False, 23), (13, 12, 2, True, False, 26), (13, 12, 1, False, False, 18), (50, 12, 1, True, True, 58)],
)
def test_payload_symbols_brocaar_vectors(payload, sf, cr, explicit, ldro, expected):
    assert payload_symbols(payload, sf, cr, explicit, True, ldro) == expected


@pytest.mark.parametrize(
    ("sf", "bw", "needed"),
    [(12, 125_000, True), (11, 125_000, True), (10, 125_000, False), (12, 250_000, True),
     (11, 250_000, False), (12, 500_000, False), (7, 125_000, False)],
)
def test_low_data_rate_optimisation_rule(sf, bw, needed):
    assert lora.low_data_rate_optimize_needed(sf, bw) is needed


def test_ldro_auto_equals_explicit_choice():
    assert time_on_air_ms(21, 12, 125_000) == time_on_air_ms(21, 12, 125_000, low_data_rate_optimize=True)
    assert time_on_air_ms(21, 10, 125_000) == time_on_air_ms(21, 10, 125_000, low_data_rate_optimize=False)


@pytest.mark.parametrize(
    "args",
    [(10, 6, 125_000), (10, 13, 125_000), (10, 7, 0), (10, 7, -125_000), (256, 7, 125_000), (-1, 7, 125_000)],
)
def test_time_on_air_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        time_on_air_ms(*args)


def test_time_on_air_rejects_bad_coding_rate_and_preamble():
    with pytest.raises(ValueError):
        time_on_air_ms(10, 7, 125_000, cr=5)
    with pytest.raises(ValueError):
        time_on_air_ms(10, 7, 125_000, preamble=-1)


def test_time_on_air_grows_with_payload_and_sf():
    for sf in range(7, 13):
        values = [time_on_air_ms(n, sf, 125_000) for n in range(0, 256)]
        assert values == sorted(values)
    for n in (1, 21, 51):
        values = [time_on_air_ms(n, sf, 125_000) for sf in range(7, 13)]
        assert values == sorted(values)


# ---------------------------------------------------------------------------
# The reference reading: 21 bytes on the radio


def test_reference_reading_airtime_and_rate():
    eu = radio.load_region("EU868")
    sf7 = eu.time_on_air_ms(5, 21)
    sf12 = eu.time_on_air_ms(0, 21)
    assert sf7 == pytest.approx(56.576, abs=1e-9)
    assert sf12 == pytest.approx(1482.752, abs=1e-9)
    hour_budget_ms = 0.01 * 3600 * 1000
    assert math.floor(hour_budget_ms / sf7) == 636
    assert math.floor(hour_budget_ms / sf12) == 24
    # Other figures quoted in docs/protocol/lora.md.
    assert eu.time_on_air_ms(0, 23) == pytest.approx(1482.752)  # same blocks as 21 bytes
    assert eu.time_on_air_ms(5, 23) == pytest.approx(61.696)
    assert eu.time_on_air_ms(0, 50) == pytest.approx(2301.952)  # HS1/HS2
    assert eu.time_on_air_ms(5, 50) == pytest.approx(97.536)
    us = radio.load_region("US915")
    assert max(us.time_on_air_ms(r.dr, r.mtu) for r in us.data_rates if r.direction == "up") == pytest.approx(379.136)


def test_scheduler_sustains_the_documented_rate_at_sf12():
    airtime = radio.load_region("EU868").time_on_air_ms(0, 21)
    budget = DutyCycleBudget(0.01)
    now, sent = 0.0, 0
    while True:
        t = budget.earliest_send(airtime, now)
        if t >= 10 * 3600:
            break
        budget.record(airtime, t)
        sent += 1
        now = t
    # 10 hours × 36 s ÷ 1.482752 s = 242.8 readings.
    assert 242 <= sent <= 244


# ---------------------------------------------------------------------------
# Region profiles


def test_shipped_regions_and_boards():
    assert radio.region_names() == ["EU868", "US915"]
    assert {"heltec-wifi-lora-32-v3", "rp2040-rfm95", "unix-sim"} <= set(radio.board_names())
    for name in radio.board_names():
        board = radio.load_board(name)
        assert board.name == name
        assert board.region.name == board.region_name


def test_eu868_data_rates_and_mtu():
    eu = radio.load_region("eu868")  # case-insensitive
    table = {rate.dr: (rate.sf, rate.bw_hz, rate.mtu) for rate in eu.data_rates}
    assert table == {
        0: (12, 125_000, 51),
        1: (11, 125_000, 51),
        2: (10, 125_000, 51),
        3: (9, 125_000, 115),
        4: (8, 125_000, 222),
        5: (7, 125_000, 222),
        6: (7, 250_000, 222),
    }
    assert [eu.mtu(dr) for dr in range(7)] == [51, 51, 51, 115, 222, 222, 222]
    assert eu.modulation.cr == 1 and eu.modulation.coding_rate == "4/5"
    assert eu.modulation.preamble_symbols == 8
    assert eu.modulation.explicit_header and eu.modulation.crc
    assert eu.duty_cycle_window_s == 3600
    assert eu.max_dwell_time_ms is None
    with pytest.raises(HardwareError):
        eu.data_rate(7)


def test_us915_data_rates_and_dwell_time():
    us = radio.load_region("US915")
    assert {r.dr: r.mtu for r in us.data_rates} == {
        0: 11, 1: 53, 2: 125, 3: 242, 4: 242, 8: 33, 9: 109, 10: 222, 11: 222, 12: 222, 13: 222,
    }
    assert (us.data_rate(0).sf, us.data_rate(0).bw_hz) == (10, 125_000)
    assert (us.data_rate(8).sf, us.data_rate(8).bw_hz) == (12, 500_000)
    assert us.max_dwell_time_ms == 400
    for rate in us.data_rates:
        if rate.direction == "up":
            assert us.time_on_air_ms(rate.dr, rate.mtu) <= 400
    assert us.sub_band_for(903_900_000, 125_000).duty_cycle == 1.0


@pytest.mark.parametrize(
    ("mhz", "duty", "band"),
    [(864.0, 0.001, "46a"), (866.0, 0.01, "47"), (868.1, 0.01, "48"), (868.5, 0.01, "48"),
     (868.9, 0.001, "50"), (869.525, 0.1, "54"), (869.85, 0.01, "56b")],
)
def test_eu868_sub_bands(mhz, duty, band):
    eu = radio.load_region("EU868")
    found = eu.sub_band_for(round(mhz * 1e6), 125_000)
    assert (found.name, found.duty_cycle) == (band, duty)


def test_eu868_frequencies_outside_every_sub_band():
    eu = radio.load_region("EU868")
    for hz in (868_650_000, 869_300_000, 862_000_000, 870_500_000):
        with pytest.raises(HardwareError):
            eu.sub_band_for(hz)
    # A 125 kHz channel centred 25 kHz below 868.6 MHz sticks out of band 48.
    with pytest.raises(HardwareError):
        eu.sub_band_for(868_575_000, 125_000)
    # On the shared edge of 46a (0.1 %) and 47 (1 %) the stricter one applies.
    assert eu.sub_band_for(865_000_000).name == "46a"


def test_check_payload_uses_the_mtu():
    eu = radio.load_region("EU868")
    eu.check_payload(0, 51)
    eu.check_payload(5, 222)
    for dr, size in ((0, 52), (3, 116), (5, 223), (0, 0)):
        with pytest.raises(HardwareError):
            eu.check_payload(dr, size)


# ---------------------------------------------------------------------------
# Board profiles


def test_heltec_v3_profile():
    board = radio.load_board("heltec-wifi-lora-32-v3")
    assert board.mcu == "esp32s3" and board.micropython_port == "esp32"
    assert board.link == "lora" and board.region_name == "EU868"
    assert board.radio is not None and board.radio.chip == "sx1262"
    assert board.radio.tcxo_voltage == 1.8 and board.radio.dio2_rf_switch
    assert {k: board.pins[k] for k in ("lora_nss", "lora_sck", "lora_mosi", "lora_miso", "lora_reset", "lora_busy", "lora_dio1")} == {
        "lora_nss": 8, "lora_sck": 9, "lora_mosi": 10, "lora_miso": 11, "lora_reset": 12, "lora_busy": 13, "lora_dio1": 14,
    }
    with pytest.raises(TypeError):
        board.pins["led"] = 2  # profiles are read-only


def test_rp2040_rfm95_profile():
    board = radio.load_board("rp2040-rfm95")
    assert board.mcu == "rp2040" and board.radio is not None
    assert board.radio.chip == "sx1276" and board.radio.module == "RFM95W" and board.radio.pa_boost
    assert (board.pins["lora_nss"], board.pins["lora_reset"], board.pins["lora_dio0"]) == (16, 17, 21)
    assert board.spi is not None and board.spi["id"] == 1
    assert board.region.name == "US915"


def test_unix_sim_profile():
    board = radio.load_board("unix-sim")
    assert board.link == "serial" and board.radio is None and board.spi is None
    assert board.serial is not None and board.serial["bps"] == 100 and board.serial["bits_per_byte"] == 10
    assert board.micropython_port == "unix"


@pytest.mark.parametrize("name", ["nope", "EU868", "", "../board-unix-sim", "heltec"])
def test_unknown_board(name):
    with pytest.raises(HardwareError) as info:
        radio.load_board(name)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["AS923", "", "eu868 ", "../region-eu868", None])
def test_unknown_region(name):
    with pytest.raises(HardwareError):
        radio.load_region(name)


def test_unknown_region_names_the_known_ones():
    with pytest.raises(HardwareError, match="EU868, US915"):
        radio.load_region("AU915")


# ---------------------------------------------------------------------------
# Malformed files


def _shipped(kind, name):
    from importlib import resources

    return json.loads((resources.files("lowband.hardware") / f"{kind}-{name}.json").read_text(encoding="utf-8"))


def _write(tmp_path, obj, name="profile.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def test_copies_of_shipped_files_load(tmp_path):
    assert radio.load_region_file(_write(tmp_path, _shipped("region", "eu868"))) == radio.load_region("EU868")
    assert radio.load_board_file(_write(tmp_path, _shipped("board", "unix-sim"))) == radio.load_board("unix-sim")


@pytest.mark.parametrize("text", ["{", "", "[1, 2", "{\"name\": 'EU868'}", "not json"])
def test_malformed_json(tmp_path, text):
    with pytest.raises(HardwareError, match="not valid JSON"):
        radio.load_region_file(_write(tmp_path, text))
    with pytest.raises(HardwareError, match="not valid JSON"):
        radio.load_board_file(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(HardwareError, match="cannot read"):
        radio.load_region_file(tmp_path / "absent.json")


def _region_with(change):
    obj = _shipped("region", "eu868")
    change(obj)
    return obj


REGION_BREAKAGES = [
    ("format", lambda o: o.update(format="lowband-region/2")),
    ("unknown field", lambda o: o.update(colour="blue")),
    ("name", lambda o: o.update(name="eu 868")),
    ("sf", lambda o: o["data_rates"][0].update(sf=13)),
    ("bw_hz", lambda o: o["data_rates"][0].update(bw_hz=200_000)),
    ("appears twice", lambda o: o["data_rates"][1].update(dr=0)),
    ("larger than max_mac_payload", lambda o: o["data_rates"][3].update(mtu=124)),
    ("mtu", lambda o: o["data_rates"][3].update(mtu=256)),
    ("coding_rate", lambda o: o["modulation"].update(coding_rate="4/9")),
    ("explicit_header", lambda o: o["modulation"].update(explicit_header="yes")),
    ("missing field crc", lambda o: o["modulation"].pop("crc")),
    ("overlap", lambda o: o["sub_bands"][1].update(max_hz=868_100_000)),
    ("duty_cycle", lambda o: o["sub_bands"][0].update(duty_cycle=0)),
    ("duty_cycle", lambda o: o["sub_bands"][0].update(duty_cycle=1.5)),
    ("min_hz must be below", lambda o: o["sub_bands"][0].update(min_hz=866_000_000)),
    ("no permitted sub-band", lambda o: o["channels"].append({"frequency_hz": 868_650_000, "dr_min": 0, "dr_max": 5})),
    ("not a data rate", lambda o: o["channels"][1].update(dr_max=9)),
    ("dwell time", lambda o: o.update(max_dwell_time_ms=400)),
    ("must be an object", lambda o: o["data_rates"].__setitem__(0, 5)),
    ("at least 1", lambda o: o.update(data_rates=[])),
]


@pytest.mark.parametrize(("message", "change"), REGION_BREAKAGES, ids=[m for m, _ in REGION_BREAKAGES])
def test_invalid_region_files(tmp_path, message, change):
    with pytest.raises(HardwareError, match=message) as info:
        radio.load_region_file(_write(tmp_path, _region_with(change)))
    assert "profile.json" in str(info.value)


def _board_with(name, change):
    obj = _shipped("board", name)
    change(obj)
    return obj


BOARD_BREAKAGES = [
    ("heltec-wifi-lora-32-v3", "needs lora_busy", lambda o: o["pins"].pop("lora_busy")),
    ("heltec-wifi-lora-32-v3", "both use GPIO 8", lambda o: o["pins"].update(led=8)),
    ("heltec-wifi-lora-32-v3", "GPIO number", lambda o: o["pins"].update(led=99)),
    ("heltec-wifi-lora-32-v3", "unknown region", lambda o: o.update(region="XX915")),
    ("heltec-wifi-lora-32-v3", "chip", lambda o: o["radio"].update(chip="sx1280")),
    ("heltec-wifi-lora-32-v3", "needs a radio", lambda o: o.update(radio=None)),
    ("heltec-wifi-lora-32-v3", "link", lambda o: o.update(link="wifi")),
    ("heltec-wifi-lora-32-v3", "name", lambda o: o.update(name="Heltec V3")),
    ("rp2040-rfm95", "needs lora_dio0", lambda o: o["pins"].pop("lora_dio0")),
    ("unix-sim", "has no radio", lambda o: o.update(radio={"chip": "sx1262", "max_tx_power_dbm": 22})),
    ("unix-sim", "bps", lambda o: o["serial"].update(bps=0)),
    ("unix-sim", "unknown field", lambda o: o.update(colour="blue")),
]


@pytest.mark.parametrize(("name", "message", "change"), BOARD_BREAKAGES, ids=[m for _, m, _ in BOARD_BREAKAGES])
def test_invalid_board_files(tmp_path, name, message, change):
    with pytest.raises(HardwareError, match=message):
        radio.load_board_file(_write(tmp_path, _board_with(name, change)))


# ---------------------------------------------------------------------------
# Duty-cycle budget


def test_budget_basics():
    budget = DutyCycleBudget(0.01)
    assert budget.budget_ms == pytest.approx(36_000)
    assert budget.can_send(36_000, 0.0)
    assert not budget.can_send(36_001, 0.0)
    with pytest.raises(ValueError):
        budget.earliest_send(36_001, 0.0)
    with pytest.raises(ValueError):
        budget.can_send(-1, 0.0)
    with pytest.raises(ValueError):
        DutyCycleBudget(0)
    with pytest.raises(ValueError):
        DutyCycleBudget(0.01, window_s=0)


def test_earliest_send_after_a_full_budget():
    budget = DutyCycleBudget(0.01)
    t = 0.0
    for _ in range(36):  # 36 one-second transmissions back to back fill the hour
        assert budget.earliest_send(1000, t) == pytest.approx(t)
        budget.record(1000, t)
        t += 1.0
    assert budget.used_ms(36.0) == pytest.approx(36_000)
    assert budget.remaining_ms(36.0) == 0
    # The next second fits once the first second has left the window
    # that ends with it: a window [1 s, 3601 s] holds 35 s + 1 s.
    assert budget.earliest_send(1000, 36.0) == pytest.approx(3600.0)
    # A shorter transmission needs less of the first one gone.
    assert budget.earliest_send(500, 36.0) == pytest.approx(3600.0)
    assert not budget.can_send(1000, 3599.99)
    assert budget.can_send(1000, 3600.0)
    with pytest.raises(DutyCycleError):
        budget.record(1000, 3599.0)


def test_earliest_send_waits_for_the_radio_and_returns_now_when_free():
    budget = DutyCycleBudget(0.1, window_s=100)
    assert budget.earliest_send(200, 5.0) == 5.0
    budget.record(1000, 5.0)
    assert budget.busy_until == pytest.approx(6.0)
    assert not budget.can_send(10, 5.5)  # still transmitting
    assert budget.earliest_send(10, 5.5) == pytest.approx(6.0)
    with pytest.raises(DutyCycleError):
        budget.record(10, 5.5)


def test_earliest_send_with_spaced_transmissions():
    # 10 % of 100 s = 10 s. Four 2.5 s transmissions at 0, 20, 40, 60 s use it all.
    budget = DutyCycleBudget(0.1, window_s=100)
    for start in (0.0, 20.0, 40.0, 60.0):
        budget.record(2500, start)
    # 1 s more needs 1 s of the first transmission out of the window ending
    # at t + 1: (t + 1) - 100 >= 1, so t = 100.
    assert budget.earliest_send(1000, 61.0) == pytest.approx(100.0)
    # 3 s needs the whole first one (2.5 s) and 0.5 s of the second: window start 20.5.
    assert budget.earliest_send(3000, 61.0) == pytest.approx(117.5)


def test_sub_band_budgets_are_independent():
    eu = radio.load_region("EU868")
    budgets = SubBandBudgets(eu)
    t = 0.0
    while budgets.can_send(868_100_000, 1000, t, 125_000):
        budgets.record(868_100_000, 1000, t, 125_000)
        t += 1.0
    assert t == 36.0  # 1 % of an hour in band 48
    # 868.3 MHz shares band 48; 869.525 MHz (band 54, 10 %) is untouched.
    assert not budgets.can_send(868_300_000, 1000, t, 125_000)
    assert budgets.can_send(869_525_000, 1000, t, 125_000)
    assert budgets.budget_for(869_525_000).budget_ms == pytest.approx(360_000)
    with pytest.raises(HardwareError):
        budgets.budget_for(868_650_000)


def _max_window_usage(txs, window_ms):
    """Largest airtime inside any window of window_ms over the (start, end) list, by brute force.

    The sum is piecewise linear in the window position, so its maximum is
    reached with a window edge on a transmission edge.
    """
    best = 0.0
    for s, e in txs:
        for lo in (s, e - window_ms, s - window_ms, e):
            hi = lo + window_ms
            best = max(best, sum(max(0.0, min(e2, hi) - max(s2, lo)) for s2, e2 in txs))
    return best


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    duty=st.sampled_from([0.001, 0.01, 0.1, 0.5]),
    window_s=st.sampled_from([1.0, 10.0, 60.0]),
    plan=st.lists(
        st.tuples(
            st.floats(min_value=0.01, max_value=1.0),  # airtime as a fraction of the budget
            st.floats(min_value=0.0, max_value=2.0),  # idle gap as a fraction of the window
            st.booleans(),  # greedy: try to send at once rather than ask earliest_send
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_budget_never_exceeded_in_any_window(duty, window_s, plan):
    budget = DutyCycleBudget(duty, window_s=window_s)
    window_ms = window_s * 1000
    now = 0.0
    txs = []
    for fraction, gap, greedy in plan:
        airtime = fraction * budget.budget_ms
        now += gap * window_s
        if greedy:
            if not budget.can_send(airtime, now):
                continue
            t = now
        else:
            t = budget.earliest_send(airtime, now)
            lower = max(now, budget.busy_until or now)
            assert t >= lower
            assert budget.can_send(airtime, t)
            if t > lower + 1e-6:  # earliest means earliest: a microsecond sooner is refused
                assert not budget.can_send(airtime, t - 1e-6)
        budget.record(airtime, t)
        txs.append((t * 1000, t * 1000 + airtime))
        now = t
    assert _max_window_usage(txs, window_ms) <= budget.budget_ms + 1e-5


@settings(max_examples=40, deadline=None)
@given(
    readings=st.lists(
        st.tuples(st.integers(min_value=0, max_value=5), st.integers(min_value=1, max_value=51)),
        min_size=5,
        max_size=60,
    )
)
def test_eu868_scheduler_stays_within_one_percent(readings):
    eu = radio.load_region("EU868")
    budget = DutyCycleBudget(0.01)
    now = 0.0
    txs = []
    for dr, size in readings:
        airtime = eu.time_on_air_ms(dr, size)
        t = budget.earliest_send(airtime, now)
        budget.record(airtime, t)
        txs.append((t * 1000, t * 1000 + airtime))
        now = t
    assert _max_window_usage(txs, 3_600_000) <= 36_000 + 1e-5
