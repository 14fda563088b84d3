"""Store.purge_history (retention, MSC1763) through the Store interface: expired non-state events go with
every row derived from them; state events, the kept forward extremity and newer events stay; the purge is
recorded at a stream position and survives a reopen; bounded by its limit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from lowband.gateway.app import open_store
from lowband.gateway.matrix.events import build_event
from lowband.gateway.matrix.signing import SigningKey
from lowband.gateway.store.interfaces import EventWrite, NotificationRow, StateMap, Store

T = TypeVar("T")
ALICE = "@alice:localhost"
ROOM = "!kept:localhost"
OLD, NEW = 1_700_000_000_000, 1_800_000_000_000
CUTOFF = 1_750_000_000_000


def run(path: Path, scenario: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = open_store(path / "lowband.db")
        try:
            return await scenario(store)
        finally:
            store.close()

    return asyncio.run(main())


class Room:
    """A linear room written through the Protocol, each event at a chosen origin_server_ts."""

    def __init__(self, store: Store) -> None:
        self.store, self.key = store, SigningKey.generate()
        self.group: int | None = None
        self.extremities: list[str] = []
        self.depth = 0
        self.state: StateMap = {}

    async def send(self, ts: int, event_type: str, content: dict[str, Any], state_key: str | None = None) -> str:
        event = build_event(room_id=ROOM, sender=ALICE, type=event_type, content=content,
                            prev_events=self.extremities, auth_events=[], depth=self.depth + 1, origin_server_ts=ts,
                            server_name="localhost", signing_key=self.key, state_key=state_key)  # fmt: skip
        before, new_group = self.group, None
        if state_key is not None:
            new_group = self.store.new_state_group(ROOM, before, {(event_type, state_key): event.event_id})
            self.group = new_group.group
        write = EventWrite(event, self.store.next_stream(), before, self.group, new_group, None)
        self.extremities, self.depth = [event.event_id], event.depth
        await self.store.persist_events([write], {"room_version": "10", "creator": ALICE, "state_group": self.group,
                                                  "extremities": self.extremities, "depth": self.depth})  # fmt: skip
        return event.event_id


def text(body: str, **extra: Any) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, **extra}


def test_expired_non_state_events_go_with_what_derives_from_them(tmp_path: Path) -> None:
    async def scenario(store: Store) -> dict[str, Any]:
        room = Room(store)
        create = await room.send(OLD, "m.room.create", {"creator": ALICE, "room_version": "10"}, "")
        member = await room.send(OLD, "m.room.member", {"membership": "join"}, ALICE)
        old = [await room.send(OLD + i, "m.room.message", text(f"ancient walrus {i}")) for i in range(5)]
        root = await room.send(OLD + 10, "m.room.message", text("old thread root"))
        old_reply = await room.send(OLD + 11, "m.room.message",
                                    text("old reply", **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}}))
        topic = await room.send(OLD + 12, "m.room.topic", {"topic": "ancient topic"}, "")
        # a live thread on a live root: its old reply goes, the newer one becomes its latest
        live_root = await room.send(NEW - 1, "m.room.message", text("live root"))
        await store.purge_history(ROOM, 0, keep=[], limit=10)  # nothing is below ts 0: no-op
        stale = await room.send(OLD + 14, "m.room.message",
                                text("stale reply", **{"m.relates_to": {"rel_type": "m.thread", "event_id": live_root}}))
        fresh = await room.send(NEW, "m.room.message",
                                text("fresh walrus", **{"m.relates_to": {"rel_type": "m.thread", "event_id": live_root}}))
        last_old = await room.send(OLD + 20, "m.room.message", text("late ancient walrus"))  # the extremity
        await store.push.add_notifications(
            [NotificationRow(ALICE, store.get_event(e)["stream"], ROOM, e, ["notify"], False, OLD)  # type: ignore[index]
             for e in (old[0], fresh)], store.persisted)  # fmt: skip
        assert len(store.search.matches(["walrus"], below=1 << 62, limit=50)) == 7
        assert store.last_purge(ROOM) is None

        # bounded: 3 at a time, oldest first
        first = await store.purge_history(ROOM, CUTOFF, keep=list(room.extremities), limit=3)
        assert first == old[:3]
        position = store.last_purge(ROOM)
        assert position is not None and position[1] == CUTOFF and position[0] <= store.persisted
        rest = await store.purge_history(ROOM, CUTOFF, keep=list(room.extremities), limit=100)
        assert rest == [*old[3:], root, old_reply, stale]
        assert await store.purge_history(ROOM, CUTOFF, keep=list(room.extremities), limit=100) == []

        for event_id in [*old, root, old_reply, stale]:
            assert store.get_event(event_id) is None
        for event_id in (create, member, topic, live_root, fresh, last_old):  # state, newer, and the kept extremity
            assert store.get_event(event_id) is not None
        shown = store.room_events(ROOM, after=0, upto=store.persisted, limit=50, backwards=False)
        assert [r["event"].event_id for r in shown] == [create, member, topic, live_root, fresh, last_old]
        # the full-text index: the kept extremity and the new event only
        hits = store.search.matches(["walrus"], below=1 << 62, limit=50)
        assert sorted(h.event_id for h in hits) == sorted([fresh, last_old])
        assert store.search.matches(["ancient", "topic"], below=1 << 62, limit=5)[0].event_id == topic
        # relations: the purged children are gone, the live ones stay
        assert store.relations.relation_of(old_reply) is None and store.relations.relation_of(stale) is None
        assert store.relations.relation_of(fresh) == (live_root, "m.thread")
        # threads: the purged root's thread is gone; the live one's latest is the remaining reply
        assert store.relations.threads(ROOM, below=None, limit=10, participant=None) == [
            (live_root, store.get_event(fresh)["stream"])]  # type: ignore[index]
        # notifications of purged events are gone
        notes = store.push.notifications(ALICE, None, 10, False)
        assert [n.event_id for n in notes] == [fresh]
        return {"state": store.state_for_group(room.group), "purge": store.last_purge(ROOM)}

    before = run(tmp_path, scenario)

    async def reopened(store: Store) -> None:
        assert store.last_purge(ROOM) == before["purge"]  # the record survives a restart
        assert store.all_room_ids() == [ROOM]
        room = store.get_room(ROOM)
        assert room is not None and store.state_for_group(room["state_group"]) == before["state"]

    run(tmp_path, reopened)
