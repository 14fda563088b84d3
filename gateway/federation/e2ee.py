"""End-to-end encryption between servers: other servers' keys asked for, our users' device changes and
to-device messages sent to the servers that need them, our users' keys handed to other servers.

Rules:

* ``query`` and ``claim`` (:class:`FederatedKeys`, ``DeviceKeys.remote``) ask the users' own server
  (``/user/keys/query``, ``/user/keys/claim``), at most :data:`MAX_CONCURRENT_ASKS` at a time, each
  within :data:`ASK_TIMEOUT_S` and a bounded answer size. An answer keeps only what was asked: the asked
  users of that server and their asked devices, key objects of the right shape naming their own user
  and device, each at most ``MAX_KEY_BYTES``; the rest is dropped and counted (:attr:`FederatedKeys.dropped`).
  A failure is a MatrixError, which ``DeviceKeys`` reports in ``failures``; a server that could not be
  reached is not asked again for :data:`UNREACHABLE_S` (its failure is answered at once).
* a local user's device list change becomes an ``m.device_list_update`` per device whose keys appeared,
  changed or went, and an ``m.signing_key_update`` when the master or self-signing key changed, queued
  for every other server with a joined member in a room the user is joined to.
* ``stream_id`` is the store's position of the user's latest change, ``prev_id`` the one announced
  before it, so a receiver that caches device lists (Synapse) applies the update, or fetches the whole
  list again (``/user/devices``) when it missed one. What was last announced per user is kept in memory
  (at most :data:`MAX_TRACKED_USERS` users): after a restart a user's first update has an empty
  ``prev_id``, which makes such receivers fetch the list again. A restart costs one request per peer and
  user, never a stale list.
* other servers see a device's signed keys only: not its display name (people name devices after
  themselves and places; Synapse withholds them by default too), and of a master key only its owner's
  signatures (who verified whom is the verifier's business).
* to-device messages for another server's users become ``m.direct_to_device`` EDUs of at most
  :data:`TO_DEVICE_EDU_BYTES` of messages (one larger message goes alone), each with its own
  ``message_id``, on which the receiver deduplicates.

EDUs wait in :class:`~lowband.gateway.federation.sender.FederationSender`'s memory queue: what a restart
or ``kill -9`` catches unsent is lost (docs/e2ee.md says what that costs and what would keep it).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeGuard

from lowband.gateway.federation.client import FederationClient, FederationError, PeerUnreachable
from lowband.gateway.federation.queries import client_error
from lowband.gateway.federation.resolver import ServerNameError, parse_server_name
from lowband.gateway.federation.sender import FederationSender
from lowband.gateway.homeserver.e2ee_keys import MAX_DEVICES_PER_REQUEST, MAX_KEY_BYTES, MAX_USERS_PER_REQUEST
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError, bad_json

__all__ = [
    "DeviceListView",
    "FederatedKeys",
    "FederatedToDevice",
    "checked_claim_answer",
    "checked_query_answer",
    "device_list_update",
    "split_messages",
]

log = logging.getLogger("lowband.federation")

MAX_CONCURRENT_ASKS = 32
ASK_TIMEOUT_S = 10.0
QUERY_ANSWER_BYTES = 4 * 1024 * 1024
CLAIM_ANSWER_BYTES = 1024 * 1024
#: how long a server that could not be reached is answered for without asking it
UNREACHABLE_S = 30.0
_MAX_UNREACHABLE = 1024
MAX_TRACKED_USERS = 10_000
TO_DEVICE_EDU_BYTES = 64 * 1024
_MAX_NAME_CHARS = 255  # a device display name another server shows us
_USAGES = {"master_keys": "master", "self_signing_keys": "self_signing"}
_CROSS_SIGNING_FIELDS = {"master": "master_key", "self_signing": "self_signing_key"}


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def _digest(value: Any) -> bytes:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).digest()


def _is_str_map(value: Any) -> TypeGuard[dict[str, str]]:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _bad_answer(server: str, what: str) -> MatrixError:
    return MatrixError(502, "M_UNKNOWN", f"{server[:100]} gave an unusable answer: {what}")


# ------------------------------------------------------------------ answers from other servers


def _device_keys_ok(user_id: str, device_id: str, keys: Any) -> bool:
    if not isinstance(keys, dict) or keys.get("user_id") != user_id or keys.get("device_id") != device_id:
        return False
    algorithms = keys.get("algorithms")
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        return False
    signatures = keys.get("signatures", {})
    if not _is_str_map(keys.get("keys")) or not isinstance(signatures, dict):
        return False
    return _size({k: v for k, v in keys.items() if k != "unsigned"}) <= MAX_KEY_BYTES


def _with_clean_unsigned(keys: dict[str, Any]) -> dict[str, Any]:
    """The device keys with ``unsigned`` cut to the one field the spec gives it (a bounded display name)."""
    unsigned = keys.get("unsigned")
    name = unsigned.get("device_display_name") if isinstance(unsigned, dict) else None
    cleaned = {k: v for k, v in keys.items() if k != "unsigned"}
    cleaned["unsigned"] = {"device_display_name": name} if isinstance(name, str) and len(name) <= _MAX_NAME_CHARS \
        else {}  # fmt: skip
    return cleaned


def _cross_signing_ok(user_id: str, usage: str, key: Any) -> bool:
    if not isinstance(key, dict) or key.get("user_id") != user_id:
        return False
    usages = key.get("usage")
    if not isinstance(usages, list) or usage not in usages or not all(isinstance(u, str) for u in usages):
        return False
    keys = key.get("keys")
    return _is_str_map(keys) and len(keys) == 1 and isinstance(key.get("signatures", {}), dict) \
        and _size(key) <= MAX_KEY_BYTES  # fmt: skip


def checked_query_answer(server: str, asked: dict[str, list[str]], answer: Any,
                         dropped: collections.Counter[str]) -> dict[str, Any]:  # fmt: skip
    """What a ``/user/keys/query`` answer may tell: the asked users' asked devices and cross-signing keys.

    Entries of the wrong shape, about other users or devices, or too large are left out and counted in
    ``dropped``; MatrixError 502 when the answer as a whole is unusable.
    """
    found = answer.get("device_keys") if isinstance(answer, dict) else None
    if not isinstance(found, dict):
        raise _bad_answer(server, "no device_keys object")
    result: dict[str, Any] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
    for user_id, wanted_list in asked.items():
        wanted = set(wanted_list)
        devices = found.get(user_id)
        if devices is None:
            continue
        if not isinstance(devices, dict):
            dropped["query_bad_user"] += 1
            continue
        kept = {}
        for device_id, keys in devices.items():
            if (wanted and device_id not in wanted) or not _device_keys_ok(user_id, device_id, keys):
                dropped["query_bad_device"] += 1
                continue
            kept[device_id] = _with_clean_unsigned(keys)
        result["device_keys"][user_id] = kept
    for name, usage in _USAGES.items():
        keys_by_user = answer.get(name)
        if not isinstance(keys_by_user, dict):
            dropped["query_bad_cross_signing"] += keys_by_user is not None
            continue
        for user_id in asked:
            key = keys_by_user.get(user_id)
            if key is None:
                continue
            if _cross_signing_ok(user_id, usage, key):
                result[name][user_id] = key
            else:
                dropped["query_bad_cross_signing"] += 1
    return result


def checked_claim_answer(server: str, asked: dict[str, dict[str, str]], answer: Any,
                         dropped: collections.Counter[str]) -> dict[str, Any]:  # fmt: skip
    """What a ``/user/keys/claim`` answer may tell: one key of the asked algorithm per asked device.

    Anything else is left out and counted in ``dropped``; MatrixError 502 when the answer is unusable.
    """
    found = answer.get("one_time_keys") if isinstance(answer, dict) else None
    if not isinstance(found, dict):
        raise _bad_answer(server, "no one_time_keys object")
    result: dict[str, dict[str, Any]] = {}
    for user_id, devices in asked.items():
        got = found.get(user_id)
        if got is None:
            continue
        if not isinstance(got, dict):
            dropped["claim_bad_user"] += 1
            continue
        for device_id, algorithm in devices.items():
            keys = got.get(device_id)
            if keys is None:
                continue
            prefix = algorithm + ":"
            picked = next(((name, key) for name, key in keys.items()
                           if name.startswith(prefix) and len(prefix) < len(name) <= 255
                           and isinstance(key, (str, dict)) and _size(key) <= MAX_KEY_BYTES), None) \
                if isinstance(keys, dict) else None  # fmt: skip
            if picked is None:
                dropped["claim_bad_key"] += 1
                continue
            result.setdefault(user_id, {})[device_id] = dict([picked])
    return {"one_time_keys": result}


# ------------------------------------------------------------------ what other servers see of our users


@dataclass(frozen=True)
class DeviceListView:
    """A local user's devices as other servers see them: signed keys by device ID, cross-signing keys by usage."""

    devices: dict[str, dict[str, Any]]
    cross_signing: dict[str, dict[str, Any]]  # "master", "self_signing"


@dataclass
class _Announced:
    """What other servers were last told of one local user: the update's stream ID and digests of its content."""

    stream_id: int
    devices: dict[str, bytes]
    cross_signing: dict[str, bytes]


class FederatedKeys:
    """``DeviceKeys.remote``: other servers' keys through federation, our users' changes announced to them."""

    def __init__(self, services: Services, client: FederationClient, sender: FederationSender,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.services = services
        self.server_name = services.server_name
        self.client = client
        self.sender = sender
        self.clock = clock
        self.dropped: collections.Counter[str] = collections.Counter()
        self.sent: collections.Counter[str] = collections.Counter()
        self._asks = asyncio.Semaphore(MAX_CONCURRENT_ASKS)
        self._unreachable: dict[str, float] = {}
        self._announced: collections.OrderedDict[str, _Announced] = collections.OrderedDict()

    # ------------------------------------------------------------- asking other servers

    async def query(self, server: str, device_keys: dict[str, list[str]]) -> dict[str, Any]:
        """``/user/keys/query`` of ``server``; the checked answer. MatrixError when it cannot be had."""
        answer = await self._ask(server, "query", {"device_keys": device_keys}, QUERY_ANSWER_BYTES)
        try:
            return checked_query_answer(server, device_keys, answer, self.dropped)
        except (RecursionError, ValueError):  # nested past what can be measured
            raise _bad_answer(server, "too deeply nested") from None

    async def claim(self, server: str, one_time_keys: dict[str, dict[str, str]]) -> dict[str, Any]:
        """``/user/keys/claim`` of ``server``; the checked answer. MatrixError when it cannot be had."""
        answer = await self._ask(server, "claim", {"one_time_keys": one_time_keys}, CLAIM_ANSWER_BYTES)
        try:
            return checked_claim_answer(server, one_time_keys, answer, self.dropped)
        except (RecursionError, ValueError):
            raise _bad_answer(server, "too deeply nested") from None

    async def _ask(self, server: str, what: str, body: dict[str, Any], max_bytes: int) -> Any:
        try:
            parse_server_name(server)
        except ServerNameError:
            raise MatrixError(400, "M_INVALID_PARAM", f"{server[:100]!r} is not a server name") from None
        until = self._unreachable.get(server)
        if until is not None and until > self.clock():
            raise MatrixError(502, "M_UNKNOWN", f"{server} could not be reached moments ago; not asked again yet")
        async with self._asks:
            try:
                answer = await self.client.request(server, "POST", f"/_matrix/federation/v1/user/keys/{what}",
                                                   body=body, timeout=ASK_TIMEOUT_S, max_bytes=max_bytes)  # fmt: skip
            except FederationError as exc:
                if isinstance(exc, PeerUnreachable):
                    self._remember_unreachable(server)
                raise client_error(exc, f"its users' keys ({what})") from None
        self._unreachable.pop(server, None)
        return answer

    def _remember_unreachable(self, server: str) -> None:
        now = self.clock()
        if len(self._unreachable) >= _MAX_UNREACHABLE:
            self._unreachable = {s: t for s, t in self._unreachable.items() if t > now}
            while len(self._unreachable) >= _MAX_UNREACHABLE:
                self._unreachable.pop(next(iter(self._unreachable)))
        self._unreachable[server] = now + UNREACHABLE_S

    # ------------------------------------------------------------- what we show

    def view(self, user_id: str) -> DeviceListView:
        """The local user's devices with keys and cross-signing keys, as other servers may see them."""
        keys = self.services.device_keys
        devices = {
            d: {k: v for k, v in obj.items() if k != "unsigned"} for d, obj in keys.devices_of(user_id, None).items()
        }
        cross = {}
        for usage, key in keys.cross_signing_of(user_id).items():
            if usage in _CROSS_SIGNING_FIELDS:
                signatures = key.get("signatures")
                if isinstance(signatures, dict):  # the owner's only: other users' say who verified whom
                    key = {**key, "signatures": {u: s for u, s in signatures.items() if u == user_id}}
                cross[usage] = key
        return DeviceListView(devices, cross)

    def answer_query(self, body: Any) -> dict[str, Any]:
        """``POST /user/keys/query`` from another server: our users' keys (other users are ignored).

        MatrixError 400 for a malformed or too large request.
        """
        wanted = body.get("device_keys") if isinstance(body, dict) else None
        if not isinstance(wanted, dict):
            raise bad_json("device_keys must be an object")
        if len(wanted) > MAX_USERS_PER_REQUEST:
            raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_USERS_PER_REQUEST} users per request")
        if sum(len(d) if isinstance(d, list) else 0 for d in wanted.values()) > MAX_DEVICES_PER_REQUEST:
            raise MatrixError(400, "M_LIMIT_EXCEEDED", f"at most {MAX_DEVICES_PER_REQUEST} devices per request")
        answer: dict[str, Any] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
        for user_id, device_ids in wanted.items():
            if not isinstance(device_ids, list) or not all(isinstance(d, str) for d in device_ids):
                raise bad_json("each user's devices must be a list of device IDs")
            if not self.is_local(user_id):
                continue
            view, only = self.view(user_id), set(device_ids)
            answer["device_keys"][user_id] = {d: {**k, "unsigned": {}} for d, k in view.devices.items()
                                              if not only or d in only}  # fmt: skip
            for usage, key in view.cross_signing.items():
                answer[f"{usage}_keys"][user_id] = key
        return answer

    async def answer_claim(self, body: Any) -> dict[str, Any]:
        """``POST /user/keys/claim`` from another server: one key per asked device of our users (taken away)."""
        wanted = body.get("one_time_keys") if isinstance(body, dict) else None
        if not isinstance(wanted, dict):
            raise bad_json("one_time_keys must be an object")
        ours = {u: d for u, d in wanted.items() if self.is_local(u)}
        claimed = await self.services.device_keys.claim({"one_time_keys": ours})  # checks shapes and limits
        return {"one_time_keys": claimed["one_time_keys"]}

    def answer_user_devices(self, user_id: str) -> dict[str, Any]:
        """``GET /user/devices/{userId}`` for a local user: devices with keys, cross-signing keys, ``stream_id``.

        ``stream_id`` is the one the next ``m.device_list_update`` will name as ``prev_id``.
        """
        view = self.view(user_id)
        announced = self._announced.get(user_id)
        if announced is None:
            stream_id = self.services.store.e2ee.device_list_position(user_id) or 0
            self._remember(user_id, _Announced(stream_id, _digests(view.devices), _digests(view.cross_signing)))
        else:
            stream_id = announced.stream_id
        answer: dict[str, Any] = {"user_id": user_id, "stream_id": stream_id,
                                  "devices": [{"device_id": d, "keys": k} for d, k in sorted(view.devices.items())]}  # fmt: skip
        for usage, field in _CROSS_SIGNING_FIELDS.items():
            if usage in view.cross_signing:
                answer[field] = view.cross_signing[usage]
        return answer

    def is_local(self, user_id: Any) -> bool:
        """Whether ``user_id`` is a user ID of this server."""
        return isinstance(user_id, str) and user_id.startswith("@") and user_id.partition(":")[2] == self.server_name

    # ------------------------------------------------------------- announcing our changes

    def local_keys_changed(self, user_id: str) -> None:
        """A local user's devices or cross-signing keys changed (already stored): tell the servers sharing a room.

        Never raises: the change is stored and the client's request succeeded whatever happens here; a
        failure is logged, and the next change of the user goes out without prev_id (receivers fetch the list).
        """
        try:
            self._announce(user_id)
        except Exception:
            self._announced.pop(user_id, None)
            log.exception("device list change of %s could not be announced", user_id[:100])

    def _announce(self, user_id: str) -> None:
        servers = self._servers_sharing(user_id)
        if not servers:  # nobody to tell; a server that starts sharing a room asks (/user/devices) or is told anew
            self._announced.pop(user_id, None)
            return
        position = self.services.store.e2ee.device_list_position(user_id) or 0
        view = self.view(user_id)
        devices, cross = _digests(view.devices), _digests(view.cross_signing)
        before = self._announced.get(user_id)
        updates: list[dict[str, Any]] = []
        if before is None:
            # What others were told is unknown (a restart): an update without prev_id makes them fetch the list.
            updates = [device_list_update(user_id, view, _any_device(view, self.services, user_id), position, [])]
            signing = bool(cross)
        else:
            changed = sorted(
                d for d in devices.keys() | before.devices.keys() if devices.get(d) != before.devices.get(d)
            )
            signing = cross != before.cross_signing
            if changed and position > before.stream_id:
                updates = self._chain(user_id, view, changed, before.stream_id, position)
            elif changed:  # stored before its position was written: the write to come calls again
                devices = before.devices
        stream_id = position if updates else before.stream_id if before is not None else position
        self._remember(user_id, _Announced(stream_id, devices, cross))
        if not updates and not signing:
            return
        for server in sorted(servers):
            for update in updates:
                self.sender.send_edu(server, "m.device_list_update", update,
                                     key=(user_id, str(update["stream_id"]), update["device_id"]))  # fmt: skip
            if signing:
                content = {"user_id": user_id, **{_CROSS_SIGNING_FIELDS[u]: k for u, k in view.cross_signing.items()}}
                self.sender.send_edu(server, "m.signing_key_update", content, key=(user_id,))
        self.sent["device_list_update"] += len(updates) * len(servers)
        self.sent["signing_key_update"] += len(servers) if signing else 0
        log.debug("%s: %d device update(s)%s for %d server(s)", user_id, len(updates),
                  " and its cross-signing keys" if signing else "", len(servers))  # fmt: skip

    def _chain(self, user_id: str, view: DeviceListView, changed: list[str], last: int,
               position: int) -> list[dict[str, Any]]:  # fmt: skip
        """One update per changed device, each naming the one before; the last at ``position``.

        Stream IDs need only be unique per user: ``position - k + 1 .. position`` all lie after ``last``
        (positions in between belong to other users) unless the change came right after the last one;
        then a single update without prev_id makes receivers fetch the whole list.
        """
        first = position - len(changed) + 1
        if first <= last:
            return [device_list_update(user_id, view, changed[-1], position, [])]
        updates, prev = [], last
        for offset, device_id in enumerate(changed):
            updates.append(device_list_update(user_id, view, device_id, first + offset, [prev]))
            prev = first + offset
        return updates

    def _servers_sharing(self, user_id: str) -> set[str]:
        rooms = self.services.rooms
        servers: set[str] = set()
        for room_id, membership, _, _ in self.services.store.rooms_for_user(user_id):
            if membership == "join":
                servers |= rooms.dag.servers_in_room(room_id)
        servers.discard(self.server_name)
        return servers

    def _remember(self, user_id: str, announced: _Announced) -> None:
        self._announced.pop(user_id, None)
        self._announced[user_id] = announced
        while len(self._announced) > MAX_TRACKED_USERS:
            self._announced.popitem(last=False)  # forgotten: its next update goes without prev_id


def device_list_update(user_id: str, view: DeviceListView, device_id: str, stream_id: int,
                       prev_id: list[int]) -> dict[str, Any]:  # fmt: skip
    """The content of an ``m.device_list_update`` about one device: its keys as ``view`` has them, or deleted."""
    content: dict[str, Any] = {"user_id": user_id, "device_id": device_id, "stream_id": stream_id, "prev_id": prev_id}
    keys = view.devices.get(device_id)
    if keys is None:
        content["deleted"] = True
    else:
        content["keys"] = keys
    return content


def _digests(objects: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    return {name: _digest(obj) for name, obj in objects.items()}


def _any_device(view: DeviceListView, services: Services, user_id: str) -> str:
    """A device to name in an update when which one changed is unknown: one with keys, else any, else ''.

    Receivers fetch the whole list on such an update (it has no prev_id); the name only has to be true.
    """
    if view.devices:
        return min(view.devices)
    others = services.store.user_devices(user_id)
    return min(d.device_id for d in others) if others else ""


# ------------------------------------------------------------------ to-device messages out


def split_messages(
    messages: dict[str, dict[str, Any]], limit: int = TO_DEVICE_EDU_BYTES
) -> Iterator[dict[str, dict[str, Any]]]:
    """``messages`` ({user: {device: content}}) in parts of about ``limit`` bytes (a larger message alone)."""
    part: dict[str, dict[str, Any]] = {}
    size = 0
    for user_id, devices in messages.items():
        for device_id, content in devices.items():
            cost = _size(content) + len(user_id) + len(device_id) + 8
            if part and size + cost > limit:
                yield part
                part, size = {}, 0
            part.setdefault(user_id, {})[device_id] = content
            size += cost
    if part:
        yield part


class FederatedToDevice:
    """``ToDevice.remote``: to-device messages for other servers' users, as ``m.direct_to_device`` EDUs."""

    def __init__(self, sender: FederationSender) -> None:
        self.sender = sender
        self.sent = 0
        self.dropped = 0

    async def send(self, server: str, sender: str, event_type: str, messages: dict[str, dict[str, Any]]) -> None:
        """Keep ``messages`` (checked by ``ToDevice``) for ``server``'s users on disk, to go out as EDUs; dropped
        (counted) for a bad name. On disk when this returns: a restart loses none."""
        try:
            parse_server_name(server)
        except ServerNameError:
            self.dropped += sum(len(d) for d in messages.values())
            log.warning("to-device messages for %r dropped: not a server name", server[:100])
            return
        edus = []
        for part in split_messages(messages):
            message_id = secrets.token_urlsafe(12)  # 16 characters; the spec allows 32
            edus.append(("m.direct_to_device", {"sender": sender, "type": event_type, "message_id": message_id,
                                                "messages": part}))  # fmt: skip
        await self.sender.send_kept_edus(server, edus)
        self.sent += len(edus)
