"""Requests that cost the gateway too much, written as the attacks (hardening issue, findings 4, 5 and 11).

Found: aiohttp's only bound on a request whose headers never complete was its keep-alive timeout, an hour
(200 half-open requests were all still open after 100 s); a body could trickle for ever; reads had no rate
limit (ten parallel readers of a big room held the loop for seconds); one user stored 58 MiB in 1.3 s with
no quota.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from harness import Client, gateway_in_loop

from lowband.gateway.config import RateLimits

V3 = "/_matrix/client/v3"
NO_LIMITS = RateLimits(enabled=False)


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before closing the connection, or None when it is still open after ``seconds``."""
    received = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(4096):
                received += chunk
    except TimeoutError:
        return None
    return received


def test_half_open_requests_are_closed_after_the_header_timeout(tmp_path):
    async def main() -> None:
        async with gateway_in_loop(tmp_path, rate_limits=NO_LIMITS, header_timeout_s=1.0) as base:
            port = _port(base)
            started = asyncio.get_running_loop().time()
            connections = []
            for i in range(200):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ")  # never ends
                connections.append((reader, writer))
            # one of them keeps trickling a header byte: that does not keep it open either
            trickler = connections[0][1]

            async def trickle() -> None:
                while not trickler.is_closing():
                    trickler.write(b"a")
                    await asyncio.sleep(0.2)

            dripping = asyncio.create_task(trickle())
            async with aiohttp.ClientSession() as session, session.get(base + "/_matrix/client/versions") as resp:
                assert resp.status == 200  # the server answers meanwhile
            results = await asyncio.gather(*(_closed_within(reader, 10) for reader, _ in connections))
            elapsed = asyncio.get_running_loop().time() - started
            dripping.cancel()
            for _, writer in connections:
                writer.close()
            assert all(result is not None for result in results), sum(result is None for result in results)
            assert elapsed < 10
            async with aiohttp.ClientSession() as session, session.get(base + "/_matrix/client/versions") as resp:
                assert resp.status == 200

    asyncio.run(main())


def test_a_body_that_trickles_is_cut_off(tmp_path):
    async def main() -> None:
        config: dict[str, Any] = {"rate_limits": NO_LIMITS, "body_timeout_s": 1.0, "min_body_bytes_per_s": 100_000}
        async with gateway_in_loop(tmp_path, **config) as base, aiohttp.ClientSession() as session:
            alice = Client(session, base)
            await alice.register("alice")
            port = _port(base)
            for path, headers in ((f"{V3}/login", b""), ("/_matrix/media/v3/upload",
                                                         f"Authorization: Bearer {alice.token}\r\n".encode())):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n" + headers
                             + b"\r\n" + b"{" * 10)  # fmt: skip
                answer = await _closed_within(reader, 10)
                writer.close()
                assert answer is not None, f"{path}: the connection was still open after 10 s"
                assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
                assert b'"errcode": "M_UNKNOWN"' in answer
            # nothing half-uploaded is left behind, and a body sent at speed is fine
            assert not [p for p in (tmp_path / "data" / "media").rglob("*") if p.is_file()]
            status, body = await alice.request("POST", "/_matrix/media/v3/upload", raw=b"x" * 5000,
                                               headers={"Content-Type": "text/plain"})  # fmt: skip
            assert status == 200, body

    asyncio.run(main())


def test_reads_are_rate_limited_per_user(tmp_path):
    limits = RateLimits(reads_per_user_per_s=1.0, reads_per_user_burst=20)

    async def main() -> None:
        async with gateway_in_loop(tmp_path, rate_limits=limits) as base, aiohttp.ClientSession() as session:
            alice, bob = Client(session, base), Client(session, base)
            await alice.register("alice")
            await bob.register("bob")
            status, created = await alice.request("POST", f"{V3}/createRoom", {})
            assert status == 200, created
            room = created["room_id"]
            path = f"{V3}/rooms/{room}/messages?dir=b&limit=1&filter=%7B%22types%22%3A%5B%22none%22%5D%7D"
            answers = await asyncio.gather(*(alice.request("GET", path) for _ in range(60)))
            served = [status for status, _ in answers if status == 200]
            refused = [body for status, body in answers if status == 429]
            assert len(served) + len(refused) == 60
            assert 15 <= len(served) <= 24  # the burst (less what register and createRoom's reads took), not 60
            assert all(body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0 for body in refused)
            # the /sync of the same user is a read too; another user's reads are not affected
            status, _ = await alice.request("GET", f"{V3}/sync?timeout=0")
            assert status == 429
            status, body = await bob.request("GET", f"{V3}/sync?timeout=0")
            assert status == 200, body
            await asyncio.sleep(1.1)  # the bucket refills at its rate
            status, _ = await alice.request("GET", path)
            assert status == 200

    asyncio.run(main())


def test_media_quota_per_user(tmp_path):
    async def main() -> None:
        config: dict[str, Any] = {"rate_limits": NO_LIMITS, "media_quota_bytes": 100_000}
        async with gateway_in_loop(tmp_path, **config) as base, aiohttp.ClientSession() as session:
            alice, bob = Client(session, base), Client(session, base)
            await alice.register("alice")
            await bob.register("bob")

            async def upload(client: Client, size: int) -> tuple[int, Any]:
                return await client.request("POST", "/_matrix/media/v3/upload", raw=b"x" * size,
                                            headers={"Content-Type": "application/octet-stream"})  # fmt: skip

            assert (await upload(alice, 60_000))[0] == 200
            status, body = await upload(alice, 60_000)
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
            assert "quota" in body["error"]
            assert (await upload(alice, 40_000))[0] == 200  # exactly up to the quota
            assert (await upload(alice, 1))[0] == 403
            assert (await upload(bob, 60_000))[0] == 200  # per user

            # An upload in progress counts: while bob's 30 KB upload is half sent, his 20 KB one does not fit.
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(base))
            writer.write(f"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 30000\r\n"
                         f"Authorization: Bearer {bob.token}\r\n\r\n".encode() + b"y" * 15_000)  # fmt: skip
            await writer.drain()
            await asyncio.sleep(0.3)
            assert (await upload(bob, 20_000))[0] == 403
            writer.write(b"y" * 15_000)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.close()
            assert head.startswith(b"HTTP/1.1 200"), head
            assert (await upload(bob, 10_000))[0] == 200  # 60 + 30 + 10 KB: full now
            assert (await upload(bob, 1))[0] == 403

    asyncio.run(main())


def test_a_chunked_json_body_stops_at_the_json_limit(tmp_path):
    # Without a Content-Length, aiohttp read a JSON body up to the upload limit (10 MiB) before json_body refused
    # it. Now the answer comes once the JSON limit is passed, while the sender is still sending.
    async def main() -> None:
        config: dict[str, Any] = {"rate_limits": NO_LIMITS, "max_request_bytes": 10_000}
        async with gateway_in_loop(tmp_path, **config) as base, aiohttp.ClientSession() as session:
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(base))
            writer.write(f"POST {V3}/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            for _ in range(20):  # 20 KB of a body that goes on (no last chunk is sent)
                writer.write(b"3e8\r\n" + b" " * 1000 + b"\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.close()
            assert head.startswith(b"HTTP/1.1 413"), head
            async with session.post(base + f"{V3}/login", data=_chunks(b'{"type": "m.login.password"}')) as resp:
                assert resp.status == 400  # a small chunked body is read and answered as before
                assert (await resp.json())["errcode"] == "M_MISSING_PARAM"

    asyncio.run(main())


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    for i in range(0, len(data), 7):
        yield data[i : i + 7]


def test_stopping_does_not_wait_for_parked_syncs(tmp_path):
    # Found: a /sync long-poll (timeout 30 s) held the gateway's shutdown (runner.cleanup waits for every
    # handler, up to aiohttp's 60 s): each stop of a gateway with a syncing client took 15-30 s.
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            async with gateway_in_loop(tmp_path, rate_limits=NO_LIMITS) as base:
                alice = Client(session, base)
                await alice.register("alice")
                status, first = await alice.request("GET", f"{V3}/sync?timeout=0")
                parked = asyncio.create_task(alice.request("GET", f"{V3}/sync?timeout=30000&since={first['next_batch']}"))
                await asyncio.sleep(0.5)
                assert not parked.done()
                stopping = asyncio.get_running_loop().time()
            stopped = asyncio.get_running_loop().time() - stopping
            status, body = await asyncio.wait_for(parked, 5)
            assert stopped < 5, stopped
            assert status == 200 and body["next_batch"]  # the parked sync was answered, not cut off

    asyncio.run(main())


def test_integer_parameters_are_ascii_digits(tmp_path):
    # Found by the fuzz review: limit and timeout went through int(), which takes ' 5 ', '1_0' and '٣'.
    async def main() -> None:
        async with gateway_in_loop(tmp_path, rate_limits=NO_LIMITS) as base, aiohttp.ClientSession() as session:
            alice = Client(session, base)
            await alice.register("alice")
            for bad in ("%205%20", "1_0", "%D9%A3", "", "5x", "9" * 40):
                status, body = await alice.request("GET", f"{V3}/sync?timeout={bad}", exact_path=True)
                assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), (bad, body)
            for good in ("0", "-5", "10"):
                status, _ = await alice.request("GET", f"{V3}/sync?timeout={good}", exact_path=True)
                assert status == 200, good

    asyncio.run(main())
