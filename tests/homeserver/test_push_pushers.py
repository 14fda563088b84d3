"""Pushers: ``/pushers`` and ``/pushers/set`` (validation, append, deletion, the per-user bound) and delivery
to a small aiohttp push gateway on 127.0.0.1: the full and ``event_id_only`` formats, a retry after a failure,
a rejected pushkey, and delivery resumed after the gateway restarts. The push gateway is on loopback, which
pushers may not reach by default: these tests allow 127.0.0.1/32 in ``[push] allowed_ranges`` (the refusals
themselves: test_push_ssrf.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from harness import Client, expect, free_port, gateway_in_loop

from lowband.gateway.config import PushConfig, RateLimits

V3 = "/_matrix/client/v3"
#: the test push gateway listens on 127.0.0.1, a loopback address pushers are refused by default
LOOPBACK_ALLOWED = PushConfig(allowed_ranges=("127.0.0.1/32",))


def q(value: str) -> str:
    return quote(value, safe="")


class PushGateway:
    """A push gateway on 127.0.0.1 that records what it is sent and answers as told."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, Any]]] = []  # consumed first; then 200 {"rejected": []}
        self.reject: set[str] = set()  # pushkeys answered as rejected
        self.arrived = asyncio.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/_matrix/push/v1/notify"
        self._runner: web.AppRunner | None = None

    async def _notify(self, request: web.Request) -> web.Response:
        status, body = self.answers.pop(0) if self.answers else (200, {"rejected": []})
        if status == 200:
            received = await request.json()
            self.received.append(received)
            self.arrived.set()
            keys = [d["pushkey"] for d in received["notification"]["devices"]]
            body = {"rejected": [k for k in keys if k in self.reject]}
        return web.json_response(body, status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/_matrix/push/v1/notify", self._notify)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received


@contextlib.asynccontextmanager
async def setup(tmp_path: Path, *names: str, push_config: PushConfig = LOOPBACK_ALLOWED
                ) -> AsyncIterator[tuple[list[Client], Any, PushGateway]]:  # fmt: skip
    push = PushGateway()
    await push.start()
    found: list[Any] = []
    try:
        async with gateway_in_loop(tmp_path, on_ready=found.append, rate_limits=RateLimits(enabled=False),
                                   push=push_config) as url, aiohttp.ClientSession() as session:  # fmt: skip
            clients = []
            for name in names:
                client = Client(session, url)
                await client.register(name)
                clients.append(client)
            yield clients, found[0], push
    finally:
        await push.stop()


def pusher(url: str, pushkey: str = "key-1", **changes: Any) -> dict[str, Any]:
    body = {"pushkey": pushkey, "kind": "http", "app_id": "org.example.app", "app_display_name": "Example",
            "device_display_name": "phone", "lang": "en", "data": {"url": url}}  # fmt: skip
    body.update(changes)
    return body


async def make_room(owner: Client, *joiners: Client) -> str:
    body = expect(await owner.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)
    for member in joiners:
        expect(await member.request("POST", f"{V3}/join/{q(body['room_id'])}", {}), 200)
    return str(body["room_id"])


async def say(client: Client, room: str, text: str, txn: str) -> str:
    sent = await client.request("PUT", f"{V3}/rooms/{q(room)}/send/m.room.message/{txn}",
                                {"msgtype": "m.text", "body": text})  # fmt: skip
    return str(expect(sent, 200)["event_id"])


def test_pushers_are_set_listed_replaced_and_bounded(tmp_path: Path) -> None:
    async def run() -> None:
        async with setup(tmp_path, "alice", "bob") as ((alice, bob), _, push):
            assert expect(await alice.request("GET", V3 + "/pushers"), 200) == {"pushers": []}
            expect(await alice.request("POST", V3 + "/pushers/set", pusher(push.url, profile_tag="tag")), 200)
            listed = expect(await alice.request("GET", V3 + "/pushers"), 200)["pushers"]
            assert listed == [{"pushkey": "key-1", "kind": "http", "app_id": "org.example.app",
                               "app_display_name": "Example", "device_display_name": "phone", "lang": "en",
                               "data": {"url": push.url}, "profile_tag": "tag"}]  # fmt: skip
            # the same app_id and pushkey for another user: without append, alice's goes
            expect(await bob.request("POST", V3 + "/pushers/set", pusher(push.url, append=True)), 200)
            assert len(expect(await alice.request("GET", V3 + "/pushers"), 200)["pushers"]) == 1
            expect(await bob.request("POST", V3 + "/pushers/set", pusher(push.url, lang="fr")), 200)
            assert expect(await alice.request("GET", V3 + "/pushers"), 200)["pushers"] == []
            assert expect(await bob.request("GET", V3 + "/pushers"), 200)["pushers"][0]["lang"] == "fr"
            # kind null deletes
            expect(await bob.request("POST", V3 + "/pushers/set", pusher(push.url, kind=None)), 200)
            assert expect(await bob.request("GET", V3 + "/pushers"), 200)["pushers"] == []
            # at most 10 per user; replacing one of them is still fine
            for i in range(10):
                expect(await alice.request("POST", V3 + "/pushers/set", pusher(push.url, f"k{i}")), 200)
            expect(await alice.request("POST", V3 + "/pushers/set", pusher(push.url, "k10")), 400, "M_INVALID_PARAM")
            expect(await alice.request("POST", V3 + "/pushers/set", pusher(push.url, "k3", lang="de")), 200)

            bad_url = "http://127.0.0.1:1/somewhere/else"
            for body, errcode in [
                (pusher(push.url, kind="email"), "M_INVALID_PARAM"),
                (pusher(push.url, kind="carrier-pigeon"), "M_INVALID_PARAM"),
                (pusher(bad_url), "M_INVALID_PARAM"),
                (pusher("ftp://127.0.0.1/_matrix/push/v1/notify"), "M_INVALID_PARAM"),
                (pusher(push.url, data={}), "M_INVALID_PARAM"),
                (pusher(push.url, data="x"), "M_MISSING_PARAM"),
                (pusher(push.url, data={"url": push.url, "format": "full"}), "M_INVALID_PARAM"),
                (pusher(push.url, pushkey="p" * 600), "M_INVALID_PARAM"),
                (pusher(push.url, append="yes"), "M_INVALID_PARAM"),
                ({k: v for k, v in pusher(push.url).items() if k != "app_id"}, "M_MISSING_PARAM"),
                ({k: v for k, v in pusher(push.url).items() if k != "kind"}, "M_MISSING_PARAM"),
                ({k: v for k, v in pusher(push.url).items() if k != "lang"}, "M_MISSING_PARAM"),
            ]:  # fmt: skip
                expect(await bob.request("POST", V3 + "/pushers/set", body), 400, errcode)
            assert expect(await bob.request("GET", V3 + "/pushers"), 200)["pushers"] == []

    asyncio.run(run())


def test_notifications_reach_the_push_gateway(tmp_path: Path) -> None:
    async def run() -> None:
        async with setup(tmp_path, "alice", "bob", "carol") as ((alice, bob, carol), svc, push):
            expect(await bob.request("PUT", f"{V3}/profile/{q(bob.user_id or '')}/displayname",
                                     {"displayname": "Bob B"}), 200)  # fmt: skip
            room = await make_room(alice, bob, carol)
            expect(await alice.request("PUT", f"{V3}/rooms/{q(room)}/state/m.room.name", {"name": "Kitchen"}), 200)
            expect(await alice.request("POST", V3 + "/pushers/set", pusher(push.url, data={
                "url": push.url, "custom": 7})), 200)  # fmt: skip
            expect(await carol.request("POST", V3 + "/pushers/set", pusher(push.url, "carol-key", data={
                "url": push.url, "format": "event_id_only"})), 200)  # fmt: skip

            push.answers = [(503, {})]  # the first attempt fails: retried after a second
            hello = await say(bob, room, "hello alice", "t1")
            received = await push.wait_for(2)
            by_key = {r["notification"]["devices"][0]["pushkey"]: r["notification"] for r in received}
            full, slim = by_key["key-1"], by_key["carol-key"]
            assert full["event_id"] == hello and full["room_id"] == room and full["type"] == "m.room.message"
            assert full["sender"] == bob.user_id and full["content"]["body"] == "hello alice"
            assert full["room_name"] == "Kitchen" and full["sender_display_name"] == "Bob B"
            assert full["counts"] == {"unread": 1} and full["prio"] == "high"  # alice: the localpart highlights
            device = full["devices"][0]
            assert device["app_id"] == "org.example.app" and device["data"] == {"custom": 7}
            assert device["tweaks"] == {"sound": "default", "highlight": True}
            assert set(slim) == {"event_id", "room_id", "counts", "devices", "prio"}  # event_id_only
            assert slim["event_id"] == hello and slim["prio"] == "low" and slim["devices"][0]["tweaks"] == {}
            runtime = svc.components["push"]
            assert runtime.delivery.failed_attempts >= 1

            # a push gateway rejecting a pushkey removes that pusher, and only that one
            push.reject.add("carol-key")
            await say(bob, room, "second", "t2")
            await push.wait_for(4)
            for _ in range(100):
                if not expect(await carol.request("GET", V3 + "/pushers"), 200)["pushers"]:
                    break
                await asyncio.sleep(0.05)
            assert expect(await carol.request("GET", V3 + "/pushers"), 200)["pushers"] == []
            assert len(expect(await alice.request("GET", V3 + "/pushers"), 200)["pushers"]) == 1

    asyncio.run(run())


def test_a_notification_made_while_the_push_gateway_is_down_goes_out_after_a_restart(tmp_path: Path) -> None:
    async def run() -> None:
        push = PushGateway()
        async with setup(tmp_path, "alice", "bob") as ((alice, bob), svc, first):
            room = await make_room(alice, bob)
            push.url = first.url  # the same address comes back later
            push.port = first.port
            expect(await alice.request("POST", V3 + "/pushers/set", pusher(first.url)), 200)
            await first.stop()  # the push gateway goes away
            away = await say(bob, room, "while you were away", "t1")
            delivery = svc.components["push"].delivery
            for _ in range(200):
                if delivery.failed_attempts:
                    break
                await asyncio.sleep(0.02)
            assert delivery.failed_attempts >= 1 and delivery.sent == 0
        await push.start()
        try:
            async with gateway_in_loop(tmp_path, rate_limits=RateLimits(enabled=False), push=LOOPBACK_ALLOWED):
                received = await push.wait_for(1)
                assert received[0]["notification"]["event_id"] == away
                assert received[0]["notification"]["content"]["body"] == "while you were away"
                await asyncio.sleep(0.2)
                assert len(push.received) == 1  # sent once, not again
        finally:
            await push.stop()

    asyncio.run(run())
