"""Security: a PDU for a room this server does not hold ends a user's pending invite only if it comes from the inviter.

While our user is invited to a room held elsewhere, the room's server tells
us over ``/send`` when the invite is withdrawn (we have no member there to
learn it from). Any other server that signs a "leave" of our user in that
room is refused with the reason, and the invite stays.
"""

from __future__ import annotations

import asyncio

from fed_harness import invited, sync
from hostile_peer import HostilePeer, attacked_gateway, http_session, local_user, q


def test_only_the_inviting_server_can_withdraw_an_invite_to_a_room_we_do_not_hold(tmp_path):
    async def main():
        async with HostilePeer(tmp_path, "evil.test") as inviter, HostilePeer(tmp_path, "other.test") as stranger, \
                attacked_gateway(tmp_path, peers={"evil.test": inviter.address,
                                                  "other.test": stranger.address}) as gw, http_session() as session:  # fmt: skip
            bob = await local_user(session, gw, "bob")
            room_id = inviter.create_room()
            invite = inviter.make("m.room.member", {"membership": "invite"}, state_key=bob.user_id)
            status, answer = await inviter.call(session, gw, "PUT",
                                                f"/_matrix/federation/v2/invite/{q(room_id)}/{q(invite.event_id)}",
                                                {"room_version": "10", "event": invite.pdu, "invite_room_state": []})  # fmt: skip
            assert status == 200, answer
            assert await invited(bob, room_id)
            since = (await sync(bob))["next_batch"]

            # another server signs a "leave" of bob in that room: refused, the invite stays
            stranger.room_id = room_id
            forged = stranger.make("m.room.member", {"membership": "leave"}, sender=stranger.user("eve"),
                                   state_key=bob.user_id, prev=[], auth=[])  # fmt: skip
            status, answer = await stranger.send(session, gw, [forged])
            assert status == 200, answer
            assert "did not handle" in answer["pdus"][forged.event_id]["error"], answer
            assert await invited(bob, room_id)
            # so is a leave from the inviter's server that is not a leave (a join of bob it made up)
            made_up = inviter.make("m.room.member", {"membership": "join"}, sender=bob.user_id, state_key=bob.user_id,
                                   keep=False)  # fmt: skip
            status, answer = await inviter.send(session, gw, [made_up])
            assert "error" in answer["pdus"][made_up.event_id], answer
            assert await invited(bob, room_id)

            # the inviter withdraws it: bob's sync moves the room from invite to leave, with that event
            withdrawn = inviter.make("m.room.member", {"membership": "leave"}, state_key=bob.user_id)
            status, answer = await inviter.send(session, gw, [withdrawn])
            assert (status, answer["pdus"][withdrawn.event_id]) == (200, {}), answer
            assert await invited(bob, room_id) is None
            left = (await sync(bob, since))["rooms"]["leave"][room_id]
            assert [e["event_id"] for e in left["timeline"]["events"]] == [withdrawn.event_id]

    asyncio.run(asyncio.wait_for(main(), 120))
