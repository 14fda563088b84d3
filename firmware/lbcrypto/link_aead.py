"""DATA frame protection: AES-256-CCM with an 8-byte tag (link.md section 2).

Runs unchanged on CPython 3.11 and MicroPython.

    nonce (13) = direction (0x00 up, 0x01 down) || 00 00 00 00 || counter (8, big-endian)
    aad        = the clear bytes before the ciphertext: header || address || seq [|| ack]
    body tail  = ciphertext || tag (8)

The key is k_up for direction 0 and k_down for direction 1 (the Noise
split); choosing the right one is the caller's job. A counter must never be
reused with the same key for a new plaintext: retransmit the same bytes.
"""

from . import aes_modes

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


UP = const(0)
DOWN = const(1)
TAG_LEN = const(8)
KEY_LEN = const(32)
MAX_COUNTER = (1 << 64) - 1
_HALF = const(127)  # a seq byte names a counter in [highest - 127, highest + 128]


def nonce(direction, counter):
    """The 13-byte CCM nonce for a direction (UP or DOWN) and a 64-bit counter.

    Raises ValueError for another direction or a counter outside 0..2**64-1.
    """
    if direction != UP and direction != DOWN:
        raise ValueError("link: direction must be 0 (up) or 1 (down)")
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError("link: counter outside 0..2**64-1")
    return bytes((direction, 0, 0, 0, 0)) + counter.to_bytes(8, "big")


def _check_key(key):
    if len(key) != KEY_LEN:
        raise ValueError("link: key must be 32 bytes")


def seal(key, direction, counter, aad, plaintext):
    """Encrypt a DATA frame's plaintext: returns ciphertext || 8-byte tag.

    plaintext may be empty (a pure acknowledgement: only the tag). Raises
    ValueError for a key that is not 32 bytes, a bad direction or counter,
    or a plaintext over 65535 bytes.
    """
    _check_key(key)
    return aes_modes.ccm8_encrypt(key, nonce(direction, counter), aad, plaintext)


def open(key, direction, counter, aad, data):
    """Check and decrypt ciphertext || tag; returns the plaintext (maybe empty).

    Raises ValueError if the tag does not verify (a modified frame, the
    wrong key, direction, counter or aad) or data is shorter than the tag,
    and for the argument errors of seal().
    """
    _check_key(key)
    return aes_modes.ccm8_decrypt(key, nonce(direction, counter), aad, data)


def counter_from_seq(highest, seq):
    """The full counter a received seq byte stands for (link.md section 2).

    highest: the highest counter accepted so far in this direction (-1
    before the first frame). Returns the C with C % 256 == seq closest to
    highest, in [highest - 127, highest + 128], moved up by 256 where that
    would be negative (so while highest < 128, C == seq) and down by 256
    where it would pass 2**64 - 1. Only a verified tag makes C trusted.
    Raises ValueError if seq is not 0-255.
    """
    if not 0 <= seq <= 0xFF:
        raise ValueError("link: seq must be 0-255")
    base = highest - _HALF
    c = base + ((seq - base) & 0xFF)
    if c < 0:
        c += 256
    elif c > MAX_COUNTER:
        c -= 256
    return c
