"""Room tags through the client-server API: set, replace, delete, read back, delivered as ``m.tag`` room account
data in /sync; bad input."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from harness import Client, expect, users_gateway

from lowband.gateway.api.http import client_tags
from lowband.gateway.config import RateLimits

V3 = "/_matrix/client/v3"


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, *names: str) -> AsyncIterator[list[Client]]:
    """A gateway and one registered client per name."""
    async with users_gateway(tmp_path, *names, rate_limits=RateLimits(enabled=False)) as (clients, _, _):
        yield clients


def test_tags_round_trip_and_sync(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as (alice, bob):
            room = str(expect(await alice.request("POST", V3 + "/createRoom", {}), 200)["room_id"])
            tags = f"{V3}/user/{quote(alice.user_id)}/rooms/{quote(room)}/tags"
            assert expect(await alice.request("GET", tags), 200) == {"tags": {}}
            first = expect(await alice.request("GET", V3 + "/sync"), 200)["next_batch"]
            expect(await alice.request("PUT", tags + "/m.favourite", {"order": 0.25}), 200)
            expect(await alice.request("PUT", tags + "/u.work", {}), 200)
            expect(await alice.request("PUT", tags + "/m.favourite", {"order": 1}), 200)  # replaced
            assert expect(await alice.request("GET", tags), 200) == {"tags": {"m.favourite": {"order": 1},
                                                                              "u.work": {}}}  # fmt: skip
            synced = expect(await alice.request("GET", f"{V3}/sync?since={first}&timeout=0"), 200)
            data = synced["rooms"]["join"][room]["account_data"]["events"]
            assert data == [{"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 1}, "u.work": {}}}}]
            expect(await alice.request("DELETE", tags + "/u.work"), 200)
            expect(await alice.request("DELETE", tags + "/u.never-set"), 200)
            assert expect(await alice.request("GET", tags), 200) == {"tags": {"m.favourite": {"order": 1}}}
            # concurrent writes of one user all land
            await asyncio.gather(*(alice.request("PUT", f"{tags}/u.t{i}", {"order": i / 10}) for i in range(10)))
            assert len(expect(await alice.request("GET", tags), 200)["tags"]) == 11
            # another user neither reads nor writes them
            bob_path = f"{V3}/user/{quote(alice.user_id)}/rooms/{quote(room)}/tags"
            expect(await bob.request("GET", bob_path), 403, "M_FORBIDDEN")
            expect(await bob.request("PUT", bob_path + "/u.x", {}), 403, "M_FORBIDDEN")
            # a room bob was never in
            own = f"{V3}/user/{quote(bob.user_id)}/rooms/{quote(room)}/tags"
            expect(await bob.request("PUT", own + "/u.x", {}), 403, "M_FORBIDDEN")

    asyncio.run(run())


def test_bad_tags(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice") as (alice,):
            room = str(expect(await alice.request("POST", V3 + "/createRoom", {}), 200)["room_id"])
            tags = f"{V3}/user/{quote(alice.user_id)}/rooms/{quote(room)}/tags"
            for order in (-0.1, 1.5, "0.5", True, None):
                body = {"order": order} if order is not None else {"order": {}}
                expect(await alice.request("PUT", tags + "/u.x", body), 400, "M_INVALID_PARAM")
            expect(await alice.request("PUT", tags + "/" + "t" * 256, {}), 400, "M_INVALID_PARAM")
            expect(await alice.request("PUT", tags + "/" + "t" * 255, {}), 200)
            expect(await alice.request("PUT", tags + "/u.big", {"pad": "x" * 2000}), 400, "M_TOO_LARGE")
            expect(await alice.request("PUT", tags + "/u.x", raw=b"not json"), 400, "M_NOT_JSON")
            expect(await alice.request("PUT", tags + "/u.x", [1]), 400, "M_BAD_JSON")
            expect(await alice.request("GET", f"{V3}/user/{quote(alice.user_id)}/rooms/not-a-room/tags"), 400,
                   "M_INVALID_PARAM")
            for i in range(client_tags.MAX_TAGS - 1):
                expect(await alice.request("PUT", f"{tags}/u.n{i}", {}), 200)
            expect(await alice.request("PUT", tags + "/u.one-too-many", {}), 400, "M_INVALID_PARAM")
            expect(await alice.request("PUT", tags + "/u.n0", {"order": 0}), 200)  # replacing is still fine

    asyncio.run(run())
