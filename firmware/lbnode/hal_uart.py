"""machine.UART as the device's line: a serial cable, or a transparent UART LoRa modem.

    from lbnode.hal_uart import uart_transport, modem_transport
    transport = uart_transport(1, 9600, tx=17, rx=16)               # a serial line at 9600 bps
    transport = modem_transport(1, 9600, tx=17, rx=16, region=region, dr=0, aux=4)   # an E22-style modem

A serial line carries COBS(frame) || 0x00 (lbnode.stream). A transparent
modem (Ebyte E22/E32, RYLR-class modules in transparent mode) radiates
whatever its UART receives and writes what it hears back: the same frames,
but each one is a radio packet, so the modem transport also
- waits for the module's AUX pin (high = idle) before it writes;
- keeps the sub-band's duty cycle (lbnode.lora_air.Budget), waiting
  before a frame when the budget of the last hour is spent;
- takes its retransmission timeout and MTU from the radio's data rate,
  not from the UART's baud rate.
The module must already be configured (address, channel, air data rate
matching the gateway's modem, transparent mode) with its own tool.

Untested on hardware: it runs in CI only through its shared code
(lbnode.stream, lbnode.lora_air). The UART waits with select.poll where
the port supports it (esp32, rp2), else by polling any() every
millisecond.
"""

from machine import UART, Pin

from .stream import StreamTransport
from .ticks import sleep_ms, ticks_diff, ticks_ms


class UARTPort:
    """A configured machine.UART as a port for StreamTransport."""

    def __init__(self, uart):
        self.uart = uart
        self.stream = uart
        try:
            import select

            self._poll = select.poll()
            self._poll.register(uart, select.POLLIN)
        except (ImportError, OSError, TypeError):
            self._poll = None

    def wait(self, timeout_ms):
        if self._poll is not None:
            return bool(self._poll.poll(timeout_ms))
        start = ticks_ms()
        while not self.uart.any():
            if ticks_diff(ticks_ms(), start) >= timeout_ms:
                return False
            sleep_ms(1)
        return True

    def readinto(self, buf):
        return self.uart.readinto(buf) or 0

    def write(self, data):
        self.uart.write(data)

    def close(self):
        deinit = getattr(self.uart, "deinit", None)
        if deinit is not None:
            deinit()


def _uart(uart_id, baudrate, tx, rx):
    pins = {}
    if tx is not None:
        pins["tx"] = Pin(tx)
    if rx is not None:
        pins["rx"] = Pin(rx)
    return UART(uart_id, baudrate=baudrate, timeout=0, **pins)


def uart_transport(uart_id, baudrate, tx=None, rx=None, bps=None):
    """A serial line on UART uart_id; bps is the line's real rate if slower than the UART's (e.g. a radio link)."""
    return StreamTransport(UARTPort(_uart(uart_id, baudrate, tx, rx)), bps=bps or baudrate)


class ModemTransport(StreamTransport):
    """Frames through a transparent LoRa modem: AUX, duty cycle, airtime-based timeouts."""

    def __init__(self, port, region, dr, freq_hz=None, aux=None):
        from . import lora_air

        sf, bw, mtu, cr, preamble, _, duty, _ = lora_air.params(region, dr, freq_hz)
        StreamTransport.__init__(self, port)
        self.mtu = mtu - 2  # COBS code byte and delimiter go on the air too
        self._air = (sf, bw, cr, preamble)
        self._toa = lora_air.time_on_air_us
        self.budget = lora_air.Budget(duty)
        self._aux = Pin(aux, Pin.IN) if aux is not None else None

    def airtime_ms(self, n):
        sf, bw, cr, preamble = self._air
        return (self._toa(n, sf, bw, cr, preamble) + 999) // 1000

    def rto_ms(self):
        # HS1 out and HS2 back (50 bytes + 2 of framing each), plus half again
        # and 200 ms for the modems' own turnaround.
        return 3 * self.airtime_ms(52) + 200

    def _idle(self, limit_ms):
        start = ticks_ms()
        while self._aux is not None and not self._aux.value() and ticks_diff(ticks_ms(), start) < limit_ms:
            sleep_ms(2)

    def send(self, frame, n):
        airtime = self.airtime_ms(n + 2)
        self._idle(1000)
        wait = self.budget.earliest(airtime, ticks_ms())
        if wait:
            sleep_ms(wait)  # the law first: a frame waits rather than break the duty cycle
        self.budget.record(airtime, ticks_ms())
        StreamTransport.send(self, frame, n)
        self._idle(airtime + 1000)


def modem_transport(uart_id, baudrate, region, dr, tx=None, rx=None, freq_hz=None, aux=None):
    """A transparent UART LoRa modem on UART uart_id; region is the region profile (a dict)."""
    return ModemTransport(UARTPort(_uart(uart_id, baudrate, tx, rx)), region, dr, freq_hz, aux)
