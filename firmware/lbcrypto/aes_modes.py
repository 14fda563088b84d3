"""AES-GCM and AES-CCM-8 built on a bare AES block function.

Runs unchanged on CPython 3.11 and MicroPython. The only primitive used is
one-block AES encryption from MicroPython's `cryptolib` in ECB mode
(`cryptolib.aes(key, 1).encrypt(src, dst)`), which every port with
cryptolib has; CTR mode (6) is often compiled out, so counters are built
here.

- GCM (NIST SP 800-38D), 96-bit nonce, 16-byte tag: the Noise handshake's
  cipher (Noise_KK_25519_AESGCM_SHA256). GHASH multiplies bit by bit on
  128-bit integers -- slow per block, but a handshake authenticates three
  blocks per message.
- CCM (RFC 3610) with M = 8 (8-byte tag) and L = 2 (13-byte nonce,
  plaintext up to 65535 bytes): the link's DATA frames (link.md section 2).

Keys of 16 or 32 bytes (AES-128 or AES-256). Decryption checks the tag
before any plaintext leaves and raises ValueError on a bad one.

The CBC-MAC state, counter block and keystream block are three 16-byte
module buffers reused by every call (no call here awaits or re-enters), so
a seal allocates little more than its AES key schedule and its result.

On CPython there is no `cryptolib`: whoever imports this module on a host
(the tests) first installs a stand-in module named `cryptolib` with the
same `aes(key, 1)` -- see tests/firmware/firmware_crypto_vectors.py, which builds
one on the `cryptography` package. The board needs nothing of it.
"""

from cryptolib import aes as _aes  # host: install a stand-in first (see above)

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


GCM_NONCE_LEN = const(12)
GCM_TAG_LEN = const(16)
CCM_NONCE_LEN = const(13)
CCM_TAG_LEN = const(8)
CCM_MAX_LEN = const(0xFFFF)  # L = 2: two length bytes
_ECB = const(1)
_BLOCK = const(16)
_R = 0xE1 << 120  # GCM's reduction polynomial, bit-reflected

_X = bytearray(_BLOCK)  # CBC-MAC state / GHASH input
_CTR = bytearray(_BLOCK)  # counter block
_KS = bytearray(_BLOCK)  # keystream block


def _cipher(key):
    if len(key) != 16 and len(key) != 32:
        raise ValueError("aes: key must be 16 or 32 bytes")
    return _aes(key, _ECB)


def _equal(a, b, n):
    # Compares all n bytes whatever the first difference.
    diff = 0
    for i in range(n):
        diff |= a[i] ^ b[i]
    return diff == 0


def _inc32(block):
    # The last four bytes are a big-endian counter (GCM's inc32; CCM's
    # 2-byte counter never carries out of its field with L = 2 limits).
    i = 15
    while i >= 12:
        v = (block[i] + 1) & 0xFF
        block[i] = v
        if v:
            break
        i -= 1


def _ctr_xor(aes, src, dst, offset):
    """dst[offset:offset + len(src)] = src XOR the keystream from _CTR."""
    n = len(src)
    ks = _KS
    for start in range(0, n, _BLOCK):
        aes.encrypt(_CTR, ks)
        _inc32(_CTR)
        end = start + _BLOCK
        if end > n:
            end = n
        for i in range(start, end):
            dst[offset + i] = src[i] ^ ks[i - start]


# ------------------------------------------------------------- GCM


def _gmul(x, h):
    # SP 800-38D algorithm 1 on integers (bit 0 of a block is the MSB);
    # masks instead of branches keep every one of the 128 steps alike.
    z = 0
    v = h
    r = _R
    for i in range(127, -1, -1):
        z ^= v & -((x >> i) & 1)
        v = (v >> 1) ^ (r & -(v & 1))
    return z


def _ghash_absorb(y, h, data, n):
    # Absorbs data[:n], the last block zero-padded.
    for start in range(0, n, _BLOCK):
        end = start + _BLOCK
        if end > n:
            block = int.from_bytes(data[start:n], "big") << (8 * (end - n))
        else:
            block = int.from_bytes(data[start:end], "big")
        y = _gmul(y ^ block, h)
    return y


def _gcm_setup(key, nonce):
    # Returns (aes, H as int, E(K, J0) as int) and leaves _CTR at inc32(J0).
    if len(nonce) != GCM_NONCE_LEN:
        raise ValueError("gcm: nonce must be 12 bytes")
    aes = _cipher(key)
    ctr = _CTR
    for i in range(_BLOCK):
        ctr[i] = 0
    aes.encrypt(ctr, _KS)
    h = int.from_bytes(_KS, "big")
    ctr[0:12] = nonce
    ctr[15] = 1  # J0 = nonce || 0^31 || 1
    aes.encrypt(ctr, _KS)
    s0 = int.from_bytes(_KS, "big")
    ctr[15] = 2
    return aes, h, s0


def _gcm_tag(h, s0, aad, ct, n):
    y = _ghash_absorb(0, h, aad, len(aad))
    y = _ghash_absorb(y, h, ct, n)
    y = _gmul(y ^ ((len(aad) * 8) << 64 | n * 8), h)
    return y ^ s0


def gcm_encrypt(key, nonce, aad, plaintext):
    """AES-GCM: returns ciphertext || 16-byte tag.

    nonce: 12 bytes. Raises ValueError for a bad key or nonce length.
    """
    aes, h, s0 = _gcm_setup(key, nonce)
    n = len(plaintext)
    out = bytearray(n + GCM_TAG_LEN)
    _ctr_xor(aes, plaintext, out, 0)
    out[n:] = _gcm_tag(h, s0, aad, out, n).to_bytes(GCM_TAG_LEN, "big")
    return bytes(out)


def gcm_decrypt(key, nonce, aad, data):
    """AES-GCM: checks the 16-byte tag at the end of data, returns the plaintext.

    Raises ValueError if the tag does not verify, data is shorter than a
    tag, or the key or nonce length is wrong.
    """
    n = len(data) - GCM_TAG_LEN
    if n < 0:
        raise ValueError("gcm: shorter than a tag")
    aes, h, s0 = _gcm_setup(key, nonce)
    want = _gcm_tag(h, s0, aad, data, n).to_bytes(GCM_TAG_LEN, "big")
    if not _equal(want, memoryview(data)[n:], GCM_TAG_LEN):
        raise ValueError("gcm: bad tag")
    out = bytearray(n)
    _ctr_xor(aes, memoryview(data)[:n], out, 0)
    return bytes(out)


# ------------------------------------------------------------- CCM-8


def _mac_absorb(aes, data, pos):
    # XORs data into the CBC-MAC state from byte pos on, encrypting each
    # full block; returns the new position (0-15).
    x = _X
    for b in data:
        x[pos] ^= b
        pos += 1
        if pos == _BLOCK:
            aes.encrypt(x, x)
            pos = 0
    return pos


def _ccm_mac(aes, nonce, aad, msg):
    """Leaves the CBC-MAC tag T in _X[:8] (RFC 3610 section 2.2)."""
    x = _X
    n = len(msg)
    la = len(aad)
    # B0 = flags || nonce || l(m); flags = Adata << 6 | (M - 2) / 2 << 3 | (L - 1)
    x[0] = (0x40 if la else 0) | 0x18 | 0x01
    x[1:14] = nonce
    x[14] = n >> 8
    x[15] = n & 0xFF
    aes.encrypt(x, x)
    if la:
        if la < 0xFF00:
            x[0] ^= la >> 8
            x[1] ^= la & 0xFF
            pos = 2
        else:
            pos = _mac_absorb(aes, b"\xff\xfe" + la.to_bytes(4, "big"), 0)
        if _mac_absorb(aes, aad, pos):
            aes.encrypt(x, x)  # zero padding: nothing to XOR
    if _mac_absorb(aes, msg, 0):
        aes.encrypt(x, x)


def _ccm_setup(key, nonce, n):
    if len(nonce) != CCM_NONCE_LEN:
        raise ValueError("ccm: nonce must be 13 bytes")
    if n > CCM_MAX_LEN:
        raise ValueError("ccm: message longer than 65535 bytes")
    aes = _cipher(key)
    ctr = _CTR
    ctr[0] = 0x01  # L - 1
    ctr[1:14] = nonce
    ctr[14] = 0
    ctr[15] = 0  # A_0, which encrypts the tag
    aes.encrypt(ctr, _KS)
    ctr[15] = 1  # A_1 onwards encrypt the message
    return aes


def ccm8_encrypt(key, nonce, aad, plaintext):
    """AES-CCM with an 8-byte tag (M = 8, L = 2): returns ciphertext || tag.

    nonce: 13 bytes; plaintext: up to 65535 bytes. Raises ValueError for a
    bad key or nonce length or a too long plaintext.
    """
    n = len(plaintext)
    aes = _ccm_setup(key, nonce, n)
    out = bytearray(n + CCM_TAG_LEN)
    for i in range(CCM_TAG_LEN):
        out[n + i] = _KS[i]  # S_0, before _ctr_xor reuses _KS
    _ctr_xor(aes, plaintext, out, 0)
    _ccm_mac(aes, nonce, aad, plaintext)
    for i in range(CCM_TAG_LEN):
        out[n + i] ^= _X[i]
    return bytes(out)


def ccm8_decrypt(key, nonce, aad, data):
    """AES-CCM-8: checks the 8-byte tag at the end of data, returns the plaintext.

    Raises ValueError if the tag does not verify (no plaintext is
    returned), data is shorter than a tag, or the key or nonce length is
    wrong.
    """
    n = len(data) - CCM_TAG_LEN
    if n < 0:
        raise ValueError("ccm: shorter than a tag")
    aes = _ccm_setup(key, nonce, n)
    want = bytearray(CCM_TAG_LEN)
    for i in range(CCM_TAG_LEN):
        want[i] = _KS[i] ^ data[n + i]  # the received tag, unmasked
    out = bytearray(n)
    _ctr_xor(aes, memoryview(data)[:n], out, 0)
    _ccm_mac(aes, nonce, aad, out)
    if not _equal(want, _X, CCM_TAG_LEN):
        for i in range(n):
            out[i] = 0
        raise ValueError("ccm: bad tag")
    return bytes(out)
