"""Acknowledge after commit, and never speak as someone else's account: a gateway in the test's
loop, the scripted device on an emulated serial line, matrix-nio in the room.

Faults are injected into the running gateway's own store (a write that fails
as a full disk would), never into a third-party library.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import time
from typing import Any

import nio
import pytest
from harness import LOWBAND, gateway_in_loop, nio_client, provision_kitchen, until

from lowband.gateway.homeserver.accounts import hash_password
from lowband.sim.device_core import rto_for_bps
from lowband.sim.device_peer import ScriptedDevice
from lowband.sim.pty_link import PtyLink

DEVICE = "@dev.kitchen:localhost"
BPS = 19200


class FailingWrites:
    """Makes the store's event writes from one sender fail (as a disk error would) while ``on`` is set."""

    def __init__(self, store: Any, sender: str) -> None:
        self.store, self.sender = store, sender
        self.on = False
        self.refused = 0
        self._persist = store.persist_events
        store.persist_events = self._persist_events

    def _persist_events(self, writes: list[Any], room_row: Any) -> Any:
        if self.on and any(w.event.sender == self.sender and w.event.type == "m.room.message" for w in writes):
            self.refused += 1

            async def failed() -> None:
                raise sqlite3.OperationalError("disk I/O error (injected by the test)")

            return failed()
        return self._persist(writes, room_row)


async def _messages(client: nio.AsyncClient, room_id: str) -> list[dict[str, Any]]:
    history = await client.room_messages(room_id, start="", limit=200)
    assert isinstance(history, nio.RoomMessagesResponse), history
    return [e.source for e in reversed(history.chunk) if e.source.get("type") == "m.room.message"]


def _readings(events: list[dict[str, Any]]) -> list[int]:
    return [e["content"]["org.lowband.senml"][0]["v"] for e in events if "org.lowband.senml" in e["content"]]


async def _wait_for_reading(client: nio.AsyncClient, room_id: str, value: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        events = await _messages(client, room_id)
        if value in _readings(events):
            return events
        assert time.monotonic() < deadline, f"reading {value} not in the room; saw {_readings(events)}"
        await asyncio.sleep(0.2)


def test_a_failed_store_leaves_the_reading_unacknowledged_and_it_arrives_once_when_the_store_recovers(tmp_path):
    async def scenario() -> None:
        got: dict[str, Any] = {}
        with PtyLink(bps=BPS, seed=2) as line:
            async with gateway_in_loop(tmp_path, on_ready=lambda services: got.update(services=services)) as base:
                services = got["services"]
                alice = await nio_client(base, "alice")
                device = None
                try:
                    created = await alice.room_create(alias="sensors", preset=nio.RoomPreset.public_chat)
                    assert isinstance(created, nio.RoomCreateResponse), created
                    config = json.loads(provision_kitchen(tmp_path / "data", line.path_a, BPS).read_text())
                    device = ScriptedDevice(config, line.path_b, rto=rto_for_bps(BPS), reply=False)
                    await device.start()
                    device.publish_reading([(0, 1), (1, 40), (2, 370)])
                    await _wait_for_reading(alice, created.room_id, 1, 30)
                    await until(lambda: device.link.queued == 0, 10)
                    runtime = services.components["links"]
                    acks_before = sum(e.kind == "acked" for e in device.events)

                    failing = FailingWrites(services.store, DEVICE)
                    failing.on = True
                    device.publish_reading([(0, 2), (1, 40), (2, 370)])
                    # The first try and two retransmissions, each refused by the store.
                    await until(lambda: runtime.stats.get("delivery_failed", 0) >= 3, 30)
                    assert sum(e.kind == "acked" for e in device.events) == acks_before  # no ACK went out
                    assert device.link.queued == 1  # so the device still holds the reading
                    assert 2 not in _readings(await _messages(alice, created.room_id))

                    failing.on = False
                    events = await _wait_for_reading(alice, created.room_id, 2, 60)
                    await until(lambda: device.link.queued == 0, 30)  # acknowledged now
                    await asyncio.sleep(1.0)  # a late retransmission would show up as a second event here
                    events = await _messages(alice, created.room_id)
                    assert _readings(events) == [1, 2]  # exactly once each
                    assert all(e["sender"] == DEVICE for e in events if "org.lowband.senml" in e["content"])
                    assert failing.refused >= 3
                finally:
                    if device is not None:
                        await device.stop()
                    await alice.close()

    asyncio.run(asyncio.wait_for(scenario(), 180))


def test_a_refused_reading_is_acknowledged_and_does_not_block_the_next(tmp_path):
    async def scenario() -> None:
        got: dict[str, Any] = {}
        with PtyLink(bps=BPS, seed=4) as line:
            async with gateway_in_loop(tmp_path, on_ready=lambda services: got.update(services=services)) as base:
                alice = await nio_client(base, "alice")
                device = None
                try:
                    created = await alice.room_create(alias="sensors", preset=nio.RoomPreset.public_chat)
                    config = json.loads(provision_kitchen(tmp_path / "data", line.path_a, BPS).read_text())
                    device = ScriptedDevice(config, line.path_b, rto=rto_for_bps(BPS), reply=False)
                    await device.start()
                    device.link.publish(b"\xf0\x00")  # context version 15, not 1: refused as a value
                    device.publish_reading([(0, 7), (1, 40), (2, 370)])
                    await _wait_for_reading(alice, created.room_id, 7, 30)
                    await until(lambda: device.link.queued == 0, 10)
                    assert got["services"].components["links"].stats.get("refused_payload") == 1
                finally:
                    if device is not None:
                        await device.stop()
                    await alice.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_an_account_someone_else_created_is_never_used_for_the_device(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="lowband.link")

    async def scenario() -> None:
        got: dict[str, Any] = {}
        with PtyLink(bps=BPS, seed=3) as line:
            async with gateway_in_loop(tmp_path, on_ready=lambda services: got.update(services=services)) as base:
                services = got["services"]
                # A person's account with the device's ID, made before the device was provisioned
                # (as on a database from before the dev.* reservation).
                await services.store.create_user(DEVICE, hash_password("secret-pw"), False, int(time.time() * 1000))
                alice = await nio_client(base, "alice")
                squatter = await nio_client(base, "dev.kitchen", register=False)
                device = None
                try:
                    created = await alice.room_create(alias="sensors", preset=nio.RoomPreset.public_chat)
                    room_id = created.room_id
                    joined = await squatter.join(room_id)  # the squatter is even in the room
                    assert isinstance(joined, nio.JoinResponse), joined
                    config = json.loads(provision_kitchen(tmp_path / "data", line.path_a, BPS).read_text())
                    device = ScriptedDevice(config, line.path_b, rto=rto_for_bps(BPS), reply=False)
                    await device.start()
                    runtime = await _links(services)
                    device.publish_reading([(0, 5), (1, 40), (2, 370)])
                    device.publish_reading([(0, 6), (1, 40), (2, 370)])
                    # Refused as a value: acknowledged (the device moves on), never posted.
                    await until(lambda: runtime.stats.get("refused_account", 0) >= 2 and device.link.queued == 0, 30)
                    await asyncio.sleep(1.0)
                    events = await _messages(alice, room_id)
                    assert [e for e in events if e["sender"] == DEVICE] == []  # no reading, no "joined" notice
                    assert "kitchen" in runtime.refused_accounts
                    show = subprocess.run([LOWBAND, "device", "show", "kitchen", "--data-dir", str(tmp_path / "data")],
                                          capture_output=True, text=True, timeout=60)  # fmt: skip
                    assert show.returncode == 0, show.stderr
                    account = json.loads(show.stdout)["account"]
                    assert "not created for this device" in account and "lowband device revoke kitchen" in account
                finally:
                    if device is not None:
                        await device.stop()
                    await alice.close()
                    await squatter.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("not created for this device" in m for m in errors) == 1  # said once, clearly, not every round


async def _links(services: Any) -> Any:
    await until(lambda: "links" in services.components, 10)
    return services.components["links"]


@pytest.mark.parametrize("owner", ["device:kitchen", None])
def test_device_show_tells_whether_the_account_is_the_devices(tmp_path, owner):
    from lowband.gateway.app import open_store

    data = tmp_path / "data"
    data.mkdir()
    (data / "server_name").write_text("localhost\n")
    store = open_store(data / "lowband.db")
    try:
        store.create_user_sync(DEVICE, "!x", False, 1, owner=owner)
        store.db.write_sync(lambda c: c.execute(
            "INSERT INTO rooms VALUES ('!r:localhost', '10', '@a:localhost', 0, NULL, '[]', 0)"))  # fmt: skip
    finally:
        store.close()
    added = subprocess.run([LOWBAND, "device", "add", "kitchen", "--room", "!r:localhost", "--link", "serial:/dev/null",
                            "--data-dir", str(data)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert added.returncode == 0, added.stderr
    show = subprocess.run([LOWBAND, "device", "show", "kitchen", "--data-dir", str(data)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    account = json.loads(show.stdout)["account"]
    if owner is None:
        assert "a person's account" in account and "revoke" in account
    else:
        assert account.startswith("ok")
