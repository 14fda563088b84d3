# LoRa for lbnode: include("path/to/firmware/lbnode-lora") after the core.
# lora_air (time on air, duty-cycle budget) is also what lbnode.hal_uart's
# transparent-modem transport needs. The radio driver comes from micropython-lib:
# require "lora-sync" and the chip's package, e.g. in the board manifest
#   require("lora-sync"); require("lora-sx126x")   # Heltec WiFi LoRa 32 V3 (SX1262)
#   require("lora-sync"); require("lora-sx127x")   # RFM95W (SX1276)
metadata(description="Lowband device node: LoRa radio transport and airtime.", version="0.1.0")

include("../lbnode")
package("lbnode", files=("lora_air.py", "lora_radio.py"), base_path="..")
