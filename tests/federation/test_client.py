"""The outbound federation client against a real HTTPS server on loopback (aiohttp, self-signed)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aiohttp import web
from harness import free_port

from lowband.gateway.config import DEFAULT_IP_RANGE_BLOCKLIST, FederationConfig
from lowband.gateway.federation.client import FederationClient, FederationError, PeerUnreachable
from lowband.gateway.matrix.request_auth import parse_authorization, verify_request
from lowband.gateway.matrix.signing import SigningKey
from lowband.sim.tls import self_signed

KEY = SigningKey.from_seed(bytes(range(32)), "k1")


async def _serve(tmp_path, handler):
    cert, key = self_signed(tmp_path, ["127.0.0.1", "peer.test"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner, port


def run_against(tmp_path, handler, scenario):
    async def main():
        runner, port = await _serve(tmp_path, handler)
        try:
            return await scenario(port)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def client(**config):
    settings = {"verify_certificates": False, "ip_range_blocklist": ()}
    settings.update(config)
    return FederationClient("origin.test", KEY, FederationConfig(**settings))


def test_a_signed_request_arrives_verifiable_and_its_answer_comes_back(tmp_path):
    seen = {}

    async def handler(request):
        body = await request.json() if request.can_read_body else None
        auth = parse_authorization(request.headers.get("Authorization"))
        verify_request(auth, request.method, request.path_qs, request.host, body, KEY.verify_key_bytes)
        seen.update(host=request.host, path=request.path_qs, origin=auth.origin)
        return web.json_response({"ok": True, "got": body})

    async def scenario(port):
        fed = client()
        try:
            return await fed.request(f"127.0.0.1:{port}", "PUT", "/_matrix/federation/v1/send/t%201",
                                     query={"a": ["1", "2"]}, body={"pdus": []})  # fmt: skip
        finally:
            await fed.close()

    answer = run_against(tmp_path, handler, scenario)
    assert answer == {"ok": True, "got": {"pdus": []}}
    assert seen["origin"] == "origin.test" and seen["path"] == "/_matrix/federation/v1/send/t%201?a=1&a=2"


def test_the_blocklist_refuses_loopback_unless_the_peer_was_named(tmp_path):
    hits = []

    async def handler(request):
        hits.append(request.host)
        return web.json_response({})

    async def scenario(port):
        fed = client(ip_range_blocklist=DEFAULT_IP_RANGE_BLOCKLIST, peers={"peer.test": f"127.0.0.1:{port}"})
        try:
            with pytest.raises(FederationError) as refused:
                await fed.request(f"127.0.0.1:{port}", "GET", "/_matrix/federation/v1/version")
            assert refused.value.status == 0 and refused.value.errcode == "M_FORBIDDEN"
            assert not isinstance(refused.value, PeerUnreachable)
            await fed.request("peer.test", "GET", "/_matrix/federation/v1/version")
        finally:
            await fed.close()

    run_against(tmp_path, handler, scenario)
    assert hits == ["peer.test"]  # only the named peer was contacted, with its server name as Host


def test_certificates_are_verified_by_default(tmp_path):
    async def handler(request):
        return web.json_response({})

    async def scenario(port):
        fed = client(verify_certificates=True)
        try:
            with pytest.raises(PeerUnreachable, match="SSL|certificate"):
                await fed.request(f"127.0.0.1:{port}", "GET", "/x")
        finally:
            await fed.close()

    run_against(tmp_path, handler, scenario)


@pytest.mark.parametrize(
    ("reply", "kind", "errcode"),
    [
        (lambda: web.json_response({"errcode": "M_FORBIDDEN", "error": "no"}, status=403), FederationError, "M_FORBIDDEN"),
        (lambda: web.json_response({"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 50}, status=429), PeerUnreachable,
         "M_LIMIT_EXCEEDED"),
        (lambda: web.Response(status=502, text="bad gateway"), PeerUnreachable, "M_UNKNOWN"),
        (lambda: web.Response(status=200, text="<html>"), FederationError, "M_NOT_JSON"),
        (lambda: web.Response(status=200, body=b"[" + b"0," * 40_000 + b"0]"), FederationError, "M_TOO_LARGE"),
    ],
)
def test_bad_answers_become_one_error_type(tmp_path, reply, kind, errcode):
    async def handler(request):
        return reply()

    async def scenario(port):
        fed = client()
        try:
            with pytest.raises(FederationError) as failed:
                await fed.request(f"127.0.0.1:{port}", "GET", "/x", max_bytes=50_000)
            return failed.value
        finally:
            await fed.close()

    error = run_against(tmp_path, handler, scenario)
    assert type(error) is kind and error.errcode == errcode


def test_a_silent_peer_times_out_and_a_closed_port_is_unreachable(tmp_path):
    async def handler(request):
        await asyncio.sleep(1.5)
        return web.json_response({})

    async def scenario(port):
        fed = client()
        try:
            with pytest.raises(PeerUnreachable):
                await fed.request(f"127.0.0.1:{port}", "GET", "/slow", timeout=0.3)
            with pytest.raises(PeerUnreachable):
                await fed.request(f"127.0.0.1:{free_port()}", "GET", "/x", timeout=2)
            with pytest.raises(FederationError, match="itself"):
                await fed.request("origin.test", "GET", "/x")
        finally:
            await fed.close()

    run_against(tmp_path, handler, scenario)


def test_a_large_answer_comes_back_whole_and_one_past_the_limit_is_refused(tmp_path):
    big = {"pdus": [{"n": i, "padding": "x" * 1000} for i in range(3000)]}  # ~3 MB: many chunks on the wire

    async def handler(request):
        return web.json_response(big)

    async def scenario(port):
        fed = client()
        try:
            whole = await fed.request(f"127.0.0.1:{port}", "GET", "/big")
            with pytest.raises(FederationError) as refused:
                await fed.request(f"127.0.0.1:{port}", "GET", "/big", max_bytes=2_000_000)
            return whole, refused.value
        finally:
            await fed.close()

    whole, refused = run_against(tmp_path, handler, scenario)
    assert whole == big
    assert refused.errcode == "M_TOO_LARGE" and not isinstance(refused, PeerUnreachable)
