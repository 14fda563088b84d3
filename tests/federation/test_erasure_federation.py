"""Erasure over federation: a user deactivated with ``erase: true`` has their messages served redacted to servers
that had no member in the room when they were sent, through ``/event``, ``/backfill`` and ``/get_missing_events``.

Two peers of our own (``HostilePeer``) in a room of a real gateway: ``early.test`` joins before alice speaks,
``late.test`` after alice is erased. The early server gets alice's messages whole; the late one gets them redacted,
and the redacted PDU still has its event ID and a good signature of the gateway (only its content hash stops
matching, which tells a receiver to keep the redacted form). State events (alice's join) stay whole for both, as do
other users' messages.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import Client, expect
from hostile_peer import Gateway, HostilePeer, attacked_gateway, http_session, local_user, public_room, q

from lowband.gateway.matrix.events import ContentHashError, compute_event_id, content_hash_matches, verify_event
from lowband.gateway.matrix.room_versions import V10

V3 = "/_matrix/client/v3"


async def send(client: Client, room_id: str, body: str) -> str:
    path = f"{V3}/rooms/{q(room_id)}/send/m.room.message/{body.replace(' ', '-')}"
    return str(expect(await client.request("PUT", path, {"msgtype": "m.text", "body": body}), 200)["event_id"])


async def served(peer: HostilePeer, session: aiohttp.ClientSession, gw: Gateway, room_id: str, latest: str,
                 event_ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:  # fmt: skip
    """What ``peer`` is given for each of ``event_ids``, by endpoint: {"event"|"backfill"|"missing": {id: pdu}}."""
    found: dict[str, dict[str, dict[str, Any]]] = {"event": {}, "backfill": {}, "missing": {}}
    for event_id in event_ids:
        status, answer = await peer.call(session, gw, "GET", f"/_matrix/federation/v1/event/{q(event_id)}")
        assert status == 200, answer
        found["event"][event_id] = answer["pdus"][0]
    status, page = await peer.call(session, gw, "GET", f"/_matrix/federation/v1/backfill/{q(room_id)}",
                                   query=[("v", latest), ("limit", "50")])  # fmt: skip
    assert status == 200, page
    found["backfill"] = {compute_event_id(p, V10): p for p in page["pdus"]}
    status, page = await peer.call(session, gw, "POST", f"/_matrix/federation/v1/get_missing_events/{q(room_id)}",
                                   {"latest_events": [latest], "earliest_events": [], "limit": 50})  # fmt: skip
    assert status == 200, page
    found["missing"] = {compute_event_id(p, V10): p for p in page["events"]}
    for endpoint in ("backfill", "missing"):
        assert set(event_ids) <= set(found[endpoint]), endpoint
    return found


def test_later_servers_get_an_erased_users_messages_redacted(tmp_path: Path) -> None:
    async def main() -> None:
        async with HostilePeer(tmp_path, "early.test") as early, HostilePeer(tmp_path, "late.test") as late, \
                attacked_gateway(tmp_path, peers={"early.test": early.address, "late.test": late.address}) as gw, \
                http_session() as session:  # fmt: skip
            carol = await local_user(session, gw, "carol")
            alice = await local_user(session, gw, "alice")
            room_id = await public_room(carol)  # shared history: a server that joins later may read it all
            expect(await alice.request("PUT", f"{V3}/profile/{q(str(alice.user_id))}/displayname",
                                       {"displayname": "Alice"}), 200)  # her join then carries it  # fmt: skip
            expect(await alice.request("POST", f"{V3}/join/{q(room_id)}", {}), 200)
            await early.join(session, gw, room_id)
            secret = [await send(alice, room_id, "alice secret one"), await send(alice, room_id, "alice secret two")]
            kept = await send(carol, room_id, "carol stays")
            store = gw.services.store
            whole = {e: store.get_event(e)["event"].pdu for e in [*secret, kept]}
            assert alice.user_id is not None
            auth = {"type": "m.login.password", "password": "secret-pw",
                    "identifier": {"type": "m.id.user", "user": alice.user_id}}  # fmt: skip
            expect(await alice.request("POST", f"{V3}/account/deactivate", {"auth": auth, "erase": True}), 200)
            await late.join(session, gw, room_id)
            latest = await send(carol, room_id, "carol after")

            key = gw.services.rooms.signing_key

            def keys(server: str, key_id: str) -> bytes | None:
                return key.verify_key_bytes if (server, key_id) == (gw.server_name, key.key_id) else None

            got_early = await served(early, session, gw, room_id, latest, [*secret, kept])
            got_late = await served(late, session, gw, room_id, latest, [*secret, kept])
            for endpoint in ("event", "backfill", "missing"):
                for event_id in secret:
                    assert got_early[endpoint][event_id] == whole[event_id], endpoint  # a member at the time
                    pdu = got_late[endpoint][event_id]
                    assert pdu["content"] == {} and pdu != whole[event_id], (endpoint, pdu)
                    assert pdu["hashes"] == whole[event_id]["hashes"] and pdu["signatures"], endpoint
                    assert compute_event_id(pdu, V10) == event_id
                    assert not content_hash_matches(pdu)
                    with pytest.raises(ContentHashError):  # the signature checks; only the content hash does not
                        verify_event(pdu, V10, keys)
                    verify_event(whole[event_id], V10, keys)  # the whole one checks completely
                for got in (got_early, got_late):
                    assert got[endpoint][kept] == whole[kept], endpoint  # another user's message stays whole
            # alice's state events (her join, with its displayname) stay whole for the late server too
            joins = [p for p in got_late["backfill"].values()
                     if p["type"] == "m.room.member" and p["state_key"] == alice.user_id
                     and p["content"].get("membership") == "join"]  # fmt: skip
            assert joins and all(p["content"].get("displayname") == "Alice" and content_hash_matches(p)
                                 for p in joins), joins  # fmt: skip

    asyncio.run(asyncio.wait_for(main(), 120))
