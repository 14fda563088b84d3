"""lbcrypto: the device's link cryptography (MicroPython and CPython).

Submodules are imported on demand so a board pays only for what it uses:
x25519 (RFC 7748), aes_modes (AES-GCM and AES-CCM-8 over cryptolib's AES
block), noise_kk (the handshake's initiator), link_aead (DATA frames).
"""

__version__ = "0.1.0"
