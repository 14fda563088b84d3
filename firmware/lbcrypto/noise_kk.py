"""The device's side of the link handshake: Noise_KK_25519_AESGCM_SHA256.

Runs unchanged on CPython 3.11 and MicroPython. Contract:
docs/protocol/link.md sections 1-2. The device is the initiator:

    -> s                      (pre-message: both static keys are provisioned)
    <- s
    ...
    -> e, es, ss              message 1 = e (32) || tag of the empty payload (16)
    <- e, ee, se              message 2 = the same shape from the gateway

Prologue: b"lowband/1" || address || epoch (11 bytes). Payloads are empty.
After message 2, Split() gives k_up (device -> gateway) and k_down.

Rules:
- message1() once, then finish(message2) until one succeeds; anything
  else is the caller's bug and raises RuntimeError.
- A bad message 2 (wrong length, small-order key, failed tag) raises
  ValueError and changes nothing: the handshake keeps waiting, so a forged
  or corrupted HS2 cannot cut off the genuine one behind it (the gateway
  answers a repeated HS1 with the identical HS2).
- After success the private keys and the chaining key are dropped; only
  the handshake hash `h` is kept (it is public, for debugging).

Cost: five X25519 scalar multiplications, three in message1() (e's
public key, es, ss) and two in finish() (ee, se).
"""

import hashlib

from . import aes_modes, x25519

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MESSAGE_LEN = const(48)
KEY_LEN = const(32)
PROTOCOL_NAME = b"Noise_KK_25519_AESGCM_SHA256"  # 28 bytes: padded, not hashed
PROLOGUE_PREFIX = b"lowband/1"
_HASH_BLOCK = const(64)


def _mix_hash(h, data):
    s = hashlib.sha256(h)
    s.update(data)
    return s.digest()


def _hmac(key, data):
    # HMAC-SHA256 (RFC 2104); Noise only ever passes 32-byte keys here.
    pad = bytearray(_HASH_BLOCK)
    pad[: len(key)] = key
    for i in range(_HASH_BLOCK):
        pad[i] ^= 0x36
    s = hashlib.sha256(pad)
    s.update(data)
    inner = s.digest()
    for i in range(_HASH_BLOCK):
        pad[i] ^= 0x36 ^ 0x5C
    s = hashlib.sha256(pad)
    s.update(inner)
    return s.digest()


def _hkdf2(chaining_key, ikm):
    # Noise's HKDF with two outputs (RFC 5869 extract-then-expand, salt =
    # the chaining key, empty info).
    prk = _hmac(chaining_key, ikm)
    out1 = _hmac(prk, b"\x01")
    return out1, _hmac(prk, out1 + b"\x02")


# Noise's AESGCM nonce is 32 zero bits || the 64-bit big-endian counter n.
# KK with empty payloads encrypts once per key (MixKey resets n), so n is
# always 0 here.
_NONCE0 = bytes(12)


def prologue(address, epoch):
    """The 11-byte prologue b"lowband/1" || address || epoch.

    Raises ValueError for an address outside 1-254 or an epoch outside 0-7.
    """
    if not 1 <= address <= 254:
        raise ValueError("noise: address must be 1-254")
    if not 0 <= epoch <= 7:
        raise ValueError("noise: epoch must be 0-7")
    return PROLOGUE_PREFIX + bytes((address, epoch))


def _check_key(key):
    if len(key) != KEY_LEN:
        raise ValueError("noise: keys must be 32 bytes")


class Initiator:
    """One handshake attempt of a device, for one proposed epoch.

    static_private/static_public: the device's provisioned X25519 key pair
    (the public half is given, not derived, to save a scalar
    multiplication; it must match). gateway_public: the gateway's static
    key. ephemeral_private: a fresh secret for every handshake, 32 bytes
    from os.urandom unless given (test vectors fix it; a port without a
    hardware-backed os.urandom passes one from its RNG). Raises ValueError for a key that is not 32 bytes, an
    address outside 1-254 or an epoch outside 0-7.

    `h`, `ck` and `k` expose the Noise symmetric state (handshake hash,
    chaining key, cipher key) for checking against link_vectors.json's
    handshake.trace; `ck` and `k` become None when the handshake is done.
    """

    def __init__(self, static_private, static_public, gateway_public, address, epoch,
                 ephemeral_private=None):
        _check_key(static_private)
        _check_key(static_public)
        _check_key(gateway_public)
        if ephemeral_private is None:
            import os

            ephemeral_private = os.urandom(KEY_LEN)
        _check_key(ephemeral_private)
        self.address = address
        self.epoch = epoch
        self._s = static_private
        self._rs = gateway_public
        self._e = ephemeral_private
        name = PROTOCOL_NAME + bytes(32 - len(PROTOCOL_NAME))
        self.ck = name
        self.k = None
        h = _mix_hash(name, prologue(address, epoch))
        h = _mix_hash(h, static_public)
        self.h = _mix_hash(h, gateway_public)
        self._step = 0

    def message1(self):
        """Message 1 (HS1's body): e || tag, 48 bytes.

        Raises RuntimeError if called twice (resend the bytes it returned),
        ValueError if the gateway key is of small order (a provisioning
        error).
        """
        if self._step != 0:
            raise RuntimeError("noise: message1() already called")
        e_pub = x25519.public_key(self._e)
        h = _mix_hash(self.h, e_pub)
        ck, k = _hkdf2(self.ck, x25519.shared(self._e, self._rs))  # es
        ck, k = _hkdf2(ck, x25519.shared(self._s, self._rs))  # ss
        tag = aes_modes.gcm_encrypt(k, _NONCE0, h, b"")
        self.h = _mix_hash(h, tag)
        self.ck = ck
        self.k = k
        self._step = 1
        return e_pub + tag

    def finish(self, message2):
        """Process message 2 (HS2's body); returns (k_up, k_down), 32 bytes each.

        Raises ValueError if message2 is not 48 bytes, carries a
        small-order key or its tag fails (wrong gateway key, prologue,
        epoch or a modified byte) -- the state is then unchanged and
        another message 2 may be tried. Raises RuntimeError before
        message1() or after a successful finish().
        """
        if self._step != 1:
            raise RuntimeError("noise: finish() needs message1() first, and only once")
        if len(message2) != MESSAGE_LEN:
            raise ValueError("noise: message 2 must be 48 bytes")
        re = bytes(message2[:KEY_LEN])
        tag = bytes(message2[KEY_LEN:])
        h = _mix_hash(self.h, re)
        ck, k = _hkdf2(self.ck, x25519.shared(self._e, re))  # ee
        ck, k = _hkdf2(ck, x25519.shared(self._s, re))  # se
        aes_modes.gcm_decrypt(k, _NONCE0, h, tag)  # ValueError on a bad tag
        self.h = _mix_hash(h, tag)
        k_up, k_down = _hkdf2(ck, b"")  # Split()
        self._s = self._e = self._rs = None
        self.ck = self.k = None
        self._step = 2
        return k_up, k_down
