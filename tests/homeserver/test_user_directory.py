"""POST /user_directory/search through the client-server API: who can be found under each setting, matching,
limits, profile changes seen at once, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness import Client, expect, users_gateway

from lowband.gateway.config import ConfigError, RateLimits, load_config
from lowband.gateway.homeserver import user_directory

V3 = "/_matrix/client/v3"


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, *names: str, **config: Any) -> AsyncIterator[list[Client]]:
    """A gateway and one registered client per name."""
    async with users_gateway(tmp_path, *names, rate_limits=RateLimits(enabled=False), **config) as (clients, _, _):
        yield clients


async def find(client: Client, term: str, limit: int | None = None) -> Any:
    body: dict[str, Any] = {"search_term": term}
    if limit is not None:
        body["limit"] = limit
    return expect(await client.request("POST", V3 + "/user_directory/search", body), 200)


def users(answer: Any) -> list[str]:
    return [r["user_id"] for r in answer["results"]]


async def room(owner: Client, *joiners: Client, preset: str = "private_chat") -> str:
    room_id = str(expect(await owner.request("POST", V3 + "/createRoom", {"preset": preset}), 200)["room_id"])
    for joiner in joiners:
        if preset == "private_chat":
            expect(await owner.request("POST", f"{V3}/rooms/{quote(room_id)}/invite", {"user_id": joiner.user_id}), 200)
        expect(await joiner.request("POST", f"{V3}/join/{quote(room_id)}", {}), 200)
    return room_id


@in_loop
async def test_shared_rooms_and_published_rooms_only_by_default(tmp_path: Path) -> None:
    async with gateway(tmp_path, "alice", "bob", "bobby", "robert", "stranger") as clients:
        alice, bob, bobby, robert, stranger = clients
        assert await find(alice, "bob") == {"results": [], "limited": False}  # nobody shared yet
        shared = await room(alice, bob)
        assert users(await find(alice, "bob")) == [bob.user_id]
        # a room published in the directory makes its members findable by anyone
        published = await room(robert, bobby, preset="public_chat")
        expect(await robert.request("PUT", f"{V3}/directory/list/room/{quote(published)}",
                                    {"visibility": "public"}), 200)  # fmt: skip
        assert users(await find(alice, "bob")) == [bob.user_id, bobby.user_id]  # shared first
        assert users(await find(stranger, "bob")) == [bobby.user_id]
        # leaving the shared room hides bob again, at once
        expect(await bob.request("POST", f"{V3}/rooms/{quote(shared)}/leave", {}), 200)
        assert users(await find(alice, "bob")) == [bobby.user_id]
        # an unpublished public room does not count
        expect(await robert.request("PUT", f"{V3}/directory/list/room/{quote(published)}",
                                    {"visibility": "private"}), 200)  # fmt: skip
        assert users(await find(stranger, "bob")) == []


@in_loop
async def test_display_names_prefixes_and_limits(tmp_path: Path) -> None:
    async with gateway(tmp_path, "alice", "u1", "u2", "u3", "weird") as clients:
        alice, u1, u2, u3, weird = clients
        await room(alice, u1, u2, u3, weird)
        for client, name in ((u1, "Greenhouse Pump"), (u2, "Pump Controller"), (u3, "50% off_sale")):
            expect(await client.request("PUT", f"{V3}/profile/{quote(client.user_id)}/displayname",
                                        {"displayname": name}), 200)  # fmt: skip
        found = await find(alice, "PUMP")
        assert users(found) == [u1.user_id, u2.user_id]  # a word's start, case folded, by name
        assert found["results"][0]["display_name"] == "Greenhouse Pump"
        assert users(await find(alice, "ump")) == []  # prefixes only
        assert users(await find(alice, "@u")) == [u3.user_id, u1.user_id, u2.user_id]  # localparts, named first
        # LIKE wildcards in the term are plain characters
        assert users(await find(alice, "50%")) == [u3.user_id]
        assert users(await find(alice, "%")) == []
        assert users(await find(alice, "_")) == []
        assert users(await find(alice, "off_")) == [u3.user_id]
        limited = await find(alice, "u", limit=2)
        assert len(limited["results"]) == 2 and limited["limited"] is True
        assert (await find(alice, "u", limit=10**9))["limited"] is False
        # a new display name is found at once
        expect(await weird.request("PUT", f"{V3}/profile/{quote(weird.user_id)}/displayname",
                                   {"displayname": "Zebra"}), 200)  # fmt: skip
        assert users(await find(alice, "zeb")) == [weird.user_id]


@in_loop
async def test_search_all_users(tmp_path: Path) -> None:
    async with gateway(tmp_path, "alice", "loner", user_directory_search_all=True) as (alice, loner):
        assert users(await find(alice, "lon")) == [loner.user_id]
        expect(await loner.request("POST", V3 + "/account/deactivate",
                                   {"auth": {"type": "m.login.password", "password": "secret-pw",
                                             "identifier": {"type": "m.id.user", "user": "loner"}}}), 200)
        assert users(await find(alice, "lon")) == []


@in_loop
async def test_bad_requests(tmp_path: Path) -> None:
    async with gateway(tmp_path, "alice") as (alice,):
        path = V3 + "/user_directory/search"
        expect(await alice.request("POST", path, {}), 400, "M_MISSING_PARAM")
        expect(await alice.request("POST", path, {"search_term": 3}), 400, "M_BAD_JSON")
        expect(await alice.request("POST", path, {"search_term": "a", "limit": 0}), 400, "M_BAD_JSON")
        expect(await alice.request("POST", path, {"search_term": "a", "limit": "5"}), 400, "M_BAD_JSON")
        expect(await alice.request("POST", path, {"search_term": "a", "limit": True}), 400, "M_BAD_JSON")
        expect(await alice.request("POST", path, {"search_term": "a" * 257}), 400, "M_INVALID_PARAM")
        expect(await alice.request("POST", path, []), 400, "M_BAD_JSON")
        expect(await alice.request("POST", path, {"search_term": "a"}, token=False), 401, "M_MISSING_TOKEN")
        assert user_directory.MAX_LIMIT == 100


def test_config_section(tmp_path: Path) -> None:
    path = tmp_path / "lowband.toml"
    path.write_text("[user_directory]\nsearch_all_users = true\n")
    assert load_config(path).user_directory_search_all is True
    assert load_config(None).user_directory_search_all is False
    path.write_text("[user_directory]\nsearch_all_users = 'yes'\n")
    try:
        load_config(path)
    except ConfigError as exc:
        assert "user_directory" in str(exc)
    else:
        raise AssertionError("a string was taken for a boolean")
    path.write_text("[user_directory]\nsearch_everyone = true\n")
    try:
        load_config(path)
    except ConfigError as exc:
        assert "user_directory.search_everyone" in str(exc)
    else:
        raise AssertionError("an unknown key was taken")
