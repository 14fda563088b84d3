"""matrix-js-sdk (npm, under the machine's Node) with ``threadSupport``: a thread one client makes is listed and
loaded by another, and a link to its root opens (/context), without an SDK error or unhandled rejection.

``js/js_sdk_threads.mjs`` runs both clients (see its header for the steps). What a broken server does to
it: without ``/v1/rooms/{id}/threads`` the thread list never becomes ready; without ``/relations`` the
thread's timeline stays empty and the SDK logs "Failed to load start of newly created thread"; without
``m.relations`` in ``unsigned`` the thread has no reply count.
"""

from __future__ import annotations

import time

import pytest

from .homeservers import Homeserver, run_node

pytestmark = pytest.mark.slow


def test_js_sdk_thread_is_listed_and_loaded_by_another_client(homeserver: Homeserver, node_modules: None) -> None:
    alice, bob = homeserver.register("js-thread-alice"), homeserver.register("js-thread-bob")
    created = homeserver.api("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "threads"},
                             alice.access_token)  # fmt: skip
    room_id = created["room_id"]
    homeserver.api("POST", f"/_matrix/client/v3/join/{room_id}", {}, bob.access_token)
    started = time.monotonic()
    result = run_node("js_sdk_threads.mjs", {
        "baseUrl": homeserver.base_url, "roomId": room_id, "timeoutMs": 60_000,
        "alice": {"userId": alice.user_id, "accessToken": alice.access_token},
        "bob": {"userId": bob.user_id, "accessToken": bob.access_token},
    }, timeout=90)  # fmt: skip
    print(f"js-sdk threads on {homeserver.name}: {time.monotonic() - started:.1f} s; {result}")

    assert result["rejections"] == [], result["rejections"]
    assert result["failed_requests"] == [], result["failed_requests"]
    assert result["errors"] == [], result["errors"]
    assert result["requested"] == ["/context/", "/relations/", "/threads"]
    assert result["listed"] == [result["root"]]
    assert result["reply_count"] == 2
    assert result["bundled"]["count"] == 2 and result["bundled"]["latest_event"]["event_id"] == result["second"]
    assert {"first reply", "second reply"} <= set(result["bodies"])
    assert result["root_in_context"] is True
