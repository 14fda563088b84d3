"""The link session in the ESP32's RTC slow memory: survives deep sleep, not a power cut.

    from lbnode.state_rtc import RTCStore
    node = Node("device.json", transport, store=RTCStore())

Untested on hardware. RTC memory holds at most 2 KB (machine.RTC().memory())
and is shared: pass offset if the application keeps its own data there
too. After a power cut the memory holds no valid state (lbnode.state checks
it) and the device starts a new handshake.
"""

from .state import STATE_LEN


class RTCStore:
    """Keeps the state at `offset` in the RTC slow memory (a store for lbnode.link)."""

    def __init__(self, offset=0):
        from machine import RTC

        self._rtc = RTC()
        self._offset = offset
        self.writes = 0

    def load(self):
        mem = self._rtc.memory()
        if len(mem) < self._offset + STATE_LEN:
            return None
        return mem[self._offset : self._offset + STATE_LEN]

    def save(self, data):
        mem = bytearray(self._rtc.memory())
        if len(mem) < self._offset + STATE_LEN:
            mem.extend(bytes(self._offset + STATE_LEN - len(mem)))
        mem[self._offset : self._offset + STATE_LEN] = data
        self._rtc.memory(mem)
        self.writes += 1
