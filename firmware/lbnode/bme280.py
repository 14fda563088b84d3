"""Bosch BME280 (temperature, humidity, pressure) over I2C, for Node.run(sensors=[...]).

    from machine import I2C, Pin
    from lbnode.bme280 import BME280
    sensor = BME280(I2C(0, sda=Pin(17), scl=Pin(18)))      # address 0x76 (SDO low) or 0x77
    sensor.read()   # {"temperature": 21.53, "humidity": 40.2}

Forced mode, oversampling x1 for each quantity, filter off: one
measurement per read(), the sensor sleeps in between (about 0.1 uA). The
compensation is the datasheet's integer code (BST-BME280-DS002, section
4.2.3: 32-bit temperature and humidity, 64-bit pressure) -- MicroPython's
integers do not overflow, so the formulas are written as they are. read()
returns the channels named in `channels`; pressure (hPa) only when asked
for, since the default context table of `lowband device add` has no
pressure channel (add one with --channel pressure:hPa:-1).

The compensation is checked under CPython against the datasheet's example
values (tests/firmware/test_firmware_node.py); the I2C access is untested on
hardware here.
"""

from .ticks import sleep_ms

_CHIP_ID = 0x60
_REG_ID = 0xD0
_REG_CALIB_TP = 0x88  # 26 bytes: T1..T3, P1..P9, (0xA0), H1
_REG_CALIB_H = 0xE1  # 7 bytes: H2..H6
_REG_CTRL_HUM = 0xF2
_REG_STATUS = 0xF3
_REG_CTRL_MEAS = 0xF4
_REG_DATA = 0xF7  # 8 bytes: pressure (20 bit), temperature (20 bit), humidity (16 bit)


def _s16(b, i):
    v = b[i] | (b[i + 1] << 8)
    return v - 65536 if v & 0x8000 else v


def _u16(b, i):
    return b[i] | (b[i + 1] << 8)


class Compensation:
    """The datasheet's integer compensation for one sensor's calibration bytes (no I/O)."""

    def __init__(self, tp, h):
        self.t = (_u16(tp, 0), _s16(tp, 2), _s16(tp, 4))
        self.p = (_u16(tp, 6),) + tuple(_s16(tp, 8 + 2 * i) for i in range(8))
        h4 = (h[3] << 4) | (h[4] & 0x0F)
        h5 = (h[5] << 4) | (h[4] >> 4)
        h6 = h[6]
        self.h = (tp[25], _s16(h, 0), h[2], h4 - 4096 if h4 & 0x800 else h4, h5 - 4096 if h5 & 0x800 else h5,
                  h6 - 256 if h6 & 0x80 else h6)  # fmt: skip

    def t_fine(self, adc_t):
        t1, t2, t3 = self.t
        var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
        var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14
        return var1 + var2

    def temperature(self, t_fine):
        """Hundredths of a degree Celsius."""
        return (t_fine * 5 + 128) >> 8

    def pressure(self, adc_p, t_fine):
        """Pascal x 256 (Q24.8), or 0 when the calibration would divide by zero."""
        p1, p2, p3, p4, p5, p6, p7, p8, p9 = self.p
        var1 = t_fine - 128000
        var2 = var1 * var1 * p6 + ((var1 * p5) << 17) + (p4 << 35)
        var1 = ((var1 * var1 * p3) >> 8) + ((var1 * p2) << 12)
        var1 = (((1 << 47) + var1) * p1) >> 33
        if var1 == 0:
            return 0
        p = 1048576 - adc_p
        p = (((p << 31) - var2) * 3125) // var1
        var1 = (p9 * (p >> 13) * (p >> 13)) >> 25
        var2 = (p8 * p) >> 19
        return ((p + var1 + var2) >> 8) + (p7 << 4)

    def humidity(self, adc_h, t_fine):
        """Relative humidity x 1024."""
        h1, h2, h3, h4, h5, h6 = self.h
        v = t_fine - 76800
        v = ((((adc_h << 14) - (h4 << 20) - (h5 * v)) + 16384) >> 15) * (
            ((((((v * h6) >> 10) * (((v * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192) >> 14)
        v -= ((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4
        v = 0 if v < 0 else v
        return (419430400 if v > 419430400 else v) >> 12


class BME280:
    """One BME280 on an I2C bus. Raises OSError if no BME280 answers at address."""

    def __init__(self, i2c, address=0x76, channels=("temperature", "humidity")):
        self.i2c = i2c
        self.address = address
        self.channels = channels
        self._buf = bytearray(26)
        self._one = bytearray(1)
        i2c.readfrom_mem_into(address, _REG_ID, self._one)
        if self._one[0] != _CHIP_ID:
            raise OSError("bme280: chip id 0x%02x at 0x%02x, expected 0x60" % (self._one[0], address))
        tp = bytearray(26)
        h = bytearray(7)
        i2c.readfrom_mem_into(address, _REG_CALIB_TP, tp)
        i2c.readfrom_mem_into(address, _REG_CALIB_H, h)
        self.comp = Compensation(tp, h)

    def _write(self, reg, value):
        self._one[0] = value
        self.i2c.writeto_mem(self.address, reg, self._one)

    def read(self):
        """One forced measurement: {"temperature": deg C, "humidity": %RH[, "pressure": hPa]}."""
        self._write(_REG_CTRL_HUM, 0x01)  # humidity x1 (takes effect with the next ctrl_meas write)
        self._write(_REG_CTRL_MEAS, (1 << 5) | (1 << 2) | 0x01)  # temperature x1, pressure x1, forced
        for _ in range(20):  # about 8 ms at x1 oversampling
            sleep_ms(2)
            self.i2c.readfrom_mem_into(self.address, _REG_STATUS, self._one)
            if not self._one[0] & 0x08:
                break
        data = memoryview(self._buf)[:8]
        self.i2c.readfrom_mem_into(self.address, _REG_DATA, data)
        adc_p = (data[0] << 12) | (data[1] << 4) | (data[2] >> 4)
        adc_t = (data[3] << 12) | (data[4] << 4) | (data[5] >> 4)
        adc_h = (data[6] << 8) | data[7]
        comp = self.comp
        t_fine = comp.t_fine(adc_t)
        out = {}
        if "temperature" in self.channels:
            out["temperature"] = comp.temperature(t_fine) / 100
        if "humidity" in self.channels:
            out["humidity"] = comp.humidity(adc_h, t_fine) / 1024
        if "pressure" in self.channels:
            out["pressure"] = comp.pressure(adc_p, t_fine) / 25600
        return out
