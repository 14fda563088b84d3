"""LoRa time on air and the duty-cycle budget, for the device's radio transports.

Runs unchanged on CPython 3.11 and MicroPython. The same two calculations
as hardware/lora.py (docs/protocol/lora.md sections 2 and 4), in integer
microseconds and milliseconds: single-precision floats (RP2040, ESP32)
would round the symbol times.

- time_on_air_us(n, sf, bw_hz): the SX1276 datasheet formula (section
  4.1.1.7), explicit header, payload CRC, coding rate 4/(4 + cr), low data
  rate optimisation when a symbol lasts 16 ms or more.
- Budget: in every window of window_ms, the air time of this transmitter
  stays within duty x window. earliest(airtime_ms, now) is when a
  transmission of that length may start; record() charges one. Times are
  ticks_ms values (compared with ticks_diff), so an hour-long window is
  safe across the ticks wrap.
- params(region, dr, freq_hz): what a transport needs from a region
  profile (region-*.json copied to the board): spreading factor,
  bandwidth, MTU, coding rate, preamble, sync word and the duty cycle of
  the sub-band freq_hz lies in.
"""

from .ticks import ticks_add, ticks_diff


def time_on_air_us(n, sf, bw_hz, cr=1, preamble=8):
    """Microseconds on air of an n-byte LoRa packet (explicit header, CRC on)."""
    t_sym = (1 << sf) * 1000000 // bw_hz
    de = 1 if t_sym >= 16000 else 0
    num = 8 * n - 4 * sf + 28 + 16
    den = 4 * (sf - 2 * de)
    symbols = 8 + max(-(-num // den) * (cr + 4), 0)
    return (4 * preamble + 17) * t_sym // 4 + symbols * t_sym


def params(region, dr, freq_hz=None):
    """(sf, bw_hz, mtu, coding_rate, preamble, sync_word, duty, freq_hz) from a region profile dict.

    freq_hz defaults to the region's first channel. Raises ValueError for
    an unknown data rate or a frequency outside every sub-band.
    """
    rate = None
    for r in region["data_rates"]:
        if r["dr"] == dr:
            rate = r
    if rate is None:
        raise ValueError("lora: region %s has no data rate %d" % (region["name"], dr))
    if freq_hz is None:
        freq_hz = region["channels"][0]["frequency_hz"]
    duty = None
    for band in region["sub_bands"]:
        if band["min_hz"] <= freq_hz <= band["max_hz"]:
            duty = band["duty_cycle"]
    if duty is None:
        raise ValueError("lora: %d Hz lies in no sub-band of %s" % (freq_hz, region["name"]))
    mod = region["modulation"]
    cr = int(mod["coding_rate"].split("/")[1]) - 4
    return rate["sf"], rate["bw_hz"], rate["mtu"], cr, mod["preamble_symbols"], mod["sync_word"], duty, freq_hz


class Budget:
    """The duty-cycle budget of one transmitter in one sub-band (lora.md section 4)."""

    def __init__(self, duty, window_ms=3600000):
        self.window = window_ms
        self.budget = int(duty * window_ms)
        self._tx = []  # (start, length) in ticks_ms and ms, oldest first

    def _prune(self, now):
        while self._tx and ticks_diff(now, ticks_add(self._tx[0][0], self._tx[0][1])) >= self.window:
            self._tx.pop(0)

    def earliest(self, airtime_ms, now):
        """ms from now until a transmission of airtime_ms may start (0: now).

        The window ending with the new transmission is the fullest one
        holding it, so only that one is checked: slide it right until the
        air time left inside it plus the new one fits the budget.
        """
        self._prune(now)
        wait = 0
        if self._tx:
            start, length = self._tx[-1]
            wait = max(0, ticks_diff(ticks_add(start, length), now))  # the radio is still sending
        # air time inside (left, right] for a window ending at right = now + wait + airtime
        left = wait + airtime_ms - self.window  # relative to now
        used = 0
        parts = []
        for start, length in self._tx:
            s = ticks_diff(start, now)
            e = s + length
            a = s if s > left else left
            if e > a:
                used += e - a
                parts.append((a, e))
        excess = used + airtime_ms - self.budget
        for a, e in parts:  # shed the oldest air time first by moving the window's left edge
            if excess <= 0:
                break
            take = e - a if e - a < excess else excess
            left = a + take
            excess -= take
        if excess > 0:
            raise ValueError("lora: a transmission longer than the whole budget")
        return max(wait, left + self.window - airtime_ms)

    def record(self, airtime_ms, now):
        """Charge a transmission starting now."""
        self._tx.append((now, airtime_ms))
