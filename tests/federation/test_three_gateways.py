"""Three Lowband gateways in one room: replication, a member gateway down and back, a partition healed.

A hosts the room; B and C join through their own gateways. A and C reach
each other through relays the test can cut (a partition), B reaches both
directly. Every gateway is a real process.
"""

from __future__ import annotations

import asyncio

import pytest
from fed_harness import CuttableLink, fed_gateway, has, http_session, put_state, q, send, until, user
from harness import free_port

pytestmark = pytest.mark.slow


async def _state_map(client, room_id: str) -> dict[tuple[str, str], str]:
    status, events = await client.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state")
    assert status == 200, events
    return {(e["type"], e["state_key"]): e["event_id"] for e in events}


async def _join(client, room_id: str, via: str) -> None:
    status, answer = await client.request("POST", f"/_matrix/client/v3/join/{q(room_id)}?server_name={q(via)}", {})
    assert status == 200, answer


def test_three_gateways_replicate_survive_a_member_down_and_converge_after_a_partition(tmp_path):
    port_a, port_c = free_port(), free_port()

    async def main():
        link_ac, link_ca = await CuttableLink(port_c).start(), await CuttableLink(port_a).start()
        name_a, name_c = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_c}"
        gw_a = fed_gateway(tmp_path, "a", port=port_a, extra_args=["--peer", f"{name_c}=127.0.0.1:{link_ac.port}"])
        gw_c = fed_gateway(tmp_path, "c", port=port_c, extra_args=["--peer", f"{name_a}=127.0.0.1:{link_ca.port}"])
        gw_b = fed_gateway(tmp_path, "b")
        started = []
        try:
            for gateway in (gw_a, gw_b, gw_c):
                await asyncio.to_thread(gateway.start)
                started.append(gateway)
            await scenario(gw_a, gw_b, gw_c, link_ac, link_ca)
        finally:
            for gateway in started:
                await asyncio.to_thread(gateway.stop)
            await link_ac.close()
            await link_ca.close()

    async def scenario(gw_a, gw_b, gw_c, link_ac, link_ca):
        async with http_session() as session:
            alice = await user(session, gw_a, "alice")
            bob = await user(session, gw_b, "bob")
            carol = await user(session, gw_c, "carol")
            status, created = await alice.request("POST", "/_matrix/client/v3/createRoom",
                                                  {"preset": "public_chat", "name": "three"})  # fmt: skip
            assert status == 200
            room_id = created["room_id"]
            await _join(bob, room_id, gw_a.server_name)
            await _join(carol, room_id, gw_a.server_name)
            everyone = (alice, bob, carol)
            for client in everyone:
                for member in everyone:
                    await until(lambda c=client, m=member: _member(c, room_id, m.user_id), what="all joins everywhere")
            # carol may change power levels too: the partition below is a real conflict between two admins
            await put_state(alice, room_id, "m.room.power_levels",
                             {"users": {alice.user_id: 100, carol.user_id: 100}, "users_default": 0})  # fmt: skip
            for client in everyone:
                await until(lambda c=client: _level(c, room_id, carol.user_id, 100), what="carol's level everywhere")

            # replication: everyone talks, everyone has everything
            said = []
            for client in everyone:
                for i in range(3):
                    said.append(f"{client.user_id} {i}")
                    await send(client, room_id, said[-1])
            for client in everyone:
                await until(lambda c=client: has(c, room_id, said), timeout=60, what="replication")

            # B down: A and C keep talking; B restarted has everything
            await asyncio.to_thread(gw_b.kill)
            while_b_down = ["A while B down", "C while B down"]
            await send(alice, room_id, while_b_down[0])
            await send(carol, room_id, while_b_down[1])
            await asyncio.to_thread(gw_b.start)
            await until(lambda: has(bob, room_id, while_b_down), timeout=60, what="B caught up")

            # partition A | C, conflicting changes on both sides, B hears both
            link_ac.sever()
            link_ca.sever()
            await put_state(alice, room_id, "m.room.topic", {"topic": "from A"})
            await put_state(alice, room_id, "m.room.power_levels",
                             {"users": {alice.user_id: 100, carol.user_id: 100, bob.user_id: 50}})  # fmt: skip
            await send(alice, room_id, "A during partition")
            await put_state(carol, room_id, "m.room.topic", {"topic": "from C"})
            await put_state(carol, room_id, "m.room.power_levels",
                             {"users": {alice.user_id: 100, carol.user_id: 100}, "users_default": 10})  # fmt: skip
            status, _ = await carol.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/kick",
                                            {"user_id": bob.user_id, "reason": "partition test"})  # fmt: skip
            assert status == 200
            await send(carol, room_id, "C during partition")
            await asyncio.sleep(2)
            assert not await has(alice, room_id, ["C during partition"])  # the partition holds
            link_ac.heal()
            link_ca.heal()
            wanted = ["A during partition", "C during partition"]
            for client in (alice, carol):
                await until(lambda c=client: has(c, room_id, wanted), timeout=90, what="both sides after healing")
            # converged: A and C (and B, which saw both branches) hold the same current state
            maps = await until(lambda: _same_state(alice, carol, room_id), timeout=60, what="A and C converge")
            for key in (("m.room.topic", ""), ("m.room.power_levels", ""), ("m.room.member", bob.user_id)):
                assert key in maps  # the conflicted pairs are decided, and decided alike
            if await _member(alice, room_id, bob.user_id):  # bob kept his seat: B follows the room too
                await until(lambda: _same_state(alice, bob, room_id), timeout=60, what="B converges")

    asyncio.run(asyncio.wait_for(main(), 400))


async def _member(client, room_id, user_id):
    status, content = await client.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.member/{q(user_id)}")
    return status == 200 and content.get("membership") == "join"


async def _level(client, room_id, user_id, level):
    status, content = await client.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.power_levels/")
    return status == 200 and content.get("users", {}).get(user_id) == level


async def _same_state(one, other, room_id):
    first, second = await _state_map(one, room_id), await _state_map(other, room_id)
    return first if first == second else None

