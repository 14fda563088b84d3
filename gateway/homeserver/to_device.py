"""To-device messages and the E2EE part of ``/sync``.

Rules:

* ``sendToDevice`` stores one message per target device, at a stream
  position, together with the sender's transaction ID, in one transaction:
  a retried request (same sender, device and transaction ID) delivers
  nothing twice, and a crash loses nothing acknowledged;
* ``*`` as a device ID means every device the user has now;
* a device holds at most :data:`MAX_INBOX` waiting messages: past it, new
  messages for that device are dropped, counted and logged (a flood from
  one sender cannot grow the database without bound), and a message's
  content is at most :data:`MAX_CONTENT_BYTES`;
* ``/sync`` hands a device at most :data:`MAX_PER_SYNC` messages, oldest
  first; a message is deleted when the device syncs with a token past it.
  When more wait, the token's third part says where delivery stopped
  (``s<stream>_<typing>_<to-device>``), so the rest follow in the next
  response and nothing is acknowledged unseen;
* messages for users of other servers go to federation (:attr:`ToDevice.remote`,
  ``m.direct_to_device`` EDUs kept on disk until the server accepts them);
  without federation they are counted and logged as dropped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from lowband.gateway.homeserver.e2ee_keys import device_list_delta
from lowband.gateway.matrix.errors import MatrixError, bad_json
from lowband.gateway.store.interfaces import Store

log = logging.getLogger(__name__)

MAX_INBOX = 1000
MAX_CONTENT_BYTES = 64 * 1024
MAX_PER_SYNC = 100
#: target devices one sendToDevice request may name (after ``*`` is expanded)
MAX_TARGETS = 10_000
#: how long a sender's transaction ID is remembered
TXN_MEMORY_MS = 24 * 3600 * 1000


class RemoteToDevice(Protocol):
    """Federation's side of to-device messages (set on :attr:`ToDevice.remote` by the federation component)."""

    async def send(self, server: str, sender: str, event_type: str, messages: dict[str, dict[str, Any]]) -> None:
        """Send ``messages`` ({user: {device or '*': content}}) for ``server``'s users (``m.direct_to_device``);
        kept durably when this returns."""
        ...


class ToDevice:
    """Queues to-device messages per device; counts what it had to drop."""

    def __init__(self, store: Store, server_name: str, notify: Callable[[], None]) -> None:
        self.store = store
        self.server_name = server_name
        self.notify = notify
        self.dropped = {"inbox_full": 0, "remote": 0}
        #: federation's side, when federation runs (None: messages for other servers' users are dropped)
        self.remote: RemoteToDevice | None = None
        self._last_pruned = 0

    async def send(self, sender: str, sender_device: str, event_type: str, txn_id: str, messages: Any) -> None:
        """PUT /sendToDevice/{type}/{txn}: queue ``messages`` ({user: {device or '*': content}})."""
        if len(txn_id) > 255:
            raise MatrixError(400, "M_INVALID_PARAM", "a transaction ID is at most 255 characters")
        checked = check_messages(event_type, messages)
        if self.store.e2ee.seen_txn(sender, sender_device, txn_id):
            return
        remote: dict[str, dict[str, dict[str, Any]]] = {}
        for user_id, devices in checked.items():
            if user_id.partition(":")[2] != self.server_name:
                remote.setdefault(user_id.partition(":")[2], {})[user_id] = devices
        local = {u: d for u, d in checked.items() if u.partition(":")[2] == self.server_name}
        await self.deliver(sender, event_type, local, (sender, sender_device, txn_id))
        for server, for_server in remote.items():
            if self.remote is None:
                self._drop("remote", sum(len(d) for d in for_server.values()), f"{server[:80]} is another server and "
                           "this gateway does not federate")  # fmt: skip
            else:
                await self.remote.send(server, sender, event_type, for_server)

    async def deliver(self, sender: str, event_type: str, messages: dict[str, dict[str, Any]],
                      txn: tuple[str, str, str]) -> None:  # fmt: skip
        """Queue checked messages for local users (``*`` expanded), once per transaction ``txn``."""
        queued: list[tuple[str, str, str, str, dict[str, Any]]] = []
        for user_id, devices in messages.items():
            known = [d.device_id for d in self.store.user_devices(user_id)]
            for device_id, content in devices.items():
                targets = known if device_id == "*" else [device_id] if device_id in known else []
                queued += [(user_id, target, sender, event_type, content) for target in targets]
            if len(queued) > MAX_TARGETS:
                raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_TARGETS} devices per request")
        now = int(time.time() * 1000)
        left_out = await self.store.e2ee.enqueue(queued, txn, now, MAX_INBOX)
        if left_out:
            self._drop("inbox_full", left_out, f"a device's inbox holds {MAX_INBOX} messages")
        if left_out is not None and left_out < len(queued):
            self.notify()
        if now - self._last_pruned > 3600_000:
            self._last_pruned = now
            await self.store.e2ee.forget_txns_before(now - TXN_MEMORY_MS)

    def _drop(self, kind: str, count: int, why: str) -> None:
        self.dropped[kind] += count
        log.warning("to-device: %d message(s) dropped: %s (%d %s in all)", count, why, self.dropped[kind], kind)


def check_messages(event_type: Any, messages: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """``messages`` of a sendToDevice request or an ``m.direct_to_device`` EDU, checked; M_BAD_JSON, M_TOO_LARGE."""
    if not isinstance(event_type, str) or not event_type or len(event_type) > 255:
        raise MatrixError(400, "M_INVALID_PARAM", "the event type is 1 to 255 characters")
    if not isinstance(messages, dict):
        raise bad_json("messages must be an object")
    if len(messages) + sum(len(d) for d in messages.values() if isinstance(d, dict)) > MAX_TARGETS:
        raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_TARGETS} users and devices per request")
    for devices in messages.values():
        if not isinstance(devices, dict):
            raise bad_json("each user's messages must be an object")
        for content in devices.values():
            if not isinstance(content, dict):
                raise bad_json("a to-device message's content must be an object")
            if len(json.dumps(content, ensure_ascii=False).encode("utf-8", "surrogatepass")) > MAX_CONTENT_BYTES:
                raise MatrixError(400, "M_TOO_LARGE", f"a to-device message is at most {MAX_CONTENT_BYTES} bytes")
    return messages


async def e2ee_sync(store: Store, user_id: str, device_id: str, since: int | None, delivered: int | None,
                    upto: int) -> tuple[dict[str, Any], int | None, bool]:  # fmt: skip
    """The E2EE fields of a /sync response for one device.

    ``since``: the token's stream (None for an initial sync); ``delivered``: its to-device part (None: the same
    as ``since``). Returns (fields, to-device position for the next token or None when all were delivered,
    whether anything in them is new). Acknowledges the messages the token shows the device has.
    """
    start = delivered if delivered is not None else since
    if start is not None and device_id:
        await store.e2ee.acknowledge(user_id, device_id, start)
    messages = store.e2ee.pending(user_id, device_id, start or 0, upto, MAX_PER_SYNC) if device_id else []
    next_delivered = messages[-1][0] if len(messages) == MAX_PER_SYNC else None
    changed: set[str] = set()
    left: set[str] = set()
    if since is not None:
        changed, left = device_list_delta(store, user_id, since, upto)
    counts = store.e2ee.one_time_key_counts(user_id, device_id) if device_id else {}
    counts.setdefault("signed_curve25519", 0)
    fallback = store.e2ee.unused_fallback_key_types(user_id, device_id) if device_id else []
    fields = {
        "to_device": {"events": [{"sender": s, "type": t, "content": c} for _, s, t, c in messages]},
        "device_lists": {"changed": sorted(changed), "left": sorted(left)},
        "device_one_time_keys_count": counts,
        "device_unused_fallback_key_types": fallback,
        "org.matrix.msc2732.device_unused_fallback_key_types": fallback,
    }
    return fields, next_delivered, bool(messages or changed or left)
