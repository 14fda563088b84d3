"""Two matrix-nio clients with ``matrix-nio[e2e]`` (vodozemac) in an encrypted room.

They exchange Megolm messages both ways, then verify each other's device with
an interactive SAS over to-device messages (start, accept, key, MAC), compare
the emoji each computed on its side, and a message sent afterwards arrives
marked as coming from a verified device. Each client keeps its Olm account in
its own store under the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nio
import pytest
from nio.crypto import SasState

from .homeservers import Homeserver
from .nio_device import NioDevice, pump

pytestmark = pytest.mark.slow


def test_nio_clients_exchange_encrypted_messages_and_verify_each_other_by_sas(homeserver: Homeserver,
                                                                               tmp_path: Path) -> None:  # fmt: skip
    alice_account, bob_account = homeserver.register("nio-alice"), homeserver.register("nio-bob")
    room_id = homeserver.encrypted_room(alice_account, [bob_account])
    timings: dict[str, float] = {}

    async def main() -> None:
        alice = NioDevice(homeserver, alice_account, tmp_path / "alice")
        bob = NioDevice(homeserver, bob_account, tmp_path / "bob")
        both = [alice, bob]
        try:
            await alice.login()
            await bob.login()

            # Each learns the other's device through /sync's device_lists and keys/query.
            def each_knows_the_other() -> bool:
                alice_knows = alice.knows(bob_account.user_id, bob.device_id)
                return alice_knows and bob.knows(alice_account.user_id, alice.device_id)

            timings["devices known"] = await pump(both, each_knows_the_other, "the devices")
            assert alice.client.rooms[room_id].encrypted and bob.client.rooms[room_id].encrypted

            await alice.send(room_id, "nio: alice to bob")
            timings["alice to bob"] = await pump(both, lambda: bob.got("nio: alice to bob") is not None, "bob decrypts")
            await bob.send(room_id, "nio: bob to alice")
            timings["bob to alice"] = await pump(both, lambda: alice.got("nio: bob to alice") is not None,
                                                 "alice decrypts")  # fmt: skip
            # Decrypted from Megolm (nio marks it), from a device nobody has verified yet.
            assert bob.got("nio: alice to bob") == ("nio: alice to bob", alice_account.user_id, True, False)
            assert alice.got("nio: bob to alice") == ("nio: bob to alice", bob_account.user_id, True, False)
            assert alice.undecryptable == bob.undecryptable == 0

            # Interactive SAS over to-device: alice starts with bob's device, bob accepts.
            started = time.monotonic()
            bob_device = alice.client.device_store[bob_account.user_id][bob.device_id]
            assert isinstance(await alice.client.start_key_verification(bob_device), nio.ToDeviceResponse)
            await pump(both, lambda: bool(bob.client.key_verifications), "the verification start at bob")
            (transaction,) = bob.client.key_verifications
            assert transaction in alice.client.key_verifications
            assert isinstance(await bob.client.accept_key_verification(transaction), nio.ToDeviceResponse)
            alice_sas, bob_sas = alice.client.key_verifications[transaction], bob.client.key_verifications[transaction]
            # accept -> alice's key -> bob's key: then each side can show its short auth string.
            await pump(both, lambda: alice_sas.state == bob_sas.state == SasState.key_received, "the SAS keys")
            emoji = alice_sas.get_emoji()
            assert len(emoji) == 7 and emoji == bob_sas.get_emoji(), (emoji, bob_sas.get_emoji())
            assert alice_sas.get_decimals() == bob_sas.get_decimals()
            # Both people say the emoji match: each sends its MAC, each checks the other's.
            assert isinstance(await alice.client.confirm_short_auth_string(transaction), nio.ToDeviceResponse)
            assert isinstance(await bob.client.confirm_short_auth_string(transaction), nio.ToDeviceResponse)
            await pump(both, lambda: alice_sas.verified and bob_sas.verified, "both MACs")
            assert not alice_sas.canceled and not bob_sas.canceled
            assert alice.client.device_store[bob_account.user_id][bob.device_id].verified
            assert bob.client.device_store[alice_account.user_id][alice.device_id].verified
            timings["sas"] = time.monotonic() - started

            # From now on bob's client shows alice's messages as coming from a verified device.
            await alice.send(room_id, "nio: after verification")
            await pump(both, lambda: bob.got("nio: after verification") is not None, "the verified message")
            assert bob.got("nio: after verification") == ("nio: after verification", alice_account.user_id, True, True)
        finally:
            for device in both:
                await device.client.close()

    started = time.monotonic()
    asyncio.run(asyncio.wait_for(main(), 90))
    print(f"nio on {homeserver.name}: {time.monotonic() - started:.1f} s; {timings}")
