"""matrix-js-sdk (npm, under the machine's Node) with its Rust crypto, in an encrypted room.

``js/js_sdk_rooms.mjs`` runs the clients; this test sets up the users and the
room over raw HTTP and checks what the script saw (see the script's header for
the steps). What a broken server does to it: without ``keys/upload`` /
``keys/query`` / ``keys/claim`` / ``sendToDevice`` no room key reaches the
other device and a decryption wait times out; without ``device_lists`` in
``/sync`` the third device is never learnt of.
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from .homeservers import MEGOLM, Homeserver, run_node

pytestmark = pytest.mark.slow


def test_js_sdk_devices_decrypt_each_other_and_a_third_device_gets_later_keys(homeserver: Homeserver,
                                                                               node_modules: None) -> None:  # fmt: skip
    alice, bob, carol = homeserver.register("js-alice"), homeserver.register("js-bob"), homeserver.register("js-carol")
    room_id = homeserver.encrypted_room(alice, [bob, carol])
    room = urllib.parse.quote(room_id)
    state = homeserver.api("GET", f"/_matrix/client/v3/rooms/{room}/state/m.room.encryption", token=alice.access_token)
    assert state["algorithm"] == MEGOLM
    started = time.monotonic()
    result = run_node("js_sdk_rooms.mjs", {
        "baseUrl": homeserver.base_url, "roomId": room_id, "timeoutMs": 100_000,
        "alice": {"userId": alice.user_id, "password": alice.password},
        "bob": {"userId": bob.user_id, "password": bob.password},
        "observer": {"userId": carol.user_id, "accessToken": carol.access_token},
    }, timeout=120)  # fmt: skip
    print(f"js-sdk scenario on {homeserver.name}: {time.monotonic() - started:.1f} s; {result}")

    b1, b2 = result["bob_devices"]
    assert b1 != b2
    got = {(d["device"], d["body"]): d for d in result["decrypted"]}
    assert set(got) == {
        (b1, "js: alice to bob"), (result["alice_device"], "js: bob to alice"),
        (b2, "js: after the third device"), (b1, "js: after the third device"),
    }  # fmt: skip
    for facts in result["decrypted"]:
        # Sent as Megolm ciphertext, decrypted with a session whose sender key is the sending device's.
        assert facts["wire_type"] == "m.room.encrypted", facts
        assert facts["sender_key"], facts
    # The key the messages were decrypted with is the one the server publishes for alice's device.
    published = homeserver.api("POST", "/_matrix/client/v3/keys/query", {"device_keys": {alice.user_id: []}},
                               carol.access_token)["device_keys"][alice.user_id]  # fmt: skip
    alice_key = published[result["alice_device"]]["keys"][f"curve25519:{result['alice_device']}"]
    assert got[(b1, "js: alice to bob")]["sender_key"] == alice_key
    assert got[(b2, "js: after the third device")]["sender_key"] == alice_key
    # What the server holds and serves to a member without keys is ciphertext only.
    page = homeserver.api("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50", token=carol.access_token)
    sent = [e for e in page["chunk"] if e["sender"] in (alice.user_id, bob.user_id) and "state_key" not in e]
    assert len(sent) == 3 and {e["type"] for e in sent} == {"m.room.encrypted"}, sent
    assert {e["content"]["algorithm"] for e in sent} == {MEGOLM}
    assert "js: " not in json.dumps(page)
    # Bob's third device was announced to a user sharing the room, and alice's device learnt its keys.
    assert bob.user_id in result["observer_device_lists_changed"]
    assert {b1, b2} <= set(result["alice_knows_bob_devices"])
    # It got the room key from after it joined only: the message sent before it existed stays unreadable.
    assert result["third_device_reads_earlier_message"] is False
