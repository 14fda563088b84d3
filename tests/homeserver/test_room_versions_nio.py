"""Rooms of every version made and used through matrix-nio, against ``lowband serve`` in a subprocess.

Versions 11 and 12 get the whole round (invite, join, messages, state,
power levels, redaction, kick, ban, a restart); every other known version a
short one (create, message, redaction), which is enough to run each
version's event builder and auth rules behind the client API.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from harness import GatewayProcess, gateway_process
from nio import (
    AsyncClient,
    JoinResponse,
    RoomBanResponse,
    RoomCreateResponse,
    RoomGetEventResponse,
    RoomGetStateEventResponse,
    RoomInviteResponse,
    RoomKickResponse,
    RoomPreset,
    RoomPutStateResponse,
    RoomRedactResponse,
    RoomUnbanResponse,
    SyncResponse,
)
from test_homeserver_nio import ALICE, BOB, NO_RATE_LIMITS, add_user, closing, login, ok, refused, send, text, timeline

from lowband.gateway.matrix import room_versions

V12_ROOM_ID = re.compile(r"![A-Za-z0-9_-]{43}")


def get_json(gateway: GatewayProcess, path: str, token: str) -> Any:
    request = urllib.request.Request(gateway.url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


async def state_content(client: AsyncClient, room: str, event_type: str, key: str = "") -> dict[str, Any]:
    response = ok(await client.room_get_state_event(room, event_type, key), RoomGetStateEventResponse)
    return dict(response.content)


async def full_round(gateway: GatewayProcess, alice: AsyncClient, bob: AsyncClient, version: str) -> str:
    """Create a room of ``version``, use it the way people do; returns its ID."""
    room = ok(await alice.room_create(name=f"v{version}", room_version=version, invite=[BOB]),
              RoomCreateResponse).room_id  # fmt: skip
    create = await state_content(alice, room, "m.room.create")
    assert create["room_version"] == version
    assert "creator" not in create  # v11+: the sender is the creator (MSC2175)
    levels = await state_content(alice, room, "m.room.power_levels")
    if version == "12":
        assert V12_ROOM_ID.fullmatch(room), room  # the create event's hash, no server name (MSC4291)
        state = get_json(gateway, f"/_matrix/client/v3/rooms/{room}/state", alice.access_token)
        served = next(e for e in state if e["type"] == "m.room.create")
        assert served["event_id"] == "$" + room[1:] and served["room_id"] == room
        assert levels["users"] == {} and levels["events"]["m.room.tombstone"] == 150  # MSC4289 defaults
    else:
        assert room.endswith(":localhost") and levels["users"] == {ALICE: 100}

    # Bob joins from the invite and both talk.
    first = ok(await bob.sync(timeout=0), SyncResponse)
    assert room in first.rooms.invite
    assert ok(await bob.join(room), JoinResponse).room_id == room
    hello = await send(alice, room, text(f"hello in v{version}"))
    reply = await send(bob, room, text("hi"))
    seen = timeline(ok(await bob.sync(timeout=0, since=first.next_batch), SyncResponse), room)
    assert [e["event_id"] for e in seen if e["type"] == "m.room.message"] == [hello, reply]

    # State: the creator changes the topic and raises Bob; Bob at 50 then may set the topic too.
    ok(await alice.room_put_state(room, "m.room.topic", {"topic": "greenhouse"}), RoomPutStateResponse)
    refused(await bob.room_put_state(room, "m.room.topic", {"topic": "mine"}))
    raised = {**levels, "users": {**levels["users"], BOB: 50}}
    ok(await alice.room_put_state(room, "m.room.power_levels", raised), RoomPutStateResponse)
    ok(await bob.room_put_state(room, "m.room.topic", {"topic": "mine"}), RoomPutStateResponse)
    assert (await state_content(alice, room, "m.room.topic"))["topic"] == "mine"
    if version == "12":
        # a creator has no entry in users: listing her is refused, and she keeps her power anyway
        refused(await alice.room_put_state(room, "m.room.power_levels", {**raised, "users": {ALICE: 0}}))
        assert (await state_content(alice, room, "m.room.power_levels"))["users"] == {BOB: 50}

    # Redaction: Alice (above the redact level) removes Bob's message.
    redaction = ok(await alice.room_redact(room, reply, reason="off topic"), RoomRedactResponse).event_id
    fetched = ok(await bob.room_get_event(room, reply), RoomGetEventResponse).event.source
    assert fetched["content"] == {}
    because = fetched["unsigned"]["redacted_because"]
    assert because["event_id"] == redaction and because["redacts"] == reply
    assert because["content"] == {"reason": "off topic", "redacts": reply}  # v11+: redacts lives in content

    # Membership: kick, ban, unban.
    ok(await alice.room_kick(room, BOB, reason="bye"), RoomKickResponse)
    refused(await bob.room_send(room, "m.room.message", text("still here?")))
    ok(await alice.room_ban(room, BOB, reason="spam"), RoomBanResponse)
    refused(await alice.room_invite(room, BOB))
    ok(await alice.room_unban(room, BOB), RoomUnbanResponse)
    ok(await alice.room_invite(room, BOB), RoomInviteResponse)
    assert ok(await bob.join(room), JoinResponse).room_id == room
    return room


def test_rooms_of_every_version_through_nio(tmp_path: Path) -> None:
    with gateway_process(tmp_path, config=NO_RATE_LIMITS) as gateway:
        add_user(gateway, "alice")
        add_user(gateway, "bob")

        async def rounds() -> dict[str, Any]:
            alice, bob = await login(gateway, ALICE), await login(gateway, BOB)
            try:
                capabilities = get_json(gateway, "/_matrix/client/v3/capabilities", alice.access_token)
                versions = capabilities["capabilities"]["m.room_versions"]
                assert versions == {"default": room_versions.DEFAULT.identifier,
                                    "available": {v: "stable" for v in room_versions.KNOWN}}  # fmt: skip
                rooms = {version: await full_round(gateway, alice, bob, version) for version in ("11", "12")}
                for version in room_versions.KNOWN:
                    room = ok(await alice.room_create(room_version=version), RoomCreateResponse).room_id
                    assert (await state_content(alice, room, "m.room.create"))["room_version"] == version
                    message = await send(alice, room, text(f"v{version}"))
                    ok(await alice.room_redact(room, message), RoomRedactResponse)
                    fetched = ok(await alice.room_get_event(room, message), RoomGetEventResponse).event.source
                    assert fetched["content"] == {} and fetched["room_id"] == room
                default = ok(await alice.room_create(), RoomCreateResponse).room_id
                assert (await state_content(alice, default, "m.room.create"))["room_version"] == (
                    room_versions.DEFAULT.identifier)
                for unknown in ("1", "13", "org.matrix.hydra.11"):
                    refused(await alice.room_create(room_version=unknown), "M_UNSUPPORTED_ROOM_VERSION")
                # v12 direct chats: the invitee becomes a creator instead of getting a level (MSC4289)
                dm = ok(await alice.room_create(room_version="12", preset=RoomPreset.trusted_private_chat,
                                                invite=[BOB], is_direct=True), RoomCreateResponse).room_id  # fmt: skip
                create = await state_content(alice, dm, "m.room.create")
                assert create["additional_creators"] == [BOB]
                assert BOB not in (await state_content(alice, dm, "m.room.power_levels"))["users"]
                return {"rooms": rooms, "alice": alice.access_token, "bob": bob.access_token}
            finally:
                await closing(alice, bob)

        saved = asyncio.run(rounds())
        gateway.stop()
        gateway.start()

        async def after_restart() -> None:
            # the room's version comes back from the store: v12 auth (create event from the room ID) still works
            alice, bob = AsyncClient(gateway.url, ALICE), AsyncClient(gateway.url, BOB)
            alice.access_token, alice.user_id = saved["alice"], ALICE
            bob.access_token, bob.user_id = saved["bob"], BOB
            try:
                for room in saved["rooms"].values():
                    await send(bob, room, text("after the restart"))
                    ok(await alice.room_put_state(room, "m.room.name", {"name": "renamed"}), RoomPutStateResponse)
                    ok(await alice.room_kick(room, BOB), RoomKickResponse)
            finally:
                await closing(alice, bob)

        asyncio.run(after_restart())
