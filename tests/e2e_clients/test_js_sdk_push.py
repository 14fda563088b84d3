"""matrix-js-sdk (npm, under the machine's Node) against the server's push rules: it finds every default rule it
expects (no "Adding default"/"Missing default" push rule warning), and a message mentioning the user through
``m.mentions`` is a highlight both by the SDK's own evaluation of the served rules and in the server's
``unread_notifications`` count. ``js/js_sdk_push.mjs`` runs the client (see its header)."""

from __future__ import annotations

import pytest

from .homeservers import Homeserver, run_node

pytestmark = pytest.mark.slow


def test_js_sdk_takes_the_push_rules_without_warnings_and_sees_a_mention_highlighted(
    homeserver: Homeserver, node_modules: None
) -> None:
    alice, bob = homeserver.register("js-push-alice"), homeserver.register("js-push-bob")
    created = homeserver.api("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, alice.access_token)
    room_id = created["room_id"]
    homeserver.api("POST", f"/_matrix/client/v3/join/{room_id}", {}, bob.access_token)
    result = run_node("js_sdk_push.mjs", {
        "baseUrl": homeserver.base_url, "roomId": room_id,
        "alice": {"userId": alice.user_id, "accessToken": alice.access_token},
        "bob": {"userId": bob.user_id, "accessToken": bob.access_token},
    }, timeout=90)  # fmt: skip
    assert result["push_warnings"] == [], result["push_warnings"]
    assert result["rejections"] == [] and result["errors"] == [], result
    assert result["override"][0] == ".m.rule.master" and ".m.rule.is_user_mention" in result["override"]
    assert result["highlight_local"] is True
    assert result["highlight_server"] == 1
