"""End-to-end encryption's server half across servers, against a real Synapse (from PyPI, loopback, TLS).

One Synapse and one Lowband gateway for the whole module (``peers``), a Lowband user (alice) and a
Synapse user (sam) in a shared room. Keys are made and signed here with PyNaCl as a client does; each
test adds its own devices, so the tests do not depend on one another's keys. Synapse is told not to
answer a repeated ``/sync`` from its cache (the tests poll it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from fed_harness import create_room, fed_gateway, http_session, membership_is, q, until
from harness import Client

from lowband.gateway.matrix.canonical_json import encode_canonical_json
from lowband.sim.synapse import SynapsePeer

pytestmark = pytest.mark.slow

V3 = "/_matrix/client/v3"
PASSWORD = "secret-pw"
SYNAPSE_CONFIG = {"caches": {"sync_response_cache_duration": 0}}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _signed(obj: dict[str, Any], user_id: str, key: nacl.signing.SigningKey, key_id: str) -> dict[str, Any]:
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    signature = _b64(key.sign(encode_canonical_json(unsigned)).signature)
    return {**obj, "signatures": {user_id: {**obj.get("signatures", {}).get(user_id, {}), key_id: signature}}}


@dataclass
class Login:
    """One logged-in device of a user (its access token) and the ed25519 key it signs with."""

    base: str
    user_id: str
    device_id: str
    token: str
    key: nacl.signing.SigningKey = field(default_factory=nacl.signing.SigningKey.generate)

    def client(self, session: Any) -> Client:
        client = Client(session, self.base, self.token)
        client.user_id = self.user_id
        return client

    def device_keys(self) -> dict[str, Any]:
        keys = {"user_id": self.user_id, "device_id": self.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {f"curve25519:{self.device_id}": _b64(secrets.token_bytes(32)),
                         f"ed25519:{self.device_id}": _b64(bytes(self.key.verify_key))}}  # fmt: skip
        return _signed(keys, self.user_id, self.key, f"ed25519:{self.device_id}")

    def one_time_key(self) -> dict[str, Any]:
        return _signed({"key": _b64(secrets.token_bytes(32))}, self.user_id, self.key, f"ed25519:{self.device_id}")


async def _login(session: Any, base: str, user_id: str, device_id: str) -> Login:
    client = Client(session, base)
    status, body = await client.request("POST", f"{V3}/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id}, "password": PASSWORD,
        "device_id": device_id}, token=False)  # fmt: skip
    assert status == 200, body
    return Login(base, body["user_id"], body["device_id"], body["access_token"])


async def _upload(session: Any, login: Login, otks: int = 0, fallback: bool = False) -> dict[str, Any]:
    """Upload the device's keys, ``otks`` one-time keys and maybe a fallback key; their IDs by kind."""
    ids = {"otk": [f"signed_curve25519:{login.device_id}o{i}" for i in range(otks)],
           "fallback": [f"signed_curve25519:{login.device_id}fb"] if fallback else []}  # fmt: skip
    body: dict[str, Any] = {"device_keys": login.device_keys(),
                            "one_time_keys": {key_id: login.one_time_key() for key_id in ids["otk"]}}  # fmt: skip
    if fallback:
        body["fallback_keys"] = {ids["fallback"][0]: {**login.one_time_key(), "fallback": True}}
    status, answer = await login.client(session).request("POST", f"{V3}/keys/upload", body)
    assert status == 200, answer
    return ids


@dataclass
class Peers:
    lowband: Any
    synapse: SynapsePeer
    room_id: str = ""
    alice: Login | None = None  # alice's first device, on Lowband
    sam: Login | None = None  # sam's first device, on Synapse


@contextlib.contextmanager
def _running(tmp: Path) -> Iterator[Peers]:
    lowband = fed_gateway(tmp, "lowband").start()
    synapse = SynapsePeer(tmp / "synapse", extra=SYNAPSE_CONFIG)
    try:
        synapse.start()
        yield Peers(lowband, synapse)
    finally:
        synapse.stop()
        lowband.stop()


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    """Lowband and Synapse, alice and sam registered, each with a device with keys, joined to one room."""

    async def setup(found: Peers) -> None:
        async with http_session() as session:
            for name, server in (("alice", found.lowband), ("sam", found.synapse)):
                status, body = await Client(session, server.url).request("POST", f"{V3}/register", {
                    "username": name, "password": PASSWORD, "device_id": f"{name.upper()}1",
                    "auth": {"type": "m.login.dummy"}}, token=False)  # fmt: skip
                assert status == 200, body
                setattr(found, name, Login(server.url, body["user_id"], body["device_id"], body["access_token"]))
            alice, sam = found.alice, found.sam
            assert alice is not None and sam is not None
            found.room_id = await create_room(alice.client(session), "e2ee")
            status, joined = await sam.client(session).request(
                "POST", f"{V3}/join/{q(found.room_id)}?server_name={q(found.lowband.server_name)}", {}
            )
            assert status == 200, joined
            await until(lambda: membership_is(alice.client(session), found.room_id, sam.user_id, "join"),
                        what="sam's join on Lowband")  # fmt: skip
            await _upload(session, alice, otks=2)
            await _upload(session, sam, otks=2)

    with _running(tmp_path_factory.mktemp("e2ee-synapse")) as found:
        asyncio.run(asyncio.wait_for(setup(found), 120))
        yield found


def _run(coro: Any, timeout: float = 90) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


async def _query(client: Client, user_id: str) -> dict[str, Any]:
    status, found = await client.request("POST", f"{V3}/keys/query", {"device_keys": {user_id: []}})
    assert status == 200, found
    return dict(found)


async def _devices_seen(client: Client, user_id: str) -> set[str]:
    return set((await _query(client, user_id))["device_keys"].get(user_id, {}))


class Syncer:
    """Incremental /sync of one device, collecting its to-device events and device_lists.changed."""

    def __init__(self, client: Client) -> None:
        self.client, self.since = client, None
        self.to_device: list[dict[str, Any]] = []
        self.changed: set[str] = set()

    async def poll(self) -> Syncer:
        path = f"{V3}/sync?timeout=0" + (f"&since={q(self.since)}" if self.since else "")
        status, body = await self.client.request("GET", path)
        assert status == 200, body
        self.since = body["next_batch"]
        self.to_device += body.get("to_device", {}).get("events", [])
        self.changed |= set(body.get("device_lists", {}).get("changed", []))
        return self

    @classmethod
    async def start(cls, client: Client) -> Syncer:
        return await cls(client).poll()


# ---------------------------------------------------------------------------------------------- tests


def test_each_side_queries_the_other_sides_keys_and_cross_signing_keys(peers: Peers) -> None:
    async def main() -> None:
        async with http_session() as session:
            assert peers.alice is not None and peers.sam is not None
            alice, sam = peers.alice.client(session), peers.sam.client(session)
            # alice's cross-signing keys (the first upload needs no password), for Synapse to hand its users
            master, self_signing = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
            master_id, master_public = (f"ed25519:{_b64(bytes(master.verify_key))}", _b64(bytes(master.verify_key)))
            ssk_public = _b64(bytes(self_signing.verify_key))
            master_key = {"user_id": alice.user_id, "usage": ["master"], "keys": {master_id: master_public}}
            ssk = _signed({"user_id": alice.user_id, "usage": ["self_signing"],
                           "keys": {f"ed25519:{ssk_public}": ssk_public}}, alice.user_id, master, master_id)  # fmt: skip
            status, answer = await alice.request("POST", f"{V3}/keys/device_signing/upload",
                                                 {"master_key": master_key, "self_signing_key": ssk})  # fmt: skip
            assert status == 200, answer

            found = await _query(alice, sam.user_id)  # asked of Synapse: POST /user/keys/query
            assert found["failures"] == {}, found
            theirs = found["device_keys"][sam.user_id][peers.sam.device_id]
            assert theirs["keys"][f"ed25519:{peers.sam.device_id}"] == _b64(bytes(peers.sam.key.verify_key))
            assert theirs["user_id"] == sam.user_id and "signatures" in theirs

            # asked of us by Synapse (GET /user/devices, then its cache), cross-signing keys included
            async def alice_seen_on_synapse() -> dict[str, Any] | None:
                found = await _query(sam, alice.user_id)
                ours = found["device_keys"].get(alice.user_id, {}).get(peers.alice.device_id)
                return found if ours and alice.user_id in found.get("self_signing_keys", {}) else None

            found = await until(alice_seen_on_synapse, what="alice's keys and cross-signing keys on Synapse")
            ours = found["device_keys"][alice.user_id][peers.alice.device_id]
            assert ours["keys"][f"ed25519:{peers.alice.device_id}"] == _b64(bytes(peers.alice.key.verify_key))
            assert found["master_keys"][alice.user_id]["keys"] == {master_id: master_public}
            assert found["self_signing_keys"][alice.user_id]["keys"] == ssk["keys"]

    _run(main())


def test_one_time_keys_are_claimed_across_once_each_then_the_fallback_key(peers: Peers) -> None:
    async def main() -> None:
        async with http_session() as session:
            assert peers.alice is not None and peers.sam is not None
            for claimer, owner_server, name in (
                (peers.alice, peers.synapse, "sam"),
                (peers.sam, peers.lowband, "alice"),
            ):
                owner = await _login(session, owner_server.url, name, f"{name.upper()}CLAIM")
                ids = await _upload(session, owner, otks=2, fallback=True)
                wanted = {"one_time_keys": {owner.user_id: {owner.device_id: "signed_curve25519"}}}
                got = []
                for _ in range(4):
                    status, answer = await claimer.client(session).request("POST", f"{V3}/keys/claim", wanted)
                    assert status == 200 and answer.get("failures") == {}, answer
                    keys = answer["one_time_keys"][owner.user_id][owner.device_id]
                    assert len(keys) == 1, answer
                    got.append(next(iter(keys)))
                # each one-time key once, then the fallback key (again and again)
                assert sorted(got[:2]) == sorted(ids["otk"]), got
                assert got[2:] == ids["fallback"] * 2, got

    _run(main())


def test_to_device_messages_reach_the_other_sides_sync_both_ways(peers: Peers) -> None:
    async def main() -> None:
        async with http_session() as session:
            assert peers.alice is not None and peers.sam is not None
            alice, sam = peers.alice.client(session), peers.sam.client(session)
            at_alice, at_sam = await Syncer.start(alice), await Syncer.start(sam)
            for sender, receiver, device, syncer in ((alice, sam, peers.sam.device_id, at_sam),
                                                     (sam, alice, peers.alice.device_id, at_alice)):  # fmt: skip
                marker = f"hello from {sender.user_id}"
                status, answer = await sender.request(
                    "PUT", f"{V3}/sendToDevice/org.lowband.test/t{secrets.token_hex(4)}",
                    {"messages": {receiver.user_id: {device: {"text": marker}}}})  # fmt: skip
                assert status == 200, answer

                async def arrived(syncer: Syncer = syncer, marker: str = marker) -> list[dict[str, Any]]:
                    await syncer.poll()
                    return [e for e in syncer.to_device if e["content"].get("text") == marker]

                events = await until(arrived, what=f"the to-device message at {receiver.user_id}")
                assert events == [{"sender": sender.user_id, "type": "org.lowband.test", "content": {"text": marker}}]

    _run(main())


def test_new_and_deleted_devices_are_announced_both_ways(peers: Peers) -> None:
    async def main() -> None:
        async with http_session() as session:
            assert peers.alice is not None and peers.sam is not None
            alice, sam = peers.alice.client(session), peers.sam.client(session)
            assert peers.alice.device_id in await _devices_seen(sam, alice.user_id)  # Synapse tracks alice now
            at_alice, at_sam = await Syncer.start(alice), await Syncer.start(sam)

            # a new device of alice: Synapse is told (m.device_list_update), sam's sync and keys show it
            second = await _login(session, peers.lowband.url, "alice", "ALICE2")
            await _upload(session, second)
            await until(lambda: _changed(at_sam, alice.user_id), what="alice in sam's device_lists.changed")
            await until(lambda: _has_device(sam, alice.user_id, "ALICE2"), what="ALICE2 in sam's keys/query")

            # and when it goes, it goes there too
            status, answer = await second.client(session).request("DELETE", f"{V3}/devices/ALICE2", {
                "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                         "password": PASSWORD}})  # fmt: skip
            assert status == 200, answer
            await until(lambda: _has_device(sam, alice.user_id, "ALICE2", present=False),
                        what="ALICE2 gone from sam's keys/query")  # fmt: skip

            # a new device of sam: we are told, alice's sync and keys show it
            other = await _login(session, peers.synapse.url, "sam", "SAM2")
            await _upload(session, other)
            await until(lambda: _changed(at_alice, sam.user_id), what="sam in alice's device_lists.changed")
            assert "SAM2" in await _devices_seen(alice, sam.user_id)

    _run(main())


async def _changed(syncer: Syncer, user_id: str) -> bool:
    await syncer.poll()
    return user_id in syncer.changed


async def _has_device(client: Client, user_id: str, device_id: str, present: bool = True) -> bool:
    return (device_id in await _devices_seen(client, user_id)) == present


def test_after_a_lowband_restart_the_next_device_change_still_reaches_synapse(peers: Peers) -> None:
    """What was announced is kept in memory: the first update after a restart has no prev_id, Synapse refetches."""
    peers.lowband.stop()
    peers.lowband.start()

    async def main() -> None:
        async with http_session() as session:
            assert peers.alice is not None and peers.sam is not None
            alice, sam = peers.alice.client(session), peers.sam.client(session)
            at_sam = await Syncer.start(sam)
            third = await _login(session, peers.lowband.url, "alice", "ALICE3")
            await _upload(session, third)
            await until(lambda: _changed(at_sam, alice.user_id), timeout=60, what="alice in sam's device_lists.changed")
            await until(lambda: _has_device(sam, alice.user_id, "ALICE3"), what="ALICE3 in sam's keys/query")
            assert {peers.alice.device_id, "ALICE3"} <= await _devices_seen(sam, alice.user_id)

    _run(main())
