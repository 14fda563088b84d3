"""X25519 key pairs for provisioning devices (the link's Noise handshake uses the same).

``cryptography`` is imported inside the functions, not here: the device
registry (and through it the store's schema) imports this module, and a
gateway without devices should not carry cryptography's ~17 MiB.
"""

from __future__ import annotations

KEY_LEN = 32


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a fresh X25519 key pair as ``(private, public)``, 32 bytes each."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    private = X25519PrivateKey.generate()
    private_bytes = private.private_bytes_raw()
    return private_bytes, public_from_private(private_bytes)


def public_from_private(private: bytes) -> bytes:
    """Return the 32-byte X25519 public key of a 32-byte private key.

    Raises :class:`ValueError` if ``private`` is not 32 bytes.
    """
    if not isinstance(private, (bytes, bytearray)) or len(private) != KEY_LEN:
        raise ValueError(f"private key must be {KEY_LEN} bytes")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = X25519PrivateKey.from_private_bytes(bytes(private))
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
