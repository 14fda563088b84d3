"""BLE decoding through the parser libraries: our own byte vectors, plain and encrypted, and hostile input."""

from __future__ import annotations

import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.gateway.ble.advert import Advertisement, full_uuid, make_advertisement, normalise_address
from lowband.gateway.ble.decode import Decoded, Refusal, decode, guess_format, mantissa_scale

ADDRESS = "A4:C1:38:8D:18:B2"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
BTHOME = 0xFCD2


def bthome_plain(objects: bytes, adv_info: int = 0x40) -> bytes:
    """BTHome v2 service data: the device information byte (v2, no encryption) then the objects."""
    return bytes([adv_info]) + objects


def bthome_encrypted(address: str, objects: bytes, counter: int, key: bytes = KEY) -> bytes:
    """BTHome v2 encrypted service data, laid out as the BTHome spec says.

    Device information 0x41 (v2, encrypted), ciphertext, 4-byte counter (little endian), 4-byte MIC. The
    AES-CCM nonce is MAC (6) + UUID 0xFCD2 little endian (2) + device information (1) + counter (4).
    """
    info = 0x41
    count = counter.to_bytes(4, "little")
    nonce = bytes.fromhex(address.replace(":", "")) + b"\xd2\xfc" + bytes([info]) + count
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, objects, None)
    return bytes([info]) + sealed[:-4] + count + sealed[-4:]


def temp_hum(temp_centi: int, hum_centi: int) -> bytes:
    """BTHome objects 0x02 temperature (sint16, 0.01 °C) and 0x03 humidity (uint16, 0.01 %)."""
    return b"\x02" + struct.pack("<h", temp_centi) + b"\x03" + struct.pack("<H", hum_centi)


def adv(service_data: dict[int | str, bytes] | None = None, **kwargs: object) -> Advertisement:
    return make_advertisement(ADDRESS, service_data=service_data, time=100.0, wall_ms=1_700_000_000_000,
                              **kwargs)  # type: ignore[arg-type]  # fmt: skip


def test_advertisement_normalises_address_and_uuids() -> None:
    a = make_advertisement("a4-c1-38-8d-18-b2", service_data={"fcd2": b"\x40"}, service_uuids=["181a"])
    assert a.address == ADDRESS
    assert list(a.service_data) == ["0000fcd2-0000-1000-8000-00805f9b34fb"]
    assert a.service_uuids == ("0000181a-0000-1000-8000-00805f9b34fb",)
    assert full_uuid("0000FCD2-0000-1000-8000-00805F9B34FB") == full_uuid(0xFCD2)
    with pytest.raises(ValueError):
        normalise_address("A4:C1:38:8D:18")
    with pytest.raises(ValueError):
        full_uuid("xyz")


def test_plain_bthome_with_packet_id_battery_temperature_humidity() -> None:
    # packet id 9, battery 93 %, 25.06 °C, 50.55 %
    data = bthome_plain(b"\x00\x09" + b"\x01\x5d" + temp_hum(2506, 5055))
    got = decode(adv({BTHOME: data}, rssi=-61))
    assert isinstance(got, Decoded), got
    assert got.values == {"battery": 93, "temperature": 25.06, "humidity": 50.55}
    assert got.units == {"battery": "%EL", "temperature": "Cel", "humidity": "%RH"}
    assert (got.packet_id, got.encrypted, got.counter, got.format) == (9, False, None, "bthome")
    assert got.payload == data
    assert guess_format(adv({BTHOME: data})) == "bthome"


def test_bthome_negative_temperature_and_binary_window() -> None:
    got = decode(adv({BTHOME: bthome_plain(temp_hum(-1234, 100) + b"\x2d\x01")}))
    assert isinstance(got, Decoded), got
    assert got.values["temperature"] == -12.34
    assert got.values["window"] == 1


def test_encrypted_bthome_decrypts_with_the_key_only() -> None:
    data = bthome_encrypted(ADDRESS, temp_hum(2150, 4020), counter=0x01020304)
    got = decode(adv({BTHOME: data}), "bthome", KEY)
    assert isinstance(got, Decoded), got
    assert got.values == {"temperature": 21.5, "humidity": 40.2}
    assert (got.encrypted, got.counter) == (True, 0x01020304)
    assert decode(adv({BTHOME: data}), "bthome", None) == Refusal("no_key", "encrypted BTHome and no key configured")
    wrong = decode(adv({BTHOME: data}), "bthome", bytes(16))
    assert isinstance(wrong, Refusal) and wrong.kind == "decrypt_failed"
    tampered = bytearray(data)
    tampered[2] ^= 0x01
    forged = decode(adv({BTHOME: bytes(tampered)}), "bthome", KEY)
    assert isinstance(forged, Refusal) and forged.kind == "decrypt_failed"
    # The nonce holds the sender's address: the same packet heard from another address does not decrypt.
    moved = decode(make_advertisement("11:22:33:44:55:66", service_data={BTHOME: data}), "bthome", KEY)
    assert isinstance(moved, Refusal) and moved.kind == "decrypt_failed"


def test_plaintext_from_a_keyed_sensor_is_a_downgrade() -> None:
    got = decode(adv({BTHOME: bthome_plain(temp_hum(2150, 4020))}), "bthome", KEY)
    assert isinstance(got, Refusal) and got.kind == "downgrade"


def test_xiaomi_mibeacon_lywsdcgq_through_xiaomi_ble() -> None:
    # MiBeacon v2 frame: frame control 0x2050 (version 2, object and MAC included), product 0x01AA (LYWSDCGQ),
    # frame counter 0x33, MAC reversed, object 0x100D (temperature and humidity, 0.1 units).
    mac = bytes.fromhex(ADDRESS.replace(":", ""))[::-1]
    frame = b"\x50\x20\xaa\x01\x33" + mac + b"\x0d\x10\x04" + struct.pack("<hH", 215, 456)
    got = decode(adv({0xFE95: frame}))
    assert isinstance(got, Decoded), got
    assert got.format == "xiaomi"
    assert got.values == {"temperature": 21.5, "humidity": 45.6}
    assert got.units == {"temperature": "Cel", "humidity": "%RH"}
    assert got.packet_id == 0x33
    # A key configured for a sensor that sends plaintext MiBeacon: a downgrade.
    refused = decode(adv({0xFE95: frame}), "xiaomi", KEY)
    assert isinstance(refused, Refusal) and refused.kind == "downgrade"


def mibeacon_v5_encrypted(
    address: str, objects: bytes, frame_counter: int, ext_counter: int, key: bytes = KEY
) -> bytes:
    """An encrypted MiBeacon v5 frame of a LYWSD03MMC (0x055B), as xiaomi-ble reads it.

    Frame control 0x5858 (v5, object, MAC and encryption flags), product id, frame counter, MAC reversed, then
    the AES-CCM ciphertext, a 3-byte extended counter and a 4-byte tag; nonce = MAC reversed + product id +
    frame counter + extended counter, associated data 0x11.
    """
    mac_reversed = bytes.fromhex(address.replace(":", ""))[::-1]
    head = b"\x58\x58\x5b\x05" + bytes([frame_counter])
    ext = ext_counter.to_bytes(3, "little")
    nonce = mac_reversed + head[2:5] + ext
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, objects, b"\x11")
    return head + mac_reversed + sealed[:-4] + ext + sealed[-4:]


def test_encrypted_xiaomi_mibeacon_v5_with_its_key() -> None:
    frame = mibeacon_v5_encrypted(ADDRESS, b"\x04\x10\x02" + struct.pack("<h", 236), frame_counter=0x10, ext_counter=2)
    got = decode(adv({0xFE95: frame}), "auto", KEY)
    assert isinstance(got, Decoded), got
    assert got.values == {"temperature": 23.6}
    assert (got.encrypted, got.packet_id, got.counter) == (True, 0x10, 0x0210)
    assert decode(adv({0xFE95: frame})) == Refusal("no_key", "encrypted MiBeacon and no key configured")
    wrong = decode(adv({0xFE95: frame}), "xiaomi", bytes(16))
    assert isinstance(wrong, Refusal) and wrong.kind == "decrypt_failed"


def test_ruuvitag_data_format_5_through_ruuvitag_ble() -> None:
    # RAWv2: 24.3 °C, 53.49 %, 100044 Pa, acceleration, 2977 mV battery, movement 66, sequence 205.
    raw = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
    got = decode(make_advertisement(ADDRESS, manufacturer_data={0x0499: raw}))
    assert isinstance(got, Decoded), got
    assert got.format == "ruuvitag"
    assert got.values["temperature"] == 24.3
    assert got.values["humidity"] == 53.49
    assert got.values["pressure"] == 1000.44
    assert got.units["pressure"] == "hPa" and got.units["voltage"] == "mV"


@pytest.mark.parametrize(
    ("service_data", "kind"),
    [
        (b"", "malformed"),  # empty BTHome service data
        (b"\x40", "no_values"),  # device information only
        (b"\x40\x02\xca", "no_values"),  # temperature object cut short
        (b"\x40\xfe\x01\x02", "no_values"),  # unknown object id
        (b"\x41\x00\x01", "no_key"),  # encrypted flag, too short to hold counter and MIC
        (b"\xe0\x02\xca\x09", "no_values"),  # BTHome version 7 does not exist
    ],
)
def test_truncated_and_malformed_bthome_are_refusals(service_data: bytes, kind: str) -> None:
    got = decode(adv({BTHOME: service_data}))
    assert isinstance(got, Refusal) and got.kind == kind, got


def test_truncated_encrypted_bthome_with_a_key() -> None:
    got = decode(adv({BTHOME: b"\x41\x00\x01"}), "bthome", KEY)
    assert isinstance(got, Refusal) and got.kind == "decrypt_failed", got


def test_unknown_formats_and_bad_format_names() -> None:
    assert decode(adv({0x1234: b"\x01\x02"})) == Refusal(
        "unknown_format", "no known format's service data or company id"
    )
    with pytest.raises(ValueError):
        decode(adv({BTHOME: b"\x40"}), "nonsense")


def test_random_bytes_in_every_format_never_raise() -> None:
    rng = random.Random(18)
    uuids = [0xFCD2, 0x181C, 0x181E, 0xFE95]
    for i in range(1500):
        blob = rng.randbytes(rng.randrange(0, 32))
        uuid = uuids[i % len(uuids)]
        a = make_advertisement(ADDRESS, service_data={uuid: blob}, manufacturer_data={rng.choice([0x0499, 0xEC88, 1]): blob},
                               local_name=rng.choice([None, "GVH5075_1234", "sps", "tps"]))  # fmt: skip
        for fmt in ("auto", "bthome", "xiaomi", "govee", "inkbird", "ruuvitag"):
            got = decode(a, fmt, KEY if i % 3 == 0 else None)
            assert isinstance(got, (Decoded, Refusal))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.sampled_from([None, KEY]))
def test_hypothesis_bthome_payloads(payload: bytes, key: bytes | None) -> None:
    got = decode(adv({BTHOME: payload}), "bthome", key)
    assert isinstance(got, (Decoded, Refusal))
    if isinstance(got, Decoded):
        assert all(isinstance(v, (int, float)) for v in got.values.values())
        assert "signal_strength" not in got.values and "packet_id" not in got.values


def test_mantissa_scale_is_exact_decimal() -> None:
    assert mantissa_scale(25.06) == (2506, -2)
    assert mantissa_scale(93) == (93, 0)
    assert mantissa_scale(-3.5) == (-35, -1)
    assert mantissa_scale(1200.0) == (1200, 0)
    assert mantissa_scale(0.1 + 0.2) == (3, -1)  # rounded to nine decimals: 0.300000000
    assert mantissa_scale(1.5e-12) == (0, 0)
    assert mantissa_scale(1e300) is None
