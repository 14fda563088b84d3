"""A client of one gateway asks about another server through it: profiles, aliases, public rooms.

Two real gateways on loopback; the answers come from the other gateway's
federation API, errors become the client API's (404, 502), a profile is
cached briefly, and a server that never answers costs a bounded wait.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from fed_harness import gateways, http_session, q, user

from lowband.gateway.federation.queries import PROFILE_TIMEOUT_S

pytestmark = pytest.mark.slow

V3 = "/_matrix/client/v3"


async def _public_room(client, alias: str, name: str, topic: str) -> str:
    status, created = await client.request("POST", V3 + "/createRoom", {
        "preset": "public_chat", "visibility": "public", "room_alias_name": alias, "name": name, "topic": topic})  # fmt: skip
    assert status == 200, created
    return str(created["room_id"])


def test_profiles_aliases_and_public_rooms_of_another_gateway(tmp_path):
    async def main(gw) -> None:
        async with http_session() as session:
            alice = await user(session, gw["a"], "alice")
            bob = await user(session, gw["b"], "bob")
            b_name = gw["b"].server_name
            for field, value in (("displayname", "Bob of B"), ("avatar_url", f"mxc://{b_name}/bobface")):
                status, _ = await bob.request("PUT", f"{V3}/profile/{q(bob.user_id)}/{field}", {field: value})
                assert status == 200

            # profiles: asked of B through A
            status, profile = await alice.request("GET", f"{V3}/profile/{q(bob.user_id)}")
            assert status == 200 and profile == {"displayname": "Bob of B", "avatar_url": f"mxc://{b_name}/bobface"}
            status, name = await alice.request("GET", f"{V3}/profile/{q(bob.user_id)}/displayname")
            assert (status, name) == (200, {"displayname": "Bob of B"})
            status, avatar = await alice.request("GET", f"{V3}/profile/{q(bob.user_id)}/avatar_url")
            assert (status, avatar) == (200, {"avatar_url": f"mxc://{b_name}/bobface"})
            status, missing = await alice.request("GET", f"{V3}/profile/{q('@nobody:' + b_name)}")
            assert (status, missing["errcode"]) == (404, "M_NOT_FOUND")
            # the answer is cached for a short while: a change on B shows on A only later
            status, _ = await bob.request("PUT", f"{V3}/profile/{q(bob.user_id)}/displayname", {"displayname": "Bob 2"})
            assert status == 200
            status, name = await alice.request("GET", f"{V3}/profile/{q(bob.user_id)}/displayname")
            assert name == {"displayname": "Bob of B"}

            # aliases: B's alias resolved on A by asking B; an unknown one is B's 404
            room_id = await _public_room(bob, "garden", "Garden", "plants and sensors")
            other_id = await _public_room(bob, "workshop", "Workshop", "tools")
            status, found = await alice.request("GET", f"{V3}/directory/room/{q('#garden:' + b_name)}")
            assert status == 200 and found["room_id"] == room_id and b_name in found["servers"], found
            status, missing = await alice.request("GET", f"{V3}/directory/room/{q('#nowhere:' + b_name)}")
            assert (status, missing["errcode"]) == (404, "M_NOT_FOUND")

            # public rooms of B, page by page and searched, through A
            status, page = await alice.request("GET", f"{V3}/publicRooms?server={q(b_name)}&limit=1")
            assert status == 200 and len(page["chunk"]) == 1 and page["total_room_count_estimate"] == 2, page
            status, rest = await alice.request("GET", f"{V3}/publicRooms?server={q(b_name)}&limit=1"
                                                      f"&since={q(page['next_batch'])}")  # fmt: skip
            assert status == 200 and {page["chunk"][0]["room_id"], rest["chunk"][0]["room_id"]} == {room_id, other_id}
            status, searched = await alice.request("POST", f"{V3}/publicRooms?server={q(b_name)}",
                                                   {"filter": {"generic_search_term": "plants"}})  # fmt: skip
            assert status == 200 and [r["room_id"] for r in searched["chunk"]] == [room_id], searched
            assert searched["chunk"][0]["name"] == "Garden" and searched["chunk"][0]["topic"] == "plants and sensors"
            # A's own directory is still its own
            status, own = await alice.request("GET", f"{V3}/publicRooms")
            assert status == 200 and own["chunk"] == []

            # B goes away: what is cached still answers, everything else is a 502
            gw["b"].stop()
            status, name = await alice.request("GET", f"{V3}/profile/{q(bob.user_id)}/displayname")
            assert (status, name) == (200, {"displayname": "Bob of B"})
            for path in (f"{V3}/profile/{q('@carol:' + b_name)}", f"{V3}/directory/room/{q('#garden:' + b_name)}",
                         f"{V3}/publicRooms?server={q(b_name)}"):  # fmt: skip
                status, failed = await alice.request("GET", path)
                assert (status, failed["errcode"]) == (502, "M_UNKNOWN"), (path, failed)

    with gateways(tmp_path, "a", "b") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 180))


def test_a_server_that_never_answers_costs_a_bounded_wait(tmp_path):
    """A peer that accepts connections and says nothing: the profile question gives up after its timeout."""

    async def main(gw) -> None:
        held: list[asyncio.StreamWriter] = []

        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # accept, never answer (not even the TLS handshake)

        silent = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        try:
            async with http_session() as session:
                alice = await user(session, gw["a"], "alice")
                started = time.monotonic()
                status, failed = await alice.request("GET", f"{V3}/profile/{q(f'@mute:127.0.0.1:{port}')}")
                waited = time.monotonic() - started
                assert (status, failed["errcode"]) == (502, "M_UNKNOWN"), failed
                assert held, "the gateway never connected to the silent server"
                assert PROFILE_TIMEOUT_S - 1 <= waited <= PROFILE_TIMEOUT_S + 5, waited
        finally:
            for writer in held:
                writer.close()
            silent.close()
            await silent.wait_closed()

    with gateways(tmp_path, "a") as gw:
        asyncio.run(asyncio.wait_for(main(gw), 120))
