"""Link frames over a byte stream: COBS(frame) || 0x00, without a CRC.

Runs unchanged on CPython 3.11 and MicroPython.

docs/protocol/link.md section 2: on a serial line (and through a
transparent UART radio modem) every link frame travels as COBS(frame)
followed by one 0x00. There is no CRC -- every link frame carries an AEAD
tag, which catches what a CRC would. lbwire.frame always adds the CRC of
framing.md, so the link's variant lives here.

StreamTransport turns a UART-like port into the frame transport the node
uses (send, recv, rto_ms, mtu; see lbnode/node.py). A port has:

    write(buf)              write all of buf (blocking is fine)
    readinto(buf)           read what is there now: a count, 0 or None
    wait(timeout_ms)        True once readable, False after timeout_ms
    stream                  an object asyncio.StreamReader can wrap, or None

Rules of the receiving side:
- a candidate frame ends at 0x00; an empty candidate is ignored;
- bad COBS, or a candidate longer than MAX_FRAME + 2 bytes, is dropped
  and counted in `errors` (then everything up to the next 0x00);
- nothing raises for any input; the parse of what survives is the link
  core's job, and the tag its last word.
"""

from .ticks import sleep_ms, ticks_diff, ticks_ms

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAX_FRAME = const(255)  # link.md: a LoRa packet's limit, serial frames keep to it
ENCODED_MAX = const(258)  # code bytes (2 for 255) + data + the delimiter
_CHUNK = const(64)


def encode_into(buf, frame, n):
    """Write COBS(frame[:n]) || 0x00 into buf; returns the length written.

    buf needs n + n // 254 + 2 bytes. Allocates nothing. Raises ValueError
    for an empty frame or one longer than MAX_FRAME.
    """
    if n <= 0 or n > MAX_FRAME:
        raise ValueError("stream: frame must be 1-255 bytes")
    code_pos = 0
    out = 1
    code = 1
    for k in range(n):
        b = frame[k]
        if b == 0:
            buf[code_pos] = code
            code_pos = out
            out += 1
            code = 1
        else:
            buf[out] = b
            out += 1
            code += 1
            if code == 0xFF and k < n - 1:
                buf[code_pos] = code
                code_pos = out
                out += 1
                code = 1
    buf[code_pos] = code
    buf[out] = 0
    return out + 1


def unstuff(buf, n):
    """COBS-decode buf[:n] in place; returns the decoded length or -1 if malformed."""
    i = 0
    out = 0
    while i < n:
        code = buf[i]
        if code == 0 or i + code > n:
            return -1
        i += 1
        stop = i + code - 1
        while i < stop:
            buf[out] = buf[i]
            out += 1
            i += 1
        if code != 0xFF and i < n:
            buf[out] = 0
            out += 1
    return out


class StreamTransport:
    """The frame transport of a serial line or a transparent UART radio modem.

    send(frame, n) writes one frame; recv(timeout_ms) returns the next
    whole frame (a memoryview valid until the next recv) or None when
    timeout_ms passed without one. One encode buffer and one read chunk
    are allocated here, nothing per frame.
    """

    def __init__(self, port, bps=9600, bits_per_byte=10):
        self.port = port
        self.bps = bps
        self.bits_per_byte = bits_per_byte
        self.mtu = MAX_FRAME
        self._rx = bytearray(ENCODED_MAX)  # the frame being received, still COBS-encoded
        self._rxv = memoryview(self._rx)
        self._len = 0
        self._skip = False
        self.frames = 0
        self.errors = 0
        self._tx = bytearray(ENCODED_MAX)
        self._chunk = bytearray(_CHUNK)
        self._pos = 0
        self._end = 0

    def rto_ms(self):
        """Base retransmission timeout: sim/device_core.py rto_for_bps.

        A 52-byte handshake frame out and its 52-byte answer back, plus half
        again for turnaround and processing; never below 200 ms.
        """
        rto = 3 * 104 * self.bits_per_byte * 1000 // (2 * self.bps)
        return rto if rto > 200 else 200

    def send(self, frame, n):
        """Transmit frame[:n] (COBS and the delimiter added here)."""
        m = encode_into(self._tx, frame, n)
        self.port.write(memoryview(self._tx)[:m])

    def _push(self, b):
        # One byte in; a memoryview of a completed frame (valid until the
        # next byte) or None.
        if b:
            if not self._skip:
                n = self._len
                if n >= ENCODED_MAX:
                    self._skip = True  # longer than any frame: wait for the next 0x00
                    self.errors += 1
                else:
                    self._rx[n] = b
                    self._len = n + 1
            return None
        n = self._len
        self._len = 0
        if self._skip or n == 0:
            self._skip = False
            return None
        m = unstuff(self._rx, n)
        if m <= 0 or m > MAX_FRAME:
            self.errors += 1
            return None
        self.frames += 1
        return self._rxv[:m]

    def _next_frame(self):
        # Drains the read chunk byte by byte; a frame completes mid-chunk
        # and the rest waits for the next call.
        chunk = self._chunk
        while self._pos < self._end:
            b = chunk[self._pos]
            self._pos += 1
            frame = self._push(b)
            if frame is not None:
                return frame
        return None

    def feed(self, data, handler):
        """Deframe bytes read elsewhere (asyncio); handler(frame) for each whole frame.

        The frame view is valid only during the call.
        """
        for b in data:
            frame = self._push(b)
            if frame is not None:
                handler(frame)

    def recv(self, timeout_ms):
        """Wait up to timeout_ms for a whole frame; returns it or None.

        A stream of bytes that never completes a frame cannot stretch the
        wait beyond timeout_ms.
        """
        frame = self._next_frame()
        if frame is not None:
            return frame
        start = ticks_ms()
        left = timeout_ms
        while self.port.wait(left if left > 0 else 0):  # past the timeout: only what is already there
            n = self.port.readinto(self._chunk)
            self._pos = 0
            self._end = n or 0
            frame = self._next_frame()
            if frame is not None:
                return frame
            left = timeout_ms - ticks_diff(ticks_ms(), start)
            if not n:  # readable but empty: a hung-up line; do not spin
                if left <= 0:
                    return None
                sleep_ms(left if left < 20 else 20)
        return None

    def close(self):
        """Close the port if it can be closed."""
        close = getattr(self.port, "close", None)
        if close is not None:
            close()
