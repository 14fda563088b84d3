"""Email pushers (``kind: "email"``, the spec's other pusher kind) against a gateway in the test's loop over real
HTTP: Lowband sends no mail and keeps no email addresses, so ``POST /pushers/set`` refuses them with 400
``M_INVALID_PARAM`` and a message that says so, stores nothing, and leaves http pushers and deletion working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import expect, in_loop, users_gateway

from lowband.gateway.config import RateLimits

V3 = "/_matrix/client/v3"
#: never resolved when a pusher is set (only when a notification is sent), so a public name is fine here
PUSH_URL = "https://push.example.org/_matrix/push/v1/notify"


def email_pusher(address: str = "alice@example.org", **changes: Any) -> dict[str, Any]:
    """The spec's shape of an email pusher: the address as pushkey, app_id ``m.email``."""
    body: dict[str, Any] = {"kind": "email", "app_id": "m.email", "pushkey": address, "app_display_name": "Email",
                            "device_display_name": address, "lang": "en", "data": {"brand": "Lowband"}}  # fmt: skip
    body.update(changes)
    return body


def http_pusher() -> dict[str, Any]:
    return {"kind": "http", "app_id": "org.example.app", "pushkey": "token-1", "app_display_name": "App",
            "device_display_name": "phone", "lang": "en", "data": {"url": PUSH_URL}}  # fmt: skip


@in_loop
async def test_email_pushers_are_refused_clearly_and_not_stored(tmp_path: Path) -> None:
    async with users_gateway(tmp_path, "alice", rate_limits=RateLimits(enabled=False)) as ([alice], svc, _url):
        refused = expect(await alice.request("POST", V3 + "/pushers/set", email_pusher()), 400, "M_INVALID_PARAM")
        assert "email" in refused["error"] and "mail" in refused["error"] and "http" in refused["error"]
        # with append, or with extra data, the same
        expect(await alice.request("POST", V3 + "/pushers/set", email_pusher(append=True)), 400, "M_INVALID_PARAM")
        assert expect(await alice.request("GET", V3 + "/pushers"), 200) == {"pushers": []}
        assert [p for p in svc.store.push.pushers() if p.kind == "email"] == []
        # an http pusher is still taken, listed alone; deleting the (absent) email pusher is a no-op
        expect(await alice.request("POST", V3 + "/pushers/set", http_pusher()), 200)
        expect(await alice.request("POST", V3 + "/pushers/set", email_pusher(kind=None)), 200)
        listed = expect(await alice.request("GET", V3 + "/pushers"), 200)["pushers"]
        assert [(p["kind"], p["app_id"], p["pushkey"]) for p in listed] == [("http", "org.example.app", "token-1")]
        # a malformed email pusher is refused for what is missing first, as any pusher
        expect(await alice.request("POST", V3 + "/pushers/set", {"kind": "email", "app_id": "m.email"}),
               400, "M_MISSING_PARAM")  # fmt: skip
