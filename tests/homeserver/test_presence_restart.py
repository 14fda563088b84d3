"""Presence survives a restart: the tracker's batches in memory, then a ``lowband serve`` subprocess stopped and
started again on the same data directory (SIGTERM, and ``kill -9`` after a batch was written)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from harness import Client, GatewayProcess, expect

from lowband.gateway.app import open_store
from lowband.gateway.homeserver.presence import PresenceTracker, flush
from lowband.gateway.homeserver.typing import TypingTracker
from lowband.gateway.store.interfaces import PresenceRecord

V3 = "/_matrix/client/v3"
CONFIG = "[rate_limits]\nenabled = false\n"
#: idle after 4 s, so the tracker's loop writes its batch every 2 s
FAST_CONFIG = CONFIG + "[presence]\nidle_s = 4\noffline_s = 1800\n"


def q(value: str) -> str:
    return quote(value, safe="")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class SavedBatches:
    """A PresenceStore that keeps each batch it is given."""

    def __init__(self) -> None:
        self.batches: list[list[PresenceRecord]] = []

    def save(self, records: Any) -> None:
        self.batches.append(list(records))

    def load(self, limit: int) -> list[PresenceRecord]:
        latest: dict[str, PresenceRecord] = {}
        for batch in self.batches:
            for record in batch:
                latest[record.user_id] = record
        return sorted(latest.values(), key=lambda r: r.last_active_ms)[-limit:] if limit > 0 else []


# ------------------------------------------------------------------ in memory


def test_activity_is_written_in_batches_not_per_request() -> None:
    clock = Clock()
    tracker = PresenceTracker(TypingTracker(), clock=clock)
    saved = SavedBatches()
    tracker.set_status("@a:x", "unavailable", "at lunch")
    for _ in range(1000):  # a thousand /sync requests of one user: one row in the next batch
        clock.now += 0.01
        tracker.synced("@b:x", "online")
    assert flush(tracker, saved) == 2
    assert flush(tracker, saved) == 0  # nothing new: no write at all
    assert len(saved.batches) == 1
    by_user = {r.user_id: r for r in saved.batches[0]}
    assert by_user["@a:x"].status_msg == "at lunch" and by_user["@a:x"].presence == "unavailable"
    assert by_user["@b:x"].last_active_ms == int(clock.now * 1000)
    clock.now += 30
    tracker.synced("@b:x", "online")  # activity alone: kept with the next batch
    assert flush(tracker, saved) == 1 and saved.batches[-1][0].last_active_ms == int(clock.now * 1000)

    # a new tracker loads them: state, message and last activity as they were; a bad row is skipped
    later = PresenceTracker(TypingTracker(), clock=clock, max_users=2)
    records = [PresenceRecord("@old:x", "online", None, 1, True), PresenceRecord("@bad:x", "asleep", None, 2, True),
               *saved.load(10)]  # fmt: skip
    later.restore(records)
    assert later.content("@a:x")["status_msg"] == "at lunch" and later.content("@a:x")["presence"] == "unavailable"
    assert later.content("@b:x")["presence"] == "online" and later.content("@b:x")["last_active_ago"] == 0
    assert later.content("@old:x") == {"presence": "offline"}  # beyond max_users: the oldest is left out
    assert later.changed_since({"@a:x", "@b:x"}, None) == ["@a:x", "@b:x"] and later.latest > 0
    assert later.drain() == []  # loading is no change to write back


def test_store_keeps_the_newest_rows_and_prunes_the_rest(tmp_path: Path) -> None:
    store = open_store(tmp_path / "lowband.db")
    store.presence.save([PresenceRecord(f"@u{i}:x", "online", f"msg {i}", 1000 * i, i % 2 == 0) for i in range(5)])
    store.presence.save([PresenceRecord("@u0:x", "offline", None, 9000, True)])  # an update, not a new row
    store.close()
    store = open_store(tmp_path / "lowband.db")
    loaded = store.presence.load(3)
    assert [r.user_id for r in loaded] == ["@u3:x", "@u4:x", "@u0:x"]  # newest last
    assert loaded[-1] == PresenceRecord("@u0:x", "offline", None, 9000, True)
    assert loaded[0] == PresenceRecord("@u3:x", "online", "msg 3", 3000, False)
    store.close()
    store = open_store(tmp_path / "lowband.db")
    assert len(store.presence.load(10)) == 3  # the older rows were deleted by the first load
    store.close()


# ------------------------------------------------------------------ a restarted gateway


async def _login_pair(session: aiohttp.ClientSession, url: str) -> tuple[Client, Client, str]:
    alice, bob = Client(session, url), Client(session, url)
    await alice.register("alice")
    await bob.register("bob")
    room_id = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)["room_id"]
    expect(await bob.request("POST", f"{V3}/join/{q(room_id)}", {}), 200)
    return alice, bob, room_id


async def _presence(client: Client, user_id: str) -> dict[str, Any]:
    return dict(expect(await client.request("GET", f"{V3}/presence/{q(user_id)}/status"), 200))


def test_presence_survives_a_clean_restart(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "data", config=CONFIG)
    gateway.start()
    try:

        async def before() -> tuple[str, str, str, str]:
            async with aiohttp.ClientSession() as session:
                alice, bob, _ = await _login_pair(session, gateway.url)
                expect(await alice.request("PUT", f"{V3}/presence/{q(str(alice.user_id))}/status",
                                           {"presence": "unavailable", "status_msg": "at lunch"}), 200)  # fmt: skip
                expect(await bob.request("GET", f"{V3}/sync?timeout=0&set_presence=online"), 200)
                assert (await _presence(alice, str(bob.user_id)))["presence"] == "online"
                return str(alice.token), str(alice.user_id), str(bob.token), str(bob.user_id)

        alice_token, alice_id, bob_token, bob_id = asyncio.run(asyncio.wait_for(before(), 60))
        stopped_at = time.monotonic()
        assert gateway.stop() == 0
        time.sleep(0.3)
        gateway.start()

        async def after() -> None:
            async with aiohttp.ClientSession() as session:
                bob = Client(session, gateway.url, bob_token)
                seen = await _presence(bob, alice_id)
                assert seen["presence"] == "unavailable" and seen["status_msg"] == "at lunch", seen
                assert seen["last_active_ago"] >= 300, seen
                mine = await _presence(Client(session, gateway.url, alice_token), bob_id)
                assert mine["presence"] == "online", mine  # last activity kept: not reset, not forgotten
                assert mine["last_active_ago"] >= int((time.monotonic() - stopped_at) * 1000) - 50, mine
                # an initial /sync (that leaves presence alone) is told both, as before the restart
                body = expect(await bob.request("GET", f"{V3}/sync?timeout=0&set_presence=offline"), 200)
                events = {e["sender"]: e["content"] for e in body["presence"]["events"]}
                assert events[alice_id]["status_msg"] == "at lunch" and events[bob_id]["presence"] == "online"

        asyncio.run(asyncio.wait_for(after(), 60))
    finally:
        gateway.stop()


def test_presence_written_by_the_loop_survives_kill_9(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "data", config=FAST_CONFIG)
    gateway.start()
    try:

        async def before() -> tuple[str, str]:
            async with aiohttp.ClientSession() as session:
                alice, bob, _ = await _login_pair(session, gateway.url)
                expect(await alice.request("PUT", f"{V3}/presence/{q(str(alice.user_id))}/status",
                                           {"presence": "unavailable", "status_msg": "soldering"}), 200)  # fmt: skip
                return str(bob.token), str(alice.user_id)

        bob_token, alice_id = asyncio.run(asyncio.wait_for(before(), 60))
        time.sleep(4.5)  # two rounds of the loop (every 2 s here): the batch is committed
        gateway.kill()
        gateway.start()

        async def after() -> None:
            async with aiohttp.ClientSession() as session:
                seen = await _presence(Client(session, gateway.url, bob_token), alice_id)
                assert seen["presence"] == "unavailable" and seen["status_msg"] == "soldering", seen

        asyncio.run(asyncio.wait_for(after(), 60))
    finally:
        gateway.stop()
