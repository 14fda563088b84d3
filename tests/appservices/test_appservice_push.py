"""Application services, the push side: transactions to a bridge, alias and user queries, ``lowband appservice``.

A fake bridge (aiohttp on 127.0.0.1) records every transaction it is sent and answers as each test tells it.
Found before: nothing was ever pushed to ``/_matrix/app/v1/transactions`` (a mautrix appservice waited for
ever), and a lookup of an alias or user in a bridge's namespace was 404 without asking the bridge.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from harness import LOWBAND, Client, GatewayProcess, free_port, gateway_in_loop, until

from lowband.gateway.appservices.component import runtime_of
from lowband.gateway.appservices.pusher import EPHEMERAL_BACKLOG, MAX_EVENTS
from lowband.gateway.config import RateLimits

V3 = "/_matrix/client/v3"
AS_TOKEN, HS_TOKEN = "as-push-token", "hs-push-token"
BOT = "@ircbot:localhost"


def registration(url: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "ircbridge", "url": url, "as_token": AS_TOKEN, "hs_token": HS_TOKEN, "sender_localpart": "ircbot",
        "rate_limited": False, "receive_ephemeral": True,
        "namespaces": {"users": [{"exclusive": True, "regex": "@irc_.*:localhost"}],
                       "aliases": [{"exclusive": True, "regex": "#irc_.*:localhost"},
                                   {"exclusive": False, "regex": "#bridged_.*:localhost"}],
                       "rooms": []},
    }  # fmt: skip
    doc.update(extra)
    return doc


def write_registration(tmp_path: Path, doc: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "irc.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


Answer = Callable[[str, dict[str, Any], int], Awaitable[web.StreamResponse | None]]


class FakeBridge:
    """A bridge on loopback: records transactions (every attempt) and answers queries as told."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.attempts: list[tuple[str, dict[str, Any]]] = []  # every PUT, retries included
        self.accepted: dict[str, dict[str, Any]] = {}  # txn ID -> the body first answered 200
        self.accepted_at: list[float] = []  # when each transaction came that was answered 200
        self.auth: set[str | None] = set()
        self.answer: Answer | None = None  # None: 200 {}
        self.on_alias: Callable[[str], Awaitable[int]] | None = None
        self.on_user: Callable[[str], Awaitable[int]] | None = None
        self.queries: list[tuple[str, str]] = []
        self.changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> FakeBridge:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", self._transaction)
        app.router.add_get("/_matrix/app/v1/rooms/{alias}", self._alias)
        app.router.add_get("/_matrix/app/v1/users/{user}", self._user)
        app.router.add_post("/_matrix/app/v1/ping", self._pong)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _pong(self, request: web.Request) -> web.Response:
        self.auth.add(request.headers.get("Authorization"))
        return web.json_response({})

    async def _transaction(self, request: web.Request) -> web.StreamResponse:
        txn = request.match_info["txn"]
        body = await request.json()
        self.auth.add(request.headers.get("Authorization"))
        self.attempts.append((txn, body))
        tries = sum(1 for t, _ in self.attempts if t == txn)
        self.changed.set()
        if self.answer is not None:
            answer = await self.answer(txn, body, tries)
            if answer is not None:
                return answer
        self.accepted.setdefault(txn, body)
        self.accepted_at.append(time.monotonic())
        self.changed.set()
        return web.json_response({})

    async def _alias(self, request: web.Request) -> web.Response:
        alias = request.match_info["alias"]
        self.queries.append(("alias", alias))
        self.auth.add(request.headers.get("Authorization"))
        status = await self.on_alias(alias) if self.on_alias else 404
        return web.json_response({} if status == 200 else {"errcode": "M_NOT_FOUND"}, status=status)

    async def _user(self, request: web.Request) -> web.Response:
        user = request.match_info["user"]
        self.queries.append(("user", user))
        status = await self.on_user(user) if self.on_user else 404
        return web.json_response({} if status == 200 else {"errcode": "M_NOT_FOUND"}, status=status)

    # ------------------------------------------------------------- reading what came

    def events(self) -> list[dict[str, Any]]:
        """Every event accepted, transaction by transaction in the order they were first accepted."""
        return [e for body in self.accepted.values() for e in body["events"]]

    def bodies(self, msgtype_prefix: str = "") -> list[str]:
        """The bodies of accepted m.room.message events, in the order received."""
        return [e["content"]["body"] for e in self.events()
                if e["type"] == "m.room.message" and e["content"].get("body", "").startswith(msgtype_prefix)]  # fmt: skip

    def ephemeral(self) -> list[dict[str, Any]]:
        return [e for body in self.accepted.values() for e in body.get("ephemeral", [])]


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    await until(predicate, timeout)


def _config(tmp_path: Path, path: Path) -> dict[str, Any]:
    return {"rate_limits": RateLimits(enabled=False), "components": {"appservices": {"config_files": [str(path)]}}}


def _fast_retries(services: Any) -> None:
    """Test speed: retry after 0.1 s doubling to 0.5 s (the gateway's own: 1 s to a minute)."""
    runtime = runtime_of(services)
    assert runtime is not None and runtime.pusher is not None
    runtime.pusher.schedule.base, runtime.pusher.schedule.cap = 0.1, 0.5


async def _room_with_bot(alice: Client, bot: Client, **create: Any) -> str:
    status, body = await alice.request("POST", f"{V3}/createRoom", create)
    assert status == 200, body
    room = body["room_id"]
    assert (await alice.request("POST", f"{V3}/rooms/{room}/invite", {"user_id": BOT}))[0] == 200
    assert (await bot.request("POST", f"{V3}/rooms/{room}/join", {}))[0] == 200
    return room


async def _send(client: Client, room: str, text: str, txn: str | None = None) -> str:
    txn = txn or f"t{time.monotonic_ns()}"
    status, body = await client.request("PUT", f"{V3}/rooms/{room}/send/m.room.message/{txn}",
                                        {"msgtype": "m.text", "body": text})  # fmt: skip
    assert status == 200, body
    return str(body["event_id"])


# ----------------------------------------------------------------- events, interest, order


def test_events_reach_the_bridge_in_order_and_only_from_rooms_it_wants(tmp_path):
    async def main() -> None:
        bridge = await FakeBridge().start()
        path = write_registration(tmp_path, registration(bridge.url))
        try:
            async with gateway_in_loop(tmp_path, **_config(tmp_path, path)) as base, aiohttp.ClientSession() as http:
                alice, bot = Client(http, base), Client(http, base, AS_TOKEN)
                await alice.register("alice")
                with_bot = await _room_with_bot(alice, bot)  # a user of the bridge is joined: the member rule
                rooms = []
                for create in ({"room_alias_name": "bridged_c"}, {}, {}):
                    status, body = await alice.request("POST", f"{V3}/createRoom", create)
                    assert status == 200, body
                    rooms.append(body["room_id"])
                # an alias in a (non-exclusive) alias namespace; no bridge user; a bridge user invited, never joined
                by_alias, unwanted, invited_only = rooms
                assert (await bot.request("POST", f"{V3}/register", {
                    "type": "m.login.application_service", "username": "irc_carol", "inhibit_login": True}))[0] == 200
                assert (await alice.request("POST", f"{V3}/rooms/{invited_only}/invite",
                                            {"user_id": "@irc_carol:localhost"}))[0] == 200  # fmt: skip
                expected = []
                for i in range(12):
                    for room, tag in ((with_bot, "bot"), (by_alias, "alias"), (unwanted, "no"), (invited_only, "inv")):
                        await _send(alice, room, f"{tag}-{i}")
                        if tag in ("bot", "alias"):
                            expected.append(f"{tag}-{i}")
                await wait_for(lambda: len(bridge.bodies()) >= len(expected))
                await asyncio.sleep(0.3)  # anything unwanted would have come by now
                assert bridge.bodies() == expected
                assert bridge.auth == {f"Bearer {HS_TOKEN}"}
                kinds = {(e["room_id"], e["type"], e.get("state_key")) for e in bridge.events()}
                assert (invited_only, "m.room.member", "@irc_carol:localhost") in kinds  # the state_key rule
                assert not any(e["room_id"] == unwanted for e in bridge.events())
                assert not any(e["room_id"] == invited_only and e["type"] == "m.room.message" for e in bridge.events())
                # client format, as /sync shows it
                sample = next(e for e in bridge.events() if e["type"] == "m.room.message")
                assert {"event_id", "room_id", "sender", "type", "content", "origin_server_ts", "unsigned"} <= set(sample)
                assert not {"hashes", "signatures", "auth_events", "prev_events", "depth"} & set(sample)
                assert all(len(body["events"]) <= MAX_EVENTS for body in bridge.accepted.values())
                assert len(bridge.attempts) == len(bridge.accepted)  # nothing failed, nothing sent twice
                # the stream order: each event of the bridge's rooms once, in the order the rooms have them
                seen = [e["event_id"] for e in bridge.events()]
                assert len(seen) == len(set(seen))
                _, page = await alice.request("GET", f"{V3}/rooms/{with_bot}/messages?dir=f&limit=100")
                chunk = page["chunk"]
                joined = next(i for i, e in enumerate(chunk) if e["type"] == "m.room.member"
                              and e["state_key"] == BOT and e["content"]["membership"] == "join")  # fmt: skip
                since_join = [e["event_id"] for e in chunk[joined:]]  # before it only the bot's invite concerned it
                assert [x for x in seen if x in set(since_join)] == since_join
        finally:
            await bridge.stop()

    asyncio.run(main())


def test_a_failed_transaction_is_sent_again_with_the_same_id_and_events(tmp_path):
    """The bridge answers 500 to every first attempt: each transaction comes twice, identical, and the
    bridge ends with every message once, in order."""

    async def main() -> None:
        bridge = await FakeBridge().start()

        async def fail_first(txn: str, body: dict[str, Any], tries: int) -> web.Response | None:
            return web.json_response({"errcode": "M_UNKNOWN"}, status=500) if tries == 1 else None

        bridge.answer = fail_first
        path = write_registration(tmp_path, registration(bridge.url))
        try:
            async with gateway_in_loop(tmp_path, on_ready=_fast_retries, **_config(tmp_path, path)) as base, \
                    aiohttp.ClientSession() as http:  # fmt: skip
                alice, bot = Client(http, base), Client(http, base, AS_TOKEN)
                await alice.register("alice")
                room = await _room_with_bot(alice, bot)
                for i in range(30):
                    await _send(alice, room, f"m-{i}")
                await wait_for(lambda: bridge.bodies("m-") == [f"m-{i}" for i in range(30)], 15)
                by_txn: dict[str, list[Any]] = {}
                for txn, body in bridge.attempts:  # unsigned.age is the event's age when sent: it grows on retry
                    by_txn.setdefault(txn, []).append([{**e, "unsigned": {k: v for k, v in e["unsigned"].items()
                                                                         if k != "age"}} for e in body["events"]])
                assert all(len(tries) == 2 and tries[0] == tries[1] for tries in by_txn.values()), by_txn
                assert list(by_txn) == list(bridge.accepted)  # a new transaction only after the last was taken
        finally:
            await bridge.stop()

    asyncio.run(main())


# ----------------------------------------------------------------- ephemeral, encryption


def test_typing_and_receipts_of_wanted_rooms_reach_a_bridge_that_asked(tmp_path):
    async def main() -> None:
        bridge = await FakeBridge().start()
        path = write_registration(tmp_path, registration(bridge.url))
        try:
            async with gateway_in_loop(tmp_path, **_config(tmp_path, path)) as base, aiohttp.ClientSession() as http:
                alice, bot = Client(http, base), Client(http, base, AS_TOKEN)
                await alice.register("alice")
                room = await _room_with_bot(alice, bot)
                _, body = await alice.request("POST", f"{V3}/createRoom", {})
                other = body["room_id"]
                for where in (other, room):
                    assert (await alice.request("PUT", f"{V3}/rooms/{where}/typing/@alice:localhost",
                                                {"typing": True, "timeout": 30000}))[0] == 200  # fmt: skip
                event_id = await _send(alice, room, "read me")
                other_event = await _send(alice, other, "not for the bridge")
                for where, target in ((other, other_event), (room, event_id)):
                    assert (await alice.request("POST", f"{V3}/rooms/{where}/receipt/m.read/{target}", {}))[0] == 200
                await wait_for(lambda: any(e["type"] == "m.receipt" for e in bridge.ephemeral()))
                await asyncio.sleep(0.2)
                ephemeral = bridge.ephemeral()
                assert {e["room_id"] for e in ephemeral} == {room}, ephemeral
                typing = [e for e in ephemeral if e["type"] == "m.typing"]
                assert typing and typing[0]["content"] == {"user_ids": ["@alice:localhost"]}
                receipt = next(e for e in ephemeral if e["type"] == "m.receipt")
                assert receipt["content"][event_id]["m.read"]["@alice:localhost"]["ts"] > 0
                with_ephemeral = [b for b in bridge.accepted.values() if b.get("ephemeral")]
                assert all(b["de.sorunome.msc2409.ephemeral"] == b["ephemeral"] for b in with_ephemeral)
        finally:
            await bridge.stop()

    asyncio.run(main())


def test_ephemeral_backlog_of_a_bridge_that_is_down_is_bounded(tmp_path):
    """A bridge away while many receipts move keeps at most EPHEMERAL_BACKLOG of them (the oldest go, counted);
    the room's events still all arrive once it is back."""

    async def main() -> None:
        bridge = FakeBridge()  # not started: down
        path = write_registration(tmp_path, registration(bridge.url))
        found: list[Any] = []
        try:
            async with gateway_in_loop(tmp_path, on_ready=lambda s: (found.append(s), _fast_retries(s)),
                                       **_config(tmp_path, path)) as base, aiohttp.ClientSession() as http:  # fmt: skip
                alice, bot = Client(http, base), Client(http, base, AS_TOKEN)
                await alice.register("alice")
                room = await _room_with_bot(alice, bot)
                event_id = await _send(alice, room, "seen by many")
                services = found[0]
                pusher = runtime_of(services).pusher
                for i in range(EPHEMERAL_BACKLOG + 500):  # as the receipt endpoint tells its listeners
                    for listener in list(services.receipt_listeners):
                        listener(room, "m.read", f"@reader{i}:localhost", event_id, 1000 + i)
                assert pusher.status("ircbridge")["ephemeral_waiting"] <= EPHEMERAL_BACKLOG
                assert pusher.dropped_ephemeral >= 500
                await bridge.start()
                await wait_for(lambda: bridge.bodies() == ["seen by many"], 15)

                def readers() -> set[str]:
                    return {u for e in bridge.ephemeral() for by in e["content"].values() for u in by["m.read"]}

                await wait_for(lambda: f"@reader{EPHEMERAL_BACKLOG + 499}:localhost" in readers(), 15)
                await asyncio.sleep(0.2)
                assert len(readers()) == EPHEMERAL_BACKLOG  # the newest kept, each once
                assert pusher.status("ircbridge")["ephemeral_waiting"] == 0
        finally:
            await bridge.stop()

    asyncio.run(main())


def test_an_encrypted_bridge_gets_to_device_messages_and_key_counts(tmp_path):
    """org.matrix.msc3202: to-device messages for its users' devices (then gone from their inbox), the
    one-time key counts of its sender and of the recipients, device list changes of users it shares a room with."""

    async def main() -> None:
        bridge = await FakeBridge().start()
        path = write_registration(tmp_path, registration(bridge.url, **{"org.matrix.msc3202": True}))
        found: list[Any] = []
        try:
            async with gateway_in_loop(tmp_path, on_ready=found.append, **_config(tmp_path, path)) as base, \
                    aiohttp.ClientSession() as http:  # fmt: skip
                alice, bot = Client(http, base), Client(http, base, AS_TOKEN)
                await alice.register("alice")
                await _room_with_bot(alice, bot)
                assert (await bot.request("POST", f"{V3}/register", {
                    "type": "m.login.application_service", "username": "irc_bob", "inhibit_login": True}))[0] == 200
                status, body = await bot.request("POST", f"{V3}/login", {
                    "type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "irc_bob"},
                    "device_id": "BOBDEV"})  # fmt: skip
                assert status == 200, body
                as_bob = "?user_id=%40irc_bob%3Alocalhost&device_id=BOBDEV"
                status, body = await bot.request("POST", f"{V3}/keys/upload{as_bob}", {"one_time_keys": {
                    f"curve25519:K{i}": "a" * 43 for i in range(3)}})  # fmt: skip
                assert status == 200, body
                messages = {"@irc_bob:localhost": {"BOBDEV": {"ciphertext": "x1"}}, "@alice:localhost": {"*": {"n": 1}}}
                status, body = await alice.request("PUT", f"{V3}/sendToDevice/m.room.encrypted/td1",
                                                   {"messages": messages})  # fmt: skip
                assert status == 200, body
                await wait_for(lambda: any(b.get("de.sorunome.msc2409.to_device") for b in bridge.accepted.values()))
                pushed = [m for b in bridge.accepted.values() for m in b.get("de.sorunome.msc2409.to_device", [])]
                assert pushed == [{"type": "m.room.encrypted", "sender": "@alice:localhost",
                                   "to_user_id": "@irc_bob:localhost", "to_device_id": "BOBDEV",
                                   "content": {"ciphertext": "x1"}}]  # alice's own device is not the bridge's
                carrying = next(b for b in bridge.accepted.values() if b.get("de.sorunome.msc2409.to_device"))
                counts = carrying["org.matrix.msc3202.device_one_time_keys_count"]
                assert counts["@irc_bob:localhost"]["BOBDEV"]["curve25519"] == 3
                assert carrying["org.matrix.msc3202.device_one_time_key_counts"] == counts
                store = found[0].store
                assert store.e2ee.pending("@irc_bob:localhost", "BOBDEV", 0, store.persisted, 10) == []  # delivered
                # alice shares a room with the bridge's bot: her new device is a device list change for it
                status, body = await alice.request("POST", f"{V3}/login", {
                    "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                    "password": "secret-pw", "device_id": "ALICE2"})  # fmt: skip
                assert status == 200, body
                status, body = await Client(http, base, body["access_token"]).request(
                    "POST", f"{V3}/keys/upload", {"device_keys": _device_keys("@alice:localhost", "ALICE2")})
                assert status == 200, body
                await wait_for(lambda: any("@alice:localhost" in b.get("org.matrix.msc3202.device_lists", {}).get(
                    "changed", []) for b in bridge.accepted.values()))  # fmt: skip
        finally:
            await bridge.stop()

    asyncio.run(main())


def _device_keys(user_id: str, device_id: str) -> dict[str, Any]:
    """Device keys signed by their own ed25519 key, as a client uploads them."""
    import base64

    import nacl.signing

    from lowband.gateway.matrix.canonical_json import encode_canonical_json

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode().rstrip("=")

    key = nacl.signing.SigningKey.generate()
    keys: dict[str, Any] = {"user_id": user_id, "device_id": device_id, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                            "keys": {f"curve25519:{device_id}": b64(b"c" * 32),
                                     f"ed25519:{device_id}": b64(bytes(key.verify_key))}}  # fmt: skip
    keys["signatures"] = {user_id: {f"ed25519:{device_id}": b64(key.sign(encode_canonical_json(keys)).signature)}}
    return keys


# ----------------------------------------------------------------- hostile bridges


def test_slow_huge_and_garbage_answers_are_bounded(tmp_path):
    """A bridge that hangs, answers 500 with 5 MB, then 200 with 3 MB of garbage or a non-JSON body: each
    attempt ends within the timeout, the gateway keeps answering its clients, every event arrives once."""

    async def main() -> None:
        bridge = await FakeBridge().start()
        plan = ["hang", "huge500", "garbage200", "text200"]
        gone: list[str] = []

        async def hostile(txn: str, body: dict[str, Any], tries: int) -> web.StreamResponse | None:
            if not plan:
                return None
            step = plan.pop(0)
            gone.append(step)
            if step == "hang":
                await asyncio.sleep(30)  # cut by the gateway's timeout long before
                return web.json_response({})
            if step == "huge500":
                return web.Response(status=500, body=b"x" * (5 * 1024 * 1024))
            if step == "garbage200":
                bridge.accepted.setdefault(txn, body)
                return web.Response(status=200, body=os.urandom(3 * 1024 * 1024))
            bridge.accepted.setdefault(txn, body)
            return web.Response(status=200, text="ok, thanks")

        bridge.answer = hostile
        path = write_registration(tmp_path, registration(bridge.url))
        found: list[Any] = []

        def ready(services: Any) -> None:
            found.append(services)
            _fast_retries(services)
            runtime_of(services).pusher.timeout_s = 1.0

        try:
            async with gateway_in_loop(tmp_path, on_ready=ready, **_config(tmp_path, path)) as base, \
                    aiohttp.ClientSession() as http:  # fmt: skip
                alice, bot = Client(http, base), Client(http, base, AS_TOKEN)
                await alice.register("alice")
                room = await _room_with_bot(alice, bot)
                started = time.monotonic()
                for i in range(4):
                    await _send(alice, room, f"h-{i}")
                    t0 = time.monotonic()
                    assert (await alice.request("GET", "/_matrix/client/versions"))[0] == 200
                    assert time.monotonic() - t0 < 0.5  # the gateway is not held by its bridge
                await wait_for(lambda: bridge.bodies("h-") == [f"h-{i}" for i in range(4)], 20)
                assert gone == ["hang", "huge500", "garbage200", "text200"]
                assert time.monotonic() - started < 10
                pusher = runtime_of(found[0]).pusher
                assert pusher.failed_attempts == 2
                seen = [e["event_id"] for e in bridge.events()]
                assert len(seen) == len(set(seen))
        finally:
            await bridge.stop()

    asyncio.run(main())


# ----------------------------------------------------------------- queries


def test_alias_and_user_queries_ask_the_bridge_and_look_again(tmp_path):
    async def main() -> None:
        bridge = await FakeBridge().start()
        path = write_registration(tmp_path, registration(bridge.url))
        base_url: list[str] = []

        async def on_alias(alias: str) -> int:
            if alias.startswith("#irc_slow"):
                await asyncio.sleep(5)
                return 200
            if not alias.startswith("#irc_yes"):
                return 404
            async with aiohttp.ClientSession() as own:  # the bridge makes the room through the client API
                bot = Client(own, base_url[0], AS_TOKEN)
                status, body = await bot.request("POST", f"{V3}/createRoom", {
                    "room_alias_name": alias[1:].split(":")[0], "preset": "public_chat"})  # fmt: skip
                assert status == 200, body
            return 200

        async def on_user(user_id: str) -> int:
            if user_id != "@irc_new:localhost":
                return 404
            async with aiohttp.ClientSession() as own:
                bot = Client(own, base_url[0], AS_TOKEN)
                assert (await bot.request("POST", f"{V3}/register", {
                    "type": "m.login.application_service", "username": "irc_new", "inhibit_login": True}))[0] == 200
                assert (await bot.request("PUT", f"{V3}/profile/{quote(user_id)}/displayname?user_id={quote(user_id)}",
                                          {"displayname": "New (IRC)"}))[0] == 200  # fmt: skip
            return 200

        bridge.on_alias, bridge.on_user = on_alias, on_user

        def ready(services: Any) -> None:
            runtime_of(services).queries.timeout_s = 1.0

        try:
            async with gateway_in_loop(tmp_path, on_ready=ready, **_config(tmp_path, path)) as base, \
                    aiohttp.ClientSession() as http:  # fmt: skip
                base_url.append(base)
                alice = Client(http, base)
                await alice.register("alice")
                status, body = await alice.request("GET", f"{V3}/directory/room/{quote('#irc_yes:localhost')}")
                assert status == 200 and body["room_id"].startswith("!"), body
                status, body = await alice.request("POST", f"{V3}/join/{quote('#irc_yes2:localhost')}", {})
                assert status == 200, body
                for alias in ("#irc_no:localhost", "#irc_slow:localhost"):
                    t0 = time.monotonic()
                    status, body = await alice.request("GET", f"{V3}/directory/room/{quote(alias)}")
                    assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
                    assert time.monotonic() - t0 < 3
                # outside every alias namespace: the bridge is not asked
                assert (await alice.request("GET", f"{V3}/directory/room/{quote('#plain:localhost')}"))[0] == 404
                status, body = await alice.request("GET", f"{V3}/profile/{quote('@irc_new:localhost')}")
                assert (status, body.get("displayname")) == (200, "New (IRC)"), body
                status, body = await alice.request("GET", f"{V3}/profile/{quote('@irc_nobody:localhost')}")
                assert status == 404, body
                assert (await alice.request("GET", f"{V3}/profile/{quote('@bob:localhost')}"))[0] == 404
                asked = [name for _, name in bridge.queries]
                assert "#plain:localhost" not in asked and "@bob:localhost" not in asked
                assert {"#irc_yes:localhost", "#irc_yes2:localhost", "@irc_new:localhost"} <= set(asked)
                # a "no" is remembered a few seconds: a flood of the same lookup costs the bridge one query
                before = len(bridge.queries)
                for _ in range(20):
                    await alice.request("GET", f"{V3}/directory/room/{quote('#irc_no:localhost')}")
                assert len(bridge.queries) - before <= 1
        finally:
            await bridge.stop()

    asyncio.run(main())


# ----------------------------------------------------------------- durability (a subprocess gateway)


def _gateway(tmp_path: Path, registration_path: Path) -> GatewayProcess:
    config = f'[rate_limits]\nenabled = false\n\n[appservices]\nconfig_files = ["{registration_path}"]\n'
    return GatewayProcess(tmp_path / "data", config=config)


async def _setup_room(base: str, http: aiohttp.ClientSession) -> tuple[Client, str]:
    alice, bot = Client(http, base), Client(http, base, AS_TOKEN)
    await alice.register("alice")
    return alice, await _room_with_bot(alice, bot)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LOWBAND, "appservice", *args], check=False, capture_output=True, text=True, timeout=60)


def test_a_bridge_down_while_1000_events_happen_gets_them_all_once_in_order_after_a_restart(tmp_path):
    """The bridge is down (nothing listens on its port) while 1,000 messages are sent; the gateway is
    restarted; when the bridge comes back every message arrives once, in order."""
    port = free_port()
    path = write_registration(tmp_path, registration(f"http://127.0.0.1:{port}"))
    gateway = _gateway(tmp_path, path)
    config_file, data_dir = str(tmp_path / "data.toml"), str(tmp_path / "data")
    timings: dict[str, float] = {}

    async def send_all() -> str:
        async with aiohttp.ClientSession() as http:
            alice, room = await _setup_room(gateway.url, http)
            started = time.monotonic()
            for i in range(1000):
                await _send(alice, room, f"n-{i}", txn=f"n{i}")
            timings["send_s"] = time.monotonic() - started
            return room

    async def catch_up() -> FakeBridge:
        bridge = await FakeBridge(port).start()
        started = time.monotonic()
        try:
            await wait_for(lambda: len(bridge.bodies("n-")) >= 1000, 30)
            timings["catch_up_s"] = time.monotonic() - started
            await asyncio.sleep(0.3)
            out = await asyncio.to_thread(_cli, "ping", "ircbridge", "--config", config_file, "--data-dir", data_dir)
            assert out.returncode == 0 and "answered in" in out.stdout, out
        finally:
            await bridge.stop()
        return bridge

    gateway.start()
    try:
        asyncio.run(send_all())
        out = _cli("list", "--config", config_file, "--data-dir", data_dir)
        assert out.returncode == 0 and "ircbridge" in out.stdout, out
        assert "Connect" in out.stdout or "failed" in out.stdout, out.stdout  # the last error, one line
        gateway.stop()
        gateway.start()
        bridge = asyncio.run(catch_up())
        assert bridge.bodies("n-") == [f"n-{i}" for i in range(1000)]
        assert all(len(b["events"]) <= MAX_EVENTS for b in bridge.accepted.values())
        pushing = bridge.accepted_at[-1] - bridge.accepted_at[0]
        print(f"\n1,000 events: sent in {timings['send_s']:.2f} s; the bridge back, all in after "
              f"{timings['catch_up_s']:.2f} s (the backoff's wait included); first to last transaction "
              f"{pushing:.2f} s, {len(bridge.accepted)} transactions")
        out = _cli("show", "ircbridge", "--config", config_file, "--data-dir", data_dir)
        assert out.returncode == 0, out
        shown = " ".join(out.stdout.split())
        assert "behind: 0 timeline events" in shown and "in flight: none" in shown, out.stdout
        out = _cli("list", "--config", config_file, "--data-dir", data_dir)
        assert "ago)" in out.stdout, out.stdout
    finally:
        gateway.stop()
    out = _cli("ping", "ircbridge", "--config", config_file, "--timeout", "2")
    assert out.returncode == 1 and "cannot be reached" in out.stderr and out.stderr.count("\n") == 1, out
    out = _cli("show", "nosuch", "--config", config_file)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out


def test_kill_9_while_a_transaction_is_in_flight_resends_it_unchanged(tmp_path):
    """The bridge holds the first transaction unanswered; the gateway is killed with SIGKILL and started again:
    the same transaction ID comes again with the same events, and what follows comes after it."""
    port = free_port()
    path = write_registration(tmp_path, registration(f"http://127.0.0.1:{port}"))
    gateway = _gateway(tmp_path, path)

    async def main() -> None:
        bridge = await FakeBridge(port).start()
        release = asyncio.Event()
        held: list[str] = []

        async def hold_first(txn: str, body: dict[str, Any], tries: int) -> web.Response | None:
            texts = [e["content"].get("body") for e in body["events"]]
            if "k-0" in texts and not held:
                held.append(txn)
                await release.wait()  # never answered: the gateway dies meanwhile
                return web.json_response({"errcode": "M_UNKNOWN"}, status=500)
            return None

        bridge.answer = hold_first
        try:
            async with aiohttp.ClientSession() as http:
                alice, room = await _setup_room(gateway.url, http)
                await wait_for(lambda: any(e["type"] == "m.room.member" and e.get("state_key") == BOT
                                           for e in bridge.events()), 10)  # fmt: skip
                for i in range(3):
                    await _send(alice, room, f"k-{i}", txn=f"k{i}")
                await wait_for(lambda: bool(held), 10)
                first = next(body for txn, body in bridge.attempts if txn == held[0])
                await asyncio.to_thread(gateway.kill)
                await asyncio.to_thread(gateway.start)
                await wait_for(lambda: held[0] in bridge.accepted, 15)
                again = bridge.accepted[held[0]]
                assert [e["event_id"] for e in again["events"]] == [e["event_id"] for e in first["events"]]
                await _send(alice, room, "k-after", txn="kafter")
                await wait_for(lambda: "k-after" in bridge.bodies(), 10)
                assert bridge.bodies("k-") == ["k-0", "k-1", "k-2", "k-after"]
        finally:
            release.set()
            await bridge.stop()

    gateway.start()
    try:
        asyncio.run(main())
    finally:
        gateway.stop()


@pytest.mark.parametrize("argv", [["--help"], ["list", "--help"]])
def test_cli_help_explains(argv):
    out = _cli(*argv)
    assert out.returncode == 0 and "bridge" in out.stdout, out
