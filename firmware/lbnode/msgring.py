"""A bounded FIFO of byte messages in one preallocated circular buffer.

Runs unchanged on CPython 3.11 and MicroPython.

The device's uplink queue (link.md section 3): at most `limit` messages
and `capacity` bytes; when a new message does not fit, the oldest ones are
dropped (stale telemetry is worth less than fresh) and counted by the
caller. Each entry is a 2-byte header -- length (15 bits) and a flag bit
(the message is a fragment) -- followed by its bytes, wrapping around the
end of the buffer. push() and pop_into() copy byte by byte and allocate
nothing.
"""


class MessageRing:
    """FIFO of (bytes, flag) entries in `capacity` bytes, at most `limit` of them."""

    def __init__(self, capacity=1024, limit=32):
        self._buf = bytearray(capacity)
        self._cap = capacity
        self.limit = limit
        self._head = 0  # offset of the oldest entry
        self._used = 0  # bytes in use, headers included
        self._count = 0

    def __len__(self):
        return self._count

    def clear(self):
        """Drop every entry."""
        self._head = self._used = self._count = 0

    def push(self, data, n, flag=False):
        """Append data[:n]; returns how many old entries were dropped to make room.

        Raises ValueError for a message that could never fit (n + 2 >
        capacity, or n >= 32768).
        """
        need = n + 2
        if need > self._cap or n >= 0x8000:
            raise ValueError("msgring: message larger than the queue")
        dropped = 0
        while self._count and (self._count >= self.limit or self._cap - self._used < need):
            self._drop_head()
            dropped += 1
        buf = self._buf
        cap = self._cap
        pos = self._head + self._used
        if pos >= cap:
            pos -= cap
        buf[pos] = n & 0xFF
        pos = pos + 1 if pos + 1 < cap else 0
        buf[pos] = (n >> 8) | (0x80 if flag else 0)
        for i in range(n):
            pos = pos + 1 if pos + 1 < cap else 0
            buf[pos] = data[i]
        self._used += need
        self._count += 1
        return dropped

    def _head_len(self):
        buf = self._buf
        second = self._head + 1
        if second >= self._cap:
            second = 0
        return buf[self._head] | ((buf[second] & 0x7F) << 8), buf[second] & 0x80

    def _drop_head(self):
        n, _ = self._head_len()
        self._head = (self._head + n + 2) % self._cap
        self._used -= n + 2
        self._count -= 1

    def pop_into(self, out):
        """Move the oldest entry into out; returns (length, flag), or (-1, False) if empty.

        Raises ValueError if out is too small (the entry then stays).
        """
        if not self._count:
            return -1, False
        n, flag = self._head_len()
        if n > len(out):
            raise ValueError("msgring: output buffer too small")
        buf = self._buf
        cap = self._cap
        pos = self._head + 2
        if pos >= cap:
            pos -= cap
        for i in range(n):
            out[i] = buf[pos]
            pos = pos + 1 if pos + 1 < cap else 0
        self._drop_head()
        return n, bool(flag)
