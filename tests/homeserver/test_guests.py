"""Guest accounts and world_readable rooms through the client-server API of a gateway in the test's loop: guest
registration (off by default), the endpoints a guest may and may not use, joining only rooms that allow guests,
and reading a world_readable room without joining it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from harness import Client, expect, gateway_in_loop

from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver.guests import guest_route_allowed

V3 = "/_matrix/client/v3"
GUEST_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"


def in_loop(test: Callable[[Path], Awaitable[None]]) -> Callable[[Path], None]:
    """Run an async test in its own loop, 120 s at most."""

    @functools.wraps(test)
    def run(tmp_path: Path) -> None:
        asyncio.run(asyncio.wait_for(test(tmp_path), 120))

    return run


def q(value: str) -> str:
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Client, aiohttp.ClientSession, str, Any]]:
    found: list[Any] = []
    async with gateway_in_loop(tmp_path, on_ready=found.append, rate_limits=RateLimits(enabled=False), **config) \
            as url, aiohttp.ClientSession() as session:  # fmt: skip
        alice = Client(session, url)
        await alice.register("alice")
        yield alice, session, url, found[0]


async def guest(session: aiohttp.ClientSession, url: str) -> Client:
    client = Client(session, url)
    body = expect(await client.request("POST", V3 + "/register?kind=guest", {}, token=False), 200)
    assert set(body) >= {"user_id", "access_token", "device_id"}
    client.token, client.user_id = body["access_token"], body["user_id"]
    return client


async def send(client: Client, room_id: str, event_type: str = "m.room.message") -> tuple[int, Any]:
    path = f"{V3}/rooms/{q(room_id)}/send/{event_type}/{time.monotonic_ns()}"
    return await client.request("PUT", path, {"msgtype": "m.text", "body": "hi"})


def test_route_table() -> None:
    prefix = "/_matrix/client/{version:(?:v3|r0)}"
    assert guest_route_allowed("GET", prefix + "/sync")
    assert guest_route_allowed("PUT", prefix + "/rooms/{room_id}/send/{event_type}/{txn_id}", "m.room.message")
    assert not guest_route_allowed("PUT", prefix + "/rooms/{room_id}/send/{event_type}/{txn_id}", "m.reaction")
    assert not guest_route_allowed("POST", prefix + "/createRoom")
    assert not guest_route_allowed("GET", "/_matrix/media/v3/download/{server}/{media_id}")
    assert not guest_route_allowed("POST", prefix + "/sync")


@in_loop
async def test_guests_are_off_by_default(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (alice, session, url, _svc):
        nobody = Client(session, url)
        expect(await nobody.request("POST", V3 + "/register?kind=guest", {}, token=False), 403, GUEST_FORBIDDEN)
        expect(await nobody.request("POST", V3 + "/register?kind=robot", {}, token=False), 400, "M_INVALID_PARAM")
        assert expect(await alice.request("GET", V3 + "/account/whoami"), 200)["is_guest"] is False


@in_loop
async def test_guest_endpoints_and_joining(tmp_path: Path) -> None:
    async with gateway(tmp_path, guests_enabled=True) as (alice, session, url, svc):
        visitor = await guest(session, url)
        assert expect(await visitor.request("GET", V3 + "/account/whoami"), 200)["is_guest"] is True
        # outside the guest endpoints
        expect(await visitor.request("POST", V3 + "/createRoom", {}), 403, GUEST_FORBIDDEN)
        expect(await visitor.request("POST", V3 + "/user_directory/search", {"search_term": "a"}), 403, GUEST_FORBIDDEN)
        expect(await visitor.request("GET", V3 + "/joined_rooms"), 403, GUEST_FORBIDDEN)
        expect(await visitor.request("POST", "/_matrix/media/v3/upload", raw=b"x"), 403, GUEST_FORBIDDEN)
        # a guest cannot log in with a password
        expect(await visitor.request("POST", V3 + "/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": visitor.user_id},
            "password": ""}, token=False), 403, "M_FORBIDDEN")  # fmt: skip
        closed = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)["room_id"]
        expect(await visitor.request("POST", f"{V3}/join/{q(closed)}", {}), 403, GUEST_FORBIDDEN)
        expect(await visitor.request("POST", f"{V3}/rooms/{q(closed)}/join", {}), 403, GUEST_FORBIDDEN)
        expect(await visitor.request("POST", f"{V3}/join/{q('#nowhere:localhost')}", {}), 403, GUEST_FORBIDDEN)
        open_room = expect(await alice.request("POST", V3 + "/createRoom", {
            "preset": "public_chat", "room_alias_name": "lobby",
            "initial_state": [{"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}],
        }), 200)["room_id"]  # fmt: skip
        expect(await visitor.request("POST", f"{V3}/join/{q('#lobby:localhost')}", {}), 200)
        expect(await send(visitor, open_room), 200)
        expect(await send(visitor, open_room, "m.reaction"), 403, GUEST_FORBIDDEN)
        synced = expect(await visitor.request("GET", V3 + "/sync"), 200)
        assert open_room in synced["rooms"]["join"]
        expect(await visitor.request("GET", f"{V3}/rooms/{q(open_room)}/messages?dir=b"), 200)
        expect(await visitor.request("POST", f"{V3}/rooms/{q(open_room)}/leave", {}), 200)
        # when the room stops allowing guests, the guests in it are made to leave
        expect(await visitor.request("POST", f"{V3}/rooms/{q(open_room)}/join", {}), 200)
        member_path = f"{V3}/rooms/{q(open_room)}/state/m.room.member/{q(visitor.user_id)}"
        expect(await alice.request("PUT", f"{V3}/rooms/{q(open_room)}/state/m.room.guest_access",
                                   {"guest_access": "forbidden"}), 200)  # fmt: skip
        deadline = time.monotonic() + 10
        while expect(await alice.request("GET", member_path), 200)["membership"] != "leave":
            assert time.monotonic() < deadline, "the guest was not made to leave"
            await asyncio.sleep(0.05)
        expect(await visitor.request("POST", f"{V3}/rooms/{q(open_room)}/join", {}), 403, GUEST_FORBIDDEN)
        # the member guest's other account-maintenance endpoints
        expect(await visitor.request("GET", V3 + "/devices"), 200)
        expect(await visitor.request("POST", V3 + "/logout", {}), 200)
        expect(await visitor.request("GET", V3 + "/account/whoami"), 401, "M_UNKNOWN_TOKEN")


@in_loop
async def test_world_readable_room_read_by_an_outsider_and_a_guest(tmp_path: Path) -> None:
    async with gateway(tmp_path, guests_enabled=True) as (alice, session, url, _svc):
        outsider = Client(session, url)
        await outsider.register("outsider")
        world = expect(await alice.request("POST", V3 + "/createRoom", {
            "preset": "private_chat", "name": "Weather",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                               "content": {"history_visibility": "world_readable"}}],
        }), 200)["room_id"]  # fmt: skip
        private = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "private_chat"}), 200)["room_id"]
        event_id = expect(await send(alice, world), 200)["event_id"]
        private_event = expect(await send(alice, private), 200)["event_id"]
        visitor = await guest(session, url)
        for reader in (outsider, visitor):
            page = expect(await reader.request("GET", f"{V3}/rooms/{q(world)}/messages?dir=b&limit=5"), 200)
            assert event_id in [e["event_id"] for e in page["chunk"]]
            got = expect(await reader.request("GET", f"{V3}/rooms/{q(world)}/event/{q(event_id)}"), 200)
            assert got["content"]["body"] == "hi"
            state = expect(await reader.request("GET", f"{V3}/rooms/{q(world)}/state"), 200)
            assert "m.room.create" in {e["type"] for e in state}
            name = expect(await reader.request("GET", f"{V3}/rooms/{q(world)}/state/m.room.name"), 200)
            assert name == {"name": "Weather"}
            # a room that is not world_readable stays closed
            expect(await reader.request("GET", f"{V3}/rooms/{q(private)}/messages?dir=b"), 403, "M_FORBIDDEN")
            expect(await reader.request("GET", f"{V3}/rooms/{q(private)}/state"), 403, "M_FORBIDDEN")
            status, _ = await reader.request("GET", f"{V3}/rooms/{q(private)}/event/{q(private_event)}")
            assert status in (403, 404)
        # reading is not joining: the outsider cannot post
        expect(await send(outsider, world), 403, "M_FORBIDDEN")
