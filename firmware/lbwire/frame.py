"""Link framing for devices: COBS(payload || CRC-16) || 0x00.

Runs unchanged on CPython 3.11 and MicroPython.

CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, not reflected, xorout 0),
big-endian after the payload. Standard COBS: blocks of at most 254 data
bytes; code 0xFF carries 254 bytes and no implied zero, and a block that
ends exactly at the end of the data is not followed by an empty one.

Rules for the Decoder:
- 0x00 ends a candidate frame; an empty candidate (0x00 0x00) is ignored;
- a candidate that is bad COBS, decodes to fewer than 3 bytes, carries more
  than max_payload bytes or fails the CRC is dropped and counted in
  `errors`; good ones are counted in `ok`;
- a candidate longer than any valid frame is counted as soon as it
  overflows the receive buffer, and bytes up to the next 0x00 are skipped;
- nothing raises for any input; bytes before the first 0x00 of a stream
  joined mid-frame are simply one more bad candidate.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAX_PAYLOAD = const(1024)
_MIN_DECODED = const(3)  # one payload byte and the CRC
_BLOCK = const(0xFF)

# CRC-16/CCITT-FALSE, one nibble at a time: 16 entries instead of 256
# keeps the table in a few words of flash when frozen.
_CRC_NIBBLE = (
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50A5, 0x60C6, 0x70E7,
    0x8108, 0x9129, 0xA14A, 0xB16B, 0xC18C, 0xD1AD, 0xE1CE, 0xF1EF,
)


def crc16(data, crc=0xFFFF, start=0, end=-1):
    """CRC-16/CCITT-FALSE of data[start:end], continuing from crc.

    end=-1 means len(data). Does not allocate.
    """
    t = _CRC_NIBBLE
    if end < 0:
        end = len(data)
    for i in range(start, end):
        b = data[i]
        crc = ((crc << 4) & 0xFFFF) ^ t[(crc >> 12) ^ (b >> 4)]
        crc = ((crc << 4) & 0xFFFF) ^ t[(crc >> 12) ^ (b & 0x0F)]
    return crc


def encoded_size(payload_len, lead=False):
    """Upper bound of the frame length for a payload of payload_len bytes."""
    n = payload_len + 2
    return n + n // 254 + 2 + (1 if lead else 0)


def encode_into(buf, payload, lead=False):
    """Write the frame for payload into buf; returns the frame length.

    Needs len(buf) >= encoded_size(len(payload), lead). Does not allocate
    for bytes/bytearray payloads. Raises ValueError for an empty payload or
    one longer than MAX_PAYLOAD (a receiver drops both) or a buffer that is
    too small.
    """
    n = len(payload)
    if n == 0 or n > MAX_PAYLOAD:
        raise ValueError("frame: payload must be 1-1024 bytes")
    if len(buf) < encoded_size(n, lead):
        raise ValueError("frame: buffer too small")
    crc = crc16(payload)
    out = 0
    if lead:
        buf[0] = 0
        out = 1
    code_pos = out
    out += 1
    code = 1
    total = n + 2
    for k in range(total):
        if k < n:
            b = payload[k]
        elif k == n:
            b = crc >> 8
        else:
            b = crc & 0xFF
        if b == 0:
            buf[code_pos] = code
            code_pos = out
            out += 1
            code = 1
        else:
            buf[out] = b
            out += 1
            code += 1
            if code == _BLOCK and k < total - 1:
                buf[code_pos] = code
                code_pos = out
                out += 1
                code = 1
    buf[code_pos] = code
    buf[out] = 0
    return out + 1


def encode(payload, lead=False):
    """The frame for payload as bytes (lead=True prepends one 0x00).

    Raises ValueError for an empty payload or one over MAX_PAYLOAD bytes.
    """
    buf = bytearray(encoded_size(len(payload), lead))
    n = encode_into(buf, payload, lead)
    return bytes(memoryview(buf)[:n])


def _unstuff(buf, n):
    """COBS-decode buf[:n] in place; returns the decoded length or -1."""
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
        if code != _BLOCK and i < n:
            buf[out] = 0
            out += 1
    return out


class Decoder:
    """Byte stream in, checked payloads out; never raises on input.

    One receive buffer is allocated at construction. feed() returns the
    payloads as new bytes objects; feed_each() hands a memoryview over the
    receive buffer to a callback instead (valid only during the call).
    """

    def __init__(self, max_payload=MAX_PAYLOAD):
        self.max_payload = max_payload
        self._cap = encoded_size(max_payload) - 1  # without the delimiter
        self._buf = bytearray(self._cap)
        self._mv = memoryview(self._buf)
        self._len = 0
        self._overflow = False
        self.ok = 0
        self.errors = 0

    def reset(self):
        """Forget a partial frame (counters are kept)."""
        self._len = 0
        self._overflow = False

    def _finish(self):
        """Check the candidate in the buffer; returns payload length or -1."""
        n = self._len
        over = self._overflow
        self._len = 0
        self._overflow = False
        if n == 0 or over:
            return -1  # empty candidate, or an overflow already counted
        m = _unstuff(self._buf, n)
        if m < _MIN_DECODED or m - 2 > self.max_payload:
            self.errors += 1
            return -1
        buf = self._buf
        if crc16(buf, 0xFFFF, 0, m - 2) != (buf[m - 2] << 8) | buf[m - 1]:
            self.errors += 1
            return -1
        self.ok += 1
        return m - 2

    def feed_each(self, data, handler):
        """Feed bytes; call handler(memoryview) for each good payload.

        The view is over the receive buffer and valid only during the call;
        it is the only object allocated. Returns the number of payloads
        delivered.
        """
        count = 0
        i = 0
        end = len(data)
        buf = self._buf
        kind = type(data)
        fast = kind is bytes or kind is bytearray  # have .find; no tuple alloc
        while i < end:
            if fast:
                z = data.find(b"\x00", i)
            else:
                z = i
                while z < end and data[z] != 0:
                    z += 1
                if z == end:
                    z = -1
            stop = end if z < 0 else z
            take = stop - i
            if take and not self._overflow:
                if self._len + take > self._cap:
                    self._overflow = True  # skip to the next 0x00
                    self._len = 0
                    self.errors += 1
                else:
                    # A byte loop: a slice or memoryview would allocate.
                    n = self._len
                    for j in range(i, stop):
                        buf[n] = data[j]
                        n += 1
                    self._len = n
            if z < 0:
                break
            i = z + 1
            m = self._finish()
            if m >= 0:
                count += 1
                handler(self._mv[:m])
        return count

    def feed(self, data):
        """Feed bytes; returns the list of good payloads (bytes) completed."""
        found = []
        self.feed_each(data, lambda mv: found.append(bytes(mv)))
        return found
