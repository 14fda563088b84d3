"""Targets for the device link: the Noise handshake, and the gateway's link core fed frames.

Keys are fixed (derived from labels), so an input always means the same
thing. Random bytes never authenticate, so the targets also build frames
that do (sealed with the session keys, or a real HS1) from the input's
choices: that is what reaches reassembly, the replay window and delivery.
"""

from __future__ import annotations

import hashlib
import typing

from lowband.codecs.link_frame import TYPE_DATA, TYPE_HS1, TYPE_HS2, Frame, parse_frame
from lowband.gateway.fuzz.target import ByteSource, Target, require
from lowband.gateway.link import crypto
from lowband.gateway.link.gateway_core import (
    MAX_UNDELIVERED,
    UP,
    Action,
    CommandDropped,
    Deliver,
    DeliveryToken,
    DeviceEntry,
    GatewayLink,
    Refused,
    Session,
    Transmit,
)
from lowband.gateway.link.handshake import HANDSHAKE_MESSAGE_LEN, HandshakeError, Initiator, Responder, SessionKeys
from lowband.gateway.link.handshake import public_from_private as _public


def _key(label: str) -> bytes:
    return hashlib.sha256(b"lowband fuzz " + label.encode()).digest()


DEVICE_PRIVATE, GATEWAY_PRIVATE = _key("device static"), _key("gateway static")
DEVICE_PUBLIC, GATEWAY_PUBLIC = _public(DEVICE_PRIVATE), _public(GATEWAY_PRIVATE)
_INITIATOR_E, _RESPONDER_E = _key("initiator ephemeral"), _key("responder ephemeral")

# ------------------------------------------------------------------ handshake


def check_handshake(data: bytes) -> None:
    """Responder.respond and Initiator.finish give a result or HandshakeError for any bytes
    (address and epoch from the first bytes); a completed handshake answers the identical
    message identically and refuses any other; a real HS1 with one byte changed never
    authenticates; a handshake between the two roles, ephemeral keys from the input, gives
    both sides the same keys."""
    source = ByteSource(data[:3])
    address, epoch, mode = source.between(1, 254), source.below(8), source.byte()
    body = data[3:]
    responder = Responder(GATEWAY_PRIVATE, DEVICE_PUBLIC, address, epoch, ephemeral_private=_RESPONDER_E)
    try:
        message2, keys = responder.respond(body)
    except HandshakeError:
        pass
    else:
        require(len(message2) == HANDSHAKE_MESSAGE_LEN, "HS2 of the wrong length")
        require(responder.respond(body) == (message2, keys), "the same HS1 got another answer")
        _require_refused(lambda: responder.respond(bytes(HANDSHAKE_MESSAGE_LEN)))
    initiator = Initiator(DEVICE_PRIVATE, GATEWAY_PUBLIC, address, epoch, ephemeral_private=_INITIATOR_E)
    try:
        keys = initiator.finish(body)
    except HandshakeError:
        pass
    else:
        require(initiator.finish(body) == keys, "the same HS2 gave other keys")
        _require_refused(lambda: initiator.finish(bytes(HANDSHAKE_MESSAGE_LEN)))
    if mode & 7 == 1:  # one input in eight: the full handshake costs a dozen X25519 operations
        bodies = ByteSource(body)
        device = Initiator(
            DEVICE_PRIVATE, GATEWAY_PUBLIC, address, epoch, ephemeral_private=bodies.take(32).ljust(32, b"\1")
        )
        gateway = Responder(
            GATEWAY_PRIVATE, DEVICE_PUBLIC, address, epoch, ephemeral_private=bodies.take(32).ljust(32, b"\2")
        )
        message1 = device.message1()
        if mode & 8:
            position = bodies.below(len(message1))
            changed = (
                message1[:position] + bytes((message1[position] ^ (1 + bodies.below(255)),)) + message1[position + 1 :]
            )
            fresh = Responder(GATEWAY_PRIVATE, DEVICE_PUBLIC, address, epoch, ephemeral_private=_RESPONDER_E)
            _require_refused(lambda: fresh.respond(changed))
        message2, gateway_keys = gateway.respond(message1)
        device_keys = device.finish(message2)
        require(device_keys == gateway_keys and device_keys.epoch == epoch, "the two sides derived different keys")


def _require_refused(call: object) -> None:
    assert callable(call)
    try:
        call()
    except HandshakeError:
        return
    require(False, "a message that must not authenticate was accepted")


def _handshake_seeds() -> list[bytes]:
    message1 = Initiator(DEVICE_PRIVATE, GATEWAY_PUBLIC, 1, 0, ephemeral_private=_INITIATOR_E).message1()
    message2, _ = Responder(GATEWAY_PRIVATE, DEVICE_PUBLIC, 1, 0, ephemeral_private=_RESPONDER_E).respond(message1)
    return [b"\0\0\0" + message1, b"\0\0\0" + message2, b"\0\0\x09" + bytes(64)]


HANDSHAKE = Target(
    name="handshake",
    summary="gateway/link/handshake.py: Responder.respond and Initiator.finish (Noise KK), and both roles together",
    prop="keys or HandshakeError; changed messages never authenticate; both sides agree",
    errors=("HandshakeError",),
    check=check_handshake,
    seeds=_handshake_seeds,
    max_len=160,
)

# ------------------------------------------------------------------ the gateway's link core

_ADDRESS, _OTHER = 5, 6
_SESSION_KEYS = SessionKeys(epoch=2, k_up=_key("k_up"), k_down=_key("k_down"))
_SESSION_STATE = Session(_SESSION_KEYS).to_state()
_ACTIONS = typing.get_args(Action)  # every documented action type, as gateway_core lists them


class _Device:
    """The device side as far as the target needs it: keys per epoch, its counter, what it sent."""

    def __init__(self) -> None:
        self.keys = {_SESSION_KEYS.epoch: _SESSION_KEYS}
        self.epoch = _SESSION_KEYS.epoch
        self.counter = 0
        self.sent: list[bytes] = []

    def data_frame(self, source: ByteSource) -> bytes:
        self.counter = max(0, self.counter + source.between(-3, 130 if source.flag() else 2))
        epoch = self.epoch if source.byte() < 0xF0 else source.below(8)
        keys = self.keys.get(epoch, _SESSION_KEYS)
        ack = source.byte() if source.flag() else None
        shell = Frame(TYPE_DATA, epoch, _ADDRESS, b"", seq=self.counter & 0xFF, ack=ack, frag=source.flag())
        plaintext = source.blob(100)
        frame = shell.aad + crypto.seal(keys.k_up, UP, self.counter, shell.aad, plaintext)
        self.sent.append(frame)
        return frame

    def handshake(self, link: GatewayLink, source: ByteSource, now: float) -> list[object]:
        epoch = source.below(8)
        device = Initiator(
            DEVICE_PRIVATE, GATEWAY_PUBLIC, _ADDRESS, epoch, ephemeral_private=source.take(32).ljust(32, b"\1")
        )
        frame = Frame(TYPE_HS1, epoch, _ADDRESS, device.message1()).encode()
        repeated = frame in self.sent
        self.sent.append(frame)
        actions = link.receive(frame, now)
        answers = [a for a in actions if isinstance(a, Transmit)]
        if repeated and not answers:  # repeated answers are rate-limited: refused, and nothing else happens
            require(all(isinstance(a, Refused) for a in actions), "a limited HS1 repeat was not refused")
            return list(actions)
        require(len(answers) == 1, "a new HS1 got no single HS2")
        hs2 = parse_frame(answers[0].frame)
        require(hs2.type == TYPE_HS2 and hs2.epoch == epoch, "the answer to HS1 is not an HS2 of its epoch")
        self.keys[epoch] = device.finish(hs2.body)
        self.epoch = epoch
        self.counter = 0
        return list(actions)


def check_gateway_link(data: bytes) -> None:
    """GatewayLink.receive never raises for any frame bytes and answers only with its
    documented actions; a frame that is neither one the device sent nor a real HS1 gets only
    ``Refused`` (nothing of it is delivered or stored, and nothing new is sent); every Transmit fits the MTU
    and parses as a link frame; delivered/delivery_failed never raise for tokens the link
    made; undelivered messages and queued commands stay within their bounds; a new real HS1
    gets exactly one HS2 (a repeated one that, or a refusal: repeats are rate-limited)."""
    source = ByteSource(data)
    link = GatewayLink(GATEWAY_PRIVATE, mtu=(64, 255)[source.below(2)], max_commands=4)
    link.add_device(DeviceEntry(_ADDRESS, "fuzz", DEVICE_PUBLIC), _SESSION_STATE)
    link.add_device(DeviceEntry(_OTHER, "other", DEVICE_PUBLIC))
    device = _Device()
    tokens: list[DeliveryToken] = []
    transmitted: set[bytes] = set()
    now = 1000.0
    for _ in range(source.below(20)):
        op = source.below(16)
        now += source.below(20)
        actions: list[object]
        if op < 4:
            frame = source.blob(80)
            actions = list(link.receive(frame, now))
            if frame not in device.sent:
                # A retransmitted HS1 body is answered with the HS2 already sent: nothing new leaves.
                require(all(isinstance(a, Refused) or isinstance(a, Transmit) and a.frame in transmitted
                            for a in actions), "a frame the device never sent was not refused")  # fmt: skip
        elif op < 10:
            actions = list(link.receive(device.data_frame(source), now))
        elif op == 10 and device.sent:
            actions = list(link.receive(device.sent[source.below(len(device.sent))], now))
        elif op in (11, 15) and tokens:
            actions = list(link.delivered(tokens[source.below(len(tokens))], now))
        elif op == 12 and tokens:
            actions = list(link.delivery_failed(tokens[source.below(len(tokens))], now))
        elif op == 13:
            actions = list(link.queue_command(_ADDRESS, source.blob(600)))
            require(all(isinstance(a, CommandDropped) for a in actions), "queue_command answered more than drops")
        elif op == 14 and source.byte() < 80:  # a handshake costs eight X25519 operations: a rare step
            actions = device.handshake(link, source, now)
        else:
            continue
        for action in actions:
            require(isinstance(action, _ACTIONS), f"receive answered with {type(action).__name__}")
            if isinstance(action, Transmit):
                transmitted.add(action.frame)
                require(len(action.frame) <= link.mtu, "a transmitted frame exceeds the MTU")
                parse_frame(action.frame)  # LinkFrameError here is a crash: we built it
            if isinstance(action, Deliver):
                require(0 < len(action.payload) <= 4096, "a delivered message is out of bounds")
                tokens.append(action.token)
        require(link.undelivered(_ADDRESS) <= MAX_UNDELIVERED, "more undelivered messages than allowed")
        require(link.pending_commands(_ADDRESS) <= link.max_commands + 1, "more queued commands than allowed")


def _gateway_link_seeds() -> list[bytes]:
    # mtu 255; two steps: a sealed DATA frame (op 4: counter 0, same epoch, no ack, no FRAG, 5 bytes), delivered (op 11).
    return [bytes([1, 2, 4, 0, 0, 1, 0, 0, 0, 5, 1, 2, 3, 4, 5, 11, 0, 0])]


GATEWAY_LINK = Target(
    name="gateway_link",
    summary="gateway/link/gateway_core.py: GatewayLink.receive fed arbitrary bytes and real frames, with deliveries",
    prop="actions only, never an exception; garbage gets only Refused; bounds held",
    errors=("none: malformed frames become Refused actions",),
    check=check_gateway_link,
    seeds=_gateway_link_seeds,
    max_len=1024,
)
