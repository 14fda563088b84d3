"""Security: a room's ``m.room.server_acl`` is honoured for everything a denied server asks or sends.

Two peers of our own share a room with a local user: ``evil.test``,
which the ACL then denies, and ``good.test``, which it allows. The denied
one's PDUs are refused with a reason in the ``/send`` answer and its EDUs
ignored; every endpoint the spec protects answers it 403 M_FORBIDDEN. The
allowed one keeps working through the same endpoints.
"""

from __future__ import annotations

import asyncio

from hostile_peer import HostilePeer, attacked_gateway, http_session, local_user, messages, public_room, q

from lowband.gateway.matrix import room_versions
from lowband.gateway.matrix.events import build_event, compute_event_id

ACL = {"allow": ["*"], "deny": ["evil.test"], "allow_ip_literals": True}


async def _typing(alice, room_id):
    status, body = await alice.request("GET", "/_matrix/client/v3/sync?timeout=0")
    assert status == 200, body
    room = body["rooms"]["join"].get(room_id, {})
    return {u for e in room.get("ephemeral", {}).get("events", []) if e["type"] == "m.typing"
            for u in e["content"]["user_ids"]}  # fmt: skip


async def _protected_answers(peer, session, gw, room_id, bob):
    """(endpoint, status, errcode) for every room endpoint the spec asks to protect, asked by ``peer``."""
    anchor = peer.state[("m.room.member", peer.user())]  # the peer's join: an event the gateway holds
    head, room, newcomer = anchor.event_id, q(room_id), peer.user("newcomer")
    out = {}

    async def ask(name, method, path, body=None, query=None):
        status, answer = await peer.call(session, gw, method, path, body, query=query)
        out[name] = (status, answer.get("errcode") if isinstance(answer, dict) else None)
        return answer

    made = await ask("make_join", "GET", f"/_matrix/federation/v1/make_join/{room}/{q(newcomer)}", query=[("ver", "10")])
    fallback = {"prev_events": [head], "auth_events": [peer.state[("m.room.create", "")].event_id],
                "depth": anchor.depth + 1}  # a hand-made template, for a server refused one
    template = made.get("event") or fallback
    join = build_event(room_id=room_id, sender=newcomer, type="m.room.member", content={"membership": "join"},
                       prev_events=template["prev_events"], auth_events=template["auth_events"],
                       depth=template["depth"], origin_server_ts=peer.now(), server_name=peer.name,
                       signing_key=peer.key, state_key=newcomer, room_version=peer.version)  # fmt: skip
    await ask("send_join", "PUT", f"/_matrix/federation/v2/send_join/{room}/{q(join.event_id)}", join.pdu)
    leave = peer.make("m.room.member", {"membership": "leave"}, state_key=newcomer, sender=newcomer, prev=[join],
                      auth=[peer.state[("m.room.create", "")], peer.state[("m.room.power_levels", "")], join],
                      keep=False)  # fmt: skip
    await ask("make_leave", "GET", f"/_matrix/federation/v1/make_leave/{room}/{q(newcomer)}")
    await ask("send_leave", "PUT", f"/_matrix/federation/v2/send_leave/{room}/{q(leave.event_id)}", leave.pdu)
    invite = peer.make("m.room.member", {"membership": "invite"}, state_key=bob, prev=[anchor], keep=False)
    await ask("invite", "PUT", f"/_matrix/federation/v2/invite/{room}/{q(invite.event_id)}",
              {"event": invite.pdu, "room_version": "10", "invite_room_state": []})  # fmt: skip
    await ask("state", "GET", f"/_matrix/federation/v1/state/{room}", query=[("event_id", head)])
    await ask("state_ids", "GET", f"/_matrix/federation/v1/state_ids/{room}", query=[("event_id", head)])
    await ask("backfill", "GET", f"/_matrix/federation/v1/backfill/{room}", query=[("v", head), ("limit", "5")])
    await ask("event_auth", "GET", f"/_matrix/federation/v1/event_auth/{room}/{q(head)}")
    await ask("get_missing_events", "POST", f"/_matrix/federation/v1/get_missing_events/{room}",
              {"earliest_events": [], "latest_events": [head], "limit": 5})  # fmt: skip
    await ask("event", "GET", f"/_matrix/federation/v1/event/{q(head)}")
    return out


def _pdus(peer):
    """Every PDU the gateway sent ``peer``."""
    return [p for txn in peer.received for p in txn.get("pdus", [])]


def _pdu_ids(peer):
    return {compute_event_id(p, room_versions.V10) for p in _pdus(peer)}


def test_a_denied_server_is_refused_everywhere_and_an_allowed_one_works(tmp_path):
    async def main():
        async with HostilePeer(tmp_path, "evil.test") as evil, HostilePeer(tmp_path, "good.test") as good, \
                attacked_gateway(tmp_path, peers={"evil.test": evil.address, "good.test": good.address}) as gw, \
                http_session() as session:  # fmt: skip
            alice = await local_user(session, gw, "alice")
            bob = await local_user(session, gw, "bob")
            room_id = await public_room(alice)
            await evil.join(session, gw, room_id)
            await good.join(session, gw, room_id)
            status, _ = await alice.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.server_acl/", ACL)
            assert status == 200

            # PDUs: the denied server's are refused with a reason and not kept; the allowed server's are accepted
            refused, accepted = evil.message("from the denied server"), good.message("from the allowed server")
            status, answer = await evil.send(session, gw, [refused])
            assert status == 200 and "server ACL" in answer["pdus"][refused.event_id]["error"], answer
            status, answer = await good.send(session, gw, [accepted])
            assert status == 200 and answer["pdus"] == {accepted.event_id: {}}, answer
            assert gw.federation.dag.known(refused.event_id) is None
            seen = await messages(alice, room_id)
            assert "from the allowed server" in seen and "from the denied server" not in seen
            # an event of the allowed server, relayed by the denied one, is refused too: the ACL judges who sends
            relayed = good.message("relayed by the denied server")
            status, answer = await evil.send(session, gw, [relayed])
            assert "server ACL" in answer["pdus"][relayed.event_id]["error"], answer

            # EDUs: typing and receipts from the denied server are ignored, the allowed server's are applied
            def typing(peer):
                return {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": peer.user(), "typing": True}}

            def receipt(peer, event_id):
                return {"edu_type": "m.receipt", "content": {room_id: {"m.read": {peer.user(): {
                    "event_ids": [event_id], "data": {"ts": 1}}}}}}  # fmt: skip

            assert (await evil.send(session, gw, edus=[typing(evil), receipt(evil, accepted.event_id)]))[0] == 200
            assert (await good.send(session, gw, edus=[typing(good), receipt(good, accepted.event_id)]))[0] == 200
            assert await _typing(alice, room_id) == {good.user()}
            status, context = await alice.request("GET", "/_matrix/client/v3/sync?timeout=0")
            readers = {u for e in context["rooms"]["join"][room_id].get("ephemeral", {}).get("events", [])
                       if e["type"] == "m.receipt" for r in e["content"].values() for u in r.get("m.read", {})}  # fmt: skip
            assert good.user() in readers and evil.user() not in readers, readers

            # every endpoint the spec protects: 403 M_FORBIDDEN for the denied server, served for the allowed one
            denied = await _protected_answers(evil, session, gw, room_id, bob.user_id)
            assert denied == dict.fromkeys(denied, (403, "M_FORBIDDEN")), denied
            allowed = await _protected_answers(good, session, gw, room_id, bob.user_id)
            assert allowed == dict.fromkeys(allowed, (200, None)), allowed

            # what we send: the denied server got the ACL that denies it, and nothing after it
            status, sent = await alice.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/a1",
                                               {"msgtype": "m.text", "body": "after the ACL"})  # fmt: skip
            assert status == 200, sent
            deadline = asyncio.get_running_loop().time() + 30
            while sent["event_id"] not in _pdu_ids(good):
                assert asyncio.get_running_loop().time() < deadline, "the allowed server never got the message"
                await asyncio.sleep(0.1)
            acl_events = [p for p in _pdus(evil) if p.get("type") == "m.room.server_acl"]
            assert acl_events and acl_events[-1]["content"] == ACL
            assert sent["event_id"] not in _pdu_ids(evil)

    asyncio.run(asyncio.wait_for(main(), 120))
