"""Push rules over the client-server API: ``/pushrules/``, rule writes with ``before``/``after``, ``/enabled``,
``/actions``, and the spec's errors for bad input."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from harness import Client, expect, gateway_in_loop, users_gateway

from lowband.gateway.config import RateLimits

V3 = "/_matrix/client/v3"
RULES = V3 + "/pushrules/global"


def q(value: str) -> str:
    return quote(value, safe="")


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, *names: str) -> AsyncIterator[tuple[list[Client], Any]]:
    """A gateway (rate limits off), one registered client per name, and the gateway's services."""
    async with users_gateway(tmp_path, *names, rate_limits=RateLimits(enabled=False)) as (clients, services, _):
        yield clients, services


def test_rules_read_written_ordered_and_kept(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice", "bob") as ((alice, bob), _):
            whole = expect(await alice.request("GET", V3 + "/pushrules/"), 200)["global"]
            assert set(whole) == {"override", "content", "room", "sender", "underride"}
            assert whole["content"][0] == {"rule_id": ".m.rule.contains_user_name", "default": True, "enabled": True,
                                           "pattern": "alice", "actions": ["notify", {"set_tweak": "sound",
                                           "value": "default"}, {"set_tweak": "highlight"}]}  # fmt: skip
            invite = next(r for r in whole["override"] if r["rule_id"] == ".m.rule.invite_for_me")
            assert {"kind": "event_match", "key": "state_key", "pattern": alice.user_id} in invite["conditions"]
            assert expect(await alice.request("GET", V3 + "/pushrules/global/"), 200) == whole

            cake = {"pattern": "cake*lie", "actions": ["notify"]}
            expect(await alice.request("PUT", f"{RULES}/content/nocake", cake), 200)
            got = expect(await alice.request("GET", f"{RULES}/content/nocake"), 200)
            assert got == {"rule_id": "nocake", "pattern": "cake*lie", "actions": ["notify"], "enabled": True,
                           "default": False}  # fmt: skip
            # new rules go first; before/after place them among the user's own
            for name in ("b", "a"):
                expect(await alice.request("PUT", f"{RULES}/override/{name}", {"actions": [], "conditions": []}), 200)
            expect(await alice.request("PUT", f"{RULES}/override/c?after=a", {"actions": []}), 200)
            expect(await alice.request("PUT", f"{RULES}/override/d?before=b&after=a", {"actions": []}), 200)
            override = expect(await alice.request("GET", V3 + "/pushrules/"), 200)["global"]["override"]
            assert [r["rule_id"] for r in override[:5]] == [".m.rule.master", "a", "c", "d", "b"]
            # a rule replaced without before/after keeps its place and its enabled flag
            expect(await alice.request("PUT", f"{RULES}/override/c/enabled", {"enabled": False}), 200)
            expect(await alice.request("PUT", f"{RULES}/override/c", {"actions": ["notify"]}), 200)
            override = expect(await alice.request("GET", V3 + "/pushrules/"), 200)["global"]["override"]
            assert [r["rule_id"] for r in override[:5]] == [".m.rule.master", "a", "c", "d", "b"]
            assert override[2]["enabled"] is False and override[2]["actions"] == ["notify"]

            # server-default rules: enabled and actions change, the rule stays
            master = f"{RULES}/override/.m.rule.master"
            assert expect(await alice.request("GET", master + "/enabled"), 200) == {"enabled": False}
            expect(await alice.request("PUT", master + "/enabled", {"enabled": True}), 200)
            assert expect(await alice.request("GET", master + "/enabled"), 200) == {"enabled": True}
            message = f"{RULES}/underride/.m.rule.message/actions"
            expect(await alice.request("PUT", message, {"actions": []}), 200)
            assert expect(await alice.request("GET", message), 200) == {"actions": []}
            # room and sender rules are named by the room or user
            room = "!someroom:localhost"
            expect(await alice.request("PUT", f"{RULES}/room/{q(room)}", {"actions": []}), 200)
            expect(await alice.request("PUT", f"{RULES}/sender/{q(bob.user_id or '')}", {"actions": ["notify"]}), 200)
            expect(await alice.request("DELETE", f"{RULES}/override/d"), 200)
            expect(await alice.request("GET", f"{RULES}/override/d"), 404, "M_NOT_FOUND")
            # bob is untouched
            mine = expect(await bob.request("GET", V3 + "/pushrules/"), 200)["global"]
            assert mine["room"] == [] and not any(r["rule_id"] == "a" for r in mine["override"])
            assert mine["override"][0]["enabled"] is False

        # kept across a restart
        async with gateway_in_loop(tmp_path) as url, aiohttp.ClientSession() as session:
            again = Client(session, url, alice.token)
            whole = expect(await again.request("GET", V3 + "/pushrules/"), 200)["global"]
            assert [r["rule_id"] for r in whole["override"][:4]] == [".m.rule.master", "a", "c", "b"]
            assert whole["override"][0]["enabled"] is True and whole["room"][0]["rule_id"] == room

    asyncio.run(run())


def test_bad_rule_writes_get_the_spec_errors(tmp_path: Path) -> None:
    async def run() -> None:
        async with gateway(tmp_path, "alice") as ((alice,), _):
            for method, path, body, status, errcode in [
                ("GET", V3 + "/pushrules/device/override/x", None, 400, "M_INVALID_PARAM"),
                ("GET", f"{RULES}/sideways/x", None, 400, "M_INVALID_PARAM"),
                ("GET", f"{RULES}/override/nope", None, 404, "M_NOT_FOUND"),
                ("GET", f"{RULES}/underride/.m.rule.master", None, 404, "M_NOT_FOUND"),  # wrong kind
                ("GET", f"{RULES}/override/nope/enabled", None, 404, "M_NOT_FOUND"),
                ("PUT", f"{RULES}/override/nope/enabled", {"enabled": True}, 404, "M_NOT_FOUND"),
                ("PUT", f"{RULES}/override/nope/actions", {"actions": []}, 404, "M_NOT_FOUND"),
                ("PUT", f"{RULES}/override/.m.rule.master/enabled", {"enabled": "yes"}, 400, "M_INVALID_PARAM"),
                ("PUT", f"{RULES}/override/.m.rule.master/enabled", {}, 400, "M_MISSING_PARAM"),
                ("PUT", f"{RULES}/override/.m.rule.master/actions", {"actions": "notify"}, 400, "M_INVALID_PARAM"),
                ("PUT", f"{RULES}/override/.mine", {"actions": []}, 400, "M_INVALID_PARAM"),
                ("PUT", f"{RULES}/override/.m.rule.master", {"actions": []}, 400, "M_INVALID_PARAM"),
                ("PUT", f"{RULES}/override/x%5Cy", {"actions": []}, 400, "M_INVALID_PARAM"),
                ("PUT", f"{RULES}/override/x", {"conditions": []}, 400, "M_MISSING_PARAM"),
                ("PUT", f"{RULES}/override/x", {"actions": [], "conditions": "all"}, 400, "M_INVALID_PARAM"),
                ("PUT", f"{RULES}/override/x", {"actions": [], "conditions": [{"kind": "event_match", "key": 1}]},
                 400, "M_INVALID_PARAM"),
                ("PUT", f"{RULES}/override/x", {"actions": ["notify"] * 50}, 400, "M_INVALID_PARAM"),
                ("PUT", f"{RULES}/content/x", {"actions": []}, 400, "M_MISSING_PARAM"),
                ("PUT", f"{RULES}/content/x", {"actions": [], "pattern": "p" * 5000}, 400, "M_INVALID_PARAM"),
                ("PUT", f"{RULES}/room/x", {"actions": []}, 400, "M_INVALID_PARAM"),
                ("PUT", f"{RULES}/override/x?before=nothing", {"actions": []}, 400, "M_UNKNOWN"),
                ("PUT", f"{RULES}/override/x?after=.m.rule.master", {"actions": []}, 400, "M_UNKNOWN"),
                ("DELETE", f"{RULES}/override/.m.rule.master", None, 400, "M_UNKNOWN"),
                ("DELETE", f"{RULES}/override/nope", None, 404, "M_NOT_FOUND"),
            ]:  # fmt: skip
                got = await alice.request(method, path, body)
                assert got[0] == status and got[1]["errcode"] == errcode, (method, path, body, got)
            assert (await alice.request("PUT", f"{RULES}/override/x", raw=b"{nope"))[1]["errcode"] == "M_NOT_JSON"
            assert (await alice.request("GET", V3 + "/pushrules/", token=False))[0] == 401
            # nothing was stored by the refused writes
            whole = expect(await alice.request("GET", V3 + "/pushrules/"), 200)["global"]
            assert all(r["default"] for kind in whole.values() for r in kind)
            # a user holds a bounded number of rules
            for i in range(200):
                expect(await alice.request("PUT", f"{RULES}/override/r{i}", {"actions": []}), 200)
            expect(await alice.request("PUT", f"{RULES}/override/one-more", {"actions": []}), 400, "M_INVALID_PARAM")
            expect(
                await alice.request("PUT", f"{RULES}/override/r5", {"actions": ["notify"]}), 200
            )  # replacing is fine

    asyncio.run(run())
