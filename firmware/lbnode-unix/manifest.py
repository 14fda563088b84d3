# The MicroPython unix port's HAL (a pty as the UART) and the device process of
# firmware/main_unix.py: include("path/to/firmware/lbnode-unix") in a unix build.
metadata(description="Lowband device node: unix port HAL and device process.", version="0.1.0")

include("../lbnode")
package("lbnode", files=("hal_unix.py", "unix_main.py"), base_path="..")
