"""A key backup made by one matrix-js-sdk device is restored by a new one (issue 13's acceptance item).

``js/js_sdk_backup.mjs`` runs the clients (its header has the steps): alice's
first device sets up recovery (cross-signing, secret storage, a key backup)
and backs up three Megolm sessions; it goes offline; a new device with only
the recovery key restores the backup and reads the old messages from
``/messages``. This test sets up the users and the room over raw HTTP, checks
what the script saw, and reads the backup back from the server over raw HTTP.
What a broken server does to it: without ``/room_keys`` the backup is never
created (the script fails in ``bootstrapSecretStorage``); with keys lost or a
wrong ``count`` the upload wait times out or the counts below differ; without
account data the new device cannot open secret storage.
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from .homeservers import MEGOLM, Homeserver, run_node

pytestmark = pytest.mark.slow

#: The algorithm of a backup whose keys are encrypted to a Curve25519 public key (the one clients make).
BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"


def test_js_sdk_new_device_restores_the_key_backup_and_reads_old_messages(homeserver: Homeserver,
                                                                          node_modules: None) -> None:  # fmt: skip
    alice, bob = homeserver.register("js-backup-alice"), homeserver.register("js-backup-bob")
    room_id = homeserver.encrypted_room(alice, [bob])
    started = time.monotonic()
    result = run_node("js_sdk_backup.mjs", {
        "baseUrl": homeserver.base_url, "roomId": room_id, "timeoutMs": 50_000,
        "alice": {"userId": alice.user_id, "password": alice.password},
        "bob": {"userId": bob.user_id, "password": bob.password},
    }, timeout=60)  # fmt: skip
    print(f"js-sdk key backup on {homeserver.name}: {time.monotonic() - started:.1f} s; {result}")

    sent = {m["event_id"]: m for m in result["sent"]}
    sessions = set(result["old_sessions"])
    # Three messages under three Megolm sessions: two of alice's (one discarded), one bob's that alice only received.
    assert len(sent) == 3 and len(sessions) == 3, result
    assert result["new_device"] != result["old_device"]
    assert result["secret_storage_ready"] is True

    # The server counted every session once, in the version the first device created.
    backed_up = result["backed_up"]
    assert backed_up["version"] == result["backup_version"] and backed_up["algorithm"] == BACKUP_ALGORITHM
    assert backed_up["count"] == len(sessions), backed_up

    # The new device's initial sync held none of the old messages: they came from /messages.
    assert result["old_messages_in_initial_sync"] == 0 and result["history_pages"] >= 1
    # The new device could read none of the old messages before the restore: no key came by another path.
    assert [b["event_id"] for b in result["before_restore"]] == list(sent)
    assert not any(b["decrypted"] for b in result["before_restore"]), result["before_restore"]
    # The client's reason: sent before the device existed, and a backup exists (GET /room_keys/version said so)
    # that this device cannot use yet.
    assert {b["reason"] for b in result["before_restore"]} == {"HISTORICAL_MESSAGE_BACKUP_UNCONFIGURED"}
    # The recovery key opened secret storage, and the restore brought back every key of the backup.
    assert result["recovery_key_checked"] is True
    assert result["restored"] == {"total": len(sessions), "imported": len(sessions)}
    # Every old message now decrypts to what was sent, from the Megolm ciphertext it was on the wire.
    assert len(result["decrypted"]) == len(sent)
    for facts in result["decrypted"]:
        original = sent[facts["event_id"]]
        assert facts["device"] == result["new_device"]
        assert (facts["body"], facts["sender"]) == (original["body"], original["sender"]), facts
        assert facts["wire_type"] == "m.room.encrypted" and facts["sender_key"], facts
    assert {f["session_id"] for f in result["decrypted"]} == sessions

    # What the server holds now, read over raw HTTP: the same version, count and etag the clients saw (restoring
    # wrote nothing), and exactly the three sessions of the room, as ciphertext.
    info = homeserver.api("GET", "/_matrix/client/v3/room_keys/version", token=alice.access_token)
    assert info["version"] == result["backup_version"] and info["algorithm"] == BACKUP_ALGORITHM
    assert (info["count"], info["etag"]) == (len(sessions), backed_up["etag"]), info
    assert result["after_restore"] == backed_up
    assert info["auth_data"]["public_key"] and alice.user_id in info["auth_data"]["signatures"]
    version = urllib.parse.quote(info["version"])
    keys = homeserver.api("GET", f"/_matrix/client/v3/room_keys/keys?version={version}", token=alice.access_token)
    assert set(keys["rooms"]) == {room_id}
    stored = keys["rooms"][room_id]["sessions"]
    assert set(stored) == sessions
    for key in stored.values():
        assert set(key["session_data"]) >= {"ciphertext", "ephemeral", "mac"}, key
        # Each key was backed up from its first message on (all three were shared before anything was sent).
        assert key["first_message_index"] == 0 and isinstance(key["is_verified"], bool), key
    # The messages on the server are Megolm ciphertext of those sessions; no plaintext is stored anywhere here.
    room = urllib.parse.quote(room_id)
    page = homeserver.api("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50", token=bob.access_token)
    on_server = {e["event_id"]: e for e in page["chunk"] if e["event_id"] in sent}
    assert set(on_server) == set(sent)
    assert {(e["type"], e["content"]["algorithm"]) for e in on_server.values()} == {("m.room.encrypted", MEGOLM)}
    assert {e["content"]["session_id"] for e in on_server.values()} == sessions
    assert "backup: " not in json.dumps(page) + json.dumps(keys)
    # The backup's decryption key is in secret storage encrypted, never as the bare key.
    stored_secret = homeserver.api(
        "GET", f"/_matrix/client/v3/user/{urllib.parse.quote(alice.user_id)}/account_data/m.megolm_backup.v1",
        token=alice.access_token)  # fmt: skip
    assert set(stored_secret) == {"encrypted"} and len(stored_secret["encrypted"]) == 1, stored_secret
