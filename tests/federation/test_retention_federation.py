"""Retention over federation (MSC1763, docs/retention.md).

Two federating gateways: a room on A with a member on B sets a short ``max_lifetime``; both servers purge the
old messages from their stores (read from the database files themselves), and the room goes on federating both
ways on the events that remain. A peer of our own asking a gateway for expired events (``/event``,
``/backfill``, ``/get_missing_events``) gets none of them, before and after the purge, and its new events on
the room's latest are taken.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fed_harness import (
    FED_CONFIG,
    bodies,
    create_room,
    gateways,
    has,
    http_session,
    put_state,
    q,
    send,
    state,
    until,
    user,
)
from hostile_peer import HostilePeer, attacked_gateway, local_user, public_room, visible_to

from lowband.gateway.app import open_store
from lowband.gateway.config import RetentionConfig
from lowband.gateway.homeserver.retention_job import RETENTION
from lowband.gateway.matrix.events import compute_event_id
from lowband.gateway.matrix.room_versions import V10

pytestmark = pytest.mark.slow

CONFIG = FED_CONFIG + """
[retention]
enabled = true
interval_s = 0.5
"""


def stored_bodies(data_dir: Path, room_id: str) -> list[str]:
    """The bodies of the room's messages in a gateway's database (a second store, beside the running gateway)."""
    store = open_store(data_dir / "lowband.db")
    try:
        rows = store.db.query("SELECT pdu FROM events WHERE room_nid = (SELECT nid FROM room_numbers WHERE room_id = ?) AND type = ? ORDER BY stream",
                              (room_id, "m.room.message"))  # fmt: skip
        contents = [store.pdus.decode(pdu).get("content") for (pdu,) in rows]
    finally:
        store.close()
    return [str(c.get("body")) if isinstance(c, dict) else "None" for c in contents]


def test_both_servers_purge_and_the_room_still_federates(tmp_path: Path) -> None:
    async def main(gw: dict) -> None:  # type: ignore[type-arg]
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            bob = await user(session, gw["b"], "bob")
            room_id = await create_room(alice, "kept")
            status, joined = await bob.request("POST", f"/_matrix/client/v3/join/{q('#kept:' + gw['a'].server_name)}",
                                               {})  # fmt: skip
            assert status == 200, joined
            await until(lambda: state(alice, room_id, "m.room.member", bob.user_id), what="bob's join on A")
            old = ["old one", "old two", "old three"]
            for body in old:
                await send(alice, room_id, body)
            await send(bob, room_id, "old from B")
            old.append("old from B")
            await until(lambda: has(bob, room_id, old), what="the old messages on B")
            await until(lambda: has(alice, room_id, old), what="the old messages on A")
            # two seconds of life: both servers purge what is older (their jobs run every half second)
            await put_state(alice, room_id, "m.room.retention", {"max_lifetime": 2000})
            for name in ("a", "b"):
                await until(lambda n=name: _none_left(gw[n].data_dir, room_id, old), timeout=60,
                            what=f"the old messages purged on {name.upper()}")  # fmt: skip
            assert not set(old) & set(await bodies(bob, room_id))
            # a day of life from now on: what is sent next stays, and crosses both ways
            await put_state(alice, room_id, "m.room.retention", {"max_lifetime": 86_400_000})
            await until(lambda: _lifetime_is(bob, room_id, 86_400_000), what="the new policy on B")
            await send(alice, room_id, "new from A")
            await until(lambda: has(bob, room_id, ["new from A"]), what="A's new message on B")
            await send(bob, room_id, "new from B")
            await until(lambda: has(alice, room_id, ["new from A", "new from B"]), what="B's new message on A")
            for name in ("a", "b"):
                kept = stored_bodies(gw[name].data_dir, room_id)
                assert "new from A" in kept and "new from B" in kept and not set(old) & set(kept)

    with gateways(tmp_path, "a", "b", config=CONFIG) as gw:
        asyncio.run(asyncio.wait_for(main(gw), 240))


async def _none_left(data_dir: Path, room_id: str, old: list[str]) -> bool:
    return not set(old) & set(stored_bodies(data_dir, room_id))


async def _lifetime_is(client: object, room_id: str, value: int) -> bool:
    content = await state(client, room_id, "m.room.retention")  # type: ignore[arg-type]
    return bool(content and content.get("max_lifetime") == value)


@contextlib.contextmanager
def sent_in_the_past(services: Any, seconds: float) -> Iterator[None]:
    sender = services.rooms.sender
    real = sender.clock
    sender.clock = lambda: real() - seconds
    try:
        yield
    finally:
        sender.clock = real


def test_expired_events_are_not_served_over_federation(tmp_path: Path) -> None:
    async def main() -> None:
        async with HostilePeer(tmp_path, "peer.test") as peer, \
                attacked_gateway(tmp_path, peers={"peer.test": peer.address},
                                 retention=RetentionConfig(enabled=True)) as gw, http_session() as session:  # fmt: skip
            alice = await local_user(session, gw, "alice")
            room_id = await public_room(alice)
            await peer.join(session, gw, room_id)
            with sent_in_the_past(gw.services, 2 * 3600):
                old = [await send(alice, room_id, f"old {i}") for i in range(3)]
            policy = await put_state(alice, room_id, "m.room.retention", {"max_lifetime": 3_600_000})
            fresh = await send(alice, room_id, "fresh")

            async def served() -> tuple[set[str], set[str]]:
                status, page = await peer.call(session, gw, "GET", f"/_matrix/federation/v1/backfill/{q(room_id)}",
                                               query=[("v", fresh), ("limit", "50")])  # fmt: skip
                assert status == 200, page
                backfilled = {compute_event_id(p, V10) for p in page["pdus"]}
                status, page = await peer.call(session, gw, "POST",
                                               f"/_matrix/federation/v1/get_missing_events/{q(room_id)}",
                                               {"latest_events": [fresh], "earliest_events": [], "limit": 50})  # fmt: skip
                assert status == 200, page
                return backfilled, {compute_event_id(p, V10) for p in page["events"]}

            for purged in (False, True):
                if purged:
                    assert await gw.services.components[RETENTION].run_once() == len(old)
                    assert all(gw.services.store.get_event(e) is None for e in old)
                for event_id in old:
                    status, _ = await peer.call(session, gw, "GET", f"/_matrix/federation/v1/event/{q(event_id)}")
                    assert status == 404
                status, found = await peer.call(session, gw, "GET", f"/_matrix/federation/v1/event/{q(fresh)}")
                assert status == 200 and compute_event_id(found["pdus"][0], V10) == fresh
                backfilled, missing = await served()
                assert {fresh, policy} <= backfilled and not backfilled & set(old), purged
                assert policy in missing and not missing & set(old), purged
            # the peer's next event, on the room's latest, is taken and shown
            latest = gw.services.store.get_event(fresh)
            assert latest is not None
            reply = peer.message("from the peer", prev_ids=[fresh], depth=latest["event"].depth + 1)
            status, answer = await peer.send(session, gw, [reply])
            assert status == 200 and answer["pdus"].get(reply.event_id, {}) == {}, answer
            assert await visible_to(alice, room_id, reply.event_id)

    asyncio.run(asyncio.wait_for(main(), 120))
