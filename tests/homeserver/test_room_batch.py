"""RoomService.send_batch: many events, one lock hold, one write, one result each.

An in-process store and room service (no HTTP): what a batch does with
refusals, repeated and already-used transaction IDs, state changes in the
middle of a batch, a failing write, and a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from lowband.gateway.app import open_store
from lowband.gateway.homeserver.rooms import RoomService, SendRequest, Sent
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.matrix.signing import SigningKey

T = TypeVar("T")

ALICE = "@alice:localhost"
BOB = "@bob:localhost"
MALLORY = "@mallory:localhost"


def message(sender: str, n: int, txn: str | None = None) -> SendRequest:
    body = {"msgtype": "m.text", "body": f"message {n}"}
    return SendRequest(sender, "m.room.message", body, txn=(sender, "DEV", txn) if txn else None)


class Rooms:
    """A store and a room service on one data dir."""

    def __init__(self, path: Path, key: SigningKey) -> None:
        self.store = open_store(path / "lowband.db")
        self.rooms = RoomService(self.store, "localhost", key)
        self.seen: list[Sent] = []
        self.rooms.add_listener(self.seen.append)

    def close(self) -> None:
        self.store.close()

    def bodies(self, room_id: str) -> list[str]:
        rows = self.store.db.query(  # the pdu read in Python: it is compressed (store/sqlite/pdu_codec.py)
            "SELECT pdu FROM events WHERE room_nid = (SELECT nid FROM room_numbers WHERE room_id = ?) AND type = 'm.room.message' ORDER BY stream", (room_id,))
        return [self.store.pdus.decode(r[0]).get("content", {}).get("body") for r in rows]


def with_rooms(tmp_path: Path, key: SigningKey, scenario: Callable[[Rooms], Awaitable[T]]) -> T:
    """Run ``scenario`` on a store and room service opened on ``tmp_path``, closed afterwards; its result."""

    async def main() -> T:
        r = Rooms(tmp_path, key)
        try:
            return await scenario(r)
        finally:
            r.close()

    return asyncio.run(main())


async def new_room(rooms: RoomService) -> str:
    room_id = await rooms.create_room(ALICE, {"preset": "public_chat"})
    await rooms.set_membership(BOB, room_id, BOB, "join")
    return room_id


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def test_a_batch_keeps_order_and_refuses_only_what_the_rules_refuse(tmp_path: Path, key: SigningKey) -> None:
    async def scenario(r: Rooms) -> None:
        room_id = await new_room(r.rooms)
        commits = r.store.db.commits
        requests = [message(ALICE, 1), message(MALLORY, 2), message(BOB, 3), message(ALICE, 4)]
        results = await r.rooms.send_batch(room_id, requests)
        assert isinstance(results[1], MatrixError) and results[1].errcode == "M_FORBIDDEN"
        sent = [results[0], results[2], results[3]]
        assert all(isinstance(s, Sent) for s in sent)
        assert r.store.db.commits - commits == 1  # one transaction for the whole batch
        assert r.bodies(room_id) == ["message 1", "message 3", "message 4"]
        # each builds on the one before it, in stream order
        assert sent[1].event.prev_events == [sent[0].event.event_id]  # type: ignore[union-attr]
        assert sent[2].event.prev_events == [sent[1].event.event_id]  # type: ignore[union-attr]
        assert [s.stream for s in sent] == sorted(s.stream for s in sent)  # type: ignore[union-attr]
        assert r.seen[-3:] == sent  # listeners told in commit order

    with_rooms(tmp_path, key, scenario)


def test_transactions_repeated_in_a_batch_or_already_sent_return_the_first_event(tmp_path: Path, key: SigningKey) -> None:
    async def scenario(r: Rooms) -> None:
        room_id = await new_room(r.rooms)
        first = await r.rooms.send(ALICE, room_id, "m.room.message", {"body": "message 0", "msgtype": "m.text"},
                                   txn=(ALICE, "DEV", "t0"))  # fmt: skip
        results = await r.rooms.send_batch(
            room_id, [message(ALICE, 1, "t0"), message(ALICE, 2, "t1"), message(ALICE, 3, "t1"),
                      message(BOB, 4, "t1")],  # same txn id, another user: a different transaction
        )  # fmt: skip
        assert isinstance(results[0], Sent) and results[0].event.event_id == first.event.event_id
        assert isinstance(results[1], Sent) and isinstance(results[2], Sent) and isinstance(results[3], Sent)
        assert results[2].event.event_id == results[1].event.event_id
        assert results[3].event.event_id != results[1].event.event_id
        assert r.bodies(room_id) == ["message 0", "message 2", "message 4"]

    with_rooms(tmp_path, key, scenario)


def test_a_transaction_in_flight_in_another_batch_waits_for_it(tmp_path: Path, key: SigningKey) -> None:
    async def scenario(r: Rooms) -> None:
        room_id = await new_room(r.rooms)
        one = asyncio.create_task(r.rooms.send_batch(room_id, [message(ALICE, 1, "a"), message(ALICE, 2, "b")]))
        await asyncio.sleep(0)  # the first call now holds "b" in flight
        two = asyncio.create_task(r.rooms.send_batch(room_id, [message(ALICE, 3, "b"), message(ALICE, 4, "c")]))
        first, second = await asyncio.wait_for(asyncio.gather(one, two), 10)
        assert isinstance(first[1], Sent) and isinstance(second[0], Sent)
        assert second[0].event.event_id == first[1].event.event_id
        assert r.bodies(room_id) == ["message 1", "message 2", "message 4"]

    with_rooms(tmp_path, key, scenario)


def test_a_state_change_in_a_batch_applies_to_the_events_after_it(tmp_path: Path, key: SigningKey) -> None:
    async def scenario(r: Rooms) -> None:
        room_id = await new_room(r.rooms)
        levels = dict(r.rooms.state_event(room_id, "m.room.power_levels").content)  # type: ignore[union-attr]
        levels["events_default"] = 50  # from now on only Alice may post
        results = await r.rooms.send_batch(room_id, [
            message(BOB, 1),
            SendRequest(ALICE, "m.room.power_levels", levels, state_key=""),
            message(BOB, 2),
            message(ALICE, 3),
        ])  # fmt: skip
        assert isinstance(results[0], Sent) and isinstance(results[1], Sent) and isinstance(results[3], Sent)
        assert isinstance(results[2], MatrixError) and results[2].errcode == "M_FORBIDDEN"
        assert r.bodies(room_id) == ["message 1", "message 3"]
        assert r.rooms.state_event(room_id, "m.room.power_levels").event_id == results[1].event.event_id  # type: ignore[union-attr]

    with_rooms(tmp_path, key, scenario)


def test_a_failed_write_fails_every_event_of_the_batch_and_stores_none(tmp_path: Path, key: SigningKey) -> None:
    async def scenario(r: Rooms) -> None:
        room_id = await new_room(r.rooms)
        before = r.bodies(room_id)
        # A txn row that collides at INSERT time, as if another process had written it.
        (one,) = await r.rooms.send_batch(room_id, [message(ALICE, 1, "x")])
        assert isinstance(one, Sent)
        r.rooms._pending_txns.clear()
        original = r.store.events_for_txns
        r.store.events_for_txns = lambda txns: {}  # type: ignore[method-assign]
        results = await r.rooms.send_batch(room_id, [message(ALICE, 2), message(ALICE, 3, "x")])
        assert all(isinstance(x, MatrixError) and x.status == 500 for x in results)
        assert r.bodies(room_id) == [*before, "message 1"]
        r.store.events_for_txns = original  # type: ignore[method-assign]
        # The room was reloaded from disk: the next event builds on what was committed.
        again = await r.rooms.send(ALICE, room_id, "m.room.message", {"body": "message 4", "msgtype": "m.text"})
        assert again.event.prev_events == [one.event.event_id]
        assert r.bodies(room_id) == [*before, "message 1", "message 4"]

    with_rooms(tmp_path, key, scenario)


def test_a_batch_survives_a_restart_with_the_head_on_its_last_event(tmp_path: Path, key: SigningKey) -> None:
    async def first(r: Rooms) -> str:
        room_id = await new_room(r.rooms)
        results = await r.rooms.send_batch(room_id, [message(ALICE, n, f"t{n}") for n in range(50)])
        assert all(isinstance(x, Sent) for x in results)
        return room_id

    room_id = with_rooms(tmp_path, key, first)
    with contextlib.closing(open_store(tmp_path / "lowband.db")) as store:
        last = store.db.query_one("SELECT event_id, depth FROM events WHERE room_nid = (SELECT nid FROM room_numbers WHERE room_id = ?) ORDER BY stream DESC LIMIT 1",
                                  (room_id,))  # fmt: skip
        row = store.db.query_one("SELECT extremities, depth FROM rooms WHERE room_id = ?", (room_id,))
    assert row == (f'["{last[0]}"]', last[1])

    async def again(r: Rooms) -> None:
        results = await r.rooms.send_batch(room_id, [message(ALICE, 1, "t1"), message(ALICE, 99, "t99")])
        assert isinstance(results[0], Sent) and results[0].event.content["body"] == "message 1"
        assert isinstance(results[1], Sent) and results[1].event.prev_events == [last[0]]
        assert r.bodies(room_id) == [f"message {n}" for n in range(50)] + ["message 99"]

    with_rooms(tmp_path, key, again)


def test_an_unknown_room_refuses_every_request(tmp_path: Path, key: SigningKey) -> None:
    async def scenario(r: Rooms) -> None:
        results = await r.rooms.send_batch("!nowhere:localhost", [message(ALICE, 1), message(ALICE, 2, "t")])
        assert [x.errcode for x in results if isinstance(x, MatrixError)] == ["M_NOT_FOUND", "M_NOT_FOUND"]

    with_rooms(tmp_path, key, scenario)


def test_compression_dictionaries_follow_the_store(tmp_path: Path, key: SigningKey) -> None:
    """The first dictionary comes with the first events, the next ones EARLY_RETRAIN positions after them (the
    first raw content, the next ones trained); events name the one they were written with and all read back, also
    after a restart (store/sqlite/pdu_codec.py)."""
    from lowband.gateway.store.sqlite.pdu_codec import EARLY_RETRAIN

    def dictionary_ids(r: Rooms, room_id: str) -> list[int | None]:
        rows = r.store.db.query("SELECT pdu FROM events WHERE room_nid = (SELECT nid FROM room_numbers WHERE room_id = ?) AND type = 'm.room.message'"
                                " ORDER BY stream", (room_id,))  # fmt: skip
        return [bytes(p)[1] if not isinstance(p, str) and bytes(p)[:1] in (b"\x01", b"\x02") else None
                for (p,) in rows]  # fmt: skip

    async def send(r: Rooms, room_id: str, first: int, count: int) -> None:
        results = await r.rooms.send_batch(room_id, [message(ALICE, n) for n in range(first, first + count)])
        assert all(isinstance(s, Sent) for s in results)

    async def adopted(r: Rooms, dict_id: int) -> None:
        """A dictionary is made in its own write after the batch that made it due, used once committed."""
        for _ in range(500):
            if r.store.pdus.current is not None and r.store.pdus.current[0] == dict_id:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"dictionary {dict_id} not in use")

    async def fill(r: Rooms) -> str:
        room_id = await new_room(r.rooms)
        await send(r, room_id, 0, 30)  # with dictionary 1, made from the room's creation
        await send(r, room_id, 30, 30)  # past EARLY_RETRAIN[0]: dictionary 2 is due
        await adopted(r, 2)
        await send(r, room_id, 60, 100)
        await send(r, room_id, 160, 400)  # past EARLY_RETRAIN[1]: dictionary 3, trained on 400 events
        await adopted(r, 3)
        await send(r, room_id, 560, 10)
        made = r.store.db.query("SELECT id, first_stream, sample FROM pdu_dictionaries ORDER BY id")
        assert [row[0] for row in made] == [1, 2, 3]
        assert made[1][1] - made[0][1] >= EARLY_RETRAIN[0] and made[2][1] - made[1][1] >= EARLY_RETRAIN[1]
        magic = bytes.fromhex("37a430ec")  # Zstandard's trained-dictionary magic; raw content has none
        assert [bytes(row[2])[:4] == magic for row in made] == [False, True, True]
        ids = dictionary_ids(r, room_id)
        assert ids[:30] == [1] * 30 and ids[60:160] == [2] * 100 and ids[-10:] == [3] * 10
        assert r.bodies(room_id) == [f"message {n}" for n in range(570)]
        return room_id

    room_id = with_rooms(tmp_path, key, fill)

    async def again(r: Rooms) -> None:
        await send(r, room_id, 570, 1)
        assert dictionary_ids(r, room_id)[-1] == 3  # the newest dictionary is the current one after a restart
        assert r.bodies(room_id)[-2:] == ["message 569", "message 570"]

    with_rooms(tmp_path, key, again)
