"""Security: rooms a hostile peer hosts. Joining one, or paging back through its history, costs bounded work, and
a slow peer never holds up local sends.

A local user joins a room the hostile peer made (``HostilePeer.create_room``:
it answers ``make_join``/``send_join`` as the resident server) through the
client API, as a user invited there would.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from hostile_peer import HostilePeer, attacked_gateway, http_session, local_user, messages, public_room, q
from test_security_flood import Prober

from lowband.gateway.federation.membership import MAX_JOIN_EVENTS


async def _join(alice, peer):
    return await alice.request("POST", f"/_matrix/client/v3/join/{q(peer.room_id)}?server_name={q(peer.name)}", {})


def test_a_send_join_answer_with_an_auth_chain_of_100000_events_is_refused_and_the_server_keeps_serving(tmp_path):
    async def main():
        async with HostilePeer(tmp_path, "evil.test") as peer, \
                attacked_gateway(tmp_path, peers={"evil.test": peer.address}) as gw, http_session() as session:  # fmt: skip
            alice = await local_user(session, gw, "alice")
            home = await public_room(alice)
            peer.create_room()
            padding = peer.message("one of many", keep=False).pdu

            async def endless_join(request):
                answer = peer.join_answer(peer.latest[0])
                answer["auth_chain"] += [padding] * 100_000
                return web.json_response(answer)

            peer.overrides["send_join"] = endless_join
            async with Prober(alice, home) as prober:
                started = time.monotonic()
                status, answer = await _join(alice, peer)
                took = time.monotonic() - started
                await prober.two_more()
            prober.check()
            assert status == 502 and f"more than {MAX_JOIN_EVENTS}" in answer["error"], answer
            assert took < 30, took
            assert gw.federation.dag.room_version(peer.room_id) is None

            # the same room, answered honestly, is joined
            peer.overrides["send_join"] = peer._send_join
            status, answer = await _join(alice, peer)
            assert status == 200, answer

    asyncio.run(asyncio.wait_for(main(), 120))


def test_backfill_from_a_slow_peer_does_not_hold_up_local_sends(tmp_path):
    async def main():
        async with HostilePeer(tmp_path, "evil.test") as peer, \
                attacked_gateway(tmp_path, peers={"evil.test": peer.address}) as gw, http_session() as session:  # fmt: skip
            alice = await local_user(session, gw, "alice")
            room_id = peer.create_room()
            history = peer.chain(100, prefix="old ")  # more than one page: the oldest of a page needs its state
            status, answer = await _join(alice, peer)
            assert status == 200, answer
            asked, release = asyncio.Event(), asyncio.Event()

            async def stalled(request):
                asked.set()
                await asyncio.wait_for(release.wait(), 60)
                return await peer._honest("state_ids", request, [])

            peer.overrides["state_ids"] = stalled
            async with Prober(alice, room_id) as prober:
                paging = asyncio.create_task(messages(alice, room_id))
                await asyncio.wait_for(asked.wait(), 30)  # backfill is waiting for the peer
                await prober.two_more()  # ... and the room takes local sends meanwhile
                release.set()
                seen = await asyncio.wait_for(paging, 60)
            prober.check()
            assert peer.hits["backfill"] >= 1
            assert history[-1].content["body"] in seen, seen

    asyncio.run(asyncio.wait_for(main(), 120))
