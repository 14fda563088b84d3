"""Legacy client endpoints that bots and one maintained client still call (the spec deprecated them).

* ``POST /rooms/{roomId}/send/{eventType}``: a send without a transaction ID
  (older bot libraries and shell scripts with curl). Not idempotent: a
  retried request sends twice, which is why the spec replaced it.
* ``GET /events?from=&timeout=[&room_id=]``: the old event stream. Events of
  the rooms the user is joined to (and the membership event that put them in
  or out of a room) after ``from``, oldest first; with ``room_id``, of that
  room only, which the user may read without being in it when it is
  ``world_readable`` (matrix-js-sdk's ``peekInRoom``, behind Element's room
  previews, polls it so after ``/rooms/{roomId}/initialSync``; 403 for a room
  the user may not read). At most :data:`MAX_EVENTS` per call; ``end`` is
  where the next call goes on from, so nothing is skipped however busy the
  rooms are. Long-polls up to ``timeout`` ms (at most
  :data:`MAX_TIMEOUT_MS`). Without ``from`` it starts now. Tokens are /sync
  tokens, so either stream can take over from the other. Typing, receipts and
  presence are not carried (the old stream's clients did not need them to
  read and answer messages).
* ``GET /initialSync`` and ``GET /rooms/{roomId}/initialSync``: a snapshot
  of every room (or one room) with its state and the last ``limit`` messages
  (default :data:`DEFAULT_LIMIT`, at most :data:`MAX_LIMIT`); ``archived=true``
  adds the rooms the user left.

Every read goes through :class:`~lowband.gateway.homeserver.sync.SyncHandler`,
so history visibility is the same as for /sync and /messages.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from lowband.gateway.api.http.base import CLIENT, authenticate, json_body, ok, query_int, rate_limit, services
from lowband.gateway.homeserver.services import Services
from lowband.gateway.homeserver.sync import HISTORY_FLOOR, SyncToken
from lowband.gateway.matrix.errors import bad_json, invalid_param
from lowband.gateway.matrix.identifiers import is_room_id
from lowband.gateway.store.interfaces import EventRow

#: events one /events call returns at most
MAX_EVENTS = 100
MAX_TIMEOUT_MS = 60_000
DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_LIMIT = 10
MAX_LIMIT = 100


def _room_id(request: web.Request) -> str:
    room_id = request.match_info["room_id"]
    if not is_room_id(room_id):
        raise invalid_param("not a room ID")
    return room_id


async def send_without_txn(request: web.Request) -> web.Response:
    """POST /rooms/{roomId}/send/{eventType}: send one event (no transaction ID, so no idempotency)."""
    requester = authenticate(request)
    rate_limit(request, requester)
    room_id = _room_id(request)
    event_type = request.match_info["event_type"]
    content = await json_body(request)
    if event_type == "m.room.redaction":
        raise bad_json("use the /redact endpoint to redact events")
    sent = await services(request).rooms.send(requester.user_id, room_id, event_type, content)
    return ok({"event_id": sent.event.event_id})


# ------------------------------------------------------------ the event stream


def _stream_once(svc: Services, user_id: str, since: int, upto: int, peek: str | None) -> tuple[list[EventRow], int]:
    """Visible events after ``since`` up to ``upto`` in the user's rooms (only ``peek`` when given), oldest
    first, at most :data:`MAX_EVENTS`; and the position the next call goes on from."""
    rows: list[EventRow] = []
    if peek is not None:
        ceiling, joined_now = svc.sync.reader_ceiling(user_id, peek)
        rooms = [(peek, "join" if joined_now else "peek", ceiling, "")]
    else:
        rooms = svc.store.rooms_for_user(user_id)
    for room_id, membership, mstream, member_event in rooms:
        if membership == "peek":
            ceiling, joined_now = min(upto, mstream), False
        elif membership == "join":
            ceiling, joined_now = upto, True
        elif mstream > since and mstream <= upto:  # the event that took them out (or invited them)
            if membership in ("invite", "knock") or svc.rooms.head(room_id) is None:
                row = svc.store.get_event(member_event)
                rows += [row] if row is not None and row["stream"] > since else []
                continue
            ceiling, joined_now = mstream, False
        else:
            continue
        batch = svc.store.room_events(room_id, after=since, upto=ceiling, limit=MAX_EVENTS, backwards=False)
        rows += [r for r in batch if svc.sync.visible(user_id, r, joined_now)]
        if len(batch) == MAX_EVENTS:  # this room may hold more: nothing past its last read position is certain
            upto = min(upto, batch[-1]["stream"])
    rows = sorted((r for r in rows if r["stream"] <= upto), key=lambda r: r["stream"])
    if len(rows) > MAX_EVENTS:
        rows = rows[:MAX_EVENTS]
        upto = rows[-1]["stream"]
    return rows, upto


async def get_events(request: web.Request) -> web.Response:
    """GET /events?from=&timeout=: the legacy event stream (see the module's docstring)."""
    requester = authenticate(request)
    svc = services(request)
    peek = request.query.get("room_id")
    if peek is not None and not is_room_id(peek):
        raise invalid_param("'room_id' is not a room ID")
    raw_from = request.query.get("from")
    since = SyncToken.parse(raw_from) if raw_from else SyncToken(svc.store.persisted, svc.typing.serial)
    timeout_ms = query_int(request, "timeout", DEFAULT_TIMEOUT_MS, low=0, high=MAX_TIMEOUT_MS)
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        generation = svc.notifier.generation
        rows, end = _stream_once(svc, requester.user_id, since.stream, svc.store.persisted, peek)
        remaining = deadline - time.monotonic()
        if rows or remaining <= 0 or svc.notifier.closed or not await svc.notifier.wait(generation, remaining):
            break
    chunk = svc.sync.serve(requester.user_id, rows, end, device=(requester.user_id, requester.device_id))
    return ok({"chunk": chunk, "start": str(since), "end": str(SyncToken(max(end, since.stream), since.typing))})


# ------------------------------------------------------------ initialSync


def _room_snapshot(svc: Services, user_id: str, device_id: str, room_id: str, membership: str | None,
                   limit: int, public: set[str]) -> dict[str, Any]:  # fmt: skip
    """One room of /initialSync: membership, the last ``limit`` visible messages, the state the user may see
    (current while joined, at the moment they left otherwise)."""
    page = svc.sync.messages(user_id, room_id, None, None, "b", limit, None, device_id)
    chunk = list(reversed(page["chunk"]))
    ceiling, joined_now = svc.sync.reader_ceiling(user_id, room_id)
    if joined_now or membership is None:
        state_map = svc.rooms.current_state(room_id)
    else:
        rows = svc.store.room_events(room_id, after=HISTORY_FLOOR, upto=ceiling, limit=1, backwards=True)
        state_map = svc.store.state_for_group(rows[0]["state_after"]) if rows else {}
    state_rows = svc.store.get_events(list(state_map.values()))
    snapshot: dict[str, Any] = {
        "room_id": room_id,
        "messages": {"chunk": chunk, "start": page.get("end", f"s{HISTORY_FLOOR}"), "end": page["start"]},
        "state": [svc.sync.client_event(state_rows[i]) for i in state_map.values() if i in state_rows],
        "visibility": "public" if room_id in public else "private",
        "presence": [],
        "receipts": [],
        "account_data": [{"type": t, "content": c}
                         for r, t, c in svc.store.account_data_since(user_id, HISTORY_FLOOR, svc.store.persisted)
                         if r == room_id],
    }
    if membership is not None:
        snapshot["membership"] = membership
    return snapshot


def _archived(request: web.Request) -> bool:
    raw = request.query.get("archived", "false")
    if raw not in ("true", "false"):
        raise invalid_param("'archived' must be true or false")
    return raw == "true"


async def get_initial_sync(request: web.Request) -> web.Response:
    """GET /initialSync?limit=&archived=: every joined room (and invite; left ones with ``archived=true``)."""
    requester = authenticate(request)
    svc = services(request)
    limit = query_int(request, "limit", DEFAULT_LIMIT, low=0, high=MAX_LIMIT)
    archived = _archived(request)
    user_id = requester.user_id
    end = str(SyncToken(svc.store.persisted, svc.typing.serial))
    rooms: list[dict[str, Any]] = []
    public = set(svc.store.public_rooms())
    for room_id, membership, _, member_event in sorted(svc.store.rooms_for_user(user_id)):
        if membership == "join" or (archived and membership in ("leave", "ban") and svc.rooms.head(room_id)):
            rooms.append(_room_snapshot(svc, user_id, requester.device_id, room_id, membership, limit, public))
        elif membership == "invite":
            row = svc.store.get_event(member_event)
            invite = svc.sync.client_event(row) if row is not None else None
            rooms.append({"room_id": room_id, "membership": "invite",
                          **({"invite": invite, "inviter": invite["sender"]} if invite else {})})  # fmt: skip
    account_data = [{"type": t, "content": c}
                    for r, t, c in svc.store.account_data_since(user_id, HISTORY_FLOOR, svc.store.persisted)
                    if r == ""]  # fmt: skip
    return ok({"end": end, "rooms": rooms, "presence": [], "account_data": account_data, "receipts": []})


async def get_room_initial_sync(request: web.Request) -> web.Response:
    """GET /rooms/{roomId}/initialSync?limit=: one room's snapshot; 403 for a room the user was never in
    (unless it is world_readable)."""
    requester = authenticate(request)
    room_id = _room_id(request)
    svc = services(request)
    limit = query_int(request, "limit", DEFAULT_LIMIT, low=0, high=MAX_LIMIT)
    svc.sync.reader_ceiling(requester.user_id, room_id)  # 403 before anything is read
    membership = svc.store.membership(room_id, requester.user_id)
    return ok(_room_snapshot(svc, requester.user_id, requester.device_id, room_id, membership, limit,
                             set(svc.store.public_rooms())))


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    room = CLIENT + "/rooms/{room_id}"
    return [
        web.post(room + "/send/{event_type}", send_without_txn),
        web.get(CLIENT + "/events", get_events),
        web.get(CLIENT + "/initialSync", get_initial_sync),
        web.get(room + "/initialSync", get_room_initial_sync),
    ]
