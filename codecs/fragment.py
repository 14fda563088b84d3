"""Fragmentation of one payload into link-sized pieces, and reassembly.

Made for MTUs down to 51 bytes (LoRa DR0). Every fragment is::

    byte 0      message id, 0..255, chosen by the sender (e.g. a counter)
    byte 1      bit 7: LAST (this is the final fragment); bits 6..0: index
    byte 2..    data, at least 1 byte

Every fragment but the last carries exactly ``mtu - 2`` data bytes, so a
message has at most 128 fragments. See docs/protocol/fragmentation.md.

Rules of :class:`Reassembler` (sans-I/O; the caller passes ``now``):

* buffers are keyed by ``(source, msg_id)``; ``source`` is any hashable the
  caller names the sender with (a device address, a link id);
* fragments may arrive in any order; an exact duplicate (same index, same
  LAST flag, same data) is ignored;
* a fragment shorter than 3 bytes is malformed: counted, dropped;
* a fragment that contradicts its buffer drops the whole message (counted as
  ``inconsistent``): an index above the LAST index already seen, a second
  LAST at another index, a LAST below an index already seen, or the same
  index again with other data or another LAST flag;
* a message whose buffered data would exceed ``max_message_bytes`` is
  dropped (``oversize``);
* drop policy when full: a fragment of a new message when ``max_messages``
  buffers are in use evicts the OLDEST buffer (the one created first);
* a buffer expires ``max_age`` seconds after its first fragment; expired
  buffers are dropped at the start of every ``feed`` and by ``expire``;
* a message that fits in one fragment (index 0 with LAST) and has no buffer
  is returned at once, without taking a buffer or evicting anyone;
* a completed buffer is freed at once, so a late duplicate of one of its
  fragments starts a new buffer that later expires (or, for a one-fragment
  message, is returned again). Whole-message de-duplication belongs to the
  layer above, which has sequence numbers.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

from lowband.codecs.errors import WireError

__all__ = ["HEADER_LEN", "MAX_FRAGMENTS", "MIN_MTU", "Reassembler", "fragment"]

HEADER_LEN = 2
MIN_MTU = HEADER_LEN + 1
MAX_FRAGMENTS = 128
_LAST = 0x80
_INDEX_MASK = 0x7F


def fragment(payload: bytes, msg_id: int, mtu: int) -> list[bytes]:
    """Split ``payload`` into fragments of at most ``mtu`` bytes each.

    ``mtu`` counts the 2-byte header. Every fragment but the last carries
    exactly ``mtu - 2`` data bytes; the last carries the rest (at least 1)
    and has the LAST bit set. A payload of at most ``mtu - 2`` bytes gives
    one fragment, index 0 with LAST. Raises :class:`WireError` if ``mtu`` is
    below 3, ``msg_id`` is not in 0..255, ``payload`` is empty, or more than
    128 fragments would be needed.
    """
    payload = bytes(payload)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or mtu < MIN_MTU:
        raise WireError(f"fragment: mtu must be an int of at least {MIN_MTU}")
    if isinstance(msg_id, bool) or not isinstance(msg_id, int) or not 0 <= msg_id <= 0xFF:
        raise WireError("fragment: msg_id must be an int in 0..255")
    if not payload:
        raise WireError("fragment: empty payload")
    chunk = mtu - HEADER_LEN
    count = math.ceil(len(payload) / chunk)
    if count > MAX_FRAGMENTS:
        raise WireError(
            f"fragment: {len(payload)} bytes need {count} fragments at mtu {mtu}, "
            f"limit {MAX_FRAGMENTS}"
        )
    out = []
    for index in range(count):
        flags = index | (_LAST if index == count - 1 else 0)
        out.append(bytes((msg_id, flags)) + payload[index * chunk : (index + 1) * chunk])
    return out


@dataclass
class _Partial:
    """Fragments of one message received so far."""

    first_seen: float
    parts: dict[int, tuple[bool, bytes]] = field(default_factory=dict)
    last_index: int | None = None
    size: int = 0


class Reassembler:
    """Sans-I/O reassembly of fragments from many sources; see module rules.

    Memory is bounded: at most ``max_messages`` buffers of at most
    ``max_message_bytes`` data bytes (and 128 fragments) each.

    Counters (plain ``int`` attributes, only ever increase): ``completed``,
    ``malformed``, ``evicted``, ``expired``, ``oversize``, ``inconsistent``.
    """

    def __init__(
        self,
        max_messages: int = 4,
        max_message_bytes: int = 4096,
        max_age: float = 60.0,
    ) -> None:
        """Create an empty reassembler; raises ``ValueError`` on a bound below 1
        (``max_messages``, ``max_message_bytes``) or a ``max_age`` not above 0."""
        if max_messages < 1 or max_message_bytes < 1 or not max_age > 0:
            raise ValueError("max_messages, max_message_bytes and max_age must be positive")
        self.max_messages = max_messages
        self.max_message_bytes = max_message_bytes
        self.max_age = max_age
        # Insertion order is creation order, so the first key is the oldest.
        self._buffers: dict[tuple[Hashable, int], _Partial] = {}
        self.completed = 0
        self.malformed = 0
        self.evicted = 0
        self.expired = 0
        self.oversize = 0
        self.inconsistent = 0

    @property
    def pending(self) -> int:
        """Number of messages currently buffered."""
        return len(self._buffers)

    def next_deadline(self) -> float | None:
        """Return the earliest time a buffer expires, or None if none is held.

        Call :meth:`expire` at (or after) that time.
        """
        if not self._buffers:
            return None
        return min(p.first_seen for p in self._buffers.values()) + self.max_age

    def expire(self, now: float) -> int:
        """Drop every buffer whose first fragment is ``max_age`` or more
        seconds older than ``now``; return how many were dropped."""
        stale = [k for k, p in self._buffers.items() if now - p.first_seen >= self.max_age]
        for key in stale:
            del self._buffers[key]
        self.expired += len(stale)
        return len(stale)

    def feed(self, source: Hashable, fragment: bytes, now: float) -> bytes | None:
        """Take one fragment from ``source`` received at ``now``.

        Returns the whole payload when this fragment completes its message
        (LAST seen and every index from 0 to LAST present), else None. Never
        raises for any bytes; rejected fragments only move the counters.
        """
        self.expire(now)
        if len(fragment) < MIN_MTU:
            self.malformed += 1
            return None
        msg_id = fragment[0]
        is_last = bool(fragment[1] & _LAST)
        index = fragment[1] & _INDEX_MASK
        data = bytes(fragment[HEADER_LEN:])
        key = (source, msg_id)
        partial = self._buffers.get(key)

        if partial is None:
            if len(data) > self.max_message_bytes:
                self.oversize += 1
                return None
            if index == 0 and is_last:
                self.completed += 1
                return data
            if len(self._buffers) >= self.max_messages:
                del self._buffers[next(iter(self._buffers))]
                self.evicted += 1
            partial = self._buffers[key] = _Partial(first_seen=now)

        seen = partial.parts.get(index)
        if seen is not None:
            if seen == (is_last, data):
                return None
            self._drop_inconsistent(key)
            return None
        if partial.last_index is not None and (is_last or index > partial.last_index):
            self._drop_inconsistent(key)
            return None
        if is_last and partial.parts and max(partial.parts) > index:
            self._drop_inconsistent(key)
            return None
        if partial.size + len(data) > self.max_message_bytes:
            del self._buffers[key]
            self.oversize += 1
            return None

        partial.parts[index] = (is_last, data)
        partial.size += len(data)
        if is_last:
            partial.last_index = index
        if partial.last_index is None or len(partial.parts) != partial.last_index + 1:
            return None
        del self._buffers[key]
        self.completed += 1
        return b"".join(partial.parts[i][1] for i in range(partial.last_index + 1))

    def _drop_inconsistent(self, key: tuple[Hashable, int]) -> None:
        del self._buffers[key]
        self.inconsistent += 1
