"""Pushers: each user's HTTP pushers, and delivery of their notifications to push gateways.

Rules:

* the backlog is the user's notification rows (``store/sqlite/push.py``),
  read from each pusher's cursor, which is on disk: a gateway away for a day
  costs no memory, and a restart resumes where the last acknowledgement
  left off (a notification sent but not acknowledged is sent again);
* one notification per request, ``POST {data.url}`` with the spec's
  ``/_matrix/push/v1/notify`` body (``event_id_only`` when ``data.format``
  asks for it); a 2xx answer moves the cursor, and a pushkey the gateway
  lists in ``rejected`` loses its pusher;
* a failure (no connection, a timeout of :data:`PUSH_TIMEOUT_S`, a 5xx, 408
  or 429) backs the pusher off with ``homeserver.retry_schedule`` (1 s
  doubling to 10 minutes) through ``aio.drive_schedule``, the loop of every
  durable outbound queue here; any other answer (a 4xx) is the gateway
  refusing that notification, which is passed over;
* a notification older than :data:`MAX_AGE_MS` when its turn comes is passed
  over: a phone that was away for days wants no stale buzz;
* the push gateway's address is checked before each request and at each
  connection (``homeserver/push_destination.py``, ``[push]`` in the config):
  a URL or a name resolving only to refused addresses (loopback, private,
  link-local …) is a permanent failure, not retried: the pusher is suspended
  (logged once, counted in :attr:`PusherDelivery.refused`, its cursor kept)
  until it is set again or the gateway restarts;
* a pusher starts with the notifications made after it was set; a user has at
  most :data:`MAX_PUSHERS_PER_USER`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from lowband.gateway.aio import drive_schedule
from lowband.gateway.homeserver.notifications import NotificationEvaluator, read_position
from lowband.gateway.homeserver.push_destination import (
    AddressPolicy,
    CheckedResolver,
    PushURLError,
    RefusedDestination,
    check_push_url,
)
from lowband.gateway.homeserver.push_eval import outcome
from lowband.gateway.homeserver.retry_schedule import DeliverySchedule
from lowband.gateway.store.interfaces import NotificationRow, PusherRow

if TYPE_CHECKING:
    from lowband.gateway.homeserver.services import Services

__all__ = ["MAX_PUSHERS_PER_USER", "PusherDelivery", "notify_body"]

log = logging.getLogger("lowband.push")

MAX_PUSHERS_PER_USER = 10
PUSH_TIMEOUT_S = 10.0
MAX_AGE_MS = 24 * 3600 * 1000
NOTIFY_PATH = "/_matrix/push/v1/notify"
_RETRY_STATUSES = (408, 429)


def _key(pusher: PusherRow) -> str:
    return f"{pusher.user_id}\n{pusher.app_id}\n{pusher.pushkey}"


def notify_body(pusher: PusherRow, row: NotificationRow, event: dict[str, Any] | None, unread: int,
                extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The JSON body of one ``/_matrix/push/v1/notify`` request for ``row`` to ``pusher``.

    ``event`` is the event in client format (None when it is gone); ``extra`` holds ``sender_display_name``
    and ``room_name`` when known. ``data.format = event_id_only`` leaves the event's fields out.
    """
    result = outcome(row.actions)
    data = {k: v for k, v in pusher.body.get("data", {}).items() if k != "url"}
    device = {"app_id": pusher.app_id, "pushkey": pusher.pushkey, "pushkey_ts": int(pusher.body.get("pushkey_ts", 0)),
              "data": data, "tweaks": result.tweaks}  # fmt: skip
    note: dict[str, Any] = {"event_id": row.event_id, "room_id": row.room_id, "counts": {"unread": unread},
                            "devices": [device],
                            "prio": "high" if result.highlight or "sound" in result.tweaks else "low"}  # fmt: skip
    if pusher.body.get("data", {}).get("format") != "event_id_only" and event is not None:
        note["type"] = event.get("type")
        note["sender"] = event.get("sender")
        note["content"] = event.get("content", {})
        note["user_is_target"] = event.get("state_key") == pusher.user_id
        note.update({k: v for k, v in extra.items() if v is not None})
    return {"notification": note}


class PusherDelivery:
    """Sends every pusher its user's new notifications."""

    def __init__(self, services: Services, *, clock: Callable[[], float] = time.monotonic,
                 schedule: DeliverySchedule | None = None, timeout_s: float = PUSH_TIMEOUT_S) -> None:  # fmt: skip
        self.services = services
        self.store = services.store
        self.clock = clock
        self.schedule = schedule or DeliverySchedule(base=1.0, cap=600.0)
        self.timeout_s = timeout_s
        self._pushers: dict[str, PusherRow] = {}
        self._kick = asyncio.Event()
        self._attempts: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._evaluator: NotificationEvaluator | None = None
        self.policy = AddressPolicy(services.config.push)
        #: pushers whose push gateway was refused (key → reason), not tried until set again
        self.suspended: dict[str, str] = {}
        #: counters since start (for tests and logs)
        self.sent = 0
        self.failed_attempts = 0
        self.passed_over = 0
        self.refused = 0

    async def start(self, evaluator: NotificationEvaluator | None = None) -> None:
        """Load the pushers, give each with a backlog a turn, start the loop."""
        self._evaluator = evaluator
        self.reload()
        for key in self._pushers:
            self.schedule.add_work(key)
        self._task = asyncio.create_task(drive_schedule(self.schedule, self._attempt, self._kick, self.clock,
                                                        self._attempts))  # fmt: skip

    async def stop(self) -> None:
        """Stop; what was not acknowledged is sent after the next start."""
        tasks = [t for t in (self._task, *self._attempts) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def reload(self, set_again: PusherRow | None = None) -> None:
        """Read the pushers again (after ``/pushers/set``); ``set_again`` (a pusher just set) loses its suspension."""
        if set_again is not None:
            self.suspended.pop(_key(set_again), None)
        stored = {_key(p): p for p in self.store.push.pushers() if p.kind == "http"}
        self.suspended = {k: why for k, why in self.suspended.items() if k in stored}  # deleted ones are forgotten
        self._pushers = {k: p for k, p in stored.items() if k not in self.suspended}

    def start_position(self) -> int:
        """Where a new pusher's cursor starts: notifications made from now on."""
        return self._evaluator.position if self._evaluator is not None else self.store.persisted

    def wake(self, user_ids: set[str]) -> None:
        """New notifications for ``user_ids``: their pushers get a turn."""
        for key, pusher in self._pushers.items():
            if pusher.user_id in user_ids:
                self.schedule.add_work(key)
        self._kick.set()

    async def _attempt(self, key: str) -> None:
        pusher = self._pushers.get(key)
        if pusher is None:
            self.schedule.succeeded(key, False)
            return
        try:
            more = await self._send_next(pusher)
        except asyncio.CancelledError:
            raise
        except (PushURLError, RefusedDestination, aiohttp.ClientConnectorError) as exc:
            why = exc if not isinstance(exc, aiohttp.ClientConnectorError) else exc.os_error
            if not isinstance(why, (PushURLError, RefusedDestination)):
                await self._failed(key, pusher, exc)
            else:
                await self._suspend(key, pusher, str(why))
                self.schedule.succeeded(key, False)
        except Exception as exc:  # unreachable, timed out, refused for now, or our bug (logged with its trace)
            if not isinstance(exc, (aiohttp.ClientError, TimeoutError, _Retry)):
                log.exception("pusher %s of %s: unexpected failure", pusher.app_id, pusher.user_id)
            await self._failed(key, pusher, exc)
        else:
            self.schedule.succeeded(key, more)
        self._kick.set()

    async def _failed(self, key: str, pusher: PusherRow, exc: Exception) -> None:
        self.failed_attempts += 1
        when = self.schedule.failed(key, self.clock())
        log.info("pusher %s of %s failed (%s); retrying in %.0f s", pusher.app_id, pusher.user_id,
                 str(exc)[:200] or type(exc).__name__, max(0.0, when - self.clock()))  # fmt: skip
        await self.store.push.count_pusher_failure(pusher.user_id, pusher.app_id, pusher.pushkey,
                                                   str(exc) or type(exc).__name__)  # fmt: skip

    async def _suspend(self, key: str, pusher: PusherRow, why: str) -> None:
        """The push gateway's address is refused: no retry (it would be refused again) until set again."""
        self.refused += 1
        self.suspended[key] = why
        self._pushers.pop(key, None)
        log.warning("pusher %s of %s suspended: %s (set it again, or see [push] in docs/config.md)",
                    pusher.app_id, pusher.user_id, why[:300])  # fmt: skip
        await self.store.push.count_pusher_failure(pusher.user_id, pusher.app_id, pusher.pushkey, why)

    async def _send_next(self, pusher: PusherRow) -> bool:
        """Send the pusher's next notification; whether more wait."""
        rows = self.store.push.notifications_after(pusher.user_id, pusher.cursor, 2)
        if not rows:
            return False
        row = rows[0]
        now_ms = int(time.time() * 1000)
        if now_ms - row.ts <= MAX_AGE_MS:
            body = self._body(pusher, row)
            status, answer = await self._post(str(pusher.body["data"]["url"]), body)
            if 200 <= status < 300:
                self.sent += 1
                rejected = answer.get("rejected") if isinstance(answer, dict) else None
                if isinstance(rejected, list) and pusher.pushkey in rejected:
                    log.info("push gateway rejected pushkey of %s (%s): pusher removed", pusher.user_id, pusher.app_id)
                    await self.store.push.delete_pusher(pusher.user_id, pusher.app_id, pusher.pushkey)
                    self._pushers.pop(_key(pusher), None)
                    return False
            elif status >= 500 or status in _RETRY_STATUSES:
                raise _Retry(f"push gateway answered {status}")
            else:
                self.passed_over += 1
                log.warning("push gateway refused a notification for %s with %d; passed over", pusher.user_id, status)
        else:
            self.passed_over += 1
        await self.store.push.move_pusher_cursor(pusher.user_id, pusher.app_id, pusher.pushkey, row.stream)
        moved = pusher._replace(cursor=row.stream)
        if _key(moved) in self._pushers:
            self._pushers[_key(moved)] = moved
        return len(rows) > 1

    def _body(self, pusher: PusherRow, row: NotificationRow) -> dict[str, Any]:
        svc = self.services
        stored = self.store.get_event(row.event_id)
        event = svc.sync.client_event(stored) if stored is not None else None
        extra: dict[str, Any] = {}
        if event is not None:
            member = svc.rooms.state_event(row.room_id, "m.room.member", str(event.get("sender")))
            name = svc.rooms.state_event(row.room_id, "m.room.name")
            extra = {"sender_display_name": member.content.get("displayname") if member else None,
                     "room_name": name.content.get("name") if name else None}  # fmt: skip
        unread = 0
        for room_id in self.store.push.notification_rooms(pusher.user_id)[:100]:
            unread += self.store.push.unread_counts(pusher.user_id, room_id,
                                                    read_position(self.store, pusher.user_id, room_id))[0]  # fmt: skip
        return notify_body(pusher, row, event, unread, extra)

    async def _post(self, url: str, body: dict[str, Any]) -> tuple[int, Any]:
        check_push_url(url, self.policy)  # again: set before this check existed, or the config changed since
        if self._session is None:
            # every address a name resolves to goes through the policy; an IP literal host never reaches a
            # resolver, so check_push_url above is its check. No proxy from the environment (trust_env off).
            connector = aiohttp.TCPConnector(resolver=CheckedResolver(self.policy))
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout_s))  # fmt: skip
        async with self._session.post(url, json=body, allow_redirects=False) as response:
            raw = await response.content.read(64 * 1024)
            try:
                answer = json.loads(raw) if raw else {}
            except ValueError:
                answer = {}
            return response.status, answer


class _Retry(Exception):
    """The push gateway asked for a later attempt (5xx, 408, 429)."""
