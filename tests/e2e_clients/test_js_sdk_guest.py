"""matrix-js-sdk (npm, under the machine's Node) as a guest: registers with ``kind=guest``, reads a world_readable
room without joining, is refused what guests may not do, joins a room that allows guests and talks there; no SDK
error or unhandled rejection.

``js/js_sdk_guest.mjs`` runs the client (see its header for the steps).
"""

from __future__ import annotations

import pytest

from .homeservers import Homeserver, run_node

pytestmark = pytest.mark.slow


def test_js_sdk_guest_reads_a_world_readable_room(homeserver: Homeserver, node_modules: None) -> None:
    if homeserver.name != "lowband":
        pytest.skip("guest access is configured for the Lowband gateway only")
    alice = homeserver.register("js-guest-alice")
    world = homeserver.api("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "initial_state": [
        {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}]},
        alice.access_token)["room_id"]  # fmt: skip
    event_id = homeserver.api("PUT", f"/_matrix/client/v3/rooms/{world}/send/m.room.message/js-guest-0",
                              {"msgtype": "m.text", "body": "readable by anyone"}, alice.access_token)["event_id"]
    private = homeserver.api("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"},
                             alice.access_token)["room_id"]  # fmt: skip
    open_room = homeserver.api("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "initial_state": [
        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}]},
        alice.access_token)["room_id"]  # fmt: skip
    result = run_node("js_sdk_guest.mjs", {
        "baseUrl": homeserver.base_url, "worldRoomId": world, "eventId": event_id, "privateRoomId": private,
        "openRoomId": open_room, "timeoutMs": 60_000,
    }, timeout=90)  # fmt: skip

    assert result["rejections"] == [], result["rejections"]
    assert result["errors"] == [], result["errors"]
    assert result["isGuest"] is True
    assert "readable by anyone" in result["bodies"] and result["eventBody"] == "readable by anyone"
    assert {"m.room.create", "m.room.history_visibility", "m.room.member"} <= set(result["stateTypes"])
    assert result["createRefused"] == "M_GUEST_ACCESS_FORBIDDEN"
    assert result["privateRefused"] == "M_FORBIDDEN"
    page = homeserver.api("GET", f"/_matrix/client/v3/rooms/{open_room}/messages?dir=b&limit=5", None,
                          alice.access_token)  # fmt: skip
    assert result["sentEventId"] in [e["event_id"] for e in page["chunk"]]
