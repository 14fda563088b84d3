"""Server-side key backups (``/room_keys``): the replace rule, versions, etags, limits, restarts.

The rule and the validation are tried in memory first, with JSON vectors as a
client sends them; then every endpoint against a gateway in the test's loop
with the harness's raw client (so each status and error code is what the test
wrote), then across a restart and a ``kill -9`` of a subprocess gateway.

matrix-nio (0.26) has no key backup calls (no ``room_keys`` anywhere in the
package), so no nio client takes part here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from harness import Client, GatewayProcess, gateway_in_loop

from lowband.gateway.config import RateLimits
from lowband.gateway.homeserver import room_keys as rk
from lowband.gateway.matrix.errors import MatrixError
from lowband.gateway.store.interfaces import BackedUpKey
from lowband.gateway.store.sqlite import room_keys as tables
from lowband.gateway.store.sqlite.database import Database

V3 = "/_matrix/client/v3"
R0 = "/_matrix/client/r0"
NO_LIMITS = RateLimits(enabled=False)
ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
AUTH = {"public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo",
        "signatures": {"@alice:localhost": {"ed25519:DEV": "c2lnbmF0dXJl"}}}  # fmt: skip
ROOM_A = "!aaaa:localhost"
ROOM_B = "!bbbb:localhost"


def key(first: int = 0, forwarded: int = 0, verified: bool = False, tag: str = "x") -> dict[str, Any]:
    """A KeyBackupData as a client sends it; ``tag`` makes its session_data tell which upload it came from."""
    return {"first_message_index": first, "forwarded_count": forwarded, "is_verified": verified,
            "session_data": {"ephemeral": "ZXBoZW1lcmFs", "ciphertext": "Y2lwaGVy" + tag, "mac": "bWFj"}}  # fmt: skip


def stored(first: int, forwarded: int, verified: bool) -> BackedUpKey:
    return BackedUpKey(first, forwarded, verified, "{}")


def expect_error(result: tuple[int, Any], status: int, errcode: str) -> dict[str, Any]:
    got, body = result
    assert got == status and isinstance(body, dict) and body.get("errcode") == errcode, result
    return body


def expect_ok(result: tuple[int, Any]) -> Any:
    assert result[0] == 200, result
    return result[1]


def run(tmp_path: Path, scenario: Any, **config: Any) -> None:
    async def main() -> None:
        async with (
            gateway_in_loop(tmp_path, **{"rate_limits": NO_LIMITS, **config}) as base,
            aiohttp.ClientSession() as session,
        ):
            await scenario(base, session)

    asyncio.run(main())


async def user(session: aiohttp.ClientSession, base: str, name: str) -> Client:
    client = Client(session, base)
    await client.register(name)
    return client


async def new_version(client: Client) -> str:
    body = expect_ok(
        await client.request("POST", f"{V3}/room_keys/version", {"algorithm": ALGORITHM, "auth_data": AUTH})
    )
    assert isinstance(body["version"], str)
    return str(body["version"])


async def put_keys(client: Client, version: str, rooms: dict[str, dict[str, Any]]) -> tuple[int, Any]:
    body = {"rooms": {room: {"sessions": sessions} for room, sessions in rooms.items()}}
    return await client.request("PUT", f"{V3}/room_keys/keys?version={version}", body)


async def all_keys(client: Client, version: str) -> dict[str, Any]:
    return dict(expect_ok(await client.request("GET", f"{V3}/room_keys/keys?version={version}")))


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"a key twice in one object: {sorted(keys)[:5]}"
    return dict(pairs)


async def download(client: Client, path: str) -> Any:
    """GET ``path`` and parse the bytes strictly: a name twice in one object fails (json.loads keeps the last)."""
    async with client.session.get(client.base + path, headers={"Authorization": f"Bearer {client.token}"},
                                  timeout=aiohttp.ClientTimeout(total=30)) as response:  # fmt: skip
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        assert response.headers.get("Access-Control-Allow-Origin") == "*"  # a streamed answer has them too
        return json.loads(await response.read(), object_pairs_hook=no_duplicates)


async def version_info(client: Client, version: str | None = None) -> dict[str, Any]:
    path = f"{V3}/room_keys/version" + (f"/{version}" if version else "")
    return dict(expect_ok(await client.request("GET", path)))


# ------------------------------------------------------------- in memory


@pytest.mark.parametrize("old, new, replaced", [
    # is_verified decides first, whatever the indexes say
    ((0, 0, False), (5, 9, True), True),
    ((5, 9, True), (0, 0, False), False),
    # then the lower first_message_index, whatever the forwarded counts say
    ((4, 0, True), (3, 7, True), True),
    ((3, 0, False), (4, 0, False), False),
    # then the lower forwarded_count
    ((3, 2, False), (3, 1, False), True),
    ((3, 1, False), (3, 2, False), False),
    # a full tie keeps what is stored: the same key uploaded again changes nothing
    ((3, 1, True), (3, 1, True), False),
])  # fmt: skip
def test_the_replace_rule_follows_the_spec_order(old, new, replaced):
    assert rk.replaces(stored(*old), stored(*new)) is replaced


def test_keys_parsed_from_client_bytes_compare_as_the_spec_says():
    stored_bytes = (b'{"first_message_index":1,"forwarded_count":0,"is_verified":false,'
                    b'"session_data":{"ephemeral":"AQ","ciphertext":"Ag","mac":"Aw"}}')  # fmt: skip
    better_bytes = (b'{"first_message_index":0,"forwarded_count":3,"is_verified":false,'
                    b'"session_data":{"ephemeral":"BQ","ciphertext":"Bg","mac":"Bw"}}')  # fmt: skip
    verified_bytes = (b'{"first_message_index":9,"forwarded_count":9,"is_verified":true,'
                      b'"session_data":{"ephemeral":"CQ","ciphertext":"Cg","mac":"Cw"}}')  # fmt: skip
    old, better, verified = (rk.parse_key(json.loads(b)) for b in (stored_bytes, better_bytes, verified_bytes))
    assert old.session_data == '{"ephemeral":"AQ","ciphertext":"Ag","mac":"Aw"}'
    assert rk.replaces(old, better) and not rk.replaces(better, old)
    assert rk.replaces(better, verified) and not rk.replaces(verified, better)
    # what a GET hands back is the upload, byte for byte (compact, key order kept)
    assert rk.key_text(old).encode() == stored_bytes


@pytest.mark.parametrize("change, errcode", [
    ({"first_message_index": "1"}, "M_BAD_JSON"),
    ({"first_message_index": 1.0}, "M_BAD_JSON"),
    ({"first_message_index": True}, "M_BAD_JSON"),  # a bool is an int to Python, not to JSON
    ({"first_message_index": -1}, "M_INVALID_PARAM"),
    ({"forwarded_count": 2**53}, "M_INVALID_PARAM"),
    ({"forwarded_count": None}, "M_MISSING_PARAM"),
    ({"forwarded_count": [0]}, "M_BAD_JSON"),
    ({"is_verified": 1}, "M_BAD_JSON"),
    ({"is_verified": "true"}, "M_BAD_JSON"),
    ({"session_data": "opaque"}, "M_BAD_JSON"),
    ({"session_data": [1]}, "M_BAD_JSON"),
    ({"session_data": {"ciphertext": "A" * rk.MAX_SESSION_DATA_BYTES}}, "M_TOO_LARGE"),
])  # fmt: skip
def test_each_field_of_a_key_has_its_type_checked(change, errcode):
    data = {**key(), **change}
    if change.get("forwarded_count", 0) is None:
        del data["forwarded_count"]
    with pytest.raises(MatrixError) as refused:
        rk.parse_key(data)
    assert refused.value.errcode == errcode


@pytest.mark.parametrize("text", ["0", "01", "-1", "+1", "1.0", " 1", "1e3", "\u0661", "abc", "", "1" * 19])
def test_a_version_that_is_not_ours_is_not_found(text):
    with pytest.raises(MatrixError) as refused:
        rk.parse_version(text)
    assert (refused.value.status, refused.value.errcode) == (404, "M_NOT_FOUND")


def test_version_parsing_takes_our_decimals_and_needs_the_parameter():
    assert rk.parse_version("1") == 1 and rk.parse_version("123456789012345678") == 123456789012345678
    with pytest.raises(MatrixError) as refused:
        rk.parse_version(None)
    assert (refused.value.status, refused.value.errcode) == (400, "M_MISSING_PARAM")


def test_an_upload_past_the_per_request_caps_is_refused_before_anything_is_parsed_further():
    many = {"rooms": {ROOM_A: {"sessions": {f"s{i}": key() for i in range(rk.MAX_SESSIONS_PER_REQUEST + 1)}}}}
    spread = {"rooms": {f"!r{i}:localhost": {"sessions": {"s": key()}} for i in range(rk.MAX_SESSIONS_PER_REQUEST + 1)}}
    empty_rooms = {"rooms": {f"!r{i}:localhost": {"sessions": {}} for i in range(rk.MAX_ROOMS_PER_REQUEST + 1)}}
    for body in (many, spread, empty_rooms):
        with pytest.raises(MatrixError) as refused:
            rk.parse_upload(body)
        assert (refused.value.status, refused.value.errcode) == (413, "M_TOO_LARGE")
    at_cap = {"rooms": {ROOM_A: {"sessions": {f"s{i}": key() for i in range(rk.MAX_SESSIONS_PER_REQUEST)}}}}
    assert len(rk.parse_upload(at_cap)) == rk.MAX_SESSIONS_PER_REQUEST


def test_the_download_document_is_the_same_json_whatever_the_pages():
    rows = [
        (room, f"s{i}", BackedUpKey(i, 0, i % 2 == 0, f'{{"n":{i}}}')) for room in (ROOM_A, ROOM_B) for i in range(5)
    ]
    expected = {"rooms": {room: {"sessions": {f"s{i}": {"first_message_index": i, "forwarded_count": 0,
                                                        "is_verified": i % 2 == 0, "session_data": {"n": i}}
                                              for i in range(5)}} for room in (ROOM_A, ROOM_B)}}  # fmt: skip
    for size in (1, 3, 5, 7, 100):
        document = rk.KeysDocument(whole=True)
        text = "".join(document.feed(rows[i : i + size]) for i in range(0, len(rows), size)) + document.finish()
        assert json.loads(text) == expected, size
    assert rk.KeysDocument(whole=True).finish() == '{"rooms":{}}'
    assert rk.KeysDocument(whole=False).finish() == '{"sessions":{}}'
    one_room = rk.KeysDocument(whole=False)
    text = one_room.feed(rows[:2]) + one_room.finish()
    assert text == ('{"sessions":{"s0":{"first_message_index":0,"forwarded_count":0,"is_verified":true,'
                    '"session_data":{"n":0}},"s1":{"first_message_index":1,"forwarded_count":0,"is_verified":false,'
                    '"session_data":{"n":1}}}}')  # fmt: skip


# --------------------------------------------------------- over HTTP


def test_a_backup_is_created_filled_read_and_emptied_with_etag_and_count(tmp_path):
    async def scenario(base, session):
        alice = await user(session, base, "alice")
        expect_error(await alice.request("GET", f"{V3}/room_keys/version"), 404, "M_NOT_FOUND")
        version = await new_version(alice)
        assert version == "1"
        info = await version_info(alice)
        assert info == {"algorithm": ALGORITHM, "auth_data": AUTH, "count": 0, "etag": info["etag"], "version": "1"}
        assert await version_info(alice, "1") == info
        etag0 = info["etag"]

        answer = expect_ok(await put_keys(alice, version, {ROOM_A: {"s1": key(tag="1"), "s2": key(tag="2")},
                                                          ROOM_B: {"s3": key(tag="3")}}))  # fmt: skip
        assert answer["count"] == 3 and isinstance(answer["etag"], str) and answer["etag"] != etag0
        etag1 = answer["etag"]
        info = await version_info(alice)
        assert (info["count"], info["etag"]) == (3, etag1)
        assert await all_keys(alice, version) == {"rooms": {ROOM_A: {"sessions": {"s1": key(tag="1"), "s2": key(tag="2")}},
                                                            ROOM_B: {"sessions": {"s3": key(tag="3")}}}}  # fmt: skip
        # the same under /r0, a room's keys and one key
        status, body = await alice.request("GET", f"{R0}/room_keys/keys/{ROOM_A}?version={version}")
        assert (status, body) == (200, {"sessions": {"s1": key(tag="1"), "s2": key(tag="2")}})
        assert expect_ok(await alice.request("GET", f"{V3}/room_keys/keys/{ROOM_B}/s3?version={version}")) == key(
            tag="3"
        )
        expect_error(
            await alice.request("GET", f"{V3}/room_keys/keys/{ROOM_B}/nope?version={version}"), 404, "M_NOT_FOUND"
        )
        assert expect_ok(await alice.request("GET", f"{V3}/room_keys/keys/!none:localhost?version={version}")) == {
            "sessions": {}
        }

        # the same keys again, or worse ones, change nothing: same etag, the stored data stays
        for worse in (key(tag="again"), key(first=1, tag="later"), key(forwarded=2, tag="forwarded")):
            assert expect_ok(await put_keys(alice, version, {ROOM_A: {"s1": worse}})) == {"etag": etag1, "count": 3}
        assert (await all_keys(alice, version))["rooms"][ROOM_A]["sessions"]["s1"] == key(tag="1")
        # a verified key replaces it, one session at a time as well
        path = f"{V3}/room_keys/keys/{ROOM_A}/s1?version={version}"
        answer = expect_ok(await alice.request("PUT", path, key(first=4, verified=True, tag="v")))
        assert answer["count"] == 3 and answer["etag"] not in (etag0, etag1)
        assert expect_ok(await alice.request("GET", path)) == key(first=4, verified=True, tag="v")
        # a room's keys at once
        answer = expect_ok(await alice.request("PUT", f"{V3}/room_keys/keys/{ROOM_B}?version={version}",
                                               {"sessions": {"s4": key(tag="4")}}))  # fmt: skip
        assert answer["count"] == 4

        # deleting: one key, a room, everything; each changes the etag and the count
        etags = {answer["etag"]}
        for path, count in ((f"/{ROOM_A}/s1", 3), (f"/{ROOM_B}", 1), ("", 0)):
            answer = expect_ok(await alice.request("DELETE", f"{V3}/room_keys/keys{path}?version={version}"))
            assert answer["count"] == count and answer["etag"] not in etags
            etags.add(answer["etag"])
        # deleting what is not there changes nothing
        assert expect_ok(await alice.request("DELETE", f"{V3}/room_keys/keys?version={version}")) == answer
        assert await all_keys(alice, version) == {"rooms": {}}
        assert (await version_info(alice))["count"] == 0

    run(tmp_path, scenario)


def test_keys_go_only_to_the_current_version_and_a_deleted_version_takes_its_keys(tmp_path):
    found: dict[str, Any] = {}

    async def scenario(base, session):
        alice = await user(session, base, "alice")
        first = await new_version(alice)
        expect_ok(await put_keys(alice, first, {ROOM_A: {"s1": key(tag="old")}}))
        second = await new_version(alice)
        assert (first, second) == ("1", "2")
        assert (await version_info(alice))["version"] == "2"
        # an upload to the old version is told which one is current
        body = expect_error(await put_keys(alice, first, {ROOM_A: {"s2": key()}}), 403, "M_WRONG_ROOM_KEYS_VERSION")
        assert body["current_version"] == "2"
        body = expect_error(await put_keys(alice, "77", {ROOM_A: {"s2": key()}}), 403, "M_WRONG_ROOM_KEYS_VERSION")
        assert body["current_version"] == "2"
        # the old version is still readable, and its auth_data can be changed
        assert (await all_keys(alice, first))["rooms"][ROOM_A]["sessions"] == {"s1": key(tag="old")}
        new_auth = {"public_key": "bmV3IGtleQ", "signatures": {}}
        expect_ok(await alice.request("PUT", f"{V3}/room_keys/version/{first}",
                                      {"algorithm": ALGORITHM, "auth_data": new_auth, "version": first}))  # fmt: skip
        info = await version_info(alice, first)
        assert info["auth_data"] == new_auth and info["count"] == 1
        # the update must name the version's algorithm and, if any, the path's version
        update = f"{V3}/room_keys/version/{first}"
        expect_error(await alice.request("PUT", update, {"algorithm": "org.example.other", "auth_data": new_auth}), 400,
                     "M_INVALID_PARAM")  # fmt: skip
        expect_error(await alice.request("PUT", update, {"algorithm": ALGORITHM, "auth_data": new_auth, "version": "2"}),
                     400, "M_INVALID_PARAM")  # fmt: skip
        expect_error(await alice.request("PUT", update, {"algorithm": ALGORITHM, "auth_data": new_auth, "version": 1}),
                     400, "M_BAD_JSON")  # fmt: skip
        expect_error(await alice.request("PUT", f"{V3}/room_keys/version/9", {"algorithm": ALGORITHM, "auth_data": AUTH}),
                     404, "M_NOT_FOUND")  # fmt: skip

        # deleting the current version makes the one before current; deleting twice is fine, a never-made one is 404
        expect_ok(await put_keys(alice, second, {ROOM_B: {"s9": key()}}))
        tables = found["services"].store.room_keys
        assert len(tables.keys_page(alice.user_id, 2, None, None, 10)) == 1
        assert expect_ok(await alice.request("DELETE", f"{V3}/room_keys/version/{second}")) == {}
        assert tables.keys_page(alice.user_id, 2, None, None, 10) == []  # the rows went, not only the version
        assert (await version_info(alice))["version"] == "1"
        assert expect_ok(await alice.request("DELETE", f"{V3}/room_keys/version/{second}")) == {}
        expect_error(await alice.request("DELETE", f"{V3}/room_keys/version/3"), 404, "M_NOT_FOUND")
        expect_error(await alice.request("GET", f"{V3}/room_keys/version/{second}"), 404, "M_NOT_FOUND")
        expect_error(await alice.request("GET", f"{V3}/room_keys/keys?version={second}"), 404, "M_NOT_FOUND")
        expect_error(await alice.request("DELETE", f"{V3}/room_keys/keys?version={second}"), 404, "M_NOT_FOUND")
        # numbers are never reused, and a new version starts empty (the deleted one's keys went with it)
        third = await new_version(alice)
        assert third == "3" and await all_keys(alice, third) == {"rooms": {}}
        assert (await version_info(alice, third))["count"] == 0
        # with no version left, uploads are 404
        for version in (first, third):
            expect_ok(await alice.request("DELETE", f"{V3}/room_keys/version/{version}"))
        expect_error(await put_keys(alice, third, {ROOM_A: {"s1": key()}}), 404, "M_NOT_FOUND")
        expect_error(await alice.request("GET", f"{V3}/room_keys/version"), 404, "M_NOT_FOUND")

    run(tmp_path, scenario, on_ready=lambda services: found.update(services=services))


def test_one_user_cannot_read_change_or_delete_another_users_backup(tmp_path):
    async def scenario(base, session):
        alice, mallory = await user(session, base, "alice"), await user(session, base, "mallory")
        version = await new_version(alice)
        answer = expect_ok(await put_keys(alice, version, {ROOM_A: {"s1": key(tag="secret")}}))
        before = await version_info(alice)

        expect_error(await mallory.request("GET", f"{V3}/room_keys/version"), 404, "M_NOT_FOUND")
        for method, path, body in (
            ("GET", f"/room_keys/version/{version}", None),
            ("PUT", f"/room_keys/version/{version}", {"algorithm": ALGORITHM, "auth_data": {"public_key": "evil"}}),
            ("DELETE", f"/room_keys/version/{version}", None),
            ("GET", f"/room_keys/keys?version={version}", None),
            ("GET", f"/room_keys/keys/{ROOM_A}?version={version}", None),
            ("GET", f"/room_keys/keys/{ROOM_A}/s1?version={version}", None),
            ("PUT", f"/room_keys/keys/{ROOM_A}/s1?version={version}", key(verified=True, tag="evil")),
            ("DELETE", f"/room_keys/keys?version={version}", None),
            ("DELETE", f"/room_keys/keys/{ROOM_A}/s1?version={version}", None),
        ):  # fmt: skip
            expect_error(await mallory.request(method, V3 + path, body), 404, "M_NOT_FOUND")
        # mallory's own backup is numbered in his own space and holds nothing of alice's
        assert await new_version(mallory) == "1"
        assert await all_keys(mallory, "1") == {"rooms": {}}
        body = expect_error(await mallory.request("PUT", f"{V3}/room_keys/keys?version=2", {"rooms": {}}), 403,
                            "M_WRONG_ROOM_KEYS_VERSION")  # fmt: skip
        assert body["current_version"] == "1"
        expect_ok(await put_keys(mallory, "1", {ROOM_A: {"s1": key(verified=True, tag="evil")}}))
        # alice's backup is as she left it
        assert await version_info(alice) == before and before["etag"] == answer["etag"]
        assert (await all_keys(alice, version))["rooms"][ROOM_A]["sessions"]["s1"] == key(tag="secret")
        # and without a token there is nothing at all
        anonymous = Client(session, base)
        expect_error(await anonymous.request("GET", f"{V3}/room_keys/keys?version=1"), 401, "M_MISSING_TOKEN")

    run(tmp_path, scenario)


def test_hostile_uploads_are_refused_whole_and_legitimate_ones_still_work(tmp_path, caplog):
    found: dict[str, Any] = {}

    async def scenario(base, session):
        alice = await user(session, base, "alice")
        version = await new_version(alice)
        expect_ok(await put_keys(alice, version, {ROOM_A: {"kept": key(tag="kept")}}))
        before = await version_info(alice)
        keys_path = f"{V3}/room_keys/keys?version={version}"

        refusals = [
            ({"rooms": []}, "M_BAD_JSON"),
            ({"rooms": {ROOM_A: []}}, "M_BAD_JSON"),
            ({"rooms": {ROOM_A: {"sessions": "x"}}}, "M_BAD_JSON"),
            ({"rooms": {ROOM_A: {}}}, "M_MISSING_PARAM"),
            ({}, "M_MISSING_PARAM"),
            ({"rooms": {"not-a-room": {"sessions": {"s": key()}}}}, "M_INVALID_PARAM"),
            ({"rooms": {"!x:localhost\n": {"sessions": {"s": key()}}}}, "M_INVALID_PARAM"),
            ({"rooms": {ROOM_A: {"sessions": {"": key()}}}}, "M_INVALID_PARAM"),
            ({"rooms": {ROOM_A: {"sessions": {"s" * 256: key()}}}}, "M_INVALID_PARAM"),
            # a bad key after a good one: nothing of the request is stored
            ({"rooms": {ROOM_A: {"sessions": {"good": key(), "bad": {**key(), "is_verified": "yes"}}}}}, "M_BAD_JSON"),
            ({"rooms": {ROOM_A: {"sessions": {"good": key()}}, ROOM_B: {"sessions": {"bad": {**key(), "forwarded_count": -5}}}}},
             "M_INVALID_PARAM"),
        ]  # fmt: skip
        for body, errcode in refusals:
            expect_error(await alice.request("PUT", keys_path, body), 400, errcode)
        # more keys in one request than allowed, and a body over the JSON limit
        many = {f"s{i}": key() for i in range(rk.MAX_SESSIONS_PER_REQUEST + 1)}
        expect_error(await put_keys(alice, version, {ROOM_A: many}), 413, "M_TOO_LARGE")
        huge = json.dumps({"rooms": {ROOM_A: {"sessions": {"s": {**key(), "pad": "x" * (1 << 20)}}}}}).encode()
        expect_error(await alice.request("PUT", keys_path, raw=huge), 413, "M_TOO_LARGE")
        fat = {**key(), "session_data": {"ciphertext": "A" * rk.MAX_SESSION_DATA_BYTES}}
        expect_error(await put_keys(alice, version, {ROOM_A: {"fat": fat}}), 413, "M_TOO_LARGE")
        # versions that are not ours, in the query and in the path; no version at all
        for bad in ("0", "01", "-1", "abc", "1.0", "%D9%A1", "9" * 30):
            expect_error(
                await alice.request("PUT", f"{V3}/room_keys/keys?version={bad}", {"rooms": {}}), 404, "M_NOT_FOUND"
            )
            expect_error(await alice.request("GET", f"{V3}/room_keys/keys?version={bad}"), 404, "M_NOT_FOUND")
            expect_error(await alice.request("GET", f"{V3}/room_keys/version/{bad}"), 404, "M_NOT_FOUND")
            expect_error(await alice.request("DELETE", f"{V3}/room_keys/version/{bad}"), 404, "M_NOT_FOUND")
        expect_error(await alice.request("PUT", f"{V3}/room_keys/keys", {"rooms": {}}), 400, "M_MISSING_PARAM")
        expect_error(await alice.request("GET", f"{V3}/room_keys/keys"), 400, "M_MISSING_PARAM")
        # bad version descriptions
        create = f"{V3}/room_keys/version"
        for body, errcode in (
            ({"auth_data": AUTH}, "M_MISSING_PARAM"),
            ({"algorithm": ALGORITHM}, "M_MISSING_PARAM"),
            ({"algorithm": 5, "auth_data": AUTH}, "M_BAD_JSON"),
            ({"algorithm": ALGORITHM, "auth_data": "x"}, "M_BAD_JSON"),
            ({"algorithm": ALGORITHM, "auth_data": {"public_key": 5}}, "M_BAD_JSON"),
            ({"algorithm": ALGORITHM, "auth_data": {"public_key": "k", "signatures": []}}, "M_BAD_JSON"),
            ({"algorithm": "has space", "auth_data": AUTH}, "M_INVALID_PARAM"),
            ({"algorithm": "a" * 256, "auth_data": AUTH}, "M_INVALID_PARAM"),
        ):  # fmt: skip
            expect_error(await alice.request("POST", create, body), 400, errcode)
        expect_error(await alice.request("POST", create, {"algorithm": ALGORITHM,
                                                          "auth_data": {"public_key": "k" * rk.MAX_AUTH_DATA_BYTES}}),
                     413, "M_TOO_LARGE")  # fmt: skip

        # every refusal but the oversized body (refused by the JSON reader, before this API) was counted and logged
        refused = found["services"].components["room_keys"].refused
        assert sum(refused.values()) == 52 and refused["M_NOT_FOUND"] == 28, refused
        assert "room_keys: refused storing keys for @alice:localhost: M_BAD_JSON" in caplog.text
        # none of it reached the backup, and it still takes legitimate uploads
        assert await version_info(alice) == before and (await version_info(alice))["version"] == version
        assert await all_keys(alice, version) == {"rooms": {ROOM_A: {"sessions": {"kept": key(tag="kept")}}}}
        at_cap = {f"c{i}": key() for i in range(rk.MAX_SESSIONS_PER_REQUEST)}
        assert expect_ok(await put_keys(alice, version, {ROOM_B: at_cap}))["count"] == rk.MAX_SESSIONS_PER_REQUEST + 1
        # session IDs are standard base64: '/' and '+' arrive percent-encoded in paths
        session_id = "ab/c+d="
        path = f"{V3}/room_keys/keys/{quote(ROOM_A, safe='')}/{quote(session_id, safe='')}?version={version}"
        expect_ok(await alice.request("PUT", path, key(tag="slash"), exact_path=True))
        assert expect_ok(await alice.request("GET", path, exact_path=True)) == key(tag="slash")
        assert session_id in (await all_keys(alice, version))["rooms"][ROOM_A]["sessions"]

    caplog.set_level(logging.INFO, logger=rk.__name__)
    run(tmp_path, scenario, on_ready=lambda services: found.update(services=services))


def test_a_user_cannot_store_more_keys_bytes_or_versions_than_the_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(rk, "MAX_KEYS_PER_USER", 30)
    monkeypatch.setattr(rk, "MAX_BYTES_PER_USER", 40 * 200)
    monkeypatch.setattr(rk, "MAX_VERSIONS_PER_USER", 3)

    async def scenario(base, session):
        alice, bob = await user(session, base, "alice"), await user(session, base, "bob")
        first = await new_version(alice)
        assert expect_ok(await put_keys(alice, first, {ROOM_A: {f"s{i}": key() for i in range(20)}}))["count"] == 20
        second = await new_version(alice)
        # the limit counts every live version: 20 + 11 is over 30, refused whole
        body = expect_error(
            await put_keys(alice, second, {ROOM_B: {f"t{i}": key() for i in range(11)}}), 403, "M_FORBIDDEN"
        )
        assert "30" in body["error"]
        assert (await version_info(alice, second))["count"] == 0
        assert expect_ok(await put_keys(alice, second, {ROOM_B: {f"t{i}": key() for i in range(10)}}))["count"] == 10
        expect_error(await put_keys(alice, second, {ROOM_B: {"one-more": key()}}), 403, "M_FORBIDDEN")
        # a better key for a session already stored adds nothing and is still taken
        assert expect_ok(await put_keys(alice, second, {ROOM_B: {"t0": key(verified=True)}}))["count"] == 10
        # versions: at most 3 live ones
        await new_version(alice)
        expect_error(await alice.request("POST", f"{V3}/room_keys/version", {"algorithm": ALGORITHM, "auth_data": AUTH}),
                     403, "M_FORBIDDEN")  # fmt: skip
        # deleting the old version gives its room back
        expect_ok(await alice.request("DELETE", f"{V3}/room_keys/version/{first}"))
        current = await new_version(alice)
        assert expect_ok(await put_keys(alice, current, {ROOM_A: {f"u{i}": key() for i in range(20)}}))["count"] == 20
        # bytes: another user (limits are per user) fills with big session_data
        fat = {**key(), "session_data": {"ciphertext": "A" * 900}}
        version = await new_version(bob)
        assert expect_ok(await put_keys(bob, version, {ROOM_A: {f"f{i}": fat for i in range(8)}}))["count"] == 8
        body = expect_error(await put_keys(bob, version, {ROOM_A: {"f9": fat}}), 403, "M_FORBIDDEN")
        assert "bytes" in body["error"]
        assert expect_ok(await put_keys(bob, version, {ROOM_A: {"small": key()}}))["count"] == 9

    run(tmp_path, scenario)


def test_racing_uploads_cannot_together_pass_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(rk, "MAX_KEYS_PER_USER", 10)

    async def scenario(base, session):
        alice = await user(session, base, "alice")
        version = await new_version(alice)
        results = await asyncio.gather(*(put_keys(alice, version, {ROOM_A: {f"r{n}-{i}": key() for i in range(3)}})
                                         for n in range(6)))  # fmt: skip
        statuses = sorted(status for status, _ in results)
        assert statuses == [200, 200, 200, 403, 403, 403], results
        assert (await version_info(alice))["count"] == 9
        assert sum(len(r["sessions"]) for r in (await all_keys(alice, version))["rooms"].values()) == 9

    run(tmp_path, scenario)


def test_a_big_backup_downloads_whole_a_page_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(rk, "DOWNLOAD_PAGE", 7)  # page boundaries fall inside rooms and between them

    async def scenario(base, session):
        alice = await user(session, base, "alice")
        version = await new_version(alice)
        rooms = {f"!room{r}:localhost": {f"s{r}-{i:04d}": key(first=i, tag=f"{r}.{i}") for i in range(r * 5 + 1)}
                 for r in range(12)}  # fmt: skip
        rooms["!big:localhost"] = {f"b{i:04d}": key(first=i) for i in range(600)}
        answer = expect_ok(await put_keys(alice, version, rooms))
        total = sum(len(s) for s in rooms.values())
        assert answer["count"] == total
        expected = {room: {"sessions": sessions} for room, sessions in rooms.items()}
        assert await download(alice, f"{V3}/room_keys/keys?version={version}") == {"rooms": expected}
        for room in ("!room0:localhost", "!room7:localhost", "!big:localhost"):
            got = await download(alice, f"{V3}/room_keys/keys/{room}?version={version}")
            assert got == expected[room], room

    run(tmp_path, scenario)


def test_many_keys_go_a_batch_per_write_and_counts_stay_right(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "PURGE_BATCH", 7)  # deletes of 30 keys take several writes
    found: dict[str, Any] = {}

    async def scenario(base, session):
        alice = await user(session, base, "alice")
        version = await new_version(alice)
        expect_ok(await put_keys(alice, version, {ROOM_A: {f"a{i}": key() for i in range(30)},
                                                  ROOM_B: {f"b{i}": key() for i in range(21)}}))  # fmt: skip
        commits = found["services"].store.db.commits
        answer = expect_ok(await alice.request("DELETE", f"{V3}/room_keys/keys/{ROOM_A}?version={version}"))
        assert answer["count"] == 21 and found["services"].store.db.commits - commits >= 5
        assert list((await all_keys(alice, version))["rooms"]) == [ROOM_B]
        assert expect_ok(await alice.request("DELETE", f"{V3}/room_keys/keys?version={version}"))["count"] == 0
        expect_ok(await put_keys(alice, version, {ROOM_A: {f"c{i}": key() for i in range(22)}}))
        expect_ok(await alice.request("DELETE", f"{V3}/room_keys/version/{version}"))
        store = found["services"].store.room_keys
        assert store.keys_page(alice.user_id, int(version), None, None, 100) == []
        assert store.db.query("SELECT * FROM room_key_purges") == []

    run(tmp_path, scenario, on_ready=lambda services: found.update(services=services))


def test_a_version_delete_cut_short_by_a_crash_is_finished_when_the_tables_open(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "PURGE_BATCH", 5)
    path = tmp_path / "keys.db"
    db = Database(path, "")
    store = tables.RoomKeyTables(db)

    async def fill() -> None:
        for user_id in ("@a:x", "@b:x"):
            version = await store.create_version(user_id, ALGORITHM, "{}", 10)
            keys = [(ROOM_A, f"s{i}", rk.parse_key(key())) for i in range(23)]
            assert await store.put_keys(user_id, version, keys, rk.replaces, 100, 1 << 20) == (1, 23)

    asyncio.run(fill())

    def crash_state(c):  # what the first write of delete_version leaves when the process dies right after it
        c.execute("DELETE FROM room_key_versions WHERE user_id = '@a:x'")
        c.execute("INSERT INTO room_key_purges VALUES ('@a:x', 1)")

    db.write_sync(crash_state)
    assert len(store.keys_page("@a:x", 1, None, None, 100)) == 23
    db.close()
    db = Database(path, "")
    try:
        store = tables.RoomKeyTables(db)
        assert store.keys_page("@a:x", 1, None, None, 100) == []
        assert db.query("SELECT * FROM room_key_purges") == []
        assert len(store.keys_page("@b:x", 1, None, None, 100)) == 23  # another user's backup is untouched
        assert store.current_version("@b:x").key_count == 23
    finally:
        db.close()


def test_backups_survive_a_restart_and_numbering_goes_on(tmp_path):
    state: dict[str, Any] = {}

    async def before(base, session):
        alice = await user(session, base, "alice")
        state["token"] = alice.token
        for _ in range(3):
            await new_version(alice)
        expect_ok(await alice.request("DELETE", f"{V3}/room_keys/version/3"))
        expect_ok(
            await put_keys(alice, "2", {ROOM_A: {"s1": key(tag="a")}, ROOM_B: {"s2": key(verified=True, tag="b")}})
        )
        state["info"] = await version_info(alice)
        state["keys"] = await all_keys(alice, "2")

    async def after(base, session):
        alice = Client(session, base, token=state["token"])
        assert await version_info(alice) == state["info"] and state["info"]["count"] == 2
        assert await all_keys(alice, "2") == state["keys"]
        # version 3 stays deleted (200 again), and no number is handed out twice
        assert expect_ok(await alice.request("DELETE", f"{V3}/room_keys/version/3")) == {}
        assert await new_version(alice) == "4"
        # the replace rule still sees what was stored before the restart
        assert expect_ok(await put_keys(alice, "4", {ROOM_A: {"s1": key()}}))["count"] == 1
        body = expect_error(await put_keys(alice, "2", {ROOM_B: {"s2": key()}}), 403, "M_WRONG_ROOM_KEYS_VERSION")
        assert body["current_version"] == "4"

    run(tmp_path, before)
    run(tmp_path, after)


def test_kill_9_loses_no_acknowledged_key(tmp_path):
    gateway = GatewayProcess(tmp_path / "data", config="[rate_limits]\nenabled = false\n")
    gateway.start()
    acked: list[str] = []
    try:

        async def before_kill() -> tuple[str, str]:
            async with aiohttp.ClientSession() as session:
                alice = Client(session, gateway.url)
                await alice.register("alice")
                version = await new_version(alice)

                async def upload() -> None:
                    for i in range(2000):
                        session_id = f"s{i:04d}"
                        try:
                            status, _ = await alice.request("PUT", f"{V3}/room_keys/keys/{ROOM_A}/{session_id}"
                                                                   f"?version={version}", key(tag=session_id))  # fmt: skip
                        except (TimeoutError, aiohttp.ClientError, ConnectionError):
                            return
                        assert status == 200
                        acked.append(session_id)

                task = asyncio.create_task(upload())
                while len(acked) < 40 and not task.done():
                    await asyncio.sleep(0.001)
                gateway.kill()
                await asyncio.wait_for(task, 30)
                assert alice.token is not None
                return alice.token, version

        token, version = asyncio.run(before_kill())
        assert 40 <= len(acked) < 2000, "the kill did not land in the middle of the uploads"
        gateway.start()

        async def after_restart() -> None:
            async with aiohttp.ClientSession() as session:
                alice = Client(session, gateway.url, token=token)
                sessions = (await all_keys(alice, version))["rooms"][ROOM_A]["sessions"]
                assert set(acked) <= set(sessions)
                assert all(sessions[s] == key(tag=s) for s in sessions)
                # the count kept with the version is the number of keys there really are
                assert (await version_info(alice))["count"] == len(sessions)

        asyncio.run(after_restart())
    finally:
        gateway.stop()
