"""CoAP requests served by a real gateway's HTTP API through mapping.Gateway: paths, CBOR, tokens, codes."""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from harness import Client, expect, in_loop

from lowband.codecs import cbor, coap, msc3079
from lowband.gateway.coap.exchange import CoapRequest, CoapResponse, Peer
from lowband.gateway.coap.mapping import Gateway, _http_query, coap_code, next_batch, with_query
from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver.services import COAP_VERSIONS, HTTP_SERVER

from .coap_harness import gateway_services

PASSWORD = "secret-pw"


@contextlib.asynccontextmanager
async def coap_gateway(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Gateway, Any, str]]:
    """A gateway in this loop and the CoAP mapping over its HTTP server; yields (mapping, services, url)."""
    async with gateway_services(tmp_path, **config) as (services, url):
        yield Gateway(services, services.components[HTTP_SERVER]), services, url


def peer(host: str = "127.0.0.1", port: int = 40000, **kwargs: Any) -> Peer:
    return Peer(address=f"udp:{host}:{port}", host=host, port=port, **kwargs)


def decoded(resp: CoapResponse) -> Any:
    """The body as sent: CBOR with its integer keys kept, or JSON."""
    if resp.content_format == coap.FORMAT_JSON:
        return json.loads(resp.body)
    assert resp.content_format == coap.FORMAT_CBOR, resp
    return cbor.loads(resp.body, strict=False)


async def register(gw: Gateway, name: str) -> tuple[str, str]:
    """Register ``name`` by code 4 with an integer-key CBOR body; (user_id, access_token)."""
    body = msc3079.encode({"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}})
    resp = await gw.handle(CoapRequest("POST", ("4",), body=body, content_format=coap.FORMAT_CBOR), peer())
    assert resp.code == coap.CHANGED, decoded(resp)
    document = decoded(resp)
    return document[7], document[73]  # user_id, access_token: integer keys because the request used them


@in_loop
async def test_register_and_login_by_code_with_cbor_bodies(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path) as (gw, services, _url):
        user_id, token = await register(gw, "alice")
        assert user_id == "@alice:localhost" and services.store.lookup_token(token)[0] == user_id
        # a client that sends string keys and negotiated nothing gets string keys back
        login = cbor.dumps({"type": "m.login.password", "password": PASSWORD,
                            "identifier": {"type": "m.id.user", "user": "alice"}})  # fmt: skip
        resp = await gw.handle(CoapRequest("POST", ("1",), body=login), peer())  # no Content-Format: CBOR
        assert resp.code == coap.CHANGED and resp.content_format == coap.FORMAT_CBOR
        document = decoded(resp)
        assert document["user_id"] == user_id and 73 not in document
        assert services.store.lookup_token(document["access_token"])[0] == user_id
        # a wrong password is the HTTP API's 403 M_FORBIDDEN, as 4.03
        bad = cbor.dumps({"type": "m.login.password", "password": "nope",
                          "identifier": {"type": "m.id.user", "user": "alice"}})  # fmt: skip
        refused = await gw.handle(CoapRequest("POST", ("1",), body=bad, content_format=coap.FORMAT_CBOR), peer())
        assert refused.code == coap.FORBIDDEN and decoded(refused)["errcode"] == "M_FORBIDDEN"


@in_loop
async def test_room_flow_by_codes_and_the_same_event_over_http(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path) as (gw, _services, url):
        _user, token = await register(gw, "alice")
        client = peer(port=40001)
        created = await gw.handle(CoapRequest("POST", ("G",), body=msc3079.encode({"name": "lowband"}),
                                              auth="Bearer " + token, cbor_version=1), client)  # fmt: skip
        assert created.code == coap.CHANGED, decoded(created)
        room_id = decoded(created)[5]
        assert client.token == token  # "Bearer " removed, and kept for the next requests

        message = msc3079.encode({"msgtype": "m.text", "body": "hello over coap"})
        sent = await gw.handle(CoapRequest("PUT", ("9", room_id, "m.room.message", "t1"), body=message), client)
        assert sent.code == coap.CHANGED, decoded(sent)
        event_id = decoded(sent)[1]
        again = await gw.handle(CoapRequest("PUT", ("9", room_id, "m.room.message", "t1"), body=message), client)
        assert decoded(again)[1] == event_id  # same transaction ID, same event (the HTTP API's idempotence)

        synced = await gw.handle(CoapRequest("GET", ("7",)), client)
        assert synced.code == coap.CONTENT
        body = decoded(synced)
        timeline = body[23][24][room_id][12][13]  # rooms.join[room].timeline.events
        assert any(e.get(1) == event_id and e[3][27] == "hello over coap" for e in timeline)
        since = next_batch(synced)
        assert since is not None and since == body[19]

        # the next sync from that token, as an OBSERVE loop would make it, holds only what came after
        second = msc3079.encode({"msgtype": "m.text", "body": "second"})
        await gw.handle(CoapRequest("PUT", ("9", room_id, "m.room.message", "t2"), body=second), client)
        later = await gw.handle(with_query(CoapRequest("GET", ("7",)), since=since, timeout=1000), client)
        events = decoded(later)[23][24][room_id][12][13]
        assert [e[3][27] for e in events] == ["second"]

        messages = await gw.handle(CoapRequest("GET", ("E", room_id), query=("dir=b", "limit=10")), client)
        assert messages.code == coap.CONTENT
        chunk = decoded(messages)[91]
        assert [e[3][27] for e in chunk if e[2] == "m.room.message"] == ["second", "hello over coap"]

        async with aiohttp.ClientSession() as session:
            over_http = Client(session, url, token)
            path = f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=10"
            seen = expect(await over_http.request("GET", path), 200)["chunk"]
        by_id = {e["event_id"]: e for e in seen}
        assert by_id[event_id]["content"] == {"msgtype": "m.text", "body": "hello over coap"}


@in_loop
async def test_error_mapping(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path, max_request_bytes=2048) as (gw, _services, _url):
        versioned = peer(cbor_version=1)
        unknown = await gw.handle(CoapRequest("GET", ("7",), auth="not-a-token"), versioned)
        assert unknown.code == coap.UNAUTHORIZED and decoded(unknown)[102] == "M_UNKNOWN_TOKEN"
        plain = await gw.handle(CoapRequest("GET", ("7",), auth="not-a-token"), peer())
        assert plain.code == coap.UNAUTHORIZED and decoded(plain)["errcode"] == "M_UNKNOWN_TOKEN"

        no_code = await gw.handle(CoapRequest("GET", ("v",)), versioned)
        assert no_code.code == coap.NOT_FOUND and decoded(no_code)[102] == "M_UNRECOGNIZED"
        count = await gw.handle(CoapRequest("PUT", ("9", "!r:localhost")), versioned)
        assert count.code == coap.BAD_REQUEST and decoded(count)[102] == "M_UNRECOGNIZED"
        unrouted = await gw.handle(CoapRequest("GET", ("_matrix", "client", "v3", "nothing-here")), versioned)
        assert unrouted.code == coap.NOT_FOUND

        bad_cbor = await gw.handle(CoapRequest("POST", ("4",), body=b"\xa1\x01", content_format=60), versioned)
        assert bad_cbor.code == coap.BAD_REQUEST and decoded(bad_cbor)[102] == "M_NOT_JSON"
        unknown_key = await gw.handle(CoapRequest("POST", ("4",), body=cbor.dumps({999: 1})), versioned)
        assert unknown_key.code == coap.BAD_REQUEST and decoded(unknown_key)[102] == "M_NOT_JSON"
        bad_json = await gw.handle(CoapRequest("POST", ("4",), body=b"{nope", content_format=50), versioned)
        assert bad_json.code == coap.BAD_REQUEST and json.loads(bad_json.body)["errcode"] == "M_NOT_JSON"

        big = msc3079.encode({"username": "x" * 3000})
        too_large = await gw.handle(CoapRequest("POST", ("4",), body=big), versioned)
        assert too_large.code == coap.REQUEST_ENTITY_TOO_LARGE and decoded(too_large)[102] == "M_TOO_LARGE"
        text = await gw.handle(CoapRequest("POST", ("4",), body=b"hi", content_format=coap.FORMAT_TEXT), versioned)
        assert text.code == coap.UNSUPPORTED_CONTENT_FORMAT
        not_acceptable = await gw.handle(CoapRequest("GET", ("0",), accept=coap.FORMAT_TEXT), versioned)
        assert not_acceptable.code == coap.NOT_ACCEPTABLE
        injected = await gw.handle(CoapRequest("GET", ("7",), auth="abc\r\nX-Evil: 1"), peer())
        assert injected.code == coap.BAD_REQUEST


@in_loop
async def test_json_requests_are_answered_in_json_unless_cbor_is_accepted(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path) as (gw, _services, _url):
        body = json.dumps({"username": "bob", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}).encode()
        resp = await gw.handle(CoapRequest("POST", ("4",), body=body, content_format=coap.FORMAT_JSON), peer())
        assert resp.code == coap.CHANGED and resp.content_format == coap.FORMAT_JSON
        token = json.loads(resp.body)["access_token"]
        as_cbor = await gw.handle(CoapRequest("GET", ("I",), auth=token, accept=coap.FORMAT_CBOR), peer())
        assert as_cbor.content_format == coap.FORMAT_CBOR and decoded(as_cbor) == {"joined_rooms": []}
        as_json = await gw.handle(CoapRequest("GET", ("I",), accept=coap.FORMAT_JSON), peer(port=2, token=token))
        assert as_json.content_format == coap.FORMAT_JSON and json.loads(as_json.body) == {"joined_rooms": []}


@in_loop
async def test_tokens_are_sticky_per_peer(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path) as (gw, _services, _url):
        alice_id, alice = await register(gw, "alice")
        bob_id, bob = await register(gw, "bob")
        client = peer()
        whoami = ("_matrix", "client", "v3", "account", "whoami")
        first = await gw.handle(CoapRequest("GET", whoami, auth=alice), client)
        assert decoded(first)["user_id"] == alice_id
        kept = await gw.handle(CoapRequest("GET", whoami), client)
        assert decoded(kept)["user_id"] == alice_id  # no option: the last token still holds
        other = await gw.handle(CoapRequest("GET", whoami, auth="Bearer " + bob), client)
        assert decoded(other)["user_id"] == bob_id and client.token == bob  # the latest option replaces it
        assert decoded(await gw.handle(CoapRequest("GET", whoami), client))["user_id"] == bob_id
        # another connection has its own (no) token
        fresh = await gw.handle(CoapRequest("GET", whoami), peer(port=40009))
        assert fresh.code == coap.UNAUTHORIZED and decoded(fresh)["errcode"] == "M_MISSING_TOKEN"
        # ?access_token= still works, as over HTTP
        by_query = await gw.handle(CoapRequest("GET", whoami, query=(f"access_token={alice}",)), peer(port=40010))
        assert decoded(by_query)["user_id"] == alice_id
        # an empty option clears the sticky token
        cleared = await gw.handle(CoapRequest("GET", whoami, auth=""), client)
        assert cleared.code == coap.UNAUTHORIZED and client.token is None


@in_loop
async def test_key_table_version_is_negotiated_and_sticky(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path) as (gw, _services, _url):
        user_id, token = await register(gw, "alice")
        whoami = ("_matrix", "client", "r0", "account", "whoami")
        client = peer(token=token)
        assert "user_id" in decoded(await gw.handle(CoapRequest("GET", whoami), client))
        assert decoded(await gw.handle(CoapRequest("GET", whoami, cbor_version=1), client))[7] == user_id
        assert decoded(await gw.handle(CoapRequest("GET", whoami), client))[7] == user_id  # sticky
        assert decoded(await gw.handle(CoapRequest("GET", whoami, cbor_version=0), client))["user_id"] == user_id
        assert client.cbor_version is None
        # a later table version only adds keys: version 1 keys are answered
        assert decoded(await gw.handle(CoapRequest("GET", whoami, cbor_version=4), client))[7] == user_id
        assert client.cbor_version == 1


@in_loop
async def test_versions_advertises_low_bandwidth_only_with_coap_running(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path) as (gw, services, url):
        plain = decoded(await gw.handle(CoapRequest("GET", ("0",), cbor_version=1), peer()))
        assert "r0.6.1" in plain[100] and "m.low_bandwidth" not in plain  # versions is key 100
        advert = {"coap": 5683, "cbor_enum_version": 1, "coap_enum_version": 1, "observe": 1}
        services.components[COAP_VERSIONS] = advert
        body = decoded(await gw.handle(CoapRequest("GET", ("0",)), peer()))
        assert body["m.low_bandwidth"] == advert and body["org.matrix.msc3079.low_bandwidth"] == advert
        async with aiohttp.ClientSession() as session:
            over_http = expect(await Client(session, url).request("GET", "/_matrix/client/versions"), 200)
        assert over_http["m.low_bandwidth"] == advert


@in_loop
async def test_rate_limits_count_per_coap_address(tmp_path: Path) -> None:
    limits = RateLimits(per_ip_per_s=0.01, per_ip_burst=3, per_user_per_s=100, per_user_burst=1000)
    async with coap_gateway(tmp_path, rate_limits=limits) as (gw, _services, _url):
        # registration takes from the per-address bucket too: register from addresses of their own
        body = msc3079.encode({"username": "alice", "password": PASSWORD, "auth": {"type": "m.login.dummy"}})
        token = decoded(await gw.handle(CoapRequest("POST", ("4",), body=body), peer("10.0.0.9")))[73]
        created = await gw.handle(CoapRequest("POST", ("G",), body=cbor.dumps({}), auth=token), peer("10.0.0.8"))
        room_id = decoded(created)["room_id"]  # string keys: nothing asked for integer ones
        noisy = peer("10.0.0.1", token=token)
        codes = []
        for n in range(6):
            message = msc3079.encode({"msgtype": "m.text", "body": str(n)})
            resp = await gw.handle(CoapRequest("PUT", ("9", room_id, "m.room.message", f"n{n}"), body=message), noisy)
            codes.append(resp.code)
        assert codes[0] == coap.CHANGED and codes[-1] == coap.TOO_MANY_REQUESTS
        assert resp.max_age is not None and resp.max_age >= 1 and decoded(resp)[102] == "M_LIMIT_EXCEEDED"
        message = msc3079.encode({"msgtype": "m.text", "body": "quiet"})
        calm = await gw.handle(CoapRequest("PUT", ("9", room_id, "m.room.message", "q"), body=message),
                               peer("10.0.0.2", token=token))  # fmt: skip
        assert calm.code == coap.CHANGED  # another address has its own bucket


@in_loop
async def test_unexpected_failures_are_500_and_logged(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path) as (gw, _services, _url):

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom")

        gw.http.request = broken  # type: ignore[method-assign]
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logger = logging.getLogger("lowband.gateway.coap.mapping")
        logger.addHandler(handler)
        try:
            resp = await gw.handle(CoapRequest("GET", ("0",)), peer())
        finally:
            logger.removeHandler(handler)
        assert resp.code == coap.INTERNAL_SERVER_ERROR and decoded(resp)["errcode"] == "M_UNKNOWN"
        assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in records)


def test_status_table() -> None:
    assert coap_code(200, "GET") == coap.CONTENT
    assert coap_code(200, "PUT") == coap.CHANGED and coap_code(200, "POST") == coap.CHANGED
    assert coap_code(200, "DELETE") == coap.DELETED
    assert coap_code(201, "POST") == coap.CREATED
    pairs = {400: (4, 0), 401: (4, 1), 403: (4, 3), 404: (4, 4), 405: (4, 5), 406: (4, 6), 409: (4, 9),
             413: (4, 13), 415: (4, 15), 429: (4, 29), 500: (5, 0), 501: (5, 1), 502: (5, 2), 503: (5, 3),
             504: (5, 4), 408: (4, 0), 418: (4, 0), 599: (5, 0), 302: (5, 2)}  # fmt: skip
    for status, (klass, detail) in pairs.items():
        assert coap_code(status, "GET") == coap.code(klass, detail), status


def test_next_batch_and_with_query() -> None:
    assert next_batch(CoapResponse(coap.CONTENT, cbor.dumps({19: "s1"}), coap.FORMAT_CBOR)) == "s1"
    assert next_batch(CoapResponse(coap.CONTENT, cbor.dumps({"next_batch": "s2", 19: "x"}))) == "s2"
    assert next_batch(CoapResponse(coap.CONTENT, b'{"next_batch": "s3"}', coap.FORMAT_JSON)) == "s3"
    assert next_batch(CoapResponse(coap.CONTENT, b"\xff", coap.FORMAT_CBOR)) is None
    assert next_batch(CoapResponse(coap.UNAUTHORIZED, cbor.dumps({19: "s1"}), coap.FORMAT_CBOR)) is None
    assert next_batch(CoapResponse(coap.CONTENT, cbor.dumps([1]), coap.FORMAT_CBOR)) is None
    req = CoapRequest("GET", ("7",), query=("filter=0", "since=old", "timeout=5"))
    moved = with_query(req, since="new", timeout=30000)
    assert moved.query == ("filter=0", "since=new", "timeout=30000") and moved.path == ("7",)
    assert req.query == ("filter=0", "since=old", "timeout=5")


@pytest.mark.parametrize("value", ["a b&c=d", "ü/é", "%41"])
def test_query_values_are_percent_encoded(value: str) -> None:
    encoded = _http_query((f"k={value}", "flag"))
    assert parse_qsl(encoded[1:], keep_blank_values=True) == [("k", value), ("flag", "")]


@in_loop
async def test_only_the_client_api_without_media_is_served(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path) as (gw, _services, _url):
        _user, token = await register(gw, "alice")
        client = peer(token=token)
        for path in (("_matrix", "media", "v3", "config"), ("_matrix", "client", "v1", "media", "config"),
                     ("_matrix", "key", "v2", "server"), ("_matrix", "federation", "v1", "version")):  # fmt: skip
            resp = await gw.handle(CoapRequest("GET", path), client)
            assert resp.code == coap.NOT_FOUND and decoded(resp)["errcode"] == "M_UNRECOGNIZED", path
        # the same handlers answer over HTTP: it is the mapping that keeps them away
        assert (await gw.handle(CoapRequest("GET", ("2",)), client)).code == coap.CONTENT


@in_loop
async def test_path_parameters_arrive_exactly_as_sent(tmp_path: Path) -> None:
    """Uri-Path segments are raw text: '/', '%', '?', '#', spaces, non-ASCII and the empty string stay themselves."""
    async with coap_gateway(tmp_path) as (gw, _services, _url):
        _user, token = await register(gw, "alice")
        client = peer(token=token)
        room_id = decoded(await gw.handle(CoapRequest("POST", ("G",), body=cbor.dumps({})), client))["room_id"]
        keys = ["a/b", "ü é", "%2F", "?x=1#y", "", "..."]
        for key in keys:
            put = await gw.handle(CoapRequest("PUT", ("8", room_id, "org.test", key), body=cbor.dumps({"k": key})),
                                  client)  # fmt: skip
            assert put.code == coap.CHANGED, decoded(put)
            got = await gw.handle(CoapRequest("GET", ("8", room_id, "org.test", key)), client)
            assert got.code == coap.CONTENT and decoded(got) == {"k": key}
        state = decoded(await gw.handle(CoapRequest("GET", ("B", room_id)), client))
        assert sorted(e["state_key"] for e in state if e["type"] == "org.test") == sorted(keys)


@in_loop
async def test_garbage_requests_get_answers_not_exceptions(tmp_path: Path) -> None:
    """A fixed-seed stream of odd requests: each gets a CoAP answer with a body that decodes, none raises."""
    rng = random.Random(3079)
    async with coap_gateway(tmp_path) as (gw, _services, _url):
        _user, token = await register(gw, "alice")
        pieces = ["", "0", "9", "E", "n", "_matrix", "client", "v3", "r0", "sync", "..", "\x00", "ü", "a b", "%",
                  "!r:localhost", "$e", "rooms", "send", "x" * 300]  # fmt: skip
        bodies = [b"", b"\xff", b"\xa1\x01\x02", cbor.dumps({"a": [1, 2.5, None, True]}), cbor.dumps([1]),
                  msc3079.encode({"body": "hi", "msgtype": "m.text"}), b"{}", b"\x9f\xff", bytes(range(40))]  # fmt: skip
        room_id = decoded(await gw.handle(CoapRequest("POST", ("G",), body=cbor.dumps({}), auth=token), peer()))
        room_id = room_id["room_id"]
        valid = [("0",), ("7",), ("I",), ("E", room_id), ("B", room_id), ("9", room_id, "m.room.message"),
                 ("8", room_id, "org.test"), ("n",), ("_matrix", "client", "v3", "account", "whoami")]  # fmt: skip
        queries = ["", "=", "a=b", "timeout=0", "limit=-1", "since=\r\n", "dir=b"]
        codes = []
        for _ in range(300):
            if rng.random() < 0.5:
                path = tuple(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
            else:  # a real path, with one more random parameter where it takes one
                path = rng.choice(valid)
                path = (*path, rng.choice(pieces)) if path[0] in "98" else path
            req = CoapRequest(
                rng.choice(["GET", "GET", "POST", "PUT", "PUT", "DELETE", "PATCH"]),
                path,
                query=tuple(rng.choice(queries) for _ in range(rng.randint(0, 2))),
                body=rng.choice(bodies),
                content_format=rng.choice([None, 0, 50, 60, 65000]),
                accept=rng.choice([None, None, None, 50, 60, 1]),
                auth=rng.choice([None, token, "Bearer " + token, "", "\r\n"]),
                cbor_version=rng.choice([None, 0, 1, 2, 2**32]),
            )
            resp = await gw.handle(req, peer(port=rng.randint(1, 5)))
            assert coap.code(2, 0) <= resp.code < coap.code(6, 0), (req, resp)
            if resp.body:
                assert decoded(resp) is not None
            assert resp.code != coap.INTERNAL_SERVER_ERROR, (req, resp, decoded(resp))
            codes.append(resp.code >> 5)
        assert codes.count(2) >= 5 and codes.count(4) > 100  # the stream reached handlers, not only refusals


def test_a_long_poll_gets_a_time_bound_past_its_own_timeout() -> None:
    """An OBSERVE loop's /sync may wait longer than the in-memory default (120 s): its bound follows its timeout."""
    from lowband.gateway.coap.mapping import _time_bound

    assert _time_bound(("since=s1", "timeout=300000"), 120.0) == 330.0
    assert _time_bound(("timeout=1000",), 120.0) == 120.0  # never below the default
    assert _time_bound(("timeout=soon", "full_state=true"), 120.0) == 120.0  # not a number: the default
    assert _time_bound(("timeout=" + "9" * 40,), 120.0) == 120.0  # absurd: the default, and /sync refuses it
