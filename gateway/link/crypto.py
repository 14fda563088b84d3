"""DATA frame protection: AES-256-CCM-8, nonces, counters and the replay window.

See docs/protocol/link.md, sections 2 ("DATA", "Counter reconstruction and
replay window") and 4. Everything here is pure computation on values the
caller passes in; persistence is the caller's, through the JSON-able state
of :class:`ReplayWindow` and the block protocol of :class:`SendCounter`.

Each direction of a session has its own key (``k_up`` for device to
gateway, ``k_down`` for gateway to device) and its own 64-bit frame
counter, starting at 0 after the handshake. A frame carries only the low
byte of its counter (``seq``); the receiver rebuilds the full counter from
the highest one it has accepted, and the nonce is built from the full
counter, so a wrong guess simply fails the tag.

Errors: a frame that does not authenticate raises :class:`TagError`, and
:func:`open_` never raises anything else for any ``data``. Bad arguments
from our own side (a key of the wrong size, a counter out of range, a
direction other than 0 or 1) raise :class:`ValueError`; misuse of the
counter objects raises :class:`RuntimeError`.
"""

from __future__ import annotations

from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

__all__ = [
    "BLOCK_SIZE",
    "DIRECTION_DOWN",
    "DIRECTION_UP",
    "KEY_LEN",
    "MAX_COUNTER",
    "MAX_PLAINTEXT",
    "NONCE_LEN",
    "TAG_LEN",
    "WINDOW_SIZE",
    "ReplayWindow",
    "SendCounter",
    "TagError",
    "Verdict",
    "nonce",
    "open_",
    "seal",
]

NONCE_LEN = 13
TAG_LEN = 8
KEY_LEN = 32
DIRECTION_UP = 0
DIRECTION_DOWN = 1
MAX_COUNTER = (1 << 64) - 1
#: CCM with a 13-byte nonce leaves L = 2 bytes for the message length.
MAX_PLAINTEXT = (1 << 16) - 1
WINDOW_SIZE = 64
#: Send counters reserved on disk ahead of use (link.md section 4).
BLOCK_SIZE = 64

_NONCE_PAD = bytes(4)
# How far a reconstructed counter may lie from the highest accepted one:
# the 256 values [H - 127, H + 128], one per low byte.
_BEHIND = 127
_SEQ_MODULUS = 256

Verdict = Literal["new", "late", "duplicate", "old"]


class TagError(ValueError):
    """A DATA frame does not authenticate under the given key, nonce and AAD.

    Raised for a modified byte, a wrong key, direction or counter, wrong
    associated data, or data too short to hold a tag.
    """


def nonce(direction: int, counter: int) -> bytes:
    """Return the 13-byte CCM nonce: ``direction || 00 00 00 00 || counter (8, big-endian)``.

    ``direction`` is 0 (up, device to gateway) or 1 (down). Raises
    :class:`ValueError` for another direction or a counter outside
    0..2**64-1.
    """
    if direction not in (DIRECTION_UP, DIRECTION_DOWN) or isinstance(direction, bool):
        raise ValueError(f"direction must be 0 (up) or 1 (down), got {direction!r}")
    _check_counter(counter)
    return bytes([direction]) + _NONCE_PAD + counter.to_bytes(8, "big")


def seal(key: bytes, direction: int, counter: int, aad: bytes, plaintext: bytes) -> bytes:
    """Encrypt and authenticate; return ``ciphertext || tag`` (``len(plaintext) + 8`` bytes).

    ``aad`` is the frame's clear prefix (header, address, seq and, if
    present, ack). The plaintext may be empty (a pure acknowledgement).
    Raises :class:`ValueError` for a key that is not 32 bytes, a bad
    direction or counter, or a plaintext longer than 65535 bytes. Never use
    one (key, direction, counter) for two different plaintexts.
    """
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError(f"plaintext longer than {MAX_PLAINTEXT} bytes")
    return _aead(key).encrypt(nonce(direction, counter), bytes(plaintext), bytes(aad))


def open_(key: bytes, direction: int, counter: int, aad: bytes, data: bytes) -> bytes:
    """Check and decrypt ``ciphertext || tag``; return the plaintext.

    Raises :class:`TagError` if ``data`` does not authenticate (including
    data shorter than the tag or too long for CCM). Raises
    :class:`ValueError` only for bad arguments of our own: key size,
    direction, counter.
    """
    cipher = _aead(key)
    frame_nonce = nonce(direction, counter)
    data = bytes(data)
    if not TAG_LEN <= len(data) <= MAX_PLAINTEXT + TAG_LEN:
        raise TagError(f"{len(data)} bytes cannot hold a CCM-8 ciphertext and tag")
    try:
        return cipher.decrypt(frame_nonce, data, bytes(aad))
    except InvalidTag:
        raise TagError("tag does not verify") from None


def _aead(key: bytes) -> AESCCM:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise ValueError(f"key must be {KEY_LEN} bytes (AES-256)")
    return AESCCM(bytes(key), tag_length=TAG_LEN)


def _check_counter(counter: object) -> None:
    if not isinstance(counter, int) or isinstance(counter, bool) or not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"counter must be an int in 0..2**64-1, got {counter!r}")


class ReplayWindow:
    """Receive state for one direction of one session.

    Rules (link.md section 2):

    * ``highest`` is the highest counter accepted so far, -1 before the
      first frame; the bitmap remembers which of the ``size`` counters
      ``highest - size + 1 .. highest`` were accepted (bit ``i`` is
      ``highest - i``).
    * :meth:`candidate` turns a received ``seq`` byte into the full counter
      to build the nonce from; the tag check then confirms or refutes it.
    * :meth:`check` classifies a counter without changing anything:
      ``"new"`` (above ``highest``), ``"late"`` (inside the window, not yet
      seen), ``"duplicate"`` (inside the window, seen) or ``"old"`` (below
      the window, so it cannot be told apart from a duplicate). Only "new"
      and "late" may be delivered; link.md treats "duplicate" and "old"
      alike: not delivered, but acknowledged.
    * :meth:`accept` records a counter whose tag verified and whose check
      was "new" or "late". Call it in the same transaction that stores what
      the frame delivered (link.md section 4).
    """

    def __init__(self, size: int = WINDOW_SIZE) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= _BEHIND:
            raise ValueError(f"window size must be an int in 1..{_BEHIND}, got {size!r}")
        self.size = size
        self.highest = -1
        self.bitmap = 0

    def candidate(self, low_byte: int) -> int:
        """Return the counter ``C ≡ low_byte (mod 256)`` closest to ``highest``.

        ``C`` lies in ``[highest - 127, highest + 128]``. Counters are never
        negative, so where that range dips below 0 the negative values are
        replaced by the ones 256 higher: for ``highest <= 127`` the result
        is in ``0..255`` (for ``highest = -1`` it is ``low_byte`` itself).
        Raises :class:`ValueError` if ``low_byte`` is not in 0..255.
        """
        if not isinstance(low_byte, int) or not 0 <= low_byte <= 0xFF:
            raise ValueError(f"low byte must be in 0..255, got {low_byte!r}")
        base = self.highest - _BEHIND
        counter = base + ((low_byte - base) % _SEQ_MODULUS)
        if counter < 0:
            counter += _SEQ_MODULUS
        if counter > MAX_COUNTER:
            # Only reachable after 2**64 frames; the older value keeps the
            # result a valid nonce counter (its tag or the window rejects it).
            counter -= _SEQ_MODULUS
        return counter

    def check(self, counter: int) -> Verdict:
        """Classify ``counter`` ("new", "late", "duplicate" or "old"); no state change.

        Raises :class:`ValueError` for a counter outside 0..2**64-1.
        """
        _check_counter(counter)
        if counter > self.highest:
            return "new"
        behind = self.highest - counter
        if behind >= self.size:
            return "old"
        return "duplicate" if (self.bitmap >> behind) & 1 else "late"

    def accept(self, counter: int) -> None:
        """Record ``counter`` as received (its tag has verified).

        Raises :class:`ValueError` if :meth:`check` would not say "new" or
        "late": accepting a duplicate is a bug of the caller.
        """
        verdict = self.check(counter)
        if verdict == "new":
            shift = counter - self.highest
            self.bitmap = 1 if shift >= self.size else ((self.bitmap << shift) | 1) & self._mask
            self.highest = counter
        elif verdict == "late":
            self.bitmap |= 1 << (self.highest - counter)
        else:
            raise ValueError(f"counter {counter} is {verdict}; only new or late counters can be accepted")

    @property
    def _mask(self) -> int:
        return (1 << self.size) - 1

    def to_state(self) -> dict[str, Any]:
        """Return the state as a JSON-able dict (the bitmap as lowercase hex)."""
        return {"size": self.size, "highest": self.highest, "bitmap": format(self.bitmap, "x")}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ReplayWindow:
        """Rebuild a window from :meth:`to_state` output.

        Raises :class:`ValueError` if ``state`` is malformed or inconsistent
        (bits beyond the window, bits set before any frame).
        """
        try:
            size = state["size"]
            highest = state["highest"]
            bitmap_hex = state["bitmap"]
        except (KeyError, TypeError):
            raise ValueError("replay window state needs size, highest and bitmap") from None
        window = cls(size)
        if not isinstance(highest, int) or isinstance(highest, bool) or not -1 <= highest <= MAX_COUNTER:
            raise ValueError(f"bad highest counter {highest!r}")
        if not isinstance(bitmap_hex, str):
            raise ValueError("bitmap must be a hex string")
        try:
            bitmap = int(bitmap_hex, 16)
        except ValueError:
            raise ValueError("bitmap must be a hex string") from None
        if bitmap < 0 or bitmap > window._mask or (highest == -1 and bitmap) or (highest >= 0 and not bitmap & 1):
            raise ValueError("bitmap does not fit the window")
        window.highest = highest
        window.bitmap = bitmap
        return window

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, highest={self.highest}, bitmap={self.bitmap:#x})"


class SendCounter:
    """The sending side's frame counter for one direction of one session.

    Persistence protocol (link.md section 4), so that a crash may skip
    counters but never reuse one:

    1. Before taking a counter, ask :meth:`needs_block`. If it says so,
       call :meth:`reserve_block`, write the returned limit durably, and
       only then call :meth:`next`. :meth:`next` refuses (``RuntimeError``)
       a counter at or above the reserved limit, so a forgotten step shows
       up at once instead of after a crash.
    2. If writing the limit fails, do not send: drop this object and start
       again from what is on disk.
    3. After a restart, :meth:`resume` from the persisted limit: every
       counter below it may have been used, none at or above it was.

    A fresh session starts with ``SendCounter()``: next counter 0, nothing
    reserved. Counters left in a block at a crash are skipped; the receiver
    sees a jump of at most ``BLOCK_SIZE`` and, as long as the sender keeps
    within 127 counters of what the receiver accepted, rebuilds the counter
    correctly.
    """

    def __init__(self, next_counter: int = 0, persisted_limit: int = 0) -> None:
        if not isinstance(next_counter, int) or not 0 <= next_counter <= MAX_COUNTER + 1:
            raise ValueError(f"bad next counter {next_counter!r}")
        if not isinstance(persisted_limit, int) or not 0 <= persisted_limit <= MAX_COUNTER + 1:
            raise ValueError(f"bad persisted limit {persisted_limit!r}")
        self._next = next_counter
        self._limit = persisted_limit

    @classmethod
    def resume(cls, persisted_limit: int) -> SendCounter:
        """Continue after a restart at the limit read back from disk."""
        return cls(next_counter=persisted_limit, persisted_limit=persisted_limit)

    @property
    def next_counter(self) -> int:
        """The counter :meth:`next` would return (nothing is consumed)."""
        return self._next

    @property
    def persisted_limit(self) -> int:
        """Counters below this value are covered by a durable reservation."""
        return self._limit

    @property
    def exhausted(self) -> bool:
        """True once all 2**64 counters are used: the session needs a new handshake."""
        return self._next > MAX_COUNTER

    def needs_block(self) -> bool:
        """True if a new block must be reserved and persisted before :meth:`next`."""
        return self._next >= self._limit and not self.exhausted

    def reserve_block(self, size: int = BLOCK_SIZE) -> int:
        """Reserve ``size`` counters from the next one; return the new limit to persist.

        The caller must write the returned value durably before calling
        :meth:`next`. Raises :class:`ValueError` for ``size < 1``.
        """
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"block size must be a positive int, got {size!r}")
        self._limit = max(self._limit, min(self._next + size, MAX_COUNTER + 1))
        return self._limit

    def next(self) -> int:
        """Return the next counter and advance.

        Raises :class:`RuntimeError` if :meth:`needs_block` is true (reserve
        and persist first) or the counters are exhausted.
        """
        if self.exhausted:
            raise RuntimeError("send counter exhausted; start a new handshake")
        if self._next >= self._limit:
            raise RuntimeError("counter not covered by a persisted block; reserve_block() and persist first")
        counter = self._next
        self._next += 1
        return counter

    def __repr__(self) -> str:
        return f"SendCounter(next_counter={self._next}, persisted_limit={self._limit})"
