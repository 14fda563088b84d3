"""The part of the fake BlueZ that runs INSIDE the python-dbusmock process.

Never imported by Lowband: ``sim/bluez.py`` starts Debian's python3-dbusmock
(``/usr/bin/python3 -m dbusmock -t bluez5``, dbus-python) and then loads this
file into it with ``AddTemplate(PATH)``. dbusmock's ``bluez5`` template gives
the object manager at ``/``, the agent manager and ``AddAdapter`` /
``RemoveAdapter``; this file adds what bleak needs and the template lacks:

* adapters with ``Roles`` (bleak picks the default adapter by the "central"
  role), an optional ``org.bluez.AdvertisementMonitorManager1`` (bleak's
  passive scanning registers a monitor there; real BlueZ has it only with
  ``--experimental``), and, while a discovery or a monitor runs, every present
  device advertises again each interval (an RSSI ``PropertiesChanged``), as
  devices in range do;
* LE devices created with their advertisement data in the first
  ``InterfacesAdded`` (``Name`` s, ``RSSI`` n, ``UUIDs`` as, ``ServiceData``
  a{sv} of ay, ``ManufacturerData`` a{qv} of ay), updated with
  ``PropertiesChanged`` as new advertisements arrive;
* ``Connect`` / ``Disconnect`` that set ``Connected`` and ``ServicesResolved``
  and fail while the device is away (out of range);
* GATT services and characteristics with ``ReadValue``, ``WriteValue``,
  ``StartNotify``, ``StopNotify``; a notification is a ``Value``
  ``PropertiesChanged`` while ``Notifying`` is true, as BlueZ sends it.

The control methods are on ``/`` in the interface ``org.lowband.FakeBlueZ``.
Object methods are plain functions handed to dbusmock's ``AddMethods`` (it
calls them with the object and the converted arguments).
"""

from __future__ import annotations

from typing import Any

import dbus
import dbus.service
from dbusmock import OBJECT_MANAGER_IFACE, mockobject
from gi.repository import GLib

CONTROL_IFACE = "org.lowband.FakeBlueZ"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
SERVICE_IFACE = "org.bluez.GattService1"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
MONITOR_MANAGER_IFACE = "org.bluez.AdvertisementMonitorManager1"
PROPS_IFACE = "org.freedesktop.DBus.Properties"


def load(mock: Any, parameters: Any) -> None:
    """dbusmock's template entry point: nothing to add until the test asks."""


def _error(name: str, message: str) -> Exception:
    return dbus.exceptions.DBusException(message, name=name)


def _emit_changed(obj: Any, interface: str, changed: dict[str, Any]) -> None:
    obj.EmitSignal(PROPS_IFACE, "PropertiesChanged", "sa{sv}as",
                   [interface, dbus.Dictionary(changed, signature="sv"), dbus.Array([], signature="s")])  # fmt: skip


def _set_and_emit(obj: Any, interface: str, changed: dict[str, Any]) -> None:
    props = obj.props.setdefault(interface, {})
    props.update(changed)
    _emit_changed(obj, interface, changed)


def _emit_added(path: str, interfaces: dict[str, Any]) -> None:
    manager = mockobject.objects["/"]
    manager.EmitSignal(OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}",
                       [dbus.ObjectPath(path), dbus.Dictionary(interfaces, signature="sa{sv}")])  # fmt: skip


def _object(path: str, kind: str) -> Any:
    obj = mockobject.objects.get(str(path))
    if obj is None:
        raise _error("org.freedesktop.DBus.Mock.NameError", f"no {kind} at {path}")
    return obj


def _bool(value: bool) -> Any:
    return dbus.Boolean(value, variant_level=1)


# --- adapter ---------------------------------------------------------------------------------


def _scanning(adapter: Any) -> bool:
    return mockobject.objects.get(adapter.path) is adapter and (
        bool(adapter.props[ADAPTER_IFACE]["Discovering"]) or bool(adapter.lowband_monitors)
    )


def _advertise_tick(adapter: Any) -> bool:
    """While the adapter scans, every present device advertises again (an RSSI PropertiesChanged)."""
    if not _scanning(adapter):
        adapter.lowband_timer = None
        return False
    prefix = adapter.path + "/dev_"
    for path in sorted(mockobject.objects):
        device = mockobject.objects[path]
        if path.startswith(prefix) and "/" not in path[len(prefix) :] and getattr(device, "lowband_present", False):
            _advertise_again(device)
    return True


def _scan_started(adapter: Any) -> None:
    # Devices in range advertise over and over; a scan that starts sees each one within one interval.
    # Not from inside the method call: a client registers its callbacks after the call returns.
    if adapter.lowband_timer is None and adapter.lowband_interval_ms > 0:
        adapter.lowband_timer = GLib.timeout_add(adapter.lowband_interval_ms, _advertise_tick, adapter)


def _start_discovery(adapter: Any) -> None:
    _set_and_emit(adapter, ADAPTER_IFACE, {"Discovering": _bool(True)})
    _scan_started(adapter)


def _stop_discovery(adapter: Any) -> None:
    _set_and_emit(adapter, ADAPTER_IFACE, {"Discovering": _bool(False)})


def _set_discovery_filter(adapter: Any, discovery_filter: Any) -> None:
    adapter.lowband_filter = dict(discovery_filter)


def _register_monitor(adapter: Any, path: Any) -> None:
    if str(path) in adapter.lowband_monitors:
        raise _error("org.bluez.Error.AlreadyExists", "Already Exists")
    adapter.lowband_monitors.add(str(path))
    _scan_started(adapter)


def _unregister_monitor(adapter: Any, path: Any) -> None:
    if str(path) not in adapter.lowband_monitors:
        raise _error("org.bluez.Error.DoesNotExist", "Does Not Exist")
    adapter.lowband_monitors.discard(str(path))


@dbus.service.method(CONTROL_IFACE, in_signature="obq", out_signature="")
def SetUpAdapter(self: Any, path: Any, passive: bool, interval_ms: int) -> None:
    """Give an adapter made by bluez5's AddAdapter what bleak needs (Roles, discovery, monitors).

    While it scans, present devices advertise every ``interval_ms`` (0: never on their own).
    """
    adapter = _object(path, "adapter")
    adapter.lowband_timer = None
    adapter.lowband_interval_ms = int(interval_ms)
    roles = dbus.Array(["central", "peripheral"], signature="s", variant_level=1)
    _set_and_emit(adapter, ADAPTER_IFACE, {"Roles": roles})
    adapter.AddMethods(ADAPTER_IFACE, [
        ("StartDiscovery", "", "", _start_discovery),
        ("StopDiscovery", "", "", _stop_discovery),
        ("SetDiscoveryFilter", "a{sv}", "", _set_discovery_filter),
    ])  # fmt: skip
    adapter.lowband_monitors = set()
    adapter.lowband_filter = {}
    if passive:
        adapter.AddMethods(MONITOR_MANAGER_IFACE, [
            ("RegisterMonitor", "o", "", _register_monitor),
            ("UnregisterMonitor", "o", "", _unregister_monitor),
        ])  # fmt: skip
        monitor_props = {
            "SupportedMonitorTypes": dbus.Array(["or_patterns"], signature="s", variant_level=1),
            "SupportedFeatures": dbus.Array([], signature="s", variant_level=1),
        }
        adapter.props[MONITOR_MANAGER_IFACE] = monitor_props
        _emit_added(adapter.path, {MONITOR_MANAGER_IFACE: monitor_props})


@dbus.service.method(CONTROL_IFACE, in_signature="o", out_signature="asa{sv}")
def AdapterState(self: Any, path: Any) -> Any:
    """The registered advertisement monitors and the last discovery filter of an adapter."""
    adapter = _object(path, "adapter")
    monitors = dbus.Array(sorted(adapter.lowband_monitors), signature="s")
    return monitors, dbus.Dictionary(adapter.lowband_filter, signature="sv")


# --- device ----------------------------------------------------------------------------------


def _device_of(obj: Any) -> Any:
    props = obj.props
    if CHAR_IFACE in props:
        service = _object(props[CHAR_IFACE]["Service"], "service")
        return _object(service.props[SERVICE_IFACE]["Device"], "device")
    return obj


def _drop_connection(device: Any) -> None:
    """The link is gone: notifications stop, then Connected and ServicesResolved fall."""
    prefix = device.path + "/"
    for path in sorted(mockobject.objects):
        obj = mockobject.objects[path]
        if path.startswith(prefix) and CHAR_IFACE in obj.props and obj.props[CHAR_IFACE]["Notifying"]:
            _set_and_emit(obj, CHAR_IFACE, {"Notifying": _bool(False)})
    _set_and_emit(device, DEVICE_IFACE, {"ServicesResolved": _bool(False)})
    _set_and_emit(device, DEVICE_IFACE, {"Connected": _bool(False)})


def _connect(device: Any) -> None:
    props = device.props[DEVICE_IFACE]
    if props["Connected"]:
        raise _error("org.bluez.Error.AlreadyConnected", "Already Connected")
    if not device.lowband_present or not device.lowband_connectable:
        raise _error("org.bluez.Error.Failed", "Software caused connection abort")
    device.lowband_connects += 1
    _set_and_emit(device, DEVICE_IFACE, {"Connected": _bool(True)})
    _set_and_emit(device, DEVICE_IFACE, {"ServicesResolved": _bool(True)})


def _disconnect(device: Any) -> None:
    if not device.props[DEVICE_IFACE]["Connected"]:
        raise _error("org.bluez.Error.NotConnected", "Not Connected")
    _drop_connection(device)


def _advertise_again(device: Any) -> None:
    props = device.props[DEVICE_IFACE]
    if "RSSI" in props:
        _emit_changed(device, DEVICE_IFACE, {"RSSI": props["RSSI"]})


@dbus.service.method(CONTROL_IFACE, in_signature="ssba{sv}", out_signature="o")
def AddLeDevice(self: Any, adapter_name: str, address: str, connectable: bool, advert: Any) -> Any:
    """Create a present LE device; ``advert`` holds its first advertisement's typed properties."""
    adapter_path = "/org/bluez/" + adapter_name
    if adapter_path not in mockobject.objects:
        raise _error("org.bluez.Mock.NoSuchAdapter", f"Adapter {adapter_name} does not exist.")
    address = str(address).upper()
    path = adapter_path + "/dev_" + address.replace(":", "_")
    if path in mockobject.objects:
        raise _error("org.freedesktop.DBus.Mock.NameError", f"device {address} already exists")
    props: dict[str, Any] = {
        "Address": dbus.String(address, variant_level=1),
        "AddressType": dbus.String("public", variant_level=1),
        "Alias": dbus.String(address.replace(":", "-"), variant_level=1),
        "Adapter": dbus.ObjectPath(adapter_path, variant_level=1),
        "Paired": _bool(False),
        "Bonded": _bool(False),
        "Trusted": _bool(False),
        "Blocked": _bool(False),
        "LegacyPairing": _bool(False),
        "Connected": _bool(False),
        "ServicesResolved": _bool(False),
        "UUIDs": dbus.Array([], signature="s", variant_level=1),
    }
    for key, value in advert.items():
        props[str(key)] = value
    if "Name" in props:
        props["Alias"] = dbus.String(str(props["Name"]), variant_level=1)
    self.AddObject(path, DEVICE_IFACE, props, [
        ("Connect", "", "", _connect),
        ("Disconnect", "", "", _disconnect),
        ("ConnectProfile", "s", "", ""),
        ("DisconnectProfile", "s", "", ""),
    ])  # fmt: skip
    device = mockobject.objects[path]
    device.lowband_present = True
    device.lowband_connectable = bool(connectable)
    device.lowband_connects = 0
    _emit_added(path, {DEVICE_IFACE: props})
    return dbus.ObjectPath(path)


@dbus.service.method(CONTROL_IFACE, in_signature="oa{sv}", out_signature="")
def Advertise(self: Any, path: Any, advert: Any) -> None:
    """A new advertisement: set the given Device1 properties and emit them in one PropertiesChanged."""
    device = _object(path, "device")
    changed = {str(k): v for k, v in advert.items()}
    if "Name" in changed:
        changed["Alias"] = dbus.String(str(changed["Name"]), variant_level=1)
    device.lowband_present = True
    _set_and_emit(device, DEVICE_IFACE, changed)


@dbus.service.method(CONTROL_IFACE, in_signature="ob", out_signature="")
def SetPresent(self: Any, path: Any, present: bool) -> None:
    """Away: the link drops (if up) and the device stops advertising. Back: it advertises again."""
    device = _object(path, "device")
    device.lowband_present = bool(present)
    if not present:
        if device.props[DEVICE_IFACE]["Connected"]:
            _drop_connection(device)
    else:
        _advertise_again(device)


@dbus.service.method(CONTROL_IFACE, in_signature="o", out_signature="bbu")
def DeviceState(self: Any, path: Any) -> Any:
    """(present, connected, number of successful Connect calls)."""
    device = _object(path, "device")
    return (dbus.Boolean(device.lowband_present), dbus.Boolean(device.props[DEVICE_IFACE]["Connected"]),
            dbus.UInt32(device.lowband_connects))  # fmt: skip


# --- GATT ------------------------------------------------------------------------------------


def _require_connected(obj: Any) -> None:
    if not _device_of(obj).props[DEVICE_IFACE]["Connected"]:
        raise _error("org.bluez.Error.Failed", "Not connected")


def _read_value(char: Any, options: Any) -> Any:
    _require_connected(char)
    props = char.props[CHAR_IFACE]
    if "read" not in props["Flags"]:
        raise _error("org.bluez.Error.NotPermitted", "Read not permitted")
    # bluetoothd updates the Value property with what it read, and a client that subscribed
    # sees that as a notification too (bleak documents the duplicate): so does the fake.
    value = dbus.Array(props["Value"], signature="y", variant_level=1)
    _set_and_emit(char, CHAR_IFACE, {"Value": value})
    return dbus.Array(props["Value"], signature="y")


def _write_value(char: Any, value: Any, options: Any) -> None:
    _require_connected(char)
    flags = char.props[CHAR_IFACE]["Flags"]
    kind = str(options.get("type", "request" if "write" in flags else "command"))
    needed = "write" if kind == "request" else "write-without-response"
    if needed not in flags:
        raise _error("org.bluez.Error.NotPermitted", "Write not permitted")
    char.lowband_writes.append((bytes(bytearray(value)), kind))


def _start_notify(char: Any) -> None:
    _require_connected(char)
    props = char.props[CHAR_IFACE]
    if "notify" not in props["Flags"] and "indicate" not in props["Flags"]:
        raise _error("org.bluez.Error.NotSupported", "Operation is not supported")
    if not props["Notifying"]:
        _set_and_emit(char, CHAR_IFACE, {"Notifying": _bool(True)})


def _stop_notify(char: Any) -> None:
    if char.props[CHAR_IFACE]["Notifying"]:
        _set_and_emit(char, CHAR_IFACE, {"Notifying": _bool(False)})


@dbus.service.method(CONTROL_IFACE, in_signature="osq", out_signature="o")
def AddGattService(self: Any, device_path: Any, uuid: str, handle: int) -> Any:
    """A primary GATT service of a device (path ``.../serviceXXXX``, as BlueZ names them)."""
    _object(device_path, "device")
    path = f"{device_path}/service{int(handle):04x}"
    props = {
        "UUID": dbus.String(str(uuid).lower(), variant_level=1),
        "Device": dbus.ObjectPath(device_path, variant_level=1),
        "Primary": _bool(True),
        "Includes": dbus.Array([], signature="o", variant_level=1),
        "Handle": dbus.UInt16(int(handle), variant_level=1),
    }
    self.AddObject(path, SERVICE_IFACE, props, [])
    _emit_added(path, {SERVICE_IFACE: props})
    return dbus.ObjectPath(path)


@dbus.service.method(CONTROL_IFACE, in_signature="osqasay", out_signature="o")
def AddGattCharacteristic(self: Any, service_path: Any, uuid: str, handle: int, flags: Any, value: Any) -> Any:
    """A characteristic (``.../charXXXX``) with its flags ("read", "notify", "write"...) and value."""
    _object(service_path, "service")
    path = f"{service_path}/char{int(handle):04x}"
    props = {
        "UUID": dbus.String(str(uuid).lower(), variant_level=1),
        "Service": dbus.ObjectPath(service_path, variant_level=1),
        "Value": dbus.Array(value, signature="y", variant_level=1),
        "Notifying": _bool(False),
        "Flags": dbus.Array([str(f) for f in flags], signature="s", variant_level=1),
        "Handle": dbus.UInt16(int(handle), variant_level=1),
        "MTU": dbus.UInt16(247, variant_level=1),
    }
    self.AddObject(path, CHAR_IFACE, props, [
        ("ReadValue", "a{sv}", "ay", _read_value),
        ("WriteValue", "aya{sv}", "", _write_value),
        ("StartNotify", "", "", _start_notify),
        ("StopNotify", "", "", _stop_notify),
    ])  # fmt: skip
    mockobject.objects[path].lowband_writes = []
    _emit_added(path, {CHAR_IFACE: props})
    return dbus.ObjectPath(path)


@dbus.service.method(CONTROL_IFACE, in_signature="oayb", out_signature="b")
def SetValue(self: Any, path: Any, value: Any, notify: bool) -> Any:
    """Store a characteristic's value; with ``notify`` and while notifying, send it as a notification.

    Returns whether a notification was sent.
    """
    char = _object(path, "characteristic")
    new = dbus.Array(value, signature="y", variant_level=1)
    props = char.props[CHAR_IFACE]
    if notify and props["Notifying"]:
        _set_and_emit(char, CHAR_IFACE, {"Value": new})
        return dbus.Boolean(True)
    props["Value"] = new
    return dbus.Boolean(False)


@dbus.service.method(CONTROL_IFACE, in_signature="o", out_signature="a(ays)b")
def CharacteristicState(self: Any, path: Any) -> Any:
    """The values written to a characteristic (with "request" or "command") and whether it notifies."""
    char = _object(path, "characteristic")
    writes = dbus.Array([dbus.Struct((dbus.ByteArray(v), dbus.String(k))) for v, k in char.lowband_writes],
                        signature="(ays)")  # fmt: skip
    return writes, dbus.Boolean(char.props[CHAR_IFACE]["Notifying"])
