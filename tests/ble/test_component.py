"""The BLE component in a real in-process gateway: readings in rooms exactly once, seen through matrix-nio.

A scanner stand-in (the factory the component takes) hands advertisements to
``on_advertisement``, as the bleak scanner does; the room side is the real
client API (``/messages``) through matrix-nio.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nio
import pytest
from harness import gateway_in_loop, until
from test_decode import KEY, bthome_encrypted, bthome_plain, temp_hum

import lowband.gateway.app as server
from lowband.codecs import compact
from lowband.codecs.context import Channel, Context
from lowband.gateway.ble.advert import Advertisement, make_advertisement
from lowband.gateway.ble.component import BleComponent, start_ble
from lowband.gateway.ble.registry import BleRegistry, GattConfig, make_sensor
from lowband.gateway.config import BleConfig, ConfigError, load_config

PORCH = "A4:C1:38:00:00:01"
CELLAR = "A4:C1:38:00:00:02"
DESK = "C0:FF:EE:00:00:03"
BTHOME = 0xFCD2


class FakeScanner:
    """What ``make_scanner`` returns, minus the radio: the test calls ``send``."""

    def __init__(self, settings: BleConfig, on_advertisement: Callable[[Advertisement], None]) -> None:
        self.settings = settings
        self.on_advertisement = on_advertisement
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    def send(self, address: str, data: bytes, rssi: int = -60) -> None:
        assert self.running
        self.on_advertisement(make_advertisement(address, service_data={BTHOME: data}, rssi=rssi))


class FakeGatt:
    """Stands in for gateway/ble/gatt.py: one link per GATT sensor; records the commands written."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.written: list[tuple[str, bytes]] = []

    def link(self, sensor: Any, settings: BleConfig, component: BleComponent) -> FakeGatt.Link:
        return FakeGatt.Link(self, sensor.name)

    class Link:
        def __init__(self, fake: FakeGatt, name: str) -> None:
            self.fake, self.name = fake, name

        async def start(self) -> None:
            self.fake.running.add(self.name)

        async def stop(self) -> None:
            self.fake.running.discard(self.name)

        async def write_command(self, data: bytes) -> None:
            self.fake.written.append((self.name, data))


@contextlib.asynccontextmanager
async def ble_gateway(tmp_path: Path, settings: BleConfig) -> AsyncIterator[tuple[str, Any, FakeScanner, FakeGatt]]:
    """An in-loop gateway whose BLE component has the fake scanner and GATT manager; (base, services, scanner, gatt)."""
    made: dict[str, Any] = {}

    def scanner_factory(s: BleConfig, callback: Callable[[Advertisement], None]) -> FakeScanner:
        made["scanner"] = FakeScanner(s, callback)
        return made["scanner"]

    made["gatt"] = FakeGatt()

    async def component(services: Any) -> Any:
        return await start_ble(services, scanner_factory=scanner_factory, gatt_factory=made["gatt"].link)

    saved = list(server.COMPONENTS)
    server.COMPONENTS[:] = [c for c in saved if getattr(c, "__name__", "") != "start_ble"] + [component]
    ready: list[Any] = []
    try:
        async with gateway_in_loop(tmp_path, on_ready=ready.append, ble=settings) as base:
            yield base, ready[0], made["scanner"], made["gatt"]
    finally:
        server.COMPONENTS[:] = saved


async def messages(client: nio.AsyncClient, room_id: str) -> list[dict[str, Any]]:
    page = await client.room_messages(room_id, start=None, limit=1000)  # type: ignore[arg-type]
    assert isinstance(page, nio.RoomMessagesResponse), page
    return [e.source for e in reversed(page.chunk) if e.source["type"] == "m.room.message"]


async def wait_messages(client: nio.AsyncClient, room_id: str, predicate: Callable[[list[dict[str, Any]]], bool],
                        timeout: float = 10.0) -> list[dict[str, Any]]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        got = await messages(client, room_id)
        if predicate(got):
            return got
        assert time.monotonic() < deadline, [(e["sender"], e["content"].get("body")) for e in got]
        await asyncio.sleep(0.05)


def device_reading(values: list[tuple[str, str, int, int]], ts_ms: int) -> dict[str, Any]:
    """The content a link device's compact telemetry with these channels expands to (the reference)."""
    ctx = Context(version=1, rooms=("!r:localhost",), senders=("@dev.x:localhost",), event_types=(), keys=(),
                  channels=tuple(Channel(n, u, s) for n, u, _, s in values))  # fmt: skip
    form = compact.CompactForm(kind=compact.KIND_TELEMETRY, values=[(i, v[2]) for i, v in enumerate(values)])
    event = compact.decode(compact.encode_form(form, ctx), ctx, ts_ms)
    return dict(event["content"])


def readings_of(events: list[dict[str, Any]], sender: str) -> list[dict[str, Any]]:
    return [e for e in events if e["sender"] == sender and compact.SENML_KEY in e["content"]]


def test_readings_reach_the_room_exactly_once_as_device_telemetry(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = BleConfig(enabled=True, silent_factor=1.5)
        async with ble_gateway(tmp_path, settings) as (base, services, scanner, gatt):
            alice = nio.AsyncClient(base, "alice")
            assert isinstance(await alice.register("alice", "secret-pw"), nio.RegisterResponse)
            created = await alice.room_create(alias="sensors", visibility=nio.RoomVisibility.public,
                                              preset=nio.RoomPreset.public_chat)  # fmt: skip
            assert isinstance(created, nio.RoomCreateResponse), created
            room = created.room_id
            # @ble_* is reserved: nobody registers into it.
            squatter = nio.AsyncClient(base, "ble_porch")
            refused = await squatter.register("ble_porch", "secret-pw")
            assert isinstance(refused, nio.ErrorResponse) and refused.status_code == "M_EXCLUSIVE", refused
            await squatter.close()

            registry = BleRegistry(tmp_path / "data")
            registry.add(make_sensor("porch", PORCH, format="bthome", rooms=["#sensors:localhost"], interval_s=1))
            registry.add(make_sensor("cellar", CELLAR, format="bthome", key=KEY.hex(), rooms=[room], interval_s=600))
            registry.add(make_sensor("desk", DESK, format="gatt", rooms=[room], interval_s=600,
                                     gatt=GattConfig(command="2a56")))  # fmt: skip
            component: BleComponent = services.components["ble"]
            await component.reload()  # what the 2 s poll does
            await until(lambda: all(component.stats()["sensors"][n]["rooms"] == [room]
                                    for n in ("porch", "cellar", "desk")))  # fmt: skip

            # porch: one packet heard five times, then a second packet; garbage and an unknown object id.
            first = bthome_plain(b"\x00\x11" + temp_hum(2150, 4020))
            for _ in range(5):
                scanner.send(PORCH, first)
            scanner.send(PORCH, b"")
            scanner.send(PORCH, b"\x40\xfe\x01\x02")
            scanner.send(PORCH, bthome_plain(b"\x00\x12" + temp_hum(2160, 4000)))
            # cellar: encrypted, repeated, then a replay of an older counter and a plaintext downgrade.
            old = bthome_encrypted(CELLAR, temp_hum(1900, 6000), counter=700)
            new = bthome_encrypted(CELLAR, temp_hum(1910, 6000), counter=701)
            scanner.send(CELLAR, old)
            scanner.send(CELLAR, old)
            scanner.send(CELLAR, new)
            scanner.send(CELLAR, old)
            scanner.send(CELLAR, bthome_plain(temp_hum(9999, 1)))
            # desk: a GATT notification, and a command from the room.
            component.on_gatt_reading("desk", {"temperature": 22.25}, {"temperature": "Cel"})

            porch, cellar, desk = "@ble_porch:localhost", "@ble_cellar:localhost", "@ble_desk:localhost"
            got = await wait_messages(alice, room, lambda ev: len(readings_of(ev, porch)) >= 2
                                      and len(readings_of(ev, cellar)) >= 2 and len(readings_of(ev, desk)) >= 1)  # fmt: skip
            await asyncio.sleep(0.3)  # anything extra would show up now
            got = await messages(alice, room)
            p, c, d = readings_of(got, porch), readings_of(got, cellar), readings_of(got, desk)
            assert [e["content"]["body"] for e in p] == ["temperature 21.5 Cel, humidity 40.2 %RH",
                                                         "temperature 21.6 Cel, humidity 40 %RH"]  # fmt: skip
            assert [e["content"]["body"] for e in c] == ["temperature 19 Cel, humidity 60 %RH",
                                                         "temperature 19.1 Cel, humidity 60 %RH"]  # fmt: skip
            assert [e["content"]["body"] for e in d] == ["temperature 22.25 Cel"]
            # Byte for byte the content a link device's reading has (same builder, same SenML).
            ts = p[0]["origin_server_ts"]
            assert p[0]["content"] == device_reading(
                [("temperature", "Cel", 215, -1), ("humidity", "%RH", 402, -1)], ts
            )
            assert p[0]["content"][compact.SENML_KEY][0]["bt"] == ts // 1000

            stats = component.stats()
            assert stats["refused"] == {"malformed": 1, "no_values": 1, "replay": 1, "downgrade": 1}
            assert stats["duplicates"] == 5  # four porch repeats, one cellar repeat
            assert stats["posted"] == 5
            assert stats["sensors"]["cellar"]["rssi"] == -60
            families = {f.name: f for f in component.metrics()}
            assert {tuple(s.labels.values()): s.value for s in families["lowband_ble_readings"].samples} == {
                ("porch",): 2, ("cellar",): 2, ("desk",): 1}  # fmt: skip

            # Presence: porch (interval 1 s × 1.5) goes silent, then comes back.
            await wait_messages(alice, room, lambda ev: any("porch went silent" in e["content"]["body"] for e in ev))
            scanner.send(PORCH, bthome_plain(b"\x00\x13" + temp_hum(2170, 4000)))
            got = await wait_messages(alice, room, lambda ev: any("porch is back" in e["content"]["body"] for e in ev)
                                      and len(readings_of(ev, porch)) == 3)  # fmt: skip

            # A command for the GATT sensor from alice (room creator, power level 100).
            sent = await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "!desk led on"})
            assert isinstance(sent, nio.RoomSendResponse), sent
            await until(lambda: gatt.written == [("desk", b"led on")])
            assert gatt.running == {"desk"}

            # `lowband ble remove desk`: the sensor says so and leaves; its readings are no longer taken.
            registry.remove("desk")
            await component.reload()
            await wait_messages(alice, room, lambda ev: any("desk was removed" in e["content"]["body"] for e in ev))
            assert services.store.membership(room, desk) == "leave"
            component.on_gatt_reading("desk", {"temperature": 1.0}, {"temperature": "Cel"})
            assert component.stats()["refused"].get("unknown_sensor") == 1
            assert gatt.running == set()
            await alice.close()

    asyncio.run(scenario())


def test_a_flood_of_random_addresses_through_the_component(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = BleConfig(enabled=True, unknown_cap=100, queue_size=50_000)
        async with ble_gateway(tmp_path, settings) as (_, services, scanner, _gatt):
            component: BleComponent = services.components["ble"]
            for i in range(20_000):
                address = ":".join(f"{(i * 7919 + k * 104729) % 256:02X}" for k in range(5)) + f":{i % 256:02X}"
                scanner.send(address, bytes([0x40, i % 256, (i >> 8) % 256]))
            await until(lambda: component.stats()["adverts"] == 20_000, timeout=30)
            stats = component.stats()
            assert stats["unknown_tracked"] == 100
            assert stats["unknown_evicted"] >= 19_000
            assert stats["queue_full"] == 0

    asyncio.run(scenario())


def test_ble_config_section() -> None:
    config = load_config(None)
    assert config.ble == BleConfig()


def test_ble_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[ble]\nenabled = true\nadapter = "hci1"\nmode = "active"\nunknown_cap = 50\n')
    assert load_config(path).ble == BleConfig(enabled=True, adapter="hci1", mode="active", unknown_cap=50)
    for bad in ('mode = "loud"', "unknown_cap = 0", 'adapter = "../x"', "colour = 1", "enabled = 1"):
        path.write_text(f"[ble]\n{bad}\n")
        with pytest.raises(ConfigError, match="ble"):
            load_config(path)


def test_real_bleak_scanner_against_fake_bluez_into_the_room(tmp_path: Path, fake_bluez: Any) -> None:
    """bleak (gateway/ble/scanner.py) on a fake BlueZ → the component → the room: each reading exactly once.

    The fake re-advertises every device every 0.2 s, as a sensor repeats its packet: those repeats, a replayed
    encrypted packet and a plaintext downgrade give no event.
    """
    from lowband.gateway.ble.scanner import make_scanner

    ruuvi_address = "C7:3A:2B:00:00:03"
    ruuvi_raw = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
    fake_bluez.add_adapter("hci0", passive=True)

    async def scenario() -> None:
        registry = BleRegistry(tmp_path / "data")
        settings = BleConfig(enabled=True, adapter="hci0")
        saved = list(server.COMPONENTS)

        async def component(services: Any) -> Any:
            return await start_ble(services, scanner_factory=make_scanner, gatt_factory=FakeGatt().link)

        server.COMPONENTS[:] = [c for c in saved if getattr(c, "__name__", "") != "start_ble"] + [component]
        ready: list[Any] = []
        try:
            async with gateway_in_loop(tmp_path, on_ready=ready.append, ble=settings) as base:
                services = ready[0]
                ble: BleComponent = services.components["ble"]
                alice = nio.AsyncClient(base, "alice")
                assert isinstance(await alice.register("alice", "secret-pw"), nio.RegisterResponse)
                created = await alice.room_create(
                    visibility=nio.RoomVisibility.public, preset=nio.RoomPreset.public_chat
                )
                assert isinstance(created, nio.RoomCreateResponse), created
                room = created.room_id
                registry.add(make_sensor("porch", PORCH, format="bthome", rooms=[room]))
                registry.add(make_sensor("cellar", CELLAR, format="bthome", key=KEY.hex(), rooms=[room]))
                registry.add(make_sensor("ruuvi", ruuvi_address, format="ruuvitag", rooms=[room]))
                await ble.reload()
                await until(lambda: all(s["rooms"] == [room] for s in ble.stats()["sensors"].values()))

                old = bthome_encrypted(CELLAR, temp_hum(1900, 6000), counter=700)
                fake_bluez.add_device(
                    PORCH,
                    name="ATC_000001",
                    rssi=-61,
                    service_data={BTHOME: bthome_plain(b"\x00\x21" + temp_hum(2150, 4020))},
                )
                fake_bluez.add_device(CELLAR, rssi=-70, service_data={BTHOME: old})
                fake_bluez.add_device(ruuvi_address, name="Ruuvi 0003", rssi=-80,
                                      manufacturer_data={0x0499: ruuvi_raw})  # fmt: skip
                await until(lambda: ble.stats()["posted"] >= 3 and ble.stats()["duplicates"] >= 6, timeout=20)
                fake_bluez.advertise(PORCH, service_data={BTHOME: bthome_plain(b"\x00\x22" + temp_hum(2160, 4000))})
                fake_bluez.advertise(CELLAR, service_data={BTHOME: bthome_encrypted(CELLAR, temp_hum(1910, 6000), 701)})
                await until(lambda: ble.stats()["posted"] >= 5, timeout=20)
                fake_bluez.advertise(CELLAR, service_data={BTHOME: old}, rssi=-69)  # a replay
                await until(lambda: ble.stats()["refused"].get("replay", 0) >= 1, timeout=20)
                fake_bluez.advertise(CELLAR, service_data={BTHOME: bthome_plain(temp_hum(1, 1))}, rssi=-68)
                await until(lambda: ble.stats()["refused"].get("downgrade", 0) >= 1, timeout=20)
                await asyncio.sleep(1.0)  # five more rounds of repeats: still nothing new

                got = await messages(alice, room)
                bodies = {who: [e["content"]["body"] for e in readings_of(got, f"@ble_{who}:localhost")]
                          for who in ("porch", "cellar", "ruuvi")}  # fmt: skip
                assert bodies["porch"] == ["temperature 21.5 Cel, humidity 40.2 %RH",
                                           "temperature 21.6 Cel, humidity 40 %RH"]  # fmt: skip
                assert bodies["cellar"] == ["temperature 19 Cel, humidity 60 %RH",
                                            "temperature 19.1 Cel, humidity 60 %RH"]  # fmt: skip
                assert len(bodies["ruuvi"]) == 1 and "temperature 24.3 Cel" in bodies["ruuvi"][0]
                assert "pressure 1000.44 hPa" in bodies["ruuvi"][0]
                stats = ble.stats()
                assert stats["posted"] == 5 and stats["duplicates"] > 10
                assert stats["sensors"]["porch"]["rssi"] is not None
                await alice.close()
        finally:
            server.COMPONENTS[:] = saved

    asyncio.run(scenario())


def test_an_encrypted_packet_replayed_after_a_restart_makes_no_second_event(tmp_path: Path) -> None:
    """The tracker's counters live in memory; the transaction ID (address, key, counter) outlives a restart."""

    async def scenario() -> None:
        settings = BleConfig(enabled=True)
        first = bthome_encrypted(CELLAR, temp_hum(1900, 6000), counter=700)
        second = bthome_encrypted(CELLAR, temp_hum(1910, 6000), counter=701)
        async with ble_gateway(tmp_path, settings) as (base, services, scanner, _):
            alice = nio.AsyncClient(base, "alice")
            assert isinstance(await alice.register("alice", "secret-pw"), nio.RegisterResponse)
            created = await alice.room_create(visibility=nio.RoomVisibility.public, preset=nio.RoomPreset.public_chat)
            assert isinstance(created, nio.RoomCreateResponse), created
            room = created.room_id
            BleRegistry(tmp_path / "data").add(
                make_sensor("cellar", CELLAR, format="bthome", key=KEY.hex(), rooms=[room])
            )
            component: BleComponent = services.components["ble"]
            await component.reload()
            scanner.send(CELLAR, first)
            scanner.send(CELLAR, second)
            await until(lambda: component.stats()["posted"] == 2)
            await alice.close()
        async with ble_gateway(tmp_path, settings) as (base, services, scanner, _):
            component = services.components["ble"]
            alice = nio.AsyncClient(base, "@alice:localhost")
            await alice.login("secret-pw")
            scanner.send(CELLAR, first)  # recorded before the restart, played back after it
            scanner.send(CELLAR, second)
            # The fresh tracker takes both (its counters start empty); their transaction IDs map to the first events.
            await until(lambda: component.stats()["readings"] == 2 and component.stats()["posted"] == 2)
            third = bthome_encrypted(CELLAR, temp_hum(1920, 6000), counter=702)
            scanner.send(CELLAR, third)
            got = await wait_messages(alice, room, lambda ev: len(readings_of(ev, "@ble_cellar:localhost")) >= 3)
            assert [e["content"]["body"] for e in readings_of(got, "@ble_cellar:localhost")] == [
                "temperature 19 Cel, humidity 60 %RH",
                "temperature 19.1 Cel, humidity 60 %RH",
                "temperature 19.2 Cel, humidity 60 %RH",
            ]
            await alice.close()

    asyncio.run(scenario())


def test_metric_families_of_the_stats() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    from lowband.gateway.ble.metrics import metric_families

    stats = {
        "adverts": 40, "duplicates": 7, "posted": 3, "post_failed": 0, "queue_full": 2, "unknown_tracked": 5,
        "unknown_evicted": 1,
        "sensors": {"porch": {"readings": 3, "present": True, "refused": {"replay": 2}, "rssi": -61,
                              "last_seen_s_ago": 1.5},
                    "cellar": {"readings": 0, "present": False, "refused": {}, "rssi": None, "last_seen_s_ago": None}},
    }  # fmt: skip

    class Fixed(Collector):
        def collect(self) -> Any:
            return metric_families(stats, 1_700_000_000.0)

    registry = CollectorRegistry()
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    for line in (
        "lowband_ble_advertisements_total 40.0",
        "lowband_ble_dropped_advertisements_total 2.0",
        'lowband_ble_refused_advertisements_total{kind="replay",sensor="porch"} 2.0',
        'lowband_ble_readings_total{sensor="porch"} 3.0',
        'lowband_ble_sensor_present{sensor="cellar"} 0.0',
        'lowband_ble_sensor_rssi_dbm{sensor="porch"} -61.0',
        'lowband_ble_sensor_last_seen_timestamp_seconds{sensor="porch"} 1.6999999985e+09',
        "lowband_ble_unknown_devices 5.0",
    ):
        assert line in text, text
    assert 'lowband_ble_sensor_rssi_dbm{sensor="cellar"}' not in text


def test_a_reading_heard_while_its_sensor_joins_its_room_is_not_lost(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ble_gateway(tmp_path, BleConfig(enabled=True)) as (_base, services, scanner, _):
            owner = "@owner:localhost"
            await services.store.create_user(owner, "!x", False, int(time.time() * 1000))
            room = await services.rooms.create_room(owner, {"preset": "public_chat"})
            BleRegistry(tmp_path / "data").add(make_sensor("porch", PORCH, format="bthome", rooms=[room]))
            component: BleComponent = services.components["ble"]
            reload = asyncio.create_task(component.reload())
            for _ in range(10_000):  # step the loop until the tracker knows the sensor (joining goes on)
                if "porch" in component.sensors:
                    break
                await asyncio.sleep(0)
            assert not reload.done() and component.stats()["sensors"]["porch"]["rooms"] == []
            scanner.send(PORCH, bthome_plain(b"\x00\x01" + temp_hum(2000, 5000)))
            await reload
            await until(lambda: component.stats()["posted"] == 1, timeout=5)
            assert component.counts["not_posted_no_room"] == 0

    asyncio.run(scenario())
