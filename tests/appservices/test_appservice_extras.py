"""Application services, the smaller endpoints: third-party lookups, timestamp_to_event, the directory per network.

Before: every one of these was 404 M_UNRECOGNIZED (a client's room directory could not list a bridge's
networks, a bridge importing history could not find where a time falls in a room).
The bridges here are aiohttp servers on loopback; one answers as the spec says, the other as badly as it can
(wrong types, 2 MiB, JSON nested 50,000 deep, NaN, too many entries, no answer at all).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from harness import Client, free_port, gateway_in_loop

from lowband.gateway.api.http import client_thirdparty
from lowband.gateway.appservices import thirdparty
from lowband.gateway.appservices.component import runtime_of
from lowband.gateway.config import RateLimits

V3 = "/_matrix/client/v3"
APP = "/_matrix/app/v1/thirdparty"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _registration(tmp_path: Path, name: str, url: str, protocols: list[str], prefix: str) -> str:
    import yaml

    doc = {"id": name, "url": url, "as_token": f"as-{name}", "hs_token": f"hs-{name}", "sender_localpart": f"{prefix}bot",
           "rate_limited": False, "protocols": protocols,
           "namespaces": {"users": [{"exclusive": True, "regex": f"@{prefix}_.*:localhost"}],
                          "aliases": [{"exclusive": True, "regex": f"#{prefix}_.*:localhost"}]}}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


class FakeBridge:
    """A bridge on loopback answering each path with its handler (404 otherwise); remembers what it was asked."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.seen: list[tuple[str, str | None, dict[str, str]]] = []
        self.release = asyncio.Event()  # lets a handler that "never answers" end before cleanup
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.headers.get("Authorization"), dict(request.query)))
        handler = self.routes.get(request.path)
        if handler is None:
            return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)
        return await handler(request)

    async def start(self) -> FakeBridge:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()

    def asked(self, path: str) -> int:
        return sum(1 for p, _, _ in self.seen if p == path)


def _json(value: Any) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(value)

    return handler


def _text(text: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="application/json")

    return handler


IRC = {"user_fields": ["network", "nickname"], "location_fields": ["network", "channel"], "icon": "mxc://localhost/irc",
       "field_types": {"network": {"regexp": "[a-z.]+", "placeholder": "irc.example.org"},
                       "nickname": {"regexp": "[^\\s]+", "placeholder": "bob"},
                       "channel": {"regexp": "#[^\\s]+", "placeholder": "#matrix"}},
       "instances": [{"desc": "Freenode", "fields": {"network": "freenode"}, "network_id": "freenode"},
                     {"desc": "an instance without network_id"}]}  # fmt: skip
LOCATION = {"alias": "#irc_matrix:localhost", "protocol": "irc",
            "fields": {"network": "freenode", "channel": "#matrix"}}  # fmt: skip
USER = {"userid": "@irc_bob:localhost", "protocol": "irc", "fields": {"network": "freenode", "nickname": "bob"}}


def _hostile_routes(bridge: FakeBridge) -> dict[str, Handler]:
    async def never(request: web.Request) -> web.Response:
        await asyncio.wait_for(bridge.release.wait(), 30)
        return web.json_response({})

    many = [({"alias": f"#bad_{i}:localhost", "protocol": "irc", "fields": {"n": i}} if i % 10
             else {"alias": f"#bad_{i}:localhost", "protocol": "irc", "fields": ["not", "an", "object"]})
            for i in range(150)]  # fmt: skip
    return {
        f"{APP}/protocol/irc": _json({**IRC, "user_fields": "network"}),  # wrong type: the whole answer refused
        f"{APP}/protocol/slow": never,
        f"{APP}/protocol/huge": _json({**IRC, "icon": "x" * (2 * 1024 * 1024)}),
        f"{APP}/protocol/nested": _text("[" * 50_000 + "]" * 50_000),
        f"{APP}/protocol/nan": _text('{"instances": [{"desc": "d", "network_id": "n", "fields": {"v": NaN}}]}'),
        f"{APP}/location/irc": _json(many),  # 150 entries, every tenth of the wrong shape
        f"{APP}/user/irc": _json({"not": "a list"}),
        f"{APP}/user/slow": never,
    }


def test_third_party_lookups_from_a_good_and_a_hostile_bridge(tmp_path, monkeypatch):
    monkeypatch.setattr(thirdparty, "LOOKUP_TIMEOUT_S", 1.0)

    async def main() -> None:
        good = await FakeBridge({f"{APP}/protocol/irc": _json(IRC), f"{APP}/protocol/gitter": _json({}),
                                 f"{APP}/location/irc": _json([LOCATION]), f"{APP}/user/irc": _json([USER]),
                                 f"{APP}/location": _json([LOCATION]), f"{APP}/user": _json([USER])}).start()  # fmt: skip
        bad = FakeBridge({})
        bad.routes = _hostile_routes(bad)
        await bad.start()
        files = [_registration(tmp_path, "ircbridge", good.url, ["irc", "gitter"], "irc"),
                 _registration(tmp_path, "bad", bad.url, ["irc", "slow", "huge", "nested", "nan"], "bad")]  # fmt: skip
        found: list[Any] = []
        try:
            async with gateway_in_loop(tmp_path, rate_limits=RateLimits(enabled=False), on_ready=found.append,
                                       components={"appservices": {"config_files": files}}) as base, \
                    aiohttp.ClientSession() as session:  # fmt: skip
                alice = Client(session, base)
                await alice.register("alice")
                status, body = await Client(session, base).request("GET", f"{V3}/thirdparty/protocols")
                assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")

                started = time.monotonic()
                status, body = await alice.request("GET", f"{V3}/thirdparty/protocols")
                took = time.monotonic() - started
                assert status == 200, body
                # slow, huge, nested and the bad bridge's irc are left out; the good irc stands
                assert sorted(body) == ["gitter", "irc", "nan"], body
                assert took < 1.0 + 1.5, took  # the bridge that never answers costs one timeout
                irc = body["irc"]
                assert irc["user_fields"] == ["network", "nickname"] and irc["icon"] == "mxc://localhost/irc"
                assert irc["instances"] == [{"desc": "Freenode", "fields": {"network": "freenode"},
                                             "network_id": "freenode", "instance_id": "ircbridge|freenode"}]  # fmt: skip
                assert body["gitter"] == {"user_fields": [], "location_fields": [], "icon": "", "field_types": {},
                                          "instances": []}  # fmt: skip
                assert body["nan"]["instances"] == []  # NaN is not JSON: the instance is dropped
                assert all(auth == "Bearer hs-ircbridge" for _, auth, _ in good.seen)
                runtime = runtime_of(found[0])
                assert runtime is not None
                # wrong type, timeout, 2 MiB, nesting, NaN instance; the good bridge's instance without network_id
                assert runtime.thirdparty.refused["bad"] == 5, runtime.thirdparty.refused
                assert runtime.thirdparty.refused["ircbridge"] == 1

                # asked again: answered from what was kept, the dead bridge is not waited for again
                started = time.monotonic()
                status, again = await alice.request("GET", f"{V3}/thirdparty/protocols")
                assert (status, again) == (200, body) and time.monotonic() - started < 0.5
                assert good.asked(f"{APP}/protocol/irc") == 1 and bad.asked(f"{APP}/protocol/slow") == 1

                status, one = await alice.request("GET", f"{V3}/thirdparty/protocol/irc")
                assert (status, one) == (200, irc)
                status, one = await alice.request("GET", f"{V3}/thirdparty/protocol/slow")
                assert (status, one["errcode"]) == (404, "M_NOT_FOUND")
                status, one = await alice.request("GET", f"{V3}/thirdparty/protocol/unknown")
                assert (status, one["errcode"]) == (404, "M_NOT_FOUND")

                # lookups by fields: forwarded without the client's token; bad entries and the excess dropped
                query = f"network=freenode&channel={quote('#matrix')}&access_token={alice.token}"
                status, locations = await alice.request("GET", f"{V3}/thirdparty/location/irc?{query}", token=False)
                assert status == 200, locations
                assert locations[0] == LOCATION and len(locations) == 1 + 90, len(locations)
                assert all(set(entry) == {"alias", "protocol", "fields"} for entry in locations)
                for bridge in (good, bad):
                    asked = [q for p, _, q in bridge.seen if p == f"{APP}/location/irc"]
                    assert asked == [{"network": "freenode", "channel": "#matrix"}], asked
                assert runtime.thirdparty.refused["bad"] == 5 + 60  # 50 past the first 100, 10 of the wrong shape
                status, users = await alice.request("GET", f"{V3}/thirdparty/user/irc?nickname=bob")
                assert (status, users) == (200, [USER])
                started = time.monotonic()
                status, users = await alice.request("GET", f"{V3}/thirdparty/user/slow?nickname=bob")
                assert (status, users["errcode"]) == (404, "M_NOT_FOUND") and time.monotonic() - started < 2.5
                status, users = await alice.request("GET", f"{V3}/thirdparty/user/unknown")
                assert (status, users["errcode"]) == (404, "M_NOT_FOUND")
                many = "&".join(f"f{i}=v" for i in range(21))
                status, users = await alice.request("GET", f"{V3}/thirdparty/user/irc?{many}")
                assert (status, users["errcode"]) == (400, "M_INVALID_PARAM")

                # reverse lookups go only to the bridge whose namespace holds the alias or user
                alias = quote("#irc_matrix:localhost")
                status, locations = await alice.request("GET", f"{V3}/thirdparty/location?alias={alias}")
                assert (status, locations) == (200, [LOCATION])
                assert good.seen[-1][2] == {"alias": "#irc_matrix:localhost"}
                status, users = await alice.request("GET", f"{V3}/thirdparty/user?userid={quote('@irc_bob:localhost')}")
                assert (status, users) == (200, [USER])
                assert not any(p in (f"{APP}/location", f"{APP}/user") for p, _, _ in bad.seen)
                for path, errcode in ((f"location?alias={quote('#other:localhost')}", "M_NOT_FOUND"),
                                      ("location?alias=not-an-alias", "M_INVALID_PARAM"),
                                      ("location", "M_MISSING_PARAM"), ("user?userid=bob", "M_INVALID_PARAM")):  # fmt: skip
                    status, got = await alice.request("GET", f"{V3}/thirdparty/{path}")
                    assert got["errcode"] == errcode and status in (400, 404), (path, status, got)
        finally:
            await good.stop()
            await bad.stop()

    asyncio.run(main())


async def _send(client: Client, room_id: str, text: str) -> str:
    status, body = await client.request("PUT", f"{V3}/rooms/{room_id}/send/m.room.message/{text}",
                                        {"msgtype": "m.text", "body": text})  # fmt: skip
    assert status == 200, body
    return str(body["event_id"])


async def _ts(client: Client, room_id: str, event_id: str) -> int:
    status, body = await client.request("GET", f"{V3}/rooms/{room_id}/event/{event_id}")
    assert status == 200, body
    return int(body["origin_server_ts"])


def test_timestamp_to_event_members_only_and_checked(tmp_path):
    async def main() -> None:
        async with gateway_in_loop(tmp_path, rate_limits=RateLimits(enabled=False)) as base, \
                aiohttp.ClientSession() as session:  # fmt: skip
            alice, bob, carol, dave = (Client(session, base) for _ in range(4))
            for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol"), (dave, "dave")):
                await client.register(name)
            status, body = await alice.request("POST", f"{V3}/createRoom", {"preset": "public_chat"})
            assert status == 200, body
            room = body["room_id"]
            status, body = await alice.request("PUT", f"{V3}/rooms/{room}/state/m.room.history_visibility",
                                               {"history_visibility": "joined"})  # fmt: skip
            assert status == 200, body
            closed_at = body["event_id"]  # before it the room's history was shared with later members
            sent = []
            for i in range(5):
                sent.append(await _send(alice, room, f"m{i}"))
                await asyncio.sleep(0.005)  # distinct milliseconds
            times = [await _ts(alice, room, e) for e in sent]
            assert times == sorted(set(times)), times

            url = f"/_matrix/client/v1/rooms/{room}/timestamp_to_event"

            async def nearest(client: Client, ts: int, direction: str) -> tuple[int, Any]:
                return await client.request("GET", f"{url}?ts={ts}&dir={direction}")

            assert await nearest(alice, times[2], "f") == (200, {"event_id": sent[2], "origin_server_ts": times[2]})
            assert await nearest(alice, times[2], "b") == (200, {"event_id": sent[2], "origin_server_ts": times[2]})
            assert (await nearest(alice, times[2] - 1, "b"))[1]["event_id"] == sent[1]
            assert (await nearest(alice, times[2] + 1, "f"))[1]["event_id"] == sent[3]
            status, body = await nearest(alice, times[4] + 1, "f")
            assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
            status, body = await nearest(alice, 0, "b")
            assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

            # not a member, or an unknown room: 403 and nothing about the events
            for who, target in ((bob, room), (alice, "!unknown:localhost")):
                status, body = await who.request("GET", f"/_matrix/client/v1/rooms/{target}/timestamp_to_event"
                                                        f"?ts={times[2]}&dir=f")  # fmt: skip
                assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
            # bad parameters
            for query, errcode in (("ts=abc&dir=f", "M_INVALID_PARAM"), ("ts=-1&dir=f", "M_INVALID_PARAM"),
                                   ("ts=12.5&dir=b", "M_INVALID_PARAM"), (f"ts={2**53}&dir=f", "M_INVALID_PARAM"),
                                   ("ts=1&dir=x", "M_INVALID_PARAM"), ("ts=1&dir=F", "M_INVALID_PARAM"),
                                   ("dir=f", "M_MISSING_PARAM"), ("ts=1", "M_MISSING_PARAM")):  # fmt: skip
                status, body = await alice.request("GET", f"{url}?{query}")
                assert (status, body["errcode"]) == (400, errcode), (query, body)

            # history_visibility joined: bob, joined later, sees no message before his join: looking back he
            # finds the change to "joined" (shared history before it), looking forward his own join
            status, body = await bob.request("POST", f"{V3}/rooms/{room}/join", {})
            assert status == 200, body
            bob_join = body.get("event_id")
            assert (await nearest(alice, times[2], "b"))[1]["event_id"] == sent[2]
            status, body = await nearest(bob, times[2], "b")
            assert (status, body["event_id"]) == (200, closed_at), body
            status, body = await nearest(bob, times[2], "f")
            assert status == 200 and body["event_id"] not in sent, body
            if bob_join is not None:
                assert body["event_id"] == bob_join

            # carol joins and leaves: what came after she left is not hers to find
            assert (await carol.request("POST", f"{V3}/rooms/{room}/join", {}))[0] == 200
            assert (await carol.request("POST", f"{V3}/rooms/{room}/leave", {}))[0] == 200
            await asyncio.sleep(0.005)
            later = await _send(alice, room, "after-carol")
            later_ts = await _ts(alice, room, later)
            assert (await nearest(alice, later_ts, "f"))[1]["event_id"] == later
            status, body = await nearest(carol, later_ts, "f")
            assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
            status, body = await nearest(carol, later_ts, "b")
            assert status == 200 and body["event_id"] != later, body

            # a world_readable room: anyone may ask
            status, body = await alice.request("POST", f"{V3}/createRoom", {
                "preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                                                             "content": {"history_visibility": "world_readable"}}]})  # fmt: skip
            open_room = body["room_id"]
            event = await _send(alice, open_room, "hello")
            status, body = await dave.request("GET", f"/_matrix/client/v1/rooms/{open_room}/timestamp_to_event"
                                                     f"?ts={await _ts(alice, open_room, event)}&dir=b")  # fmt: skip
            assert (status, body.get("event_id")) == (200, event), body

            # the cost is bounded: only the 100 events nearest ts are looked at, so 120 events bob may not
            # see hide his join from a search from before them (a scan of the whole room would find it)
            status, body = await alice.request("POST", f"{V3}/createRoom", {"preset": "public_chat"})
            big = body["room_id"]
            visibility = {"history_visibility": "joined"}
            await alice.request("PUT", f"{V3}/rooms/{big}/state/m.room.history_visibility", visibility)
            await asyncio.sleep(0.005)  # b0 is the first event at its millisecond
            first = await _send(alice, big, "b0")
            for i in range(1, 120):
                await _send(alice, big, f"b{i}")
            assert (await bob.request("POST", f"{V3}/rooms/{big}/join", {}))[0] == 200
            search = f"/_matrix/client/v1/rooms/{big}/timestamp_to_event?ts={await _ts(alice, big, first)}&dir=f"
            status, body = await bob.request("GET", search)
            assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
            status, body = await alice.request("GET", search)
            assert (status, body["event_id"]) == (200, first), body

            # no bridge registered: the spec's empty answers
            assert await alice.request("GET", f"{V3}/thirdparty/protocols") == (200, {})
            for path in ("protocol/irc", "location/irc?channel=x", "user/irc", "location?alias=%23a%3Alocalhost",
                         "user?userid=%40a%3Alocalhost"):  # fmt: skip
                status, body = await alice.request("GET", f"{V3}/thirdparty/{path}")
                assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), (path, body)
            status, body = await alice.request("PUT", f"{V3}/directory/list/appservice/irc/{room}",
                                               {"visibility": "public"})  # fmt: skip
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
            status, body = await alice.request("POST", f"{V3}/publicRooms", {"third_party_instance_id": "x|irc"})
            assert (status, body["chunk"]) == (200, [])

    asyncio.run(main())


def test_directory_per_network(tmp_path, monkeypatch):
    monkeypatch.setattr(client_thirdparty, "MAX_NETWORK_ROOMS", 3)

    async def main() -> None:
        files = [_registration(tmp_path, "ircbridge", "http://127.0.0.1:9", ["irc"], "irc"),
                 _registration(tmp_path, "other", "http://127.0.0.1:9", ["irc"], "oth")]  # fmt: skip
        async with gateway_in_loop(tmp_path, rate_limits=RateLimits(enabled=False),
                                   components={"appservices": {"config_files": files}}) as base, \
                aiohttp.ClientSession() as session:  # fmt: skip
            bridge, other = Client(session, base, "as-ircbridge"), Client(session, base, "as-other")
            alice = Client(session, base)
            await alice.register("alice")
            portals = []
            for _ in range(5):
                status, body = await bridge.request("POST", f"{V3}/createRoom", {"name": "portal"})
                assert status == 200, body
                portals.append(body["room_id"])
            status, body = await alice.request("POST", f"{V3}/createRoom", {"name": "alice's", "preset": "public_chat"})
            mine = body["room_id"]
            assert (await alice.request("PUT", f"{V3}/directory/list/room/{mine}", {"visibility": "public"}))[0] == 200

            def listing(path: str) -> str:
                return f"{V3}/directory/list/appservice/{path}"

            status, body = await bridge.request("PUT", listing(f"freenode/{portals[0]}"), {"visibility": "public"})
            assert (status, body) == (200, {}), body
            # only a bridge, only for a room it is in, a known room, a checked body
            for who, path, doc, expected in (
                (alice, f"freenode/{portals[1]}", {"visibility": "public"}, (403, "M_FORBIDDEN")),
                (bridge, f"freenode/{mine}", {"visibility": "public"}, (403, "M_FORBIDDEN")),
                (other, f"freenode/{portals[1]}", {"visibility": "public"}, (403, "M_FORBIDDEN")),
                (bridge, "freenode/!nowhere:localhost", {"visibility": "public"}, (404, "M_NOT_FOUND")),
                (bridge, f"freenode/{portals[1]}", {"visibility": "secret"}, (400, "M_INVALID_PARAM")),
                (bridge, f"freenode/{portals[1]}", {}, (400, "M_MISSING_PARAM")),
                (bridge, "freenode/not-a-room", {"visibility": "public"}, (400, "M_INVALID_PARAM")),
            ):  # fmt: skip
                status, body = await who.request("PUT", listing(path), doc)
                assert (status, body.get("errcode")) == expected, (path, body)
            status, body = await alice.request("DELETE", listing(f"freenode/{portals[0]}"))
            assert status == 403

            async def rooms(method: str, query: str = "", doc: Any = None) -> list[str]:
                status, body = await alice.request(method, f"{V3}/publicRooms{query}", doc)
                assert status == 200, body
                return [entry["room_id"] for entry in body["chunk"]]

            assert await rooms("GET") == [mine]  # the server's own directory is unchanged
            assert await rooms("POST", doc={}) == [mine]
            assert await rooms("POST", doc={"third_party_instance_id": "ircbridge|freenode"}) == [portals[0]]
            assert await rooms("GET", "?third_party_instance_id=" + quote("ircbridge|freenode")) == [portals[0]]
            assert await rooms("POST", doc={"third_party_instance_id": "ircbridge|efnet"}) == []
            assert await rooms("POST", doc={"third_party_instance_id": "nobody|freenode"}) == []
            assert sorted(await rooms("POST", doc={"include_all_networks": True})) == sorted([mine, portals[0]])
            assert sorted(await rooms("GET", "?include_all_networks=true")) == sorted([mine, portals[0]])
            for method, query, doc in (("POST", "", {"include_all_networks": True, "third_party_instance_id": "a|b"}),
                                       ("POST", "", {"include_all_networks": "yes"}),
                                       ("POST", "", {"third_party_instance_id": 5}),
                                       ("GET", "?include_all_networks=yes", None)):  # fmt: skip
                status, body = await alice.request(method, f"{V3}/publicRooms{query}", doc)
                assert status == 400 and body["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), (doc, body)

            # at most MAX_NETWORK_ROOMS (3 here) per bridge, counted inside the write: 4 racing PUTs, 2 fit
            results = await asyncio.gather(*(bridge.request("PUT", listing(f"efnet/{room}"), {"visibility": "public"})
                                             for room in portals[1:]))  # fmt: skip
            assert sorted(status for status, _ in results) == [200, 200, 400, 400], results
            assert all(body["errcode"] == "M_LIMIT_EXCEEDED" for status, body in results if status == 400)
            assert len(await rooms("POST", doc={"third_party_instance_id": "ircbridge|efnet"})) == 2
            # listing an already listed room again still works when full; taking one off makes room
            status, _ = await bridge.request("PUT", listing(f"freenode/{portals[0]}"), {"visibility": "public"})
            assert status == 200
            assert (await bridge.request("DELETE", listing(f"freenode/{portals[0]}")))[0] == 200
            assert (await bridge.request("DELETE", listing(f"freenode/{portals[0]}")))[0] == 200  # again: fine
            assert await rooms("POST", doc={"third_party_instance_id": "ircbridge|freenode"}) == []
            listed = await rooms("POST", doc={"third_party_instance_id": "ircbridge|efnet"})
            status, _ = await bridge.request("PUT", listing(f"efnet/{listed[0]}"), {"visibility": "private"})
            assert status == 200
            missing = next(r for r in portals[1:] if r not in listed)
            status, _ = await bridge.request("PUT", listing(f"efnet/{missing}"), {"visibility": "public"})
            assert status == 200
            assert sorted(await rooms("POST", doc={"third_party_instance_id": "ircbridge|efnet"})) == \
                sorted([listed[1], missing])  # fmt: skip

    asyncio.run(main())


@pytest.mark.parametrize("answer", [[], {"instances": "many"}, {"field_types": {"a": "b"}}, {"user_fields": [1]},
                                    {"icon": 7}, {"user_fields": ["x"] * 33}])  # fmt: skip
def test_protocol_answers_of_the_wrong_shape_are_refused(answer):
    with pytest.raises(thirdparty.BadAnswer):
        thirdparty.check_protocol(answer, "b")


def test_instance_ids_name_a_registered_bridge():
    from lowband.gateway.appservices.registration import AppServices, parse_registration

    def bridge(name: str) -> Any:
        return parse_registration({"id": name, "url": None, "as_token": f"a-{name}", "hs_token": f"h-{name}",
                                   "sender_localpart": "bot" + name, "namespaces": {}}, "localhost")  # fmt: skip

    bridges = AppServices([bridge("irc"), bridge("slack")])
    assert thirdparty.parse_instance_id(bridges, thirdparty.instance_id("irc", "libera|chat")) == ("irc", "libera|chat")
    assert thirdparty.parse_instance_id(bridges, "matrix|x") is None
    assert thirdparty.parse_instance_id(bridges, "irc|") is None
    assert json.loads(json.dumps(thirdparty.check_location(LOCATION))) == LOCATION
