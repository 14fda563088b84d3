"""Tests of lowband.gateway.link.handshake and .crypto, and the link golden vectors.

The vectors in tests/data/link_vectors.json are built by ``build_vectors``
below from the modules under test; ``python tests/link/test_link_crypto.py``
rewrites the file (only to change the contract on purpose). The tests then
check the file three ways: it equals what the modules produce today; an
independent Noise KK written here from the specification reproduces the
handshake messages and keys; an independent AES-CCM (CBC-MAC + CTR over raw
AES, the way the firmware builds it from an AES block cipher) reproduces
every ciphertext and tag.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from lowband.codecs.fragment import fragment
from lowband.codecs.framing import cobs_decode, cobs_encode
from lowband.gateway.link.crypto import (
    MAX_COUNTER,
    NONCE_LEN,
    TAG_LEN,
    ReplayWindow,
    SendCounter,
    TagError,
    nonce,
    open_,
    seal,
)
from lowband.gateway.link.handshake import (
    HANDSHAKE_MESSAGE_LEN,
    PROTOCOL_NAME,
    HandshakeError,
    Initiator,
    Responder,
    SessionKeys,
    generate_keypair,
    prologue,
    public_from_private,
)

DATA_DIR = Path(__file__).parent.parent / "data"
VECTORS_PATH = DATA_DIR / "link_vectors.json"
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ADDRESS = 7
EPOCH = 1
LABELS = {
    "device_static": b"lowband test device static",
    "gateway_static": b"lowband test gateway static",
    "device_ephemeral": b"lowband test device ephemeral",
    "gateway_ephemeral": b"lowband test gateway ephemeral",
}
KEYS = {name: hashlib.sha256(label).digest() for name, label in LABELS.items()}
PUB = {name: public_from_private(private) for name, private in KEYS.items()}

TYPE_HS1, TYPE_HS2, TYPE_DATA = 0, 1, 2
FLAG_ACK, FLAG_FRAG = 0x10, 0x08


def header(frame_type: int, epoch: int, *, ack: bool = False, frag: bool = False) -> int:
    return frame_type << 5 | (FLAG_ACK if ack else 0) | (FLAG_FRAG if frag else 0) | epoch


def serial(frame: bytes) -> bytes:
    return cobs_encode(frame) + b"\x00"


def fixed_pair(address: int = ADDRESS, epoch: int = EPOCH) -> tuple[Initiator, Responder]:
    initiator = Initiator(KEYS["device_static"], PUB["gateway_static"], address, epoch, KEYS["device_ephemeral"])
    responder = Responder(KEYS["gateway_static"], PUB["device_static"], address, epoch, KEYS["gateway_ephemeral"])
    return initiator, responder


# --- independent reference implementations -------------------------------------------


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _x25519(private: bytes, public: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))


class _RefSymmetric:
    """Noise's symmetric state for SHA-256 and AES-GCM, with a trace of every step."""

    def __init__(self, name: bytes) -> None:
        assert len(name) <= 32
        self.h = name + bytes(32 - len(name))
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0
        self.trace: list[dict[str, str]] = [{"step": "init (protocol name, zero-padded)", "h": self.h.hex(), "ck": self.ck.hex()}]

    def _hkdf2(self, ikm: bytes) -> tuple[bytes, bytes]:
        temp = _hmac(self.ck, ikm)
        out1 = _hmac(temp, b"\x01")
        return out1, _hmac(temp, out1 + b"\x02")

    def mix_hash(self, data: bytes, what: str) -> None:
        self.h = hashlib.sha256(self.h + data).digest()
        self.trace.append({"step": f"MixHash({what})", "h": self.h.hex()})

    def mix_key(self, ikm: bytes, what: str) -> None:
        self.ck, self.k = self._hkdf2(ikm)
        self.n = 0
        self.trace.append({"step": f"MixKey({what})", "ck": self.ck.hex(), "k": self.k.hex()})

    def _nonce(self) -> bytes:
        return bytes(4) + self.n.to_bytes(8, "big")

    def encrypt_and_hash(self, plaintext: bytes, what: str) -> bytes:
        assert self.k is not None
        ciphertext = AESGCM(self.k).encrypt(self._nonce(), plaintext, self.h)
        self.n += 1
        self.mix_hash(ciphertext, f"tag of {what}")
        return ciphertext

    def split(self) -> tuple[bytes, bytes]:
        return self._hkdf2(b"")


def reference_kk(dev_s: bytes, gw_s: bytes, dev_e: bytes, gw_e: bytes, address: int, epoch: int = EPOCH):
    """One transcript of Noise_KK_25519_AESGCM_SHA256 with both sides' secrets.

    KK: pre-messages ``-> s`` and ``<- s``; then ``-> e, es, ss`` and
    ``<- e, ee, se``. Each DH is computed from whichever side's private key
    is at hand; both sides get the same value.
    """
    state = _RefSymmetric(PROTOCOL_NAME)
    pub = public_from_private
    state.mix_hash(b"lowband/1" + bytes([address, epoch]), "prologue")
    state.mix_hash(pub(dev_s), "device static public")
    state.mix_hash(pub(gw_s), "gateway static public")
    state.mix_hash(pub(dev_e), "device ephemeral public")
    state.mix_key(_x25519(dev_e, pub(gw_s)), "es = DH(device e, gateway s)")
    state.mix_key(_x25519(dev_s, pub(gw_s)), "ss = DH(device s, gateway s)")
    message1 = pub(dev_e) + state.encrypt_and_hash(b"", "empty payload 1")
    state.mix_hash(pub(gw_e), "gateway ephemeral public")
    state.mix_key(_x25519(dev_e, pub(gw_e)), "ee = DH(device e, gateway e)")
    state.mix_key(_x25519(dev_s, pub(gw_e)), "se = DH(device s, gateway e)")
    message2 = pub(gw_e) + state.encrypt_and_hash(b"", "empty payload 2")
    k_up, k_down = state.split()
    return message1, message2, k_up, k_down, state.h, state.trace


def _aes_block(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def reference_ccm8(key: bytes, frame_nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """AES-CCM with M = 8, L = 2 (RFC 3610) from the raw block cipher."""
    assert len(frame_nonce) == 13 and len(aad) < 0xFF00 and len(plaintext) < 1 << 16
    flags = (0x40 if aad else 0) | ((8 - 2) // 2) << 3 | (2 - 1)
    blocks = bytes([flags]) + frame_nonce + len(plaintext).to_bytes(2, "big")
    if aad:
        encoded = len(aad).to_bytes(2, "big") + aad
        blocks += encoded + bytes(-len(encoded) % 16)
    blocks += plaintext + bytes(-len(plaintext) % 16)
    mac = bytes(16)
    for i in range(0, len(blocks), 16):
        mac = _aes_block(key, bytes(a ^ b for a, b in zip(mac, blocks[i : i + 16])))

    def counter_block(i: int) -> bytes:
        return bytes([2 - 1]) + frame_nonce + i.to_bytes(2, "big")

    stream = b"".join(_aes_block(key, counter_block(i)) for i in range(1, len(plaintext) // 16 + 2))
    ciphertext = bytes(p ^ s for p, s in zip(plaintext, stream))
    tag = bytes(m ^ s for m, s in zip(mac[:8], _aes_block(key, counter_block(0))))
    return ciphertext + tag


# --- the golden vectors ---------------------------------------------------------------


def _data_vector(name, note, keys, direction, counter, plaintext, *, ack=None, frag=False):
    key_name = "k_up" if direction == 0 else "k_down"
    head = header(TYPE_DATA, keys.epoch, ack=ack is not None, frag=frag)
    clear = bytes([head, ADDRESS, counter & 0xFF]) + (bytes([ack]) if ack is not None else b"")
    sealed = seal(getattr(keys, key_name), direction, counter, clear, plaintext)
    frame = clear + sealed
    return {
        "name": name,
        "note": note,
        "direction": direction,
        "key": key_name,
        "counter": counter,
        "header": f"{head:02x}",
        "address": ADDRESS,
        "seq": f"{counter & 0xFF:02x}",
        "ack": None if ack is None else f"{ack:02x}",
        "plaintext": plaintext.hex(),
        "aad": clear.hex(),
        "nonce": nonce(direction, counter).hex(),
        "ciphertext_tag": sealed.hex(),
        "frame": frame.hex(),
        "serial": serial(frame).hex(),
    }


COUNTER_CASES = [
    (-1, 0x00), (-1, 0x7F), (-1, 0x80), (-1, 0xFF),
    (0, 0x00), (0, 0x01), (10, 0xC8), (127, 0x00), (127, 0xFF),
    (128, 0x00), (128, 0x01), (255, 0x00), (255, 0x80), (255, 0x7F),
    (300, 0x2C), (300, 0x2B), (300, 0xAD), (300, 0xAC),
    (1000, 0xE8), (1000, 0x69), (1000, 0x68), (65535, 0x00), (65535, 0x80),
    (0x1000000FF, 0x01), (0x1000000FF, 0x80), (0x1000000FF, 0x7F),
]

REPLAY_STEPS = [0, 1, 1, 3, 2, 2, 0, 70, 6, 7, 7, 3, 200, 137, 136, 200, 201, 137]


def build_vectors() -> dict:
    """Every value of link_vectors.json, computed by the modules under test."""
    initiator, responder = fixed_pair()
    message1 = initiator.message1()
    message2, gateway_keys = responder.respond(message1)
    keys = initiator.finish(message2)
    assert keys == gateway_keys
    *_, handshake_hash, trace = reference_kk(
        KEYS["device_static"], KEYS["gateway_static"], KEYS["device_ephemeral"], KEYS["gateway_ephemeral"], ADDRESS
    )
    hs_frames = {}
    for name, frame_type, body in (("hs1", TYPE_HS1, message1), ("hs2", TYPE_HS2, message2)):
        head = header(frame_type, EPOCH)
        frame = bytes([head, ADDRESS]) + body
        hs_frames[name] = {"header": f"{head:02x}", "noise_message": body.hex(), "frame": frame.hex(), "serial": serial(frame).hex()}

    compact = {v["name"]: bytes.fromhex(v["compact"]) for v in json.loads((DATA_DIR / "compact_vectors.json").read_text())["vectors"]}
    reading = compact["telemetry_reference"]
    assert reading.hex() == "11000718d71828190172"
    first_fragment = fragment(compact["generic_unknown_room_and_floats"], 0, 40)[0]
    data = [
        _data_vector("uplink_reading", "the compact reference reading, first uplink of the session",
                     keys, 0, 0, reading),
        _data_vector("downlink_pure_ack", "the gateway's answer: empty plaintext, ACK of uplink counter 0",
                     keys, 1, 0, b"", ack=0),
        _data_vector("downlink_command_with_ack", "a queued command (compact text_reference) riding on the ACK of uplink 1",
                     keys, 1, 1, compact["text_reference"], ack=1),
        _data_vector("uplink_with_ack", "compact telemetry_backlog_second_room, acknowledging downlink counter 1",
                     keys, 0, 1, compact["telemetry_backlog_second_room"], ack=1),
        _data_vector("uplink_counter_300", "seq carries 0x2c, the nonce the full counter 0x12c",
                     keys, 0, 300, reading),
        _data_vector("uplink_fragment", "FRAG: fragment 0 of compact generic_unknown_room_and_floats, msg_id 0, "
                     "fragment mtu 40, so the LoRa packet is 51 bytes (DR0)", keys, 0, 2, first_fragment, frag=True),
    ]

    base = bytes.fromhex(data[0]["frame"])

    def flipped(index: int, mask: int) -> str:
        frame = bytearray(base)
        frame[index] ^= mask
        return bytes(frame).hex()

    rejects = [
        {"name": "tag bit flipped", "frame": flipped(len(base) - 1, 0x01)},
        {"name": "ciphertext bit flipped", "frame": flipped(3, 0x80)},
        {"name": "epoch 2 in header", "frame": flipped(0, 0x03)},
        {"name": "ACK flag set, no ack byte", "frame": flipped(0, FLAG_ACK)},
        {"name": "address 6", "frame": flipped(1, 0x01)},
        {"name": "seq 01 (counter 1)", "frame": flipped(2, 0x01)},
        {"name": "truncated tag", "frame": base[:-1].hex()},
    ]

    window = ReplayWindow()
    replay = []
    for counter in REPLAY_STEPS:
        verdict = window.check(counter)
        if verdict in ("new", "late"):
            window.accept(counter)
        replay.append({"counter": counter, "verdict": verdict, "highest_after": window.highest})

    cases = []
    for highest, low in COUNTER_CASES:
        probe = ReplayWindow.from_state({"size": 64, "highest": highest, "bitmap": "1" if highest >= 0 else "0"})
        cases.append({"highest": highest, "low_byte": low, "counter": probe.candidate(low)})

    return {
        "comment": [
            "Golden vectors of docs/protocol/link.md (section 6 walks through them). All bytes are lowercase hex.",
            "keys: X25519 private keys are SHA-256 of the ASCII label; public keys are X25519(private, 9).",
            "handshake: Noise_KK_25519_AESGCM_SHA256, device = initiator, gateway = responder, empty payloads;",
            "  prologue = 'lowband/1' || address || epoch; noise_message = e (32) || tag (16); frame = header || address || noise_message;",
            "  serial = COBS(frame) || 00 (no CRC); k_up / k_down = first / second key of Split();",
            "  trace = the symmetric state after each Noise step (h, ck, k), for debugging an implementation.",
            "data: DATA frames; key names the session key; aad = header || address || seq [|| ack];",
            "  nonce = direction || 00000000 || counter (8, big-endian); ciphertext_tag = AES-256-CCM, 8-byte tag;",
            "  frame = aad || ciphertext_tag; serial = COBS(frame) || 00; on LoRa the frame is the packet.",
            "  Each data example stands alone under the handshake's keys; together they are not one session's transcript.",
            "rejects: modified copies of data[0]; a receiver in state highest = -1 must drop every one.",
            "replay_window: one receiver (size 64) fed these counters in order, after a verified tag;",
            "  verdict = check() before the frame; a new or late counter is then accepted.",
            "counter_reconstruction: highest accepted counter (-1 = none yet) and received seq byte -> counter used for the nonce.",
        ],
        "protocol": PROTOCOL_NAME.decode(),
        "address": ADDRESS,
        "epoch": EPOCH,
        "keys": {
            name: {"label": LABELS[name].decode(), "private": KEYS[name].hex(), "public": PUB[name].hex()} for name in LABELS
        },
        "handshake": {
            "prologue": prologue(ADDRESS, EPOCH).hex(),
            **hs_frames,
            "handshake_hash": handshake_hash.hex(),
            "k_up": keys.k_up.hex(),
            "k_down": keys.k_down.hex(),
            "trace": trace,
        },
        "data": data,
        "rejects": rejects,
        "replay_window": {"size": 64, "steps": replay},
        "counter_reconstruction": cases,
    }


def write_vectors() -> None:
    VECTORS_PATH.write_text(json.dumps(build_vectors(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def vectors() -> dict:
    return json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


# --- vectors ----------------------------------------------------------------------------


def test_vectors_file_is_what_the_modules_produce(vectors):
    assert vectors == build_vectors()


def test_vectors_handshake_matches_independent_noise_kk(vectors):
    hs = vectors["handshake"]
    keys = {name: bytes.fromhex(v["private"]) for name, v in vectors["keys"].items()}
    for name, v in vectors["keys"].items():
        assert keys[name] == hashlib.sha256(v["label"].encode()).digest()
        assert bytes.fromhex(v["public"]) == public_from_private(keys[name])
    message1, message2, k_up, k_down, handshake_hash, _ = reference_kk(
        keys["device_static"], keys["gateway_static"], keys["device_ephemeral"], keys["gateway_ephemeral"], vectors["address"], vectors["epoch"]
    )
    assert hs["prologue"] == (b"lowband/1" + bytes([vectors["address"], vectors["epoch"]])).hex()
    assert len(bytes.fromhex(hs["prologue"])) == 11
    assert hs["hs1"]["noise_message"] == message1.hex()
    assert hs["hs2"]["noise_message"] == message2.hex()
    assert (hs["k_up"], hs["k_down"], hs["handshake_hash"]) == (k_up.hex(), k_down.hex(), handshake_hash.hex())
    for name, frame_type in (("hs1", TYPE_HS1), ("hs2", TYPE_HS2)):
        frame = bytes.fromhex(hs[name]["frame"])
        assert frame[0] == header(frame_type, vectors["epoch"]) and frame[1] == vectors["address"]
        assert len(frame) == 50
        wire = bytes.fromhex(hs[name]["serial"])
        assert len(wire) == 52 and wire[-1] == 0 and cobs_decode(wire[:-1]) == frame


def test_vectors_data_match_independent_ccm(vectors):
    keys = {"k_up": bytes.fromhex(vectors["handshake"]["k_up"]), "k_down": bytes.fromhex(vectors["handshake"]["k_down"])}
    for v in vectors["data"]:
        key = keys[v["key"]]
        assert v["key"] == ("k_up" if v["direction"] == 0 else "k_down")
        frame = bytes.fromhex(v["frame"])
        head = frame[0]
        has_ack = bool(head & FLAG_ACK)
        clear_len = 4 if has_ack else 3
        assert head >> 5 == TYPE_DATA and head & 0x07 == vectors["epoch"] and frame[1] == vectors["address"]
        assert frame[2] == v["counter"] & 0xFF and f"{frame[2]:02x}" == v["seq"]
        assert (v["ack"] is not None) == has_ack and (not has_ack or f"{frame[3]:02x}" == v["ack"])
        assert frame[:clear_len].hex() == v["aad"]
        frame_nonce = bytes([v["direction"]]) + bytes(4) + v["counter"].to_bytes(8, "big")
        assert v["nonce"] == frame_nonce.hex()
        plaintext = bytes.fromhex(v["plaintext"])
        sealed = reference_ccm8(key, frame_nonce, frame[:clear_len], plaintext)
        assert v["ciphertext_tag"] == sealed.hex() == frame[clear_len:].hex()
        assert AESCCM(key, tag_length=8).decrypt(frame_nonce, sealed, frame[:clear_len]) == plaintext
        wire = bytes.fromhex(v["serial"])
        assert wire[-1] == 0 and 0 not in wire[:-1] and cobs_decode(wire[:-1]) == frame
    first = vectors["data"][0]
    assert (first["plaintext"], first["header"], first["aad"]) == ("11000718d71828190172", "41", "410700")
    assert len(bytes.fromhex(first["frame"])) == 21 and len(bytes.fromhex(first["serial"])) == 23
    ack = vectors["data"][1]
    assert (ack["header"], ack["aad"], ack["plaintext"]) == ("51", "51070000", "")
    assert len(bytes.fromhex(ack["frame"])) == 12


def test_vectors_rejects_all_fail(vectors):
    k_up = bytes.fromhex(vectors["handshake"]["k_up"])
    for case in vectors["rejects"]:
        frame = bytes.fromhex(case["frame"])
        clear_len = 4 if frame[0] & FLAG_ACK else 3
        window = ReplayWindow()
        with pytest.raises(TagError):
            open_(k_up, 0, window.candidate(frame[2]), frame[:clear_len], frame[clear_len:])


def test_vectors_replay_and_reconstruction(vectors):
    window = ReplayWindow(vectors["replay_window"]["size"])
    for step in vectors["replay_window"]["steps"]:
        assert window.check(step["counter"]) == step["verdict"]
        if step["verdict"] in ("new", "late"):
            window.accept(step["counter"])
        assert window.highest == step["highest_after"]
    for case in vectors["counter_reconstruction"]:
        highest, low, counter = case["highest"], case["low_byte"], case["counter"]
        assert counter % 256 == low and counter >= 0
        if highest - 127 >= 0:
            assert highest - 127 <= counter <= highest + 128
        else:
            assert 0 <= counter <= 255
        window = ReplayWindow.from_state({"size": 64, "highest": highest, "bitmap": "1" if highest >= 0 else "0"})
        assert window.candidate(low) == counter


# --- handshake --------------------------------------------------------------------------


def test_handshake_round_trip_with_fresh_keys():
    dev_private, dev_public = generate_keypair()
    gw_private, gw_public = generate_keypair()
    assert public_from_private(dev_private) == dev_public
    initiator = Initiator(dev_private, gw_public, 42, 5)
    responder = Responder(gw_private, dev_public, 42, 5)
    message1 = initiator.message1()
    message2, gateway_keys = responder.respond(message1)
    device_keys = initiator.finish(message2)
    assert device_keys == gateway_keys
    assert isinstance(device_keys, SessionKeys) and device_keys.epoch == 5
    assert len(device_keys.k_up) == len(device_keys.k_down) == 32 and device_keys.k_up != device_keys.k_down
    assert len(message1) == len(message2) == HANDSHAKE_MESSAGE_LEN
    assert len(message1) + len(message2) == 96
    assert "k_up=<32 bytes>" in repr(device_keys) and device_keys.k_up.hex() not in repr(device_keys)
    # Fresh ephemerals: a second handshake gives other keys.
    again = Initiator(dev_private, gw_public, 42, 5)
    message2b, keys_b = Responder(gw_private, dev_public, 42, 5).respond(again.message1())
    assert again.finish(message2b) == keys_b and keys_b.k_up != device_keys.k_up


def test_handshake_retransmissions_and_completion():
    initiator, responder = fixed_pair()
    assert initiator.message1() == initiator.message1()
    message2, keys = responder.respond(initiator.message1())
    # The device retransmits HS1 because HS2 was lost: same answer.
    assert responder.respond(initiator.message1()) == (message2, keys)
    assert initiator.finish(message2) == keys == initiator.finish(message2)
    other_initiator = Initiator(KEYS["device_static"], PUB["gateway_static"], ADDRESS, EPOCH)
    with pytest.raises(HandshakeError):
        responder.respond(other_initiator.message1())
    other_message2, _ = Responder(KEYS["gateway_static"], PUB["device_static"], ADDRESS, EPOCH).respond(initiator.message1())
    with pytest.raises(HandshakeError):
        initiator.finish(other_message2)


def test_split_key_extraction_matches_noiseprotocol_transport():
    """Our k_up/k_down are what noiseprotocol's own transport ciphers use (nonce 0)."""

    def raw(initiator: bool, static: str, peer: str, ephemeral: str) -> NoiseConnection:
        connection = NoiseConnection.from_name(PROTOCOL_NAME)
        connection.set_as_initiator() if initiator else connection.set_as_responder()
        connection.set_prologue(prologue(ADDRESS, EPOCH))
        connection.set_keypair_from_private_bytes(Keypair.STATIC, KEYS[static])
        connection.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, PUB[peer])
        connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, KEYS[ephemeral])
        with pytest.warns(UserWarning):
            connection.start_handshake()
        return connection

    nonce0 = bytes(12)
    # noiseprotocol as the device against our Responder.
    device = raw(True, "device_static", "gateway_static", "device_ephemeral")
    responder = Responder(KEYS["gateway_static"], PUB["device_static"], ADDRESS, EPOCH, KEYS["gateway_ephemeral"])
    message2, keys = responder.respond(bytes(device.write_message(b"")))
    device.read_message(message2)
    assert device.handshake_finished
    assert AESGCM(keys.k_up).decrypt(nonce0, device.encrypt(b"uplink"), None) == b"uplink"
    assert device.decrypt(AESGCM(keys.k_down).encrypt(nonce0, b"downlink", None)) == b"downlink"
    # noiseprotocol as the gateway against our Initiator.
    gateway = raw(False, "gateway_static", "device_static", "gateway_ephemeral")
    initiator = Initiator(KEYS["device_static"], PUB["gateway_static"], ADDRESS, EPOCH, KEYS["device_ephemeral"])
    gateway.read_message(initiator.message1())
    keys2 = initiator.finish(bytes(gateway.write_message(b"")))
    assert keys2 == keys
    assert AESGCM(keys2.k_down).decrypt(nonce0, gateway.encrypt(b"command"), None) == b"command"
    assert gateway.decrypt(AESGCM(keys2.k_up).encrypt(nonce0, b"reading", None)) == b"reading"


def test_handshake_refuses_wrong_keys_and_address():
    other_private, other_public = generate_keypair()
    good = Initiator(KEYS["device_static"], PUB["gateway_static"], ADDRESS, EPOCH)
    # The device expects another gateway key: the real gateway refuses HS1.
    wrong_gateway = Initiator(KEYS["device_static"], other_public, ADDRESS, EPOCH)
    with pytest.raises(HandshakeError):
        Responder(KEYS["gateway_static"], PUB["device_static"], ADDRESS, EPOCH).respond(wrong_gateway.message1())
    # An unknown device key (or the gateway holds another key for this address).
    impostor = Initiator(other_private, PUB["gateway_static"], ADDRESS, EPOCH)
    with pytest.raises(HandshakeError):
        Responder(KEYS["gateway_static"], PUB["device_static"], ADDRESS, EPOCH).respond(impostor.message1())
    with pytest.raises(HandshakeError):
        Responder(KEYS["gateway_static"], other_public, ADDRESS, EPOCH).respond(good.message1())
    # Address is in the prologue.
    with pytest.raises(HandshakeError):
        Responder(KEYS["gateway_static"], PUB["device_static"], ADDRESS + 1, EPOCH).respond(good.message1())
    # HS2 from an impostor gateway (another static key) or made for another
    # address: both computed with the device's own ephemeral so that only the
    # one wrong input differs, and refused by finish().
    impostor_hs1 = Initiator(KEYS["device_static"], other_public, ADDRESS, EPOCH, KEYS["device_ephemeral"])
    impostor_hs2, _ = Responder(other_private, PUB["device_static"], ADDRESS, EPOCH).respond(impostor_hs1.message1())
    other_address_hs1 = Initiator(KEYS["device_static"], PUB["gateway_static"], ADDRESS + 1, EPOCH, KEYS["device_ephemeral"])
    other_address_hs2, _ = Responder(KEYS["gateway_static"], PUB["device_static"], ADDRESS + 1, EPOCH).respond(
        other_address_hs1.message1()
    )
    for message2 in (impostor_hs2, other_address_hs2):
        initiator, _ = fixed_pair()
        with pytest.raises(HandshakeError):
            initiator.finish(message2)


def test_every_flipped_bit_is_refused_and_objects_stay_usable():
    initiator, responder = fixed_pair()
    message1 = initiator.message1()
    for i in range(len(message1) * 8):
        bad = bytearray(message1)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(HandshakeError):
            responder.respond(bytes(bad))
    message2, keys = responder.respond(message1)
    for i in range(len(message2) * 8):
        bad = bytearray(message2)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(HandshakeError):
            initiator.finish(bytes(bad))
    assert initiator.finish(message2) == keys


@pytest.mark.parametrize("message", [b"", bytes(47), bytes(49), bytes(96), bytes(48), b"\xff" * 48, "text", None, 48])
def test_handshake_malformed_input(message):
    initiator, responder = fixed_pair()
    with pytest.raises(HandshakeError):
        responder.respond(message)
    with pytest.raises(HandshakeError):
        initiator.finish(message)


def test_handshake_local_argument_errors():
    s, p = KEYS["device_static"], PUB["gateway_static"]
    for bad in (
        dict(static_private=s[:31]),
        dict(address=0),
        dict(address=255),
        dict(address=True),
        dict(epoch=8),
        dict(epoch=-1),
        dict(ephemeral_private=b"x"),
    ):
        args = dict(static_private=s, responder_static_public=p, address=ADDRESS, epoch=EPOCH) | bad
        with pytest.raises(ValueError) as info:
            Initiator(**args)
        assert not isinstance(info.value, HandshakeError)
    with pytest.raises(ValueError):
        public_from_private(b"short")


LOW_ORDER_POINTS = [bytes(32), (1).to_bytes(32, "little"), (2**255 - 19).to_bytes(32, "little")]


@FAST
@given(st.one_of(st.binary(max_size=120), st.binary(min_size=48, max_size=48),
                 st.sampled_from(LOW_ORDER_POINTS).flatmap(lambda e: st.binary(min_size=16, max_size=16).map(lambda t: e + t))))
def test_arbitrary_bytes_only_raise_handshake_error(data):
    initiator, responder = fixed_pair()
    with pytest.raises(HandshakeError):
        responder.respond(data)
    initiator.message1()
    with pytest.raises(HandshakeError):
        initiator.finish(data)


# --- DATA AEAD -------------------------------------------------------------------------


KEY = hashlib.sha256(b"lowband test data key").digest()


def test_nonce_layout():
    assert NONCE_LEN == 13 and TAG_LEN == 8
    assert nonce(0, 0) == bytes(13)
    assert nonce(1, 0x0102030405060708) == bytes.fromhex("01" "00000000" "0102030405060708")
    assert nonce(0, MAX_COUNTER) == b"\x00" + bytes(4) + b"\xff" * 8
    for direction, counter in ((2, 0), (-1, 0), (0, -1), (0, MAX_COUNTER + 1), (True, 0)):
        with pytest.raises(ValueError):
            nonce(direction, counter)


def test_ccm_round_trip_and_every_flipped_bit():
    aad = bytes.fromhex("410700")
    plaintext = bytes.fromhex("11000718d71828190172")
    sealed = seal(KEY, 0, 0, aad, plaintext)
    assert len(sealed) == len(plaintext) + TAG_LEN
    assert open_(KEY, 0, 0, aad, sealed) == plaintext
    assert sealed == reference_ccm8(KEY, nonce(0, 0), aad, plaintext)
    for i in range(len(sealed) * 8):
        bad = bytearray(sealed)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(TagError):
            open_(KEY, 0, 0, aad, bytes(bad))
    for i in range(len(aad) * 8):
        bad = bytearray(aad)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(TagError):
            open_(KEY, 0, 0, bytes(bad), sealed)
    with pytest.raises(TagError):
        open_(KEY, 1, 0, aad, sealed)
    with pytest.raises(TagError):
        open_(KEY, 0, 256, aad, sealed)
    with pytest.raises(TagError):
        open_(KEY, 0, 1, aad, sealed)
    with pytest.raises(TagError):
        open_(bytes(32), 0, 0, aad, sealed)
    with pytest.raises(TagError):
        open_(KEY, 0, 0, aad + b"\x00", sealed)
    empty = seal(KEY, 1, 5, b"\x51\x07\x05\x04", b"")
    assert len(empty) == TAG_LEN and open_(KEY, 1, 5, b"\x51\x07\x05\x04", empty) == b""


def test_ccm_local_argument_errors():
    with pytest.raises(ValueError) as info:
        seal(KEY[:16], 0, 0, b"", b"x")
    assert not isinstance(info.value, TagError)
    with pytest.raises(ValueError):
        seal(KEY, 0, 0, b"", bytes(1 << 16))
    with pytest.raises(ValueError):
        open_(KEY, 3, 0, b"", bytes(8))


@FAST
@given(st.binary(max_size=64), st.binary(max_size=8), st.integers(0, MAX_COUNTER), st.integers(0, 1))
def test_arbitrary_bytes_only_raise_tag_error(data, aad, counter, direction):
    with pytest.raises(TagError):
        open_(KEY, direction, counter, aad, data)


@FAST
@given(st.binary(max_size=300), st.binary(max_size=20), st.integers(0, MAX_COUNTER), st.integers(0, 1))
def test_ccm_matches_reference(plaintext, aad, counter, direction):
    sealed = seal(KEY, direction, counter, aad, plaintext)
    assert sealed == reference_ccm8(KEY, nonce(direction, counter), aad, plaintext)
    assert open_(KEY, direction, counter, aad, sealed) == plaintext


# --- replay window ------------------------------------------------------------------------


class _ModelReceiver:
    """Unbounded memory of every accepted counter: the window must agree with it."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.highest = -1

    def verdict(self, counter: int) -> str:
        if counter > self.highest:
            return "new"
        if counter <= self.highest - 64:
            return "old"
        return "duplicate" if counter in self.seen else "late"


@FAST
@given(st.lists(st.integers(0, 400), max_size=200))
def test_window_agrees_with_model_and_accepts_each_counter_once(counters):
    window, model, delivered = ReplayWindow(), _ModelReceiver(), []
    for counter in counters:
        verdict = window.check(counter)
        assert verdict == model.verdict(counter)
        if verdict in ("new", "late"):
            window.accept(counter)
            model.seen.add(counter)
            model.highest = max(model.highest, counter)
            delivered.append(counter)
        else:
            with pytest.raises(ValueError):
                window.accept(counter)
        assert window.highest == model.highest
        restored = ReplayWindow.from_state(json.loads(json.dumps(window.to_state())))
        assert (restored.highest, restored.bitmap) == (window.highest, window.bitmap)
    assert len(delivered) == len(set(delivered))


@FAST
@given(st.integers(0, 63), st.integers(65, 400), st.randoms(use_true_random=False))
def test_window_reordering_within_64_all_accepted(offset, count, rnd):
    counters = list(range(count))
    # Shuffle inside consecutive blocks of 64: each counter then arrives at
    # most 63 behind the highest one already accepted.
    blocks = [counters[:offset]] + [counters[i : i + 64] for i in range(offset, count, 64)]
    order = []
    for block in blocks:
        block = list(block)
        rnd.shuffle(block)
        order += block
    window = ReplayWindow()
    for counter in order:
        assert window.candidate(counter & 0xFF) == counter
        assert window.check(counter) in ("new", "late")
        window.accept(counter)
    assert window.highest == count - 1
    for counter in range(count):
        assert window.check(counter) in ("duplicate", "old")
    assert window.check(count - 65) == "old"


def test_window_in_order_and_old():
    window = ReplayWindow()
    for counter in range(1000):
        assert window.check(counter) == "new"
        window.accept(counter)
    assert window.check(999 - 64) == "old" and window.check(999 - 63) == "duplicate"
    with pytest.raises(ValueError):
        window.accept(900)
    window = ReplayWindow()
    window.accept(500)
    assert window.check(436) == "old" and window.check(437) == "late"


@FAST
@given(
    st.integers(0, MAX_COUNTER - 100_000),
    st.lists(st.integers(-127, 128), min_size=1, max_size=150),
    st.booleans(),
)
def test_reconstruction_on_random_walks(start, offsets, from_scratch):
    window = ReplayWindow()
    if not from_scratch:
        window = ReplayWindow.from_state({"size": 64, "highest": start, "bitmap": "1"})
    for offset in offsets:
        counter = window.highest + offset
        if counter < 0:
            counter = -counter % 256  # near the start every low byte maps into 0..255
        assert window.candidate(counter & 0xFF) == counter
        if window.check(counter) in ("new", "late"):
            window.accept(counter)


def test_reconstruction_near_the_start_and_end():
    window = ReplayWindow()
    assert [window.candidate(b) for b in range(256)] == list(range(256))
    window.accept(127)
    assert [window.candidate(b) for b in range(256)] == list(range(256))
    window.accept(128)
    assert window.candidate(0) == 256 and window.candidate(1) == 1
    end = ReplayWindow.from_state({"size": 64, "highest": MAX_COUNTER, "bitmap": "1"})
    for b in range(256):
        assert 0 <= end.candidate(b) <= MAX_COUNTER


def test_window_state_validation():
    for bad in ({}, {"size": 64, "highest": 3, "bitmap": "0"}, {"size": 64, "highest": -1, "bitmap": "1"},
                {"size": 64, "highest": 3, "bitmap": "1" + "0" * 16}, {"size": 64, "highest": 3, "bitmap": 1},
                {"size": 64, "highest": "3", "bitmap": "1"}, {"size": 0, "highest": 3, "bitmap": "1"},
                {"size": 64, "highest": 3, "bitmap": "zz"}, None):
        with pytest.raises(ValueError):
            ReplayWindow.from_state(bad)
    with pytest.raises(ValueError):
        ReplayWindow().candidate(256)
    with pytest.raises(ValueError):
        ReplayWindow().check(-1)


# --- send counter -----------------------------------------------------------------------------


@FAST
@given(st.lists(st.sampled_from(["send", "crash", "crash_before_persist"]), max_size=300), st.integers(1, 64))
def test_send_counter_never_reuses_across_crashes(ops, block):
    disk = 0  # what the database holds; a fresh session stores limit 0
    counter = SendCounter.resume(disk)
    used: list[int] = []
    for op in ops:
        if op == "crash":
            counter = SendCounter.resume(disk)
            continue
        if counter.needs_block():
            limit = counter.reserve_block(block)
            assert limit == counter.next_counter + block
            if op == "crash_before_persist":
                counter = SendCounter.resume(disk)  # the write never landed
                continue
            disk = limit
        value = counter.next()
        assert value < disk == counter.persisted_limit
        assert not used or value > used[-1]
        if used:
            assert value - used[-1] <= block  # a crash skips at most one block
        used.append(value)
    assert len(used) == len(set(used))


def test_send_counter_refuses_unreserved_use():
    counter = SendCounter()
    assert counter.needs_block() and counter.next_counter == 0 and counter.persisted_limit == 0
    with pytest.raises(RuntimeError):
        counter.next()
    assert counter.reserve_block() == 64
    assert [counter.next() for _ in range(64)] == list(range(64))
    assert counter.needs_block()
    with pytest.raises(RuntimeError):
        counter.next()
    end = SendCounter(next_counter=MAX_COUNTER, persisted_limit=MAX_COUNTER)
    assert end.reserve_block() == MAX_COUNTER + 1
    assert end.next() == MAX_COUNTER and end.exhausted and not end.needs_block()
    with pytest.raises(RuntimeError):
        end.next()
    with pytest.raises(ValueError):
        counter.reserve_block(0)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/link/test_link_crypto.py --write   (rewrites tests/data/link_vectors.json)")
    write_vectors()
    print(f"wrote {VECTORS_PATH}")


def test_epoch_is_bound_by_the_prologue():
    """An HS1 whose header epoch was changed on the way fails instead of making a session nobody expects."""
    initiator = Initiator(KEYS["device_static"], PUB["gateway_static"], ADDRESS, EPOCH, KEYS["device_ephemeral"])
    with pytest.raises(HandshakeError):
        Responder(KEYS["gateway_static"], PUB["device_static"], ADDRESS, (EPOCH + 1) % 8).respond(initiator.message1())
    assert prologue(ADDRESS, EPOCH) == b"lowband/1" + bytes([ADDRESS, EPOCH])
