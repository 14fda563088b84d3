"""The main process's feed to its reader workers (homeserver/worker_feed.py), in memory: the lines byte by byte,
a worker's copy made from them equal to the main process's trackers, refused lines changing nothing, a slow
worker's queue ended, and the /sync hooks' waits. The processes and sockets: tests/api/test_reader_workers.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from harness import stub_server

from lowband.gateway.homeserver import worker_feed
from lowband.gateway.homeserver.notifier import Notifier
from lowband.gateway.homeserver.presence import PresenceTracker, UserPresence
from lowband.gateway.homeserver.sync import SyncToken
from lowband.gateway.homeserver.typing import TypingTracker
from lowband.gateway.homeserver.worker_feed import FeedError, FeedMirror, FeedSource, encode, must_tell, parse


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Store:
    """What the feed reads of a store: the committed position (and, in a worker, what it is told)."""

    def __init__(self, persisted: int = 0) -> None:
        self.persisted = persisted
        self.committed_events = persisted

    def see_committed_events(self) -> None:
        self.persisted = max(self.persisted, self.committed_events)

    def mark_committed(self, position: int) -> None:
        self.persisted = max(self.persisted, position)


def process(clock: Clock, persisted: int = 0) -> Any:
    """The parts of Services the feed touches, with the real notifier and trackers."""
    notifier = Notifier()
    typing = TypingTracker(clock)
    presence = PresenceTracker(typing, idle_s=300, offline_s=1800, clock=clock, on_change=notifier.notify)
    forgotten: list[str] = []
    return SimpleNamespace(
        notifier=notifier, typing=typing, store=Store(persisted),
        sync=SimpleNamespace(presence=presence, servable=None, erased=SimpleNamespace(forget=lambda: forgotten.append("erased"))),
        rooms=SimpleNamespace(lookups=SimpleNamespace(forget_cached=lambda: forgotten.append("rooms"))),
        forgotten=forgotten,
    )  # fmt: skip


def lines(raw: bytes) -> list[bytes]:
    return [line + b"\n" for line in raw.split(b"\n") if line]


def feed_all(mirror: FeedMirror, raw: bytes) -> None:
    for line in lines(raw):
        mirror.apply(line)


def same(main: Any, worker: Any, rooms: list[str], users: list[str]) -> None:
    """The worker's copy answers every /sync question as the main process's trackers do."""
    assert worker.typing.serial == main.typing.serial
    for room in rooms:
        assert worker.typing.typing_users(room) == main.typing.typing_users(room)
        for serial in (0, main.typing.serial - 1, main.typing.serial):
            assert worker.typing.changed_since(room, serial) == main.typing.changed_since(room, serial)
    assert worker.sync.presence.latest == main.sync.presence.latest
    everyone = set(users)
    for since in (None, 0, main.sync.presence.latest - 1, main.sync.presence.latest):
        assert worker.sync.presence.changed_since(everyone, since) == main.sync.presence.changed_since(everyone, since)
    for user in users:
        assert worker.sync.presence.content(user) == main.sync.presence.content(user)


def test_the_lines_byte_by_byte() -> None:
    assert encode({"k": "hello", "v": 1, "serial": 1700000000000}) == b'{"k":"hello","v":1,"serial":1700000000000}\n'
    assert encode({"k": "typing", "room": "!r:w.test", "user": "@a:w.test", "until": 1700000030000,
                   "serial": 1700000000001}) == (b'{"k":"typing","room":"!r:w.test","user":"@a:w.test",'
                                                 b'"until":1700000030000,"serial":1700000000001}\n')  # fmt: skip
    known = UserPresence("unavailable", "caf\u00e9", 1700000000.5, 1700000000002, True)
    assert worker_feed.presence_line("@a:w.test", known) == (
        b'{"k":"presence","user":"@a:w.test","state":"unavailable","status":"caf\xc3\xa9","active":1700000000500,'
        b'"serial":1700000000002,"local":true}\n')  # fmt: skip
    for line in (b'{"k":"pos","persisted":41,"servable":40}\n', b'{"k":"ready"}\n',
                 b'{"k":"room","room":"!r:w.test","serial":7}\n',
                 b'{"k":"typing","room":"!r:w.test","user":"@a:w.test","until":null,"serial":8}\n'):  # fmt: skip
        assert encode(parse(line)) == line


def test_a_worker_copy_made_from_the_snapshot_and_the_changes_equals_the_main_process() -> None:
    async def run() -> None:
        clock = Clock()
        main, worker = process(clock, persisted=12), process(clock)
        rooms, users = ["!r1:w.test", "!r2:w.test", "!r3:w.test"], ["@a:w.test", "@b:w.test", "@c:w.test"]
        # before the worker: typing in two rooms (one stopped since), presence of two users
        main.typing.set_typing(rooms[0], users[0], True, 30_000)
        main.typing.set_typing(rooms[1], users[1], True, 30_000)
        main.typing.set_typing(rooms[1], users[1], False, 0)
        main.sync.presence.set_status(users[0], "unavailable", "out")
        main.sync.presence.synced(users[1], "online")
        main.sync.servable = lambda: 11
        source = FeedSource(main)
        sub = source.subscribe()
        snapshot = lines(sub.take())
        assert [parse(line)["k"] for line in snapshot] == ["hello", "room", "room", "typing", "presence", "presence",
                                                           "pos", "ready"]  # fmt: skip
        assert parse(snapshot[-2]) == {"k": "pos", "persisted": 12, "servable": 11}
        mirror = FeedMirror(worker)
        worker.typing.set_typing(rooms[2], users[2], True, 1000)  # what a worker had before is forgotten
        for line in snapshot[:-1]:
            mirror.apply(line)
        assert not mirror.ready
        mirror.apply(snapshot[-1])
        assert mirror.ready and (mirror.persisted, mirror.servable, worker.store.persisted) == (12, 11, 12)
        same(main, worker, rooms, users)

        # then every kind of change, local, remote and by the clock
        clock.now += 5
        main.typing.set_typing(rooms[2], users[2], True, 10_000)
        main.sync.presence.set_remote("@far:x.test", "online", None, 0)
        main.sync.presence.synced(users[2], "unavailable")
        clock.now += 11
        main.typing.expire()  # rooms[2]'s notice ran out after 10 s
        main.sync.presence.synced(users[1], "online")  # activity 16 s after the last: told (TOUCH_S)
        main.store.persisted, main.sync.servable = 20, lambda: 20
        main.notifier.notify()
        await asyncio.sleep(0)  # the pos line goes once per loop turn
        feed_all(mirror, sub.take())
        same(main, worker, rooms, users + ["@far:x.test"])
        assert worker.typing.typing_users(rooms[2]) == [] and worker.typing.changed_since(rooms[2], 0)
        assert (mirror.persisted, mirror.servable) == (20, 20)

        # an online user's /sync a second later changes nothing the feed carries: no line
        clock.now += 1
        main.sync.presence.synced(users[1], "online")
        assert sub.take() == b""

    asyncio.run(asyncio.wait_for(run(), 30))


def test_many_wake_ups_in_one_loop_turn_make_one_pos_line() -> None:
    async def run() -> None:
        main = process(Clock(), persisted=3)
        source = FeedSource(main)
        sub = source.subscribe()
        sub.take()
        for n in range(100):
            main.store.persisted = 4 + n
            main.notifier.notify()
        assert sub.take() == b""
        await asyncio.sleep(0)
        assert sub.take() == b'{"k":"pos","persisted":103,"servable":103}\n'
        main.notifier.moved()  # the push rules' judging moved: only other processes are told
        await asyncio.sleep(0)
        assert lines(sub.take()) == [b'{"k":"pos","persisted":103,"servable":103}\n']

    asyncio.run(asyncio.wait_for(run(), 30))


HOSTILE = [
    b"",
    b"{",
    b'{"k":"pos","persisted":4',  # truncated
    b"[1,2]",
    b'"pos"',
    b'{"k":"bogus"}',
    b'{"persisted":1,"servable":1}',
    b'{"k":"hello","v":2,"serial":5}',  # a feed this worker does not read
    b'{"k":"hello","v":1}',
    b'{"k":"pos","persisted":5,"servable":6}',  # servable above persisted
    b'{"k":"pos","persisted":-1,"servable":-1}',
    b'{"k":"pos","persisted":true,"servable":0}',
    b'{"k":"pos","persisted":9223372036854775808,"servable":0}',
    b'{"k":"pos","persisted":1.5,"servable":0}',
    b'{"k":"typing","room":"","user":"@a:w.test","until":null,"serial":1}',
    b'{"k":"typing","room":"!r:w.test","user":"@a:w.test","serial":1}',  # until missing, not null
    b'{"k":"typing","room":"!r:w.test","user":"' + b"a" * 256 + b'","until":null,"serial":1}',
    b'{"k":"presence","user":"@a:w.test","state":"busy","status":null,"active":1,"serial":1,"local":true}',
    b'{"k":"presence","user":"@a:w.test","state":"online","status":"' + b"s" * 1025 + b'","active":1,"serial":1,'
    b'"local":true}',
    b'{"k":"presence","user":"@a:w.test","state":"online","status":null,"active":1,"serial":1,"local":1}',
    b'{"k":"room","room":"!r:w.test","serial":"7"}',
    b"[" * 100_000,  # nesting past the recursion limit, and longer than a line may be
    b'{"k":"ready","pad":"' + b"x" * worker_feed.MAX_LINE + b'"}',
    b"\xff\xfe{}",
]


@pytest.mark.parametrize("line", HOSTILE)
def test_a_refused_line_changes_nothing_and_the_next_line_applies(line: bytes) -> None:
    async def run() -> None:
        worker = process(Clock())
        mirror = FeedMirror(worker)
        mirror.apply(b'{"k":"hello","v":1,"serial":100}\n')
        mirror.apply(b'{"k":"typing","room":"!r:w.test","user":"@a:w.test","until":1700000030000,"serial":101}\n')
        before = (worker.typing.serial, worker.typing.notices(), worker.sync.presence.users(), mirror.persisted,
                  mirror.servable, mirror.ready)  # fmt: skip
        with pytest.raises(FeedError):
            mirror.apply(line)
        assert (worker.typing.serial, worker.typing.notices(), worker.sync.presence.users(), mirror.persisted,
                mirror.servable, mirror.ready) == before  # fmt: skip
        mirror.apply(b'{"k":"pos","persisted":9,"servable":8}\n')
        assert (mirror.persisted, mirror.servable) == (9, 8)

    asyncio.run(asyncio.wait_for(run(), 30))


def test_lines_already_applied_do_not_move_the_copy_back() -> None:
    async def run() -> None:
        worker = process(Clock())
        mirror = FeedMirror(worker)
        feed_all(mirror, b'{"k":"hello","v":1,"serial":100}\n{"k":"pos","persisted":50,"servable":49}\n'
                         b'{"k":"room","room":"!r:w.test","serial":120}\n')  # fmt: skip
        feed_all(mirror, b'{"k":"pos","persisted":40,"servable":30}\n{"k":"room","room":"!r:w.test","serial":110}\n')
        assert (mirror.persisted, mirror.servable, worker.typing.serial) == (50, 49, 120)
        assert worker.typing.changed_since("!r:w.test", 115)
        # a heartbeat (the same positions) wakes no long-poll; a position that grew does
        generation = worker.notifier.generation
        mirror.apply(b'{"k":"pos","persisted":50,"servable":49}\n')
        assert worker.notifier.generation == generation
        mirror.apply(b'{"k":"pos","persisted":50,"servable":50}\n')
        assert worker.notifier.generation == generation + 1

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_worker_that_reads_too_slowly_has_its_feed_ended() -> None:
    async def run() -> None:
        main = process(Clock())
        source = FeedSource(main, limit=2000)
        slow, fast = source.subscribe(), source.subscribe()
        fast.take()
        for n in range(40):
            main.typing.set_typing("!r:w.test", f"@u{n}:w.test", True, 30_000)
            fast.take()
        assert slow.overflowed and not fast.overflowed
        assert slow.take() == b"" and source.overflows == 1
        main.typing.set_typing("!r:w.test", "@late:w.test", True, 30_000)
        assert slow.take() == b""  # nothing more is queued for it
        assert b"@late:w.test" in fast.take()
        # a snapshot larger than the limit (many users' presence) is sent whole; the limit counts after it
        for n in range(100):
            main.sync.presence.set_status(f"@p{n}:w.test", "online", "x" * 50)
        big = source.subscribe()
        assert not big.overflowed and big.size > 2000
        snapshot = big.take()
        assert snapshot.count(b'"k":"presence"') == 100 and snapshot.endswith(b'{"k":"ready"}\n')
        for n in range(40):
            main.typing.set_typing("!r:w.test", f"@v{n}:w.test", True, 30_000)
        assert big.overflowed

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_worker_sync_waits_for_the_judging_and_for_a_token_of_another_process(monkeypatch: Any) -> None:
    async def run() -> None:
        worker = process(Clock())
        mirror = FeedMirror(worker)
        feed_all(mirror, b'{"k":"hello","v":1,"serial":100}\n{"k":"pos","persisted":10,"servable":10}\n{"k":"ready"}\n')
        assert await mirror.settle() == 10
        # an event the main process committed (the store says 12) and judges a moment later
        worker.store.committed_events = 12
        asyncio.get_running_loop().call_later(0.05, mirror.apply, b'{"k":"pos","persisted":12,"servable":12}\n')
        assert await mirror.settle() == 12
        # not judged within SETTLE_S: what is judged
        worker.store.committed_events = 13
        assert await mirror.settle() == 12
        # a token of the main process ahead of this copy: the wait ends when the copy reaches it...
        asyncio.get_running_loop().call_later(0.05, mirror.apply, b'{"k":"room","room":"!r:w.test","serial":105}\n')
        asyncio.get_running_loop().call_later(0.1, mirror.apply, b'{"k":"pos","persisted":14,"servable":14}\n')
        await asyncio.wait_for(mirror.catch_up(SyncToken(14, 105)), 3)
        assert (mirror.servable, worker.typing.serial) == (14, 105)
        # ...and is bounded when it never does (a token from nowhere)
        monkeypatch.setattr(worker_feed, "CATCH_UP_S", 0.05)
        await asyncio.wait_for(mirror.catch_up(SyncToken(10**12, 0)), 3)
        mirror.before_round()
        assert worker.forgotten == ["rooms", "erased"]

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_worker_tells_the_main_process_what_changes_its_presence_only() -> None:
    clock = Clock()
    tracker = process(clock).sync.presence
    assert must_tell(tracker, "@a:w.test", "online", clock.now)  # not known: tell
    assert not must_tell(tracker, "@a:w.test", "offline", clock.now)  # a /sync never makes anyone offline
    tracker.apply("@a:w.test", UserPresence("online", None, clock.now, 5, True))
    assert not must_tell(tracker, "@a:w.test", "online", clock.now + 1)
    assert must_tell(tracker, "@a:w.test", "online", clock.now + worker_feed.TELL_EVERY_S)  # activity, now and then
    assert not must_tell(tracker, "@a:w.test", "online", clock.now + worker_feed.TELL_EVERY_S + 1)  # noted at once
    assert must_tell(tracker, "@a:w.test", "unavailable", clock.now)
    tracker.apply("@a:w.test", UserPresence("unavailable", None, clock.now, 6, True))
    assert not must_tell(tracker, "@a:w.test", "unavailable", clock.now)
    assert must_tell(tracker, "@a:w.test", "online", clock.now)


def test_a_worker_reads_its_feed_over_http_and_stops_when_it_ends_or_fails() -> None:
    """ReaderWorker.follow_feed against a scripted main process on loopback: the snapshot read before it
    returns, later lines in the background, a refused line skipped, and every way a feed can fail."""
    from aiohttp import web

    from lowband.gateway.api.http.workers import FEED_PATH, SECRET_HEADER, ReaderWorker

    snapshot = (b'{"k":"hello","v":1,"serial":100}\n{"k":"pos","persisted":5,"servable":5}\n{"k":"ready"}\n')
    scripts: dict[str, tuple[int, list[bytes], float]] = {
        "ok": (200, [snapshot, b"not json\n", b'{"k":"pos","persisted":9,"servable":8}\n'], 0.0),
        "short": (200, [b'{"k":"hello","v":1,"serial":100}\n'], 0.0),
        "refused": (403, [], 0.0),
        "stalls": (200, [b'{"k":"hello","v":1,"serial":100}\n'], 1.0),
    }

    async def run() -> None:
        chosen = {"name": "ok"}
        seen_secrets: list[str | None] = []

        async def feed(request: web.Request) -> web.StreamResponse:
            seen_secrets.append(request.headers.get(SECRET_HEADER))
            status, parts, hold = scripts[chosen["name"]]
            if status != 200:
                return web.Response(status=status)
            response = web.StreamResponse()
            await response.prepare(request)
            for part in parts:
                await response.write(part)
                await asyncio.sleep(0.05)
            await asyncio.sleep(hold)
            return response

        app = web.Application()
        app.router.add_get(FEED_PATH, feed)
        async with stub_server(app) as port:
            for name, expected in (("short", "ended before its snapshot"), ("refused", "HTTP 403"),
                                   ("stalls", "not complete within 0.3 s")):  # fmt: skip
                chosen["name"] = name
                worker = ReaderWorker(1, f"http://127.0.0.1:{port}", "s3cret", process(Clock()))
                await worker.start()
                try:
                    with pytest.raises(RuntimeError, match=expected):
                        await worker.follow_feed(FeedMirror(worker.services), lambda: None, timeout_s=0.3)
                finally:
                    await worker.close()
            chosen["name"] = "ok"
            services = process(Clock())
            worker = ReaderWorker(1, f"http://127.0.0.1:{port}", "s3cret", services)
            await worker.start()
            mirror = FeedMirror(services)
            ended = asyncio.Event()
            try:
                await worker.follow_feed(mirror, ended.set, timeout_s=5)
                assert mirror.ready and (mirror.persisted, services.typing.serial) == (5, 100)
                await asyncio.wait_for(ended.wait(), 5)  # the main process ended the feed: the worker is told
                assert (mirror.refused, mirror.persisted, mirror.servable) == (1, 9, 8)
            finally:
                await worker.close()
            assert set(seen_secrets) == {"s3cret"}

    asyncio.run(asyncio.wait_for(run(), 60))
