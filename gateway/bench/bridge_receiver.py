"""The bridge of ``lowband bench appservice``: a minimal application service that receives pushes and keeps a ledger.

The same code receives from every server under test. It answers
``PUT /_matrix/app/v1/transactions/{txnId}`` (and, so a homeserver that asks
does not stall, ``POST /_matrix/app/v1/ping`` and the user and alias queries)
on 127.0.0.1, checks the ``hs_token`` the homeserver must present, answers
``{}``, and records in a :class:`PushLedger`:

* each transaction ID once — a retried ID (the spec's way to make a push
  idempotent) is answered ``{}`` again and counted as a retry, its events not
  counted twice;
* each event ID with the time of its first arrival, and every further arrival
  of the same event in another transaction as a duplicate;
* for the load client's messages, the arrival time by their body text (the
  marker the client put in), which is how it times send → push.

The ledger is sans-I/O (it takes the parsed body and ``now``), so its
accounting is tested without a server. Nothing here prints; the receiver never
raises on what a homeserver sends it: a bad token or a malformed body is
answered with the spec's error and counted.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PREFIX = "/_matrix/app/v1"
#: bodies larger than this are refused by aiohttp with 413 (Synapse sends at most 100 events a transaction)
MAX_BODY_BYTES = 16 * 1024 * 1024


def check_hs_token(authorization: str | None, query_token: str | None, expected: str) -> tuple[int, str] | None:
    """None when the request carries ``expected``; else (HTTP status, errcode) to refuse it with.

    The token comes as ``Authorization: Bearer …`` (the spec since v1.4) or
    as the older ``?access_token=`` (Synapse still sends both); either one
    matching is enough. No token at all is 401 ``M_UNAUTHORIZED``, a wrong
    one 403 ``M_FORBIDDEN``, as the spec says for an application service.
    """
    offered: list[str] = []
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            offered.append(value.strip())
    if query_token:
        offered.append(query_token)
    if not offered:
        return 401, "M_UNAUTHORIZED"
    if any(hmac.compare_digest(token.encode(), expected.encode()) for token in offered):
        return None
    return 403, "M_FORBIDDEN"


@dataclass
class PushLedger:
    """What the bridge has received, counted; sans-I/O (``now`` is given)."""

    #: distinct transactions accepted
    transactions: int = 0
    #: transactions received again under an ID already accepted (answered {} and not counted again)
    retried: int = 0
    #: events carried by accepted transactions, duplicates included
    events: int = 0
    #: arrivals of an event ID already received in an earlier (different) transaction or earlier in the same one
    duplicated: int = 0
    #: requests refused: no token, a wrong token, a body that is not a transaction
    refused: int = 0
    #: the number of events of each accepted transaction, in arrival order
    sizes: list[int] = field(default_factory=list)
    #: event ID → time of its first arrival
    first_seen: dict[str, float] = field(default_factory=dict)
    #: message body (the load client's marker) → time of its first arrival
    by_body: dict[str, float] = field(default_factory=dict)
    _txn_ids: set[str] = field(default_factory=set, repr=False)

    def accept(self, txn_id: str, body: Any, now: float) -> bool:
        """Record one transaction; False (counted as refused) when ``body`` is not one.

        A body is a JSON object whose ``events`` is a list; events that are
        not objects or carry no ``event_id`` are counted in :attr:`events`
        but cannot be matched. A transaction ID seen before is a retry: it is
        acknowledged (True) and nothing in it is counted again.
        """
        if not isinstance(body, dict) or not isinstance(body.get("events", []), list):
            self.refused += 1
            return False
        if txn_id in self._txn_ids:
            self.retried += 1
            return True
        self._txn_ids.add(txn_id)
        events = body.get("events", [])
        self.transactions += 1
        self.sizes.append(len(events))
        self.events += len(events)
        for event in events:
            if not isinstance(event, dict) or not isinstance(event.get("event_id"), str):
                continue
            event_id = event["event_id"]
            if event_id in self.first_seen:
                self.duplicated += 1
                continue
            self.first_seen[event_id] = now
            content = event.get("content")
            text = content.get("body") if isinstance(content, dict) else None
            if isinstance(text, str) and text not in self.by_body:
                self.by_body[text] = now
        return True

    def missing(self, bodies: Iterable[str]) -> list[str]:
        """Those of ``bodies`` that have not arrived."""
        return [b for b in bodies if b not in self.by_body]


class BridgeReceiver:
    """The ledger behind an aiohttp server on 127.0.0.1: start, wait for markers, stop."""

    def __init__(self, hs_token: str, clock: Callable[[], float] = time.perf_counter) -> None:
        self.hs_token = hs_token
        self.ledger = PushLedger()
        #: requests to paths an application service does not serve (answered 404)
        self.unknown_requests = 0
        self._clock = clock
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1:``port`` (0: any free port); returns the port."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_put(PREFIX + "/transactions/{txn_id}", self._transaction)
        app.router.add_post(PREFIX + "/ping", self._ping)
        app.router.add_get(PREFIX + "/users/{user_id}", self._query)
        app.router.add_get(PREFIX + "/rooms/{alias}", self._query)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Close the server (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, bodies: Iterable[str], timeout_s: float) -> bool:
        """Wait until every one of ``bodies`` has arrived; False when ``timeout_s`` passes first."""
        wanted = list(bodies)
        deadline = time.monotonic() + timeout_s
        while self.ledger.missing(wanted):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            if not self.ledger.missing(wanted):
                break
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return not self.ledger.missing(wanted)
        return True

    def _refusal(self, request: web.Request) -> web.Response | None:
        refused = check_hs_token(request.headers.get("Authorization"), request.query.get("access_token"), self.hs_token)
        if refused is None:
            return None
        self.ledger.refused += 1
        status, errcode = refused
        return web.json_response({"errcode": errcode, "error": "bad or missing hs_token"}, status=status)

    async def _transaction(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        raw = await request.read()
        now = self._clock()  # the whole body is here: this is when the bridge has the events
        try:
            body = json.loads(raw)
        except ValueError:
            self.ledger.refused += 1
            return web.json_response({"errcode": "M_NOT_JSON", "error": "body is not JSON"}, status=400)
        if not self.ledger.accept(request.match_info["txn_id"], body, now):
            return web.json_response({"errcode": "M_BAD_JSON", "error": "not a transaction"}, status=400)
        self._changed.set()
        return web.json_response({})

    async def _ping(self, request: web.Request) -> web.Response:
        return self._refusal(request) or web.json_response({})

    async def _query(self, request: web.Request) -> web.Response:
        # The bench bridge provisions no users or rooms on demand.
        return self._refusal(request) or web.json_response({"errcode": "M_NOT_FOUND", "error": "none here"}, status=404)

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unknown_requests += 1
        return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "unknown path"}, status=404)
