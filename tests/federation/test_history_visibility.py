"""A server that joins late sees a room's earlier history only as the room's history visibility allows.

Two gateways: rooms on A with history before B's user joins, one per
setting. B's user pages back through ``/messages`` (B backfills from A,
which filters what it answers by what a user of B could see).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fed_harness import bodies, create_room, gateways, has, http_session, put_state, q, send, until, user

from lowband.gateway.app import open_store

pytestmark = pytest.mark.slow


def _stored_bodies(database: Path) -> set[str]:
    """Bodies of every message a gateway's database holds, read through a second store while it runs."""
    store = open_store(database)
    try:
        rows = store.db.query("SELECT pdu FROM events WHERE type = 'm.room.message'")
        return {store.pdus.decode(row[0]).get("content", {}).get("body") for row in rows}
    finally:
        store.close()


def test_history_before_a_late_server_joined_follows_the_rooms_visibility(tmp_path):
    async def room_with_history(alice, visibility: str) -> str:
        room_id = await create_room(alice)
        await put_state(alice, room_id, "m.room.history_visibility", {"history_visibility": visibility})
        for i in range(3):
            await send(alice, room_id, f"{visibility} before {i}")
        return room_id

    async def main(gw):
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            bob = await user(session, gw["b"], "bob")
            rooms = {v: await room_with_history(alice, v) for v in ("shared", "joined", "world_readable")}
            for visibility, room_id in rooms.items():
                path = f"/_matrix/client/v3/join/{q(room_id)}?server_name={q(gw['a'].server_name)}"
                status, answer = await bob.request("POST", path, {})
                assert status == 200, answer
                await send(alice, room_id, f"{visibility} after")
                await until(lambda r=room_id, v=visibility: has(bob, r, [f"{v} after"]), what=f"{visibility}: after")
            before = {v: [f"{v} before {i}" for i in range(3)] for v in rooms}
            # shared and world_readable: the history is fetched from A and shown on B
            for visibility in ("shared", "world_readable"):
                await until(lambda v=visibility: has(bob, rooms[v], before[v]), what=f"{visibility}: history on B")
            # joined: B's user never sees what was said before B's server had a member in the room,
            # although B asks A for it (backfill) on every page back
            for _ in range(3):
                seen = await bodies(bob, rooms["joined"], limit=100)
                assert seen[-1] == "joined after" and not set(before["joined"]) & set(seen), seen
                await asyncio.sleep(0.3)
            # on A, its own member sees all of it
            assert set(before["joined"]) <= set(await bodies(alice, rooms["joined"]))
            # and A never sent it: B's database holds the shared history, not the joined one
            stored = _stored_bodies(gw["b"].data_dir / "lowband.db")
            assert set(before["shared"]) <= stored and set(before["world_readable"]) <= stored
            assert not set(before["joined"]) & stored

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(main(gw))
