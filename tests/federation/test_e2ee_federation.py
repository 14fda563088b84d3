"""End-to-end encryption over federation, against a peer we write ourselves (``HostilePeer``), in the test's loop.

What goes out (device list updates, cross-signing updates, to-device messages, their byte-level shape),
what our endpoints answer another server, and the attacks: EDUs from the wrong server, about users
sharing no room, malformed or oversized, replayed; answers to our key queries that say more than was
asked, the wrong thing, too much, or nothing in time. Each attack's effect is bounded, and legitimate
traffic in the same transaction or right after still works.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
import nacl.signing
from aiohttp import web
from fed_harness import until
from harness import Client
from hostile_peer import Gateway, HostilePeer, attacked_gateway, http_session, public_room, q

from lowband.gateway.federation import e2ee
from lowband.gateway.homeserver.e2ee_keys import MAX_USERS_PER_REQUEST
from lowband.gateway.homeserver.to_device import MAX_TARGETS
from lowband.gateway.matrix.canonical_json import encode_canonical_json

V3 = "/_matrix/client/v3"
FED = "/_matrix/federation/v1"
PASSWORD = "pw-e2ee"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _signed(obj: dict[str, Any], user_id: str, key: nacl.signing.SigningKey, key_id: str) -> dict[str, Any]:
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    return {**obj, "signatures": {user_id: {key_id: _b64(key.sign(encode_canonical_json(unsigned)).signature)}}}


class Device:
    """A local user's logged-in device that signs its keys like a client."""

    def __init__(self, client: Client, device_id: str) -> None:
        self.client, self.device_id = client, device_id
        self.key = nacl.signing.SigningKey.generate()

    @property
    def user_id(self) -> str:
        assert self.client.user_id is not None
        return self.client.user_id

    def device_keys(self) -> dict[str, Any]:
        keys = {"user_id": self.user_id, "device_id": self.device_id, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {f"curve25519:{self.device_id}": _b64(b"c" * 32),
                         f"ed25519:{self.device_id}": _b64(bytes(self.key.verify_key))}}  # fmt: skip
        return _signed(keys, self.user_id, self.key, f"ed25519:{self.device_id}")

    async def upload(self, otks: int = 0, fallback: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"device_keys": self.device_keys(), "one_time_keys": {
            f"signed_curve25519:{self.device_id}{i}": {"key": _b64(bytes([i]) * 32)} for i in range(otks)}}  # fmt: skip
        if fallback:
            body["fallback_keys"] = {
                f"signed_curve25519:{self.device_id}fb": {"key": _b64(b"f" * 32), "fallback": True}
            }
        status, answer = await self.client.request("POST", f"{V3}/keys/upload", body)
        assert status == 200, answer
        return body


async def _device(session: aiohttp.ClientSession, gw: Gateway, user: str, device_id: str, *, register: bool,
                  name: str | None = None) -> Device:  # fmt: skip
    client = Client(session, gw.url)
    body: dict[str, Any] = {"password": PASSWORD, "device_id": device_id}
    if name:
        body["initial_device_display_name"] = name
    if register:
        path = f"{V3}/register"
        body.update(username=user, auth={"type": "m.login.dummy"})
    else:
        path = f"{V3}/login"
        body.update(type="m.login.password", identifier={"type": "m.id.user", "user": user})
    status, answer = await client.request("POST", path, body, token=False)
    assert status == 200, answer
    client.token, client.user_id = answer["access_token"], answer["user_id"]
    return Device(client, device_id)


def _edus(peer: HostilePeer, edu_type: str) -> list[dict[str, Any]]:
    return [e["content"] for txn in peer.received for e in txn.get("edus", []) if e.get("edu_type") == edu_type]


async def _sync(device: Device, since: str | None = None) -> dict[str, Any]:
    status, body = await device.client.request("GET", f"{V3}/sync?timeout=0" + (f"&since={q(since)}" if since else ""))
    assert status == 200, body
    return dict(body)


def _run(coro: Any, timeout: float = 120) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


# ----------------------------------------------------------------------------------------- what goes out


def test_device_changes_go_out_as_a_chain_of_updates_that_user_devices_agrees_with(tmp_path):
    async def main() -> None:
        async with HostilePeer(tmp_path, "evil.test") as evil, \
                attacked_gateway(tmp_path, peers={"evil.test": evil.address}) as gw, http_session() as session:  # fmt: skip
            alice = await _device(session, gw, "alice", "A1", register=True, name="Alice's phone in the kitchen")
            room_id = await public_room(alice.client)
            await evil.join(session, gw, room_id)

            # alice's first device keys: the first update since start has no prev_id (receivers fetch the list)
            uploaded = (await alice.upload())["device_keys"]
            await until(lambda: _async(bool(_edus(evil, "m.device_list_update"))), what="the first device update")
            first = _edus(evil, "m.device_list_update")[0]
            assert first == {"user_id": alice.user_id, "device_id": "A1", "stream_id": first["stream_id"], "prev_id": [],
                             "keys": uploaded}, first  # fmt: skip
            status, devices = await evil.call(session, gw, "GET", f"{FED}/user/devices/{q(alice.user_id)}")
            assert status == 200, devices
            assert devices == {"user_id": alice.user_id, "stream_id": first["stream_id"],
                               "devices": [{"device_id": "A1", "keys": uploaded}]}, devices  # no display name  # fmt: skip

            # a second device, then its removal: each update names the one before it
            second = await _device(session, gw, "alice", "A2", register=False)
            a2_keys = (await second.upload())["device_keys"]
            status, answer = await second.client.request("DELETE", f"{V3}/devices/A2", {"auth": {
                "type": "m.login.password", "user": "alice", "password": PASSWORD}})  # fmt: skip
            assert status == 200, answer
            await until(lambda: _async(len(_edus(evil, "m.device_list_update")) >= 3), what="three device updates")
            added, removed = _edus(evil, "m.device_list_update")[1:3]
            assert added == {"user_id": alice.user_id, "device_id": "A2", "stream_id": added["stream_id"],
                             "prev_id": [first["stream_id"]], "keys": a2_keys}, added  # fmt: skip
            assert removed == {"user_id": alice.user_id, "device_id": "A2", "stream_id": removed["stream_id"],
                               "prev_id": [added["stream_id"]], "deleted": True}, removed  # fmt: skip
            assert first["stream_id"] < added["stream_id"] < removed["stream_id"]
            # the login of A2 and its removal alone (no keys to show) sent nothing more
            assert len(_edus(evil, "m.device_list_update")) == 3
            status, devices = await evil.call(session, gw, "GET", f"{FED}/user/devices/{q(alice.user_id)}")
            assert devices["stream_id"] == removed["stream_id"] and [d["device_id"] for d in devices["devices"]] == [
                "A1"
            ]

            # cross-signing keys: an m.signing_key_update; /user/devices and /user/keys/query show them
            master, ssk_key = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
            master_public, ssk_public = _b64(bytes(master.verify_key)), _b64(bytes(ssk_key.verify_key))
            master_key = {
                "user_id": alice.user_id,
                "usage": ["master"],
                "keys": {f"ed25519:{master_public}": master_public},
            }
            ssk = _signed({"user_id": alice.user_id, "usage": ["self_signing"], "keys": {f"ed25519:{ssk_public}": ssk_public}},
                          alice.user_id, master, f"ed25519:{master_public}")  # fmt: skip
            status, answer = await alice.client.request("POST", f"{V3}/keys/device_signing/upload",
                                                        {"master_key": master_key, "self_signing_key": ssk})  # fmt: skip
            assert status == 200, answer
            await until(lambda: _async(bool(_edus(evil, "m.signing_key_update"))), what="the signing key update")
            assert _edus(evil, "m.signing_key_update") == [{"user_id": alice.user_id, "master_key": master_key,
                                                             "self_signing_key": ssk}]  # fmt: skip
            status, devices = await evil.call(session, gw, "GET", f"{FED}/user/devices/{q(alice.user_id)}")
            assert devices["master_key"]["keys"] == master_key["keys"] and devices["self_signing_key"] == ssk
            status, found = await evil.call(session, gw, "POST", f"{FED}/user/keys/query",
                                            {"device_keys": {alice.user_id: [], "@zed:evil.test": []}})  # fmt: skip
            assert status == 200, found
            assert found == {"device_keys": {alice.user_id: {"A1": {**uploaded, "unsigned": {}}}},
                             "master_keys": {alice.user_id: master_key},
                             "self_signing_keys": {alice.user_id: ssk}}, found  # fmt: skip

    _run(main())


def test_to_device_messages_for_another_server_go_out_once_in_bounded_edus(tmp_path):
    async def main() -> None:
        async with HostilePeer(tmp_path, "evil.test") as evil, \
                attacked_gateway(tmp_path, peers={"evil.test": evil.address}) as gw, http_session() as session:  # fmt: skip
            alice = await _device(session, gw, "alice", "A1", register=True)
            mallory = evil.user("mallory")
            status, _ = await alice.client.request("PUT", f"{V3}/sendToDevice/m.room_key_request/t1",
                                                   {"messages": {mallory: {"M1": {"action": "cancel"}}}})  # fmt: skip
            assert status == 200
            await until(lambda: _async(bool(_edus(evil, "m.direct_to_device"))), what="the to-device EDU")
            [edu] = _edus(evil, "m.direct_to_device")
            assert edu == {"sender": alice.user_id, "type": "m.room_key_request", "message_id": edu["message_id"],
                           "messages": {mallory: {"M1": {"action": "cancel"}}}}, edu  # fmt: skip
            assert 0 < len(edu["message_id"]) <= 32

            # 40 devices, 10 KB each: several EDUs of about 64 KiB, each message in exactly one, each its own ID
            big = {f"D{i}": {"ciphertext": "x" * 10_000, "n": i} for i in range(40)}
            status, _ = await alice.client.request("PUT", f"{V3}/sendToDevice/m.room.encrypted/t2",
                                                   {"messages": {mallory: big}})  # fmt: skip
            assert status == 200
            await until(lambda: _async(sum(len(e["messages"].get(mallory, {})) for e in _edus(evil, "m.direct_to_device")
                                           if e["type"] == "m.room.encrypted") == 40), what="all 40 messages")  # fmt: skip
            parts = [e for e in _edus(evil, "m.direct_to_device") if e["type"] == "m.room.encrypted"]
            assert len(parts) >= 6 and len({e["message_id"] for e in parts}) == len(parts)
            assert all(len(json.dumps(e["messages"])) < e2ee.TO_DEVICE_EDU_BYTES + 11_000 for e in parts)
            assert sorted(d for e in parts for d in e["messages"][mallory]) == sorted(big)
            # a retried request (same transaction ID) sends nothing again
            status, _ = await alice.client.request("PUT", f"{V3}/sendToDevice/m.room.encrypted/t2",
                                                   {"messages": {mallory: big}})  # fmt: skip
            await asyncio.sleep(0.5)
            assert len([e for e in _edus(evil, "m.direct_to_device") if e["type"] == "m.room.encrypted"]) == len(parts)

    _run(main())


# ----------------------------------------------------------------------------------------- what comes in


def _device_list_edu(user_id: str, **content: Any) -> dict[str, Any]:
    return {"edu_type": "m.device_list_update",
            "content": {"user_id": user_id, "device_id": "M1", "stream_id": 5, "prev_id": [], **content}}  # fmt: skip


def _to_device_edu(sender: str, messages: Any, message_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"edu_type": "m.direct_to_device", "content": {"sender": sender, "type": "m.room.encrypted",
            "message_id": message_id or secrets.token_hex(8), "messages": messages, **extra}}  # fmt: skip


def test_hostile_edus_are_ignored_and_counted_and_the_legitimate_ones_beside_them_work(tmp_path, caplog):
    async def main() -> None:
        async with HostilePeer(tmp_path, "evil.test") as evil, \
                attacked_gateway(tmp_path, peers={"evil.test": evil.address}) as gw, http_session() as session:  # fmt: skip
            alice = await _device(session, gw, "alice", "A1", register=True)
            room_id = await public_room(alice.client)
            await evil.join(session, gw, room_id)
            mallory, stranger, eve = evil.user("mallory"), evil.user("stranger"), "@eve:other.test"
            since = (await _sync(alice))["next_batch"]
            e2ee_store = gw.services.store.e2ee
            hello = {alice.user_id: {"A1": {"body": "hello"}}}
            legit_id = "m-legit-1"
            bad = [
                _device_list_edu(eve),  # about a user of another server
                _device_list_edu(stranger),  # a user of the origin sharing no room with ours
                {"edu_type": "m.device_list_update", "content": ["not", "an", "object"]},
                _device_list_edu(mallory, stream_id=True),
                _device_list_edu(mallory, prev_id=list(range(1000))),
                _device_list_edu(mallory, device_id="D" * 1000),
                {"edu_type": "m.signing_key_update", "content": {"user_id": mallory, "master_key": "not a key"}},
                _to_device_edu(eve, hello),  # spoofed sender
                _to_device_edu(mallory, {alice.user_id: {"A1": {"big": "x" * 70_000}}}),  # over 64 KiB
                _to_device_edu(mallory, hello, message_id="i" * 300),
                _to_device_edu(mallory, {alice.user_id: ["not", "a", "map"]}),
            ]
            too_many = _to_device_edu(mallory, {f"@u{i}:{gw.server_name}": {"D": {}} for i in range(MAX_TARGETS + 1)})
            legit = [
                _device_list_edu(mallory),
                _to_device_edu(mallory, {**hello, "@zed:other.test": {"Z": {"body": "elsewhere"}}}, legit_id),
            ]
            caplog.set_level(logging.WARNING, logger="lowband.federation")
            status, answer = await evil.send(session, gw, edus=[*bad, too_many, *legit])
            assert (status, answer) == (200, {"pdus": {}}), answer
            # the legitimate ones: mallory's devices changed (alice's sync says so), alice's device has the message
            assert e2ee_store.device_list_position(mallory) is not None
            assert e2ee_store.device_list_position(eve) is None and e2ee_store.device_list_position(stranger) is None
            synced = await _sync(alice, since)
            assert synced["device_lists"]["changed"] == [mallory], synced["device_lists"]
            assert synced["to_device"]["events"] == [{"sender": mallory, "type": "m.room.encrypted",
                                                      "content": {"body": "hello"}}], synced["to_device"]  # fmt: skip
            # the same message again (a retry with a new transaction ID) is not delivered twice
            status, _ = await evil.send(session, gw, edus=[legit[1]])
            assert status == 200
            assert (await _sync(alice, synced["next_batch"]))["to_device"]["events"] == []
            refused = gw.federation.edus.refused
            assert sum(refused.values()) == len(bad) + 3, refused  # + too_many, + the message for @zed left out twice
            assert {kind for kind, _ in refused} == {"m.device_list_update", "m.signing_key_update",
                                                     "m.direct_to_device"}  # fmt: skip

            # a flood of them: counted, one log line per kind and reason, and the next legitimate EDU still works
            lines_before = len([r for r in caplog.records if r.getMessage().startswith("ignored")])
            for _ in range(5):
                status, _ = await evil.send(session, gw, edus=bad * 8)
                assert status == 200
            lines = [r for r in caplog.records if r.getMessage().startswith("ignored")][lines_before:]
            assert sum(refused.values()) == len(bad) + 3 + 5 * 8 * len(bad), refused
            assert lines == [], [r.getMessage() for r in lines]  # all within the first line's interval
            status, _ = await evil.send(session, gw, edus=[_to_device_edu(mallory, hello, "m-legit-2")])
            assert status == 200
            synced = await _sync(alice)
            assert [e["content"] for e in synced["to_device"]["events"]] == [{"body": "hello"}]

    _run(main())


def test_a_refusal_summary_line_comes_once_per_interval():
    """The log of one refusal kind: a line at the first, then a line per interval saying how many followed."""
    from lowband.gateway.federation.edus import REFUSAL_LOG_INTERVAL_S, Edus

    services = SimpleNamespace(typing=SimpleNamespace(listeners=[]), receipt_listeners=[])  # what Edus touches
    now = [0.0]
    edus = Edus(services, sender=None, clock=lambda: now[0])  # type: ignore[arg-type]
    logger = logging.getLogger("lowband.federation")
    seen: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = _Catch()
    logger.addHandler(handler)
    try:
        for step in range(1000):
            now[0] = step * 0.5  # 500 s of refusals, two a second
            edus._refuse("evil.test", "m.direct_to_device", "sender is not a user of the sending server")
    finally:
        logger.removeHandler(handler)
    assert edus.refused[("m.direct_to_device", "sender is not a user of the sending server")] == 1000
    assert 1 < len(seen) <= 1 + 500 / REFUSAL_LOG_INTERVAL_S, seen
    assert "further ones are counted" in seen[0] and "ignored 120 more" in seen[1], seen[:2]


# ----------------------------------------------------------------------------------------- answers to our questions


def test_answers_to_our_key_queries_are_cut_to_what_was_asked(tmp_path, monkeypatch):
    async def main() -> None:
        async with HostilePeer(tmp_path, "evil.test") as evil, \
                attacked_gateway(tmp_path, peers={"evil.test": evil.address}) as gw, http_session() as session:  # fmt: skip
            alice = await _device(session, gw, "alice", "A1", register=True)
            mallory, xavier = evil.user("mallory"), evil.user("xavier")

            def dev(user_id: str, device_id: str, **extra: Any) -> dict[str, Any]:
                return {"user_id": user_id, "device_id": device_id, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                        "keys": {f"ed25519:{device_id}": "k" * 43}, "signatures": {}, **extra}  # fmt: skip

            def xsk(user_id: str, usage: str) -> dict[str, Any]:
                return {"user_id": user_id, "usage": [usage], "keys": {"ed25519:" + "m" * 43: "m" * 43}}

            answers: dict[str, Any] = {}

            async def user_keys(request: web.Request) -> web.StreamResponse:
                what = request.path.rsplit("/", 1)[1]
                answer = answers[what]
                if callable(answer):
                    return await answer()
                return web.Response(body=answer if isinstance(answer, bytes) else json.dumps(answer).encode(),
                                    content_type="application/json")  # fmt: skip

            evil.overrides["user"] = user_keys
            answers["query"] = {
                "device_keys": {
                    mallory: {"M1": dev(mallory, "M1", unsigned={"device_display_name": "n" * 300, "evil": 1}),
                              "M2": dev(mallory, "OTHER"), "M3": dev(mallory, "M3", pad="p" * 10_000), "M4": "str",
                              "M5": dev(xavier, "M5")},
                    xavier: {"X1": dev(xavier, "X1", unsigned={"device_display_name": "X's laptop"}),
                             "X2": dev(xavier, "X2")},
                    alice.user_id: {"A1": dev(alice.user_id, "A1")}, "@eve:other.test": {},
                },
                "master_keys": {mallory: xsk(mallory, "master"), alice.user_id: xsk(alice.user_id, "master"),
                                xavier: xsk(mallory, "master")},
                "self_signing_keys": {mallory: xsk(mallory, "master")},
                "user_signing_keys": {mallory: xsk(mallory, "user_signing")},
            }  # fmt: skip
            status, found = await alice.client.request("POST", f"{V3}/keys/query",
                                                       {"device_keys": {mallory: [], xavier: ["X1"]}})  # fmt: skip
            assert status == 200 and found["failures"] == {}, found
            assert found["device_keys"] == {
                mallory: {"M1": {**dev(mallory, "M1"), "unsigned": {}}},
                xavier: {"X1": {**dev(xavier, "X1"), "unsigned": {"device_display_name": "X's laptop"}}},
            }
            assert found["master_keys"] == {mallory: xsk(mallory, "master")}
            assert found["self_signing_keys"] == found["user_signing_keys"] == {}
            dropped = gw.federation.e2ee.dropped
            assert dropped["query_bad_device"] == 5 and dropped["query_bad_cross_signing"] == 2, dropped

            answers["claim"] = {"one_time_keys": {
                mallory: {"M1": {"curve25519:c": "c" * 43, "signed_curve25519:a": {"key": "a" * 43},
                                 "signed_curve25519:b": {"key": "b" * 43}},
                          "M2": {"signed_curve25519:": "no key ID"}, "M9": {"signed_curve25519:z": "unasked"}},
                alice.user_id: {"A1": {"signed_curve25519:forged": "f" * 43}}}}  # fmt: skip
            status, claimed = await alice.client.request("POST", f"{V3}/keys/claim", {"one_time_keys": {
                mallory: {"M1": "signed_curve25519", "M2": "signed_curve25519"}}})  # fmt: skip
            assert status == 200 and claimed == {"one_time_keys": {mallory: {"M1": {"signed_curve25519:a": {
                "key": "a" * 43}}}}, "failures": {}}, claimed  # fmt: skip

            # an answer that is not JSON, not an object, or too large: a failure for that server only
            for answer in (
                b"<html>",
                [1, 2],
                {"device_keys": "no"},
                {"device_keys": {"x": "y" * e2ee.QUERY_ANSWER_BYTES}},
            ):
                answers["query"] = answer
                status, found = await alice.client.request("POST", f"{V3}/keys/query", {"device_keys": {
                    mallory: [], alice.user_id: []}})  # fmt: skip
                assert status == 200 and list(found["failures"]) == ["evil.test"], found
                assert found["device_keys"] == {alice.user_id: {}}, found

            # a server that does not answer in time: a failure after the timeout, then at once without asking
            monkeypatch.setattr(e2ee, "ASK_TIMEOUT_S", 1.0)

            async def silent() -> web.StreamResponse:
                await asyncio.sleep(10)
                return web.json_response({})

            answers["query"] = silent
            started = time.monotonic()
            status, found = await alice.client.request("POST", f"{V3}/keys/query", {"device_keys": {mallory: []}})
            assert status == 200 and list(found["failures"]) == ["evil.test"], found
            assert 0.9 < time.monotonic() - started < 5
            asked = evil.hits["user"]
            started = time.monotonic()
            status, found = await alice.client.request("POST", f"{V3}/keys/claim", {"one_time_keys": {
                mallory: {"M1": "signed_curve25519"}}})  # fmt: skip
            assert status == 200 and list(found["failures"]) == ["evil.test"], found
            assert time.monotonic() - started < 0.5 and evil.hits["user"] == asked

    _run(main())


# ----------------------------------------------------------------------------------------- our endpoints


def test_our_key_endpoints_hand_each_one_time_key_once_and_refuse_oversized_questions(tmp_path):
    async def main() -> None:
        async with HostilePeer(tmp_path, "evil.test") as evil, \
                attacked_gateway(tmp_path, peers={"evil.test": evil.address}) as gw, http_session() as session:  # fmt: skip
            alice = await _device(session, gw, "alice", "A1", register=True)
            await alice.upload(otks=3, fallback=True)
            ask = {"one_time_keys": {alice.user_id: {"A1": "signed_curve25519"}, evil.user("zed"): {"Z": "x"}}}
            answers = await asyncio.gather(*(evil.call(session, gw, "POST", f"{FED}/user/keys/claim", ask)
                                             for _ in range(6)))  # fmt: skip
            assert all(status == 200 and list(a["one_time_keys"]) == [alice.user_id] for status, a in answers), answers
            got = sorted(next(iter(a["one_time_keys"][alice.user_id]["A1"])) for _, a in answers)
            assert got == ["signed_curve25519:A10", "signed_curve25519:A11", "signed_curve25519:A12"] + \
                ["signed_curve25519:A1fb"] * 3, got  # fmt: skip

            too_many = {"device_keys": {f"@u{i}:{gw.server_name}": [] for i in range(MAX_USERS_PER_REQUEST + 1)}}
            status, answer = await evil.call(session, gw, "POST", f"{FED}/user/keys/query", too_many)
            assert (status, answer["errcode"]) == (400, "M_LIMIT_EXCEEDED"), answer
            for body in ({"device_keys": [alice.user_id]}, {"device_keys": {alice.user_id: "A1"}}, [1]):
                status, answer = await evil.call(session, gw, "POST", f"{FED}/user/keys/query", body)
                assert (status, answer["errcode"]) == (400, "M_BAD_JSON"), (body, answer)
            status, answer = await evil.call(session, gw, "POST", f"{FED}/user/keys/claim", {"one_time_keys": {
                alice.user_id: {"A1": 5}}})  # fmt: skip
            assert (status, answer["errcode"]) == (400, "M_BAD_JSON"), answer
            for user_id in (evil.user("zed"), f"@nobody:{gw.server_name}"):
                status, answer = await evil.call(session, gw, "GET", f"{FED}/user/devices/{q(user_id)}")
                assert (status, answer["errcode"]) == (404, "M_NOT_FOUND"), answer
            # unsigned requests are refused before anything is read out
            status, _ = await evil.call(session, gw, "POST", f"{FED}/user/keys/query", {"device_keys": {}},
                                        authorization=None)  # fmt: skip
            assert status == 401

    _run(main())


async def _async(value: Any) -> Any:
    return value


# ----------------------------------------------------------------------------------------- the wire, byte for byte

#: The documented example (docs/e2ee.md, "Over federation"): gateway 127.0.0.1:8448 (key ed25519:a_1, seed
#: 00..1f) tells 192.168.1.20:8448 in its fourth transaction that alice's device KITCHEN1 (seed 20..3f,
#: curve25519 key the bytes 40..5f) has keys, her change at stream position 57 after the one at 42.
EXAMPLE_BODY = (
    '{"origin":"127.0.0.1:8448","origin_server_ts":1764849600000,"pdus":[],"edus":[{"edu_type":"m.device_list_update",'
    '"content":{"user_id":"@alice:127.0.0.1:8448","device_id":"KITCHEN1","stream_id":57,"prev_id":[42],"keys":{'
    '"user_id":"@alice:127.0.0.1:8448","device_id":"KITCHEN1","algorithms":["m.olm.v1.curve25519-aes-sha2",'
    '"m.megolm.v1.aes-sha2"],"keys":{"curve25519:KITCHEN1":"QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8",'
    '"ed25519:KITCHEN1":"Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc"},"signatures":{"@alice:127.0.0.1:8448":{'
    '"ed25519:KITCHEN1":"bPKMXp0GUP9VhImdyHh+OYxr5GvdZL2etiQf47crIPkMJW19w0AGaONwnmIkxertrnzP865/CsIZhyj/of+aDQ"}}}}}]}'
)
EXAMPLE_AUTHORIZATION = (
    'X-Matrix origin="127.0.0.1:8448",destination="192.168.1.20:8448",key="ed25519:a_1",'
    'sig="v6mmKTdg0ZCQQBPul5cDNeX0s4FuIwt0S01n7vDge9TzzbBuUVxqNVYrUyPAlUtCvTnag4UYOj7rwjGZgRh7Cw"'
)


def test_the_documented_device_list_update_is_what_the_gateway_sends_byte_for_byte():
    from lowband.gateway.matrix.request_auth import authorization_header
    from lowband.gateway.matrix.signing import SigningKey, encode_base64, sign_json, verify_json

    user_id, device = "@alice:127.0.0.1:8448", SigningKey.from_seed(bytes(range(32, 64)), "KITCHEN1")
    keys = sign_json({"user_id": user_id, "device_id": "KITCHEN1",
                      "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                      "keys": {"curve25519:KITCHEN1": encode_base64(bytes(range(64, 96))),
                               "ed25519:KITCHEN1": encode_base64(device.verify_key_bytes)}}, user_id, device)  # fmt: skip
    verify_json(keys, user_id, "ed25519:KITCHEN1", device.verify_key_bytes)
    view = e2ee.DeviceListView({"KITCHEN1": keys}, {})
    edu = {"edu_type": "m.device_list_update", "content": e2ee.device_list_update(user_id, view, "KITCHEN1", 57, [42])}
    body = {"origin": "127.0.0.1:8448", "origin_server_ts": 1764849600000, "pdus": [], "edus": [edu]}
    # as FederationClient puts it on the wire, and as it signs it
    assert json.dumps(body, ensure_ascii=False, separators=(",", ":")) == EXAMPLE_BODY
    server = SigningKey.from_seed(bytes(range(32)), "a_1")
    assert authorization_header("PUT", "/_matrix/federation/v1/send/a_1.4", "127.0.0.1:8448", "192.168.1.20:8448",
                                server, body) == EXAMPLE_AUTHORIZATION  # fmt: skip
    gone = e2ee.device_list_update(user_id, e2ee.DeviceListView({}, {}), "KITCHEN1", 58, [57])
    assert gone == {"user_id": user_id, "device_id": "KITCHEN1", "stream_id": 58, "prev_id": [57], "deleted": True}
