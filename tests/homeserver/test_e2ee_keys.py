"""The server's half of end-to-end encryption over raw HTTP: keys, to-device, device lists, devices.

Keys are made and signed here with PyNaCl the way a client does (canonical JSON without ``signatures`` and
``unsigned``); the real clients (matrix-nio with olm, matrix-js-sdk) are in tests/e2e_clients.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import nacl.signing
from harness import Client, gateway_in_loop

from lowband.gateway.config import RateLimits
from lowband.gateway.matrix.canonical_json import encode_canonical_json

V3 = "/_matrix/client/v3"
NO_LIMITS = RateLimits(enabled=False)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def sign(obj: dict[str, Any], user_id: str, key: nacl.signing.SigningKey, key_id: str) -> dict[str, Any]:
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    signature = b64(key.sign(encode_canonical_json(unsigned)).signature)
    signed = dict(obj)
    signed["signatures"] = {**obj.get("signatures", {}), user_id: {**obj.get("signatures", {}).get(user_id, {}),
                                                                    key_id: signature}}  # fmt: skip
    return signed


class Device:
    """A logged-in client device with an ed25519 identity key."""

    def __init__(self, client: Client, device_id: str) -> None:
        self.client = client
        self.device_id = device_id
        self.key = nacl.signing.SigningKey.generate()

    @property
    def user_id(self) -> str:
        assert self.client.user_id is not None
        return self.client.user_id

    def device_keys(self) -> dict[str, Any]:
        keys = {"user_id": self.user_id, "device_id": self.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {f"curve25519:{self.device_id}": b64(b"c" * 32),
                         f"ed25519:{self.device_id}": b64(bytes(self.key.verify_key))}}  # fmt: skip
        return sign(keys, self.user_id, self.key, f"ed25519:{self.device_id}")

    def otk(self, n: int) -> dict[str, Any]:
        return sign({"key": b64(bytes([n]) * 32)}, self.user_id, self.key, f"ed25519:{self.device_id}")

    async def req(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.client.request(method, path, body)


async def device(session: aiohttp.ClientSession, base: str, user: str, device_id: str, *, register: bool) -> Device:
    client = Client(session, base)
    if register:
        status, body = await client.request("POST", f"{V3}/register", {
            "username": user, "password": "pw", "device_id": device_id, "auth": {"type": "m.login.dummy"}}, token=False)
    else:
        status, body = await client.request("POST", f"{V3}/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "pw",
            "device_id": device_id}, token=False)  # fmt: skip
    assert status == 200, body
    client.token, client.user_id = body["access_token"], body["user_id"]
    return Device(client, device_id)


async def sync(dev: Device, since: str | None = None) -> dict[str, Any]:
    path = f"{V3}/sync?timeout=0" + (f"&since={since}" if since else "")
    status, body = await dev.req("GET", path)
    assert status == 200, body
    return body


async def shared_room(a: Device, *others: Device) -> str:
    status, body = await a.req("POST", f"{V3}/createRoom", {"invite": [o.user_id for o in others], "initial_state": [
        {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]})
    assert status == 200, body
    for other in others:
        status, joined = await other.req("POST", f"{V3}/join/{body['room_id']}", {})
        assert status == 200, joined
    return str(body["room_id"])


def run(tmp_path: Any, scenario: Any) -> None:
    async def main() -> None:
        async with gateway_in_loop(tmp_path, rate_limits=NO_LIMITS) as base, aiohttp.ClientSession() as session:
            await scenario(base, session)

    asyncio.run(main())


def test_keys_are_uploaded_queried_and_claimed_once(tmp_path):
    async def scenario(base: str, session: aiohttp.ClientSession) -> None:
        alice = await device(session, base, "alice", "ALICEDEV", register=True)
        bob = await device(session, base, "bob", "BOBDEV", register=True)
        await shared_room(alice, bob)
        otks = {f"signed_curve25519:AAA{i}": bob.otk(i) for i in range(3)}
        fallback = {"signed_curve25519:FB1": {**bob.otk(99), "fallback": True}}
        status, body = await bob.req("POST", f"{V3}/keys/upload", {"device_keys": bob.device_keys(),
                                     "one_time_keys": otks, "fallback_keys": fallback})  # fmt: skip
        assert status == 200 and body["one_time_key_counts"] == {"signed_curve25519": 3}, body
        # the same keys again change nothing
        status, body = await bob.req("POST", f"{V3}/keys/upload", {"one_time_keys": otks})
        assert body["one_time_key_counts"] == {"signed_curve25519": 3}
        status, found = await alice.req("POST", f"{V3}/keys/query", {"device_keys": {bob.user_id: []}})
        assert status == 200, found
        assert found["device_keys"][bob.user_id]["BOBDEV"]["keys"] == bob.device_keys()["keys"]
        assert found["failures"] == {}
        status, only = await alice.req("POST", f"{V3}/keys/query", {"device_keys": {bob.user_id: ["OTHER"]}})
        assert only["device_keys"][bob.user_id] == {}
        # four claims: three one-time keys, each once, then the fallback key (again and again)
        claims = await asyncio.gather(*(alice.req("POST", f"{V3}/keys/claim", {
            "one_time_keys": {bob.user_id: {"BOBDEV": "signed_curve25519"}}}) for _ in range(5)))
        got = [next(iter(body["one_time_keys"][bob.user_id]["BOBDEV"])) for _, body in claims]
        assert sorted(got) == ["signed_curve25519:AAA0", "signed_curve25519:AAA1", "signed_curve25519:AAA2",
                               "signed_curve25519:FB1", "signed_curve25519:FB1"], got  # fmt: skip
        status, body = await alice.req("POST", f"{V3}/keys/claim", {"one_time_keys": {bob.user_id: {"NODEV": "x"}}})
        assert status == 200 and body["one_time_keys"] == {}
        state = await sync(bob)
        assert state["device_one_time_keys_count"] == {"signed_curve25519": 0}
        assert state["device_unused_fallback_key_types"] == []  # handed out: the client should make a new one
        await bob.req("POST", f"{V3}/keys/upload", {"fallback_keys": {"signed_curve25519:FB2": bob.otk(98)}})
        assert (await sync(bob))["device_unused_fallback_key_types"] == ["signed_curve25519"]

    run(tmp_path, scenario)


def test_bad_key_uploads_are_refused_with_nothing_stored(tmp_path):
    async def scenario(base: str, session: aiohttp.ClientSession) -> None:
        bob = await device(session, base, "bob", "BOBDEV", register=True)
        other = Device(bob.client, "NOTMINE")
        forged = bob.device_keys()
        forged["keys"][f"curve25519:{bob.device_id}"] = b64(b"d" * 32)  # changed after signing
        too_big = sign({**bob.device_keys(), "pad": "x" * 9000}, bob.user_id, bob.key, f"ed25519:{bob.device_id}")
        for body, status, errcode in [
            ({"device_keys": other.device_keys()}, 400, "M_INVALID_PARAM"),
            ({"device_keys": forged}, 400, "M_INVALID_SIGNATURE"),
            ({"device_keys": too_big}, 400, "M_TOO_LARGE"),
            ({"device_keys": "x"}, 400, "M_BAD_JSON"),
            ({"device_keys": {**bob.device_keys(), "keys": {"ed25519:BOBDEV": 5}}}, 400, "M_BAD_JSON"),
            ({"one_time_keys": {f"signed_curve25519:K{i}": bob.otk(i % 250) for i in range(201)}}, 400,
             "M_LIMIT_EXCEEDED"),
            ({"one_time_keys": {"nocolon": "x"}}, 400, "M_INVALID_PARAM"),
            ({"one_time_keys": {"a:b": 7}}, 400, "M_BAD_JSON"),
            ({"one_time_keys": []}, 400, "M_BAD_JSON"),
        ]:
            got = await bob.req("POST", f"{V3}/keys/upload", body)
            assert got[0] == status and got[1]["errcode"] == errcode, (body.keys(), got)
        await bob.req("POST", f"{V3}/keys/upload", {"one_time_keys": {"signed_curve25519:K1": bob.otk(1)}})
        got = await bob.req("POST", f"{V3}/keys/upload", {"one_time_keys": {"signed_curve25519:K1": bob.otk(2)}})
        assert got[0] == 400 and got[1]["errcode"] == "M_INVALID_PARAM"  # same ID, other key
        # a device holds at most 1,000 unclaimed keys, however many uploads race for the room
        uploads = [{"one_time_keys": {f"signed_curve25519:U{n}_{i}": bob.otk(i % 250) for i in range(150)}}
                   for n in range(8)]  # fmt: skip
        answers = await asyncio.gather(*(bob.req("POST", f"{V3}/keys/upload", body) for body in uploads))
        assert sorted(status for status, _ in answers) == [200] * 6 + [400] * 2, answers
        counts = (await bob.req("POST", f"{V3}/keys/upload", {}))[1]["one_time_key_counts"]
        assert counts == {"signed_curve25519": 901}
        status, found = await bob.req("POST", f"{V3}/keys/query", {"device_keys": {bob.user_id: []}})
        assert found["device_keys"][bob.user_id] == {}  # none of the refused device keys was kept
        for body in ({"device_keys": []}, {"device_keys": {bob.user_id: "BOBDEV"}},
                     {"device_keys": {f"@u{i}:localhost": [] for i in range(1001)}}):  # fmt: skip
            got = await bob.req("POST", f"{V3}/keys/query", body)
            assert got[0] == 400, got
        got = await bob.req("POST", f"{V3}/keys/query", {"device_keys": {"@x:elsewhere.example": []}})
        assert got[0] == 200 and "elsewhere.example" in got[1]["failures"]

    run(tmp_path, scenario)


def test_to_device_messages_are_delivered_once_in_order_and_survive_paging(tmp_path):
    async def scenario(base: str, session: aiohttp.ClientSession) -> None:
        alice = await device(session, base, "alice", "ALICEDEV", register=True)
        bob = await device(session, base, "bob", "BOBDEV", register=True)
        bob2 = await device(session, base, "bob", "BOBTWO", register=False)
        token = (await sync(bob))["next_batch"]
        for i in range(3):
            body = {"messages": {bob.user_id: {"*": {"n": i}}}}
            assert (await alice.req("PUT", f"{V3}/sendToDevice/m.test/txn{i}", body))[0] == 200
        assert (await alice.req("PUT", f"{V3}/sendToDevice/m.test/txn0", {"messages": {bob.user_id: {"*": {"n": 0}}}}))[0] == 200
        got = await sync(bob, token)
        assert [(e["sender"], e["type"], e["content"]) for e in got["to_device"]["events"]] == [
            (alice.user_id, "m.test", {"n": i}) for i in range(3)]  # the retried txn0 came once
        again = await sync(bob, got["next_batch"])
        assert again["to_device"]["events"] == []  # acknowledged by the token
        assert [e["content"]["n"] for e in (await sync(bob2))["to_device"]["events"]] == [0, 1, 2]
        # 250 waiting messages come 100 at a time, none lost between the pages
        messages = {bob.user_id: {"BOBDEV": {"k": 0}}}
        for i in range(250):
            messages[bob.user_id]["BOBDEV"] = {"k": i}
            await alice.req("PUT", f"{V3}/sendToDevice/m.page/p{i}", {"messages": messages})
        seen: list[int] = []
        token = again["next_batch"]
        for _ in range(4):
            page = await sync(bob, token)
            seen += [e["content"]["k"] for e in page["to_device"]["events"]]
            token = page["next_batch"]
        assert seen == list(range(250))
        status, body = await alice.req("PUT", f"{V3}/sendToDevice/m.x/big", {
            "messages": {bob.user_id: {"BOBDEV": {"pad": "x" * 70_000}}}})
        assert status == 400 and body["errcode"] == "M_TOO_LARGE"
        assert (await alice.req("PUT", f"{V3}/sendToDevice/m.x/bad", {"messages": {bob.user_id: ["x"]}}))[0] == 400

    run(tmp_path, scenario)


def test_device_list_changes_reach_users_who_share_a_room(tmp_path):
    async def scenario(base: str, session: aiohttp.ClientSession) -> None:
        alice = await device(session, base, "alice", "ALICEDEV", register=True)
        bob = await device(session, base, "bob", "BOBDEV", register=True)
        carol = await device(session, base, "carol", "CAROLDEV", register=True)
        room = await shared_room(alice, bob)
        start = (await sync(alice))["next_batch"]
        carol_start = (await sync(carol))["next_batch"]
        bob2 = await device(session, base, "bob", "BOBNEW", register=False)  # a new device appears
        await bob2.req("POST", f"{V3}/keys/upload", {"device_keys": bob2.device_keys()})
        got = await sync(alice, start)
        assert bob.user_id in got["device_lists"]["changed"]
        assert bob.user_id not in (await sync(carol, carol_start))["device_lists"]["changed"]  # no shared room
        status, changes = await alice.req("GET", f"{V3}/keys/changes?from={start}&to={got['next_batch']}")
        assert status == 200 and bob.user_id in changes["changed"], changes
        await bob.req("POST", f"{V3}/rooms/{room}/leave", {})
        after = await sync(alice, got["next_batch"])
        assert bob.user_id in after["device_lists"]["left"]
        assert (await alice.req("GET", f"{V3}/keys/changes?from=nonsense&to=s1_0"))[0] == 400

    run(tmp_path, scenario)


def test_cross_signing_and_signatures(tmp_path):
    async def scenario(base: str, session: aiohttp.ClientSession) -> None:
        bob = await device(session, base, "bob", "BOBDEV", register=True)
        alice = await device(session, base, "alice", "ALICEDEV", register=True)
        await bob.req("POST", f"{V3}/keys/upload", {"device_keys": bob.device_keys()})
        master_sk, self_sk = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
        master_pub, self_pub = b64(bytes(master_sk.verify_key)), b64(bytes(self_sk.verify_key))
        master = {"user_id": bob.user_id, "usage": ["master"], "keys": {f"ed25519:{master_pub}": master_pub}}
        self_signing = sign({"user_id": bob.user_id, "usage": ["self_signing"],
                             "keys": {f"ed25519:{self_pub}": self_pub}}, bob.user_id, master_sk, f"ed25519:{master_pub}")
        unsigned_self = {**self_signing, "signatures": {}}
        got = await bob.req("POST", f"{V3}/keys/device_signing/upload", {"master_key": master,
                                                                         "self_signing_key": unsigned_self})
        assert got[0] == 400 and got[1]["errcode"] == "M_INVALID_SIGNATURE", got
        got = await bob.req("POST", f"{V3}/keys/device_signing/upload", {"master_key": master,
                                                                         "self_signing_key": self_signing})
        assert got[0] == 200, got  # the first upload needs no password
        got = await bob.req("POST", f"{V3}/keys/device_signing/upload", {"master_key": master})
        assert got[0] == 401 and got[1]["flows"] == [{"stages": ["m.login.password"]}], got
        auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw",
                "session": got[1]["session"]}  # fmt: skip
        assert (await bob.req("POST", f"{V3}/keys/device_signing/upload", {"master_key": master, "auth": auth}))[0] == 200
        # the self-signing key signs bob's device; a signature by another key is refused
        signed_device = sign(bob.device_keys(), bob.user_id, self_sk, f"ed25519:{self_pub}")
        status, body = await bob.req("POST", f"{V3}/keys/signatures/upload", {bob.user_id: {"BOBDEV": signed_device}})
        assert status == 200 and body["failures"] == {}, body
        wrong = sign(bob.device_keys(), bob.user_id, nacl.signing.SigningKey.generate(), f"ed25519:{self_pub}")
        status, body = await bob.req("POST", f"{V3}/keys/signatures/upload", {bob.user_id: {"BOBDEV": wrong}})
        assert body["failures"][bob.user_id]["BOBDEV"]["errcode"] == "M_INVALID_SIGNATURE", body
        status, found = await alice.req("POST", f"{V3}/keys/query", {"device_keys": {bob.user_id: []}})
        sigs = found["device_keys"][bob.user_id]["BOBDEV"]["signatures"][bob.user_id]
        assert sigs[f"ed25519:{self_pub}"] == signed_device["signatures"][bob.user_id][f"ed25519:{self_pub}"]
        assert found["master_keys"][bob.user_id]["keys"] == master["keys"]
        assert bob.user_id in found["self_signing_keys"] and found["user_signing_keys"] == {}  # only for oneself

    run(tmp_path, scenario)


def test_devices_are_renamed_deleted_with_the_password_and_logged_out(tmp_path):
    async def scenario(base: str, session: aiohttp.ClientSession) -> None:
        bob = await device(session, base, "bob", "BOBDEV", register=True)
        old = await device(session, base, "bob", "OLDDEV", register=False)
        await old.req("POST", f"{V3}/keys/upload", {"device_keys": old.device_keys(),
                                                    "one_time_keys": {"signed_curve25519:A": old.otk(1)}})
        assert (await bob.req("PUT", f"{V3}/devices/OLDDEV", {"display_name": "old phone"}))[0] == 200
        assert (await bob.req("PUT", f"{V3}/devices/NOPE", {"display_name": "x"}))[0] == 404
        status, found = await bob.req("POST", f"{V3}/keys/query", {"device_keys": {bob.user_id: []}})
        assert found["device_keys"][bob.user_id]["OLDDEV"]["unsigned"] == {"device_display_name": "old phone"}
        status, body = await bob.req("DELETE", f"{V3}/devices/OLDDEV", {})
        assert status == 401 and "session" in body
        bad = {"auth": {"type": "m.login.password", "user": "bob", "password": "wrong", "session": body["session"]}}
        assert (await bob.req("DELETE", f"{V3}/devices/OLDDEV", bad))[0] == 401
        good = {"auth": {"type": "m.login.password", "user": "bob", "password": "pw", "session": body["session"]}}
        assert (await bob.req("DELETE", f"{V3}/devices/OLDDEV", good))[0] == 200
        assert (await old.req("GET", f"{V3}/account/whoami"))[0] == 401  # its token ended with it
        status, found = await bob.req("POST", f"{V3}/keys/query", {"device_keys": {bob.user_id: []}})
        assert "OLDDEV" not in found["device_keys"][bob.user_id]
        status, claimed = await bob.req("POST", f"{V3}/keys/claim", {"one_time_keys": {bob.user_id: {
            "OLDDEV": "signed_curve25519"}}})  # fmt: skip
        assert claimed["one_time_keys"] == {}
        third = await device(session, base, "bob", "THIRD", register=False)
        assert (await bob.req("POST", f"{V3}/delete_devices", {"devices": ["THIRD"], **good}))[0] == 200
        assert (await third.req("GET", f"{V3}/account/whoami"))[0] == 401
        fourth = await device(session, base, "bob", "FOURTH", register=False)
        assert (await bob.req("POST", f"{V3}/logout/all", {}))[0] == 200
        for dev in (bob, fourth):
            assert (await dev.req("GET", f"{V3}/account/whoami"))[0] == 401

    run(tmp_path, scenario)


def test_keys_and_to_device_messages_survive_kill_9(tmp_path):
    from harness import GatewayProcess

    gateway = GatewayProcess(tmp_path / "data", config="[rate_limits]\nenabled = false\n")
    gateway.start()
    try:

        async def before() -> tuple[str, str, str]:
            async with aiohttp.ClientSession() as session:
                alice = await device(session, gateway.url, "alice", "ALICEDEV", register=True)
                bob = await device(session, gateway.url, "bob", "BOBDEV", register=True)
                token = (await sync(bob))["next_batch"]
                await bob.req("POST", f"{V3}/keys/upload", {"device_keys": bob.device_keys(), "one_time_keys": {
                    f"signed_curve25519:K{i}": bob.otk(i) for i in range(2)}})  # fmt: skip
                for i in range(20):  # each answered 200, so each must survive
                    status, _ = await alice.req("PUT", f"{V3}/sendToDevice/m.test/t{i}",
                                                {"messages": {bob.user_id: {"BOBDEV": {"n": i}}}})  # fmt: skip
                    assert status == 200
                claimed = await alice.req("POST", f"{V3}/keys/claim", {"one_time_keys": {bob.user_id: {
                    "BOBDEV": "signed_curve25519"}}})  # fmt: skip
                gateway.kill()
                assert alice.client.token is not None and bob.client.token is not None
                return alice.client.token, bob.client.token, next(iter(claimed[1]["one_time_keys"][bob.user_id]["BOBDEV"]))

        alice_token, bob_token, first_key = asyncio.run(before())
        gateway.start()

        async def after() -> None:
            async with aiohttp.ClientSession() as session:
                bob = Device(Client(session, gateway.url, bob_token), "BOBDEV")
                bob.client.user_id = "@bob:localhost"
                alice = Device(Client(session, gateway.url, alice_token), "ALICEDEV")
                got = await sync(bob)
                assert [e["content"]["n"] for e in got["to_device"]["events"]] == list(range(20))
                assert got["device_one_time_keys_count"] == {"signed_curve25519": 1}
                # a retry of an answered send after the restart delivers nothing twice
                await alice.req("PUT", f"{V3}/sendToDevice/m.test/t3", {"messages": {"@bob:localhost": {"BOBDEV": {"n": 3}}}})
                assert (await sync(bob, got["next_batch"]))["to_device"]["events"] == []
                _, claimed = await alice.req("POST", f"{V3}/keys/claim", {"one_time_keys": {"@bob:localhost": {
                    "BOBDEV": "signed_curve25519"}}})  # fmt: skip
                assert next(iter(claimed["one_time_keys"]["@bob:localhost"]["BOBDEV"])) != first_key

        asyncio.run(after())
    finally:
        gateway.stop()


def test_a_to_device_flood_is_capped_per_device_and_counted(tmp_path):
    from lowband.gateway.homeserver import to_device

    found: list[Any] = []

    async def main() -> None:
        async with gateway_in_loop(tmp_path, rate_limits=NO_LIMITS, on_ready=found.append) as base, \
                aiohttp.ClientSession() as session:  # fmt: skip
            alice = await device(session, base, "alice", "ALICEDEV", register=True)
            bob = await device(session, base, "bob", "BOBDEV", register=True)
            carol = await device(session, base, "carol", "CAROLDEV", register=True)
            flood = to_device.MAX_INBOX + 50

            async def send(i: int) -> int:
                status, _ = await alice.req("PUT", f"{V3}/sendToDevice/m.flood/f{i}",
                                            {"messages": {bob.user_id: {"BOBDEV": {"i": i}}}})  # fmt: skip
                return status

            for start in range(0, flood, 70):  # parallel sends across the cap: it must hold all the same
                assert set(await asyncio.gather(*(send(i) for i in range(start, min(flood, start + 70))))) == {200}
            services = found[0]
            assert services.to_device.dropped["inbox_full"] == 50
            assert services.store.e2ee.inbox_size(bob.user_id, "BOBDEV") == to_device.MAX_INBOX
            # another device's inbox is not touched by the flood
            status, _ = await alice.req("PUT", f"{V3}/sendToDevice/m.hello/h", {"messages": {carol.user_id: {"*": {}}}})
            assert status == 200 and len((await sync(carol))["to_device"]["events"]) == 1
            # bob drains his inbox 100 at a time and can receive again
            token = None
            received = 0
            for _ in range(11):
                page = await sync(bob, token)
                received += len(page["to_device"]["events"])
                token = page["next_batch"]
            assert received == to_device.MAX_INBOX
            await send(99_999)
            assert [e["content"]["i"] for e in (await sync(bob, token))["to_device"]["events"]] == [99_999]

    asyncio.run(main())


def test_who_verified_whom_is_shown_only_to_the_signer_and_a_huge_to_device_request_is_refused(tmp_path):
    async def scenario(base: str, session: aiohttp.ClientSession) -> None:
        bob = await device(session, base, "bob", "BOBDEV", register=True)
        alice = await device(session, base, "alice", "ALICEDEV", register=True)
        carol = await device(session, base, "carol", "CAROLDEV", register=True)

        async def cross_sign(dev: Device) -> tuple[nacl.signing.SigningKey, str, dict[str, Any]]:
            master_sk, user_sk = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
            master_pub, user_pub = b64(bytes(master_sk.verify_key)), b64(bytes(user_sk.verify_key))
            master = {"user_id": dev.user_id, "usage": ["master"], "keys": {f"ed25519:{master_pub}": master_pub}}
            user_signing = sign({"user_id": dev.user_id, "usage": ["user_signing"], "keys": {
                f"ed25519:{user_pub}": user_pub}}, dev.user_id, master_sk, f"ed25519:{master_pub}")  # fmt: skip
            got = await dev.req("POST", f"{V3}/keys/device_signing/upload", {"master_key": master,
                                                                            "user_signing_key": user_signing})
            assert got[0] == 200, got
            return user_sk, user_pub, master

        _, _, bob_master = await cross_sign(bob)
        alice_user_sk, alice_user_pub, _ = await cross_sign(alice)
        # alice verifies bob: her user-signing key signs his master key
        signed = sign(bob_master, alice.user_id, alice_user_sk, f"ed25519:{alice_user_pub}")
        status, body = await alice.req("POST", f"{V3}/keys/signatures/upload", {
            bob.user_id: {next(iter(bob_master["keys"].values())): signed}})  # fmt: skip
        assert status == 200 and body["failures"] == {}, body
        for viewer, sees in ((alice, True), (bob, False), (carol, False)):
            _, found = await viewer.req("POST", f"{V3}/keys/query", {"device_keys": {bob.user_id: []}})
            assert (alice.user_id in found["master_keys"][bob.user_id].get("signatures", {})) is sees, viewer.user_id
        # a request naming 20,000 users (with nothing for them) is refused before any lookup
        status, body = await alice.req("PUT", f"{V3}/sendToDevice/m.x/huge", {"messages": {
            f"@u{i}:localhost": {} for i in range(20_000)}})  # fmt: skip
        assert (status, body["errcode"]) == (400, "M_LIMIT_EXCEEDED"), body

    run(tmp_path, scenario)
