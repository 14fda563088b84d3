# Freeze the lbnode core into a MicroPython build: include("path/to/firmware/lbnode").
# The core is the node API, the link state machine, the serial framing, the queue,
# session persistence, asyncio support and machine.UART; it needs lbcrypto and, for
# fragmented messages, lbwire's frag module (not the rest of lbwire). Features come
# in their own manifests next to this folder, so a board freezes only what it uses:
#   ../lbnode-lora     SX126x/SX127x radios (micropython-lib lora) and LoRa airtime/duty cycle
#   ../lbnode-sensors  BME280 and battery-divider drivers
#   ../lbnode-unix     the unix port's pty HAL and device process (tests, simulation)
metadata(
    description="Lowband device node: a board as a room member over a secure serial or LoRa link.",
    version="0.1.0",
)

include("../lbcrypto")
package("lbwire", files=("__init__.py", "frag.py"), base_path="..")
package(
    "lbnode",
    files=("__init__.py", "aio.py", "hal_uart.py", "link.py", "msgring.py", "node.py", "state.py", "state_rtc.py",
           "stream.py", "ticks.py", "wire.py"),
    base_path="..",
)
