"""The media repository against a gateway running in the test's loop:
byte-exact round trips, the upload limit, headers, and requests that try to
name files outside the media store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from harness import Client, gateway_in_loop
from yarl import URL

from lowband.gateway.api.http.media import CONTENT_SECURITY_POLICY, content_disposition, media_path, mime_type
from lowband.gateway.app import open_store

UPLOAD = "/_matrix/media/v3/upload"
AUTHED = "/_matrix/client/v1/media"
LEGACY = "/_matrix/media/v3"


@contextlib.asynccontextmanager
async def media_gateway(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[str, aiohttp.ClientSession, Client]]:
    async with gateway_in_loop(tmp_path, **config) as url, aiohttp.ClientSession() as session:
        client = Client(session, url)
        await client.register("uploader")
        yield url, session, client


async def upload(client: Client, data: bytes, content_type: str = "application/octet-stream",
                 filename: str | None = None) -> tuple[int, Any]:  # fmt: skip
    path = UPLOAD + (f"?filename={quote(filename, safe='')}" if filename is not None else "")
    return await client.request("POST", path, raw=data, headers={"Content-Type": content_type})


def media_id_of(body: dict[str, Any]) -> str:
    uri = body["content_uri"]
    assert uri.startswith("mxc://localhost/")
    return str(uri.rsplit("/", 1)[1])


async def fetch(session: aiohttp.ClientSession, url: str, token: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:  # fmt: skip
    """(status, headers, body) of a GET sent exactly as written (no client-side path normalising)."""
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    async with session.get(URL(url, encoded=True), headers=all_headers) as response:
        return response.status, response.headers, await response.read()


def leftovers(media_dir: Path) -> list[Path]:
    return [p for p in media_dir.rglob(".upload-*")]


# ---------------------------------------------------------------- headers


def test_content_disposition_rules() -> None:
    assert mime_type("Text/Plain; charset=utf-8") == "text/plain"
    assert content_disposition("image/png", None) == "inline"
    assert content_disposition("text/plain; charset=utf-8", "a.txt") == 'inline; filename="a.txt"'
    for unsafe in ("text/html", "image/svg+xml", "application/javascript", "application/octet-stream", ""):
        assert content_disposition(unsafe, "x").startswith("attachment;")
    assert content_disposition("text/html", "x", inline=True).startswith("inline;")
    assert content_disposition("image/png", "Grüße.png") == "inline; filename*=utf-8''Gr%C3%BC%C3%9Fe.png"
    for hostile in ('a".png', "a\\b", 'x"\r\nSet-Cookie: y', "../../etc/passwd\x00"):
        value = content_disposition("image/png", hostile)
        assert "\r" not in value and "\n" not in value and "\x00" not in value
        assert value.count('"') in (0, 2)
    assert content_disposition("image/png", "../x") == 'inline; filename="../x"'


# ------------------------------------------------------------ round trips


def test_upload_download_round_trip(tmp_path: Path) -> None:
    payload = os.urandom(1 << 20)

    async def run() -> None:
        async with media_gateway(tmp_path) as (url, session, client):
            media_id = media_id_of(_ok(await upload(client, payload, filename="data.bin")))
            assert len(media_id) >= 16

            for base, token in ((AUTHED, client.token), (LEGACY, None), ("/_matrix/media/r0", None)):
                status, headers, data = await fetch(session, f"{url}{base}/download/localhost/{media_id}", token)
                assert status == 200 and data == payload
                assert headers["Content-Type"] == "application/octet-stream"
                assert headers["Content-Length"] == str(len(payload))
                assert headers["Content-Disposition"] == 'attachment; filename="data.bin"'
                assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert headers["Content-Security-Policy"].startswith("sandbox; default-src 'none'")
                assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"

            renamed = f"{url}{AUTHED}/download/localhost/{media_id}/other%20name.bin"
            status, headers, data = await fetch(session, renamed, client.token)
            assert status == 200 and data == payload
            assert headers["Content-Disposition"] == 'attachment; filename="other name.bin"'
            status, headers, data = await fetch(session, f"{url}{AUTHED}/download/localhost/{media_id}/", client.token)
            assert status == 200 and headers["Content-Disposition"] == 'attachment; filename="data.bin"'
            status, headers, data = await fetch(session, f"{url}{LEGACY}/download/localhost/{media_id}",
                                                headers={"Range": "bytes=10-19"})  # fmt: skip
            assert status == 206 and data == payload[10:20]

            media_dir = tmp_path / "data" / "media"
            stored = media_path(media_dir, media_id)
            assert stored.parent.parent.parent == media_dir and stored.read_bytes() == payload
            assert leftovers(media_dir) == []
            with contextlib.closing(open_store(tmp_path / "data" / "lowband.db")) as store:  # a second store
                sql = "SELECT size, sha256, filename, user_id FROM media WHERE media_id = ?"
                row = store.db.query_one(sql, (media_id,))
            assert row == (len(payload), hashlib.sha256(payload).hexdigest(), "data.bin", client.user_id)

            # Two uploads of the same bytes are two media.
            assert media_id_of(_ok(await upload(client, payload))) != media_id

    asyncio.run(run())


def _ok(result: tuple[int, Any]) -> dict[str, Any]:
    status, body = result
    assert status == 200, body
    return dict(body)


def test_content_types_and_file_names(tmp_path: Path) -> None:
    async def run() -> None:
        async with media_gateway(tmp_path) as (url, session, client):
            cases = [
                ("image/png", "pic.png", "inline; filename=\"pic.png\""),
                ("text/plain; charset=utf-8", None, "inline"),
                ("text/html", "page.html", "attachment; filename=\"page.html\""),
                ("image/svg+xml", "Grüße.svg", "attachment; filename*=utf-8''Gr%C3%BC%C3%9Fe.svg"),
            ]
            for content_type, filename, disposition in cases:
                media_id = media_id_of(_ok(await upload(client, b"<b>bytes</b>", content_type, filename)))
                status, headers, data = await fetch(session, f"{url}{LEGACY}/download/localhost/{media_id}")
                assert status == 200 and data == b"<b>bytes</b>"
                assert headers["Content-Type"] == content_type
                assert headers["Content-Disposition"] == disposition
                assert headers["X-Content-Type-Options"] == "nosniff"

            media_id = media_id_of(_ok(await client.request("POST", UPLOAD, raw=b"plain")))  # no Content-Type
            status, headers, _ = await fetch(session, f"{url}{LEGACY}/download/localhost/{media_id}")
            assert status == 200 and headers["Content-Type"] == "application/octet-stream"
            assert _ok(await upload(client, b"", "text/plain"))  # an empty file is a file

            for bad_name in ("a\nb", "x\x00y", "n" * 256):
                status, body = await upload(client, b"x", "text/plain", bad_name)
                assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")

    asyncio.run(run())


# ----------------------------------------------------------------- limits


def test_upload_size_limit(tmp_path: Path) -> None:
    async def run() -> None:
        async with media_gateway(tmp_path, max_upload_bytes=1000) as (url, session, client):
            for path in (f"{AUTHED}/config", f"{LEGACY}/config"):
                assert _ok(await client.request("GET", path)) == {"m.upload.size": 1000}
                status, body = await client.request("GET", path, token=False)
                assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")

            assert media_id_of(_ok(await upload(client, b"a" * 1000)))
            status, body = await upload(client, b"a" * 1001)  # refused from Content-Length
            assert (status, body["errcode"]) == (413, "M_TOO_LARGE")

            async def chunks(count: int) -> AsyncIterator[bytes]:
                for _ in range(count):
                    yield b"b" * 400

            # No Content-Length: counted while streaming.
            auth = {"Authorization": f"Bearer {client.token}"}
            async with session.post(url + UPLOAD, data=chunks(3), headers=auth) as r:
                assert r.status == 413 and (await r.json())["errcode"] == "M_TOO_LARGE"
            async with session.post(url + UPLOAD, data=chunks(2), headers=auth) as r:
                assert r.status == 200

            # The server answers as soon as the limit is passed, without waiting for the rest.
            gate = asyncio.Event()

            async def stalled() -> AsyncIterator[bytes]:
                yield b"c" * 1500
                await asyncio.wait_for(gate.wait(), 10)
                yield b"c" * 1500

            started = time.monotonic()
            async with session.post(url + UPLOAD, data=stalled(), headers=auth) as r:
                assert r.status == 413
            assert time.monotonic() - started < 5
            gate.set()

            status, body = await client.request("POST", UPLOAD, raw=b"x", token=False)
            assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
            await asyncio.sleep(0.1)
            assert leftovers(tmp_path / "data" / "media") == []

    asyncio.run(run())


def test_interrupted_upload_leaves_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        async with media_gateway(tmp_path) as (url, session, client):
            port = int(url.rsplit(":", 1)[1])
            framings = ("Content-Length: 500000\r\n\r\n", "Transfer-Encoding: chunked\r\n\r\n64\r\n")
            for framing in framings:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                head = f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {client.token}\r\n{framing}"
                writer.write(head.encode() + b"x" * 100)
                await writer.drain()
                await asyncio.sleep(0.2)
                writer.close()
            await asyncio.sleep(0.3)
            media_dir = tmp_path / "data" / "media"
            assert [p for p in media_dir.rglob("*") if p.is_file()] == []
            assert media_id_of(_ok(await upload(client, b"still works")))

    asyncio.run(run())


# ------------------------------------------------------- unknown, hostile


INJECTIONS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%2F..%2Flowband.db",
    "%2e%2e%2f%2e%2e%2flowband.db",
    "..%5C..%5Clowband.db",
    "%252e%252e%252flowband.db",
    "..",
    "%2e%2e",
    "signing.key",
    "abc%00def",
    "%C3%BCml%C3%A4ut",
    "a" * 300,
]


def test_unknown_media_and_path_injection(tmp_path: Path) -> None:
    async def run() -> None:
        async with media_gateway(tmp_path) as (url, session, client):
            media_id = media_id_of(_ok(await upload(client, b"secret-free bytes", "text/plain")))
            # the SQLite file's header (what the first 16 bytes of lowband.db are), whichever store this run uses
            secrets_on_disk = [b"SQLite format 3\x00", b"root:"]

            async def refused(target: str, token: str | None) -> None:
                status, _, data = await fetch(session, url + target, token)
                assert status in (400, 404), (target, status, data[:80])
                assert not any(s in data for s in secrets_on_disk)

            for base, token in ((AUTHED, client.token), (LEGACY, None)):
                status, _, data = await fetch(session, f"{url}{base}/download/localhost/{'A' * 24}", token)
                assert status == 404 and b"M_NOT_FOUND" in data
                status, _, data = await fetch(session, f"{url}{base}/download/elsewhere.example/{media_id}", token)
                assert status == 404 and b"M_NOT_FOUND" in data
                for bad in INJECTIONS:
                    await refused(f"{base}/download/localhost/{bad}", token)
                    await refused(f"{base}/download/{bad}/{media_id}", token)
                    await refused(f"{base}/thumbnail/localhost/{bad}?width=8&height=8", token)
                await refused(f"{base}/download/localhost/../../lowband.db", token)
                await refused(f"{base}/download/localhost/%2e%2e/%2e%2e/lowband.db", token)
                await refused(f"{base}/download/localhost/{media_id}/../../../lowband.db", token)

            # A hostile *file name* is only a header value, encoded; the bytes are the media's.
            download = f"{url}{LEGACY}/download/localhost/{media_id}"
            status, headers, data = await fetch(session, download + "/..%2F..%2Flowband.db")
            assert status == 200 and data == b"secret-free bytes"
            assert headers["Content-Disposition"] == 'inline; filename="../../lowband.db"'
            status, headers, data = await fetch(session, download + "/a%0D%0AX-Evil:%201")
            assert status == 200 and "X-Evil" not in headers
            assert headers["Content-Disposition"] == "inline; filename*=utf-8''a%0D%0AX-Evil%3A%201"

            status, _, data = await fetch(session, f"{url}{AUTHED}/download/localhost/{media_id}")
            assert status == 401 and b"M_MISSING_TOKEN" in data

    asyncio.run(run())


# -------------------------------------------------------------- thumbnails


@pytest.mark.parametrize("base", [AUTHED, LEGACY])
def test_thumbnails(tmp_path: Path, base: str) -> None:
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(64)

    async def run() -> None:
        async with media_gateway(tmp_path) as (url, session, client):
            token = client.token if base == AUTHED else None
            image = media_id_of(_ok(await upload(client, png, "image/png", "p.png")))
            text = media_id_of(_ok(await upload(client, b"words", "text/plain")))
            thumb = f"{url}{base}/thumbnail/localhost/"

            status, headers, data = await fetch(session, f"{thumb}{image}?width=32&height=32&method=crop", token)
            assert status == 200 and data == png
            assert headers["Content-Type"] == "image/png"
            assert headers["Content-Disposition"] == 'inline; filename="p.png"'
            assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY

            status, _, data = await fetch(session, f"{thumb}{text}?width=32&height=32", token)
            assert status == 400 and b"M_UNKNOWN" in data
            status, _, data = await fetch(session, f"{thumb}{'B' * 24}?width=32&height=32", token)
            assert status == 404 and b"M_NOT_FOUND" in data
            status, _, data = await fetch(session, f"{thumb}{image}?height=32", token)
            assert status == 400 and b"M_MISSING_PARAM" in data
            bad_queries = ("width=-1&height=32", "width=0&height=32", "width=a&height=32",
                           "width=8&height=8&method=zoom")  # fmt: skip
            for query in bad_queries:
                status, _, data = await fetch(session, f"{thumb}{image}?{query}", token)
                assert status == 400 and b"M_INVALID_PARAM" in data
            if token:
                status, _, data = await fetch(session, f"{thumb}{image}?width=32&height=32")
                assert status == 401

    asyncio.run(run())


def test_a_content_type_with_bytes_outside_ascii_is_refused(tmp_path: Path) -> None:
    # A 0xFF byte in the header reached the store as an unencodable character: a 500 with a traceback.
    async def main() -> None:
        async with media_gateway(tmp_path) as (url, _session, client):
            host, port = URL(url).host, URL(url).port
            for header in (b"image/png\xff", b"text/plain; charset=\xc3\xa9", b"\xff\xfe"):
                reader, writer = await asyncio.open_connection(host, port)
                body = b"payload"
                writer.write(b"POST " + UPLOAD.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                             + client.token.encode() + b"\r\nContent-Type: " + header + b"\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)  # fmt: skip
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                status_line = answer.split(b"\r\n", 1)[0]
                assert status_line.split()[1] == b"400", (header, answer[:300])
                assert b"M_INVALID_PARAM" in answer and b"Content-Type" in answer
            # an ordinary one still works
            status, _ = await upload(client, b"fine", "text/plain; charset=utf-8")
            assert status == 200

    asyncio.run(main())
