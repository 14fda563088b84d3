"""The link handshake: Noise_KK_25519_AESGCM_SHA256, both roles, sans-I/O.

See docs/protocol/link.md, sections 1 and 2. The device is the initiator,
the gateway the responder; each already knows the other's static X25519
public key, so the two messages carry only ephemeral keys and tags:

    HS1 body  = e (32) || AES-GCM tag of the empty payload (16)   48 bytes
    HS2 body  = e (32) || AES-GCM tag of the empty payload (16)   48 bytes

The prologue is ``b"lowband/1" || address || epoch`` (11 bytes), so a handshake made
for one device address or protocol version fails for any other. After HS2
both sides hold the two keys of Noise ``Split()``: ``k_up`` (first key,
device to gateway) and ``k_down`` (second key, gateway to device).

Rules:

* ``Initiator.message1()`` always returns the same 48 bytes, so a device
  can retransmit HS1 verbatim.
* ``Initiator.finish()`` and ``Responder.respond()`` are retryable: a bad
  message raises :class:`HandshakeError` and leaves the object as it was,
  so a corrupted HS2 (or HS1) followed by a good copy still completes.
* Once a handshake has completed, the object forgets its ephemeral private
  key (forward secrecy) and keeps only the result: the identical message
  again returns the identical result (the peer retransmitted because our
  answer was lost); any other message raises :class:`HandshakeError` — a
  new handshake needs a new object.
* Bad bytes from the peer only ever raise :class:`HandshakeError`. Bad
  arguments from our own caller (key sizes, address, epoch) raise plain
  :class:`ValueError` at construction.

noiseprotocol internals relied on (noiseprotocol 0.3.1): the library keeps
the split keys only inside its transport ``CipherState`` objects,
``NoiseConnection.noise_protocol.cipher_state_encrypt`` and
``cipher_state_decrypt``, whose attribute ``k`` is the raw 32-byte key. For
the initiator ``encrypt`` is the first split key and ``decrypt`` the second;
for the responder it is the other way round. The library deletes the
handshake state (including the peer's static key) on completion, which
does not matter here: both static keys are arguments of this module.
``tests/link/test_link_crypto.py`` proves the extraction by encrypting with the
library's own transport cipher and decrypting with ``AESGCM(k)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseInvalidMessage, NoiseValueError

from lowband.gateway.devices.keys import generate_keypair, public_from_private

__all__ = [
    "HANDSHAKE_MESSAGE_LEN",
    "KEY_LEN",
    "MAX_EPOCH",
    "PROLOGUE_PREFIX",
    "PROTOCOL_NAME",
    "HandshakeError",
    "Initiator",
    "Responder",
    "SessionKeys",
    "generate_keypair",
    "prologue",
    "public_from_private",
]

PROTOCOL_NAME = b"Noise_KK_25519_AESGCM_SHA256"
PROLOGUE_PREFIX = b"lowband/1"
KEY_LEN = 32
#: Both handshake messages: ephemeral public key (32) and AES-GCM tag (16).
HANDSHAKE_MESSAGE_LEN = 48
MAX_EPOCH = 7
_MIN_ADDRESS = 1
_MAX_ADDRESS = 254

# What noiseprotocol and cryptography raise when the peer's bytes are bad:
# InvalidTag for a failed AES-GCM tag (wrong static key, wrong prologue,
# flipped bit), ValueError for an ephemeral key that yields an all-zero
# X25519 result (a low-order point), and the library's own errors.
_PEER_ERRORS = (InvalidTag, ValueError, NoiseInvalidMessage, NoiseValueError)


class HandshakeError(ValueError):
    """A handshake message from the peer is malformed or does not authenticate.

    Raised for a wrong length, a failed tag (which is how a wrong static
    key, a wrong address or a modified byte shows up), an invalid ephemeral
    key, or a second, different message after a completed handshake.
    """


@dataclass(frozen=True)
class SessionKeys:
    """The result of a completed handshake.

    ``k_up`` is the first key of Noise ``Split()`` and protects device to
    gateway frames; ``k_down`` is the second and protects gateway to device
    frames. ``epoch`` is the session epoch (0–7) the handshake was run for.
    """

    epoch: int
    k_up: bytes
    k_down: bytes

    def __repr__(self) -> str:
        # Keys stay out of logs and tracebacks.
        return f"SessionKeys(epoch={self.epoch}, k_up=<{len(self.k_up)} bytes>, k_down=<{len(self.k_down)} bytes>)"


def prologue(address: int, epoch: int) -> bytes:
    """Return the 11-byte Noise prologue: ``lowband/1`` || address || epoch.

    Binding the epoch means a frame whose header epoch was changed on the
    way fails the handshake instead of setting up a session the other side
    does not expect.
    """
    _check_address(address)
    _check_epoch(epoch)
    return PROLOGUE_PREFIX + bytes([address, epoch])


class _Party:
    """What both sides keep: checked keys, prologue, address, epoch, ephemeral key."""

    def __init__(
        self, static_private: bytes, peer_static_public: bytes, address: int, epoch: int,
        ephemeral_private: bytes | None,
    ) -> None:  # fmt: skip
        _check_key(static_private, "static private key")
        _check_key(peer_static_public, "peer static public key")
        _check_epoch(epoch)
        self._prologue = prologue(address, epoch)
        self._static_private = bytes(static_private)
        self._peer_static_public = bytes(peer_static_public)
        self.address = address
        self.epoch = epoch
        if ephemeral_private is None:
            ephemeral_private = generate_keypair()[0]
        _check_key(ephemeral_private, "ephemeral private key")
        self._ephemeral_private: bytes | None = bytes(ephemeral_private)


class Initiator(_Party):
    """The device's side of the handshake.

    ``ephemeral_private`` fixes the ephemeral key (golden vectors and tests
    only); without it a fresh one is generated. Raises :class:`ValueError`
    for a key that is not 32 bytes, an address outside 1–254 or an epoch
    outside 0–7.
    """

    def __init__(
        self,
        static_private: bytes,
        responder_static_public: bytes,
        address: int,
        epoch: int,
        ephemeral_private: bytes | None = None,
    ) -> None:
        _Party.__init__(self, static_private, responder_static_public, address, epoch, ephemeral_private)
        connection = self._start()
        self._message1 = bytes(connection.write_message(b""))
        self._completed: tuple[bytes, SessionKeys] | None = None

    @property
    def responder_static_public(self) -> bytes:
        """The gateway static public key this handshake authenticates."""
        return self._peer_static_public

    def message1(self) -> bytes:
        """Return HS1's body (48 bytes); the same bytes on every call."""
        return self._message1

    def finish(self, message2: bytes) -> SessionKeys:
        """Process HS2's body and return the session keys.

        Raises :class:`HandshakeError` if ``message2`` is not 48 bytes, does
        not authenticate (wrong gateway key, wrong address, modified bytes,
        not an answer to this HS1), or differs from the HS2 that already
        completed this handshake.
        """
        message2 = _as_message(message2, "message 2")
        if self._completed is not None:
            done_message, keys = self._completed
            if message2 != done_message:
                raise HandshakeError("handshake already completed with another message 2")
            return keys
        # A fresh connection per attempt, replaying HS1 with the same
        # ephemeral key, so a failed attempt leaves nothing half-mixed.
        connection = self._start()
        connection.write_message(b"")
        try:
            payload = connection.read_message(message2)
        except _PEER_ERRORS as exc:
            raise HandshakeError(f"message 2 does not authenticate: {type(exc).__name__}") from None
        if payload or not connection.handshake_finished:
            raise HandshakeError("message 2 carries an unexpected payload")
        k_up, k_down = _split_keys(connection, initiator=True)
        keys = SessionKeys(epoch=self.epoch, k_up=k_up, k_down=k_down)
        self._completed = (message2, keys)
        self._ephemeral_private = None
        return keys

    def _start(self) -> NoiseConnection:
        assert self._ephemeral_private is not None
        return _connection(
            initiator=True,
            prologue_bytes=self._prologue,
            static_private=self._static_private,
            peer_static_public=self._peer_static_public,
            ephemeral_private=self._ephemeral_private,
        )


class Responder(_Party):
    """The gateway's side of the handshake, one object per new HS1.

    Arguments as for :class:`Initiator`, with the device's static public key.
    Raises :class:`ValueError` for bad arguments.
    """

    def __init__(
        self,
        static_private: bytes,
        initiator_static_public: bytes,
        address: int,
        epoch: int,
        ephemeral_private: bytes | None = None,
    ) -> None:
        _Party.__init__(self, static_private, initiator_static_public, address, epoch, ephemeral_private)
        self._completed: tuple[bytes, bytes, SessionKeys] | None = None

    @property
    def initiator_static_public(self) -> bytes:
        """The device static public key this handshake authenticates."""
        return self._peer_static_public

    def respond(self, message1: bytes) -> tuple[bytes, SessionKeys]:
        """Process HS1's body; return HS2's body (48 bytes) and the session keys.

        Raises :class:`HandshakeError` if ``message1`` is not 48 bytes or
        does not authenticate (wrong device key, wrong address, modified
        bytes), or differs from the HS1 that already completed this
        handshake (make a new :class:`Responder` for a new handshake). The
        identical HS1 again returns the identical answer.
        """
        message1 = _as_message(message1, "message 1")
        if self._completed is not None:
            done_message, message2, keys = self._completed
            if message1 != done_message:
                raise HandshakeError("handshake already completed with another message 1")
            return message2, keys
        assert self._ephemeral_private is not None
        connection = _connection(
            initiator=False,
            prologue_bytes=self._prologue,
            static_private=self._static_private,
            peer_static_public=self._peer_static_public,
            ephemeral_private=self._ephemeral_private,
        )
        try:
            payload = connection.read_message(message1)
        except _PEER_ERRORS as exc:
            raise HandshakeError(f"message 1 does not authenticate: {type(exc).__name__}") from None
        if payload:
            raise HandshakeError("message 1 carries an unexpected payload")
        message2 = bytes(connection.write_message(b""))
        k_up, k_down = _split_keys(connection, initiator=False)
        keys = SessionKeys(epoch=self.epoch, k_up=k_up, k_down=k_down)
        self._completed = (message1, message2, keys)
        self._ephemeral_private = None
        return message2, keys


def _connection(
    *,
    initiator: bool,
    prologue_bytes: bytes,
    static_private: bytes,
    peer_static_public: bytes,
    ephemeral_private: bytes,
) -> NoiseConnection:
    connection = NoiseConnection.from_name(PROTOCOL_NAME)
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    connection.set_prologue(prologue_bytes)
    connection.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    connection.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, peer_static_public)
    # The ephemeral key is always set from bytes we hold: that makes golden
    # vectors possible and lets finish() replay HS1 on a fresh connection.
    # noiseprotocol warns about a preset ephemeral ("OK for testing"); here
    # it is deliberate and the key is fresh per handshake, so silence it.
    connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral_private)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="One of ephemeral keypairs is already set")
        connection.start_handshake()
    return connection


def _split_keys(connection: NoiseConnection, *, initiator: bool) -> tuple[bytes, bytes]:
    """Return ``(k_up, k_down)``, the first and second keys of Split().

    noiseprotocol 0.3.1 keeps them only in its transport cipher states; see
    the module docstring. The test suite checks this against the library's
    own ``encrypt``/``decrypt``.
    """
    protocol = connection.noise_protocol
    encrypt_key = bytes(protocol.cipher_state_encrypt.k)
    decrypt_key = bytes(protocol.cipher_state_decrypt.k)
    if len(encrypt_key) != KEY_LEN or len(decrypt_key) != KEY_LEN:  # pragma: no cover - library changed
        raise RuntimeError("noiseprotocol did not expose 32-byte split keys")
    return (encrypt_key, decrypt_key) if initiator else (decrypt_key, encrypt_key)


def _as_message(message: object, name: str) -> bytes:
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise HandshakeError(f"{name} must be bytes, not {type(message).__name__}")
    message = bytes(message)
    if len(message) != HANDSHAKE_MESSAGE_LEN:
        raise HandshakeError(f"{name} is {len(message)} bytes, expected {HANDSHAKE_MESSAGE_LEN}")
    return message


def _check_key(key: object, name: str) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise ValueError(f"{name} must be {KEY_LEN} bytes")


def _check_address(address: object) -> None:
    if not isinstance(address, int) or isinstance(address, bool) or not _MIN_ADDRESS <= address <= _MAX_ADDRESS:
        raise ValueError(f"device address must be an int in {_MIN_ADDRESS}..{_MAX_ADDRESS}, got {address!r}")


def _check_epoch(epoch: object) -> None:
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f"epoch must be an int in 0..{MAX_EPOCH}, got {epoch!r}")
