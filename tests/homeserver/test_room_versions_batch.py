"""Rooms of every known version through RoomService (no HTTP): batches, state, redaction, a restart.

What the service stored is then judged again from the store alone, as a
federating peer would judge it: each event's format, signature and content
hash for its room's version, and the auth rules against the auth events it
cites (plus, in v12, the create event its room ID names).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lowband.gateway.app import open_store
from lowband.gateway.homeserver.rooms import RoomService, SendRequest, Sent
from lowband.gateway.matrix import room_versions
from lowband.gateway.matrix.auth_rules import auth_state_from_events, check_auth
from lowband.gateway.matrix.events import Event, check_event_format, verify_event
from lowband.gateway.matrix.identifiers import create_event_id_of_room
from lowband.gateway.matrix.signing import SigningKey
from lowband.gateway.store.sqlite.store import SQLiteStore  # the type of both stores (PostgresStore is one)

ALICE, BOB = "@alice:localhost", "@bob:localhost"
KEY = SigningKey.from_seed(bytes(range(32)), "batch")


def message(sender: str, n: int) -> SendRequest:
    return SendRequest(sender, "m.room.message", {"msgtype": "m.text", "body": f"message {n}"})


def stored_events(store: SQLiteStore, room_id: str) -> list[Event]:
    rows = store.db.query("SELECT event_id, pdu FROM events WHERE room_nid = (SELECT nid FROM room_numbers WHERE room_id = ?) ORDER BY stream", (room_id,))
    return [Event(row[0], store.pdus.decode(row[1])) for row in rows]


def judge_again(store: SQLiteStore, room_id: str, version: room_versions.RoomVersion) -> int:
    """Check every stored event of the room as a peer would; returns how many."""
    events = stored_events(store, room_id)
    by_id = {e.event_id: e for e in events}
    implied = [by_id[create_event_id_of_room(room_id)]] if version.room_id_is_create_hash else []
    for event in events:
        check_event_format(event.pdu, version)
        verify_event(event.pdu, version, lambda server, key_id: KEY.verify_key_bytes)
        assert Event.from_pdu(event.pdu, version).event_id == event.event_id
        if event.type != "m.room.create":
            cited = [by_id[i] for i in event.auth_events]
            auth = auth_state_from_events(event, [*cited, *implied], room_version=version)
            check_auth(event, auth, room_version=version)
        assert all(p in by_id for p in event.prev_events)
    return len(events)


@pytest.mark.parametrize("version", list(room_versions.KNOWN), ids=lambda v: f"v{v}")
def test_every_version_through_the_room_service(tmp_path: Path, version: str) -> None:
    async def first_run() -> str:
        store = open_store(tmp_path / "lowband.db")
        rooms = RoomService(store, "localhost", KEY)
        try:
            room_id = await rooms.create_room(ALICE, {"preset": "public_chat", "room_version": version})
            await rooms.set_membership(BOB, room_id, BOB, "join")
            # one batch: events built on events not yet committed (v1-v2 cite their reference hashes)
            sent = await rooms.send_batch(room_id, [message(BOB, n) for n in range(5)] + [
                SendRequest(ALICE, "m.room.topic", {"topic": "t"}, state_key=""), message(ALICE, 5)])
            assert all(isinstance(s, Sent) for s in sent), sent
            redaction = await rooms.send(ALICE, room_id, "m.room.redaction", {"reason": "r"},
                                         redacts=sent[0].event.event_id)  # type: ignore[union-attr]
            assert redaction.event.redacts == sent[0].event.event_id  # type: ignore[union-attr]
            return room_id
        finally:
            store.close()

    room_id = asyncio.run(first_run())

    async def after_restart() -> None:
        store = open_store(tmp_path / "lowband.db")
        rooms = RoomService(store, "localhost", KEY)
        try:
            assert rooms.room_version(room_id).identifier == version
            sent = await rooms.send_batch(room_id, [message(BOB, 10), message(ALICE, 11)])
            assert all(isinstance(s, Sent) for s in sent), sent
            assert judge_again(store, room_id, room_versions.get(version)) == 7 + 7 + 1 + 2  # create..guest, msgs
        finally:
            store.close()

    asyncio.run(after_restart())


def test_a_v12_room_gets_its_alias_and_its_hash_id(tmp_path: Path) -> None:
    async def main() -> None:
        store = open_store(tmp_path / "lowband.db")
        rooms = RoomService(store, "localhost", KEY)
        try:
            room_id = await rooms.create_room(ALICE, {"room_version": "12", "room_alias_name": "greenhouse"})
            create = rooms.state_event(room_id, "m.room.create")
            assert create is not None and create.event_id == create_event_id_of_room(room_id)
            assert store.get_alias("#greenhouse:localhost") == (room_id, ALICE)
            # two rooms made in the same millisecond by the same user still get two IDs
            rooms.clock = lambda: 1_700_000_000.0
            assert await rooms.create_room(ALICE, {"room_version": "12"}) != await rooms.create_room(
                ALICE, {"room_version": "12"})
        finally:
            store.close()

    asyncio.run(main())
