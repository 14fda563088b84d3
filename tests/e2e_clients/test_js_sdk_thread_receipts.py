"""matrix-js-sdk's threaded read receipts (spec v1.4) against the server: the SDK asks for per-thread counts
in its sync filter, sends ``thread_id`` on receipts (the thread root for a thread reply, ``main`` otherwise),
and its unread counts, taken from /sync, move per thread as each receipt covers them.

``js/js_sdk_thread_receipts.mjs`` runs both clients (see its header for the steps). What a server without
threaded receipts does to it: the thread's count is never served (``unread_thread_notifications``), and a
receipt in a thread clears nothing, or clears the main timeline too.
"""

from __future__ import annotations

import time

import pytest

from .homeservers import Homeserver, run_node

pytestmark = pytest.mark.slow


def test_js_sdk_threaded_receipts_move_per_thread_counts(homeserver: Homeserver, node_modules: None) -> None:
    alice, bob = homeserver.register("js-treceipt-alice"), homeserver.register("js-treceipt-bob")
    created = homeserver.api("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "reads"},
                             bob.access_token)  # fmt: skip
    room_id = created["room_id"]
    homeserver.api("POST", f"/_matrix/client/v3/join/{room_id}", {}, alice.access_token)
    started = time.monotonic()
    result = run_node("js_sdk_thread_receipts.mjs", {
        "baseUrl": homeserver.base_url, "roomId": room_id, "timeoutMs": 60_000,
        "alice": {"userId": alice.user_id, "accessToken": alice.access_token},
        "bob": {"userId": bob.user_id, "accessToken": bob.access_token},
    }, timeout=90)  # fmt: skip
    print(f"js-sdk thread receipts on {homeserver.name}: {time.monotonic() - started:.1f} s; {result}")

    assert result["rejections"] == [], result["rejections"]
    assert result["failed_requests"] == [], result["failed_requests"]
    assert result["errors"] == [], result["errors"]
    # the SDK's own sync filter asks for per-thread counts (the server says v1.4 in /versions)
    assert any(f.get("room", {}).get("timeline", {}).get("unread_thread_notifications") is True
               for f in result["filters"]), result["filters"]  # fmt: skip
    root, first, second, later = result["root"], result["first"], result["second"], result["later"]
    bodies = {r["path"].rsplit("/", 1)[-1]: r["body"] for r in result["receipts"]
              if r["path"].split("/receipt/")[1].startswith("m.read/")}  # fmt: skip
    assert bodies[first.replace("$", "%24")] == {"thread_id": root}, result["receipts"]
    assert bodies[later.replace("$", "%24")] == {"thread_id": "main"}, result["receipts"]
    assert bodies[second.replace("$", "%24")] == {}, result["receipts"]
    assert result["counts"] == {
        "before": {"main": 2, "thread": 2},
        "afterThread": {"main": 2, "thread": 1},
        "afterMain": {"main": 0, "thread": 1},
        "afterUnthreaded": {"main": 0, "thread": 0},
    }
    assert result["readInThread"] == second
