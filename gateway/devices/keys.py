"""X25519 key pairs for provisioning devices (the link's Noise handshake uses the same)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_LEN = 32


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a fresh X25519 key pair as ``(private, public)``, 32 bytes each."""
    private = X25519PrivateKey.generate()
    private_bytes = private.private_bytes_raw()
    return private_bytes, public_from_private(private_bytes)


def public_from_private(private: bytes) -> bytes:
    """Return the 32-byte X25519 public key of a 32-byte private key.

    Raises :class:`ValueError` if ``private`` is not 32 bytes.
    """
    if not isinstance(private, (bytes, bytearray)) or len(private) != KEY_LEN:
        raise ValueError(f"private key must be {KEY_LEN} bytes")
    key = X25519PrivateKey.from_private_bytes(bytes(private))
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
