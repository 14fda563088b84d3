"""An SX126x or SX127x radio through micropython-lib's `lora` driver: one link frame per packet.

    from lbnode.lora_radio import radio_transport
    transport = radio_transport(board, region, dr=0)    # board-*.json and region-*.json as dicts

UNTESTED ON HARDWARE, and kept small on purpose: it is a sketch of the
transport interface (send, recv, rto_ms, mtu, close) over the driver's
documented synchronous API -- modem.send(packet), start_recv(continuous=
True), poll_recv() returning True (still listening), False or an RxPacket
(a bytearray), sleep() -- and of how the board and region profiles
configure the driver. Install the driver with mip: "lora-sync" and
"lora-sx126x" (Heltec WiFi LoRa 32 V3) or "lora-sx127x" (RFM95W).

On a packet radio there is no COBS: the packet is the frame (link.md
section 2), the radio's own CRC drops damaged packets. The transport keeps
the sub-band's duty cycle (lbnode.lora_air.Budget) before each send,
listens continuously otherwise, and polls the driver every 5 ms while
waiting (a board that wants to sleep while listening would wait on the
DIO1/DIO0 interrupt instead; the driver's irq_triggered() supports that).
"""

from .lora_air import Budget, params, time_on_air_us
from .ticks import sleep_ms, ticks_diff, ticks_ms


class RadioTransport:
    """Link frames as LoRa packets through a micropython-lib modem object."""

    def __init__(self, modem, sf, bw_hz, mtu, duty, cr=1, preamble=8):
        self.modem = modem
        self.mtu = mtu
        self.budget = Budget(duty)
        self._air = (sf, bw_hz, cr, preamble)
        self._tx = bytearray(mtu)
        modem.start_recv(continuous=True)

    def airtime_ms(self, n):
        sf, bw, cr, preamble = self._air
        return (time_on_air_us(n, sf, bw, cr, preamble) + 999) // 1000

    def rto_ms(self):
        return 3 * self.airtime_ms(50) + 200  # HS1 out, HS2 back, half again, radio turnaround

    def linger_ms(self):
        # After the acknowledgement: the gateway's turnaround and a short
        # command frame. A longer command missed here comes with the answer
        # to the next uplink (the gateway repeats it until acknowledged).
        return 200 + self.airtime_ms(30)

    def pause(self):
        """Stop listening until the next send or recv (the node is going to sleep)."""
        self.modem.sleep()

    def send(self, frame, n):
        airtime = self.airtime_ms(n)
        wait = self.budget.earliest(airtime, ticks_ms())
        if wait:
            sleep_ms(wait)
        self.budget.record(airtime, ticks_ms())
        self._tx[:n] = frame[:n]
        self.modem.send(memoryview(self._tx)[:n])  # blocks until the packet is out
        self.modem.start_recv(continuous=True)

    def recv(self, timeout_ms):
        start = ticks_ms()
        while True:
            rx = self.modem.poll_recv()
            if rx is not None and rx is not True and rx is not False:
                return rx
            if rx is False:
                self.modem.start_recv(continuous=True)
            if ticks_diff(ticks_ms(), start) >= timeout_ms:
                return None
            sleep_ms(5)

    def close(self):
        self.modem.sleep()


def radio_transport(board, region, dr, freq_hz=None, power_dbm=None):
    """Build the modem from a board profile and a region profile (dicts); returns a RadioTransport."""
    from machine import SPI, Pin

    sf, bw, mtu, cr, preamble, sync, duty, freq_hz = params(region, dr, freq_hz)
    pins = board["pins"]
    radio = board["radio"]
    spi = SPI(board["spi"]["id"], baudrate=board["spi"]["baudrate"], sck=Pin(pins["lora_sck"]),
              mosi=Pin(pins["lora_mosi"]), miso=Pin(pins["lora_miso"]))
    cfg = {"freq_khz": freq_hz // 1000, "sf": sf, "bw": str(bw // 1000), "coding_rate": cr + 4,
           "preamble_len": preamble, "syncword": sync, "output_power": power_dbm or min(14, radio["max_tx_power_dbm"])}
    if radio["chip"] == "sx1262":
        from lora import SX1262

        tcxo = radio.get("tcxo_voltage")
        modem = SX1262(spi, Pin(pins["lora_nss"]), busy=Pin(pins["lora_busy"]), dio1=Pin(pins["lora_dio1"]),
                       reset=Pin(pins["lora_reset"]), dio2_rf_sw=radio.get("dio2_rf_switch", True),
                       dio3_tcxo_millivolts=int(tcxo * 1000) if tcxo else None, lora_cfg=cfg)
    else:
        from lora import SX1276

        if radio.get("pa_boost"):
            cfg["tx_ant"] = "PA_BOOST"
        dio1 = Pin(pins["lora_dio1"]) if "lora_dio1" in pins else None
        modem = SX1276(spi, Pin(pins["lora_nss"]), dio0=Pin(pins["lora_dio0"]), dio1=dio1,
                       reset=Pin(pins["lora_reset"]), lora_cfg=cfg)
    return RadioTransport(modem, sf, bw, mtu, duty, cr, preamble)
