"""Room upgrades (``POST /rooms/{roomId}/upgrade``) and room versions, through the client-server API of a gateway in
the test's loop; a matrix-nio client follows the tombstone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nio
from harness import Client, nio_client
from test_relations import V3, expect, gateway, make_room, q, text

from lowband.gateway.matrix import room_versions


async def state(client: Client, room: str, event_type: str, key: str = "") -> Any:
    return expect(await client.request("GET", f"{V3}/rooms/{q(room)}/state/{event_type}/{q(key)}"), 200)


async def upgrade(client: Client, room: str, body: Any) -> tuple[int, Any]:
    return await client.request("POST", f"{V3}/rooms/{q(room)}/upgrade", body)


def test_upgrade_copies_the_state_moves_aliases_and_closes_the_old_room(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob", "carol", "dave") as ((alice, bob, carol, dave), _):
            room = await make_room(alice, bob, carol, room_alias_name="hall", name="Hall", topic="talk",
                                   visibility="public", initial_state=[
                                       {"type": "m.room.avatar", "content": {"url": "mxc://localhost/a"}},
                                       {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                                       {"type": "m.room.server_acl", "content": {"allow": ["*"], "deny": ["evil.example"]}},
                                       {"type": "m.room.guest_access", "content": {"guest_access": "can_join"}},
                                       {"type": "m.space.child", "state_key": "!kid:localhost", "content": {"via": ["localhost"]}},
                                       {"type": "m.space.child", "state_key": "!gone:localhost", "content": {}},
                                   ])  # fmt: skip
            alias2 = "#hall2:localhost"
            expect(await alice.request("PUT", f"{V3}/directory/room/{q(alias2)}", {"room_id": room}), 200)
            expect(await alice.request("PUT", f"{V3}/rooms/{q(room)}/state/m.room.canonical_alias",
                                       {"alias": "#hall:localhost", "alt_aliases": [alias2]}), 200)  # fmt: skip
            levels = await state(alice, room, "m.room.power_levels")
            levels["users"][bob.user_id] = 20
            expect(await alice.request("PUT", f"{V3}/rooms/{q(room)}/state/m.room.power_levels", levels), 200)
            expect(await alice.request("POST", f"{V3}/rooms/{q(room)}/ban",
                                       {"user_id": carol.user_id, "reason": "spam"}), 200)  # fmt: skip
            last = await text(bob, room, "last words")

            # Not allowed: bob (level 20 < 100 for m.room.tombstone), dave (not joined).
            expect(await upgrade(bob, room, {"new_version": "11"}), 403, "M_FORBIDDEN")
            expect(await upgrade(dave, room, {"new_version": "11"}), 403, "M_FORBIDDEN")

            new = expect(await upgrade(alice, room, {"new_version": "11"}), 200)["replacement_room"]
            assert new != room
            create = await state(alice, new, "m.room.create")
            assert create["room_version"] == "11" and "creator" not in create
            assert create["predecessor"] == {"room_id": room, "event_id": last}
            assert (await state(alice, new, "m.room.name"))["name"] == "Hall"
            assert (await state(alice, new, "m.room.topic"))["topic"] == "talk"
            assert (await state(alice, new, "m.room.avatar"))["url"] == "mxc://localhost/a"
            assert (await state(alice, new, "m.room.encryption"))["algorithm"] == "m.megolm.v1.aes-sha2"
            assert (await state(alice, new, "m.room.server_acl"))["deny"] == ["evil.example"]
            assert (await state(alice, new, "m.room.guest_access"))["guest_access"] == "can_join"
            assert (await state(alice, new, "m.space.child", "!kid:localhost")) == {"via": ["localhost"]}
            expect(await alice.request("GET", f"{V3}/rooms/{q(new)}/state/m.space.child/{q('!gone:localhost')}"), 404)
            assert (await state(alice, new, "m.room.join_rules"))["join_rule"] == "public"
            assert (await state(alice, new, "m.room.history_visibility"))["history_visibility"] == "shared"
            new_levels = await state(alice, new, "m.room.power_levels")
            assert new_levels["users"] == {alice.user_id: 100, bob.user_id: 20}
            assert new_levels["events"] == levels["events"]
            ban = await state(alice, new, "m.room.member", carol.user_id)
            assert ban == {"membership": "ban", "reason": "spam"}
            assert await state(alice, new, "m.room.canonical_alias") == {"alias": "#hall:localhost",
                                                                          "alt_aliases": [alias2]}  # fmt: skip
            for alias in ("#hall:localhost", alias2):
                assert expect(await bob.request("GET", f"{V3}/directory/room/{q(alias)}"), 200)["room_id"] == new
            assert expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/aliases"), 200)["aliases"] == []
            public = expect(await dave.request("GET", f"{V3}/publicRooms"), 200)["chunk"]
            assert [r["room_id"] for r in public] == [new]

            # The old room: tombstone, emptied canonical alias, ordinary members silenced.
            tombstone = await state(bob, room, "m.room.tombstone")
            assert tombstone == {"body": "This room has been replaced", "replacement_room": new}
            assert await state(bob, room, "m.room.canonical_alias") == {}
            old_levels = await state(bob, room, "m.room.power_levels")
            assert (old_levels["events_default"], old_levels["invite"]) == (50, 50)
            expect(await bob.request("PUT", f"{V3}/rooms/{q(room)}/send/m.room.message/t1", {"body": "x"}), 403)

            # Members follow: bob joins the replacement; carol stays banned there.
            expect(await bob.request("POST", f"{V3}/join/{q(new)}", {}), 200)
            expect(await carol.request("POST", f"{V3}/join/{q(new)}", {}), 403, "M_FORBIDDEN")
            # A retry (after a lost response) answers the same room.
            assert expect(await upgrade(alice, room, {"new_version": "11"}), 200)["replacement_room"] == new

    asyncio.run(run())


def test_upgrade_refuses_bad_input(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice") as ((alice,), _):
            room = await make_room(alice)
            for version in ("1", "13", "", "x" * 5000, "10\x00"):
                body = expect(await upgrade(alice, room, {"new_version": version}), 400, "M_UNSUPPORTED_ROOM_VERSION")
                assert len(body["error"]) < 300
            for bad in ({}, {"new_version": 11}, {"new_version": None}, {"new_version": ["11"]},
                        {"new_version": "11", "additional_creators": ["@bob:localhost"]},
                        {"new_version": "12", "additional_creators": "@bob:localhost"},
                        {"new_version": "12", "additional_creators": ["bob"]}):  # fmt: skip
                expect(await upgrade(alice, room, bad), 400, "M_BAD_JSON")
            expect(await alice.request("POST", f"{V3}/rooms/{q(room)}/upgrade", raw=b"{nope"), 400, "M_NOT_JSON")
            expect(await alice.request("POST", f"{V3}/rooms/{q(room)}/upgrade", [1]), 400)
            expect(await upgrade(alice, "!unknown:localhost", {"new_version": "11"}), 404, "M_NOT_FOUND")
            expect(await upgrade(alice, "not-a-room", {"new_version": "11"}), 400, "M_INVALID_PARAM")
            expect(await alice.request("POST", f"{V3}/rooms/{q(room)}/upgrade", {"new_version": "11"}, token=False),
                   401)  # fmt: skip
            # Nothing was made by the refusals: the room has no tombstone.
            expect(await alice.request("GET", f"{V3}/rooms/{q(room)}/state/m.room.tombstone/"), 404)

    asyncio.run(run())


def test_upgrade_across_creator_rules_and_level_formats(tmp_path: Path) -> None:
    """v9 (integer strings) -> v12 (privileged creators) -> v11 (creators back in the levels)."""

    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
            v9 = await make_room(alice, bob, room_version="9",
                                 power_level_content_override={"state_default": "60", "users": {
                                     "@alice:localhost": "100", "@bob:localhost": "10"}})  # fmt: skip
            assert (await state(alice, v9, "m.room.power_levels"))["state_default"] == "60"
            v12 = expect(await upgrade(alice, v9, {"new_version": "12", "additional_creators": [bob.user_id]}),
                         200)["replacement_room"]  # fmt: skip
            assert len(v12) == 44 and ":" not in v12  # named by its create event
            create = await state(alice, v12, "m.room.create")
            assert create["additional_creators"] == [bob.user_id] and create["predecessor"]["room_id"] == v9
            levels = await state(alice, v12, "m.room.power_levels")
            assert levels["state_default"] == 60 and levels["users"] == {}  # creators have no entry in v12
            expect(await bob.request("POST", f"{V3}/join/{q(v12)}", {}), 200)
            # bob, a creator, may upgrade too; back to 11 both get the highest level the room uses
            v11 = expect(await upgrade(bob, v12, {"new_version": "11"}), 200)["replacement_room"]
            levels = await state(bob, v11, "m.room.power_levels")
            assert levels["users"] == {alice.user_id: 100, bob.user_id: 100}
            assert (await state(bob, v11, "m.room.create"))["predecessor"]["room_id"] == v12
            assert (await state(alice, v12, "m.room.tombstone"))["replacement_room"] == v11

    asyncio.run(run())


def test_every_supported_version_is_created_advertised_and_upgraded(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice") as ((alice,), _):
            caps = expect(await alice.request("GET", f"{V3}/capabilities"), 200)["capabilities"]["m.room_versions"]
            assert caps["default"] == room_versions.DEFAULT.identifier
            assert caps["available"] == dict.fromkeys(room_versions.KNOWN, "stable")
            for version in room_versions.KNOWN:
                room = await make_room(alice, room_version=version)
                assert (await state(alice, room, "m.room.create"))["room_version"] == version
                last = await text(alice, room, f"hello v{version}")
                new = expect(await upgrade(alice, room, {"new_version": "11"}), 200)["replacement_room"]
                assert (await state(alice, new, "m.room.create"))["predecessor"] == {"room_id": room, "event_id": last}
            for version in ("1", "0", "13", "10 ", 10, None):
                expect(await alice.request("POST", f"{V3}/createRoom", {"room_version": version}), 400,
                       "M_UNSUPPORTED_ROOM_VERSION")  # fmt: skip

    asyncio.run(run())


def test_matrix_nio_follows_the_tombstone(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice") as ((alice,), _):
            bob = await nio_client(alice.base, "bob")
            try:
                room = await make_room(alice, name="before")
                assert isinstance(await bob.join(room), nio.JoinResponse)
                assert isinstance(await bob.sync(timeout=0), nio.SyncResponse)
                assert bob.rooms[room].replacement_room is None
                new = expect(await upgrade(alice, room, {"new_version": "12"}), 200)["replacement_room"]
                assert isinstance(await bob.sync(timeout=0, since=bob.next_batch), nio.SyncResponse)
                assert bob.rooms[room].replacement_room == new
                assert isinstance(await bob.join(new), nio.JoinResponse)
                assert isinstance(await bob.sync(timeout=0, since=bob.next_batch), nio.SyncResponse)
                assert bob.rooms[new].name == "before"
                refused = await bob.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "late"})
                assert isinstance(refused, nio.RoomSendError) and refused.status_code == "M_FORBIDDEN"
            finally:
                await bob.close()

    asyncio.run(run())
