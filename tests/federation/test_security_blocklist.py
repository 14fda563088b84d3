"""Security: a room cannot make the gateway connect to its own network (``[federation] ip_range_blocklist``).

A listening socket on 127.0.0.1 (the trap) stands for an internal
service. A hostile peer (``evil.test``, a configured ``--peer``: exempt, as
documented) brings a member whose server name is the trap's address into
a room, vouching for that server's key as a notary. With the default
blocklist (loopback included) nothing the room, a client or an
unauthenticated request does opens a connection to the trap: events for
it stay queued and are retried, invites and joins through it fail
cleanly, the gateway keeps serving. With the blocklist emptied, the same
room does reach the trap: the test can tell.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Self

import pytest
from harness import free_port
from hostile_peer import HostilePeer, attacked_gateway, http_session, local_user, public_room, q

from lowband.gateway.matrix.signing import SigningKey

TRAP_KEY = SigningKey.from_seed(b"\x77" * 32, "t1")


class Trap:
    """A TCP listener on 127.0.0.1 that counts the connections it is offered (and closes them)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 10)


async def _room_with_a_member_on(trap_server: str, session, gw, peer):
    """A local user's public room that the peer joins and into which it brings ``@victim:trap_server``."""
    alice = await local_user(session, gw, "alice")
    room_id = await public_room(alice)
    await peer.join(session, gw, room_id)
    victim = f"@victim:{trap_server}"
    join = peer.make("m.room.member", {"membership": "join"}, sender=victim, state_key=victim,
                     auth=[peer.state[k] for k in [("m.room.create", ""), ("m.room.power_levels", ""),
                                                   ("m.room.join_rules", "")]],
                     server_name=trap_server, key=TRAP_KEY)  # fmt: skip
    status, answer = await peer.send(session, gw, [join])
    assert status == 200 and answer["pdus"] == {join.event_id: {}}, answer
    assert trap_server in gw.federation.dag.servers_in_room(room_id)
    return alice, room_id


async def _send(alice, room_id, body):
    status, answer = await alice.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/"
                                                f"t{time.monotonic_ns()}", {"msgtype": "m.text", "body": body})  # fmt: skip
    assert status == 200, answer
    return answer["event_id"]


async def _until(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def test_a_room_cannot_make_the_gateway_connect_to_a_blocked_address(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lowband.federation")

    async def main():
        async with Trap() as trap, HostilePeer(tmp_path, "evil.test") as peer, \
                attacked_gateway(tmp_path, peers={"evil.test": peer.address}, trusted_key_servers=("evil.test",)) as gw, \
                http_session() as session:  # fmt: skip
            trap_server = f"127.0.0.1:{trap.port}"
            peer.vouches[trap_server] = TRAP_KEY
            alice, room_id = await _room_with_a_member_on(trap_server, session, gw, peer)
            assert peer.hits["key"] >= 2  # its own key, then the trap server's (the direct fetch was refused)

            # events for the trap's server are queued and retried, never sent; the configured peer gets them
            sent = await _send(alice, room_id, "for everyone in the room")
            await _until(lambda: any(p.get("content", {}).get("body") == "for everyone in the room"
                                     for t in peer.received for p in t["pdus"]))  # fmt: skip
            sender = gw.federation.sender
            attempts = f"federation to {trap_server} failed"
            await _until(lambda: sum(attempts in r.getMessage() for r in caplog.records) >= 2)  # retried, not dropped
            cursor = {name: cursor for name, cursor, _seq, _upto in gw.services.store.federation.destinations()}
            assert cursor[trap_server] < gw.services.store.federation.log_head()  # still owed the message
            assert sender.schedule.next_deadline() is not None  # and a retry is scheduled

            # a client cannot use the gateway to reach it either: invites and joins through it fail cleanly
            for target in (f"@someone:{trap_server}", f"@someone:localhost:{trap.port}"):
                status, answer = await alice.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/invite",
                                                     {"user_id": target})  # fmt: skip
                assert status in (403, 502) and "blocked" in answer["error"], answer
            for via in (trap_server, f"localhost:{trap.port}"):
                status, answer = await alice.request("POST", f"/_matrix/client/v3/join/{q('!room:' + via)}"
                                                             f"?server_name={q(via)}", {})  # fmt: skip
                assert 400 <= status < 600 and status != 200, answer
                status, answer = await alice.request("POST", f"/_matrix/client/v3/join/{q('#alias:' + via)}", {})
                assert 400 <= status < 600 and status != 200, answer

            # nor can an unauthenticated request naming it as its origin (the gateway would fetch its key)
            status, answer = await peer.call(session, gw, "GET", "/_matrix/federation/v1/query/profile",
                                             query=[("user_id", alice.user_id)], origin=f"localhost:{trap.port}",
                                             key=TRAP_KEY)  # fmt: skip
            assert status == 401, answer

            # the gateway kept serving all along
            status, _ = await alice.request("GET", "/_matrix/client/versions")
            assert status == 200
            assert await _send(alice, room_id, "still here") != sent
            await asyncio.sleep(1.5)  # room for one more retry to (not) connect
            assert trap.connections == 0
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert f"federation to {trap_server} failed" in logged and "blocked addresses" in logged

    asyncio.run(asyncio.wait_for(main(), 120))


@pytest.mark.parametrize("blocklist", [(), ("10.0.0.0/8",)])
def test_without_loopback_in_the_blocklist_the_same_room_does_reach_the_address(tmp_path, blocklist):
    async def main():
        async with Trap() as trap, HostilePeer(tmp_path, "evil.test") as peer, \
                attacked_gateway(tmp_path, peers={"evil.test": peer.address}, blocklist=blocklist,
                                 trusted_key_servers=("evil.test",)) as gw, http_session() as session:  # fmt: skip
            trap_server = f"127.0.0.1:{trap.port}"
            peer.vouches[trap_server] = TRAP_KEY
            alice, room_id = await _room_with_a_member_on(trap_server, session, gw, peer)
            await _send(alice, room_id, "for everyone in the room")
            await _until(lambda: trap.connections > 0)

    asyncio.run(asyncio.wait_for(main(), 60))
