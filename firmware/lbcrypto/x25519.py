"""X25519 (RFC 7748) in pure Python big-int arithmetic.

Runs unchanged on CPython 3.11 and MicroPython (which needs long-int
support: MICROPY_LONGINT_IMPL_MPZ, the default on every port with a heap
large enough for this package).

The Montgomery ladder follows RFC 7748 section 5 step by step: every bit
of the clamped scalar costs the same sequence of additions,
multiplications and reductions, and the conditional swap is arithmetic
(masking), not a branch. Big-int arithmetic on a microcontroller is not
constant time underneath, so this is "constant structure", not a
side-channel claim; the link's threat model is a radio eavesdropper, not
a probe on the board.

MicroPython integers are immutable, so every ladder step allocates about
two dozen short-lived big ints (about 3.4 KB a step, 0.86 MB a
multiplication, on the 64-bit unix port). Nothing else is built in the
loop and nothing survives a step, so the garbage collector reclaims them
in place: the live heap stays flat (the whole handshake runs in a 24 KB
unix-port heap that also holds the package's bytecode), only collections
get more frequent.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


KEY_LEN = const(32)
_A24 = const(121665)  # (486662 - 2) / 4, RFC 7748 section 5
_P = (1 << 255) - 19
_U_MASK = (1 << 255) - 1  # the top bit of a u-coordinate is ignored
_BASE = b"\x09" + bytes(31)


def scalarmult(k, u):
    """X25519(k, u) of RFC 7748: 32-byte scalar, 32-byte u-coordinate -> 32 bytes.

    The scalar is clamped and the top bit of u is ignored; u values of p
    or more (non-canonical) are reduced mod p, as the RFC requires. The
    result may be all zeros (u of small order); use shared() to refuse
    that. Raises ValueError if k or u is not 32 bytes.
    """
    if len(k) != KEY_LEN or len(u) != KEY_LEN:
        raise ValueError("x25519: scalar and u must be 32 bytes")
    p = _P
    a24 = _A24
    # RFC 7748 decodeScalar25519 (clamping): clear bits 0-2 and 255, set
    # bit 254. Kept as bytes: reading a bit then costs no big-int shift.
    scalar = bytearray(k)
    scalar[0] &= 0xF8
    scalar[31] = (scalar[31] & 0x7F) | 0x40
    x1 = (int.from_bytes(u, "little") & _U_MASK) % p
    x2 = 1
    z2 = 0
    x3 = x1
    z3 = 1
    swap = 0
    for t in range(254, -1, -1):  # bit 255 of a clamped scalar is 0
        bit = (scalar[t >> 3] >> (t & 7)) & 1
        swap ^= bit
        # cswap as masking: mask is 0 or -1 (all ones), no branch on the key.
        mask = -swap
        d = mask & (x2 ^ x3)
        x2 ^= d
        x3 ^= d
        d = mask & (z2 ^ z3)
        z2 ^= d
        z3 ^= d
        swap = bit
        a = x2 + z2
        aa = a * a % p
        b = x2 - z2
        bb = b * b % p
        e = aa - bb
        c = x3 + z3
        d = x3 - z3
        da = d * a % p
        cb = c * b % p
        x3 = da + cb
        x3 = x3 * x3 % p
        z3 = da - cb
        z3 = x1 * (z3 * z3 % p) % p
        x2 = aa * bb % p
        z2 = e * (aa + a24 * e) % p
    mask = -swap
    d = mask & (x2 ^ x3)
    x2 ^= d
    d = mask & (z2 ^ z3)
    z2 ^= d
    # z2 ** (p - 2) is the inverse (Fermat); 0 for the point at infinity,
    # which makes the result all zeros as RFC 7748 specifies.
    return (x2 * pow(z2, p - 2, p) % p).to_bytes(KEY_LEN, "little")


def public_key(private):
    """The 32-byte X25519 public key of a 32-byte private key (X25519(k, 9)).

    Raises ValueError if private is not 32 bytes.
    """
    return scalarmult(private, _BASE)


def shared(private, public):
    """The Diffie-Hellman value X25519(private, public), 32 bytes.

    Raises ValueError if either key is not 32 bytes or if the result is all
    zeros (the public key is a point of small order: a peer that sends one
    is trying to force a known secret).
    """
    out = scalarmult(private, public)
    acc = 0
    for b in out:
        acc |= b
    if acc == 0:
        raise ValueError("x25519: public key of small order")
    return out
