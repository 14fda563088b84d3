"""The firmware link crypto (firmware/lbcrypto) on CPython and on MicroPython.

Two halves:

* tests/firmware/firmware_crypto_vectors.py checks link_vectors.json and published
  X25519/GCM/CCM vectors under CPython, under the MicroPython unix port
  from the sources, and under a 64 KB MicroPython heap from .mpy files (the
  form boards load); all three must pass every check.
* Property tests import the firmware modules on CPython (with the
  script's cryptolib stand-in) and compare them with the `cryptography`
  package, with the gateway's link crypto and with its Noise responder.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from vector_runs import host_cryptolib, load_script, need_tool, run_vector_script
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lowband.gateway.link import crypto as gateway_crypto
from lowband.gateway.link.handshake import HandshakeError, Responder
from lowband.sim.firmware import MICROPYTHON, MPY_CROSS, build_mpy

ROOT = Path(__file__).resolve().parent.parent.parent
FIRMWARE = ROOT / "firmware"
DATA = ROOT / "tests" / "data"
SCRIPT = ROOT / "tests" / "firmware" / "firmware_crypto_vectors.py"
RUN_TIMEOUT = 120
# Bounded: every example of an X25519 property costs a pure-Python ladder.
BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


vectors_script = load_script(SCRIPT)
with host_cryptolib(vectors_script):
    from lbcrypto import aes_modes, link_aead, noise_kk, x25519

# ------------------------------------------------------------- vector runs

def _expected_checks() -> int:
    doc = json.loads((DATA / "link_vectors.json").read_text(encoding="utf-8"))
    published = len(vectors_script.X25519) + len(vectors_script.AEAD)
    handshake = 2  # the handshake itself and its epoch binding
    return (published + len(doc["keys"]) + handshake + len(doc["data"]) + len(doc["rejects"])
            + len(doc["counter_reconstruction"]))


def _run(cmd: list[str]) -> tuple[int, int, str]:
    """Run the vector script; returns (passed, failed, full output)."""
    return run_vector_script(cmd, cwd=ROOT, timeout=RUN_TIMEOUT)


@pytest.fixture(scope="module")
def cpython_counts() -> tuple[int, int]:
    passed, failed, _ = _run([sys.executable, str(SCRIPT), str(FIRMWARE), str(DATA)])
    return passed, failed


def test_vectors_cpython(cpython_counts: tuple[int, int]) -> None:
    passed, failed = cpython_counts
    assert passed == _expected_checks() > 0
    assert failed == 0


@pytest.mark.micropython
def test_vectors_micropython_from_source(cpython_counts: tuple[int, int]) -> None:
    # Compiling aes_modes.py on the target peaks near 34 KB of heap next to
    # this script and the parsed vectors, so the sources get a larger heap;
    # the 64 KB run below uses .mpy.
    need_tool(MICROPYTHON)
    counts = _run([str(MICROPYTHON), "-X", "heapsize=128k", str(SCRIPT), str(FIRMWARE), str(DATA)])
    assert counts[:2] == cpython_counts


@pytest.mark.micropython
def test_vectors_micropython_64k_heap(cpython_counts: tuple[int, int], tmp_path: Path) -> None:
    need_tool(MICROPYTHON)
    need_tool(MPY_CROSS)
    build_mpy(tmp_path, ("lbcrypto",))  # every module of the package, as a board loads them
    counts = _run([str(MICROPYTHON), "-X", "heapsize=64k", str(SCRIPT), str(tmp_path), str(DATA)])
    assert counts[:2] == cpython_counts


def test_vector_script_fails_on_a_wrong_vector(tmp_path: Path) -> None:
    doc = json.loads((DATA / "link_vectors.json").read_text(encoding="utf-8"))
    doc["data"][0]["ciphertext_tag"] = "00" + doc["data"][0]["ciphertext_tag"][2:]
    (tmp_path / "link_vectors.json").write_text(json.dumps(doc))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(FIRMWARE), str(tmp_path)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"{_expected_checks() - 1} passed, 1 failed"
    assert any(line.startswith("FAIL data uplink_reading: seal is ") for line in lines)


def test_vector_script_needs_the_vector_file(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(FIRMWARE), str(tmp_path)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 2
    assert "link_vectors.json not found" in proc.stdout


# ------------------------------------------------------------- X25519

keys32 = st.binary(min_size=32, max_size=32)


def _reference_x25519(k: bytes, u: bytes) -> bytes | None:
    """X25519 from `cryptography`; None where it refuses an all-zero result."""
    try:
        return X25519PrivateKey.from_private_bytes(k).exchange(X25519PublicKey.from_public_bytes(u))
    except ValueError:
        return None


@BOUNDED
@given(keys32, keys32)
def test_x25519_agrees_with_cryptography(k: bytes, u: bytes) -> None:
    want = _reference_x25519(k, u)
    assume(want is not None)
    assert x25519.scalarmult(k, u) == want
    assert x25519.shared(k, u) == want


@BOUNDED
@given(keys32)
def test_x25519_public_key_agrees_with_cryptography(k: bytes) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    want = X25519PrivateKey.from_private_bytes(k).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert x25519.public_key(k) == want


@BOUNDED
@given(keys32, st.integers(min_value=0, max_value=18))
def test_x25519_non_canonical_u(k: bytes, small: int) -> None:
    # u = p + small (and with the ignored top bit set) acts as u = small.
    p = (1 << 255) - 19
    u = (p + small).to_bytes(32, "little")
    high = (small | (1 << 255)).to_bytes(32, "little")
    want = x25519.scalarmult(k, small.to_bytes(32, "little"))
    assert x25519.scalarmult(k, u) == want == x25519.scalarmult(k, high)


def test_x25519_rfc7748_iterated_1000_times() -> None:
    # RFC 7748 section 5.2: k = u = 9, then k, u = X25519(k, u), k.
    k = u = b"\x09" + bytes(31)
    for _ in range(1000):
        k, u = x25519.scalarmult(k, u), k
    assert k.hex() == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


@pytest.mark.parametrize(
    "u_hex",
    [
        "00" * 32,  # 0
        "01" + "00" * 31,  # 1 (order 4)
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p - 1 (order 2)
    ],
)
def test_x25519_shared_refuses_small_order_points(u_hex: str) -> None:
    k = hashlib.sha256(b"any scalar").digest()
    u = bytes.fromhex(u_hex)
    assert x25519.scalarmult(k, u) == bytes(32)
    with pytest.raises(ValueError):
        x25519.shared(k, u)


def test_x25519_refuses_wrong_lengths() -> None:
    for k, u in ((bytes(31), bytes(32)), (bytes(32), bytes(33)), (b"", b"")):
        with pytest.raises(ValueError):
            x25519.scalarmult(k, u)
    with pytest.raises(ValueError):
        x25519.public_key(bytes(16))


# ------------------------------------------------------------- AES-GCM, AES-CCM-8

aes_keys = st.sampled_from((16, 32)).flatmap(lambda n: st.binary(min_size=n, max_size=n))
short = st.binary(max_size=70)


def _flip(data: bytes, bit: int) -> bytes:
    i = (bit // 8) % len(data)
    out = bytearray(data)
    out[i] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=150, deadline=None)
@given(aes_keys, st.binary(min_size=12, max_size=12), short, short)
def test_gcm_agrees_with_cryptography(key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> None:
    want = AESGCM(key).encrypt(nonce, pt, aad)
    assert aes_modes.gcm_encrypt(key, nonce, aad, pt) == want
    assert aes_modes.gcm_decrypt(key, nonce, aad, want) == pt


@settings(max_examples=150, deadline=None)
@given(aes_keys, st.binary(min_size=13, max_size=13), short, short)
def test_ccm8_agrees_with_cryptography(key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> None:
    want = AESCCM(key, tag_length=8).encrypt(nonce, pt, aad)
    assert aes_modes.ccm8_encrypt(key, nonce, aad, pt) == want
    assert aes_modes.ccm8_decrypt(key, nonce, aad, want) == pt


def test_ccm8_long_associated_data_and_message() -> None:
    # aad of 0xff00 bytes or more takes RFC 3610's six-byte length form.
    key, nonce = bytes(range(32)), bytes(range(13))
    for aad_len, pt_len in ((0xFEFF, 3), (0xFF00, 0), (0x10000, 17), (5, 0xFFFF)):
        aad, pt = bytes(aad_len), bytes(range(256)) * (pt_len // 256) + bytes(pt_len % 256)
        want = AESCCM(key, tag_length=8).encrypt(nonce, pt, aad)
        assert aes_modes.ccm8_encrypt(key, nonce, aad, pt) == want
        assert aes_modes.ccm8_decrypt(key, nonce, aad, want) == pt
    with pytest.raises(ValueError):
        aes_modes.ccm8_encrypt(key, nonce, b"", bytes(0x10000))


@settings(max_examples=150, deadline=None)
@given(aes_keys, st.binary(min_size=13, max_size=13), short, short, st.integers(min_value=0))
def test_bad_tags_raise_value_error(key: bytes, nonce: bytes, aad: bytes, pt: bytes, bit: int) -> None:
    for seal, open_, n in (
        (aes_modes.ccm8_encrypt, aes_modes.ccm8_decrypt, 13),
        (aes_modes.gcm_encrypt, aes_modes.gcm_decrypt, 12),
    ):
        sealed = seal(key, nonce[:n], aad, pt)
        with pytest.raises(ValueError):
            open_(key, nonce[:n], aad, _flip(sealed, bit))
        with pytest.raises(ValueError):
            open_(key, nonce[:n], aad + b"\x00", sealed)
        with pytest.raises(ValueError):
            open_(key, _flip(nonce[:n], bit), aad, sealed)
        with pytest.raises(ValueError):
            open_(key, nonce[:n], aad, sealed[:-1])


def test_aead_argument_errors() -> None:
    for call in (
        lambda: aes_modes.gcm_encrypt(bytes(24), bytes(12), b"", b""),
        lambda: aes_modes.gcm_encrypt(bytes(32), bytes(16), b"", b""),
        lambda: aes_modes.gcm_decrypt(bytes(32), bytes(12), b"", bytes(15)),
        lambda: aes_modes.ccm8_encrypt(bytes(32), bytes(12), b"", b""),
        lambda: aes_modes.ccm8_decrypt(bytes(32), bytes(13), b"", bytes(7)),
    ):
        with pytest.raises(ValueError):
            call()


# ------------------------------------------------------------- link_aead

counters = st.integers(min_value=0, max_value=(1 << 64) - 1)
directions = st.sampled_from((0, 1))
link_keys = st.binary(min_size=32, max_size=32)


@settings(max_examples=150, deadline=None)
@given(link_keys, directions, counters, st.binary(min_size=3, max_size=4), st.binary(max_size=60))
def test_link_aead_agrees_with_gateway(key: bytes, direction: int, counter: int, aad: bytes, pt: bytes) -> None:
    sealed = link_aead.seal(key, direction, counter, aad, pt)
    assert sealed == gateway_crypto.seal(key, direction, counter, aad, pt)
    assert link_aead.nonce(direction, counter) == gateway_crypto.nonce(direction, counter)
    assert link_aead.open(key, direction, counter, aad, sealed) == pt
    with pytest.raises(ValueError):
        link_aead.open(key, direction, counter ^ 1, aad, sealed)
    with pytest.raises(ValueError):
        link_aead.open(key, 1 - direction, counter, aad, sealed)


@settings(max_examples=150, deadline=None)
@given(link_keys, directions, counters, st.binary(min_size=3, max_size=4), st.binary(max_size=60),
       st.integers(min_value=0))
def test_link_aead_refuses_any_flipped_bit(key: bytes, direction: int, counter: int, aad: bytes,
                                           pt: bytes, bit: int) -> None:
    sealed = link_aead.seal(key, direction, counter, aad, pt)
    with pytest.raises(ValueError):
        link_aead.open(key, direction, counter, aad, _flip(sealed, bit))
    with pytest.raises(ValueError):
        link_aead.open(key, direction, counter, _flip(aad, bit), sealed)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-1, max_value=(1 << 64) - 1), st.integers(min_value=0, max_value=255))
def test_counter_from_seq_agrees_with_gateway(highest: int, seq: int) -> None:
    window = gateway_crypto.ReplayWindow()
    window.highest = highest
    assert link_aead.counter_from_seq(highest, seq) == window.candidate(seq)


def test_link_aead_argument_errors() -> None:
    key = bytes(32)
    for call in (
        lambda: link_aead.seal(bytes(16), 0, 0, b"", b""),
        lambda: link_aead.seal(key, 2, 0, b"", b""),
        lambda: link_aead.seal(key, 0, -1, b"", b""),
        lambda: link_aead.seal(key, 0, 1 << 64, b"", b""),
        lambda: link_aead.open(key, 0, 0, b"", bytes(7)),
        lambda: link_aead.counter_from_seq(5, 256),
    ):
        with pytest.raises(ValueError):
            call()


# ------------------------------------------------------------- Noise KK initiator


def _keypair(seed: bytes) -> tuple[bytes, bytes]:
    private = hashlib.sha256(seed).digest()
    return private, x25519.public_key(private)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=8), st.integers(1, 254), st.integers(0, 7))
def test_initiator_pairs_with_gateway_responder(seed: bytes, address: int, epoch: int) -> None:
    device_private, device_public = _keypair(b"device " + seed)
    gateway_private, gateway_public = _keypair(b"gateway " + seed)
    initiator = noise_kk.Initiator(device_private, device_public, gateway_public, address, epoch)
    responder = Responder(gateway_private, device_public, address, epoch)
    message1 = initiator.message1()
    assert len(message1) == noise_kk.MESSAGE_LEN
    message2, keys = responder.respond(message1)
    assert initiator.finish(message2) == (keys.k_up, keys.k_down)


def test_initiator_refused_by_a_gateway_expecting_another_device_or_epoch() -> None:
    device_private, device_public = _keypair(b"device")
    gateway_private, gateway_public = _keypair(b"gateway")
    _, other_public = _keypair(b"other device")
    message1 = noise_kk.Initiator(device_private, device_public, gateway_public, 7, 1).message1()
    for responder in (
        Responder(gateway_private, other_public, 7, 1),
        Responder(gateway_private, device_public, 8, 1),
        Responder(gateway_private, device_public, 7, 2),
    ):
        with pytest.raises(HandshakeError):
            responder.respond(message1)


def test_initiator_refuses_a_foreign_message2_and_keeps_waiting() -> None:
    # A well-formed HS2 made by the real gateway for another handshake
    # attempt (another ephemeral) fails, and the genuine HS2 still works.
    device_private, device_public = _keypair(b"device")
    gateway_private, gateway_public = _keypair(b"gateway")
    initiator = noise_kk.Initiator(device_private, device_public, gateway_public, 7, 1)
    message1 = initiator.message1()
    earlier = noise_kk.Initiator(device_private, device_public, gateway_public, 7, 1).message1()
    foreign, _ = Responder(gateway_private, device_public, 7, 1).respond(earlier)
    with pytest.raises(ValueError):
        initiator.finish(foreign)
    message2, keys = Responder(gateway_private, device_public, 7, 1).respond(message1)
    assert initiator.finish(message2) == (keys.k_up, keys.k_down)


def test_initiator_call_order_and_arguments() -> None:
    device_private, device_public = _keypair(b"device")
    _, gateway_public = _keypair(b"gateway")
    initiator = noise_kk.Initiator(device_private, device_public, gateway_public, 7, 1)
    with pytest.raises(RuntimeError):
        initiator.finish(bytes(48))
    initiator.message1()
    with pytest.raises(RuntimeError):
        initiator.message1()
    for args in (
        (bytes(31), device_public, gateway_public, 7, 1),
        (device_private, device_public, gateway_public[:-1], 7, 1),
        (device_private, device_public, gateway_public, 0, 1),
        (device_private, device_public, gateway_public, 255, 1),
        (device_private, device_public, gateway_public, 7, 8),
        (device_private, device_public, gateway_public, 7, 1, bytes(33)),
    ):
        with pytest.raises(ValueError):
            noise_kk.Initiator(*args)


def test_initiator_ephemeral_keys_differ() -> None:
    device_private, device_public = _keypair(b"device")
    _, gateway_public = _keypair(b"gateway")
    first = noise_kk.Initiator(device_private, device_public, gateway_public, 7, 1).message1()
    second = noise_kk.Initiator(device_private, device_public, gateway_public, 7, 1).message1()
    assert first[:32] != second[:32]
