"""The Noise session layer of CoAP clients (gateway/coap/secure_core.py), both sides in memory.

The handshake and the first DATA frame are checked byte for byte against the
device link's golden vectors (tests/data/link_vectors.json): a CoAP client's
frames are link frames.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from lowband.gateway.coap.secure_core import (
    DATA_OVERHEAD,
    ClientEntry,
    NoSession,
    Plaintext,
    Refused,
    SecureClient,
    SecureListener,
    SessionStarted,
    Transmit,
    parse_datagram,
)
from lowband.gateway.link.handshake import public_from_private

VECTORS = json.loads((Path(__file__).parent.parent / "data" / "link_vectors.json").read_text())
KEYS = {name: bytes.fromhex(key["private"]) for name, key in VECTORS["keys"].items()}
CLIENT_KEY, GATEWAY_KEY = KEYS["device_static"], KEYS["gateway_static"]
ADDRESS, EPOCH = VECTORS["address"], VECTORS["epoch"]
SRC_A, SRC_B = ("192.0.2.1", 40000), ("192.0.2.1", 40001)
# A CoAP message: CON POST, MID 0x1234, no token, Uri-Path "9" (MSC3079 send), a 3-byte CBOR body.
COAP_SEND = bytes.fromhex("40021234") + bytes.fromhex("b139") + b"\xff" + bytes.fromhex("a10161")
# A CoAP answer: ACK 2.04, MID 0x1234, no token.
COAP_CHANGED = bytes.fromhex("60441234")


def vector(name: str) -> dict[str, object]:
    return next(v for v in VECTORS["data"] if v["name"] == name)


def listener(*, vectors: bool = False, repeat_interval: float = 1.0) -> SecureListener:
    ephemeral = (lambda: KEYS["gateway_ephemeral"]) if vectors else None
    gateway = SecureListener(GATEWAY_KEY, repeat_interval=repeat_interval, ephemeral=ephemeral)
    gateway.set_clients([ClientEntry(ADDRESS, "laptop", public_from_private(CLIENT_KEY), "@alice:gw.example")])
    return gateway


def client(epoch: int = EPOCH) -> SecureClient:
    return SecureClient(CLIENT_KEY, public_from_private(GATEWAY_KEY), ADDRESS, epoch)


def transmitted(actions: list[object]) -> list[bytes]:
    return [a.frame for a in actions if isinstance(a, Transmit)]


def refusals(actions: list[object]) -> list[str]:
    return [a.kind for a in actions if isinstance(a, Refused)]


def connected(gateway: SecureListener, peer: SecureClient, now: float = 0.0, source: object = SRC_A) -> None:
    """Handshake and a first keep-alive, so the gateway holds a working session and a route."""
    (hs2,) = transmitted(gateway.receive(peer.connect(now), now, source))
    assert peer.receive(hs2) is None and peer.established
    assert gateway.receive(peer.seal(b""), now, source) == [SessionStarted(ADDRESS, peer.epoch)]
    assert gateway.has_session(ADDRESS)


def test_handshake_and_first_data_frame_are_the_link_vectors() -> None:
    gateway, peer = listener(vectors=True), client()
    hs1 = peer.connect(0.0, ephemeral_private=KEYS["device_ephemeral"])
    assert hs1.hex() == VECTORS["handshake"]["hs1"]["frame"] and len(hs1) == 50
    actions = gateway.receive(hs1, 0.0, SRC_A)
    assert transmitted(actions) == [bytes.fromhex(VECTORS["handshake"]["hs2"]["frame"])]
    assert not gateway.has_session(ADDRESS)  # pending until the first DATA frame verifies
    assert peer.receive(transmitted(actions)[0]) is None
    assert peer.established and peer.epoch == EPOCH

    reading = vector("uplink_reading")
    frame = peer.seal(bytes.fromhex(str(reading["plaintext"])))
    assert frame.hex() == reading["frame"]  # 21 bytes: 41 07 00 || ciphertext || tag
    plaintext = bytes.fromhex(str(reading["plaintext"]))
    assert gateway.receive(frame, 0.5, SRC_A) == [SessionStarted(ADDRESS, EPOCH), Plaintext(ADDRESS, plaintext)]
    assert gateway.has_session(ADDRESS) and gateway.route(ADDRESS) == SRC_A


def test_a_coap_request_and_its_answer_both_ways() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer)
    request = peer.seal(COAP_SEND)
    assert len(request) == len(COAP_SEND) + DATA_OVERHEAD == len(COAP_SEND) + 11
    assert request[:3] == bytes((0x40 | EPOCH, ADDRESS, 1))  # counter 0 went to the keep-alive
    assert COAP_SEND not in request  # encrypted
    assert gateway.receive(request, 1.0, SRC_A) == [Plaintext(ADDRESS, COAP_SEND)]
    answer = gateway.seal(ADDRESS, COAP_CHANGED)
    assert len(answer) == 4 + 11 and answer[:3] == bytes((0x40 | EPOCH, ADDRESS, 0))
    assert peer.receive(answer) == COAP_CHANGED


def test_many_frames_past_the_one_byte_sequence_number() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer)
    for i in range(600):
        body = i.to_bytes(2, "big")
        assert gateway.receive(peer.seal(body), 1.0, SRC_A) == [Plaintext(ADDRESS, body)]
        assert peer.receive(gateway.seal(ADDRESS, body)) == body


def test_seal_needs_a_confirmed_session() -> None:
    gateway, peer = listener(), client()
    with pytest.raises(NoSession):
        peer.seal(b"x")
    gateway.receive(peer.connect(0.0), 0.0, SRC_A)
    with pytest.raises(NoSession):  # pending: the client has not proved it yet
        gateway.seal(ADDRESS, b"x")
    with pytest.raises(NoSession):
        gateway.seal(99, b"x")


def test_replays_are_refused_both_ways() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer)
    request = peer.seal(COAP_SEND)
    assert gateway.receive(request, 1.0, SRC_A) == [Plaintext(ADDRESS, COAP_SEND)]
    assert gateway.receive(request, 2.0, SRC_B) == [Refused("replay", ADDRESS)]
    assert gateway.route(ADDRESS) == SRC_A  # a replay from elsewhere does not move the route
    answer = gateway.seal(ADDRESS, COAP_CHANGED)
    assert peer.receive(answer) == COAP_CHANGED
    assert peer.receive(answer) is None and peer.refused == {"replay": 1}
    # a late frame (sealed before, delivered after a newer one) is accepted once
    early, late = peer.seal(b"a"), peer.seal(b"b")
    assert gateway.receive(late, 3.0, SRC_A) == [Plaintext(ADDRESS, b"b")]
    assert gateway.receive(early, 3.0, SRC_A) == [Plaintext(ADDRESS, b"a")]
    assert gateway.receive(early, 3.0, SRC_A) == [Refused("replay", ADDRESS)]


def test_a_bad_tag_is_refused_and_the_session_goes_on() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer)
    request = bytearray(peer.seal(COAP_SEND))
    for position in (0 + 3, len(request) - 1):  # a ciphertext byte, a tag byte
        forged = bytearray(request)
        forged[position] ^= 0x01
        assert gateway.receive(bytes(forged), 1.0, SRC_B) == [Refused("bad_tag", ADDRESS)]
    assert gateway.route(ADDRESS) == SRC_A
    assert gateway.receive(bytes(request), 1.0, SRC_A) == [Plaintext(ADDRESS, COAP_SEND)]
    assert gateway.refused == {"bad_tag": 2}


def test_unknown_address_and_unknown_key_get_nothing() -> None:
    gateway = listener()
    stranger = SecureClient(hashlib.sha256(b"not provisioned").digest(), public_from_private(GATEWAY_KEY), 9)
    assert gateway.receive(stranger.connect(0.0), 0.0, SRC_B) == [Refused("unknown_client", 9)]
    impostor = SecureClient(hashlib.sha256(b"another key").digest(), public_from_private(GATEWAY_KEY), ADDRESS)
    assert gateway.receive(impostor.connect(0.0), 0.0, SRC_B) == [Refused("bad_handshake", ADDRESS)]
    # a client that knows the wrong gateway key fails the same way
    wrong_gateway = SecureClient(CLIENT_KEY, public_from_private(hashlib.sha256(b"x").digest()), ADDRESS)
    assert gateway.receive(wrong_gateway.connect(0.0), 0.0, SRC_B) == [Refused("bad_handshake", ADDRESS)]
    assert not gateway.has_session(ADDRESS) and gateway.route(ADDRESS) is None


@pytest.mark.parametrize("datagram", [
    b"", b"\x41", b"\x00\x07" + bytes(47), b"\x00\x07" + bytes(49), b"\x51\x07\x00" + bytes(8),
    b"\x49\x07\x00" + bytes(8), b"\xa1\x07" + bytes(20), b"\x41\x00\x00" + bytes(8), b"\x41\xff\x00" + bytes(8),
    b"\x41\x07\x00" + bytes(7), b"\x41\x07\x00" + bytes(2000), b"\x61\x07\x00",
])  # fmt: skip
def test_malformed_datagrams_are_refused(datagram: bytes) -> None:
    gateway = listener()
    assert gateway.receive(datagram, 0.0, SRC_A) == [Refused("malformed", None)]


def test_random_bytes_never_raise_nor_deliver() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer)
    rng = random.Random(16)
    for _ in range(3000):
        size = rng.choice((rng.randrange(0, 16), rng.randrange(0, 80), rng.randrange(0, 1500)))
        datagram = bytes(rng.randrange(256) for _ in range(size))
        if rng.random() < 0.5 and size >= 2:  # aim at the known client
            datagram = bytes((rng.choice((0x00, 0x40 | EPOCH, 0x40, 0x60)), ADDRESS)) + datagram[2:]
        for action in gateway.receive(datagram, 1.0, SRC_B):
            assert not isinstance(action, Plaintext)
        assert peer.receive(datagram) is None
    assert gateway.route(ADDRESS) == SRC_A
    assert gateway.receive(peer.seal(b"still here"), 2.0, SRC_A) == [Plaintext(ADDRESS, b"still here")]


def test_gateway_restart_brings_nosession_and_a_new_handshake() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer)
    restarted = listener()  # same key and clients, no sessions (they live in memory only)
    request = peer.seal(COAP_SEND)
    actions = restarted.receive(request, 10.0, SRC_A)
    assert refusals(actions) == ["no_session"]
    assert transmitted(actions) == [bytes((0x60 | EPOCH, ADDRESS))]  # NOSESSION: 2 bytes
    assert restarted.receive(peer.seal(COAP_SEND), 10.2, SRC_A) == [Refused("no_session", ADDRESS)]  # rate-limited
    assert transmitted(restarted.receive(peer.seal(b""), 11.5, SRC_A)) == [bytes((0x60 | EPOCH, ADDRESS))]
    assert not peer.needs_handshake
    assert peer.receive(bytes((0x60 | EPOCH, ADDRESS))) is None
    assert peer.needs_handshake and peer.established  # a hint: the old session is kept until HS2
    hs1 = peer.connect(12.0)
    assert hs1[0] == (EPOCH + 1) % 8 and not peer.needs_handshake
    (hs2,) = transmitted(restarted.receive(hs1, 12.0, SRC_A))
    peer.receive(hs2)
    assert peer.epoch == (EPOCH + 1) % 8
    assert restarted.receive(peer.seal(COAP_SEND), 12.5, SRC_A) == [
        SessionStarted(ADDRESS, peer.epoch),
        Plaintext(ADDRESS, COAP_SEND),
    ]
    assert peer.receive(restarted.seal(ADDRESS, COAP_CHANGED)) == COAP_CHANGED


def test_nosession_for_another_epoch_is_ignored_by_the_client() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer)
    assert peer.receive(bytes((0x60 | (EPOCH + 3) % 8, ADDRESS))) is None
    assert not peer.needs_handshake


def test_the_address_byte_finds_the_client_when_its_source_port_moves() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer, source=SRC_A)
    assert gateway.route(ADDRESS) == SRC_A
    assert gateway.receive(peer.seal(COAP_SEND), 1.0, SRC_B) == [Plaintext(ADDRESS, COAP_SEND)]  # NAT rebinding
    assert gateway.route(ADDRESS) == SRC_B and gateway.last_seen(ADDRESS) == 1.0
    assert gateway.receive(peer.seal(b""), 2.0, SRC_A) == [] and gateway.route(ADDRESS) == SRC_A  # keep-alive
    assert gateway.keepalives == 2


def test_a_keepalive_is_eleven_bytes_and_gets_no_answer() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer)
    keepalive = peer.seal(b"")
    assert len(keepalive) == 11
    assert gateway.receive(keepalive, 600.0, SRC_A) == []


def test_a_replayed_hs1_does_not_cut_off_the_working_session() -> None:
    gateway, peer = listener(), client()
    hs1 = peer.connect(0.0)
    (hs2,) = transmitted(gateway.receive(hs1, 0.0, SRC_A))
    peer.receive(hs2)
    assert gateway.receive(peer.seal(b"first"), 0.1, SRC_A)[0] == SessionStarted(ADDRESS, EPOCH)
    # someone replays the recorded HS1 (same epoch as the working session): a new pending session, a new HS2
    (replayed_hs2,) = transmitted(gateway.receive(hs1, 5.0, SRC_B))
    assert replayed_hs2 != hs2
    assert peer.receive(replayed_hs2) is None and peer.refused == {"unexpected_frame": 1}
    assert gateway.receive(peer.seal(COAP_SEND), 5.1, SRC_A) == [Plaintext(ADDRESS, COAP_SEND)]
    assert peer.receive(gateway.seal(ADDRESS, COAP_CHANGED)) == COAP_CHANGED  # still the working keys


def test_a_repeated_hs1_gets_the_same_hs2_rate_limited() -> None:
    gateway, peer = listener(repeat_interval=1.0), client()
    hs1 = peer.connect(0.0)
    assert peer.connect(0.1) == hs1  # retransmission: the same bytes
    (hs2,) = transmitted(gateway.receive(hs1, 0.0, SRC_A))
    assert transmitted(gateway.receive(hs1, 0.1, SRC_A)) == [hs2]  # the first repeat at once
    assert gateway.receive(hs1, 0.2, SRC_A) == [Refused("handshake_limited", ADDRESS)]
    assert transmitted(gateway.receive(hs1, 1.3, SRC_A)) == [hs2]
    peer.receive(hs2)
    assert gateway.receive(peer.seal(COAP_SEND), 1.4, SRC_A)[-1] == Plaintext(ADDRESS, COAP_SEND)


def test_a_new_handshake_replaces_the_session_after_its_first_data_frame() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer)
    old_frame = peer.seal(b"old")
    hs1 = peer.connect(1.0)
    assert peer.established and peer.epoch == EPOCH  # the old session works until HS2
    (hs2,) = transmitted(gateway.receive(hs1, 1.0, SRC_A))
    peer.receive(hs2)
    assert peer.epoch == (EPOCH + 1) % 8
    assert gateway.receive(old_frame, 1.1, SRC_A) == [Plaintext(ADDRESS, b"old")]  # still the working session
    assert gateway.receive(peer.seal(b"new"), 1.2, SRC_A) == [
        SessionStarted(ADDRESS, peer.epoch),
        Plaintext(ADDRESS, b"new"),
    ]
    stale = old_frame[:2] + bytes((5,)) + old_frame[3:]
    actions = gateway.receive(stale, 1.3, SRC_A)  # the old epoch is gone now
    assert refusals(actions) == ["no_session"]
    assert peer.receive(transmitted(actions)[0]) is None and not peer.needs_handshake  # old epoch: ignored
    assert peer.receive(gateway.seal(ADDRESS, b"down")) == b"down"


def test_removed_and_rekeyed_clients() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer)
    entry = gateway.client(ADDRESS)
    assert entry is not None and entry.name == "laptop"
    gateway.set_clients([entry])  # unchanged: the session stays
    assert gateway.has_session(ADDRESS)
    gateway.set_clients([ClientEntry(ADDRESS, "laptop", public_from_private(bytes(32)), "@alice:gw.example")])
    assert not gateway.has_session(ADDRESS)
    gateway.set_clients([])
    assert gateway.receive(peer.seal(COAP_SEND), 1.0, SRC_A) == [Refused("unknown_client", ADDRESS)]


def test_the_client_asks_for_a_handshake_after_bad_downlink_tags() -> None:
    gateway, peer = listener(), client()
    connected(gateway, peer)
    good = gateway.seal(ADDRESS, b"x")
    for _ in range(2):
        assert peer.receive(good[:-1] + bytes((good[-1] ^ 1,))) is None
    assert not peer.needs_handshake
    assert peer.receive(good) == b"x"  # a good frame resets the count
    for _ in range(3):
        peer.receive(good[:-1] + bytes((good[-1] ^ 1,)))
    assert peer.needs_handshake and peer.refused["bad_tag"] == 5


def test_parse_datagram_accepts_datagrams_longer_than_a_lora_packet() -> None:
    frame = parse_datagram(b"\x41\x07\x00" + bytes(1100))
    assert frame is not None and len(frame.body) == 1100
    assert parse_datagram(b"\x41\x07\x00" + bytes(1100), max_len=255) is None


def test_new_handshakes_per_address_are_rate_limited() -> None:
    gateway = listener()
    forged = [
        SecureClient(hashlib.sha256(bytes([i])).digest(), public_from_private(GATEWAY_KEY), ADDRESS) for i in range(8)
    ]
    kinds = [refusals(gateway.receive(f.connect(0.0), 0.0, SRC_B))[0] for f in forged]
    assert kinds == ["bad_handshake"] * 4 + ["handshake_limited"] * 4  # a burst of 4, then 2 per second
    peer = client()
    assert gateway.receive(peer.connect(0.1), 0.1, SRC_A) == [Refused("handshake_limited", ADDRESS)]
    (hs2,) = transmitted(gateway.receive(peer.connect(0.6), 0.6, SRC_A))  # the client's retry gets through
    peer.receive(hs2)
    assert peer.established


def test_a_replayed_old_hs1_does_not_displace_the_new_handshake() -> None:
    gateway, peer = listener(), client()
    old_hs1 = peer.connect(0.0)
    (hs2,) = transmitted(gateway.receive(old_hs1, 0.0, SRC_A))
    peer.receive(hs2)
    gateway.receive(peer.seal(b""), 0.1, SRC_A)
    new_hs1 = peer.connect(5.0)  # the next epoch
    (new_hs2,) = transmitted(gateway.receive(new_hs1, 5.0, SRC_A))
    assert len(transmitted(gateway.receive(old_hs1, 5.1, SRC_B))) == 1  # the replay gets an HS2 of its own
    peer.receive(new_hs2)
    assert gateway.receive(peer.seal(COAP_SEND), 5.2, SRC_A) == [
        SessionStarted(ADDRESS, (EPOCH + 1) % 8),
        Plaintext(ADDRESS, COAP_SEND),
    ]
    assert peer.receive(gateway.seal(ADDRESS, COAP_CHANGED)) == COAP_CHANGED


def test_the_worked_example_of_docs_coap_secure() -> None:
    """The send request and its answer in docs/protocol/coap-noise.md, byte for byte."""
    from lowband.codecs import coap, msc3079

    gateway, peer = listener(vectors=True), client()
    (hs2,) = transmitted(gateway.receive(peer.connect(0.0, ephemeral_private=KEYS["device_ephemeral"]), 0.0, SRC_A))
    peer.receive(hs2)
    path = [b"9", b"!r:gw.example", b"m.room.message", b"t1"]
    options = [(coap.OPT_URI_PATH, p) for p in path] + [(coap.OPT_CONTENT_FORMAT, bytes([coap.FORMAT_CBOR]))]
    body = msc3079.encode({"msgtype": "m.text", "body": "temp 21.5 C"})
    request = coap.encode(coap.Message(coap.CON, coap.PUT, 0x1234, b"\x01", tuple(options), body))
    assert request.hex() == (
        "4103123401b1390d0021723a67772e6578616d706c650d016d2e726f6f6d2e6d657373616765027431113c"
        "ffa2181b6b74656d702032312e352043181c666d2e74657874"
    )
    frame = peer.seal(request)
    assert frame.hex() == (
        "41070008ecf3cb78118182d3bf873dd7032e9db047a49250d51b4e149cdf1223adf66cdbc738b2488ed4a085a0813547ee6745"
        "0202e17ed892e5fddb0f0b2fd96b7d7c98e6e206379fee5105602dbd"
    )
    assert gateway.receive(frame, 1.0, SRC_A)[-1] == Plaintext(ADDRESS, request)
    answer_body = msc3079.encode({"event_id": "$Kx3hY8qd2Tn1vZ0a9bQeWcRuLpOsMfGjHiEkAlBnCmD"})
    answer = coap.encode(coap.Message(coap.ACK, coap.CHANGED, 0x1234, b"\x01", ((coap.OPT_CONTENT_FORMAT, b"\x3c"),),
                                      answer_body))  # fmt: skip
    down = gateway.seal(ADDRESS, answer)
    assert len(answer) == 56 and len(down) == 67 and down.hex().startswith("4107004786554197901b58")
    assert down.hex().endswith("3fd32869df") and peer.receive(down) == answer
    assert peer.seal(b"").hex() == "410701858c65c5cfccdc1a"  # the keep-alive of the doc (counter 1)
