"""lbnode: a MicroPython board as a member of a Lowband room.

    from lbnode import Node
    node = Node("device.json", transport)
    node.on_command(lambda text: "ok: " + text)
    node.run(sensors=[...], interval=300)

Modules: node (the API), link (the device's link state machine), stream
(COBS framing and the serial transport), msgring (the uplink queue), state
(session persistence), ticks; hal_uart (machine.UART and transparent UART
LoRa modems), lora_radio (SX126x/SX127x through micropython-lib's lora),
hal_unix and unix_main (the unix port); bme280, battery (sensors); fake
(stand-ins for the unix port). See firmware/README.md.
"""

__version__ = "0.1.0"


from .node import Node  # noqa: E402,F401  (the API; everything else on demand)
