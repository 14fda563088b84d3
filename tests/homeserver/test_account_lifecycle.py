"""An account after registration, through the client-server API of a gateway in the test's loop: password
change (with and without logging out other devices), deactivation and erasure, OpenID tokens and their
federation check, admin whois, the client well-known; matrix-nio where it has the call (OpenID tokens,
device deletion through the same user-interactive auth), raw HTTP elsewhere."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import nacl.signing
import pytest
from harness import Client, expect, users_gateway

from lowband.gateway.config import ConfigError, load_config
from lowband.gateway.matrix.canonical_json import encode_canonical_json

V3 = "/_matrix/client/v3"
PW = "secret-pw"  # harness Client.register's password


def q(value: str) -> str:
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, *names: str, **config: Any) -> AsyncIterator[tuple[list[Client], Any, str]]:
    """A gateway, one registered client per name, its services and its URL."""
    async with users_gateway(tmp_path, *names, **config) as (clients, services, url):
        yield clients, services, url


async def login(client: Client, user: str, password: str = PW, device_id: str | None = None) -> tuple[int, Any]:
    body: dict[str, Any] = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                            "password": password}  # fmt: skip
    if device_id is not None:
        body["device_id"] = device_id
    return await client.request("POST", f"{V3}/login", body, token=False)


async def second_device(first: Client, user: str, device_id: str, password: str = PW) -> Client:
    other = Client(first.session, first.base)
    body = expect(await login(other, user, password, device_id=device_id), 200)
    other.token, other.user_id = body["access_token"], body["user_id"]
    return other


def signed_device_keys(user_id: str, device_id: str) -> dict[str, Any]:
    """Device keys signed with a fresh ed25519 key, as a client uploads them."""
    key = nacl.signing.SigningKey.generate()
    public = base64.b64encode(bytes(key.verify_key)).decode().rstrip("=")
    keys = {"user_id": user_id, "device_id": device_id, "algorithms": ["m.megolm.v1.aes-sha2"],
            "keys": {f"ed25519:{device_id}": public, f"curve25519:{device_id}": "Y" * 43}}  # fmt: skip
    signature = base64.b64encode(key.sign(encode_canonical_json(keys)).signature).decode().rstrip("=")
    return {**keys, "signatures": {user_id: {f"ed25519:{device_id}": signature}}}


def password_auth(user: str, password: str, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                            "password": password}  # fmt: skip
    if session is not None:
        auth["session"] = session
    return auth


def test_password_change_logs_out_other_devices_with_their_keys(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), svc, url):
            phone = await second_device(alice, "alice", "PHONE")
            device_keys = signed_device_keys("@alice:localhost", "PHONE")
            expect(await phone.request("POST", f"{V3}/keys/upload", {"device_keys": device_keys}), 200)
            caps = expect(await alice.request("GET", f"{V3}/capabilities"), 200)["capabilities"]
            assert caps["m.change_password"] == {"enabled": True}

            path = f"{V3}/account/password"
            first = expect(await alice.request("POST", path, {"new_password": "new-pw"}), 401)
            assert first["flows"] == [{"stages": ["m.login.password"]}] and "errcode" not in first
            bad = expect(await alice.request("POST", path, {"auth": password_auth("alice", "wrong", first["session"])}),
                         401, "M_FORBIDDEN")  # fmt: skip
            assert bad["session"] == first["session"]
            # bob's password does not pass for alice, whoever the identifier names
            expect(await alice.request("POST", path, {"auth": password_auth("bob", PW, first["session"])}), 401)
            done = {"auth": password_auth("alice", PW, first["session"])}
            assert expect(await alice.request("POST", path, done), 200) == {}
            # the first request's new_password was used; the other device and its keys are gone, this one stays
            expect(await phone.request("GET", f"{V3}/account/whoami"), 401, "M_UNKNOWN_TOKEN")
            expect(await alice.request("GET", f"{V3}/account/whoami"), 200)
            assert [d.device_id for d in svc.store.user_devices("@alice:localhost")] == [alice_device(svc)]
            found = expect(await bob.request("POST", f"{V3}/keys/query", {"device_keys": {"@alice:localhost": []}}), 200)
            assert "PHONE" not in found["device_keys"].get("@alice:localhost", {})
            expect(await login(Client(alice.session, url), "alice", PW), 403, "M_FORBIDDEN")
            expect(await login(Client(alice.session, url), "alice", "new-pw"), 200)
            # the completed session again: the same answer, nothing changed twice
            assert expect(await alice.request("POST", path, done), 200) == {}

            # logout_devices false keeps the other devices; the password goes with the request up front
            tablet = await second_device(alice, "alice", "TABLET", "new-pw")
            expect(await alice.request("POST", path, {"new_password": "newer-pw", "logout_devices": False,
                                                      "auth": password_auth("alice", "new-pw")}), 200)  # fmt: skip
            expect(await tablet.request("GET", f"{V3}/account/whoami"), 200)
            expect(await login(Client(alice.session, url), "alice", "newer-pw"), 200)

            # bad input: clear errors before any password is checked
            for body, status, errcode in [
                ({"new_password": 5}, 400, "M_BAD_JSON"),
                ({"new_password": "p" * 600}, 400, "M_BAD_JSON"),
                ({"new_password": ""}, 400, "M_WEAK_PASSWORD"),
                ({"new_password": "x", "logout_devices": "no"}, 400, "M_BAD_JSON"),
                ({"new_password": "x", "auth": []}, 400, "M_BAD_JSON"),
            ]:
                expect(await bob.request("POST", path, body), status, errcode)
            expect(await bob.request("POST", path, {"auth": password_auth("bob", PW)}), 400, "M_MISSING_PARAM")
            expect(await Client(bob.session, url).request("POST", path, {"new_password": "x"}), 401, "M_MISSING_TOKEN")

    asyncio.run(run())


def alice_device(svc: Any) -> str:
    """The device alice registered with (the one that asked for the change)."""
    sessions = svc.store.account_lifecycle.device_sessions("@alice:localhost")
    return min(sessions, key=lambda d: sessions[d][0] if sessions[d] else 0)


def test_deactivation_leaves_rooms_ends_tokens_and_keeps_the_name(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), svc, url):
            room = expect(await bob.request("POST", f"{V3}/createRoom", {"preset": "public_chat"}), 200)["room_id"]
            invited = expect(await bob.request("POST", f"{V3}/createRoom", {"invite": ["@alice:localhost"]}), 200)
            expect(await alice.request("POST", f"{V3}/join/{q(room)}", {}), 200)
            expect(await alice.request("PUT", f"{V3}/profile/@alice:localhost/displayname", {"displayname": "Al"}), 200)
            expect(await alice.request("PUT", f"{V3}/user/@alice:localhost/account_data/m.custom", {"a": 1}), 200)
            openid = expect(await alice.request("POST", f"{V3}/user/@alice:localhost/openid/request_token", {}), 200)

            path = f"{V3}/account/deactivate"
            expect(await alice.request("POST", path, {"erase": "yes"}), 400, "M_BAD_JSON")
            expect(await alice.request("POST", path, {"id_server": 5}), 400, "M_BAD_JSON")
            first = expect(await alice.request("POST", path, {"erase": True}), 401)
            expect(await alice.request("POST", path, {"auth": password_auth("alice", "wrong", first["session"])}), 401)
            assert svc.store.get_user("@alice:localhost")["deactivated"] == 0
            done = {"auth": password_auth("alice", PW, first["session"])}
            assert expect(await alice.request("POST", path, done), 200) == {"id_server_unbind_result": "no-support"}

            expect(await alice.request("GET", f"{V3}/account/whoami"), 401, "M_UNKNOWN_TOKEN")
            members = expect(await bob.request("GET", f"{V3}/rooms/{q(room)}/members"), 200)["chunk"]
            assert {m["state_key"]: m["content"]["membership"] for m in members}["@alice:localhost"] == "leave"
            members = expect(await bob.request("GET", f"{V3}/rooms/{q(invited['room_id'])}/members"), 200)["chunk"]
            assert {m["state_key"]: m["content"]["membership"] for m in members}["@alice:localhost"] == "leave"
            row = svc.store.get_user("@alice:localhost")
            assert row["deactivated"] and row["displayname"] is None and row["avatar_url"] is None
            assert svc.store.get_account_data("@alice:localhost", "", "m.custom") is None  # erased
            assert svc.store.user_devices("@alice:localhost") == []
            userinfo = f"/_matrix/federation/v1/openid/userinfo?access_token={openid['access_token']}"
            expect(await bob.request("GET", userinfo, token=False), 401, "M_UNKNOWN_TOKEN")

            anon = Client(bob.session, url)
            expect(await login(anon, "alice", PW), 403, "M_USER_DEACTIVATED")
            expect(await login(anon, "alice", "wrong"), 403, "M_FORBIDDEN")  # a stranger learns nothing
            expect(await anon.request("POST", f"{V3}/register", {"username": "alice", "password": "pw",
                                                                 "auth": {"type": "m.login.dummy"}}),
                   400, "M_USER_IN_USE")  # fmt: skip
            expect(await anon.request("GET", f"{V3}/register/available?username=alice"), 400, "M_USER_IN_USE")

            # Without erase, account data stays (only the account ends).
            carol = Client(bob.session, url)
            await carol.register("carol")
            expect(await carol.request("PUT", f"{V3}/user/@carol:localhost/account_data/m.custom", {"c": 1}), 200)
            expect(await carol.request("POST", path, {"auth": password_auth("carol", PW)}), 200)
            assert svc.store.get_account_data("@carol:localhost", "", "m.custom") == {"c": 1}

    asyncio.run(run())


def test_openid_tokens_are_checked_over_federation_and_stored_hashed(tmp_path: Path) -> None:
    nio = pytest.importorskip("nio")

    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), svc, url):
            path = f"{V3}/user/@alice:localhost/openid/request_token"
            token = expect(await alice.request("POST", path, {}), 200)
            assert token["token_type"] == "Bearer" and token["matrix_server_name"] == "localhost"
            assert token["expires_in"] == 3600
            userinfo = "/_matrix/federation/v1/openid/userinfo?access_token="
            assert expect(await bob.request("GET", userinfo + token["access_token"], token=False), 200) == {
                "sub": "@alice:localhost"}  # fmt: skip
            expect(await bob.request("POST", path, {}), 403, "M_FORBIDDEN")  # only for oneself
            expect(await bob.request("GET", userinfo + "nope", token=False), 401, "M_UNKNOWN_TOKEN")
            expect(await bob.request("GET", userinfo.split("?")[0], token=False), 401, "M_UNKNOWN_TOKEN")
            expect(await bob.request("GET", userinfo + "x" * 5_000, token=False), 401, "M_UNKNOWN_TOKEN")
            expect(await alice.request("POST", path, raw=b"[1]"), 400, "M_BAD_JSON")
            # Expired an hour later; at most 20 live per user, the oldest ends first.
            lifecycle = svc.store.account_lifecycle
            now = int(time.time() * 1000)
            assert lifecycle.openid_user(token["access_token"], now + 3_600_000 + 5_000) is None
            for _ in range(20):
                expect(await alice.request("POST", path, {}), 200)
            expect(await bob.request("GET", userinfo + token["access_token"], token=False), 401, "M_UNKNOWN_TOKEN")
            count = svc.store.db.query_one("SELECT COUNT(*) FROM openid_tokens")[0]
            assert count == 20
            # Stored as its hash only: the token's text is nowhere in the database.
            last = expect(await alice.request("POST", path, {}), 200)["access_token"]
            await asyncio.sleep(0)
            rows = svc.store.db.query("SELECT token FROM openid_tokens")
            assert rows and all(r[0].startswith("sha256:") for r in rows) and all(last not in r[0] for r in rows)

            client = nio.AsyncClient(url, "@bob:localhost")
            client.access_token, client.user_id = bob.token, "@bob:localhost"
            try:
                got = await client.get_openid_token("@bob:localhost")
                assert isinstance(got, nio.GetOpenIDTokenResponse), got
                assert expect(await bob.request("GET", userinfo + got.access_token, token=False), 200) == {
                    "sub": "@bob:localhost"}  # fmt: skip
            finally:
                await client.close()

    asyncio.run(run())


def test_whois_for_admins_and_oneself_and_nio_device_deletion(tmp_path: Path) -> None:
    nio = pytest.importorskip("nio")

    async def run() -> None:
        async with gateway(tmp_path, "root", "bob") as ((root, bob), svc, url):
            await svc.store.set_admin("@root:localhost", True)
            await second_device(bob, "bob", "BOBPHONE")
            whois = f"{V3}/admin/whois/"
            body = expect(await root.request("GET", whois + "@bob:localhost"), 200)
            assert body["user_id"] == "@bob:localhost" and "BOBPHONE" in body["devices"] and len(body["devices"]) == 2
            assert body["devices"]["BOBPHONE"] == {"sessions": [{"connections": []}]}
            assert expect(await bob.request("GET", whois + "@bob:localhost"), 200)["devices"] == body["devices"]
            expect(await bob.request("GET", whois + "@root:localhost"), 403, "M_FORBIDDEN")
            expect(await root.request("GET", whois + "@nobody:localhost"), 404, "M_NOT_FOUND")
            expect(await root.request("GET", whois + "@bob:elsewhere"), 404, "M_NOT_FOUND")
            expect(await root.request("GET", whois + q("not a user")), 404, "M_NOT_FOUND")
            expect(await Client(bob.session, url).request("GET", whois + "@bob:localhost"), 401, "M_MISSING_TOKEN")

            # matrix-nio deletes a device through the same user-interactive auth.
            client = nio.AsyncClient(url, "bob")
            try:
                assert isinstance(await client.login(PW, device_name="nio"), nio.LoginResponse)
                first = await client.delete_devices(["BOBPHONE"])
                assert isinstance(first, nio.DeleteDevicesAuthResponse), first
                auth = password_auth("@bob:localhost", PW, first.session)
                assert isinstance(await client.delete_devices(["BOBPHONE"], auth), nio.DeleteDevicesResponse)
                assert "BOBPHONE" not in expect(await root.request("GET", whois + "@bob:localhost"), 200)["devices"]
            finally:
                await client.close()

    asyncio.run(run())


def test_client_well_known(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path) as (_, _, url), aiohttp.ClientSession() as session:
            async with session.get(url + "/.well-known/matrix/client",
                                   headers={"Origin": "https://app.element.io"}) as response:  # fmt: skip
                assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == "*"
                assert await response.json() == {"m.homeserver": {"base_url": url}}
            bad_host = {"Host": "evil.example/<x>"}
            async with session.get(url + "/.well-known/matrix/client", headers=bad_host) as response:
                assert (await response.json())["m.homeserver"]["base_url"] == url  # a bad Host is not echoed
            async with session.options(url + "/.well-known/matrix/client") as response:
                assert response.status == 200 and "GET" in response.headers["Access-Control-Allow-Methods"]

        async with gateway(tmp_path, public_base_url="https://matrix.example/base") as (_, _, url), \
                aiohttp.ClientSession() as session:  # fmt: skip
            body = expect(await Client(session, url).request("GET", "/.well-known/matrix/client"), 200)
            assert body == {"m.homeserver": {"base_url": "https://matrix.example/base"}}

    asyncio.run(run())


def test_config_of_registration_tokens_and_public_url(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[registration]\nenabled = true\ntokens = ["abc-1"]\n[http]\npublic_base_url = "https://m.ex/"\n')
    config = load_config(good)
    assert config.registration_tokens == ("abc-1",) and config.public_base_url == "https://m.ex"
    for text in ('[registration]\ntokens = ["has space"]\n', '[registration]\ntokens = [5]\n',
                 '[registration]\ntokens = "abc"\n', '[http]\npublic_base_url = "ftp://x"\n',
                 '[http]\npublic_base_url = "https://x/\\"<script>"\n'):  # fmt: skip
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError):
            load_config(bad)
