"""matrix-js-sdk (npm, under the machine's Node) against server-side search (two pages), the user directory, room
tags delivered by /sync, and peeking into a world_readable room (``/rooms/{id}/initialSync`` then
``/events?room_id=``, the legacy endpoints the SDK still calls); no SDK error or unhandled rejection.

``js/js_sdk_search.mjs`` runs the clients (see its header for the steps).
"""

from __future__ import annotations

import pytest

from .homeservers import Homeserver, run_node

pytestmark = pytest.mark.slow


def test_js_sdk_search_directory_tags_and_peek(homeserver: Homeserver, node_modules: None) -> None:
    alice, bob, visitor = (homeserver.register(name) for name in ("js-search-alice", "js-search-bob", "js-search-visit"))
    room_id = homeserver.api("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"},
                             alice.access_token)["room_id"]  # fmt: skip
    homeserver.api("POST", f"/_matrix/client/v3/join/{room_id}", {}, bob.access_token)
    for i in range(15):
        homeserver.api("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/js-search-{i}",
                       {"msgtype": "m.text", "body": f"the valve number {i} is stuck"}, bob.access_token)  # fmt: skip
    world = homeserver.api("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "initial_state": [
        {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}]},
        alice.access_token)["room_id"]  # fmt: skip
    homeserver.api("PUT", f"/_matrix/client/v3/rooms/{world}/send/m.room.message/js-peek-0",
                   {"msgtype": "m.text", "body": "before the visit"}, alice.access_token)  # fmt: skip
    result = run_node("js_sdk_search.mjs", {
        "baseUrl": homeserver.base_url, "roomId": room_id, "worldRoomId": world, "timeoutMs": 60_000,
        "alice": {"userId": alice.user_id, "accessToken": alice.access_token},
        "bob": {"userId": bob.user_id, "accessToken": bob.access_token},
        "visitor": {"userId": visitor.user_id, "accessToken": visitor.access_token},
    }, timeout=90)  # fmt: skip

    assert result["rejections"] == [], result["rejections"]
    assert result["failed_requests"] == [], result["failed_requests"]
    assert result["errors"] == [], result["errors"]
    assert len(result["first_page"]) == 10 and result["count"] == 15 and "valve" in result["highlights"]
    assert sorted(result["all_bodies"]) == sorted(f"the valve number {i} is stuck" for i in range(15))
    assert bob.user_id in result["found"]
    assert result["tags"]["m.favourite"] == {"order": 0.5}
    assert "before the visit" in result["before"] and "while you peek" in result["after"]
    assert {"/search", "/user_directory/search", "/tags/", "/initialSync", "/events?"} <= set(result["requested"])
