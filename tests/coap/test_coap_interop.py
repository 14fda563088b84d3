"""The CoAP API of a real gateway against tools no one here wrote: libcoap's coap-client-notls, aiocoap-client,
aiocoap's Python API next to a matrix-nio client on HTTP; and bad input on the wire.

A gateway with CoAP runs in the test's loop (:func:`coap_gateway`): ``gateway_in_loop`` with
``components={"coap": {"bind": "127.0.0.1:PORT"}}`` on a free UDP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.optionnumbers import OptionNumber
from harness import free_udp_port, gateway_in_loop, in_loop, nio_client

from lowband.codecs import cbor, coap, msc3079

COAP_CLIENT = shutil.which("coap-client-notls") or "/usr/bin/coap-client-notls"
AIOCOAP_CLIENT = str(Path(sys.executable).parent / "aiocoap-client")
PASSWORD = "secret-pw"


@contextlib.asynccontextmanager
async def coap_gateway(tmp_path: Path, **section: Any) -> AsyncIterator[tuple[str, int, Any]]:
    """A gateway in this loop with ``[coap] bind = "127.0.0.1:PORT"`` (plus ``section``); yields
    (HTTP base URL, CoAP port, services)."""
    port = free_udp_port()
    found: list[Any] = []
    components = {"coap": {"bind": f"127.0.0.1:{port}", **section}}
    async with gateway_in_loop(tmp_path, on_ready=found.append, components=components) as url:
        yield url, port, found[0]


async def run_tool(*args: str, timeout: float = 30.0) -> tuple[int, bytes, bytes]:
    """(exit status, stdout, stderr) of a command, killed after ``timeout`` seconds."""
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


def cbor_sequence(data: bytes) -> list[Any]:
    """The CBOR items in ``data`` one after another (a tool may add a newline after each: skipped)."""
    items, offset = [], 0
    while offset < len(data):
        if data[offset : offset + 1] == b"\n":
            offset += 1
            continue
        item, offset = cbor.decode_item(data, offset, strict=False)
        items.append(item)
    return items


def expanded(item: Any) -> Any:
    """An MSC3079 CBOR item with its integer keys as strings."""
    return msc3079.decode(cbor.dumps(item))


# ---------------------------------------------------------------------------------------------- libcoap


@pytest.mark.skipif(not Path(COAP_CLIENT).exists(), reason="libcoap3-bin (coap-client-notls) is not installed")
@in_loop
async def test_coap_client_notls_gets_versions_by_code_and_by_path(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path) as (_url, port, _services):
        answers = {}
        for path in ("/0", "/_matrix/client/versions"):
            status, out, err = await run_tool(COAP_CLIENT, "-m", "get", "-B", "20", f"coap://127.0.0.1:{port}{path}")
            assert status == 0 and out, err  # a failed request can exit 0 too: the output is checked below
            (answers[path],) = cbor_sequence(out)
        # option 257 (critical) asks for the integer keys: versions is key 100, and the request is served
        status, out, err = await run_tool(COAP_CLIENT, "-m", "get", "-B", "20", "-O", "257,0x01",
                                          f"coap://127.0.0.1:{port}/0")  # fmt: skip
        (with_keys,) = cbor_sequence(out)
    for document in answers.values():
        assert "v1.1" in document["versions"] or "r0.6.1" in document["versions"], document
        low = document["m.low_bandwidth"]
        # no compact mode on the plain listener (it is served in Noise sessions only)
        assert low == {"coap": port, "cbor_enum_version": 1, "coap_enum_version": 1, "observe": 1}
    assert answers["/0"] == answers["/_matrix/client/versions"]
    assert with_keys[100] == answers["/0"]["versions"]


@pytest.mark.skipif(not Path(COAP_CLIENT).exists(), reason="libcoap3-bin (coap-client-notls) is not installed")
@in_loop
async def test_coap_client_notls_observes_sync(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path, observe_timeout_s=5) as (url, port, services):
        bob = await nio_client(url, "bob")
        try:
            room_id = (await bob.room_create(name="observed")).room_id
            since = (await bob.sync(timeout=0)).next_batch
            observer = await asyncio.create_subprocess_exec(
                COAP_CLIENT, "-m", "get", "-s", "30", "-B", "40",
                f"coap://127.0.0.1:{port}/7?access_token={bob.access_token}&since={since}&timeout=0",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
            try:
                assert observer.stdout is not None
                output = b""
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while not services.components["coap_server"].site.observations:
                    assert loop.time() < deadline, "libcoap did not register"
                    await asyncio.sleep(0.05)
                await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "pushed to libcoap"})
                documents: list[Any] = []
                while not any(room_id in d.get("rooms", {}).get("join", {}) for d in documents):
                    output += await asyncio.wait_for(observer.stdout.read(4096), max(0.1, deadline - loop.time()))
                    with contextlib.suppress(ValueError):  # a notification may arrive in more than one read
                        documents = cbor_sequence(output)
                first, *notifications = documents
                assert first["rooms"]["join"] == {}  # the registration's answer: nothing new since `since`
                events = notifications[-1]["rooms"]["join"][room_id]["timeline"]["events"]
                assert [e["content"]["body"] for e in events] == ["pushed to libcoap"]
            finally:
                observer.terminate()
                await asyncio.wait_for(observer.communicate(), 10)
        finally:
            await bob.close()


# ------------------------------------------------------------------------------------------- aiocoap-client


@in_loop
async def test_aiocoap_client_logs_in_sends_and_syncs_in_msc3079_mode(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path, observe_timeout_s=5) as (url, port, _services):
        bob = await nio_client(url, "bob")  # a matrix-nio user on HTTP shares the room
        alice = await nio_client(url, "alice")
        await alice.close()
        try:
            base = f"coap://127.0.0.1:{port}"

            async def aiocoap_client(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
                args = [AIOCOAP_CLIENT, "-m", method]
                if body is not None:
                    payload = tmp_path / "payload.cbor"
                    payload.write_bytes(msc3079.encode(body))  # integer keys: the answer comes with them too
                    args += ["--content-format", "application/cbor", "--payload", f"@{payload}"]
                status, out, err = await run_tool(*args, base + path)
                assert status == 0, err
                (document,) = cbor_sequence(out)
                return expanded(document)

            login = await aiocoap_client(
                "POST",
                "/1",
                {
                    "type": "m.login.password",
                    "password": PASSWORD,
                    "identifier": {"type": "m.id.user", "user": "alice"},
                },
            )
            token = login["access_token"]
            assert login["user_id"] == "@alice:localhost"
            created = await aiocoap_client("POST", f"/G?access_token={token}", {"preset": "public_chat"})
            room_id = created["room_id"]
            joined = await bob.join(room_id)
            assert joined.room_id == room_id, joined
            sent = await aiocoap_client(
                "PUT",
                f"/9/{room_id}/m.room.message/txn1?access_token={token}",
                {"msgtype": "m.text", "body": "hello from aiocoap-client"},
            )
            assert sent["event_id"].startswith("$")
            sync = await aiocoap_client("GET", f"/7?access_token={token}&timeout=0")
            bodies = [e["content"].get("body") for e in sync["rooms"]["join"][room_id]["timeline"]["events"]]
            assert "hello from aiocoap-client" in bodies
            # matrix-nio on HTTP sees the message
            seen = await bob.sync(timeout=0)
            texts = [getattr(e, "body", None) for e in seen.rooms.join[room_id].timeline.events]
            assert "hello from aiocoap-client" in texts

            # aiocoap-client registers an observation of /sync (its log shows Observe: 0 on the answer). It does
            # not print later notifications: a known bug of the tool (chrysn/aiocoap#395: it cancels the observation
            # after the first answer), so libcoap is the third-party observer below (test_coap_client_notls_observes_sync).
            observer = await asyncio.create_subprocess_exec(
                AIOCOAP_CLIENT, "-v", "--observe", f"{base}/7?access_token={token}&since={sync['next_batch']}&timeout=0",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
            try:
                assert observer.stderr is not None
                log = b""
                while b"Payload:" not in log.partition(b"Received response:")[2]:
                    line = await asyncio.wait_for(observer.stderr.readline(), 20)
                    assert line, log
                    log += line
                answer = log.partition(b"Received response:")[2]
                assert b"2.05 Content" in answer and b"Observe (6): 0" in answer, log
            finally:
                observer.terminate()
                await asyncio.wait_for(observer.communicate(), 10)
        finally:
            await bob.close()


# ---------------------------------------------------------------------------------- matrix-nio and aiocoap


class CoapUser:
    """An aiocoap Python-API client in MSC3079 mode: integer keys (257), the token sent once (256)."""

    def __init__(self, context: aiocoap.Context, port: int) -> None:
        self.context = context
        self.base = f"coap://127.0.0.1:{port}"
        self.token: str | None = None
        self.sent_token = False

    def message(self, method: aiocoap.Code, path: str, body: dict[str, Any] | None = None,
                **options: Any) -> aiocoap.Message:  # fmt: skip
        message = aiocoap.Message(code=method, uri=self.base + path, **options)
        if body is not None:
            message.payload = msc3079.encode(body)
            message.opt.content_format = coap.FORMAT_CBOR
        message.opt.add_option(OptionNumber(coap.OPT_CBOR_VERSION).create_option(value=b"\x01"))
        if self.token is not None and not self.sent_token:  # sticky: once is enough
            message.opt.add_option(OptionNumber(coap.OPT_AUTH).create_option(value=self.token.encode()))
            self.sent_token = True
        return message

    async def call(self, method: aiocoap.Code, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await asyncio.wait_for(self.context.request(self.message(method, path, body)).response, 30)
        assert response.code.is_successful(), (response.code, response.payload)
        return msc3079.decode(response.payload)


@in_loop
async def test_matrix_nio_on_http_and_aiocoap_on_coap_see_each_others_messages(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path, observe_timeout_s=5) as (url, port, services):
        bob = await nio_client(url, "bob")
        carol = await nio_client(url, "carol")
        await carol.close()
        context = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            user = CoapUser(context, port)
            login = await user.call(
                aiocoap.POST,
                "/1",
                {
                    "type": "m.login.password",
                    "password": PASSWORD,
                    "identifier": {"type": "m.id.user", "user": "carol"},
                },
            )
            user.token = login["access_token"]
            created = await bob.room_create(name="mixed")
            room_id = created.room_id
            await bob.room_invite(room_id, "@carol:localhost")
            await user.call(aiocoap.POST, f"/K/{room_id}", {})
            first = await user.call(aiocoap.GET, "/7?timeout=0")
            # OBSERVE /sync from now on
            observe = context.request(user.message(aiocoap.GET, f"/7?since={first['next_batch']}&timeout=0",
                                                   observe=0))  # fmt: skip
            registered = await asyncio.wait_for(observe.response, 30)
            assert registered.opt.observe == 0
            assert len(services.components["coap_server"].site.observations) == 1
            notifications = observe.observation.__aiter__()

            await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello carol, from HTTP"})
            bodies: list[str] = []
            while "hello carol, from HTTP" not in bodies:
                pushed = msc3079.decode((await asyncio.wait_for(notifications.__anext__(), 20)).payload)
                room = pushed["rooms"]["join"].get(room_id, {})
                bodies += [e["content"].get("body") for e in room.get("timeline", {}).get("events", [])]

            await user.call(
                aiocoap.PUT, f"/9/{room_id}/m.room.message/c1", {"msgtype": "m.text", "body": "hello bob, from CoAP"}
            )
            seen: list[str] = []
            next_batch = None
            for _ in range(20):
                response = await bob.sync(timeout=1000, since=next_batch)
                next_batch = response.next_batch
                room = response.rooms.join.get(room_id)
                seen += [getattr(e, "body", "") for e in room.timeline.events] if room else []
                if "hello bob, from CoAP" in seen:
                    break
            assert "hello bob, from CoAP" in seen
            observe.observation.cancel()
        finally:
            await context.shutdown()
            await bob.close()


# ----------------------------------------------------------------------------------------------- bad input


def _datagram(path: tuple[str, ...], mid: int, token: bytes = b"", payload: bytes = b"",
              options: tuple[tuple[int, bytes], ...] = (), method: int = coap.GET) -> bytes:  # fmt: skip
    return coap.encode(
        coap.Message(
            coap.CON, method, mid, token, tuple((coap.OPT_URI_PATH, s.encode()) for s in path) + options, payload
        )
    )


async def _answer_to(sock: socket.socket, token: bytes, timeout: float = 10.0) -> coap.Message:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), max(0.01, deadline - loop.time()))
        try:
            answer = coap.parse(data)
        except coap.CoapFormatError:
            # aiocoap answers some garbage that our codec refuses (a reserved token length 9-15 taken as 8974's)
            continue
        if answer.token == token:
            return answer


@in_loop
async def test_bad_input_gets_clear_codes_and_no_crash(tmp_path: Path) -> None:
    async with coap_gateway(tmp_path, max_peers=100) as (_url, port, services):
        server = services.components["coap_server"]
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        try:
            rng = random.Random(16)
            garbage = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))) for _ in range(300)]
            garbage += [_datagram(("0",), 7)[:cut] for cut in range(1, 12)]  # truncated headers and options
            # a Uri-Path that is not UTF-8: aiocoap's decoder raises (counted, not logged)
            garbage += [b"\x40\x01\x00" + bytes([n]) + b"\xb2\xff\xfe" for n in range(50)]
            for n, data in enumerate(garbage):
                sock.sendto(data, ("127.0.0.1", port))
                if n % 50 == 49:  # in small bursts: the kernel drops what overflows the socket buffer
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            sock.sendto(_datagram(("0",), 100, b"\x01"), ("127.0.0.1", port))
            versions = await _answer_to(sock, b"\x01")
            assert versions.code == coap.CONTENT and "versions" in cbor.loads(versions.payload)
            assert server.undecodable.count >= 50
            # invalid CBOR -> 4.00
            sock.sendto(_datagram(("G",), 101, b"\x02", b"\xbf\x61", ((coap.OPT_CONTENT_FORMAT, b"\x3c"),),
                                  coap.POST), ("127.0.0.1", port))  # fmt: skip
            assert (await _answer_to(sock, b"\x02")).code == coap.BAD_REQUEST
            # an unknown path code -> 4.04
            sock.sendto(_datagram(("~",), 102, b"\x03"), ("127.0.0.1", port))
            assert (await _answer_to(sock, b"\x03")).code == coap.NOT_FOUND
            # a body over http.max_request_bytes, announced by Size1 -> 4.13
            sock.sendto(_datagram(("G",), 103, b"\x04", b"x" * 64, ((coap.OPT_BLOCK1, b"\x0a"), (coap.OPT_SIZE1,
                        coap.uint_encode(10 << 20))), coap.POST), ("127.0.0.1", port))  # fmt: skip
            assert (await _answer_to(sock, b"\x04")).code == coap.REQUEST_ENTITY_TOO_LARGE
            # a block that continues no upload -> 4.08
            sock.sendto(_datagram(("G",), 104, b"\x05", b"x" * 64, ((coap.OPT_BLOCK1, b"\x5a"),), coap.POST),
                        ("127.0.0.1", port))  # fmt: skip
            assert (await _answer_to(sock, b"\x05")).code == coap.REQUEST_ENTITY_INCOMPLETE
        finally:
            sock.close()

        # a flood of 5,000 new peers: the peer table stays at max_peers
        heard, ports = 0, set()
        for batch in range(50):
            sockets = []
            for n in range(100):
                peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                peer.setblocking(False)
                peer.bind(("127.0.0.1", 0))
                ports.add(peer.getsockname()[1])
                peer.sendto(_datagram(("~",), n, b"\x09"), ("127.0.0.1", port))
                sockets.append(peer)
            for (
                peer
            ) in sockets:  # each answered (4.04): proof it was heard, and keeps the kernel buffer from overflowing
                with contextlib.suppress(TimeoutError):
                    await _answer_to(peer, b"\x09", timeout=5)
                    heard += 1
                peer.close()
            assert len(server.site.peers) <= 100
        assert heard >= 4900
        # the system may hand out a port twice: each distinct address was a new peer at least once
        assert len(server.site.peers) == 100 and server.site.peers.evicted >= len(ports) - 100 > 4000
        check = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        check.setblocking(False)
        check.bind(("127.0.0.1", 0))
        try:
            check.sendto(_datagram(("0",), 1, b"\x0a"), ("127.0.0.1", port))
            assert (await _answer_to(check, b"\x0a")).code == coap.CONTENT
        finally:
            check.close()
        del loop
