"""Against a real Synapse: knocking both ways, and profiles, aliases and public rooms asked across.

One Synapse (its default room version, 12 in current releases) and one
Lowband gateway per test, as in ``test_synapse.py``; Synapse is told to
publish rooms and to show its directory over federation, which it does not
by default, and not to answer a repeated ``/sync`` from its cache.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fed_harness import fed_gateway, has, http_session, invited, q, send, state, sync, until, user

from lowband.sim.synapse import SynapsePeer

pytestmark = pytest.mark.slow

V3 = "/_matrix/client/v3"
SYNAPSE_CONFIG = {
    "allow_public_rooms_over_federation": True, "room_list_publication_rules": [{"action": "allow"}],
    # Synapse answers a repeated identical /sync from a 2-minute cache; the tests poll /sync for changes
    "caches": {"sync_response_cache_duration": 0},
}  # fmt: skip


@contextlib.contextmanager
def pair(tmp_path: Path) -> Iterator[tuple[object, SynapsePeer]]:
    lowband = fed_gateway(tmp_path, "lowband").start()
    synapse = SynapsePeer(tmp_path / "synapse", extra=SYNAPSE_CONFIG)
    try:
        synapse.start()
        yield lowband, synapse
    finally:
        synapse.stop()
        lowband.stop()


async def _knock_room(client, alias: str, **extra) -> str:
    status, created = await client.request("POST", V3 + "/createRoom", {
        "preset": "private_chat", "room_alias_name": alias, "name": f"{alias} room",
        "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        **extra})  # fmt: skip
    assert status == 200, created
    return str(created["room_id"])


async def _knocked(client, room_id: str):
    return (await sync(client))["rooms"].get("knock", {}).get(room_id)


async def _membership(client, room_id, user_id, wanted):
    content = await state(client, room_id, "m.room.member", user_id)
    return content is not None and content.get("membership") == wanted and content


def _state_types(section) -> set[str]:
    key = "knock_state" if "knock_state" in section else "invite_state"
    return {e["type"] for e in section[key]["events"]}


def test_knocks_both_ways_with_synapse(tmp_path):
    async def main(lowband, synapse):
        async with http_session() as session:
            alice = await user(session, lowband, "alice")
            sam = await user(session, synapse, "sam")

            # a Lowband user knocks on a Synapse room: make_knock/send_knock to Synapse
            syn_room = await _knock_room(sam, "synporch")
            status, answer = await alice.request("POST", f"{V3}/knock/{q('#synporch:' + synapse.server_name)}",
                                                 {"reason": "from lowband"})  # fmt: skip
            assert (status, answer) == (200, {"room_id": syn_room}), answer
            shown = await until(lambda: _knocked(alice, syn_room), what="the knock in alice's sync")
            assert {"m.room.create", "m.room.join_rules", "m.room.name", "m.room.member"} <= _state_types(shown)
            knock = await until(lambda: _membership(sam, syn_room, alice.user_id, "knock"), what="the knock on Synapse")
            assert knock["reason"] == "from lowband"
            status, answer = await sam.request("POST", f"{V3}/rooms/{q(syn_room)}/invite", {"user_id": alice.user_id})
            assert status == 200, answer
            await until(lambda: invited(alice, syn_room), what="Synapse's invite on Lowband")
            status, answer = await alice.request("POST", f"{V3}/join/{q(syn_room)}", {})
            assert status == 200, answer
            await send(alice, syn_room, "in from a knock")
            await until(lambda: has(sam, syn_room, ["in from a knock"]), what="alice's message on Synapse")

            # a Synapse user knocks on a Lowband room: Synapse asks us, and takes our knock_room_state (PDUs)
            lb_room = await _knock_room(alice, "lbporch")
            status, answer = await sam.request("POST", f"{V3}/knock/{q('#lbporch:' + lowband.server_name)}",
                                               {"reason": "from synapse"})  # fmt: skip
            assert (status, answer) == (200, {"room_id": lb_room}), answer
            shown = await until(lambda: _knocked(sam, lb_room), what="the knock in sam's sync")
            assert {"m.room.create", "m.room.join_rules", "m.room.name"} <= _state_types(shown), shown
            knock = await until(lambda: _membership(alice, lb_room, sam.user_id, "knock"), what="sam's knock on Lowband")
            assert knock["reason"] == "from synapse"
            status, answer = await alice.request("POST", f"{V3}/rooms/{q(lb_room)}/invite", {"user_id": sam.user_id})
            assert status == 200, answer
            await until(lambda: invited(sam, lb_room), what="our invite on Synapse")
            status, answer = await sam.request("POST", f"{V3}/join/{q(lb_room)}", {})
            assert status == 200, answer
            await send(sam, lb_room, "knocked and joined")
            await until(lambda: has(alice, lb_room, ["knocked and joined"]), what="sam's message on Lowband")

    with pair(tmp_path) as (lowband, synapse):
        asyncio.run(asyncio.wait_for(main(lowband, synapse), 300))


def test_profiles_aliases_and_public_rooms_asked_of_synapse_and_of_us(tmp_path):
    async def main(lowband, synapse):
        async with http_session() as session:
            alice = await user(session, lowband, "alice")
            sam = await user(session, synapse, "sam")
            for client, name in ((alice, "Alice L"), (sam, "Sam S")):
                status, _ = await client.request("PUT", f"{V3}/profile/{q(client.user_id)}/displayname",
                                                 {"displayname": name})  # fmt: skip
                assert status == 200
            # profiles, each asked of the other server
            status, profile = await alice.request("GET", f"{V3}/profile/{q(sam.user_id)}")
            assert status == 200 and profile.get("displayname") == "Sam S", profile
            status, name = await alice.request("GET", f"{V3}/profile/{q(sam.user_id)}/displayname")
            assert (status, name) == (200, {"displayname": "Sam S"})
            status, missing = await alice.request("GET", f"{V3}/profile/{q('@nobody:' + synapse.server_name)}")
            assert (status, missing["errcode"]) == (404, "M_NOT_FOUND"), missing
            status, profile = await sam.request("GET", f"{V3}/profile/{q(alice.user_id)}")
            assert status == 200 and profile.get("displayname") == "Alice L", profile

            # aliases and public rooms of Synapse, through Lowband
            status, created = await sam.request("POST", V3 + "/createRoom", {
                "preset": "public_chat", "visibility": "public", "room_alias_name": "synlobby",
                "name": "Synapse lobby", "topic": "hello from synapse"})  # fmt: skip
            assert status == 200, created
            syn_room = created["room_id"]
            status, found = await alice.request("GET", f"{V3}/directory/room/{q('#synlobby:' + synapse.server_name)}")
            assert status == 200 and found["room_id"] == syn_room and synapse.server_name in found["servers"], found
            status, missing = await alice.request("GET", f"{V3}/directory/room/{q('#nothing:' + synapse.server_name)}")
            assert (status, missing["errcode"]) == (404, "M_NOT_FOUND"), missing
            status, page = await alice.request("GET", f"{V3}/publicRooms?server={q(synapse.server_name)}")
            assert status == 200 and [r["room_id"] for r in page["chunk"]] == [syn_room], page
            assert page["chunk"][0]["name"] == "Synapse lobby"
            status, page = await alice.request("POST", f"{V3}/publicRooms?server={q(synapse.server_name)}",
                                               {"limit": 5, "filter": {"generic_search_term": "lobby"}})  # fmt: skip
            assert status == 200 and [r["room_id"] for r in page["chunk"]] == [syn_room], page

            # and ours, asked by Synapse
            status, created = await alice.request("POST", V3 + "/createRoom", {
                "preset": "public_chat", "visibility": "public", "room_alias_name": "lblobby", "name": "Lowband lobby"})  # fmt: skip
            assert status == 200, created
            status, found = await sam.request("GET", f"{V3}/directory/room/{q('#lblobby:' + lowband.server_name)}")
            assert status == 200 and found["room_id"] == created["room_id"], found
            status, page = await sam.request("GET", f"{V3}/publicRooms?server={q(lowband.server_name)}")
            assert status == 200 and [r["room_id"] for r in page["chunk"]] == [created["room_id"]], page

    with pair(tmp_path) as (lowband, synapse):
        asyncio.run(asyncio.wait_for(main(lowband, synapse), 300))
