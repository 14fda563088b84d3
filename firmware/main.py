# The board's entry point: `lowband device flash` copies it to the board as /main.py,
# next to /lowband.json (the device config), /board.json (hardware/board-*.json) and,
# for a LoRa board, /region.json (hardware/region-*.json). Untested on hardware.
#
# What it does: builds the transport the board profile names (the SX126x/SX127x radio
# for a "lora" board, else machine.UART), the sensors the board has pins for (BME280 on
# i2c_sda/i2c_scl or the OLED bus, the battery divider on battery_adc), keeps the link session in
# /lbnode.state, answers "led on", "led off" and "report", and takes a reading every
# INTERVAL seconds, in light sleep between. Edit it freely: it is the application.
import json

from lbnode import Node
from lbnode.state import FileStore

INTERVAL = 300  # seconds between readings
SLEEP = "light"  # "deep" saves more power: the board restarts from here after each reading
DIVIDERS = {"heltec-wifi-lora-32-v3": 4.9}  # battery divider ratio per board (390k/100k on the Heltec V3)


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return None


def _query(spec):
    # "lora:/dev/ttyUSB1?region=EU868&dr=0&freq=868100000" -> {"region": "EU868", "dr": "0", ...}
    out = {}
    for part in spec.partition("?")[2].split("&"):
        key, _, value = part.partition("=")
        if key:
            out[key] = value
    return out


def _transport(config, board):
    query = _query(config.get("link", ""))
    pins = board.get("pins", {})
    if board.get("link") == "lora" and board.get("radio"):
        from lbnode.lora_radio import radio_transport

        region = _load("region.json")
        freq = int(query["freq"]) if "freq" in query else None
        return radio_transport(board, region, int(query.get("dr", 0)), freq)
    from lbnode.hal_uart import uart_transport

    serial = board.get("serial") or {}
    bps = int(query.get("bps", serial.get("bps", 9600)))
    return uart_transport(serial.get("uart", 1), max(bps, 1200), tx=pins.get("uart_tx"), rx=pins.get("uart_rx"),
                          bps=bps)


def _sensors(board):
    pins = board.get("pins", {})
    sensors = []
    # A BME280 on the board's I2C bus: i2c_sda/i2c_scl, or the OLED's bus (Heltec V3: 17/18,
    # powered through Vext, which vext_ctrl switches on when low).
    sda = pins.get("i2c_sda", pins.get("oled_sda"))
    scl = pins.get("i2c_scl", pins.get("oled_scl"))
    if sda is not None and scl is not None:
        from machine import I2C, Pin

        from lbnode.bme280 import BME280

        if "vext_ctrl" in pins:
            Pin(pins["vext_ctrl"], Pin.OUT, value=0)
        try:
            sensors.append(BME280(I2C(0, sda=Pin(sda), scl=Pin(scl))))
        except OSError as exc:
            print("no BME280:", exc)
    if "battery_adc" in pins:
        from lbnode.battery import Battery

        sensors.append(Battery(pins["battery_adc"], DIVIDERS.get(board.get("name"), 2.0),
                               enable=pins.get("battery_adc_ctrl")))
    return sensors


def main():
    config = _load("lowband.json")
    board = _load("board.json") or {"link": "serial", "pins": {}}
    node = Node(config, _transport(config, board), store=FileStore("lbnode.state"))
    led = None
    if "led" in board.get("pins", {}):
        from machine import Pin

        led = Pin(board["pins"]["led"], Pin.OUT)
    sensors = _sensors(board)

    def command(text):
        if text in ("led on", "led off") and led is not None:
            led.value(text == "led on")
            return "ok: " + text
        if text == "report":
            node.sample(sensors)
            return "ok: report"
        return "unknown command: " + text

    node.on_command(command)
    node.run(sensors, interval=INTERVAL, sleep=SLEEP)


main()
