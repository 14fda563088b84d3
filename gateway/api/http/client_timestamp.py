"""``GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event?ts=&dir=f|b``: the event nearest a time.

Bridges use it to place a message they import at the right point of a room's
history, clients to jump to a date. Who may ask is who may read the room's
history with ``/messages``: a member (one who left or was banned, only up to
then), or anyone for a ``world_readable`` room; the event answered is the
nearest one the asker may see (the same check as ``/messages``), found among
the :data:`SCAN_EVENTS` events nearest ``ts`` in one index range, so a
question costs the same in a room of ten events or of a million.
"""

from __future__ import annotations

from aiohttp import web

from lowband.gateway.api.http.base import authenticate, ok, services
from lowband.gateway.matrix.errors import MatrixError, forbidden, invalid_param
from lowband.gateway.matrix.numbers import parse_digits

#: the events nearest ``ts`` looked at for one the asker may see
SCAN_EVENTS = 100
#: the largest timestamp taken (2^53 - 1, the largest integer the spec's JSON allows)
MAX_TS = (1 << 53) - 1


def _required(request: web.Request, key: str) -> str:
    value = request.query.get(key)
    if value is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"missing '{key}'")
    return value


async def timestamp_to_event(request: web.Request) -> web.Response:
    """``{event_id, origin_server_ts}`` of the nearest visible event at or after ``ts`` (``dir=f``) or at or before
    it (``b``). 400 M_INVALID_PARAM for ``ts`` not 1 to 16 digits up to 2^53 - 1 or ``dir`` not f or b,
    M_MISSING_PARAM without one; 403 for a room whose history the asker may not read (or unknown);
    404 M_NOT_FOUND when no such event is visible."""
    requester = authenticate(request)
    svc = services(request)
    room_id = request.match_info["room_id"]
    ts = parse_digits(_required(request, "ts"), 16)
    if ts is None or ts > MAX_TS:
        raise invalid_param("ts must be a timestamp in milliseconds (digits only)")
    direction = _required(request, "dir")
    if direction not in ("f", "b"):
        raise invalid_param("dir must be 'f' or 'b'")
    user_id = requester.user_id
    # The same rule as /messages (homeserver/sync.py SyncHandler.messages): a member, a former one up to when
    # they left, or anyone in a world_readable room; an unknown room is answered the same as a closed one.
    if svc.rooms.head(room_id) is None:
        raise forbidden("you are not a member of this room")
    found = [r for r in svc.store.rooms_for_user(user_id) if r[0] == room_id]  # a forgotten room is not there
    membership, left_at = (found[0][1], found[0][2]) if found else (None, 0)
    state = svc.rooms.current_state(room_id)
    visibility = (svc.rooms.state_content(state, "m.room.history_visibility") or {}).get("history_visibility")
    world = visibility == "world_readable"
    if membership not in ("join", "leave", "ban") and not world:
        raise forbidden("you are not a member of this room")
    ceiling = svc.store.persisted if membership == "join" or world else left_at
    rows = svc.store.room_events_near_ts(room_id, ts, forwards=direction == "f", upto=ceiling, limit=SCAN_EVENTS)
    for row in rows:
        if svc.sync.visible(user_id, row, membership == "join"):
            event = row["event"]
            return ok({"event_id": event.event_id, "origin_server_ts": event.origin_server_ts})
    which = "forward" if direction == "f" else "backward"
    raise MatrixError(404, "M_NOT_FOUND", f"no event found from {ts} in the {which} direction")


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    return [web.get("/_matrix/client/v1/rooms/{room_id}/timestamp_to_event", timestamp_to_event)]
