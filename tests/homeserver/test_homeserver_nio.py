"""matrix-nio, a real client library, against ``lowband serve`` in a subprocess.

Nothing here reaches into the gateway: users are made with nio's ``register``
or the ``lowband user add`` command, and every check goes through nio's
parsed responses (``.source`` is the event exactly as served). The long test
ends by restarting the gateway on the same data dir and checking that
tokens, rooms, history, membership and an old sync token still work.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

from harness import LOWBAND, GatewayProcess, gateway_process
from nio import (
    AsyncClient,
    ErrorResponse,
    JoinedMembersResponse,
    JoinedRoomsResponse,
    JoinResponse,
    LoginResponse,
    MessageDirection,
    RegisterResponse,
    RoomBanResponse,
    RoomCreateResponse,
    RoomForgetResponse,
    RoomGetEventResponse,
    RoomGetStateEventResponse,
    RoomGetStateResponse,
    RoomInviteResponse,
    RoomKickResponse,
    RoomLeaveResponse,
    RoomMessagesResponse,
    RoomRedactResponse,
    RoomSendResponse,
    RoomUnbanResponse,
    SyncResponse,
)

ALICE, BOB, CAROL = "@alice:localhost", "@bob:localhost", "@carol:localhost"
PASSWORD = "correct horse battery"
# Sends in bursts would trip the default per-user limit, which is not what these tests are about.
NO_RATE_LIMITS = "[rate_limits]\nenabled = false\n"


# ------------------------------------------------------------------ helpers


def add_user(gateway: GatewayProcess, name: str, password: str = PASSWORD) -> None:
    """``lowband user add`` on the gateway's data dir."""
    result = subprocess.run([LOWBAND, "user", "add", name, "--password", password, "--data-dir", str(gateway.data_dir)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"created @{name}:localhost"


async def login(gateway: GatewayProcess, user_id: str, password: str = PASSWORD) -> AsyncClient:
    """A nio client logged in with a password."""
    client = AsyncClient(gateway.url, user_id)
    response = await client.login(password, device_name="nio test")
    assert isinstance(response, LoginResponse), response
    assert response.user_id == user_id and client.access_token
    return client


async def register(gateway: GatewayProcess, name: str, password: str = PASSWORD) -> AsyncClient:
    """A nio client registered (m.login.dummy) and logged in by that."""
    client = AsyncClient(gateway.url)
    response = await client.register(name, password, device_name="nio test")
    assert isinstance(response, RegisterResponse), response
    assert response.user_id == f"@{name}:localhost" and client.access_token
    return client


def ok(response: Any, kind: type) -> Any:
    """Assert a nio response is ``kind`` (not an error); return it."""
    assert isinstance(response, kind), response
    return response


def refused(response: Any, errcode: str = "M_FORBIDDEN") -> None:
    """Assert a nio error response carrying ``errcode``."""
    assert isinstance(response, ErrorResponse), response
    assert response.status_code == errcode, (response.status_code, response.message)


async def send(client: AsyncClient, room_id: str, content: dict[str, Any], tx_id: str | None = None) -> str:
    """room_send an m.room.message; returns the event ID."""
    return str(ok(await client.room_send(room_id, "m.room.message", content, tx_id=tx_id), RoomSendResponse).event_id)


def text(body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body}


def timeline(response: SyncResponse, room_id: str) -> list[dict[str, Any]]:
    """The raw timeline events of a joined room in a sync (empty if absent)."""
    room = response.rooms.join.get(room_id)
    return [e.source for e in room.timeline.events] if room else []


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message" and "body" in e["content"]]


async def full_history(client: AsyncClient, room_id: str, start: str, limit: int = 5) -> list[dict[str, Any]]:
    """Every event of a room, oldest first, by following /messages ``end`` tokens backwards."""
    events: list[dict[str, Any]] = []
    token: str | None = start
    pages = 0
    while token is not None:
        page = ok(await client.room_messages(room_id, start=token, limit=limit), RoomMessagesResponse)
        assert len(page.chunk) <= limit
        events += [e.source for e in page.chunk]
        pages += 1
        assert pages < 200, "pagination does not end"
        token = page.end if page.chunk else None
    events.reverse()
    return events


async def closing(*clients: AsyncClient) -> None:
    for client in clients:
        await client.close()


# ------------------------------------------------------------------- tests


def test_two_users_talk_through_nio_and_everything_survives_a_restart(tmp_path: Path) -> None:
    with gateway_process(tmp_path, config=NO_RATE_LIMITS) as gateway:
        add_user(gateway, "bob")

        async def before_restart() -> dict[str, Any]:
            alice = await register(gateway, "alice")
            bob = await login(gateway, BOB)
            try:
                return await conversation(alice, bob)
            finally:
                await closing(alice, bob)

        saved = asyncio.run(before_restart())
        gateway.stop()
        gateway.start()

        async def after_restart() -> None:
            alice = AsyncClient(gateway.url, ALICE)
            alice.access_token, alice.user_id, alice.device_id = saved["alice_token"], ALICE, saved["alice_device"]
            bob = AsyncClient(gateway.url, BOB)
            bob.access_token, bob.user_id, bob.device_id = saved["bob_token"], BOB, saved["bob_device"]
            try:
                await check_after_restart(gateway, alice, bob, saved)
            finally:
                await closing(alice, bob)

        asyncio.run(after_restart())


async def conversation(alice: AsyncClient, bob: AsyncClient) -> dict[str, Any]:
    created = ok(await alice.room_create(name="Greenhouse", topic="Sensors and chatter", invite=[BOB]),
                 RoomCreateResponse)  # fmt: skip
    room = created.room_id

    # Bob sees the invite (with the room's name in the stripped state) and joins.
    first = ok(await bob.sync(timeout=0), SyncResponse)
    assert room in first.rooms.invite
    invite_state = {e.source["type"]: e for e in first.rooms.invite[room].invite_state}
    assert invite_state["m.room.name"].name == "Greenhouse"
    assert (invite_state["m.room.member"].membership, invite_state["m.room.member"].state_key) == ("invite", BOB)
    assert ok(await bob.join(room), JoinResponse).room_id == room

    alice_sync = ok(await alice.sync(timeout=0), SyncResponse)
    bob_sync = ok(await bob.sync(timeout=0, since=first.next_batch), SyncResponse)
    assert room in bob_sync.rooms.join

    # Plain and formatted messages, both ways, served exactly as sent.
    formatted = {"msgtype": "m.text", "body": "**bold** & <tags>", "format": "org.matrix.custom.html",
                 "formatted_body": "<strong>bold</strong> &amp; &lt;tags&gt;"}  # fmt: skip
    bob_formatted = {"msgtype": "m.notice", "body": "> quoted\n\nreply", "format": "org.matrix.custom.html",
                     "formatted_body": "<mx-reply><blockquote>quoted</blockquote></mx-reply>reply"}  # fmt: skip
    unicode_text = text("Grüße 🌱 — \u202e rtl \n newline \"quotes\" \\ backslash")
    sent = {
        "alice plain": await send(alice, room, text("hello bob")),
        "alice formatted": await send(alice, room, formatted),
        "bob plain": await send(bob, room, text("hi alice")),
        "bob unicode": await send(bob, room, unicode_text),
        "bob formatted": await send(bob, room, bob_formatted),
    }
    seen_by_bob = timeline(ok(await bob.sync(timeout=0, since=bob_sync.next_batch), SyncResponse), room)
    assert [e["event_id"] for e in seen_by_bob] == list(sent.values())
    assert seen_by_bob[0]["content"] == text("hello bob") and seen_by_bob[0]["sender"] == ALICE
    assert seen_by_bob[1]["content"] == formatted
    assert seen_by_bob[3]["content"] == unicode_text and seen_by_bob[3]["sender"] == BOB
    assert seen_by_bob[4]["content"] == bob_formatted
    alice_inc = ok(await alice.sync(timeout=0, since=alice_sync.next_batch), SyncResponse)
    assert [e["event_id"] for e in timeline(alice_inc, room)] == list(sent.values())
    assert [e["content"] for e in timeline(alice_inc, room)][-1] == bob_formatted
    # Nothing new: an incremental sync has no timeline for the room.
    quiet = ok(await alice.sync(timeout=0, since=alice_inc.next_batch), SyncResponse)
    assert timeline(quiet, room) == []

    # The full history, five events a page, back to m.room.create.
    history = await full_history(alice, room, alice_inc.next_batch)
    assert [(e["type"], e.get("state_key")) for e in history] == [
        ("m.room.create", ""), ("m.room.member", ALICE), ("m.room.power_levels", ""), ("m.room.join_rules", ""),
        ("m.room.history_visibility", ""), ("m.room.guest_access", ""), ("m.room.name", ""), ("m.room.topic", ""),
        ("m.room.member", BOB), ("m.room.member", BOB),
        *[("m.room.message", None)] * 5,
    ]  # fmt: skip
    assert [history[8]["content"]["membership"], history[9]["content"]["membership"]] == ["invite", "join"]
    assert [e["event_id"] for e in history[-5:]] == list(sent.values())
    assert history[0]["content"]["creator"] == ALICE and history[0]["content"]["room_version"] == "10"
    assert all(e["room_id"] == room for e in history)
    assert len({e["event_id"] for e in history}) == len(history)

    # State, one state event, members, rooms, one event.
    state = ok(await bob.room_get_state(room), RoomGetStateResponse).events
    by_key = {(e["type"], e["state_key"]): e["content"] for e in state}
    assert by_key[("m.room.name", "")] == {"name": "Greenhouse"}
    assert by_key[("m.room.topic", "")] == {"topic": "Sensors and chatter"}
    assert by_key[("m.room.member", BOB)]["membership"] == "join"
    assert by_key[("m.room.create", "")]["creator"] == ALICE
    topic = ok(await bob.room_get_state_event(room, "m.room.topic"), RoomGetStateEventResponse)
    assert topic.content == {"topic": "Sensors and chatter"}
    member = ok(await alice.room_get_state_event(room, "m.room.member", BOB), RoomGetStateEventResponse)
    assert member.content["membership"] == "join"
    refused(await alice.room_get_state_event(room, "m.room.avatar"), "M_NOT_FOUND")
    members = ok(await bob.joined_members(room), JoinedMembersResponse)
    assert sorted(m.user_id for m in members.members) == [ALICE, BOB]
    for client in (alice, bob):
        assert ok(await client.joined_rooms(), JoinedRoomsResponse).rooms == [room]
    fetched = ok(await bob.room_get_event(room, sent["alice formatted"]), RoomGetEventResponse)
    assert fetched.event.source["content"] == formatted and fetched.event.source["event_id"] == sent["alice formatted"]

    # Redaction: the content goes everywhere, the reason is in unsigned.redacted_because.
    before_oops = ok(await bob.sync(timeout=0), SyncResponse).next_batch
    oops = await send(alice, room, text("my password is hunter2"))
    redaction = ok(await alice.room_redact(room, oops, reason="posted a secret"), RoomRedactResponse)
    fetched = ok(await bob.room_get_event(room, oops), RoomGetEventResponse).event.source
    assert fetched["content"] == {}
    assert fetched["unsigned"]["redacted_because"]["event_id"] == redaction.event_id
    # v11 asks servers to serve `redacts` in the content too, whatever the room version (MSC2174)
    assert fetched["unsigned"]["redacted_because"]["content"] == {"reason": "posted a secret", "redacts": oops}
    assert fetched["unsigned"]["redacted_because"]["redacts"] == oops
    later = timeline(ok(await bob.sync(timeout=0, since=before_oops), SyncResponse), room)
    assert [e["event_id"] for e in later] == [oops, redaction.event_id]
    assert later[0]["content"] == {} and later[0]["unsigned"]["redacted_because"]["event_id"] == redaction.event_id
    assert later[1]["type"] == "m.room.redaction" and later[1]["redacts"] == oops
    page = ok(await bob.room_messages(room, start=alice_inc.next_batch, limit=50, direction=MessageDirection.front),
              RoomMessagesResponse)  # fmt: skip
    served = {e.source["event_id"]: e.source for e in page.chunk}
    assert served[oops]["content"] == {} and "hunter2" not in repr(served)
    assert served[oops]["unsigned"]["redacted_because"]["event_id"] == redaction.event_id
    # Bob may not redact alice's message (he has power 0, redact needs 50).
    refused(await bob.room_redact(room, sent["alice plain"]))

    # Transaction IDs: the same one twice is one event.
    twice = [await send(alice, room, text("only once"), tx_id="fixed-txn-1") for _ in range(2)]
    assert twice[0] == twice[1]
    latest = ok(await alice.sync(timeout=0), SyncResponse)
    history = await full_history(alice, room, latest.next_batch, limit=50)
    assert bodies(history).count("only once") == 1
    # ... but the same ID from another device (bob) is a different transaction.
    assert await send(bob, room, text("only once"), tx_id="fixed-txn-1") != twice[0]

    # An old token for bob, and a message after it, to check after the restart.
    bob_token = ok(await bob.sync(timeout=0), SyncResponse).next_batch
    after_token = await send(alice, room, text("sent before the restart"))
    history = await full_history(alice, room, ok(await alice.sync(timeout=0), SyncResponse).next_batch)
    assert history[-1]["event_id"] == after_token
    return {
        "room": room, "sent": sent, "oops": oops, "once": twice[0], "after_token": after_token,
        "bob_since": bob_token, "history": [e["event_id"] for e in history],
        "alice_token": alice.access_token, "alice_device": alice.device_id,
        "bob_token": bob.access_token, "bob_device": bob.device_id,
    }  # fmt: skip


async def check_after_restart(gateway: GatewayProcess, alice: AsyncClient, bob: AsyncClient, saved: dict) -> None:
    room = saved["room"]
    # Tokens issued before the restart are still valid.
    for client, user in ((alice, ALICE), (bob, BOB)):
        assert (await client.whoami()).user_id == user
        assert ok(await client.joined_rooms(), JoinedRoomsResponse).rooms == [room]
    # Bob's old sync token continues where it stopped: the one message after it, nothing before it.
    resumed = ok(await bob.sync(timeout=0, since=saved["bob_since"]), SyncResponse)
    assert [e["event_id"] for e in timeline(resumed, room)] == [saved["after_token"]]
    # History, state and membership are as they were.
    history = await full_history(bob, room, resumed.next_batch)
    assert [e["event_id"] for e in history] == saved["history"]  # nothing lost, nothing doubled
    redacted = ok(await bob.room_get_event(room, saved["oops"]), RoomGetEventResponse).event.source
    assert redacted["content"] == {} and "redacted_because" in redacted["unsigned"]
    members = ok(await alice.joined_members(room), JoinedMembersResponse)
    assert sorted(m.user_id for m in members.members) == [ALICE, BOB]
    name = ok(await bob.room_get_state_event(room, "m.room.name"), RoomGetStateEventResponse)
    assert name.content == {"name": "Greenhouse"}
    # A transaction ID used before the restart still maps to its event.
    assert await send(alice, room, text("only once"), tx_id="fixed-txn-1") == saved["once"]
    # New events go on from the old head, and a fresh password login works.
    fresh = await login(gateway, ALICE)
    try:
        new = await send(fresh, room, text("after the restart"))
        later = ok(await bob.sync(timeout=0, since=resumed.next_batch), SyncResponse)
        assert [e["event_id"] for e in timeline(later, room)] == [new]
        assert bodies(timeline(later, room)) == ["after the restart"]
        history = await full_history(bob, room, later.next_batch, limit=50)
        assert [e["event_id"] for e in history] == saved["history"] + [new]
    finally:
        await fresh.close()


def test_moderation_kick_ban_unban_leave_and_forget(tmp_path: Path) -> None:
    with gateway_process(tmp_path, config=NO_RATE_LIMITS) as gateway:
        for name in ("bob", "carol"):
            add_user(gateway, name)

        async def scenario() -> None:
            alice = await register(gateway, "alice")
            bob, carol = await login(gateway, BOB), await login(gateway, CAROL)
            try:
                await moderation(alice, bob, carol)
            finally:
                await closing(alice, bob, carol)

        asyncio.run(scenario())


async def members_of(client: AsyncClient, room: str) -> list[str]:
    return sorted(m.user_id for m in ok(await client.joined_members(room), JoinedMembersResponse).members)


async def membership(client: AsyncClient, room: str, user: str) -> str:
    event = ok(await client.room_get_state_event(room, "m.room.member", user), RoomGetStateEventResponse)
    return str(event.content["membership"])


async def moderation(alice: AsyncClient, bob: AsyncClient, carol: AsyncClient) -> None:
    room = ok(await alice.room_create(name="Moderated", invite=[BOB, CAROL]), RoomCreateResponse).room_id
    for client in (bob, carol):
        ok(await client.join(room), JoinResponse)
    assert await members_of(alice, room) == [ALICE, BOB, CAROL]

    # A member without power cannot kick or ban; nothing changes.
    refused(await bob.room_kick(room, CAROL, reason="no power"))
    refused(await bob.room_ban(room, CAROL))
    refused(await bob.room_kick(room, ALICE))
    assert await members_of(alice, room) == [ALICE, BOB, CAROL]

    # Alice kicks carol: carol is out, sees the room under "leave", and may not rejoin an invite-only room.
    carol_since = ok(await carol.sync(timeout=0), SyncResponse).next_batch
    ok(await alice.room_kick(room, CAROL, reason="testing kicks"), RoomKickResponse)
    assert await membership(alice, room, CAROL) == "leave"
    assert await members_of(alice, room) == [ALICE, BOB]
    kicked = ok(await carol.sync(timeout=0, since=carol_since), SyncResponse)
    assert room in kicked.rooms.leave
    kick_event = [e.source for e in kicked.rooms.leave[room].timeline.events][-1]
    assert (kick_event["sender"], kick_event["state_key"]) == (ALICE, CAROL)
    assert kick_event["content"]["membership"] == "leave" and kick_event["content"]["reason"] == "testing kicks"
    refused(await carol.join(room))
    refused(await carol.room_send(room, "m.room.message", text("let me in")))
    # Kicking someone who is not in the room is refused.
    refused(await alice.room_kick(room, CAROL))

    # Ban: bob is out and cannot come back, even when invited; unban lets an invite work again.
    ok(await alice.room_ban(room, BOB, reason="testing bans"), RoomBanResponse)
    assert await membership(alice, room, BOB) == "ban"
    refused(await bob.join(room))
    refused(await alice.room_invite(room, BOB))
    ok(await alice.room_unban(room, BOB), RoomUnbanResponse)
    assert await membership(alice, room, BOB) == "leave"
    refused(await bob.join(room))  # unbanned is not invited
    ok(await alice.room_invite(room, BOB), RoomInviteResponse)
    ok(await bob.join(room), JoinResponse)
    assert await members_of(alice, room) == [ALICE, BOB]
    refused(await alice.room_unban(room, BOB))  # not banned any more

    # Bob leaves; he cannot forget while joined, then forgets after leaving.
    refused(await bob.room_forget(room), "M_UNKNOWN")
    before_leave = ok(await bob.sync(timeout=0), SyncResponse).next_batch
    ok(await bob.room_leave(room), RoomLeaveResponse)
    assert ok(await bob.joined_rooms(), JoinedRoomsResponse).rooms == []
    left = ok(await bob.sync(timeout=0, since=before_leave), SyncResponse)
    assert room in left.rooms.leave
    ok(await bob.room_forget(room), RoomForgetResponse)
    forgotten = ok(await bob.sync(timeout=0), SyncResponse)
    assert room not in forgotten.rooms.join and room not in forgotten.rooms.leave
    assert room not in forgotten.rooms.invite
    # Leaving twice is harmless; carol (kicked) can forget too.
    ok(await bob.room_leave(room), RoomLeaveResponse)
    ok(await carol.room_forget(room), RoomForgetResponse)
    assert room not in ok(await carol.sync(timeout=0), SyncResponse).rooms.leave
    # Alice, still there, sees the whole story in order.
    latest = ok(await alice.sync(timeout=0), SyncResponse).next_batch
    history = await full_history(alice, room, latest, limit=50)
    story = [(e["state_key"], e["content"]["membership"]) for e in history if e["type"] == "m.room.member"][3:]
    assert story == [(BOB, "join"), (CAROL, "join"), (CAROL, "leave"), (BOB, "ban"), (BOB, "leave"), (BOB, "invite"),
                     (BOB, "join"), (BOB, "leave")]  # fmt: skip


def test_long_poll_sync_returns_promptly_when_a_message_arrives(tmp_path: Path) -> None:
    with gateway_process(tmp_path, config=NO_RATE_LIMITS) as gateway:
        add_user(gateway, "bob")
        add_user(gateway, "carol")

        async def scenario() -> None:
            alice = await register(gateway, "alice")
            bob, carol = await login(gateway, BOB), await login(gateway, CAROL)
            try:
                room = ok(await alice.room_create(invite=[BOB]), RoomCreateResponse).room_id
                ok(await bob.join(room), JoinResponse)
                since = ok(await bob.sync(timeout=0), SyncResponse).next_batch
                for round_ in range(3):
                    waiting = asyncio.create_task(bob.sync(timeout=30000, since=since))
                    await asyncio.sleep(0.5)
                    assert not waiting.done(), "the long poll returned with nothing new"
                    sent_at = time.monotonic()
                    event_id = await send(alice, room, text(f"wake up {round_}"))
                    response = ok(await asyncio.wait_for(waiting, 10), SyncResponse)
                    elapsed = time.monotonic() - sent_at
                    assert elapsed < 5.0, elapsed
                    events = timeline(response, room)
                    assert [e["event_id"] for e in events] == [event_id]
                    since = response.next_batch
                # A long poll with nothing to say waits its timeout and then returns an empty answer.
                started = time.monotonic()
                empty = ok(await bob.sync(timeout=1000, since=since), SyncResponse)
                assert 0.9 <= time.monotonic() - started < 5.0
                assert timeline(empty, room) == []
                # An invite wakes the invitee's long poll as promptly as a message does.
                carol_since = ok(await carol.sync(timeout=0), SyncResponse).next_batch
                waiting = asyncio.create_task(carol.sync(timeout=30000, since=carol_since))
                await asyncio.sleep(0.5)
                assert not waiting.done()
                sent_at = time.monotonic()
                ok(await alice.room_invite(room, CAROL), RoomInviteResponse)
                response = ok(await asyncio.wait_for(waiting, 10), SyncResponse)
                assert time.monotonic() - sent_at < 5.0
                assert room in response.rooms.invite
            finally:
                await closing(alice, bob, carol)

        asyncio.run(scenario())
