"""Region and board profiles: the radio facts gateway and firmware share.

Rules:
- The JSON files next to this module are the single source of truth:
  ``region-<name>.json`` (a regulatory region with its LoRa data rates, MTUs,
  channels and duty-cycle sub-bands) and ``board-<name>.json`` (a board: MCU,
  radio chip, pins, default region). ``docs/protocol/lora.md`` describes the
  format.
- Every file is validated completely when it is loaded; the first problem
  raises ``HardwareError`` naming the file and the field. Nothing
  half-checked is ever returned.
- Loaded profiles are frozen dataclasses, cached per name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from . import lora

__all__ = [
    "Board",
    "Channel",
    "DataRate",
    "HardwareError",
    "Modulation",
    "RadioChip",
    "Region",
    "SubBand",
    "board_names",
    "load_board",
    "load_board_file",
    "load_region",
    "load_region_file",
    "parse_board",
    "parse_region",
    "region_names",
]

REGION_FORMAT = "lowband-region/1"
BOARD_FORMAT = "lowband-board/1"

_CODING_RATES = {"4/5": 1, "4/6": 2, "4/7": 3, "4/8": 4}
_DIRECTIONS = ("up", "down", "both")
_LINKS = ("lora", "serial")
# Pins a driver cannot work without, per radio chip.
_REQUIRED_RADIO_PINS = {
    "sx1262": ("lora_nss", "lora_sck", "lora_mosi", "lora_miso", "lora_reset", "lora_busy", "lora_dio1"),
    "sx1276": ("lora_nss", "lora_sck", "lora_mosi", "lora_miso", "lora_reset", "lora_dio0"),
}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_MAX_GPIO = 63


class HardwareError(ValueError):
    """An unknown region or board, or a profile file that is missing, unreadable or invalid."""


# ---------------------------------------------------------------------------
# Profile types


@dataclass(frozen=True)
class Modulation:
    """LoRa packet settings common to all data rates of a region."""

    coding_rate: str  # "4/5" … "4/8"
    cr: int  # coding-rate index 1…4, the form the time-on-air formula takes
    preamble_symbols: int
    explicit_header: bool
    crc: bool
    sync_word: int


@dataclass(frozen=True)
class DataRate:
    """One LoRa data rate: DR index, spreading factor, bandwidth and the largest frame it may carry."""

    dr: int
    sf: int
    bw_hz: int
    mtu: int  # largest Lowband radio packet, bytes (LoRaWAN's N)
    max_mac_payload: int  # LoRaWAN's M, for reference
    direction: str  # "up", "down" or "both"

    @property
    def low_data_rate_optimize(self) -> bool:
        """Whether the radio must run with low data rate optimisation at this rate."""
        return lora.low_data_rate_optimize_needed(self.sf, self.bw_hz)


@dataclass(frozen=True)
class SubBand:
    """A frequency range with one duty-cycle limit; the range is closed at both ends."""

    name: str
    min_hz: int
    max_hz: int
    duty_cycle: float  # fraction of any window, 1.0 means unlimited
    max_eirp_dbm: float

    def holds(self, frequency_hz: int, bw_hz: int = 0) -> bool:
        """True when the whole channel (centre ± half the bandwidth) lies inside this sub-band."""
        half = bw_hz / 2
        return self.min_hz <= frequency_hz - half and frequency_hz + half <= self.max_hz


@dataclass(frozen=True)
class Channel:
    frequency_hz: int
    dr_min: int
    dr_max: int


@dataclass(frozen=True)
class Region:
    """A regulatory region: data rates, channels, sub-bands with their duty cycles."""

    name: str
    description: str
    modulation: Modulation
    data_rates: tuple[DataRate, ...]
    channels: tuple[Channel, ...]
    sub_bands: tuple[SubBand, ...]
    duty_cycle_window_s: float
    max_dwell_time_ms: float | None
    notes: tuple[str, ...] = ()

    def data_rate(self, dr: int) -> DataRate:
        """The data rate with index ``dr``; HardwareError if the region has none."""
        for rate in self.data_rates:
            if rate.dr == dr:
                return rate
        known = ", ".join(str(r.dr) for r in self.data_rates)
        raise HardwareError(f"region {self.name} has no data rate DR{dr} (known: {known})")

    def mtu(self, dr: int) -> int:
        """Largest radio packet in bytes at data rate ``dr``."""
        return self.data_rate(dr).mtu

    def time_on_air_ms(self, dr: int, payload_len: int) -> float:
        """Time on air of a ``payload_len``-byte packet at data rate ``dr`` with this region's modulation.

        Raises HardwareError for an unknown DR and ValueError for a length
        outside 0..255 (the MTU is not enforced here; see ``check_payload``).
        """
        rate = self.data_rate(dr)
        m = self.modulation
        return lora.time_on_air_ms(
            payload_len, rate.sf, rate.bw_hz, cr=m.cr, preamble=m.preamble_symbols,
            explicit_header=m.explicit_header, crc=m.crc,
        )

    def check_payload(self, dr: int, payload_len: int) -> None:
        """Raise HardwareError unless a ``payload_len``-byte packet may be sent at ``dr``."""
        mtu = self.mtu(dr)
        if not 1 <= payload_len <= mtu:
            raise HardwareError(f"{payload_len} bytes do not fit DR{dr} of {self.name} (MTU {mtu})")

    def sub_band_for(self, frequency_hz: int, bw_hz: int = 0) -> SubBand:
        """The sub-band whose duty cycle a channel at ``frequency_hz`` spends.

        With ``bw_hz`` the whole channel must lie inside one sub-band. Where
        a bare frequency sits on the edge two sub-bands share, the stricter
        one is returned. Raises HardwareError when the channel lies in no
        sub-band (transmitting there is not allowed).
        """
        matches = [band for band in self.sub_bands if band.holds(frequency_hz, bw_hz)]
        if not matches:
            where = f"{frequency_hz / 1e6:.4f} MHz" + (f" ± {bw_hz / 2e3:g} kHz" if bw_hz else "")
            raise HardwareError(f"{where} lies in no permitted sub-band of {self.name}")
        return min(matches, key=lambda band: band.duty_cycle)


@dataclass(frozen=True)
class RadioChip:
    chip: str  # "sx1262" or "sx1276"
    max_tx_power_dbm: float
    module: str | None = None
    tcxo_voltage: float | None = None  # SX126x: TCXO powered from DIO3
    dio2_rf_switch: bool = False  # SX126x: DIO2 drives the antenna switch
    pa_boost: bool = False  # SX127x: transmit through PA_BOOST


@dataclass(frozen=True)
class Board:
    """A board: what MicroPython port it runs, its radio and pins, and its default region."""

    name: str
    description: str
    mcu: str
    micropython_port: str
    region_name: str
    link: str  # "lora" or "serial"
    radio: RadioChip | None
    spi: Mapping[str, int] | None
    pins: Mapping[str, int]
    serial: Mapping[str, int] | None
    notes: tuple[str, ...] = ()

    @property
    def region(self) -> Region:
        """The board's default region profile."""
        return load_region(self.region_name)


# ---------------------------------------------------------------------------
# Loading


def _package_files() -> Traversable:
    return resources.files(__package__)


def region_names() -> list[str]:
    """Names of the regions shipped with the package, e.g. ``["EU868", "US915"]``."""
    return sorted(load_region(stem).name for stem in _stems("region-"))


def board_names() -> list[str]:
    """Names of the boards shipped with the package."""
    return sorted(_stems("board-"))


def _stems(prefix: str) -> list[str]:
    return [
        entry.name[len(prefix) : -len(".json")]
        for entry in _package_files().iterdir()
        if entry.name.startswith(prefix) and entry.name.endswith(".json")
    ]


def load_region(name: str) -> Region:
    """Load and validate the shipped region profile ``name`` (case-insensitive, e.g. "EU868").

    Raises HardwareError for an unknown name or an invalid file.
    """
    key = name.lower() if isinstance(name, str) else ""
    if not _NAME_RE.match(key):
        raise HardwareError(f"unknown region {name!r}")
    return _load_region_cached(key)


@lru_cache(maxsize=None)
def _load_region_cached(key: str) -> Region:
    filename = f"region-{key}.json"
    text = _read_shipped(filename, "region", key.upper(), sorted(s.upper() for s in _stems("region-")))
    region = parse_region(_parse_json(text, filename), source=filename)
    if region.name.lower() != key:
        raise HardwareError(f"{filename}: name {region.name!r} does not match the file name")
    return region


def load_board(name: str) -> Board:
    """Load and validate the shipped board profile ``name`` (e.g. "heltec-wifi-lora-32-v3").

    Raises HardwareError for an unknown name, an invalid file, or a board
    whose region is unknown.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise HardwareError(f"unknown board {name!r}")
    return _load_board_cached(name)


@lru_cache(maxsize=None)
def _load_board_cached(name: str) -> Board:
    filename = f"board-{name}.json"
    text = _read_shipped(filename, "board", name, board_names())
    board = parse_board(_parse_json(text, filename), source=filename)
    if board.name != name:
        raise HardwareError(f"{filename}: name {board.name!r} does not match the file name")
    return board


def load_region_file(path: str | Path) -> Region:
    """Load and validate a region profile from any path; raises HardwareError."""
    path = Path(path)
    return parse_region(_parse_json(_read_path(path), str(path)), source=str(path))


def load_board_file(path: str | Path) -> Board:
    """Load and validate a board profile from any path; raises HardwareError.

    The board's region must be one of the shipped regions.
    """
    path = Path(path)
    return parse_board(_parse_json(_read_path(path), str(path)), source=str(path))


def _read_shipped(filename: str, kind: str, name: str, known: list[str]) -> str:
    entry = _package_files() / filename
    if not entry.is_file():
        raise HardwareError(f"unknown {kind} {name!r} (known: {', '.join(known) or 'none'})")
    try:
        return entry.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HardwareError(f"{filename}: cannot read: {exc}") from exc


def _read_path(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HardwareError(f"{path}: cannot read: {exc}") from exc


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HardwareError(f"{source}: not valid JSON: {exc}") from exc


# ---------------------------------------------------------------------------
# Validation


class _Fields:
    """Reads one JSON object, checking types and refusing keys it does not know."""

    def __init__(self, obj: Any, where: str, allowed: set[str]) -> None:
        if not isinstance(obj, dict):
            raise HardwareError(f"{where}: must be an object")
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise HardwareError(f"{where}: unknown field(s) {', '.join(unknown)}")
        self.obj = obj
        self.where = where

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}"

    def raw(self, key: str, default: Any = ..., *, optional: bool = False) -> Any:
        if key not in self.obj:
            if default is not ... or optional:
                return None if default is ... else default
            raise HardwareError(f"{self.where}: missing field {key}")
        return self.obj[key]

    def string(self, key: str, *, optional: bool = False) -> str | None:
        value = self.raw(key, optional=optional)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise HardwareError(f"{self._path(key)}: must be a non-empty string")
        return value

    def integer(self, key: str, lo: int, hi: int, *, optional: bool = False) -> int | None:
        value = self.raw(key, optional=optional)
        if value is None and optional:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise HardwareError(f"{self._path(key)}: must be an integer {lo}..{hi}, got {value!r}")
        return value

    def number(self, key: str, lo: float, hi: float, *, optional: bool = False, lo_open: bool = False) -> float | None:
        value = self.raw(key, optional=optional)
        if value is None and optional:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value <= hi
        ok = ok and (value > lo if lo_open else value >= lo)
        if not ok:
            bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
            raise HardwareError(f"{self._path(key)}: must be a number in {bound}, got {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool | None = None) -> bool:
        value = self.raw(key, default if default is not None else ...)
        if not isinstance(value, bool):
            raise HardwareError(f"{self._path(key)}: must be true or false")
        return value

    def array(self, key: str, *, min_len: int = 0) -> list[Any]:
        value = self.raw(key)
        if not isinstance(value, list) or len(value) < min_len:
            raise HardwareError(f"{self._path(key)}: must be a list of at least {min_len} item(s)")
        return value

    def notes(self) -> tuple[str, ...]:
        value = self.raw("notes", [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise HardwareError(f"{self._path('notes')}: must be a list of strings")
        return tuple(value)


def parse_region(obj: Any, source: str = "<region>") -> Region:
    """Validate a decoded region profile and build a Region; raises HardwareError naming the bad field."""
    f = _Fields(
        obj, source,
        {"format", "name", "description", "modulation", "data_rates", "channels", "duty_cycle_window_s",
         "sub_bands", "max_dwell_time_ms", "notes"},
    )
    if f.raw("format") != REGION_FORMAT:
        raise HardwareError(f"{source}.format: must be {REGION_FORMAT!r}")
    name = f.string("name")
    assert name is not None
    if not re.fullmatch(r"[A-Z0-9]{2,16}", name):
        raise HardwareError(f"{source}.name: must be upper-case letters and digits, e.g. EU868")
    modulation = _parse_modulation(f.raw("modulation"), f"{source}.modulation")

    rates: list[DataRate] = []
    for i, item in enumerate(f.array("data_rates", min_len=1)):
        rates.append(_parse_data_rate(item, f"{source}.data_rates[{i}]"))
    seen: set[int] = set()
    for rate in rates:
        if rate.dr in seen:
            raise HardwareError(f"{source}.data_rates: DR{rate.dr} appears twice")
        seen.add(rate.dr)

    bands = [_parse_sub_band(item, f"{source}.sub_bands[{i}]") for i, item in enumerate(f.array("sub_bands", min_len=1))]
    names = [b.name for b in bands]
    if len(set(names)) != len(names):
        raise HardwareError(f"{source}.sub_bands: names must be unique")
    ordered = sorted(bands, key=lambda b: b.min_hz)
    for left, right in zip(ordered, ordered[1:]):
        if right.min_hz < left.max_hz:
            raise HardwareError(f"{source}.sub_bands: {left.name} and {right.name} overlap")

    window = f.number("duty_cycle_window_s", 0.0, 86400.0, lo_open=True)
    dwell = f.number("max_dwell_time_ms", 0.0, 60000.0, optional=True, lo_open=True)

    region = Region(
        name=name,
        description=f.string("description") or "",
        modulation=modulation,
        data_rates=tuple(sorted(rates, key=lambda r: r.dr)),
        channels=(),
        sub_bands=tuple(ordered),
        duty_cycle_window_s=window if window is not None else 3600.0,
        max_dwell_time_ms=dwell,
        notes=f.notes(),
    )

    channels: list[Channel] = []
    for i, item in enumerate(f.array("channels", min_len=1)):
        where = f"{source}.channels[{i}]"
        c = _Fields(item, where, {"frequency_hz", "dr_min", "dr_max"})
        ch = Channel(
            frequency_hz=c.integer("frequency_hz", 1, 10**10) or 0,
            dr_min=c.integer("dr_min", 0, 15) or 0,
            dr_max=c.integer("dr_max", 0, 15) or 0,
        )
        if ch.dr_min > ch.dr_max:
            raise HardwareError(f"{where}: dr_min is above dr_max")
        for dr in range(ch.dr_min, ch.dr_max + 1):
            if dr not in seen:
                raise HardwareError(f"{where}: DR{dr} is not a data rate of {name}")
            try:
                region.sub_band_for(ch.frequency_hz, region.data_rate(dr).bw_hz)
            except HardwareError as exc:
                raise HardwareError(f"{where}: at DR{dr}: {exc}") from None
        channels.append(ch)

    if dwell is not None:
        # A packet at an uplink rate must fit the dwell time even at full MTU.
        for rate in rates:
            if rate.direction != "down":
                airtime = region.time_on_air_ms(rate.dr, rate.mtu)
                if airtime > dwell:
                    raise HardwareError(
                        f"{source}: DR{rate.dr} with its MTU of {rate.mtu} bytes lasts {airtime:.1f} ms, "
                        f"over the {dwell:g} ms dwell time"
                    )

    return replace(region, channels=tuple(channels))


def _parse_modulation(obj: Any, where: str) -> Modulation:
    m = _Fields(obj, where, {"coding_rate", "preamble_symbols", "explicit_header", "crc", "sync_word"})
    coding_rate = m.raw("coding_rate")
    if coding_rate not in _CODING_RATES:
        raise HardwareError(f"{where}.coding_rate: must be one of {', '.join(_CODING_RATES)}")
    return Modulation(
        coding_rate=coding_rate,
        cr=_CODING_RATES[coding_rate],
        preamble_symbols=m.integer("preamble_symbols", 6, 65535) or 0,
        explicit_header=m.boolean("explicit_header"),
        crc=m.boolean("crc"),
        sync_word=m.integer("sync_word", 0, 255) or 0,
    )


def _parse_data_rate(obj: Any, where: str) -> DataRate:
    d = _Fields(obj, where, {"dr", "sf", "bw_hz", "mtu", "max_mac_payload", "direction"})
    dr = d.integer("dr", 0, 15)
    sf = d.integer("sf", lora.MIN_SF, lora.MAX_SF)
    bw = d.raw("bw_hz")
    if bw not in (125000, 250000, 500000):
        raise HardwareError(f"{where}.bw_hz: must be 125000, 250000 or 500000, got {bw!r}")
    mtu = d.integer("mtu", 1, lora.MAX_PAYLOAD)
    mac = d.integer("max_mac_payload", 1, lora.MAX_PAYLOAD)
    assert dr is not None and sf is not None and mtu is not None and mac is not None
    if mtu > mac:
        raise HardwareError(f"{where}: mtu {mtu} is larger than max_mac_payload {mac}")
    direction = d.raw("direction", "both")
    if direction not in _DIRECTIONS:
        raise HardwareError(f"{where}.direction: must be one of {', '.join(_DIRECTIONS)}")
    return DataRate(dr=dr, sf=sf, bw_hz=bw, mtu=mtu, max_mac_payload=mac, direction=direction)


def _parse_sub_band(obj: Any, where: str) -> SubBand:
    s = _Fields(obj, where, {"name", "min_hz", "max_hz", "duty_cycle", "max_eirp_dbm"})
    name = s.string("name") or ""
    lo = s.integer("min_hz", 1, 10**10) or 0
    hi = s.integer("max_hz", 1, 10**10) or 0
    if lo >= hi:
        raise HardwareError(f"{where}: min_hz must be below max_hz")
    duty = s.number("duty_cycle", 0.0, 1.0, lo_open=True)
    eirp = s.number("max_eirp_dbm", -30.0, 40.0)
    assert duty is not None and eirp is not None
    return SubBand(name=name, min_hz=lo, max_hz=hi, duty_cycle=duty, max_eirp_dbm=eirp)


def parse_board(obj: Any, source: str = "<board>") -> Board:
    """Validate a decoded board profile and build a Board; raises HardwareError naming the bad field.

    The board's region must be a shipped region.
    """
    f = _Fields(
        obj, source,
        {"format", "name", "description", "mcu", "micropython_port", "region", "link", "radio", "spi",
         "serial", "pins", "notes"},
    )
    if f.raw("format") != BOARD_FORMAT:
        raise HardwareError(f"{source}.format: must be {BOARD_FORMAT!r}")
    name = f.string("name") or ""
    if not _NAME_RE.match(name):
        raise HardwareError(f"{source}.name: must be lower-case letters, digits and '-'")
    region_name = f.string("region") or ""
    try:
        load_region(region_name)
    except HardwareError as exc:
        raise HardwareError(f"{source}.region: {exc}") from None
    link = f.raw("link")
    if link not in _LINKS:
        raise HardwareError(f"{source}.link: must be one of {', '.join(_LINKS)}")

    pins_obj = f.raw("pins")
    if not isinstance(pins_obj, dict):
        raise HardwareError(f"{source}.pins: must be an object of pin name → GPIO number")
    pins: dict[str, int] = {}
    for pin, gpio in pins_obj.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", pin):
            raise HardwareError(f"{source}.pins: bad pin name {pin!r}")
        if not isinstance(gpio, int) or isinstance(gpio, bool) or not 0 <= gpio <= _MAX_GPIO:
            raise HardwareError(f"{source}.pins.{pin}: must be a GPIO number 0..{_MAX_GPIO}")
        pins[pin] = gpio
    used: dict[int, str] = {}
    for pin, gpio in pins.items():
        if gpio in used:
            raise HardwareError(f"{source}.pins: {pin} and {used[gpio]} both use GPIO {gpio}")
        used[gpio] = pin

    radio = None
    radio_obj = f.raw("radio", None)
    spi = None
    serial = None
    if link == "lora":
        if radio_obj is None:
            raise HardwareError(f"{source}.radio: a LoRa board needs a radio")
        radio = _parse_radio(radio_obj, f"{source}.radio")
        missing = [p for p in _REQUIRED_RADIO_PINS[radio.chip] if p not in pins]
        if missing:
            raise HardwareError(f"{source}.pins: {radio.chip} needs {', '.join(missing)}")
        s = _Fields(f.raw("spi"), f"{source}.spi", {"id", "baudrate"})
        spi = MappingProxyType({"id": s.integer("id", 0, 3) or 0, "baudrate": s.integer("baudrate", 100_000, 20_000_000) or 0})
        if f.raw("serial", None) is not None:
            raise HardwareError(f"{source}.serial: only for serial boards")
    else:
        if radio_obj is not None:
            raise HardwareError(f"{source}.radio: a serial board has no radio (use null)")
        if f.raw("spi", None) is not None:
            raise HardwareError(f"{source}.spi: a serial board has no radio SPI bus (use null)")
        s = _Fields(f.raw("serial"), f"{source}.serial", {"bps", "bits_per_byte"})
        serial = MappingProxyType({"bps": s.integer("bps", 1, 10_000_000) or 0, "bits_per_byte": s.integer("bits_per_byte", 8, 12) or 0})

    return Board(
        name=name,
        description=f.string("description") or "",
        mcu=f.string("mcu") or "",
        micropython_port=f.string("micropython_port") or "",
        region_name=load_region(region_name).name,
        link=link,
        radio=radio,
        spi=spi,
        pins=MappingProxyType(pins),
        serial=serial,
        notes=f.notes(),
    )


def _parse_radio(obj: Any, where: str) -> RadioChip:
    r = _Fields(obj, where, {"chip", "module", "max_tx_power_dbm", "tcxo_voltage", "dio2_rf_switch", "pa_boost"})
    chip = r.raw("chip")
    if chip not in _REQUIRED_RADIO_PINS:
        raise HardwareError(f"{where}.chip: must be one of {', '.join(_REQUIRED_RADIO_PINS)}")
    return RadioChip(
        chip=chip,
        module=r.string("module", optional=True),
        max_tx_power_dbm=r.number("max_tx_power_dbm", -10.0, 30.0) or 0.0,
        tcxo_voltage=r.number("tcxo_voltage", 1.6, 3.3, optional=True),
        dio2_rf_switch=r.boolean("dio2_rf_switch", False),
        pa_boost=r.boolean("pa_boost", False),
    )
