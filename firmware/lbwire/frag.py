"""Fragmentation of one payload into link-MTU pieces, and reassembly.

Runs unchanged on CPython 3.11 and MicroPython.

Fragment = header (2 bytes) || data.
  byte 0: message id, 0-255
  byte 1: bit 7 LAST flag, bits 6-0 fragment index (0-127)
Every fragment but the last carries exactly mtu - 2 data bytes; the last
carries the rest, at least 1 byte (an empty payload is refused).

Reassembler rules (one message at a time, as a device needs):
- a fragment with another message id abandons the message in progress;
- a fragment shorter than 3 bytes is malformed: counted in `errors`;
- fragments may arrive in any order; an identical duplicate is ignored;
- inconsistency drops the whole message: a duplicate index with other
  content, two different LAST indexes, a non-last fragment with another
  length than the first one or an index at or past LAST, a LAST fragment
  longer than the others, a message larger than max_size;
- a message max_age_ms old (from its first fragment) is dropped;
  `now` is a millisecond count that only goes forward -- if it goes
  backwards (a wrapped ticks_ms) the partial message is dropped, never
  kept forever;
- a late duplicate of a message already delivered starts a new partial
  message that is replaced or expires; dropping repeated whole messages
  is the job of the layer above (sequence numbers).
Nothing raises for malformed fragments; counters: ok, dropped, errors.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


HEADER = const(2)
MAX_FRAGMENTS = const(128)
_LAST = const(0x80)
_INDEX = const(0x7F)


def fragment_count(payload_len, mtu):
    """Number of fragments for payload_len bytes; ValueError if impossible."""
    if payload_len <= 0:
        raise ValueError("frag: empty payload")
    if mtu < HEADER + 1:
        raise ValueError("frag: mtu must be at least 3")
    chunk = mtu - HEADER
    count = (payload_len + chunk - 1) // chunk
    if count > MAX_FRAGMENTS:
        raise ValueError("frag: payload needs more than 128 fragments")
    return count


def fragment_into(buf, payload, msg_id, mtu, index):
    """Write fragment `index` of payload into buf; returns its length.

    For a device sending from one preallocated buffer of mtu bytes.
    Raises ValueError for a bad msg_id, mtu or index, an empty payload or a
    short buffer.
    """
    if msg_id < 0 or msg_id > 255:
        raise ValueError("frag: message id must be 0-255")
    count = fragment_count(len(payload), mtu)
    if index < 0 or index >= count:
        raise ValueError("frag: index out of range")
    chunk = mtu - HEADER
    start = index * chunk
    stop = min(start + chunk, len(payload))
    n = HEADER + stop - start
    if len(buf) < n:
        raise ValueError("frag: buffer too small")
    buf[0] = msg_id
    buf[1] = (index | _LAST) if index == count - 1 else index
    k = HEADER
    for i in range(start, stop):  # a slice would allocate
        buf[k] = payload[i]
        k += 1
    return n


def fragment(payload, msg_id, mtu):
    """Split payload into a list of fragments (bytes) of at most mtu bytes.

    Raises ValueError if msg_id is not 0-255, mtu < 3, the payload is empty
    or needs more than 128 fragments.
    """
    count = fragment_count(len(payload), mtu)
    buf = bytearray(min(mtu, HEADER + len(payload)))
    frags = []
    for i in range(count):
        n = fragment_into(buf, payload, msg_id, mtu, i)
        frags.append(bytes(buf[:n]))
    return frags


class Reassembler:
    """Rebuilds one fragmented message in one preallocated buffer."""

    def __init__(self, max_size=1024, max_age_ms=30000):
        self.max_size = max_size
        self.max_age_ms = max_age_ms
        self._buf = bytearray(max_size)
        self._mv = memoryview(self._buf)
        self._have = bytearray(MAX_FRAGMENTS // 8)
        # Every attribute exists from the start: adding one later would
        # grow the instance dict, an allocation on the receive path.
        self._begin(0, 0)
        self._active = False
        self.ok = 0
        self.dropped = 0
        self.errors = 0

    def _begin(self, msg_id, now):
        self._active = True
        self._id = msg_id
        self._start = now
        self._chunk = 0  # data bytes per non-last fragment; 0 = not known
        self._last = -1  # index of the LAST fragment; -1 = not seen
        self._last_len = 0
        self._stashed = False  # LAST data parked at the buffer's end
        self._max_idx = -1  # highest non-last index seen
        self._count = 0
        have = self._have
        for i in range(len(have)):
            have[i] = 0

    def _drop(self):
        self._active = False
        self.dropped += 1
        return None

    def _expired(self, start, now):
        age = now - start
        return age < 0 or age >= self.max_age_ms

    def expire(self, now):
        """Drop a partial message max_age_ms old or more; True if dropped."""
        if self._active and self._expired(self._start, now):
            self._drop()
            return True
        return False

    def deadline(self):
        """When the partial message expires (ms), or None if there is none."""
        return self._start + self.max_age_ms if self._active else None

    def _pos(self, idx):
        if idx == self._last and self._stashed:
            return self.max_size - self._last_len
        return idx * self._chunk

    def _copy(self, p, frag):
        # Byte loop: slicing the fragment would allocate.
        buf = self._buf
        for i in range(HEADER, len(frag)):
            buf[p] = frag[i]
            p += 1

    def add(self, frag, now):
        """Take one fragment; returns the whole payload (bytes) when complete.

        Returns None otherwise. Never raises for malformed fragments. Only
        the returned payload is allocated.
        """
        self.expire(now)
        if len(frag) <= HEADER:
            self.errors += 1
            return None
        msg_id = frag[0]
        is_last = frag[1] & _LAST
        idx = frag[1] & _INDEX
        if self._active and msg_id != self._id:
            self._drop()
        if not self._active:
            self._begin(msg_id, now)
        bit = 1 << (idx & 7)
        if self._have[idx >> 3] & bit:
            return self._duplicate(idx, is_last, frag)
        if is_last:
            if not self._place_last(idx, frag):
                return self._drop()
        elif not self._place(idx, frag):
            return self._drop()
        self._have[idx >> 3] |= bit
        self._count += 1
        if self._last >= 0 and self._count == self._last + 1:
            return self._complete()
        return None

    def _duplicate(self, idx, is_last, frag):
        size = len(frag) - HEADER
        if bool(is_last) != (idx == self._last):
            return self._drop()
        expect = self._last_len if is_last else self._chunk
        if size != expect:
            return self._drop()
        p = self._pos(idx) - HEADER
        buf = self._buf
        for i in range(HEADER, len(frag)):
            if buf[p + i] != frag[i]:
                return self._drop()
        return None

    def _place_last(self, idx, frag):
        size = len(frag) - HEADER
        if self._last >= 0:
            return False  # a second, different LAST index
        chunk = self._chunk
        if chunk:
            if size > chunk or idx <= self._max_idx:
                return False
            p = idx * chunk
            if p + size > self.max_size:
                return False
        else:
            if size > self.max_size:
                return False
            p = 0 if idx == 0 else self.max_size - size
            self._stashed = idx != 0
        self._copy(p, frag)
        self._last = idx
        self._last_len = size
        return True

    def _place(self, idx, frag):
        size = len(frag) - HEADER
        if size == 0:
            return False
        last = self._last
        if last >= 0 and idx >= last:
            return False
        if self._chunk == 0:
            self._chunk = size
            if last >= 0:  # LAST came first: now its place is known
                if self._last_len > size:
                    return False
                p = last * size
                if p + self._last_len > self.max_size:
                    return False
                src = self.max_size - self._last_len
                # p <= src, so a forward copy never overwrites unread bytes.
                buf = self._buf
                for i in range(self._last_len):
                    buf[p + i] = buf[src + i]
                self._stashed = False
        elif size != self._chunk:
            return False
        p = idx * size
        if p + size > self.max_size:
            return False
        self._copy(p, frag)
        if idx > self._max_idx:
            self._max_idx = idx
        return True

    def _complete(self):
        total = self._last * self._chunk + self._last_len
        self._active = False
        self.ok += 1
        return bytes(self._mv[:total])
