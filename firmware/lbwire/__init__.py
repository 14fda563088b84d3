"""lbwire: the device's own Lowband wire codec (MicroPython and CPython).

Submodules are imported on demand so a board pays only for what it uses:
frame (COBS + CRC-16 link framing), frag (fragmentation), cbor
(deterministic CBOR subset), compact (compact event profile).
"""

__version__ = "0.1.0"
