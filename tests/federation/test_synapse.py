"""Against a real Synapse (from PyPI, its own venv, loopback, self-signed TLS): both directions.

One Synapse and one Lowband gateway per test, named ``127.0.0.1:PORT``.
Synapse creates rooms of its default version (12 in current releases).
Every message is waited for on the other side before the next is sent, so
both servers hold them in the same order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fed_harness import (
    SyncWatcher,
    bodies,
    create_room,
    fed_gateway,
    has,
    http_session,
    invited,
    membership_is,
    put_state,
    q,
    send,
    state,
    until,
    user,
)

from lowband.sim.synapse import SynapsePeer

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def pair(tmp_path: Path) -> Iterator[tuple[object, SynapsePeer]]:
    lowband = fed_gateway(tmp_path, "lowband").start()
    synapse = SynapsePeer(tmp_path / "synapse")
    try:
        synapse.start()
        yield lowband, synapse
    finally:
        synapse.stop()
        lowband.stop()


async def _talk(room_id, first, second, rounds: int = 3) -> None:
    """Alternate messages, each waited for on the other side; then both hold them in one order."""
    sent = []
    for i in range(rounds):
        for speaker, listener in ((first, second), (second, first)):
            text = f"{speaker.user_id} says {i}"
            await send(speaker, room_id, text)
            sent.append(text)
            await until(lambda t=text, listener=listener: has(listener, room_id, [t]), timeout=60, what=text)
    ours = [b for b in await bodies(first, room_id, 200) if b in sent]
    theirs = [b for b in await bodies(second, room_id, 200) if b in sent]
    assert ours == theirs == sent


def test_lowband_user_in_a_synapse_room_with_history_state_typing_and_receipts(tmp_path):
    async def main(lowband, synapse):
        async with http_session() as session:
            alice = await user(session, lowband, "alice")
            sam = await user(session, synapse, "sam")
            room_id = await create_room(sam, "synroom")
            for i in range(12):
                await send(sam, room_id, f"history {i}")
            status, joined = await alice.request("POST", f"/_matrix/client/v3/join/{q('#synroom:' + synapse.server_name)}", {})
            assert status == 200 and joined["room_id"] == room_id, joined
            await until(lambda: state(sam, room_id, "m.room.member", alice.user_id), what="alice's join on Synapse")
            await _talk(room_id, sam, alice)
            # backfill: alice pages back to the room's creation through Lowband, which asks Synapse
            status, page = await alice.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=100")
            assert status == 200
            types = [e["type"] for e in page["chunk"]]
            assert types[-1] == "m.room.create" and "end" not in page
            history = [e["content"]["body"] for e in reversed(page["chunk"]) if e["content"].get("body", "").startswith("history")]
            assert history == [f"history {i}" for i in range(12)]
            # the same history page by page: tokens below 0 (backfilled events sort before the join) work
            paged, token = [], None
            for _ in range(30):
                query = f"dir=b&limit=4{'&from=' + q(token) if token else ''}"
                status, page = await alice.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?{query}")
                assert status == 200, page
                paged += page["chunk"]
                token = page.get("end")
                if token is None:
                    break
            assert [e["type"] for e in paged][-1] == "m.room.create"
            assert [e["content"]["body"] for e in reversed(paged) if e["content"].get("body", "").startswith("history")] \
                == [f"history {i}" for i in range(12)]  # fmt: skip
            # state: Synapse renames the room
            await put_state(sam, room_id, "m.room.topic", {"topic": "from synapse"})
            await until(lambda: _topic(alice, room_id, "from synapse"), what="the topic on Lowband")
            # typing and receipts, both ways
            on_synapse, on_lowband = await SyncWatcher.start(sam), await SyncWatcher.start(alice)
            status, _ = await alice.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/typing/{q(alice.user_id)}",
                                            {"typing": True, "timeout": 30000})  # fmt: skip
            assert status == 200
            await until(lambda: on_synapse.typing(room_id, alice.user_id), what="alice typing, seen on Synapse")
            status, _ = await sam.request("PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/typing/{q(sam.user_id)}",
                                          {"typing": True, "timeout": 30000})  # fmt: skip
            assert status == 200
            await until(lambda: on_lowband.typing(room_id, sam.user_id), what="sam typing, seen on Lowband")
            watcher = await SyncWatcher.start(sam)  # Synapse shows receipts to incremental syncs
            last = await send(sam, room_id, "read this")
            await until(lambda: has(alice, room_id, ["read this"]), what="read this on Lowband")
            status, _ = await alice.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/receipt/m.read/{q(last)}", {})
            assert status == 200
            await until(lambda: watcher.receipt(room_id, alice.user_id, last), what="alice's receipt on Synapse")

    with pair(tmp_path) as (lowband, synapse):
        asyncio.run(asyncio.wait_for(main(lowband, synapse), 300))


def test_synapse_user_in_a_lowband_room_with_invites_both_ways(tmp_path):
    async def main(lowband, synapse):
        async with http_session() as session:
            alice = await user(session, lowband, "alice")
            sam = await user(session, synapse, "sam")
            room_id = await create_room(alice, "lbroom")
            for i in range(8):
                await send(alice, room_id, f"before sam {i}")
            status, joined = await sam.request("POST", f"/_matrix/client/v3/join/{q('#lbroom:' + lowband.server_name)}", {})
            assert status == 200 and joined["room_id"] == room_id, joined
            await _talk(room_id, alice, sam)
            # Synapse backfills the history from us
            await until(lambda: has(sam, room_id, [f"before sam {i}" for i in range(8)]), what="history on Synapse")
            # an invite from Lowband to a Synapse user, accepted on Synapse
            private = await create_room(alice, "private", preset="private_chat")
            status, answer = await alice.request("POST", f"/_matrix/client/v3/rooms/{q(private)}/invite", {"user_id": sam.user_id})
            assert status == 200, answer
            await until(lambda: invited(sam, private), what="the invite on Synapse")
            status, answer = await sam.request("POST", f"/_matrix/client/v3/join/{q(private)}", {})
            assert status == 200, answer
            await until(lambda: membership_is(alice, private, sam.user_id, "join"), what="sam's join on Lowband")
            # an invite from Synapse to a Lowband user, accepted on Lowband
            theirs = await create_room(sam, "theirs", preset="private_chat")
            status, answer = await sam.request("POST", f"/_matrix/client/v3/rooms/{q(theirs)}/invite", {"user_id": alice.user_id})
            assert status == 200, answer
            await until(lambda: invited(alice, theirs), what="the invite on Lowband")
            status, answer = await alice.request("POST", f"/_matrix/client/v3/join/{q(theirs)}", {})
            assert status == 200, answer
            await until(lambda: membership_is(sam, theirs, alice.user_id, "join"), what="alice's join on Synapse")
            await _talk(theirs, sam, alice, rounds=1)

    with pair(tmp_path) as (lowband, synapse):
        asyncio.run(asyncio.wait_for(main(lowband, synapse), 300))


def test_each_side_killed_and_restarted_while_the_other_keeps_sending(tmp_path):
    async def main(lowband, synapse):
        async with http_session() as session:
            alice = await user(session, lowband, "alice")
            sam = await user(session, synapse, "sam")
            room_id = await create_room(alice, "lbroom")
            status, _ = await sam.request("POST", f"/_matrix/client/v3/join/{q(room_id)}?server_name={q(lowband.server_name)}", {})
            assert status == 200
            await until(lambda: membership_is(alice, room_id, sam.user_id, "join"), what="sam's join on Lowband")
            # Lowband is killed while Synapse keeps sending: on restart it has everything within 60 s
            lowband.kill()
            missed = [f"while lowband was down {i}" for i in range(10)]
            for text in missed:
                await send(sam, room_id, text)
            lowband.start()
            await until(lambda: has(alice, room_id, missed), timeout=60, what="Lowband caught up")
            # Synapse is killed while Lowband keeps sending: on restart it has everything within 60 s
            synapse.kill()
            backlog = [f"while synapse was down {i}" for i in range(10)]
            for text in backlog:
                await send(alice, room_id, text)
            synapse.start()
            await until(lambda: has(sam, room_id, backlog), timeout=60, what="Synapse caught up")
            await _talk(room_id, alice, sam, rounds=1)

    with pair(tmp_path) as (lowband, synapse):
        asyncio.run(asyncio.wait_for(main(lowband, synapse), 400))


async def _topic(client, room_id, topic):
    content = await state(client, room_id, "m.room.topic")
    return content is not None and content.get("topic") == topic
