"""The store Protocols (``gateway/store/interfaces.py``), exercised through the interface only.

Each scenario receives a :class:`Store` from a factory in :data:`STORES` and
uses nothing but the Protocols' methods, so a second store (PostgreSQL) runs
the same scenarios by adding its factory. What is checked is the contract
the docstrings promise: errors raised, ordering, "committed" (``persisted``
moves only after the commit, a reopened store sees every acknowledged
write), all-or-nothing batches, and that events built with ``sign_later``
are stored signed. One test compares the SQLite classes with the Protocols
member by member, so a method that drifts from its Protocol fails here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lowband.gateway.app import open_store
from lowband.gateway.matrix.events import Event, build_event, verify_event
from lowband.gateway.matrix.room_versions import V10
from lowband.gateway.matrix.signing import SigningKey
from lowband.gateway.store import interfaces
from lowband.gateway.store.interfaces import (
    DeviceNameTaken,
    EventWrite,
    InflightRow,
    NoFreeAddress,
    StateMap,
    Store,
    UserExists,
)
from lowband.gateway.store.sqlite.readonly import ReadOnlyEvents
from lowband.gateway.store.sqlite.store import SQLiteStore
from lowband.gateway.store.txn_keys import txn_digest

T = TypeVar("T")
SERVER = "localhost"
ALICE = f"@alice:{SERVER}"
BOB = f"@bob:{SERVER}"

#: The PostgreSQL server the store's tests use (skipped when it does not answer).
POSTGRES_URL = os.environ.get("LOWBAND_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"


def _postgres(directory: Path) -> Store:
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except Exception as exc:  # not installed, not running
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc}")
    from lowband.gateway.store.postgres.store import PostgresStore, schema_for_path

    os.environ["LOWBAND_TEST_POSTGRES_USED"] = POSTGRES_URL  # the run drops its schemas at the end (conftest.py)
    return PostgresStore(POSTGRES_URL, schema_for_path(directory / "pg"))


#: id → function opening (creating on first use) a store in a directory.
STORES: dict[str, Callable[[Path], Store]] = {
    "sqlite": lambda d: SQLiteStore(d / "lowband.db"),
    "postgresql": _postgres,
}


@pytest.fixture(params=sorted(STORES))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Opens the store of one kind on this test's directory (again after a close, to check durability)."""
    return lambda: STORES[request.param](tmp_path)


def with_store(opener: Callable[[], Store], scenario: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``scenario`` on a freshly opened store inside an event loop; the store is closed afterwards."""

    async def main() -> T:
        store = opener()
        try:
            return await scenario(store)
        finally:
            store.close()

    return asyncio.run(main())


# ------------------------------------------------------------- conformance


def _members(protocol: type) -> dict[str, Any]:
    """Methods and properties a Protocol declares itself (not those of Protocol or object)."""
    return {name: value for name, value in vars(protocol).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))}  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "part"),
    [
        (interfaces.AccountStore, None),
        (interfaces.RoomStore, None),
        (interfaces.ReceiptStore, None),
        (interfaces.MediaStore, None),
        (interfaces.Store, None),
        (interfaces.LinkDeviceStore, "link_devices"),
        (interfaces.MqttBridgeStore, "mqtt"),
        (interfaces.FederationStore, "federation"),
        (interfaces.RelationStore, "relations"),
        (interfaces.PushStore, "push"),
        (interfaces.SearchStore, "search"),
    ],
)
def test_each_sqlite_class_has_every_member_of_its_protocol_with_the_same_signature(
    tmp_path: Path, protocol: type, part: str | None
) -> None:
    store = SQLiteStore(tmp_path / "lowband.db")
    try:
        implementation = getattr(store, part) if part else store
        cls = type(implementation)
        members = _members(protocol)
        assert members, f"{protocol.__name__} declares nothing"
        for name, declared in members.items():
            assert hasattr(implementation, name), f"{cls.__name__} lacks {name}"
            if isinstance(declared, property):  # a plain attribute or a property will do
                continue
            actual = getattr(cls, name)
            assert inspect.iscoroutinefunction(actual) == inspect.iscoroutinefunction(declared), f"{name}: async or not"
            want = [(p.name, p.kind, p.default) for p in inspect.signature(declared).parameters.values()]
            have = [(p.name, p.kind, p.default) for p in inspect.signature(actual).parameters.values()]
            assert have == want, f"{cls.__name__}.{name}"
    finally:
        store.close()


# ---------------------------------------------------------------- accounts


def test_accounts_tokens_devices_filters_and_account_data(opener: Callable[[], Store]) -> None:
    async def scenario(store: Store) -> None:
        await store.create_user(ALICE, "hash-a", False, 1)
        with pytest.raises(UserExists):
            await store.create_user(ALICE, "other", True, 2)
        await asyncio.to_thread(store.create_user_sync, BOB, "hash-b", True, 3)
        with pytest.raises(UserExists):
            await asyncio.to_thread(store.create_user_sync, BOB, "x", False, 4)
        user = store.get_user(ALICE)
        assert user is not None and user["password_hash"] == "hash-a" and not user["admin"]
        assert store.get_user("@nobody:localhost") is None

        await store.set_profile_field(ALICE, "displayname", "Alice")
        with pytest.raises(ValueError):
            await store.set_profile_field(ALICE, "password_hash", "stolen")
        assert store.get_user(ALICE)["displayname"] == "Alice"  # type: ignore[index]

        await store.add_token("t1", ALICE, "PHONE", "phone", 5)
        await store.add_token("t2", ALICE, "PHONE", None, 6)  # None keeps the name
        await store.add_token("t3", ALICE, "LAPTOP", "laptop", 7)
        assert store.lookup_token("t2") == (ALICE, "PHONE")
        assert store.lookup_token("nope") is None
        assert [(d.device_id, d.display_name) for d in store.user_devices(ALICE)] == [("LAPTOP", "laptop"),
                                                                                      ("PHONE", "phone")]  # fmt: skip
        assert store.user_device(ALICE, "PHONE") == ("PHONE", "phone")
        assert store.user_device(BOB, "PHONE") is None
        await store.delete_token("t1")
        assert store.lookup_token("t1") is None
        assert store.user_device(ALICE, "PHONE") is not None  # t2 still holds it
        await store.delete_token("t2")
        assert store.user_device(ALICE, "PHONE") is None  # gone with its last token

        assert [await store.add_filter(ALICE, '{"a":1}'), await store.add_filter(ALICE, "{}"),
                await store.add_filter(BOB, "{}")] == [0, 1, 0]  # fmt: skip
        assert store.get_filter(ALICE, 0) == {"a": 1}
        assert store.get_filter(ALICE, 7) is None and store.get_filter(ALICE, -1) is None

        first = await store.set_account_data(ALICE, "", "m.push_rules", {"v": 1})
        assert store.persisted >= first
        second = await store.set_account_data(ALICE, "!r:localhost", "m.tag", {"v": 2})
        third = await store.set_account_data(ALICE, "", "m.push_rules", {"v": 3})  # replaces the first
        assert first < second < third
        assert store.get_account_data(ALICE, "", "m.push_rules") == {"v": 3}
        assert store.get_account_data(BOB, "", "m.push_rules") is None
        assert sorted(store.account_data_since(ALICE, 0, third)) == [("", "m.push_rules", {"v": 3}),
                                                                     ("!r:localhost", "m.tag", {"v": 2})]  # fmt: skip
        assert store.account_data_since(ALICE, second, third) == [("", "m.push_rules", {"v": 3})]
        assert store.account_data_since(ALICE, 0, first) == []  # the entry moved on to `third`

    with_store(opener, scenario)

    async def reopened(store: Store) -> None:  # everything acknowledged is on disk
        assert store.get_user(BOB) is not None and store.lookup_token("t3") == (ALICE, "LAPTOP")
        assert store.get_account_data(ALICE, "", "m.push_rules") == {"v": 3}

    with_store(opener, reopened)


# ------------------------------------------------------------------ events


class RoomBuilder:
    """Builds a room's events and their writes as the room service would, using only the Protocol."""

    def __init__(self, store: Store, key: SigningKey, room_id: str = "!room:localhost") -> None:
        self.store = store
        self.key = key
        self.room_id = room_id
        self.group: int | None = None
        self.extremities: list[str] = []
        self.depth = 0
        self.state: StateMap = {}

    def write(self, sender: str, event_type: str, content: dict[str, Any], state_key: str | None = None, *,
              txn: tuple[str, str, str] | None = None, sign_later: bool = False) -> EventWrite:  # fmt: skip
        event = build_event(
            room_id=self.room_id, sender=sender, type=event_type, content=content, prev_events=self.extremities,
            auth_events=[], depth=self.depth + 1, origin_server_ts=1_700_000_000_000 + self.depth,
            server_name=SERVER, signing_key=self.key, state_key=state_key, sign_later=sign_later,
        )  # fmt: skip
        before, after, new_group = self.group, self.group, None
        if state_key is not None:
            new_group = self.store.new_state_group(self.room_id, before, {(event_type, state_key): event.event_id})
            after = new_group.group
            self.state = {**self.state, (event_type, state_key): event.event_id}
        write = EventWrite(event, self.store.next_stream(), before, after, new_group, txn)
        self.group, self.extremities, self.depth = after, [event.event_id], event.depth
        return write

    def row(self) -> interfaces.RoomHeadRow:
        return {"room_version": "10", "creator": ALICE, "state_group": self.group, "extremities": self.extremities,
                "depth": self.depth}  # fmt: skip


def _verify(event: Event, key: SigningKey) -> None:
    verify_event(event.pdu, V10, lambda server, key_id: key.verify_key_bytes if key_id == key.key_id else None)


def test_a_batch_commits_together_signed_in_order_and_only_then_counts_as_persisted(
    opener: Callable[[], Store],
) -> None:
    key = SigningKey.generate()

    async def scenario(store: Store) -> tuple[str, list[str], int | None]:
        room = RoomBuilder(store, key)
        writes = [
            room.write(ALICE, "m.room.create", {"creator": ALICE, "room_version": "10"}, ""),
            room.write(ALICE, "m.room.member", {"membership": "join"}, ALICE),
            room.write(ALICE, "m.room.message", {"msgtype": "m.text", "body": "one"}, txn=(ALICE, "D", "t1"),
                       sign_later=True),
            room.write(ALICE, "m.room.message", {"msgtype": "m.text", "body": "two"}, sign_later=True),
        ]  # fmt: skip
        # A new group answers at once, before anything is written.
        assert store.state_for_group(room.group) == room.state
        before = store.persisted
        committed = store.persist_events(writes, room.row())
        assert store.persisted == before  # nothing counts before the commit is awaited
        await committed
        assert store.persisted == writes[-1].position
        assert [w.position for w in writes] == sorted(w.position for w in writes)

        for write in writes:
            row = store.get_event(write.event.event_id)
            assert row is not None and row["stream"] == write.position and row["rejected"] is None
            assert row["state_before"] == write.state_before and row["state_after"] == write.state_after
            _verify(row["event"], key)  # signed by the store (sign_later) or at build time, and it verifies
        # an edge's key ("t1" is no client's): its digest kept, no client ID
        assert store.get_event(writes[2].event.event_id)["txn"] == (txn_digest(ALICE, "D", "t1"), None)  # type: ignore[index]
        assert store.events_for_txns([(ALICE, "D", "t1"), (ALICE, "D", "t9")]) == {
            (ALICE, "D", "t1"): writes[2].event.event_id}  # fmt: skip

        room_row = store.get_room(room.room_id)
        assert room_row is not None
        assert (room_row["extremities"], room_row["depth"], room_row["state_group"]) == ([writes[-1].event.event_id],
                                                                                         4, room.group)  # fmt: skip
        assert store.membership(room.room_id, ALICE) == "join"
        assert store.rooms_for_user(ALICE) == [(room.room_id, "join", writes[1].position, writes[1].event.event_id)]

        upto = store.persisted
        forwards = store.room_events(room.room_id, after=0, upto=upto, limit=10, backwards=False)
        assert [r["event"].event_id for r in forwards] == [w.event.event_id for w in writes]
        newest = store.room_events(room.room_id, after=0, upto=upto, limit=2, backwards=True)
        assert [r["event"].event_id for r in newest] == [writes[3].event.event_id, writes[2].event.event_id]
        middle = store.room_events(room.room_id, after=writes[0].position, upto=writes[2].position, limit=10,
                                   backwards=False)  # fmt: skip
        assert [r["stream"] for r in middle] == [writes[1].position, writes[2].position]

        # A batch that fails (a transaction ID already used) stores none of its events.
        failing = [room.write(BOB, "m.room.message", {"body": "three"}, sign_later=True),
                   room.write(ALICE, "m.room.message", {"body": "dup"}, txn=(ALICE, "D", "t1"))]  # fmt: skip
        persisted = store.persisted
        with pytest.raises(Exception):  # noqa: B017 - the contract names no type: any exception means "not stored"
            await store.persist_events(failing, room.row())
        assert all(store.get_event(w.event.event_id) is None for w in failing)
        assert store.persisted == persisted
        assert store.get_room(room.room_id)["depth"] == 4  # type: ignore[index]  # the room row did not move
        return room.room_id, [w.event.event_id for w in writes], writes[1].state_after

    room_id, event_ids, group = with_store(opener, scenario)

    async def reopened(store: Store) -> None:
        assert store.persisted >= 4
        assert [r["event"].event_id for r in store.room_events(room_id, after=0, upto=store.persisted, limit=10,
                                                                  backwards=False)] == event_ids  # fmt: skip
        assert store.state_for_group(group) == {("m.room.create", ""): event_ids[0],
                                                ("m.room.member", ALICE): event_ids[1]}  # fmt: skip
        await store.forget_room(room_id, ALICE)
        assert store.rooms_for_user(ALICE) == []
        assert store.membership(room_id, ALICE) == "join"  # forgetting hides, it does not leave

    with_store(opener, reopened)


def test_an_event_first_stored_as_an_outlier_is_placed_in_the_timeline_later(opener: Callable[[], Store]) -> None:
    # A joining server keeps the room's state as outliers; paging back later places the same events
    # in the timeline (history below it), which replaces their rows whether or not they make a group.
    key = SigningKey.generate()

    async def scenario(store: Store) -> None:
        room = RoomBuilder(store, key)
        create = room.write(ALICE, "m.room.create", {"creator": ALICE, "room_version": "10"}, "")
        message = room.write(ALICE, "m.room.message", {"msgtype": "m.text", "body": "old"})
        outliers = [dataclasses.replace(w, state_before=None, state_after=None, new_group=None, outlier=True)
                    for w in (create, message)]  # fmt: skip
        await store.persist_events(outliers, None)
        assert all(store.get_event(w.event.event_id)["outlier"] for w in outliers)  # type: ignore[index]
        assert store.room_events(room.room_id, after=-(1 << 62), upto=store.persisted, limit=10, backwards=False) == []
        # Placed: the create event with its group, the message with no group of its own and no
        # memberships (the plain path, batched in one insert).
        placed = [dataclasses.replace(create, position=store.next_stream(), replaces_outlier=True),
                  dataclasses.replace(message, position=store.next_stream(), memberships=(), replaces_outlier=True)]  # fmt: skip
        await store.persist_events(placed, room.row())
        for write in placed:
            row = store.get_event(write.event.event_id)
            assert row is not None and not row["outlier"] and row["stream"] == write.position
        shown = store.room_events(room.room_id, after=-(1 << 62), upto=store.persisted, limit=10, backwards=False)
        assert [r["event"].event_id for r in shown] == [create.event.event_id, message.event.event_id]

    with_store(opener, scenario)


def test_filters_are_kept_once_and_bounded_per_user(opener: Callable[[], Store]) -> None:
    async def scenario(store: Store) -> None:
        first = await store.add_filter(ALICE, '{"a":1}')
        assert await store.add_filter(ALICE, '{"a":1}') == first  # the same text keeps its ID
        for i in range(1, interfaces.MAX_FILTERS_PER_USER):
            assert await store.add_filter(ALICE, f'{{"a":{i + 1}}}') == first + i
        with pytest.raises(interfaces.TooManyFilters):
            await store.add_filter(ALICE, '{"one":"too many"}')
        assert await store.add_filter(ALICE, '{"a":7}') == first + 6  # an existing one is still found
        assert await store.add_filter(BOB, '{"one":"too many"}') == 0  # the bound is per user
        assert store.get_filter(ALICE, first) == {"a": 1}

    with_store(opener, scenario)


def test_long_state_chains_load_back_from_disk(opener: Callable[[], Store]) -> None:
    key = SigningKey.generate()

    async def scenario(store: Store) -> tuple[int | None, StateMap]:
        room = RoomBuilder(store, key)
        writes = [room.write(ALICE, "m.room.create", {"creator": ALICE, "room_version": "10"}, "")]
        writes += [room.write(ALICE, "org.example.n", {"n": n}, f"key{n % 50}") for n in range(90)]
        await store.persist_events(writes, room.row())
        return room.group, room.state

    group, state = with_store(opener, scenario)

    async def reopened(store: Store) -> None:  # no cache: every group is read back from its stored chain
        assert store.state_for_group(group) == state
        with pytest.raises(KeyError):
            store.state_for_group(10**9)

    with_store(opener, reopened)


# ---------------------------------------------------- aliases, receipts, media


def test_aliases_receipts_directory_and_media(opener: Callable[[], Store]) -> None:
    key = SigningKey.generate()

    async def scenario(store: Store) -> None:
        room = RoomBuilder(store, key)
        await store.persist_events([room.write(ALICE, "m.room.create", {"creator": ALICE, "room_version": "10"}, "")],
                                   room.row())  # fmt: skip
        assert await store.create_alias("#b:localhost", room.room_id, ALICE)
        assert await store.create_alias("#a:localhost", room.room_id, BOB)
        assert not await store.create_alias("#a:localhost", "!other:localhost", ALICE)
        assert store.get_alias("#a:localhost") == (room.room_id, BOB)
        assert store.aliases_for_room(room.room_id) == ["#a:localhost", "#b:localhost"]
        await store.delete_alias("#a:localhost")
        await store.delete_alias("#never:localhost")
        assert store.get_alias("#a:localhost") is None

        assert store.public_rooms() == []
        await store.set_room_public(room.room_id, True)
        assert store.public_rooms() == [room.room_id] and store.get_room(room.room_id)["is_public"]  # type: ignore[index]

        first = await store.set_receipt(room.room_id, "m.read", ALICE, "$one", 10)
        assert store.persisted >= first
        second = await store.set_receipt(room.room_id, "m.read", ALICE, "$two", 11)
        assert store.get_receipt(room.room_id, "m.read", ALICE) == "$two"
        assert store.get_receipt(room.room_id, "m.read.private", ALICE) is None
        assert store.receipts_since(room.room_id, 0, second) == [("m.read", ALICE, "$two", 11, None)]
        assert store.receipts_since(room.room_id, second, store.persisted) == []

        await store.add_media("m1", "image/png", None, 3, "ab" * 32, ALICE, 12)
        assert store.get_media("m1") == {"content_type": "image/png", "filename": None, "size": 3, "sha256": "ab" * 32}
        assert store.get_media("m2") is None

    with_store(opener, scenario)


# ------------------------------------------------------------ edges' tables


def test_link_devices_provision_rekey_revoke_sessions_and_announcements(opener: Callable[[], Store]) -> None:
    async def scenario(store: Store) -> None:
        devices = store.link_devices
        empty = devices.version()
        provision = devices.provision
        first = await asyncio.to_thread(provision, "kitchen", "@dev.kitchen:localhost", b"\x01" * 32, ["!r:x"],
                                        {"version": 1}, "serial:/dev/a", 1000, rekey=False)  # fmt: skip
        second = await asyncio.to_thread(provision, "hall", "@dev.hall:localhost", b"\x02" * 32, [], {}, "lora:/dev/b",
                                         1000, rekey=False)  # fmt: skip
        assert (first, second) == (1, 2)  # the lowest free addresses
        added = devices.version()
        assert added != empty
        with pytest.raises(DeviceNameTaken):
            await asyncio.to_thread(provision, "kitchen", "@x:localhost", b"\x03" * 32, [], {}, "serial:/dev/c", 2000,
                                    rekey=False)  # fmt: skip
        again = await asyncio.to_thread(provision, "kitchen", "@ignored:localhost", b"\x04" * 32, ["!s:x"], {},
                                        "serial:/dev/d", 500, rekey=True)  # fmt: skip
        assert again == first
        kitchen = next(d for d in devices.devices() if d.name == "kitchen")
        assert (kitchen.user_id, kitchen.static_public, kitchen.rooms, kitchen.link) == (
            "@dev.kitchen:localhost", b"\x04" * 32, ["!s:x"], "serial:/dev/d")  # fmt: skip
        assert kitchen.key_ts == 1001 and kitchen.created_ts == 1000  # max(old + 1, now) when the clock is behind
        assert devices.version() != added
        assert [d.name for d in devices.devices()] == ["hall", "kitchen"]

        await asyncio.to_thread(devices.revoke, "hall")
        await asyncio.to_thread(devices.revoke, "never-provisioned")
        assert [d.name for d in devices.devices() if d.revoked] == ["hall"]

        await devices.save_session("kitchen", 1001, {"rx": 5})
        assert devices.session_state("kitchen", 1001) == {"rx": 5}
        assert devices.session_state("kitchen", 1000) is None  # a session belongs to one key
        await devices.save_session("kitchen", 1001, None)
        assert devices.session_state("kitchen", 1001) is None

        assert not devices.announced("kitchen", "!s:x", 1001)
        await devices.mark_announced("kitchen", "!s:x", 1001)
        await devices.mark_announced("kitchen", "!s:x", 1001)
        assert devices.announced("kitchen", "!s:x", 1001) and not devices.announced("kitchen", "!s:x", 1002)

    with_store(opener, scenario)


def test_link_addresses_run_out_after_254_devices(opener: Callable[[], Store]) -> None:
    async def scenario(store: Store) -> None:
        def fill() -> None:
            for n in range(254):
                store.link_devices.provision(f"d{n}", f"@dev.d{n}:localhost", bytes(32), [], {}, "serial:x", 1,
                                             rekey=False)  # fmt: skip
            with pytest.raises(NoFreeAddress):
                store.link_devices.provision("one-more", "@dev.one-more:localhost", bytes(32), [], {}, "serial:x", 1,
                                             rekey=False)  # fmt: skip

        await asyncio.to_thread(fill)
        assert sorted(d.address for d in store.link_devices.devices()) == list(range(1, 255))

    with_store(opener, scenario)


def test_mqtt_tables(opener: Callable[[], Store]) -> None:
    async def scenario(store: Store) -> None:
        mqtt = store.mqtt
        rows = [InflightRow("r.1", "a/b", b"\x01" * 8, 7, 1000), InflightRow("r.2", "a/c", b"\x02" * 8, 8, 2000)]
        await asyncio.wrap_future(mqtt.add_inflight("broker", rows))
        # A row already there is kept as it was.
        await asyncio.wrap_future(mqtt.add_inflight("broker", [InflightRow("r.1", "other", b"", 0, 3000)]))
        assert sorted(mqtt.inflight("broker", 0)) == rows
        assert mqtt.inflight("broker", 1500) == [rows[1]]
        assert mqtt.inflight("elsewhere", 0) == []
        await asyncio.wrap_future(mqtt.drop_inflight("broker", ["r.2"]))
        assert mqtt.inflight("broker", 0) == [rows[0]]
        await mqtt.purge_inflight("broker", 1001)
        assert mqtt.inflight("broker", 0) == []

        assert mqtt.cursor("out", "!r:x") is None
        await mqtt.set_cursor("out", "!r:x", 5)
        await mqtt.set_cursor("out", "!r:x", 9)
        assert mqtt.cursor("out", "!r:x") == 9

        await mqtt.add_bridge_user("@mqtt_a:localhost", 1)
        await mqtt.add_bridge_user("@mqtt_a:localhost", 2)
        assert mqtt.bridge_users() == {"@mqtt_a:localhost"}

        await mqtt.add_discovery("broker", "ha/x/config", b"one")
        await mqtt.add_discovery("broker", "ha/x/config", b"two")
        assert mqtt.discovery("broker") == [("ha/x/config", b"two")]

        await mqtt.set_subscriptions("broker", {"a/#", "b/+"})
        await mqtt.set_subscriptions("broker", {"c/#"})
        assert mqtt.subscriptions("broker") == {"c/#"} and mqtt.subscriptions("other") == set()

    with_store(opener, scenario)

    async def reopened(store: Store) -> None:
        assert store.mqtt.cursor("out", "!r:x") == 9 and store.mqtt.bridge_users() == {"@mqtt_a:localhost"}

    with_store(opener, reopened)


def test_federation_invites_and_knocks_on_rooms_held_elsewhere(opener: Callable[[], Store]) -> None:
    room, other = "!r:elsewhere", "!s:elsewhere"
    state = [{"type": "m.room.name", "state_key": "", "content": {"name": "Porch"}, "sender": "@x:elsewhere"}]

    async def scenario(store: Store) -> None:
        fed = store.federation
        assert fed.knock(room, ALICE) is None and fed.invite(room, ALICE) is None
        await fed.save_knock(room, ALICE, "$k1", "10", state, ["elsewhere", "third"])
        await fed.save_knock(room, ALICE, "$k2", "10", state, ["elsewhere"])  # knocking again replaces the first
        await fed.save_invite(room, ALICE, "$i1", "10", state)
        assert fed.knock(room, ALICE) == ("$k2", "10", state, ["elsewhere"])
        assert fed.invite(room, ALICE) == ("$i1", "10", state)  # kept apart from the knock
        assert fed.knock(room, BOB) is None and fed.knock(other, ALICE) is None

    with_store(opener, scenario)

    async def reopened(store: Store) -> None:
        assert store.federation.knock(room, ALICE) == ("$k2", "10", state, ["elsewhere"])

    with_store(opener, reopened)


# -------------------------------------------------------- read-only view


@pytest.mark.sqlite_only
def test_the_read_only_view_sees_committed_events_and_never_writes(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "lowband.db"

    async def scenario(store: Store) -> str:
        room = RoomBuilder(store, key)
        writes = [room.write(ALICE, "m.room.create", {"creator": ALICE, "room_version": "10"}, "")]
        writes += [room.write(ALICE, "m.room.message", {"body": f"m{n}", "n": n}, sign_later=True) for n in range(5)]
        await store.persist_events(writes, room.row())
        with ReadOnlyEvents(path) as view:  # while the store is open, as a benchmark reads a running gateway
            count, last = view.count_after(room.room_id, "m.room.message", 0)
            assert (count, last) == (5, writes[-1].position)
            assert view.count_after(room.room_id, "m.room.message", writes[3].position) == (2, writes[-1].position)
            assert view.count_after(room.room_id, "m.room.message", writes[-1].position) == (0, None)
            assert [c["n"] for c in view.contents(room.room_id, "m.room.message")] == [0, 1, 2, 3, 4]
        return room.room_id

    with_store(lambda: open_store(path), scenario)
    with pytest.raises(Exception):  # noqa: B017 - sqlite3.OperationalError: mode=ro never creates a file
        ReadOnlyEvents(tmp_path / "missing.db").count_after("!r:x", "m.room.message", 0)
    assert not (tmp_path / "missing.db").exists()
