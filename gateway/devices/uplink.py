"""A message from a device becomes a room event, committed or refused.

Shared by every edge that carries devices (the link today, BLE and CoAP
next): the edge hands over a whole compact message with a message ID that
stays the same across the device's retries, and acknowledges according to
the :class:`~lowband.gateway.homeserver.delivery.Delivery` it gets back
(gateway/homeserver/delivery.py holds the rule).

Refused as a value (the device is acknowledged, the reading is logged and
counted, never retried): a payload that does not decode with the device's
context table, a generic message that is not an event or speaks as another
user, a room the device is not provisioned for, an account the edge may not
speak as, a room that refuses the event (4xx). Failed (not acknowledged,
the device sends it again): anything that kept the event from being stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lowband.codecs import compact
from lowband.codecs.context import Context
from lowband.codecs.errors import WireError
from lowband.gateway.homeserver import delivery
from lowband.gateway.homeserver.delivery import Delivery


def reading_event(payload: bytes, ctx: Context, now_ms: int) -> dict[str, Any]:
    """The event a device's compact message stands for (``type``, ``content``, maybe ``room_id``, a time).

    Raises :class:`WireError` for a payload that does not decode, a generic
    message that speaks as another sender, or one that is not an event with
    a type and a content.
    """
    form = compact.decode_form(payload, ctx)
    if form.kind != compact.KIND_GENERIC and form.sender != 0:
        raise WireError("a device may only speak as itself")
    event = compact.expand(form, ctx, now_ms)
    if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not isinstance(event.get("content"), dict):
        raise WireError("a generic message from a device must be an event with type and content")
    return event


async def deliver_uplink(
    rooms: Any, *, user_id: str, rooms_allowed: list[str], ctx: Context, edge: str, message_id: str, payload: bytes,
    committed: Callable[[dict[str, Any]], None] | None = None,
) -> Delivery:  # fmt: skip
    """Turn one device message into a room event sent as ``user_id``; never raises (but CancelledError).

    ``edge`` and ``message_id`` make the transaction ID
    ``(user_id, edge, message_id)``: a retry of the same message returns the
    first event. The caller has checked that ``user_id`` is an account this
    edge created (see ``users.owner``); the room's auth rules check the rest.
    ``committed`` (which must not raise) gets the event (``type``,
    ``content``, ``origin_server_ts`` …) once it is committed: the edge keeps
    the device's last reading from it without reading the store again.
    """
    try:
        event = reading_event(payload, ctx, int(time.time() * 1000))
    except WireError as exc:
        return delivery.refused("payload", str(exc))
    room_id = event.get("room_id", ctx.rooms[0])
    if room_id not in rooms_allowed:
        return delivery.refused("room", f"not provisioned for {room_id}")
    ts = event.get("origin_server_ts")
    result = await delivery.commit_event(
        rooms, user_id, room_id, event["type"], event["content"],
        txn=(user_id, edge, message_id), origin_server_ts=ts if isinstance(ts, int) else None,
    )  # fmt: skip
    if committed is not None and result.outcome is delivery.Outcome.COMMITTED:
        committed(event)
    return result
