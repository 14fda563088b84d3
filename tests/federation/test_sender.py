"""The outbound transaction sender against an in-memory peer: batching, retries with the same ID, restarts."""

from __future__ import annotations

import asyncio

from lowband.gateway.federation.client import PeerUnreachable
from lowband.gateway.federation.sender import FederationSender
from lowband.gateway.homeserver.retry_schedule import DeliverySchedule
from lowband.gateway.store.sqlite.database import Database
from lowband.gateway.store.sqlite.federation import FederationTables


class Peer:
    """Records transactions per destination; fails the next ``fail`` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.seen: list[tuple[str, str, list[str], list[dict]]] = []

    async def request(self, destination, method, path, *, body=None, timeout=None, **_):
        if self.fail:
            self.fail -= 1
            raise PeerUnreachable(destination, 0, "M_UNREACHABLE", "down")
        txn = path.rsplit("/", 1)[1]
        self.seen.append((destination, txn, [p["event_id"] for p in body["pdus"]], body["edus"]))
        return {"pdus": {p["event_id"]: {} for p in body["pdus"]}}


class World:
    def __init__(self, tmp_path, peer, servers):
        self.db = Database(tmp_path / "db.sqlite", "")
        self.tables = FederationTables(self.db)
        self.peer = peer
        self.servers = servers  # event_id -> set of servers

    def sender(self):
        return FederationSender("us", "k1", self.peer, self.tables, lambda e: self.servers.get(e, set()),
                                lambda e: {"event_id": e}, schedule=DeliverySchedule(base=0.01, cap=0.05))  # fmt: skip

    async def log(self, sender, stream, event_id, servers):
        self.servers[event_id] = servers
        await self.db.write(self.tables.log_job(stream, event_id, "!r:us"))
        await sender.event_logged(stream, event_id)


async def until(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_a_backlog_goes_out_in_transactions_of_fifty_to_the_servers_of_each_event(tmp_path):
    async def main():
        world = World(tmp_path, Peer(), {})
        sender = world.sender()
        await sender.start()
        for i in range(1, 121):
            await world.log(sender, i, f"$e{i}", {"b", "us"} if i != 7 else {"c"})
        await until(lambda: sum(len(s[2]) for s in world.peer.seen if s[0] == "b") == 119)
        await until(lambda: any(s[0] == "c" for s in world.peer.seen))
        await sender.stop()
        to_b = [s for s in world.peer.seen if s[0] == "b"]
        assert all(len(s[2]) <= 50 for s in to_b)
        assert [e for s in to_b for e in s[2]] == [f"$e{i}" for i in range(1, 121) if i != 7]
        assert len({s[1] for s in to_b}) == len(to_b)  # every transaction ID used once
        assert [s[2] for s in world.peer.seen if s[0] == "c"] == [["$e7"]]
        assert not any(s[0] == "us" for s in world.peer.seen)
        world.db.close()

    asyncio.run(main())


def test_a_failed_transaction_is_retried_with_the_same_id_and_pdus_also_after_a_restart(tmp_path):
    async def main():
        world = World(tmp_path, Peer(fail=3), {})
        sender = world.sender()
        await sender.start()
        for i in range(1, 4):
            await world.log(sender, i, f"$e{i}", {"b"})
        await until(lambda: world.peer.fail == 0)
        await sender.stop()  # "crash" while the first transaction is still unconfirmed
        assert world.peer.seen == []
        world.peer.fail = 1
        restarted = world.sender()
        await restarted.start()
        await world.log(restarted, 4, "$e4", {"b"})
        await until(lambda: sum(len(s[2]) for s in world.peer.seen) == 4)
        await restarted.stop()
        first, *rest = world.peer.seen
        # the transaction begun before the restart went out under its original ID, with what it held then
        assert first[1] == "k1.1" and first[2] in (["$e1"], ["$e1", "$e2"], ["$e1", "$e2", "$e3"])
        assert [e for s in world.peer.seen for e in s[2]] == ["$e1", "$e2", "$e3", "$e4"]
        world.db.close()

    asyncio.run(main())


def test_edus_are_coalesced_bounded_and_sent_with_or_without_pdus(tmp_path):
    async def main():
        world = World(tmp_path, Peer(), {})
        sender = world.sender()
        for i in range(3):
            sender.send_edu("b", "m.typing", {"room_id": "!r", "user_id": "@a:us", "typing": i % 2 == 0},
                            key=("!r", "@a:us"))  # fmt: skip
        for i in range(1500):
            sender.send_edu("c", "m.receipt", {"n": i}, key=(str(i),))
        sender.send_edu("us", "m.typing", {})
        await sender.start()
        await until(lambda: any(s[0] == "b" for s in world.peer.seen) and
                    sum(len(s[3]) for s in world.peer.seen if s[0] == "c") == 1000)  # fmt: skip
        await sender.stop()
        to_b = [s for s in world.peer.seen if s[0] == "b"]
        assert len(to_b) == 1 and to_b[0][2] == [] and [e["content"]["typing"] for e in to_b[0][3]] == [True]
        to_c = [e["content"]["n"] for s in world.peer.seen if s[0] == "c" for e in s[3]]
        assert to_c == list(range(500, 1500))  # the 500 oldest were dropped, order kept
        assert all(len(s[3]) <= 100 for s in world.peer.seen)
        world.db.close()

    asyncio.run(main())


def test_backoff_doubles_to_a_minute_and_a_peer_that_contacts_us_is_retried_at_once():
    schedule = DeliverySchedule(base=1.0, cap=60.0)
    schedule.add_work("b")
    assert schedule.due(0.0) == ["b"] and schedule.due(0.0) == []  # one attempt at a time
    assert schedule.failed("b", 0.0) == 1.0
    assert schedule.due(0.5) == [] and schedule.due(1.0) == ["b"]
    assert schedule.failed("b", 1.0) == 3.0  # 2 s after the second failure
    for _ in range(40):
        schedule.due(1000.0)
        schedule.failed("b", 100.0)
    assert schedule.state("b").retry_at == 160.0  # capped at a minute, however long the peer is away
    assert schedule.failed("b", 100.0, retry_after=600.0) == 160.0  # a peer's retry_after is capped too
    assert schedule.due(100.0) == [] and schedule.next_deadline() == 160.0
    schedule.wake("b")
    assert schedule.due(100.0) == ["b"]
    schedule.succeeded("b", more=False)
    assert schedule.next_deadline() is None and schedule.due(200.0) == []


def test_events_logged_back_to_back_for_a_new_peer_all_reach_it(tmp_path):
    # event_logged runs as separate tasks: the second must not move where a new peer's delivery starts.
    async def main():
        world = World(tmp_path, Peer(), {})
        sender = world.sender()
        await sender.start()
        for i in range(1, 6):
            world.servers[f"$e{i}"] = {"b"}
            await world.db.write(world.tables.log_job(i, f"$e{i}", "!r:us"))
        await asyncio.gather(*(sender.event_logged(i, f"$e{i}") for i in range(1, 6)))
        await until(lambda: sum(len(s[2]) for s in world.peer.seen) == 5)
        await sender.stop()
        assert [e for s in world.peer.seen for e in s[2]] == [f"$e{i}" for i in range(1, 6)]
        world.db.close()

    asyncio.run(main())


def test_edus_wait_for_the_next_transaction_rather_than_pass_the_byte_budget(tmp_path):
    # Found: 100 to-device EDUs of 64 KiB beside large PDUs made a 9.5 MiB transaction, which another Lowband
    # refuses (413) at every retry of the same transaction: federation to it stopped.
    import json

    from lowband.gateway.federation import sender as sender_module

    async def main():
        world = World(tmp_path, Peer(), {})
        sender = world.sender()
        sizes: list[int] = []
        record = world.peer.request

        async def measured(destination, method, path, *, body=None, **kwargs):
            sizes.append(len(json.dumps(body).encode()))
            return await record(destination, method, path, body=body, **kwargs)

        world.peer.request = measured
        for i in range(100):
            sender.send_edu("b", "m.direct_to_device", {"n": i, "pad": "x" * 64_000}, key=(str(i),))
        await sender.start()
        await until(lambda: sum(len(s[3]) for s in world.peer.seen) == 100)
        await sender.stop()
        assert max(sizes) <= sender_module.MAX_TXN_BYTES + 1024 and len(sizes) >= 2
        assert [e["content"]["n"] for s in world.peer.seen for e in s[3]] == list(range(100))  # none lost, in order
        world.db.close()

    asyncio.run(main())


def test_kept_edus_survive_a_restart_and_go_out_in_order_until_accepted(tmp_path):
    # To-device messages for another server waited in memory: a restart before the peer took them lost them.
    async def main():
        world = World(tmp_path, Peer(fail=1000), {})
        sender = world.sender()
        await sender.start()
        await sender.send_kept_edus("b", [("m.direct_to_device", {"message_id": f"m{i}"}) for i in range(150)])
        sender.send_edu("b", "m.typing", {"typing": True}, key=("!r", "@a:us"))
        await until(lambda: world.peer.fail < 995)  # tried and failed a few times
        await sender.stop()  # "crash": nothing was accepted
        assert world.peer.seen == []
        world.peer.fail = 1
        restarted = world.sender()
        await restarted.start()
        # accepted, then forgotten (a stop between the two would send them again: the receiver dedupes)
        await until(lambda: sum(len(s[3]) for s in world.peer.seen) == 150 and world.tables.outbox("b", 1) == [])
        await restarted.stop()
        sent = [e["content"]["message_id"] for s in world.peer.seen for e in s[3]]
        assert sent == [f"m{i}" for i in range(150)]  # each once, in order; the typing notice died with the process
        assert all(len(s[3]) <= 100 for s in world.peer.seen)
        world.db.close()

    asyncio.run(main())
