"""Security: PDUs that are forged, tampered with or unauthorised are refused, logged, answered with a reason, never shown.

The spec's checks on receipt: a PDU that fails its signature checks
(including one whose sender belongs to another server than the one that
signed it) is dropped; one whose content hash is wrong is redacted and
processed as such; one the auth rules refuse is rejected (kept, marked,
never a forward extremity, never shown). The ``/send`` answer names each
refused PDU with the reason; the log says it too.
"""

from __future__ import annotations

import asyncio
import copy
import logging

from hostile_peer import HostilePeer, attacked_gateway, http_session, local_user, messages, public_room, q, visible_to

from lowband.gateway.matrix.signing import SigningKey, encode_base64


def test_forged_tampered_and_unauthorised_pdus_are_refused_logged_and_never_shown(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lowband.federation")

    async def main():
        async with HostilePeer(tmp_path, "evil.test") as peer, \
                attacked_gateway(tmp_path, peers={"evil.test": peer.address}) as gw, http_session() as session:  # fmt: skip
            alice = await local_user(session, gw, "alice")
            room_id = await public_room(alice)
            await peer.join(session, gw, room_id)
            dag = gw.federation.dag
            levels_before = dag.current_state(room_id)[("m.room.power_levels", "")]

            good = peer.message("an honest message")
            bad_signature = peer.message("forged", keep=False)
            forged = copy.deepcopy(bad_signature.pdu)
            forged["signatures"][peer.name]["ed25519:h1"] = encode_base64(SigningKey.from_seed(b"\x01" * 32, "h1").sign(b"x"))
            tampered_event = peer.message("the original text", keep=False)
            tampered = copy.deepcopy(tampered_event.pdu)
            tampered["content"]["body"] = "text changed in transit"  # covered by the content hash only
            # a sender of the gateway's own server, signed by the peer: an impersonation
            as_alice = peer.message("I am alice", sender=alice.user_id, keep=False,
                                    auth=[peer.state[("m.room.create", "")], peer.state[("m.room.power_levels", "")],
                                          peer.state[("m.room.member", alice.user_id)]])  # fmt: skip
            # a sender of a third server (on a blocked address, so its key cannot be fetched), signed by the peer
            third = peer.message("I am from elsewhere", sender="@carol:127.0.0.1:9", keep=False)
            # signed by the sender's server name but with another server's key (a key the peer does not publish)
            wrong_key = peer.message("wrong key", keep=False, key=SigningKey.from_seed(b"\x02" * 32, "h9"))
            # the auth rules refuse: mallory (power 0) raises herself to 100, and a user who never joined speaks
            coup = peer.make("m.room.power_levels", {"users": {peer.user(): 100}}, state_key="", keep=False)
            stranger = peer.message("never joined", sender=peer.user("eve"), keep=False)

            status, answer = await peer.send(session, gw, [good, forged, tampered, as_alice.pdu, third.pdu,
                                                           wrong_key.pdu, coup, stranger])  # fmt: skip
            assert status == 200, answer
            results = answer["pdus"]
            assert results[good.event_id] == {}
            assert results[tampered_event.event_id] == {}  # redacted, then processed as such
            errors = {name: results[event.event_id].get("error", "") for name, event in [
                ("forged", bad_signature), ("as_alice", as_alice), ("third", third), ("wrong_key", wrong_key),
                ("coup", coup), ("stranger", stranger)]}  # fmt: skip
            assert "bad signatures" in errors["forged"], errors
            assert f"not signed by {gw.server_name}" in errors["as_alice"], errors
            assert "not signed by 127.0.0.1:9" in errors["third"], errors
            assert "bad signatures" in errors["wrong_key"], errors
            assert errors["coup"].startswith("rejected:") and "power" in errors["coup"], errors
            assert errors["stranger"].startswith("rejected:") and "not joined" in errors["stranger"], errors

            # dropped ones are not kept at all; rejected ones are kept as rejected, outside the state
            for event in (bad_signature, as_alice, third, wrong_key):
                assert dag.known(event.event_id) is None
            for event in (coup, stranger):
                assert dag.known(event.event_id).rejected
            assert dag.current_state(room_id)[("m.room.power_levels", "")] == levels_before
            assert dag.known(good.event_id).rejected is None and not dag.known(good.event_id).outlier
            # every test event was built on the honest one; only the redacted one counts as built on it
            assert dag.forward_extremities(room_id) == [tampered_event.event_id]
            # the tampered event is kept in its redacted form: the text never reaches anyone
            assert dag.known(tampered_event.event_id).event.content == {}

            # what alice sees: the honest message, the redacted one without its text, nothing refused
            status, shown = await alice.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/event/"
                                                       f"{q(tampered_event.event_id)}")  # fmt: skip
            assert status == 200 and shown["content"] == {}, shown
            seen = await messages(alice, room_id)
            assert "an honest message" in seen
            assert not {"forged", "text changed in transit", "the original text", "I am alice", "I am from elsewhere",
                        "wrong key", "never joined"} & set(seen)  # fmt: skip
            for event in (bad_signature, as_alice, third, wrong_key, coup, stranger):
                assert not await visible_to(alice, room_id, event.event_id), event.event_id
            status, levels = await alice.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.power_levels/")
            assert peer.user() not in levels.get("users", {})
            return errors

    errors = asyncio.run(asyncio.wait_for(main(), 120))
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "lowband.federation")
    for reason in errors.values():
        assert reason.removeprefix("rejected: ") in logged, reason
