"""Security: every federation request must carry a valid X-Matrix signature; key endpoints and /version stay open.

A hostile peer of our own (``hostile_peer.HostilePeer``: its own key,
served at ``/_matrix/key/v2/server``) talks to a real gateway in the test's
loop and breaks its requests one way at a time.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from hostile_peer import HostilePeer, attacked_gateway, http_session, local_user, public_room, q

from lowband.gateway.api.http import federation_query, federation_rooms
from lowband.gateway.matrix.request_auth import authorization_header
from lowband.gateway.matrix.signing import SigningKey

OTHER_KEY = SigningKey.from_seed(b"\x42" * 32, "h1")  # same key ID as the peer's, another key
UNPUBLISHED = SigningKey.from_seed(b"\x43" * 32, "h2")  # a key ID the peer's key document does not list


def _every_authenticated_route() -> list[tuple[str, str]]:
    """(method, concrete path) of every routed server-server endpoint that needs X-Matrix."""
    out = []
    for route in [*federation_rooms.routes(), *federation_query.routes()]:
        path = route.path.replace("{version:v1|v2}", "v2")
        path = re.sub(r"\{(\w+)\}", lambda m: q({"room_id": "!r:x", "event_id": "$e", "user_id": "@u:x"}.get(
            m.group(1), "t1")), path)  # fmt: skip
        out.append((route.method, path))
    return out


def test_requests_without_a_valid_x_matrix_signature_get_401_and_the_open_endpoints_stay_open(tmp_path):
    async def main():
        async with HostilePeer(tmp_path, "evil.test") as peer, \
                attacked_gateway(tmp_path, peers={"evil.test": peer.address}) as gw, http_session() as session:  # fmt: skip
            alice = await local_user(session, gw, "alice")
            room_id = await public_room(alice)
            path = f"/_matrix/federation/v1/make_join/{q(room_id)}/{q(peer.user())}"
            query = [("ver", "10")]

            async def status_of(**kwargs):
                status, body = await peer.call(session, gw, "GET", path, query=query, **kwargs)
                assert status != 200 or "event" in body
                if status == 401:
                    assert body["errcode"] == "M_UNAUTHORIZED", body
                return status

            # the control: a properly signed request works (and the peer's key was fetched from it)
            assert await status_of() == 200
            assert peer.hits["key"] == 1
            uri = f"{path}?ver=10"
            refused = {
                "no Authorization": await status_of(authorization=None),
                "another scheme": await status_of(authorization="Bearer abc"),
                "malformed": await status_of(authorization='X-Matrix origin="evil.test",key=,sig'),
                "missing sig": await status_of(authorization='X-Matrix origin="evil.test",key="ed25519:h1"'),
                "wrong destination": await status_of(destination="somewhere.else"),
                "unknown key": await status_of(key=UNPUBLISHED),
                "bad signature": await status_of(key=OTHER_KEY),
                "signed for another path": await status_of(authorization=authorization_header(
                    "GET", uri + "&ver=11", peer.name, gw.server_name, peer.key)),
                "signed for another method": await status_of(authorization=authorization_header(
                    "POST", uri, peer.name, gw.server_name, peer.key)),
                "signed with a body it does not have": await status_of(signed_content={"a": 1}),
                "claiming an origin it cannot reach": await status_of(authorization=authorization_header(
                    "GET", uri, "127.0.0.1:1", gw.server_name, peer.key)),  # loopback: blocked, never connected
                "claiming to be the gateway": await status_of(origin=gw.server_name),
            }
            assert refused == dict.fromkeys(refused, 401)

            # a body that differs from the one signed (a transaction with an extra PDU slipped in)
            signed = {"origin": peer.name, "origin_server_ts": 1, "pdus": [], "edus": []}
            status, answer = await peer.call(session, gw, "PUT", "/_matrix/federation/v1/send/t1",
                                             {**signed, "pdus": [{"room_id": room_id}]}, signed_content=signed)  # fmt: skip
            assert (status, answer["errcode"]) == (401, "M_UNAUTHORIZED")
            status, _ = await peer.call(session, gw, "PUT", "/_matrix/federation/v1/send/t1", signed)
            assert status == 200  # the same body, signed as sent, is accepted

            # every authenticated endpoint refuses an unsigned request before doing anything else
            for method, endpoint in _every_authenticated_route():
                status, answer = await peer.call(session, gw, method, endpoint, authorization=None,
                                                 body={} if method in ("PUT", "POST") else None)  # fmt: skip
                assert (method, endpoint, status, answer.get("errcode")) == (method, endpoint, 401, "M_UNAUTHORIZED")

            # key endpoints and /version answer without any signature
            for method, endpoint, body in [
                ("GET", "/_matrix/key/v2/server", None),
                ("GET", f"/_matrix/key/v2/query/{q(gw.server_name)}", None),
                ("POST", "/_matrix/key/v2/query", {"server_keys": {gw.server_name: {}}}),
                ("GET", "/_matrix/federation/v1/version", None),
            ]:  # fmt: skip
                status, answer = await peer.call(session, gw, method, endpoint, body, authorization=None)
                assert status == 200, (endpoint, answer)
            status, answer = await peer.call(session, gw, "GET", "/_matrix/key/v2/server", authorization=None)
            assert answer["server_name"] == gw.server_name

    asyncio.run(asyncio.wait_for(main(), 120))


@pytest.mark.parametrize("header", [
    "X-Matrix " + "a=b," * 2000,
    'X-Matrix origin="' + "x" * 5000 + '",key="ed25519:a",sig="s"',
    'X-Matrix origin="evil.test",key="ed25519:h1",sig="!!not base64!!"',
    "X-Matrix",
    'X-Matrix origin="[::1",key="ed25519:h1",sig="a"',
])  # fmt: skip
def test_hostile_authorization_headers_get_401(tmp_path, header):
    async def main():
        async with HostilePeer(tmp_path, "evil.test") as peer, \
                attacked_gateway(tmp_path, peers={"evil.test": peer.address}) as gw, http_session() as session:  # fmt: skip
            status, answer = await peer.call(session, gw, "GET", "/_matrix/federation/v1/query/profile",
                                             query=[("user_id", "@a:b")], authorization=header)  # fmt: skip
            assert (status, answer.get("errcode") if isinstance(answer, dict) else answer) == (401, "M_UNAUTHORIZED")

    asyncio.run(asyncio.wait_for(main(), 60))
