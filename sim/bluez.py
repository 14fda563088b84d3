"""A fake BlueZ on a private D-Bus, for tests and ``lowband ble scan`` demos (never for production).

:class:`FakeBluez` starts two processes and stops them again:

* a private ``dbus-daemon`` configured as a system bus, listening on a unix
  socket in a temporary directory (nothing touches the machine's own bus);
* Debian's ``python3-dbusmock`` (``/usr/bin/python3 -m dbusmock -t bluez5``,
  dbus-python) owning ``org.bluez`` on that bus, with ``sim/bluez_mock.py``
  loaded on top of the bluez5 template (read that file for what the fake does
  and how it differs from bluetoothd).

bleak (through dbus-fast) finds the system bus by ``DBUS_SYSTEM_BUS_ADDRESS``
at connect time, so a process that sets that variable to :attr:`address`
(see :meth:`environ`) talks to the fake. The controller methods here
(``add_adapter``, ``add_device``, ``advertise``, ``add_gatt_service``,
``set_value``...) are plain blocking calls: they run on a private event loop
in a thread, so tests call them from sync or async code alike. Every wait is
bounded; every D-Bus value is sent with its BlueZ type (ServiceData a{sv} of
ay, ManufacturerData a{qv} of ay, RSSI n, UUIDs as, Name s).
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

__all__ = [
    "ENVIRONMENTAL_SENSING",
    "CharacteristicState",
    "DeviceState",
    "EnvironmentalSensor",
    "FakeBluez",
    "FakeBluezError",
    "fake_bluez_missing",
]

SYSTEM_PYTHON = "/usr/bin/python3"
_MOCK_TEMPLATE = Path(__file__).with_name("bluez_mock.py")
_CONTROL = "org.lowband.FakeBlueZ"
_MOCK = "org.freedesktop.DBus.Mock"
_BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"

ENVIRONMENTAL_SENSING = f"0000181a{_BASE_UUID_TAIL}"
TEMPERATURE = f"00002a6e{_BASE_UUID_TAIL}"
HUMIDITY = f"00002a6f{_BASE_UUID_TAIL}"
PRESSURE = f"00002a6d{_BASE_UUID_TAIL}"

_T = TypeVar("_T")

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


class FakeBluezError(RuntimeError):
    """The fake could not start, or a control call failed; the message says what."""


@functools.cache
def fake_bluez_missing(python: str = SYSTEM_PYTHON) -> str | None:
    """Why the fake cannot run on this machine (``dbus-daemon`` or python3-dbusmock missing), or None."""
    if shutil.which("dbus-daemon") is None:
        return "dbus-daemon is not installed (Debian package dbus-daemon)"
    if not Path(python).exists():
        return f"{python} does not exist (python3-dbusmock runs under Debian's Python)"
    try:
        subprocess.run([python, "-c", "import dbusmock, dbus"], check=True, capture_output=True, timeout=30,
                       env=_system_python_env({}))  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return f"{python} cannot import dbusmock (apt-get install python3-dbusmock)"
    return None


def _system_python_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment for Debian's Python: without the venv's Python variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _address_path(address: str) -> str:
    text = address.strip().upper().replace("-", ":")
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a Bluetooth address: {address!r}")
    int("".join(parts), 16)
    return "dev_" + "_".join(parts)


def _uuid(uuid: str | int) -> str:
    if isinstance(uuid, int):
        return f"{uuid:08x}{_BASE_UUID_TAIL}"
    text = uuid.lower()
    if len(text) in (4, 8):
        return f"{int(text, 16):08x}{_BASE_UUID_TAIL}"
    return text


def _advert_props(*, name: str | None, rssi: int | None, service_data: Mapping[str | int, bytes] | None,
                  manufacturer_data: Mapping[int, bytes] | None, service_uuids: Iterable[str | int] | None,
                  tx_power: int | None) -> dict[str, Variant]:  # fmt: skip
    """Device1 properties of one advertisement, each with the D-Bus type BlueZ gives it."""
    props: dict[str, Variant] = {}
    if name is not None:
        props["Name"] = Variant("s", name)
    if rssi is not None:
        if not -32768 <= rssi <= 32767:
            raise ValueError(f"RSSI out of int16 range: {rssi}")
        props["RSSI"] = Variant("n", rssi)
    if tx_power is not None:
        props["TxPower"] = Variant("n", tx_power)
    if service_data is not None:
        props["ServiceData"] = Variant("a{sv}", {_uuid(k): Variant("ay", bytes(v)) for k, v in service_data.items()})
    if manufacturer_data is not None:
        for company in manufacturer_data:
            if not 0 <= company <= 0xFFFF:
                raise ValueError(f"company id out of uint16 range: {company}")
        props["ManufacturerData"] = Variant("a{qv}", {int(k): Variant("ay", bytes(v))
                                                      for k, v in manufacturer_data.items()})  # fmt: skip
    if service_uuids is not None:
        props["UUIDs"] = Variant("as", [_uuid(u) for u in service_uuids])
    return props


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the fake knows of one device."""

    present: bool
    connected: bool
    connects: int  # successful Connect calls so far


@dataclass(frozen=True, slots=True)
class CharacteristicState:
    """Values written to a characteristic (with their write type) and whether it notifies."""

    writes: list[tuple[bytes, str]]
    notifying: bool


@dataclass(frozen=True, slots=True)
class EnvironmentalSensor:
    """Object paths of a fake GATT Environmental Sensing device (0x181A)."""

    device: str
    service: str
    temperature: str
    humidity: str
    pressure: str
    command: str | None


class _LoopThread:
    """A private asyncio loop in a daemon thread; ``run`` waits for a coroutine with a timeout."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-bluez", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise FakeBluezError(f"fake BlueZ call did not finish within {timeout} s") from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class FakeBluez:
    """A private system bus with a python-dbusmock BlueZ on it. Use as a context manager."""

    def __init__(
        self, directory: Path | None = None, *, python: str = SYSTEM_PYTHON, call_timeout: float = 10.0
    ) -> None:
        """``directory`` holds the bus socket and logs (a new temporary directory when None)."""
        self._own_dir = directory is None
        # Named now (the address is known before start), made by start(), removed by stop().
        own = Path(tempfile.gettempdir()) / f"lowband-bluez-{secrets.token_hex(6)}"
        self.directory = own if directory is None else Path(directory)
        self.python = python
        self.call_timeout = call_timeout
        self.socket_path = self.directory / "system_bus_socket"
        self._daemon: subprocess.Popen[bytes] | None = None
        self._mock: subprocess.Popen[bytes] | None = None
        self._loop: _LoopThread | None = None
        self._bus: MessageBus | None = None

    @property
    def address(self) -> str:
        """The D-Bus address of the private bus (``unix:path=...``)."""
        return f"unix:path={self.socket_path}"

    def environ(self) -> dict[str, str]:
        """The variables that point bleak (dbus-fast) at this bus."""
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.address}

    # --- processes -------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> Self:
        """Start the bus and BlueZ; return when ``org.bluez`` answers. Raises :class:`FakeBluezError`."""
        missing = fake_bluez_missing(self.python)
        if missing is not None:
            raise FakeBluezError(missing)
        if self._own_dir:
            self.directory.mkdir(mode=0o700)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
        try:
            config = self.directory / "bus.conf"
            config.write_text(_BUS_CONFIG.format(socket=self.socket_path))
            self._start_daemon(config, timeout)
            self._loop = _LoopThread()
            self._loop.run(self._connect(time.monotonic() + timeout), timeout + 1)
            self.start_bluez(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_daemon(self, config: Path, timeout: float) -> None:
        self.socket_path.unlink(missing_ok=True)
        self._daemon = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if self._daemon.poll() is not None:
                err = self._daemon.stderr.read().decode(errors="replace") if self._daemon.stderr else ""
                raise FakeBluezError(f"dbus-daemon exited with {self._daemon.returncode}: {err.strip()[-300:]}")
            if time.monotonic() > deadline:
                raise FakeBluezError(f"dbus-daemon made no socket within {timeout} s")
            time.sleep(0.02)

    async def _connect(self, deadline: float) -> None:
        # The daemon binds its socket (the file appears) a moment before it listens: refused until then.
        while True:
            try:
                self._bus = await MessageBus(bus_address=self.address).connect()
                return
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise FakeBluezError(f"dbus-daemon refused connections on {self.socket_path} until the deadline")
                await asyncio.sleep(0.02)

    def start_bluez(self, timeout: float = 20.0) -> None:
        """Start (or start again) the mock bluetoothd: a fresh BlueZ with no adapter."""
        if self._mock is not None and self._mock.poll() is None:
            return
        log = open(self.directory / "dbusmock.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self._mock = subprocess.Popen([self.python, "-m", "dbusmock", "--system", "-t", "bluez5"],
                                          stdout=log, stderr=subprocess.STDOUT,
                                          env=_system_python_env(self.environ()))  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self._run(self._has_owner("org.bluez")):
            if self._mock.poll() is not None:
                raise FakeBluezError(f"dbusmock exited with {self._mock.returncode}; see {self.directory}/dbusmock.log")
            if time.monotonic() > deadline:
                raise FakeBluezError(f"dbusmock did not own org.bluez within {timeout} s")
            time.sleep(0.05)
        self._call("/", _MOCK, "AddTemplate", "sa{sv}", [str(_MOCK_TEMPLATE), {}])

    def stop_bluez(self, timeout: float = 10.0) -> None:
        """Stop the mock bluetoothd only: the bus stays, ``org.bluez`` has no owner (BlueZ absent)."""
        proc, self._mock = self._mock, None
        if proc is None:
            return
        _end(proc, timeout)
        if self._loop is not None and self._bus is not None:
            deadline = time.monotonic() + timeout
            while self._run(self._has_owner("org.bluez")) and time.monotonic() < deadline:
                time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop BlueZ and the bus; remove the temporary directory this object made."""
        try:
            self.stop_bluez(timeout)
        finally:
            if self._loop is not None:
                if self._bus is not None:
                    bus, self._bus = self._bus, None
                    self._loop.loop.call_soon_threadsafe(bus.disconnect)
                self._loop.close()
                self._loop = None
            daemon, self._daemon = self._daemon, None
            if daemon is not None:
                _end(daemon, timeout)
                if daemon.stderr:
                    daemon.stderr.close()
            if self._own_dir:
                shutil.rmtree(self.directory, ignore_errors=True)

    def processes(self) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
        """The running dbus-daemon and dbusmock processes (raises :class:`FakeBluezError` when not running)."""
        if self._daemon is None or self._mock is None:
            raise FakeBluezError("the fake BlueZ is not running")
        return self._daemon, self._mock

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- D-Bus plumbing --------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise FakeBluezError("the fake BlueZ is not running")
        return self._loop.run(coro, self.call_timeout)

    async def _has_owner(self, name: str) -> bool:
        assert self._bus is not None
        reply = await self._bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                             interface="org.freedesktop.DBus", member="NameHasOwner",
                                             signature="s", body=[name]))  # fmt: skip
        return reply.message_type == MessageType.METHOD_RETURN and bool(reply.body[0])

    async def _call_async(self, path: str, interface: str, member: str, signature: str, body: list[Any]) -> list[Any]:
        assert self._bus is not None
        reply = await self._bus.call(Message(destination="org.bluez", path=path, interface=interface, member=member,
                                             signature=signature, body=body))  # fmt: skip
        if reply.message_type == MessageType.ERROR:
            raise FakeBluezError(f"{interface}.{member} on {path}: {reply.error_name}: {reply.body}")
        return list(reply.body)

    def _call(
        self, path: str, interface: str, member: str, signature: str = "", body: list[Any] | None = None
    ) -> list[Any]:
        return self._run(self._call_async(path, interface, member, signature, body or []))

    # --- adapters --------------------------------------------------------------------------

    def add_adapter(self, name: str = "hci0", *, passive: bool = True, advertise_interval: float = 0.2) -> str:
        """Add a powered adapter (``/org/bluez/NAME``); ``passive`` gives it the advertisement monitor API.

        While it scans, every present device advertises again each ``advertise_interval`` seconds (its
        current data, a new RSSI signal; 0: only when told with :meth:`advertise`). ``name`` must end in a
        digit (bluez5 derives the adapter address from it).
        """
        path = str(self._call("/", "org.bluez.Mock", "AddAdapter", "ss", [name, "lowband-fake"])[0])
        self._call("/", _CONTROL, "SetUpAdapter", "obq", [path, passive, round(advertise_interval * 1000)])
        return path

    def remove_adapter(self, name: str = "hci0") -> None:
        """Remove an adapter and its devices (as when a USB dongle is pulled)."""
        self._call("/", "org.bluez.Mock", "RemoveAdapterWithDevices", "s", [name])

    def adapter_state(self, name: str = "hci0") -> tuple[list[str], dict[str, Any]]:
        """The advertisement monitors registered on an adapter, and its last discovery filter."""
        monitors, discovery_filter = self._call("/", _CONTROL, "AdapterState", "o", [f"/org/bluez/{name}"])
        return [str(m) for m in monitors], {k: v.value for k, v in discovery_filter.items()}

    # --- devices ---------------------------------------------------------------------------

    def device_path(self, address: str, adapter: str = "hci0") -> str:
        """The BlueZ object path of a device."""
        return f"/org/bluez/{adapter}/{_address_path(address)}"

    def add_device(self, address: str, *, adapter: str = "hci0", name: str | None = None, rssi: int | None = -60,
                   service_data: Mapping[str | int, bytes] | None = None,
                   manufacturer_data: Mapping[int, bytes] | None = None,
                   service_uuids: Iterable[str | int] | None = None, tx_power: int | None = None,
                   connectable: bool = True) -> str:  # fmt: skip
        """Add a device that is in range, with its first advertisement; returns its object path.

        Service data keys may be short (0xFCD2, "fcd2") or full UUIDs.
        """
        _address_path(address)
        props = _advert_props(name=name, rssi=rssi, service_data=service_data, manufacturer_data=manufacturer_data,
                              service_uuids=service_uuids, tx_power=tx_power)  # fmt: skip
        return str(
            self._call("/", _CONTROL, "AddLeDevice", "ssba{sv}", [adapter, address.upper(), connectable, props])[0]
        )

    def advertise(self, address: str, *, adapter: str = "hci0", name: str | None = None, rssi: int | None = None,
                  service_data: Mapping[str | int, bytes] | None = None,
                  manufacturer_data: Mapping[int, bytes] | None = None,
                  service_uuids: Iterable[str | int] | None = None, tx_power: int | None = None) -> None:  # fmt: skip
        """A new advertisement from a device: the given properties change in one ``PropertiesChanged``.

        Like bluetoothd, only what is given is sent; give ``rssi`` too for an advertisement whose data is
        unchanged (bluetoothd sends nothing for a repeat with the same data and RSSI).
        """
        props = _advert_props(name=name, rssi=rssi, service_data=service_data, manufacturer_data=manufacturer_data,
                              service_uuids=service_uuids, tx_power=tx_power)  # fmt: skip
        if not props:
            raise ValueError("an advertisement needs at least one property")
        self._call("/", _CONTROL, "Advertise", "oa{sv}", [self.device_path(address, adapter), props])

    def set_present(self, address: str, present: bool, *, adapter: str = "hci0") -> None:
        """Take a device out of range (its connection drops, it stops advertising) or bring it back."""
        self._call("/", _CONTROL, "SetPresent", "ob", [self.device_path(address, adapter), present])

    def remove_device(self, address: str, *, adapter: str = "hci0") -> None:
        """Remove a device from BlueZ (``Adapter1.RemoveDevice``, ``InterfacesRemoved``)."""
        self._call(f"/org/bluez/{adapter}", "org.bluez.Adapter1", "RemoveDevice", "o",
                   [self.device_path(address, adapter)])  # fmt: skip

    def device_state(self, address: str, *, adapter: str = "hci0") -> DeviceState:
        """Present, connected, and how many times a client connected."""
        present, connected, connects = self._call(
            "/", _CONTROL, "DeviceState", "o", [self.device_path(address, adapter)]
        )
        return DeviceState(bool(present), bool(connected), int(connects))

    # --- GATT ------------------------------------------------------------------------------

    def add_gatt_service(self, address: str, uuid: str | int, handle: int, *, adapter: str = "hci0") -> str:
        """Add a primary service to a device; returns its object path."""
        body = [self.device_path(address, adapter), _uuid(uuid), handle]
        return str(self._call("/", _CONTROL, "AddGattService", "osq", body)[0])

    def add_characteristic(self, service: str, uuid: str | int, handle: int, flags: Iterable[str],
                           value: bytes = b"") -> str:  # fmt: skip
        """Add a characteristic with BlueZ flags ("read", "write", "write-without-response", "notify"...)."""
        body = [service, _uuid(uuid), handle, list(flags), bytes(value)]
        return str(self._call("/", _CONTROL, "AddGattCharacteristic", "osqasay", body)[0])

    def set_value(self, characteristic: str, value: bytes, *, notify: bool = False) -> bool:
        """Store a value; with ``notify``, send it as a notification if the client subscribed.

        Returns whether a notification was sent.
        """
        return bool(self._call("/", _CONTROL, "SetValue", "oayb", [characteristic, bytes(value), notify])[0])

    def notify(self, characteristic: str, value: bytes) -> bool:
        """Send a notification (the value changes while notifying); False if nobody subscribed."""
        return self.set_value(characteristic, value, notify=True)

    def characteristic_state(self, characteristic: str) -> CharacteristicState:
        """What was written to a characteristic, and whether notifications are on."""
        writes, notifying = self._call("/", _CONTROL, "CharacteristicState", "o", [characteristic])
        return CharacteristicState([(bytes(v), str(k)) for v, k in writes], bool(notifying))

    def add_environmental_sensor(self, address: str, *, adapter: str = "hci0", name: str | None = "ESS sensor",
                                 temperature: bytes = b"", humidity: bytes = b"", pressure: bytes = b"",
                                 notify: bool = True, command_uuid: str | None = None,
                                 command_flags: Iterable[str] = ("write",)) -> EnvironmentalSensor:  # fmt: skip
        """A connectable device with the Environmental Sensing service (0x181A) and its three characteristics.

        Values are raw characteristic bytes; ``command_uuid`` adds a writable characteristic in the same
        service (a vendor UUID, as real sensors use).
        """
        device = self.add_device(address, adapter=adapter, name=name, service_uuids=[ENVIRONMENTAL_SENSING])
        service = self.add_gatt_service(address, ENVIRONMENTAL_SENSING, 0x000C, adapter=adapter)
        flags = ["read", "notify"] if notify else ["read"]
        temp = self.add_characteristic(service, TEMPERATURE, 0x000D, flags, temperature)
        hum = self.add_characteristic(service, HUMIDITY, 0x0010, flags, humidity)
        pres = self.add_characteristic(service, PRESSURE, 0x0013, flags, pressure)
        command = None
        if command_uuid is not None:
            command = self.add_characteristic(service, command_uuid, 0x0016, command_flags)
        return EnvironmentalSensor(device, service, temp, hum, pres, command)


def _end(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it hangs; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
