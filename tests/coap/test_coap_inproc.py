"""HTTP requests served in memory by a real gateway's aiohttp server (inproc.py), and its pure parts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import Client, expect, in_loop, until

from lowband.gateway.coap.inproc import HttpAnswer, InProcError, InProcessHttp, build_request, parse_response
from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver.services import HTTP_SERVER

from .coap_harness import gateway_services

PEER = ("192.0.2.7", 5683)
HOST = [("Host", "localhost")]


@contextlib.asynccontextmanager
async def served(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Any, str, aiohttp.ClientSession]]:
    """A gateway in this loop; yields (its aiohttp web.Server, base URL, an HTTP session for comparisons)."""
    async with gateway_services(tmp_path, **config) as (services, url), aiohttp.ClientSession() as session:
        yield services.components[HTTP_SERVER], url, session


# ----------------------------------------------------------------------------------------------- pure part


def test_build_request_frames_the_body_and_closes() -> None:
    raw = build_request("PUT", "/a/b?x=1", [("Host", "h"), ("Content-Type", "application/json")], b'{"k":1}')
    assert raw == (b"PUT /a/b?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 7\r\nConnection: close\r\n\r\n{\"k\":1}")  # fmt: skip


@pytest.mark.parametrize("method, target, headers", [
    ("GET", "/ok", [("Authorization", "Bearer a\r\nX-Evil: 1")]),
    ("GET", "/ok", [("Authorization", "Bearer a\nb")]),
    ("GET", "/ok", [("Authorization", "Bearer \0")]),
    ("GET", "/ok", [("Authorization", "Bearer \u20ac")]),
    ("GET", "/ok", [("Bad Name", "x")]),
    ("GET", "/a b", []),
    ("GET", "no-slash", []),
    ("G T", "/ok", []),
])  # fmt: skip
def test_build_request_refuses_what_http_cannot_carry(method: str, target: str, headers: list[tuple[str, str]]) -> None:
    with pytest.raises(InProcError) as caught:
        build_request(method, target, headers, b"")
    assert caught.value.kind == "refused"


def test_parse_response_by_length_chunks_and_close() -> None:
    by_length = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Length: 3\r\n\r\nabcdef")
    assert by_length == HttpAnswer(200, (("content-type", "a/b"), ("content-length", "3")), b"abc")
    assert by_length.header("Content-Type") == "a/b" and by_length.header("x") is None
    chunked = parse_response(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"3;ext=1\r\nabc\r\n0a\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n")  # fmt: skip
    assert chunked.status == 201 and chunked.body == b"abc0123456789"
    assert parse_response(b"HTTP/1.1 200 OK\r\n\r\nto the end").body == b"to the end"
    assert parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").body == b""


@pytest.mark.parametrize("data", [
    b"",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n",  # no end of headers
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nab\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
])  # fmt: skip
def test_parse_response_refuses_malformed_answers(data: bytes) -> None:
    with pytest.raises(InProcError) as caught:
        parse_response(data)
    assert caught.value.kind == "malformed"


# -------------------------------------------------------------------------------------- against a gateway


@in_loop
async def test_in_memory_answer_equals_the_tcp_answer(tmp_path: Path) -> None:
    async with served(tmp_path) as (server, url, session):
        http = InProcessHttp(server)
        answer = await http.request("GET", "/_matrix/client/versions", HOST, b"", PEER)
        over_tcp = expect(await Client(session, url).request("GET", "/_matrix/client/versions"), 200)
        tcp_only = len(server.connections)  # the session's kept-alive TCP connection
        assert answer.status == 200 and (answer.header("content-type") or "").startswith("application/json")
        assert json.loads(answer.body) == over_tcp
        assert answer.header("connection") == "close"
        # many requests at once, and no in-memory connection left behind
        answers = await asyncio.gather(*(http.request("GET", "/_matrix/client/versions", HOST, b"", PEER)
                                         for _ in range(20)))  # fmt: skip
        assert {a.body for a in answers} == {answer.body}
        await until(lambda: len(server.connections) == tcp_only, timeout=5)


@in_loop
async def test_bodies_auth_and_errors_reach_the_handlers(tmp_path: Path) -> None:
    async with served(tmp_path) as (server, _url, _session):
        http = InProcessHttp(server)
        register = json.dumps({"username": "alice", "password": "pw-pw-pw", "auth": {"type": "m.login.dummy"}})
        json_type = [*HOST, ("Content-Type", "application/json")]
        made = await http.request("POST", "/_matrix/client/v3/register", json_type, register.encode(), PEER)
        assert made.status == 200, made.body
        token = json.loads(made.body)["access_token"]
        auth = [*HOST, ("Authorization", f"Bearer {token}")]
        whoami = await http.request("GET", "/_matrix/client/v3/account/whoami", auth, b"", PEER)
        assert json.loads(whoami.body)["user_id"] == "@alice:localhost"
        unknown = await http.request("GET", "/_matrix/client/v3/account/whoami",
                                     [*HOST, ("Authorization", "Bearer nope")], b"", PEER)  # fmt: skip
        assert unknown.status == 401 and json.loads(unknown.body)["errcode"] == "M_UNKNOWN_TOKEN"
        not_json = await http.request("POST", "/_matrix/client/v3/createRoom", [*auth, ("Content-Type", "x")], b"{",
                                      PEER)  # fmt: skip
        assert not_json.status == 400 and json.loads(not_json.body)["errcode"] == "M_NOT_JSON"


@in_loop
async def test_file_responses_cannot_be_served_in_memory(tmp_path: Path) -> None:
    """aiohttp sends a FileResponse (media downloads) with the loop's sendfile, which refuses any transport
    but asyncio's own (it reads a private attribute of theirs). So such an answer arrives cut short, and
    is refused as malformed; the CoAP mapping does not pass media paths on (MSC3079 leaves media to HTTP).
    If this starts to work, media over CoAP becomes possible."""
    async with served(tmp_path) as (server, url, session):
        client = Client(session, url)
        await client.register("alice")
        content = bytes(range(256)) * 4
        uploaded = expect(await client.request("POST", "/_matrix/media/v3/upload", raw=content,
                                               headers={"Content-Type": "application/octet-stream"}), 200)  # fmt: skip
        server_name, media_id = uploaded["content_uri"][len("mxc://") :].split("/")
        http = InProcessHttp(server)
        auth = [*HOST, ("Authorization", f"Bearer {client.token}")]
        with pytest.raises(InProcError) as caught:
            await http.request("GET", f"/_matrix/client/v1/media/download/{server_name}/{media_id}", auth, b"", PEER)
        assert caught.value.kind == "malformed"


@in_loop
async def test_the_peer_address_is_the_client_address_for_rate_limits(tmp_path: Path) -> None:
    limits = RateLimits(per_ip_per_s=0.01, per_ip_burst=2)
    async with served(tmp_path, rate_limits=limits) as (server, _url, _session):
        http = InProcessHttp(server)
        json_type = [*HOST, ("Content-Type", "application/json")]
        statuses = []
        for n in range(4):
            body = json.dumps({"username": f"u{n}", "password": "pw-pw-pw", "auth": {"type": "m.login.dummy"}})
            made = await http.request("POST", "/_matrix/client/v3/register", json_type, body.encode(), ("192.0.2.1", 1))
            statuses.append(made.status)
        assert statuses[0] == 200 and statuses[-1] == 429
        body = json.dumps({"username": "other", "password": "pw-pw-pw", "auth": {"type": "m.login.dummy"}})
        elsewhere = await http.request("POST", "/_matrix/client/v3/register", json_type, body.encode(),
                                       ("192.0.2.2", 1))  # fmt: skip
        assert elsewhere.status == 200


@in_loop
async def test_a_response_over_the_cap_is_cut(tmp_path: Path) -> None:
    async with served(tmp_path) as (server, _url, _session):
        http = InProcessHttp(server, max_response_bytes=120)
        with pytest.raises(InProcError) as caught:
            await http.request("GET", "/_matrix/client/versions", HOST, b"", PEER)
        assert caught.value.kind == "too_large"
        await until(lambda: server.connections == [], timeout=5)
        http.max_response_bytes = 4096
        assert (await http.request("GET", "/_matrix/client/versions", HOST, b"", PEER)).status == 200


@in_loop
async def test_an_answer_that_does_not_come_in_time_is_a_timeout(tmp_path: Path) -> None:
    async with served(tmp_path) as (server, url, session):
        client = Client(session, url)
        await client.register("alice")
        since = expect(await client.request("GET", "/_matrix/client/v3/sync"), 200)["next_batch"]
        tcp_only = len(server.connections)
        http = InProcessHttp(server, timeout_s=0.3)
        auth = [*HOST, ("Authorization", f"Bearer {client.token}")]
        started = time.monotonic()
        with pytest.raises(InProcError) as caught:  # a long poll that nothing wakes
            await http.request("GET", f"/_matrix/client/v3/sync?since={since}&timeout=1500", auth, b"", PEER)
        assert caught.value.kind == "timeout" and time.monotonic() - started < 1.2
        # aiohttp lets a handler whose client went away finish (handler_cancellation is off), as over TCP:
        # the abandoned /sync ends at its own timeout, and its connection goes with it
        await until(lambda: len(server.connections) == tcp_only, timeout=8)
        # a per-request bound overrides the default one
        quick = await http.request("GET", f"/_matrix/client/v3/sync?since={since}&timeout=500", auth, b"", PEER,
                                   timeout_s=10)  # fmt: skip
        assert quick.status == 200


@in_loop
async def test_cancelling_the_caller_returns_at_once(tmp_path: Path) -> None:
    async with served(tmp_path) as (server, url, session):
        client = Client(session, url)
        await client.register("alice")
        since = expect(await client.request("GET", "/_matrix/client/v3/sync"), 200)["next_batch"]
        tcp_only = len(server.connections)
        http = InProcessHttp(server)
        auth = [*HOST, ("Authorization", f"Bearer {client.token}")]
        task = asyncio.create_task(http.request("GET", f"/_matrix/client/v3/sync?since={since}&timeout=1500", auth,
                                                b"", PEER))  # fmt: skip
        await until(lambda: len(server.connections) == tcp_only + 1, timeout=5)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 0.5
        await until(lambda: len(server.connections) == tcp_only, timeout=8)  # the handler ends on its own bound
