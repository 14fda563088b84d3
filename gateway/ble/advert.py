"""One received BLE advertisement, as every scanner hands it to the component.

A scanner (the bleak-backed one in ``scanner.py``, the simulated one in the
bench, tests) builds an :class:`Advertisement` per received packet and calls
``BleComponent.on_advertisement(adv)``. Nothing here does I/O.
"""

from __future__ import annotations

import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"


def full_uuid(uuid: str | int) -> str:
    """Return the full 128-bit lower-case UUID string for a 16/32/128-bit UUID.

    Accepts ``0xfcd2``, ``"fcd2"``, ``"0000fcd2"`` or a full UUID. Raises
    ``ValueError`` for anything else.
    """
    if isinstance(uuid, int):
        if not 0 <= uuid <= 0xFFFFFFFF:
            raise ValueError(f"UUID out of range: {uuid:#x}")
        return f"{uuid:08x}{_BASE_UUID_TAIL}"
    text = uuid.strip().lower()
    text = text.removeprefix("0x")
    if len(text) in (4, 8):
        return f"{int(text, 16):08x}{_BASE_UUID_TAIL}"
    if len(text) == 36 and text.count("-") == 4:
        int(text.replace("-", ""), 16)
        return text
    raise ValueError(f"not a Bluetooth UUID: {uuid!r}")


def normalise_address(address: str) -> str:
    """Return ``address`` as upper-case ``AA:BB:CC:DD:EE:FF``.

    Accepts ``-`` or ``:`` separators or none; raises ``ValueError`` otherwise.
    """
    text = address.strip().replace("-", "").replace(":", "").upper()
    if len(text) != 12:
        raise ValueError(f"not a Bluetooth address: {address!r}")
    int(text, 16)
    return ":".join(text[i : i + 2] for i in range(0, 12, 2))


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One advertisement (or merged advertisement + scan response).

    ``service_data`` keys are full 128-bit lower-case UUID strings,
    ``manufacturer_data`` keys are Bluetooth SIG company ids. ``time`` is the
    monotonic receive time in seconds, ``wall_ms`` the wall clock in ms.
    """

    address: str
    rssi: int | None = None
    local_name: str | None = None
    service_data: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    manufacturer_data: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))
    service_uuids: tuple[str, ...] = ()
    time: float = 0.0
    wall_ms: int = 0


def make_advertisement(
    address: str,
    *,
    rssi: int | None = None,
    local_name: str | None = None,
    service_data: Mapping[str, bytes] | Mapping[int, bytes] | Mapping[str | int, bytes] | None = None,
    manufacturer_data: Mapping[int, bytes] | None = None,
    service_uuids: tuple[str, ...] | list[str] = (),
    time: float | None = None,
    wall_ms: int | None = None,
) -> Advertisement:
    """Build an :class:`Advertisement` with normalised address and UUIDs.

    Short UUIDs (``0xfcd2``) are expanded; ``time``/``wall_ms`` default to
    now. Raises ``ValueError`` for a malformed address or UUID (local input).
    """
    sd = {full_uuid(k): bytes(v) for k, v in (service_data or {}).items()}
    md = {int(k): bytes(v) for k, v in (manufacturer_data or {}).items()}
    return Advertisement(
        address=normalise_address(address),
        rssi=rssi,
        local_name=local_name,
        service_data=MappingProxyType(sd),
        manufacturer_data=MappingProxyType(md),
        service_uuids=tuple(full_uuid(u) for u in service_uuids),
        time=_time.monotonic() if time is None else time,
        wall_ms=int(_time.time() * 1000) if wall_ms is None else wall_ms,
    )
