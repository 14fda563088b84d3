"""The bleak-backed scanner: BlueZ advertisements in, :class:`Advertisement` values out.

``BleScanner(on_advertisement, adapter=..., mode=...)`` runs one bleak
``BleakScanner`` on one BlueZ adapter and hands every advertisement bleak
reports to ``on_advertisement`` (sync; exceptions from it are logged and
counted, never raised into bleak).

Mode. ``passive`` (the default) hears advertisements without asking for scan
responses. bleak does passive scanning on BlueZ through the
AdvertisementMonitor API, which bluetoothd offers only when started with
``--experimental`` (object ``org.bluez.AdvertisementMonitorManager1`` on the
adapter), and only for advertisements matching "or patterns": we pass
:data:`PASSIVE_PATTERNS` (the Flags values connectable and non-connectable
sensors send, and the service/manufacturer data the supported formats use).
When the adapter lacks the API the scanner scans actively instead and says
so in one log line and in :meth:`BleScanner.stats` (``mode_in_use``,
``mode_reason``). ``active`` asks for scan responses (a device's name often
sits there).

Failures. Before each start the scanner asks BlueZ over D-Bus (dbus-fast,
the bus bleak uses: ``DBUS_SYSTEM_BUS_ADDRESS`` or the standard socket) for
the adapter, so a missing bus, a missing bluetoothd, a missing or
powered-off adapter each give a :class:`BleUnavailable` naming the cause.
While running it checks every ``watch_s`` that the adapter is still there;
when it goes (dongle pulled, bluetoothd restarted) the scanner stops and
starts again with back-off (:class:`~lowband.gateway.ble.gatt_core.Backoff`).
``start()`` raises the first :class:`BleUnavailable` unless ``persistent``
(the gateway's scanner, :func:`make_scanner`), which keeps retrying.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from bleak import BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from lowband.gateway.aio import cancel_and_wait, sleep_unless
from lowband.gateway.ble.advert import Advertisement, make_advertisement
from lowband.gateway.ble.gatt_core import Backoff
from lowband.gateway.config import BleConfig

__all__ = [
    "PASSIVE_PATTERNS",
    "SEEN_DEVICES",
    "BleScanner",
    "BleUnavailable",
    "DeviceCache",
    "make_scanner",
    "probe_adapter",
    "to_advertisement",
]

log = logging.getLogger(__name__)

_ADAPTER_IFACE = "org.bluez.Adapter1"
_MONITOR_MANAGER_IFACE = "org.bluez.AdvertisementMonitorManager1"
_AD_FLAGS = AdvertisementDataType.FLAGS
_AD_SERVICE_DATA_16 = AdvertisementDataType.SERVICE_DATA_UUID16
_AD_MANUFACTURER = AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA

#: What passive scanning hears (BlueZ matches each advertisement against any of these):
#: the Flags values of connectable and non-connectable LE sensors, BTHome (0xFCD2) and
#: Xiaomi MiBeacon (0xFE95) service data, and RuuviTag manufacturer data (company 0x0499).
#: An advertisement with none of these is heard only in active mode.
PASSIVE_PATTERNS: tuple[OrPattern, ...] = (
    *(OrPattern(0, _AD_FLAGS, bytes([flags])) for flags in (0x02, 0x04, 0x05, 0x06, 0x1A)),
    OrPattern(0, _AD_SERVICE_DATA_16, b"\xd2\xfc"),
    OrPattern(0, _AD_SERVICE_DATA_16, b"\x95\xfe"),
    OrPattern(0, _AD_MANUFACTURER, b"\x99\x04"),
)

_UNKNOWN_RSSI = -127  # what bleak reports when BlueZ gave no RSSI


class DeviceCache:
    """The last bleak ``BLEDevice`` per address heard by any scanner here (bounded, oldest dropped).

    gatt.py connects with these: a ``BleakClient`` made from an address
    starts a discovery of its own to find the device, which bluetoothd refuses
    (``InProgress``) while this process already runs one.
    """

    def __init__(self, cap: int = 4096) -> None:
        """Keep at most ``cap`` devices."""
        self.cap = cap
        self._devices: OrderedDict[str, BLEDevice] = OrderedDict()

    def put(self, device: BLEDevice) -> None:
        """Remember ``device`` (most recent last)."""
        key = device.address.upper()
        self._devices[key] = device
        self._devices.move_to_end(key)
        while len(self._devices) > self.cap:
            self._devices.popitem(last=False)

    def get(self, address: str) -> BLEDevice | None:
        """The device last heard at ``address``, or None."""
        return self._devices.get(address.upper())

    def forget(self, address: str) -> None:
        """Drop ``address`` (BlueZ no longer knows the object)."""
        self._devices.pop(address.upper(), None)

    def clear(self) -> None:
        """Forget every device."""
        self._devices.clear()

    def __len__(self) -> int:
        return len(self._devices)


#: Shared by the scanners and GATT links of this process.
SEEN_DEVICES = DeviceCache()


class BleUnavailable(RuntimeError):
    """BlueZ cannot scan here; the message names the cause (no bus, no bluetoothd, no adapter, powered off)."""


def _adapter_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


async def probe_adapter(adapter: str | None) -> tuple[str, bool]:
    """Ask BlueZ for ``adapter`` (None: the first powered one); return (name, passive scanning available).

    Raises :class:`BleUnavailable` with the cause.
    """
    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except Exception as exc:  # dbus-fast raises OSError subclasses, AuthError, InvalidAddressError
        raise BleUnavailable(f"no system D-Bus to reach BlueZ ({type(exc).__name__}: {exc})") from exc
    try:
        reply = await asyncio.wait_for(bus.call(Message(destination="org.bluez", path="/",
                                                        interface="org.freedesktop.DBus.ObjectManager",
                                                        member="GetManagedObjects")), 10)  # fmt: skip
    except (TimeoutError, OSError, EOFError) as exc:
        raise BleUnavailable(f"BlueZ did not answer on the system D-Bus ({type(exc).__name__})") from exc
    finally:
        bus.disconnect()
    if reply.message_type == MessageType.ERROR:
        if reply.error_name == "org.freedesktop.DBus.Error.ServiceUnknown":
            raise BleUnavailable("BlueZ (bluetoothd) is not running: nobody owns org.bluez on the system D-Bus")
        raise BleUnavailable(f"BlueZ refused to list its objects: {reply.error_name}: {reply.body}")
    adapters = {_adapter_name(str(path)): ifaces for path, ifaces in reply.body[0].items() if _ADAPTER_IFACE in ifaces}
    if not adapters:
        raise BleUnavailable("BlueZ has no Bluetooth adapter")

    def powered(name: str) -> bool:
        variant = adapters[name][_ADAPTER_IFACE].get("Powered")
        return variant is not None and bool(variant.value)

    if adapter is None:
        on = [name for name in sorted(adapters) if powered(name)]
        if not on:
            raise BleUnavailable(f"no powered Bluetooth adapter (have {', '.join(sorted(adapters))})")
        adapter = on[0]
    elif adapter not in adapters:
        raise BleUnavailable(f"Bluetooth adapter {adapter} not found (have {', '.join(sorted(adapters))})")
    if not powered(adapter):
        raise BleUnavailable(f"Bluetooth adapter {adapter} is powered off")
    ifaces = adapters[adapter]
    monitor = ifaces.get(_MONITOR_MANAGER_IFACE)
    types = monitor.get("SupportedMonitorTypes") if monitor is not None else None
    passive = types is not None and "or_patterns" in types.value
    return adapter, passive


def to_advertisement(device: BLEDevice, data: AdvertisementData) -> Advertisement:
    """bleak's view of one advertisement as a Lowband :class:`Advertisement` (time: now).

    Raises ``ValueError`` only for an address that is not a Bluetooth address.
    """
    rssi = None if data.rssi == _UNKNOWN_RSSI else data.rssi
    return make_advertisement(device.address, rssi=rssi, local_name=data.local_name,
                              service_data=dict(data.service_data), manufacturer_data=dict(data.manufacturer_data),
                              service_uuids=tuple(data.service_uuids))  # fmt: skip


class BleScanner:
    """One adapter, scanned by bleak, restarted when the adapter goes away. See the module docstring."""

    def __init__(self, on_advertisement: Callable[[Advertisement], None], *, adapter: str | None = None,
                 mode: str = "passive", persistent: bool = False, watch_s: float = 1.0,
                 backoff: Backoff | None = None) -> None:  # fmt: skip
        """``mode`` is "passive" or "active"; ``adapter`` None picks the first powered adapter."""
        if mode not in ("passive", "active"):
            raise ValueError(f"scan mode must be passive or active, not {mode!r}")
        self.on_advertisement = on_advertisement
        self.adapter = adapter
        self.mode = mode
        self.persistent = persistent
        self.watch_s = watch_s
        self.backoff = backoff or Backoff(initial=1.0, maximum=30.0)
        self.state = "stopped"  # stopped | starting | running | unavailable
        self.adapter_in_use: str | None = None
        self.mode_in_use: str | None = None
        self.mode_reason = ""
        self.last_error = ""
        self.adverts = 0
        self.callback_errors = 0
        self.bad_adverts = 0
        self.restarts = 0
        self._scanner: BleakScanner | None = None
        self._watch_bus: MessageBus | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._logged_error = ""

    # --- public --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start scanning. Raises :class:`BleUnavailable` (not when ``persistent``: then it retries)."""
        if self._task is not None:
            return
        self._stopping = asyncio.Event()
        self.state = "starting"
        try:
            await self._open()
        except BleUnavailable as exc:
            self._note_error(exc)
            if not self.persistent:
                self.state = "stopped"
                raise
        self._task = asyncio.create_task(self._supervise(), name="ble-scanner")

    async def stop(self) -> None:
        """Stop scanning and the supervisor; safe to call twice."""
        self._stopping.set()
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._close()
        self.state = "stopped"

    def stats(self) -> dict[str, Any]:
        """State for status pages and metrics."""
        return {"state": self.state, "adapter": self.adapter_in_use, "mode": self.mode, "mode_in_use": self.mode_in_use,
                "mode_reason": self.mode_reason, "last_error": self.last_error, "adverts": self.adverts,
                "bad_adverts": self.bad_adverts, "callback_errors": self.callback_errors,
                "restarts": self.restarts}  # fmt: skip

    # --- internals ---------------------------------------------------------------------------

    def _note_error(self, exc: BaseException) -> None:
        self.state = "unavailable"
        self.last_error = str(exc)
        if self.last_error != self._logged_error:  # one line per new cause, not one per retry
            self._logged_error = self.last_error
            log.warning("BLE scanning unavailable: %s", self.last_error)

    def _on_detection(self, device: BLEDevice, data: AdvertisementData) -> None:
        try:
            adv = to_advertisement(device, data)
        except ValueError:
            self.bad_adverts += 1
            return
        self.adverts += 1
        SEEN_DEVICES.put(device)
        try:
            self.on_advertisement(adv)
        except Exception:
            self.callback_errors += 1
            if self.callback_errors == 1:
                log.exception("BLE advertisement handler failed (further failures are only counted)")

    async def _open(self) -> None:
        name, passive_ok = await probe_adapter(self.adapter)
        mode = self.mode
        if mode == "passive" and not passive_ok:
            mode = "active"
            reason = (f"passive scanning needs BlueZ's AdvertisementMonitor API (bluetoothd --experimental), which "
                      f"adapter {name} does not offer: scanning actively")  # fmt: skip
            if reason != self.mode_reason:
                log.warning("BLE: %s", reason)
            self.mode_reason = reason
        elif mode == "passive":
            self.mode_reason = "passive: AdvertisementMonitor API available"
        else:
            self.mode_reason = "active: configured"
        if mode == "passive":
            scanner = BleakScanner(self._on_detection, scanning_mode="passive",
                                   bluez={"adapter": name, "or_patterns": list(PASSIVE_PATTERNS)})  # fmt: skip
        else:
            scanner = BleakScanner(self._on_detection, scanning_mode="active", bluez={"adapter": name})
        try:
            await asyncio.wait_for(scanner.start(), 15)
        except (BleakError, TimeoutError, OSError, EOFError) as exc:
            raise BleUnavailable(f"bleak could not scan on {name}: {type(exc).__name__}: {exc}") from exc
        self._scanner = scanner
        self.adapter_in_use = name
        self.mode_in_use = mode
        self.state = "running"
        self.last_error = ""
        self._logged_error = ""
        self.backoff.reset()
        log.info("BLE scanning on %s (%s)", name, mode)

    async def _close(self) -> None:
        bus, self._watch_bus = self._watch_bus, None
        if bus is not None:
            bus.disconnect()
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        try:
            await asyncio.wait_for(scanner.stop(), 10)
        except Exception as exc:  # noqa: BLE001 - the adapter or bus is already gone: nothing left to stop
            log.debug("stopping the BLE scanner: %r", exc)

    async def _adapter_alive(self) -> bool:
        """One cheap property read on the adapter in use (not the whole object tree)."""
        name = self.adapter_in_use
        try:
            if self._watch_bus is None or not self._watch_bus.connected:
                self._watch_bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            get = Message(destination="org.bluez", path=f"/org/bluez/{name}", interface="org.freedesktop.DBus.Properties",
                          member="Get", signature="ss", body=[_ADAPTER_IFACE, "Powered"])  # fmt: skip
            reply = await asyncio.wait_for(self._watch_bus.call(get), 5)
        except Exception as exc:  # noqa: BLE001 - the bus went away (OSError, EOFError, dbus-fast's errors)
            self._note_error(BleUnavailable(f"lost the system D-Bus ({type(exc).__name__}: {exc})"))
            return False
        if reply.message_type == MessageType.ERROR:
            if reply.error_name == "org.freedesktop.DBus.Error.ServiceUnknown":
                self._note_error(
                    BleUnavailable("BlueZ (bluetoothd) stopped: nobody owns org.bluez on the system D-Bus")
                )
            else:
                self._note_error(BleUnavailable(f"Bluetooth adapter {name} went away ({reply.error_name})"))
            return False
        if not reply.body[0].value:
            self._note_error(BleUnavailable(f"Bluetooth adapter {name} is powered off"))
            return False
        return True

    async def _supervise(self) -> None:
        while not self._stopping.is_set():
            if self._scanner is not None:
                if await sleep_unless(self._stopping, self.watch_s):
                    return
                if await self._adapter_alive():
                    continue
                log.warning("BLE adapter %s went away: restarting the scanner", self.adapter_in_use)
                await self._close()
                self.restarts += 1
            if await sleep_unless(self._stopping, self.backoff.next_delay()):
                return
            try:
                await self._open()
            except BleUnavailable as exc:
                self._note_error(exc)


def make_scanner(settings: BleConfig, on_advertisement: Callable[[Advertisement], None]) -> BleScanner:
    """The gateway's scanner (the component's ``scanner_factory``): persistent, from the ``[ble]`` settings."""
    return BleScanner(on_advertisement, adapter=settings.adapter, mode=settings.mode, persistent=True)
