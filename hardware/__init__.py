"""Board and radio profiles (pins, radio chip, region, MTU, duty cycle) and LoRa time-on-air maths.

``lowband.hardware.radio`` loads the JSON profiles shipped in this package;
``lowband.hardware.lora`` holds the time-on-air formula and the sans-I/O
duty-cycle budget. ``docs/protocol/lora.md`` explains both.
"""

from .lora import DutyCycleBudget, DutyCycleError, SubBandBudgets, time_on_air_ms
from .radio import (
    Board,
    DataRate,
    HardwareError,
    Region,
    SubBand,
    board_names,
    load_board,
    load_board_file,
    load_region,
    load_region_file,
    region_names,
)

__all__ = [
    "Board",
    "DataRate",
    "DutyCycleBudget",
    "DutyCycleError",
    "HardwareError",
    "Region",
    "SubBand",
    "SubBandBudgets",
    "board_names",
    "load_board",
    "load_board_file",
    "load_region",
    "load_region_file",
    "region_names",
    "time_on_air_ms",
]
