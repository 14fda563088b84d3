"""Battery voltage through a resistor divider on an ADC pin, for Node.run(sensors=[...]).

    from lbnode.battery import Battery
    battery = Battery(1, ratio=4.9, enable=37)     # Heltec WiFi LoRa 32 V3: GPIO1, 390k/100k, ADC_Ctrl on GPIO37
    battery.read()    # {"battery": 3.92}

ratio is (R_top + R_bottom) / R_bottom of the divider. enable, if given,
is a pin that switches the divider on (driven to enable_level while
reading, then released, so the divider does not drain the battery between
readings). The reading averages `samples` conversions. Where the port has
ADC.read_uv() (ESP32: calibrated against the chip's eFuse values) it is
used, else read_u16() scaled by vref (RP2040: 3.3 V).

Untested on hardware.
"""

from machine import ADC, Pin

from .ticks import sleep_ms


class Battery:
    """A battery (or any voltage) behind a divider on an ADC pin."""

    def __init__(self, pin, ratio=2.0, enable=None, enable_level=0, samples=8, vref=3.3, name="battery"):
        self.adc = ADC(Pin(pin))
        try:
            self.adc.atten(ADC.ATTN_11DB)  # ESP32: the full 0-3.1 V range
        except (AttributeError, ValueError):
            pass
        self.ratio = ratio
        self.enable = Pin(enable, Pin.IN) if enable is not None else None
        self.enable_level = enable_level
        self.samples = samples
        self.vref = vref
        self.name = name

    def volts(self):
        """The battery voltage (V)."""
        if self.enable is not None:
            self.enable.init(Pin.OUT, value=self.enable_level)
            sleep_ms(2)  # let the divider settle
        adc = self.adc
        total = 0
        for _ in range(self.samples):
            total += adc.read_uv() if hasattr(adc, "read_uv") else adc.read_u16() * self.vref * 1e6 / 65535
        if self.enable is not None:
            self.enable.init(Pin.IN)
        return total / self.samples / 1e6 * self.ratio

    def read(self):
        return {self.name: round(self.volts(), 2)}
