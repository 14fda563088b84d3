"""Acknowledge after commit: the rule every edge that writes rooms follows.

An edge (a device link, BLE, CoAP, the MQTT bridge, federation, an
application service) takes input from a peer that keeps it until it is
acknowledged, and turns it into a room event. This module is the one place
that says how an edge decides what to tell that peer:

* **committed** — the room event is on disk (or was already: the input's
  transaction ID matched an earlier event). Acknowledge it.
* **refused** — the input can never become an event, however often it is
  sent: it does not decode, it names a room the sender may not post to, the
  sender is not an account this edge may speak as, or the room refused the
  event (a 4xx other than rate limiting). Acknowledge it *as refused*, log
  it and count it: it is not lost, it is refused, and it must never block
  what the peer sends after it.
* **failed** — nothing was stored and a later try may work (the store
  raised, the homeserver answered 5xx or asked to slow down). Do not
  acknowledge: the peer keeps the input and sends it again, under the same
  transaction ID, so the retry never makes a second event.

Every input must therefore carry a transaction ID that stays the same across
the peer's retries (the link's message ID, an MQTT packet's stored ID, a
federation transaction's PDU IDs). :func:`commit_event` sends one event with
such an ID and classifies what happened; an edge calls it (or does the
same classification on its own path) and acknowledges only on
``COMMITTED`` or ``REFUSED``. ``gateway/link/gateway_core.py`` shows the
link's side: its ``Deliver`` is acknowledged only through ``delivered``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from lowband.gateway.matrix.errors import MatrixError

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """What an edge tells the peer about one input."""

    COMMITTED = "committed"  # on disk: acknowledge
    REFUSED = "refused"  # never storable: acknowledge as refused, log, count
    FAILED = "failed"  # not stored, may work later: do not acknowledge


@dataclass(frozen=True)
class Delivery:
    """The outcome for one input; ``reason`` is a short code for counters, ``detail`` for the log."""

    outcome: Outcome
    reason: str
    detail: str = ""
    event_id: str | None = None

    @property
    def acknowledge(self) -> bool:
        """Whether the peer may forget the input (committed or refused)."""
        return self.outcome is not Outcome.FAILED


def committed(event_id: str | None = None) -> Delivery:
    """The input's event is on disk."""
    return Delivery(Outcome.COMMITTED, "committed", event_id=event_id)


def refused(reason: str, detail: str) -> Delivery:
    """The input can never become an event (``reason``: a short counter name)."""
    return Delivery(Outcome.REFUSED, reason, detail)


def failed(reason: str, detail: str) -> Delivery:
    """Nothing was stored; the peer must send the input again."""
    return Delivery(Outcome.FAILED, reason, detail)


class _Sender(Protocol):
    async def send(self, sender: str, room_id: str, event_type: str, content: dict[str, Any], *,
                   txn: tuple[str, str, str] | None = ..., origin_server_ts: int | None = ...) -> Any: ...  # fmt: skip


async def commit_event(
    rooms: _Sender, sender: str, room_id: str, event_type: str, content: dict[str, Any],
    *, txn: tuple[str, str, str], origin_server_ts: int | None = None,
) -> Delivery:  # fmt: skip
    """Send one event as ``sender`` with transaction ID ``txn`` and classify the result.

    ``COMMITTED`` when ``rooms.send`` returned (the room service resolves a
    send only after its event is committed); ``REFUSED`` for a
    :class:`MatrixError` with a 4xx status other than 429; ``FAILED`` for a
    429, a 5xx and any other exception (the store's own errors included),
    which is logged with its traceback. Never raises, except
    :class:`asyncio.CancelledError`.
    """
    try:
        sent = await rooms.send(sender, room_id, event_type, content, txn=txn, origin_server_ts=origin_server_ts)
    except MatrixError as exc:
        if 400 <= exc.status < 500 and exc.status != 429:
            return refused("room_event", f"{exc.errcode}: {exc.message}")
        return failed("room_unavailable", f"{exc.errcode}: {exc.message}")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the store or the room service broke: the input stays with the peer
        log.exception("storing an event from %s in %s failed", sender, room_id)
        return failed("store_failed", f"{type(exc).__name__}: {exc}")
    event = getattr(sent, "event", None)
    return committed(getattr(event, "event_id", None))
