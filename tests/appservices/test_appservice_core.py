"""Application services, the homeserver's side: registration files, as_token auth, masquerading, namespaces, ping.

Found: heisenbridge exited at start (its m.login.application_service registration got 401), a mautrix
appservice got 404 on ping and 401 on whoami, and an ordinary user could register inside a bridge's namespace.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from harness import Client, free_port, gateway_in_loop

from lowband.gateway.appservices.registration import AppServices, load_registration, parse_registration
from lowband.gateway.config import ConfigError, RateLimits

V3 = "/_matrix/client/v3"
AS_TOKEN, HS_TOKEN = "as-secret-token", "hs-secret-token"


def registration(url: str | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "ircbridge", "url": url, "as_token": AS_TOKEN, "hs_token": HS_TOKEN, "sender_localpart": "ircbot",
        "rate_limited": False, "protocols": ["irc"], "receive_ephemeral": True,
        "namespaces": {"users": [{"exclusive": True, "regex": "@irc_.*:localhost"}],
                       "aliases": [{"exclusive": True, "regex": "#irc_.*:localhost"}], "rooms": []},
    }  # fmt: skip
    doc.update(extra)
    return doc


def write(tmp_path: Path, doc: Any, name: str = "irc.yaml") -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


def test_a_bridge_file_is_read_as_synapse_reads_it(tmp_path):
    bridge = load_registration(write(tmp_path, registration("http://127.0.0.1:9")), "localhost")
    assert (bridge.id, bridge.url, bridge.sender, bridge.rate_limited) == ("ircbridge", "http://127.0.0.1:9",
                                                                           "@ircbot:localhost", False)  # fmt: skip
    assert bridge.owns_user("@irc_alice:localhost") and bridge.owns_user("@ircbot:localhost")
    assert not bridge.owns_user("@alice:localhost") and bridge.owns_alias("#irc_chan:localhost")
    assert bridge.receive_ephemeral and bridge.protocols == ("irc",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"as_token": ""}, "as_token: required"),
        ({"hs_token": AS_TOKEN}, "hs_token: must differ"),
        ({"sender_localpart": "Bad Name"}, "sender_localpart"),
        ({"sender_localpart": "a:b"}, "sender_localpart"),
        ({"url": "ftp://x"}, "url: must be an http"),
        ({"namespaces": {"users": [{"regex": "(unclosed", "exclusive": True}]}}, r"namespaces.users\[0\].regex: not a valid"),
        ({"namespaces": {"users": [{"regex": "x", "exclusive": "yes"}]}}, "exclusive: must be true or false"),
        ({"namespaces": {"people": []}}, "namespaces.people: unknown kind"),
        ({"namespaces": "all"}, "namespaces: required"),
        ({"rate_limited": "no"}, "rate_limited: must be true or false"),
        ({"surprise": 1}, "surprise: unknown key"),
    ],
)
def test_bad_registration_files_are_refused_naming_the_file_and_field(tmp_path, change, message):
    path = write(tmp_path, registration(**change))
    with pytest.raises(ConfigError, match=message) as caught:
        load_registration(path, "localhost")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_unreadable_and_hostile_files(tmp_path):
    for text, message in (("id: [unclosed", "not valid YAML"), ("- a list", "must be a mapping"),
                          ("x: " + "[" * 5000 + "]" * 5000, "not valid YAML|must be a mapping|unknown key")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            load_registration(write(tmp_path, text), "localhost")
    with pytest.raises(ConfigError, match="cannot read"):
        load_registration(tmp_path / "missing.yaml", "localhost")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * 300_000)
    with pytest.raises(ConfigError, match="larger than"):
        load_registration(big, "localhost")
    one = parse_registration(registration(), "localhost", "a")
    with pytest.raises(ConfigError, match="used twice"):
        AppServices([one, parse_registration(registration(as_token="other", hs_token="other2"), "localhost", "b")])
    with pytest.raises(ConfigError, match="used by two"):
        AppServices([one, parse_registration(registration(id="x2"), "localhost", "b")])


async def _fake_bridge(pings: list[Any], answer: int = 200) -> tuple[web.AppRunner, str]:
    async def ping(request: web.Request) -> web.Response:
        pings.append((request.headers.get("Authorization"), await request.json()))
        return web.json_response({} if answer == 200 else {"errcode": "M_UNKNOWN"}, status=answer)

    app = web.Application()
    app.router.add_post("/_matrix/app/v1/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def test_as_token_registration_masquerading_namespaces_and_ping(tmp_path):
    async def main() -> None:
        pings: list[Any] = []
        runner, url = await _fake_bridge(pings)
        path = write(tmp_path, registration(url))
        try:
            async with gateway_in_loop(tmp_path, rate_limits=RateLimits(enabled=False),
                                       components={"appservices": {"config_files": [str(path)]}}) as base, \
                    aiohttp.ClientSession() as session:  # fmt: skip
                bridge = Client(session, base, AS_TOKEN)
                alice = Client(session, base)
                await alice.register("alice")
                # the bridge is its sender
                status, body = await bridge.request("GET", f"{V3}/account/whoami")
                assert (status, body["user_id"]) == (200, "@ircbot:localhost"), body
                # it registers puppets in its namespace, and only there
                status, body = await bridge.request("POST", f"{V3}/register", {
                    "type": "m.login.application_service", "username": "irc_bob", "inhibit_login": True})
                assert (status, body["user_id"]) == (200, "@irc_bob:localhost"), body
                # mautrix names the puppet it registers in ?user_id= as well: that is not a masquerade
                status, body = await bridge.request("POST", f"{V3}/register?user_id=%40irc_dan%3Alocalhost", {
                    "type": "m.login.application_service", "username": "irc_dan", "inhibit_login": True})
                assert (status, body["user_id"]) == (200, "@irc_dan:localhost"), body
                status, body = await bridge.request("POST", f"{V3}/register", {
                    "type": "m.login.application_service", "username": "carol"})
                assert (status, body["errcode"]) == (400, "M_EXCLUSIVE"), body
                # ordinary users cannot take its names
                status, body = await Client(session, base).request("POST", f"{V3}/register", {
                    "username": "irc_eve", "password": "pw", "auth": {"type": "m.login.dummy"}}, token=False)
                assert (status, body["errcode"]) == (400, "M_EXCLUSIVE"), body
                status, body = await alice.request("POST", f"{V3}/createRoom", {"room_alias_name": "irc_chan"})
                assert (status, body["errcode"]) == (400, "M_EXCLUSIVE"), body
                # masquerading: inside the namespace, registered users only
                status, body = await bridge.request("GET", f"{V3}/account/whoami?user_id=%40irc_bob%3Alocalhost")
                assert (status, body["user_id"]) == (200, "@irc_bob:localhost"), body
                for who, errcode in (("%40alice%3Alocalhost", "M_EXCLUSIVE"), ("%40irc_nobody%3Alocalhost", "M_FORBIDDEN")):
                    status, body = await bridge.request("GET", f"{V3}/account/whoami?user_id={who}")
                    assert (status, body["errcode"]) == (403, errcode), body
                status, body = await bridge.request("POST", f"{V3}/createRoom?user_id=%40irc_bob%3Alocalhost",
                                                    {"room_alias_name": "irc_chan"})  # fmt: skip
                assert status == 200, body
                status, body = await bridge.request("GET", f"{V3}/rooms/{body['room_id']}/state/m.room.create")
                assert status == 403  # ircbot is not in irc_bob's room: the masquerade applied to the create
                # a device of its own for an encrypted bridge: login, then ?device_id=
                status, body = await bridge.request("POST", f"{V3}/login", {
                    "type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "irc_bob"},
                    "device_id": "BOBDEV"})  # fmt: skip
                assert status == 200 and body["device_id"] == "BOBDEV", body
                status, body = await bridge.request(
                    "GET", f"{V3}/account/whoami?user_id=%40irc_bob%3Alocalhost&device_id=BOBDEV")
                assert (status, body.get("device_id")) == (200, "BOBDEV"), body
                status, body = await bridge.request(
                    "GET", f"{V3}/account/whoami?user_id=%40irc_bob%3Alocalhost&device_id=NOPE")
                assert (status, body["errcode"]) == (400, "M_UNKNOWN_DEVICE"), body
                status, body = await Client(session, base, "wrong-token").request("GET", f"{V3}/account/whoami")
                assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
                # ping goes to the bridge with its hs_token
                status, body = await bridge.request("POST", "/_matrix/client/v1/appservice/ircbridge/ping",
                                                    {"transaction_id": "t1"})  # fmt: skip
                assert status == 200 and body["duration_ms"] >= 0, body
                assert pings == [(f"Bearer {HS_TOKEN}", {"transaction_id": "t1"})]
                status, body = await bridge.request("POST", "/_matrix/client/v1/appservice/other/ping", {})
                assert status == 403
                status, body = await alice.request("POST", "/_matrix/client/v1/appservice/ircbridge/ping", {})
                assert status == 403
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_ping_reports_a_bridge_that_is_down_or_failing(tmp_path):
    async def main() -> None:
        pings: list[Any] = []
        runner, url = await _fake_bridge(pings, answer=500)
        down = f"http://127.0.0.1:{free_port()}"
        files = [write(tmp_path, registration(url), "a.yaml"),
                 write(tmp_path, registration(down, id="down", as_token="as2", hs_token="hs2"), "b.yaml"),
                 write(tmp_path, registration(None, id="nourl", as_token="as3", hs_token="hs3",
                                              namespaces={"users": []}), "c.yaml")]  # fmt: skip
        try:
            async with gateway_in_loop(tmp_path, rate_limits=RateLimits(enabled=False),
                                       components={"appservices": {"config_files": [str(f) for f in files]}}) as base, \
                    aiohttp.ClientSession() as session:  # fmt: skip
                for token, app_id, status, errcode in ((AS_TOKEN, "ircbridge", 502, "M_BAD_STATUS"),
                                                       ("as2", "down", 502, "M_CONNECTION_FAILED"),
                                                       ("as3", "nourl", 400, "M_URL_NOT_SET")):  # fmt: skip
                    got = await Client(session, base, token).request(
                        "POST", f"/_matrix/client/v1/appservice/{app_id}/ping", {})
                    assert isinstance(got[1], dict), (app_id, got)
                    assert (got[0], got[1]["errcode"]) == (status, errcode), got
                    if errcode == "M_BAD_STATUS":
                        assert got[1]["status"] == 500 and json.loads(got[1]["body"]) == {"errcode": "M_UNKNOWN"}
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_a_bad_registration_stops_the_gateway_with_one_line(tmp_path):
    import subprocess

    from harness import LOWBAND

    path = write(tmp_path, registration(namespaces={"users": [{"regex": "(", "exclusive": True}]}))
    config = tmp_path / "gw.toml"
    config.write_text(f'[appservices]\nconfig_files = ["{path}"]\n')
    out = subprocess.run([LOWBAND, "serve", "--data-dir", str(tmp_path / "d"), "--http", f"127.0.0.1:{free_port()}",
                          "--config", str(config)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2, out
    errors = [line for line in out.stderr.splitlines() if str(path) in line]
    assert len(errors) == 1 and "namespaces.users[0].regex" in errors[0], out.stderr
