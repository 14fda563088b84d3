"""Crashes found with the fuzz targets, replayed as the attack against a running gateway.

An inline filter nested deeper than Python's recursion limit made
``json.loads`` raise ``RecursionError``, which the filter parsers of
``/sync`` and ``/messages`` did not catch: a 500 with a traceback for any
user, in one 7 KB request line (aiohttp takes up to 8,190). Seen while
writing the http_params target, whose property it breaks (the vector is
tests/fuzz/vectors/http_params/review-deep-inline-filter). Now it is the
endpoint's documented 400 M_NOT_JSON, and the gateway goes on serving.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import aiohttp
from harness import Client, gateway_in_loop

V3 = "/_matrix/client/v3"


def test_a_deeply_nested_inline_filter_is_a_400_not_a_500(tmp_path):
    deep = '{"room":{"timeline":' + "[" * 1200 + "]" * 1200 + "}}"
    deep_list = "[" * 1200 + "]" * 1200

    async def scenario():
        async with gateway_in_loop(tmp_path) as base, aiohttp.ClientSession() as session:
            alice = Client(session, base)
            await alice.register("alice")
            status, body = await alice.request("POST", f"{V3}/createRoom", {})
            assert status == 200, body
            room = quote(body["room_id"])
            for path in (f"{V3}/sync?timeout=0&filter={quote(deep)}", f"{V3}/rooms/{room}/messages?filter={quote(deep)}",
                         f"{V3}/rooms/{room}/messages?filter={quote(deep_list)}"):  # fmt: skip
                status, body = await alice.request("GET", path)
                assert status == 400 and body["errcode"] == "M_NOT_JSON", (path[:60], status, body)
            # Legitimate inline filters and the rest of the API still work.
            wanted = quote(json.dumps({"room": {"timeline": {"limit": 1}}}))
            status, body = await alice.request("GET", f"{V3}/sync?timeout=0&filter={wanted}")
            assert status == 200 and "rooms" in body
            one = quote(json.dumps({"limit": 1}))
            status, body = await alice.request("GET", f"{V3}/rooms/{room}/messages?dir=b&filter={one}")
            assert status == 200 and len(body["chunk"]) == 1
            status, _ = await alice.request("GET", "/_matrix/client/versions", token=False)
            assert status == 200

    asyncio.run(asyncio.wait_for(scenario(), 90))
