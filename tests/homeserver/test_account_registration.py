"""Registration's user-interactive auth: sessions kept server-side, the first request's parameters, idempotent
completion, inhibit_login, registration tokens (with matrix-nio), /register/available and bad input.

The session table itself is checked in memory first (bounds, expiry, flow order)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import Client, expect, gateway_in_loop

from lowband.gateway.homeserver.uia import DUMMY, PASSWORD, REGISTRATION_TOKEN, UIASessions, flow_complete

V3 = "/_matrix/client/v3"


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Client, Any, str]]:
    """A gateway, an anonymous client, its services and its URL."""
    found: list[Any] = []
    async with gateway_in_loop(tmp_path, on_ready=found.append, **config) as url, aiohttp.ClientSession() as session:
        yield Client(session, url), found[0], url


# ----------------------------------------------------------------- in memory


def test_sessions_are_bounded_in_number_and_lifetime() -> None:
    table = UIASessions(max_sessions=3, lifetime_s=60)
    first = table.start("register", None, {"username": "a"}, now=0)
    others = [table.start("register", None, {}, now=1 + i) for i in range(3)]
    assert len(table) == 3 and table.find(first.session_id, now=5) is None  # full: the oldest went first
    assert table.find(others[0].session_id, now=60.9) is others[0]
    assert table.find(others[0].session_id, now=61) is None  # expired 60 s after its start
    assert table.find(others[2].session_id, now=62) is others[2] and len(table) == 1
    assert table.find("nope", now=62) is None


def test_flows_complete_only_in_order() -> None:
    flows = [[REGISTRATION_TOKEN, DUMMY], [PASSWORD]]
    assert flow_complete(flows, [REGISTRATION_TOKEN, DUMMY]) and flow_complete(flows, [PASSWORD])
    assert not flow_complete(flows, [DUMMY, REGISTRATION_TOKEN]) and not flow_complete(flows, [REGISTRATION_TOKEN])
    assert not flow_complete(flows, [])


# ------------------------------------------------------------- over the API


def test_registration_session_keeps_parameters_and_completes_once(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path) as (anon, svc, url):
            # The first request carries the parameters; the 401 has flows and a session, and no error.
            first = expect(await anon.request("POST", f"{V3}/register", {
                "username": "carol", "password": "carol-pw", "device_id": "CAROLDEV"}), 401)  # fmt: skip
            assert first["flows"] == [{"stages": ["m.login.dummy"]}] and "errcode" not in first and first["session"]
            # Completing with the session alone: the account is the first request's.
            done = {"auth": {"type": "m.login.dummy", "session": first["session"]}}
            answer = expect(await anon.request("POST", f"{V3}/register", done), 200)
            assert answer["user_id"] == "@carol:localhost" and answer["device_id"] == "CAROLDEV"
            # The same session completed again: the same answer, no second account, the token still works.
            assert expect(await anon.request("POST", f"{V3}/register", done), 200) == answer
            carol = Client(anon.session, url, answer["access_token"])
            assert expect(await carol.request("GET", f"{V3}/account/whoami"), 200)["user_id"] == "@carol:localhost"
            login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol"},
                     "password": "carol-pw"}  # fmt: skip
            expect(await anon.request("POST", f"{V3}/login", login), 200)

            # Two completions of one session at once make one account and get one answer.
            start = expect(await anon.request("POST", f"{V3}/register", {"username": "dave", "password": "pw"}), 401)
            both = await asyncio.gather(*(anon.request("POST", f"{V3}/register", {
                "auth": {"type": "m.login.dummy", "session": start["session"]}}) for _ in range(2)))  # fmt: skip
            assert both[0] == both[1] and both[0][0] == 200 and both[0][1]["user_id"] == "@dave:localhost"

            # inhibit_login: the account, no token, no device.
            body = expect(await anon.request("POST", f"{V3}/register", {
                "username": "erin", "password": "pw", "inhibit_login": True, "auth": {"type": "m.login.dummy"}}), 200)
            assert body == {"user_id": "@erin:localhost", "home_server": "localhost"}
            assert svc.store.user_devices("@erin:localhost") == []

            # Later requests only add what the first lacked.
            start = expect(await anon.request("POST", f"{V3}/register", {"username": "frank", "junk": "j" * 100_000}),
                           401)  # fmt: skip
            # Only the named, bounded parameters are kept: a flood of big bodies costs no memory.
            assert svc.uia.sessions.find(start["session"], time.monotonic()).params == {"username": "frank"}
            body = expect(await anon.request("POST", f"{V3}/register", {
                "username": "mallory", "password": "pw", "auth": {"type": "m.login.dummy",
                                                                  "session": start["session"]}}), 200)  # fmt: skip
            assert body["user_id"] == "@frank:localhost" and svc.store.get_user("@mallory:localhost") is None

            # An unknown session: 401 with a fresh one and M_UNKNOWN; the fresh one then works.
            stale = expect(await anon.request("POST", f"{V3}/register", {
                "username": "gina", "password": "pw", "auth": {"type": "m.login.dummy", "session": "made-up"}}),
                401, "M_UNKNOWN")  # fmt: skip
            assert stale["session"] != "made-up"
            expect(await anon.request("POST", f"{V3}/register", {
                "auth": {"type": "m.login.dummy", "session": stale["session"]}}), 200)  # fmt: skip

            # A stage that is not offered, and a session used for something else.
            start = expect(await anon.request("POST", f"{V3}/register", {"username": "hank", "password": "pw"}), 401)
            wrong = expect(await anon.request("POST", f"{V3}/register", {
                "auth": {"type": "m.login.password", "session": start["session"]}}), 401, "M_UNRECOGNIZED")
            assert wrong["session"] == start["session"]
            expect(await carol.request("POST", f"{V3}/account/password", {
                "new_password": "x", "auth": {"type": "m.login.password", "password": "carol-pw",
                                              "session": start["session"]}}), 403, "M_FORBIDDEN")  # fmt: skip

    asyncio.run(run())


def test_registration_refuses_bad_names_and_input(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path) as (anon, svc, url):
            await Client(anon.session, url).register("taken")
            cases = [
                ({"username": "taken", "password": "pw"}, 400, "M_USER_IN_USE"),  # said at the first request
                ({"username": "Bad Name", "password": "pw"}, 400, "M_INVALID_USERNAME"),
                ({"username": "x" * 300, "password": "pw"}, 400, "M_INVALID_USERNAME"),
                ({"username": "x" * 300, "password": "pw", "auth": {"type": "m.login.dummy", "session": "s"}},
                 400, "M_INVALID_USERNAME"),
                ({"username": "ok", "password": "pw", "device_id": "D" * 300}, 400, "M_BAD_JSON"),
                ({"username": "dev.kitchen", "password": "pw"}, 400, "M_EXCLUSIVE"),  # a device link's namespace
                ({"username": 5, "password": "pw"}, 400, "M_BAD_JSON"),
                ({"username": "ok", "password": "p" * 600}, 400, "M_BAD_JSON"),
                ({"username": "ok", "password": "pw", "inhibit_login": "yes"}, 400, "M_BAD_JSON"),
                ({"username": "ok", "password": "pw", "auth": "dummy"}, 400, "M_BAD_JSON"),
                ({"username": "ok", "password": "pw", "auth": {"type": "m.login.dummy", "session": "s" * 300}},
                 400, "M_BAD_JSON"),
                ({"username": "ok", "password": "pw", "auth": {"type": ["m.login.dummy"]}}, 401, "M_UNRECOGNIZED"),
                ({"username": "ok", "auth": {"type": "m.login.dummy"}}, 400, "M_MISSING_PARAM"),
            ]
            for body, status, errcode in cases:
                expect(await anon.request("POST", f"{V3}/register", body), status, errcode)
            assert svc.store.get_user("@ok:localhost") is None
            # The name is taken between the first request and completion: M_USER_IN_USE, not a 500.
            start = expect(await anon.request("POST", f"{V3}/register", {"username": "race", "password": "pw"}), 401)
            await Client(anon.session, url).register("race")
            expect(await anon.request("POST", f"{V3}/register", {
                "auth": {"type": "m.login.dummy", "session": start["session"]}}), 400, "M_USER_IN_USE")  # fmt: skip

            available = f"{V3}/register/available?username="
            assert expect(await anon.request("GET", available + "free"), 200) == {"available": True}
            expect(await anon.request("GET", available + "taken"), 400, "M_USER_IN_USE")
            expect(await anon.request("GET", available + "NO%20WAY"), 400, "M_INVALID_USERNAME")
            expect(await anon.request("GET", available), 400, "M_INVALID_USERNAME")
            expect(await anon.request("GET", available + "dev.x"), 400, "M_EXCLUSIVE")

    asyncio.run(run())


def test_registration_tokens_with_matrix_nio(tmp_path: Path) -> None:
    nio = pytest.importorskip("nio")

    async def run() -> None:
        async with gateway(tmp_path, registration_tokens=("letmein",)) as (anon, svc, url):
            got = expect(await anon.request("POST", f"{V3}/register", {"username": "x", "password": "pw",
                                                                       "auth": {"type": "m.login.dummy"}}), 401)
            assert got["flows"] == [{"stages": ["m.login.registration_token", "m.login.dummy"]}]
            validity = "/_matrix/client/v1/register/m.login.registration_token/validity?token="
            assert expect(await anon.request("GET", validity + "letmein"), 200) == {"valid": True}
            assert expect(await anon.request("GET", validity + "letmeout"), 200) == {"valid": False}
            assert expect(await anon.request("GET", validity + "x" * 5000), 200) == {"valid": False}

            client = nio.AsyncClient(url, "nina")
            try:
                refused = await client.register_with_token("nina", "nina-pw", "wrong-token")
                assert isinstance(refused, nio.responses.RegisterErrorResponse) and svc.store.get_user("@nina:localhost") is None
                response = await client.register_with_token("nina", "nina-pw", "letmein")
                assert isinstance(response, nio.RegisterResponse), response
                assert response.user_id == "@nina:localhost"
                assert isinstance(await client.whoami(), nio.WhoamiResponse)
            finally:
                await client.close()

    asyncio.run(run())
