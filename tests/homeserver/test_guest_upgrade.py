"""A guest becomes a full account through POST /register (the spec's guest access module), against a gateway
running in the test's loop over real HTTP: it keeps its user ID and rooms, gets a password and a new token, its
guest token ends; a guest naming another user, a full account's token, an unknown token are refused."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from harness import Client, expect, in_loop, users_gateway

from lowband.gateway.config import RateLimits

V3 = "/_matrix/client/v3"


def q(value: str) -> str:
    return quote(value, safe="")


async def new_guest(alice: Client) -> Client:
    guest = Client(alice.session, alice.base)
    body = expect(await guest.request("POST", V3 + "/register?kind=guest", {}, token=False), 200)
    guest.token, guest.user_id = body["access_token"], body["user_id"]
    return guest


async def guest_room(alice: Client) -> str:
    """A public room alice made that guests may join."""
    return expect(await alice.request("POST", V3 + "/createRoom", {
        "preset": "public_chat",
        "initial_state": [{"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}],
    }), 200)["room_id"]  # fmt: skip


def localpart(user_id: str | None) -> str:
    assert user_id is not None
    return user_id[1:].partition(":")[0]


@in_loop
async def test_guest_upgrades_with_its_token_in_the_header(tmp_path: Path) -> None:
    async with users_gateway(tmp_path, "alice", guests_enabled=True, rate_limits=RateLimits(enabled=False)) \
            as ([alice], _svc, _url):  # fmt: skip
        room = await guest_room(alice)
        guest = await new_guest(alice)
        expect(await guest.request("POST", f"{V3}/rooms/{q(room)}/join", {}), 200)
        sent = expect(await guest.request("PUT", f"{V3}/rooms/{q(room)}/send/m.room.message/t1",
                                          {"msgtype": "m.text", "body": "as a guest"}), 200)["event_id"]  # fmt: skip
        guest_token = guest.token
        # the first request starts user-interactive auth, as for any registration
        challenge = expect(await guest.request("POST", V3 + "/register", {"password": "new-pw-1"}), 401)
        assert challenge["flows"] == [{"stages": ["m.login.dummy"]}] and challenge["session"]
        done = expect(await guest.request("POST", V3 + "/register", {
            "username": localpart(guest.user_id), "password": "new-pw-1", "initial_device_display_name": "laptop",
            "auth": {"type": "m.login.dummy", "session": challenge["session"]}}), 200)  # fmt: skip
        assert done["user_id"] == guest.user_id
        assert done["access_token"] != guest_token and done["device_id"]
        # the guest token has ended; the new one is a full account's with the same rooms and history
        expect(await guest.request("GET", V3 + "/account/whoami"), 401, "M_UNKNOWN_TOKEN")
        guest.token = done["access_token"]
        who = expect(await guest.request("GET", V3 + "/account/whoami"), 200)
        assert who == {"user_id": done["user_id"], "is_guest": False, "device_id": done["device_id"]}
        assert room in expect(await guest.request("GET", V3 + "/joined_rooms"), 200)["joined_rooms"]
        expect(await guest.request("POST", V3 + "/createRoom", {}), 200)  # no longer limited to guest endpoints
        got = expect(await guest.request("GET", f"{V3}/rooms/{q(room)}/event/{q(sent)}"), 200)
        assert got["sender"] == done["user_id"] and got["content"]["body"] == "as a guest"
        # the password works for a login; the same session completed again answers the same, once
        login = expect(await guest.request("POST", V3 + "/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": done["user_id"]},
            "password": "new-pw-1"}, token=False), 200)  # fmt: skip
        assert login["user_id"] == done["user_id"]
        again = expect(await Client(alice.session, alice.base).request("POST", V3 + "/register", {
            "username": localpart(done["user_id"]), "password": "other",
            "auth": {"type": "m.login.dummy", "session": challenge["session"]}}, token=False), 200)  # fmt: skip
        assert again == done
        # an upgraded account is no guest: its token cannot upgrade anything again
        expect(await guest.request("POST", V3 + "/register", {"password": "x", "auth": {"type": "m.login.dummy"}}),
               403, "M_FORBIDDEN")  # fmt: skip


@in_loop
async def test_guest_upgrades_with_guest_access_token_and_inhibit_login(tmp_path: Path) -> None:
    async with users_gateway(tmp_path, "alice", guests_enabled=True, rate_limits=RateLimits(enabled=False)) \
            as ([alice], svc, _url):  # fmt: skip
        guest = await new_guest(alice)
        assert svc.guests.is_guest(guest.user_id)
        anonymous = Client(alice.session, alice.base)
        # the spec's parameter, no Authorization header; no username is fine (it can only be the guest's own)
        done = expect(await anonymous.request("POST", V3 + "/register", {
            "guest_access_token": guest.token, "password": "pw-2", "inhibit_login": True,
            "auth": {"type": "m.login.dummy"}}, token=False), 200)  # fmt: skip
        assert done == {"user_id": guest.user_id, "home_server": "localhost"}
        assert not svc.guests.is_guest(guest.user_id)
        # with inhibit_login the guest's token stays, now a full account's
        who = expect(await guest.request("GET", V3 + "/account/whoami"), 200)
        assert who["user_id"] == guest.user_id and who["is_guest"] is False
        row = svc.store.get_user(guest.user_id)
        assert row is not None and row["owner"] is None


@in_loop
async def test_guest_upgrade_refusals(tmp_path: Path) -> None:
    async with users_gateway(tmp_path, "alice", guests_enabled=True, rate_limits=RateLimits(enabled=False)) \
            as ([alice], svc, _url):  # fmt: skip
        guest = await new_guest(alice)
        other_guest = await new_guest(alice)
        dummy = {"type": "m.login.dummy"}
        # another name than its own, even a free one or another guest's
        for name in ("somebody-else", localpart(other_guest.user_id), "alice"):
            body = expect(await guest.request("POST", V3 + "/register", {"username": name, "password": "pw",
                                                                         "auth": dummy}), 403, "M_FORBIDDEN")  # fmt: skip
            assert localpart(guest.user_id) in body["error"]
        assert svc.store.get_user("@somebody-else:localhost") is None
        # a full account's token, in the header or as guest_access_token: never registered over
        expect(await alice.request("POST", V3 + "/register", {"password": "pw", "auth": dummy}), 403, "M_FORBIDDEN")
        anonymous = Client(alice.session, alice.base)
        expect(await anonymous.request("POST", V3 + "/register", {"guest_access_token": alice.token, "password": "pw",
                                                                  "auth": dummy}, token=False), 403, "M_FORBIDDEN")  # fmt: skip
        # an unknown token, a malformed one
        expect(await anonymous.request("POST", V3 + "/register", {"guest_access_token": "nope", "password": "pw",
                                                                  "auth": dummy}, token=False), 401, "M_UNKNOWN_TOKEN")  # fmt: skip
        expect(await anonymous.request("POST", V3 + "/register", {"guest_access_token": 7, "password": "pw",
                                                                  "auth": dummy}, token=False), 400, "M_BAD_JSON")  # fmt: skip
        # no password: refused, the guest stays a guest
        expect(await guest.request("POST", V3 + "/register", {"auth": dummy}), 400, "M_MISSING_PARAM")
        assert expect(await guest.request("GET", V3 + "/account/whoami"), 200)["is_guest"] is True
        # a session started for one guest cannot be completed with another guest's token
        started = expect(await guest.request("POST", V3 + "/register", {"password": "pw"}), 401)["session"]
        expect(await other_guest.request("POST", V3 + "/register", {
            "password": "pw", "auth": {"type": "m.login.dummy", "session": started}}), 403, "M_FORBIDDEN")  # fmt: skip
        assert svc.guests.is_guest(other_guest.user_id) and svc.guests.is_guest(guest.user_id)
        # kind=guest with a guest's token still makes a fresh guest (no upgrade)
        fresh = expect(await guest.request("POST", V3 + "/register?kind=guest", {}), 200)
        assert fresh["user_id"] not in (guest.user_id, other_guest.user_id)


@in_loop
async def test_guest_upgrade_needs_registration_open(tmp_path: Path) -> None:
    async with users_gateway(tmp_path, guests_enabled=True, registration_enabled=False,
                             rate_limits=RateLimits(enabled=False)) as (_clients, svc, url):  # fmt: skip
        import aiohttp

        async with aiohttp.ClientSession() as session:
            guest = Client(session, url)
            body = expect(await guest.request("POST", V3 + "/register?kind=guest", {}, token=False), 200)
            guest.token, guest.user_id = body["access_token"], body["user_id"]
            expect(await guest.request("POST", V3 + "/register", {
                "password": "pw", "auth": {"type": "m.login.dummy"}}), 403, "M_FORBIDDEN")  # fmt: skip
            assert svc.guests.is_guest(guest.user_id)
