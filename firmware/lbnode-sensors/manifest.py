# Example sensor drivers for lbnode: include("path/to/firmware/lbnode-sensors").
metadata(description="Lowband device node: BME280 and battery voltage drivers.", version="0.1.0")

package("lbnode", files=("battery.py", "bme280.py"), base_path="..")
