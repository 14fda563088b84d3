# Freeze lbwire into a MicroPython build: include("path/to/firmware/lbwire").
# The package's own directory is this file's directory, hence base_path="..";
# files are listed so that manifest.py itself is not frozen.
metadata(
    description="Lowband device wire codec: framing, fragmentation, CBOR, compact events.",
    version="0.1.0",
)

package(
    "lbwire",
    files=("__init__.py", "cbor.py", "compact.py", "frag.py", "frame.py"),
    base_path="..",
)
