"""GATT Environmental Sensing sensors: the sans-I/O core with vectors, then bleak against the fake BlueZ.

The fake (sim/bluez.py) behaves as bluetoothd does where it matters here: a
read also updates ``Value`` (a subscribed client sees it as a notification),
notifications stop when the link drops, ``Connect`` fails while the device is
out of range. The last test runs the whole path in a real gateway: the
bleak scanner and the GATT links of the BLE component, readings read back
from the room with matrix-nio, each exactly once.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import nio
import pytest
from harness import gateway_in_loop, until
from test_component import messages, readings_of, wait_messages
from test_decode import bthome_plain, temp_hum

from lowband.gateway.ble.component import BleComponent
from lowband.gateway.ble.gatt import GattCommandError, GattLink, GattSensors, make_gatt_link
from lowband.gateway.ble.gatt_core import (
    HUMIDITY_UUID,
    PRESSURE_UUID,
    TEMPERATURE_UUID,
    Backoff,
    GattRefusal,
    GattValue,
    Reading,
    ReadingAssembler,
    parse_characteristic,
    value_name,
)
from lowband.gateway.ble.registry import BleRegistry, GattConfig, SensorConfig, make_sensor
from lowband.gateway.config import BleConfig
from lowband.sim.bluez import FakeBluez

DESK = "C0:FF:EE:00:00:03"
PORCH = "A4:C1:38:00:00:01"
COMMAND = "8ec90001-f315-4f60-9fb8-838830daea50"


def temp(centi: int) -> bytes:
    return struct.pack("<h", centi)


def hum(centi: int) -> bytes:
    return struct.pack("<H", centi)


def pres(decipascal: int) -> bytes:
    return struct.pack("<I", decipascal)


# --- sans-I/O: characteristic values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("uuid", "data", "expected"),
    [
        (TEMPERATURE_UUID, bytes.fromhex("6608"), GattValue("temperature", "Cel", 21.5)),  # 2150
        (TEMPERATURE_UUID, bytes.fromhex("2efb"), GattValue("temperature", "Cel", -12.34)),  # -1234
        (TEMPERATURE_UUID, bytes.fromhex("ff7f"), GattValue("temperature", "Cel", 327.67)),  # the largest
        (TEMPERATURE_UUID, bytes.fromhex("0080"), GattRefusal("unknown_value", "temperature")),  # 0x8000: not known
        (HUMIDITY_UUID, bytes.fromhex("c611"), GattValue("humidity", "%RH", 45.5)),  # 4550
        (HUMIDITY_UUID, bytes.fromhex("1027"), GattValue("humidity", "%RH", 100.0)),  # 10000
        (HUMIDITY_UUID, bytes.fromhex("ffff"), GattRefusal("unknown_value", "humidity")),
        (PRESSURE_UUID, bytes.fromhex("02760f00"), GattValue("pressure", "hPa", 1013.25)),  # 1013250 x 0.1 Pa
        (PRESSURE_UUID, bytes.fromhex("00000000"), GattValue("pressure", "hPa", 0.0)),
        (TEMPERATURE_UUID, b"\x66", GattRefusal("length", "temperature: 1 bytes, expected 2")),
        (TEMPERATURE_UUID, b"", GattRefusal("length", "temperature: 0 bytes, expected 2")),
        (PRESSURE_UUID, bytes.fromhex("02760f"), GattRefusal("length", "pressure: 3 bytes, expected 4")),
        (HUMIDITY_UUID, bytes.fromhex("c61100"), GattRefusal("length", "humidity: 3 bytes, expected 2")),
        ("00002a19-0000-1000-8000-00805f9b34fb", b"\x50", GattRefusal("unsupported",
                                                                      "00002a19-0000-1000-8000-00805f9b34fb")),
    ],
)  # fmt: skip
def test_characteristic_vectors(uuid: str, data: bytes, expected: GattValue | GattRefusal) -> None:
    assert parse_characteristic(uuid, data) == expected
    assert parse_characteristic(uuid.upper(), data) == expected


def test_value_names() -> None:
    assert [value_name(u) for u in (TEMPERATURE_UUID, HUMIDITY_UUID, PRESSURE_UUID)] == [
        "temperature", "humidity", "pressure"]  # fmt: skip
    assert value_name("00002a19-0000-1000-8000-00805f9b34fb") is None


# --- sans-I/O: back-off -------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, jitter=0.1, rand=lambda: 0.5)  # 0.5: no jitter
    assert [backoff.next_delay() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    backoff.reset()
    assert backoff.next_delay() == 1.0
    low = Backoff(initial=10.0, maximum=60.0, jitter=0.1, rand=lambda: 0.0)
    high = Backoff(initial=10.0, maximum=60.0, jitter=0.1, rand=lambda: 0.999999)
    assert low.next_delay() == 9.0
    assert high.next_delay() == pytest.approx(11.0, abs=1e-4)
    capped = Backoff(initial=60.0, maximum=60.0, jitter=0.5, rand=lambda: 0.999999)
    assert capped.next_delay() == 60.0  # jitter never goes past the cap
    assert Backoff(initial=1.0, maximum=8.0).base(1000) == 8.0  # no overflow after many failures
    for bad in ({"initial": 0.0}, {"initial": 5.0, "maximum": 1.0}, {"factor": 0.5}, {"jitter": 1.0}):
        with pytest.raises(ValueError):
            Backoff(**bad)  # type: ignore[arg-type]


# --- sans-I/O: reading assembly -----------------------------------------------------------------


def test_assembler_merges_a_burst_and_flushes_partial_samples() -> None:
    asm = ReadingAssembler(["temperature", "humidity", "pressure"], settle_s=0.3)
    assert asm.next_deadline() is None
    assert asm.add(GattValue("temperature", "Cel", 21.5), now=10.0) == []
    assert asm.next_deadline() == pytest.approx(10.3)
    assert asm.add(GattValue("humidity", "%RH", 45.5), now=10.1) == []
    full = asm.add(GattValue("pressure", "hPa", 1013.25), now=10.2)
    assert full == [Reading({"temperature": 21.5, "humidity": 45.5, "pressure": 1013.25},
                            {"temperature": "Cel", "humidity": "%RH", "pressure": "hPa"})]  # fmt: skip
    # Only the temperature changes: it goes out once the settle time has passed.
    asm.add(GattValue("temperature", "Cel", 22.0), now=20.0)
    assert asm.poll(20.29) == []
    assert asm.poll(20.3) == [Reading({"temperature": 22.0}, {"temperature": "Cel"})]
    assert asm.poll(30.0) == [] and asm.next_deadline() is None
    # The same characteristic twice before the sample is complete: the first value is not lost.
    asm.add(GattValue("temperature", "Cel", 22.5), now=40.0)
    assert asm.add(GattValue("temperature", "Cel", 22.6), now=40.1) == [
        Reading({"temperature": 22.5}, {"temperature": "Cel"})]  # fmt: skip
    assert asm.flush() == [Reading({"temperature": 22.6}, {"temperature": "Cel"})]
    assert asm.flush() == []


# --- bleak against the fake BlueZ -----------------------------------------------------------------


class Sink:
    """Records what a GATT link hands the component."""

    def __init__(self) -> None:
        self.readings: list[dict[str, float]] = []
        self.units: dict[str, str] = {}
        self.states: list[bool] = []

    def on_gatt_reading(self, name: str, values: dict[str, float], units: dict[str, str],
                        wall_ms: int | None = None) -> None:  # fmt: skip
        assert name == "desk"
        self.readings.append(values)
        self.units.update(units)

    def on_gatt_state(self, name: str, connected: bool) -> None:
        self.states.append(connected)


def desk_link(sink: Sink, command: str | None = COMMAND) -> GattLink:
    sensor = make_sensor("desk", DESK, format="gatt", gatt=GattConfig(command=command))
    return GattLink(sensor, sink, backoff=Backoff(initial=0.1, maximum=0.4, jitter=0), connect_timeout=1.0,
                    settle_s=0.2)  # fmt: skip


def test_notifications_disconnect_and_come_back_each_reading_once(fake_bluez: FakeBluez) -> None:
    fake_bluez.add_adapter("hci0")
    ess = fake_bluez.add_environmental_sensor(DESK, temperature=temp(2150), humidity=hum(4550),
                                              pressure=pres(1013250), command_uuid=COMMAND)  # fmt: skip
    sink = Sink()

    async def scenario() -> None:
        link = desk_link(sink)
        await link.start()
        try:
            # Connected: one reading of the three values, then notifications on.
            await until(
                lambda: (
                    len(sink.readings) == 1
                    and all(
                        fake_bluez.characteristic_state(c).notifying
                        for c in (ess.temperature, ess.humidity, ess.pressure)
                    )
                )
            )
            # A burst of three notifications is one reading; a lone one goes out after the settle time.
            for char, value in (
                (ess.temperature, temp(2200)),
                (ess.humidity, hum(4600)),
                (ess.pressure, pres(1013300)),
            ):
                assert fake_bluez.notify(char, value)
            await until(lambda: len(sink.readings) == 2)
            assert fake_bluez.notify(ess.temperature, temp(2250))
            await until(lambda: len(sink.readings) == 3)
            # A command, written with response (the characteristic allows it).
            await link.write_command(b"led on")
            assert fake_bluez.characteristic_state(ess.command or "").writes == [(b"led on", "request")]

            # Out of range: the link drops, nothing is notified, commands are refused with the reason.
            fake_bluez.set_present(DESK, False)
            await until(lambda: sink.states == [True, False])
            assert not fake_bluez.notify(ess.temperature, temp(2300))
            with pytest.raises(GattCommandError, match="desk is not connected"):
                await link.write_command(b"led off")
            # Reconnect attempts fail while it is away (each scans for it for connect_timeout, 1 s here).
            await until(lambda: link.stats().get("connect_failures", 0) >= 1)
            assert "was not found" in link.stats()["last_error"]

            # Back: connected again, the current values once, then notifications again, each once.
            fake_bluez.set_present(DESK, True)
            await until(lambda: sink.states == [True, False, True] and len(sink.readings) == 4
                        and fake_bluez.characteristic_state(ess.temperature).notifying)  # fmt: skip
            assert fake_bluez.notify(ess.temperature, temp(2350))
            await until(lambda: len(sink.readings) == 5)
            await asyncio.sleep(0.4)  # anything extra would show up now
        finally:
            await link.stop()

        assert sink.readings == [
            {"temperature": 21.5, "humidity": 45.5, "pressure": 1013.25},
            {"temperature": 22.0, "humidity": 46.0, "pressure": 1013.3},
            {"temperature": 22.5},
            {"temperature": 23.0, "humidity": 46.0, "pressure": 1013.3},  # read on reconnect (23.00 set while away)
            {"temperature": 23.5},
        ]
        assert sink.units == {"temperature": "Cel", "humidity": "%RH", "pressure": "hPa"}
        assert sink.states == [True, False, True, False]
        state = fake_bluez.device_state(DESK)
        assert state.connects == 2 and not state.connected  # stop() disconnected

    asyncio.run(scenario())


def test_polling_commands_without_response_and_refusals(fake_bluez: FakeBluez) -> None:
    fake_bluez.add_adapter("hci0")
    ess = fake_bluez.add_environmental_sensor(DESK, temperature=temp(1800), humidity=b"\x01",  # a bad length
                                              pressure=pres(990000), notify=False, command_uuid=COMMAND,
                                              command_flags=("write-without-response",))  # fmt: skip
    sink = Sink()

    async def scenario() -> None:
        # poll_s below the registry's 1 s minimum, to keep the test short: built directly, not by make_sensor.
        sensor = SensorConfig("desk", DESK, "gatt", gatt=GattConfig(command=COMMAND, subscribe=False, poll_s=0.3))
        manager = GattSensors([sensor], sink, link_factory=lambda s: GattLink(
            s, sink, backoff=Backoff(initial=0.1, maximum=0.4), connect_timeout=5))  # fmt: skip
        await manager.start()
        try:
            await until(lambda: len(sink.readings) >= 2)  # the read on connect, then one every poll_s
            fake_bluez.set_value(ess.temperature, temp(1850))
            await until(lambda: sink.readings[-1].get("temperature") == 18.5)
            await manager.write("desk", b"\x01\x02")
            assert fake_bluez.characteristic_state(ess.command or "").writes == [(b"\x01\x02", "command")]
            with pytest.raises(GattCommandError, match="is not a GATT sensor"):
                await manager.write("porch", b"x")
            link = manager.links["desk"]
            assert link.stats()["refused_length"] >= 2  # the humidity value is refused each time, counted
            # A sensor whose command characteristic is not writable, and one without a command.
            manager.update(
                [
                    SensorConfig(
                        "desk", DESK, "gatt", gatt=GattConfig(command=TEMPERATURE_UUID, subscribe=False, poll_s=0.3)
                    )
                ]
            )
            await until(lambda: "desk" in manager.links and manager.links["desk"].connected)
            with pytest.raises(GattCommandError, match="is not writable"):
                await manager.write("desk", b"x")
            manager.update([])
            await until(lambda: not manager.links and not fake_bluez.device_state(DESK).connected)
        finally:
            await manager.stop()
        assert all(set(r) == {"temperature", "pressure"} for r in sink.readings)
        assert sink.readings[0] == {"temperature": 18.0, "pressure": 990.0}

    asyncio.run(scenario())


# --- the whole path: a real gateway, the bleak scanner and GATT links, the room ------------------


def test_sensors_through_bleak_into_the_room_exactly_once(fake_bluez: FakeBluez, tmp_path: Path) -> None:
    fake_bluez.add_adapter("hci0")
    first = bthome_plain(b"\x00\x11" + temp_hum(2150, 4020))
    fake_bluez.add_device(PORCH, rssi=-60, service_data={0xFCD2: first})
    ess = fake_bluez.add_environmental_sensor(DESK, temperature=temp(2150), humidity=hum(4550),
                                              pressure=pres(1013250), command_uuid=COMMAND)  # fmt: skip

    async def scenario() -> None:
        services: list[Any] = []
        async with gateway_in_loop(tmp_path, on_ready=services.append, ble=BleConfig(enabled=True)) as base:
            component: BleComponent = services[0].components["ble"]
            assert component.gatt_factory is make_gatt_link  # the real bleak parts, not stand-ins
            alice = nio.AsyncClient(base, "alice")
            assert isinstance(await alice.register("alice", "secret-pw"), nio.RegisterResponse)
            created = await alice.room_create(alias="sensors", visibility=nio.RoomVisibility.public,
                                              preset=nio.RoomPreset.public_chat)  # fmt: skip
            assert isinstance(created, nio.RoomCreateResponse), created
            room = created.room_id
            registry = BleRegistry(tmp_path / "data")
            registry.add(make_sensor("porch", PORCH, format="bthome", rooms=[room]))
            registry.add(make_sensor("desk", DESK, format="gatt", rooms=[room], gatt=GattConfig(command=COMMAND)))
            await component.reload()
            porch, desk = "@ble_porch:localhost", "@ble_desk:localhost"

            # The porch packet is heard over and over (the fake re-advertises while scanning): one reading.
            await wait_messages(alice, room, lambda ev: len(readings_of(ev, porch)) == 1
                                and len(readings_of(ev, desk)) == 1, timeout=20)  # fmt: skip
            fake_bluez.advertise(PORCH, service_data={0xFCD2: bthome_plain(b"\x00\x12" + temp_hum(2160, 4000))})
            await until(lambda: fake_bluez.characteristic_state(ess.temperature).notifying, timeout=10)
            fake_bluez.notify(ess.temperature, temp(2200))
            await wait_messages(alice, room, lambda ev: len(readings_of(ev, porch)) == 2
                                and len(readings_of(ev, desk)) == 2)  # fmt: skip

            # The desk sensor goes away and comes back: its readings still arrive once each.
            fake_bluez.set_present(DESK, False)
            await until(lambda: not fake_bluez.device_state(DESK).connected)
            fake_bluez.set_present(DESK, True)
            await until(lambda: fake_bluez.characteristic_state(ess.temperature).notifying, timeout=15)
            fake_bluez.notify(ess.temperature, temp(2300))
            await wait_messages(alice, room, lambda ev: len(readings_of(ev, desk)) == 4)

            # A command from the room reaches the characteristic.
            sent = await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "!desk led on"})
            assert isinstance(sent, nio.RoomSendResponse), sent
            await until(lambda: fake_bluez.characteristic_state(ess.command or "").writes == [(b"led on", "request")])

            await asyncio.sleep(0.5)  # anything extra would show up now
            got = await messages(alice, room)
            assert [e["content"]["body"] for e in readings_of(got, porch)] == [
                "temperature 21.5 Cel, humidity 40.2 %RH", "temperature 21.6 Cel, humidity 40 %RH"]  # fmt: skip
            assert [e["content"]["body"] for e in readings_of(got, desk)] == [
                "temperature 21.5 Cel, humidity 45.5 %RH, pressure 1013.25 hPa",
                "temperature 22 Cel",
                "temperature 22 Cel, humidity 45.5 %RH, pressure 1013.25 hPa",  # read on reconnect
                "temperature 23 Cel",
            ]  # fmt: skip
            stats = component.stats()
            assert stats["duplicates"] >= 1  # the repeats were heard and folded
            assert stats["commands_written"] == 1
            await alice.close()

    asyncio.run(scenario())
