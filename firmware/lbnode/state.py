"""Where a device keeps its link session across deep sleep and restarts.

Runs unchanged on CPython 3.11 and MicroPython.

The choice (docs/protocol/link.md section 4): the device keeps its session
and reserves its send counters in blocks, rather than starting a new
handshake after every restart. A handshake costs two 50-byte frames -- at
SF12 that is 4.6 s on the air against 1.5 s for a reading, and under a
1 % duty cycle a board that wakes every five minutes would spend three
quarters of its air time on handshakes. Keeping the session makes a wake-up
cost one reading.

What is kept (104 bytes, see pack_into/unpack): the epoch, k_up and k_down, the
send counter's reserved limit, and the receive window (highest counter
and bitmap). The rules that make a restart safe:

- a send counter is only used below a limit that is already durable: when
  the next counter reaches the limit, a new limit (next + block) is
  written first. After a restart the device resumes at the stored limit,
  so a crash can skip up to a block of counters but never reuses one under
  the same keys. The skip stays far inside the 127 counters the gateway
  can reconstruct;
- the receive window is written whenever a command is accepted, before the
  application acts on it, so a restart never accepts that command again;
  it is also written with every counter block. Pure acknowledgements
  accepted since the last write may be accepted again after a crash, but
  each acknowledges an uplink counter below the stored limit, so no
  replayed acknowledgement can match a frame sent after the restart;
- a state that does not verify (a 4-byte SHA-256 check), belongs to
  another device address or key, or has an unknown format is ignored:
  the device starts a new handshake.

Stores (one tiny interface: load() -> bytes or None, save(bytes)):
- FileStore (here): a file, replaced atomically (write a temporary file,
  then rename; on LittleFS and POSIX a rename is atomic). Flash wear: one
  write per counter block (16 frames by default) and per command;
- RTCStore (lbnode/state_rtc.py): ESP32 RTC slow memory; survives deep
  sleep, not a power cut; writes cost nothing;
- any object with those two methods (tests keep the state in a variable).
"""

import hashlib
import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


STATE_LEN = const(104)
_MAGIC = b"LBS1"
# magic, address, epoch, has-keys, reserved, device key prefix (4),
# send limit, rx highest (signed), rx bitmap, k_up, k_down
_FORMAT = ">4sBBBB4sQqQ32s32s"
_BODY = const(100)  # STATE_LEN - 4 bytes of check


def pack_into(buf, address, device_public, epoch, keys, send_limit, rx_high, rx_bits):
    """Write the state into buf (STATE_LEN bytes); keys is (k_up, k_down) or None."""
    zero = b"\x00" * 32
    k_up, k_down = keys if keys is not None else (zero, zero)
    struct.pack_into(_FORMAT, buf, 0, _MAGIC, address, epoch, 1 if keys is not None else 0, 0,
                     device_public[:4], send_limit, rx_high, rx_bits, k_up, k_down)
    digest = hashlib.sha256(memoryview(buf)[:_BODY]).digest()
    for i in range(4):
        buf[_BODY + i] = digest[i]


def unpack(data, address, device_public):
    """Parse a stored state; returns (epoch, keys, send_limit, rx_high, rx_bits) or None.

    None for anything that is not a valid state of this device (wrong
    length, magic, check, address or device key): the caller then starts
    afresh. keys is (k_up, k_down) or None.
    """
    if data is None or len(data) != STATE_LEN:
        return None
    digest = hashlib.sha256(memoryview(data)[:_BODY]).digest()
    if bytes(data[_BODY:]) != digest[:4]:
        return None
    magic, addr, epoch, has_keys, _, prefix, limit, high, bits, k_up, k_down = struct.unpack_from(_FORMAT, data, 0)
    if magic != _MAGIC or addr != address or prefix != bytes(device_public[:4]) or epoch > 7:
        return None
    return epoch, (k_up, k_down) if has_keys else None, limit, high, bits


class FileStore:
    """Keeps the state in a file, replaced atomically."""

    def __init__(self, path):
        self.path = path
        self.writes = 0

    def load(self):
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def save(self, data):
        import os

        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self.path)
        self.writes += 1
