"""Third-party lookups (``/_matrix/client/v3/thirdparty/...``), answered by the bridges that declare the protocol.

A bridge lists in its registration the ``protocols`` it serves (``irc``,
``slack``, ...). For a client's question the gateway asks those bridges, in
parallel, each with a :data:`LOOKUP_TIMEOUT_S` deadline, and answers with
what came back:

* protocol metadata (``GET /_matrix/app/v1/thirdparty/protocol/{protocol}``)
  is kept :data:`PROTOCOL_TTL_S` once a bridge answered it, and a failed
  question is not asked again for :data:`FAILED_TTL_S`; questions in flight
  for the same (bridge, protocol) share one request. So clients opening their
  room directory never turn into a request to every bridge each time, and a
  dead bridge delays at most one answer per :data:`FAILED_TTL_S`;
* each instance a bridge lists gets its ``instance_id``, ``{bridge id}|{network_id}``:
  what a client sends back as ``third_party_instance_id`` to ``/publicRooms``
  (:func:`parse_instance_id`);
* location and user lookups (by protocol and fields, or backwards by a
  room alias or user ID) are forwarded each time; the backward ones go only
  to bridges whose alias or user namespaces hold the alias or user.

A bridge's answer is remote input. One of the wrong shape (not an object
where one is needed, a list that is not a list) is refused whole; inside a
well-shaped answer an entry of the wrong shape, or past :data:`MAX_RESULTS`
entries, is dropped. Either way the bridge counts as refused in
:attr:`ThirdPartyLookups.refused` (per bridge) and is logged: the first time,
then once per :data:`LOG_INTERVAL_S` at most with the count. What is kept is
rebuilt from the checked fields only (strings of at most :data:`MAX_TEXT`
characters, :data:`MAX_FIELDS` fields), so a client never receives more
than these bounds from any bridge, whatever it sent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from lowband.gateway.appservices.client import BridgeClient, BridgeError, BridgeUnreachable, path_segment
from lowband.gateway.appservices.registration import AppService, AppServices

log = logging.getLogger(__name__)

#: seconds one bridge has to answer one lookup
LOOKUP_TIMEOUT_S = 5.0
#: seconds a bridge's protocol metadata is kept once it answered
PROTOCOL_TTL_S = 300.0
#: seconds before a bridge that failed to give its protocol metadata is asked again
FAILED_TTL_S = 30.0
#: entries kept from one bridge's answer (locations, users, instances)
MAX_RESULTS = 100
#: characters of any string kept from an answer
MAX_TEXT = 1000
#: entries of a ``fields`` object, a ``*_fields`` list or ``field_types`` kept from an answer
MAX_FIELDS = 32
#: seconds between two log lines about one bridge's refused answers
LOG_INTERVAL_S = 60.0
#: query parameters the gateway reads itself, never forwarded to a bridge
NOT_FORWARDED = frozenset({"access_token", "user_id", "device_id", "org.matrix.msc3202.device_id"})


class BadAnswer(ValueError):
    """A bridge's answer does not have the shape the spec gives it."""


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise BadAnswer(f"{what} is not a string of at most {MAX_TEXT} characters")
    return value


def _fields(value: Any, what: str) -> dict[str, Any]:
    """A ``fields`` object: at most MAX_FIELDS string keys, each value a short string, number or boolean."""
    if not isinstance(value, dict) or len(value) > MAX_FIELDS:
        raise BadAnswer(f"{what} is not an object of at most {MAX_FIELDS} entries")
    kept: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, str):
            item = _text(item, f"{what}.{str(key)[:40]}")
        elif not isinstance(item, (int, float, bool)) or abs(item) > 2**53 or not math.isfinite(item):
            # NaN and Infinity parse in Python but are not JSON: a client could not read them
            raise BadAnswer(f"{what}.{str(key)[:40]} is not a string, number or boolean")
        kept[_text(key, f"a key of {what}")] = item
    return kept


def _names(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_FIELDS:
        raise BadAnswer(f"{what} is not a list of at most {MAX_FIELDS} names")
    return [_text(v, what) for v in value]


def _entries(answer: Any, check: Callable[[Any], dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """(the entries of a list answer that pass ``check``, up to MAX_RESULTS; how many were dropped)."""
    if not isinstance(answer, list):
        raise BadAnswer("the answer is not a list")
    kept: list[dict[str, Any]] = []
    dropped = max(0, len(answer) - MAX_RESULTS)
    for entry in answer[:MAX_RESULTS]:
        try:
            kept.append(check(entry))
        except BadAnswer:
            dropped += 1
    return kept, dropped


def check_location(entry: Any) -> dict[str, Any]:
    """One location of an answer: ``{alias, protocol, fields}``; BadAnswer when it is not one."""
    if not isinstance(entry, dict):
        raise BadAnswer("a location is not an object")
    alias = _text(entry.get("alias"), "alias")
    if not alias.startswith("#") or ":" not in alias or len(alias.encode()) > 255:
        raise BadAnswer("alias is not a room alias")
    return {"alias": alias, "protocol": _text(entry.get("protocol"), "protocol"),
            "fields": _fields(entry.get("fields"), "fields")}  # fmt: skip


def check_user(entry: Any) -> dict[str, Any]:
    """One user of an answer: ``{userid, protocol, fields}``; BadAnswer when it is not one."""
    if not isinstance(entry, dict):
        raise BadAnswer("a user is not an object")
    user_id = _text(entry.get("userid"), "userid")
    if not user_id.startswith("@") or ":" not in user_id or len(user_id.encode()) > 255:
        raise BadAnswer("userid is not a user ID")
    return {"userid": user_id, "protocol": _text(entry.get("protocol"), "protocol"),
            "fields": _fields(entry.get("fields"), "fields")}  # fmt: skip


def _instance(entry: Any, bridge_id: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise BadAnswer("an instance is not an object")
    network_id = _text(entry.get("network_id"), "network_id")
    if not network_id:
        raise BadAnswer("network_id is empty")
    kept = {"desc": _text(entry.get("desc"), "desc"), "fields": _fields(entry.get("fields", {}), "fields"),
            "network_id": network_id, "instance_id": instance_id(bridge_id, network_id)}  # fmt: skip
    if entry.get("icon") is not None:
        kept["icon"] = _text(entry["icon"], "icon")
    return kept


def check_protocol(answer: Any, bridge_id: str) -> tuple[dict[str, Any], int]:
    """(a protocol's metadata rebuilt from the checked fields, instances dropped); BadAnswer when not one.

    ``user_fields``, ``location_fields`` and ``field_types`` missing are taken as empty, ``icon`` as "" (bridges
    leave them out); each instance gains its ``instance_id``.
    """
    if not isinstance(answer, dict):
        raise BadAnswer("the answer is not an object")
    types = answer.get("field_types") or {}
    if not isinstance(types, dict) or len(types) > MAX_FIELDS:
        raise BadAnswer(f"field_types is not an object of at most {MAX_FIELDS} entries")
    field_types: dict[str, Any] = {}
    for name, spec in types.items():
        if not isinstance(spec, dict):
            raise BadAnswer("a field type is not an object")
        field_types[_text(name, "a field type's name")] = {"regexp": _text(spec.get("regexp", ""), "regexp"),
                                                           "placeholder": _text(spec.get("placeholder", ""), "placeholder")}  # fmt: skip
    instances = answer.get("instances")
    kept, dropped = _entries([] if instances is None else instances, lambda e: _instance(e, bridge_id))
    return {"user_fields": _names(answer.get("user_fields"), "user_fields"),
            "location_fields": _names(answer.get("location_fields"), "location_fields"),
            "icon": _text(answer.get("icon") or "", "icon"), "field_types": field_types, "instances": kept}, dropped  # fmt: skip


def instance_id(bridge_id: str, network_id: str) -> str:
    """The ``instance_id`` of a bridge's network, as clients see it and send back to ``/publicRooms``."""
    return f"{bridge_id}|{network_id}"


def parse_instance_id(bridges: AppServices, value: str) -> tuple[str, str] | None:
    """(bridge id, network id) of a ``third_party_instance_id`` naming a registered bridge, else None."""
    for bridge in bridges.all:
        prefix = bridge.id + "|"
        if value.startswith(prefix) and len(value) > len(prefix):
            return bridge.id, value[len(prefix) :]
    return None


@dataclass
class _Noise:
    """Refusals of one bridge not logged yet, and when the last line about it was written."""

    pending: int = 0
    last_line: float = float("-inf")


@dataclass
class ThirdPartyLookups:
    """Asks the bridges, checks their answers, keeps protocol metadata a while. One per running gateway."""

    #: refused or trimmed answers per bridge id since start
    refused: Counter[str] = field(default_factory=Counter)
    clock: Callable[[], float] = time.monotonic
    _protocols: dict[tuple[str, str], tuple[float, asyncio.Task[dict[str, Any] | None]]] = field(default_factory=dict)
    _noise: dict[str, _Noise] = field(default_factory=dict)

    def _refuse(self, bridge: AppService, what: str, reason: str, count: int = 1) -> None:
        self.refused[bridge.id] += count
        noise = self._noise.setdefault(bridge.id, _Noise())
        noise.pending += count
        now = self.clock()
        if now - noise.last_line >= LOG_INTERVAL_S:  # a broken bridge asked on every request: one line a minute
            log.warning("bridge %s: %d answer(s) refused or trimmed since the last line (%s: %s); %d since start",
                        bridge.id, noise.pending, what, reason, self.refused[bridge.id])  # fmt: skip
            noise.pending, noise.last_line = 0, now

    async def _ask(self, client: BridgeClient, bridge: AppService, path: str) -> Any:
        """The bridge's answer, or None when it has none (404) or failed (unreachable, error, timeout: refused)."""
        try:
            return await client.request(bridge, "GET", path, timeout_s=LOOKUP_TIMEOUT_S)
        except BridgeError as exc:
            if exc.status == 404:  # the spec's "nothing found"
                return None
            self._refuse(bridge, path.split("?")[0], f"HTTP {exc.status}")
        except BridgeUnreachable as exc:
            self._refuse(bridge, path.split("?")[0], str(exc))
        except RecursionError:  # JSON nested past Python's limit: json.loads raises this, not ValueError
            self._refuse(bridge, path.split("?")[0], "answer nested too deeply")
        return None

    # ------------------------------------------------------------ protocols

    async def _fetch_protocol(self, client: BridgeClient, bridge: AppService, protocol: str) -> dict[str, Any] | None:
        path = "/_matrix/app/v1/thirdparty/protocol/" + path_segment(protocol)
        answer = await self._ask(client, bridge, path)
        if answer is None:
            return None
        try:
            metadata, dropped = check_protocol(answer, bridge.id)
        except BadAnswer as exc:
            self._refuse(bridge, path, str(exc))
            return None
        if dropped:
            self._refuse(bridge, path, "instances dropped (wrong shape or too many)", dropped)
        return metadata

    async def _protocol_of(self, client: BridgeClient, bridge: AppService, protocol: str) -> dict[str, Any] | None:
        """The bridge's metadata for ``protocol``: kept, shared with a question in flight, or asked now."""
        key = (bridge.id, protocol)
        now = self.clock()
        found = self._protocols.get(key)
        if found is not None and (not found[1].done() or now < found[0]):
            return await asyncio.shield(found[1])  # a client that gives up does not cancel the others' question
        task = asyncio.ensure_future(self._fetch_protocol(client, bridge, protocol))
        self._protocols[key] = (float("inf"), task)
        task.add_done_callback(lambda t: self._expire(key, t))
        return await asyncio.shield(task)

    def _expire(self, key: tuple[str, str], task: asyncio.Task[dict[str, Any] | None]) -> None:
        answered = not task.cancelled() and task.exception() is None and task.result() is not None
        current = self._protocols.get(key)
        if current is not None and current[1] is task:
            self._protocols[key] = (self.clock() + (PROTOCOL_TTL_S if answered else FAILED_TTL_S), task)

    async def protocol(self, bridges: AppServices, client: BridgeClient, protocol: str) -> dict[str, Any] | None:
        """``protocol``'s metadata from every bridge declaring it, instances merged; None when none answered.

        The first bridge (in registration order) that answered gives the fields and icon.
        """
        asked = [b for b in bridges.all if protocol in b.protocols and b.url is not None]
        answers = await asyncio.gather(*(self._protocol_of(client, b, protocol) for b in asked))
        merged: dict[str, Any] | None = None
        for answer in answers:
            if answer is None:
                continue
            if merged is None:
                merged = {**answer, "instances": list(answer["instances"])}
            else:
                merged["instances"] += answer["instances"]
        return merged

    async def protocols(self, bridges: AppServices, client: BridgeClient) -> dict[str, Any]:
        """Every declared protocol some bridge answered for, by name (``{}`` without bridges)."""
        names = sorted({p for b in bridges.all if b.url is not None for p in b.protocols})
        answers = await asyncio.gather(*(self.protocol(bridges, client, name) for name in names))
        return {name: answer for name, answer in zip(names, answers, strict=True) if answer is not None}

    # ------------------------------------------------------------ lookups

    async def _lookup(self, client: BridgeClient, asked: list[AppService], path: str,
                      check: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
        async def one(bridge: AppService) -> list[dict[str, Any]]:
            answer = await self._ask(client, bridge, path)
            if answer is None:
                return []
            try:
                kept, dropped = _entries(answer, check)
            except BadAnswer as exc:
                self._refuse(bridge, path.split("?")[0], str(exc))
                return []
            if dropped:
                self._refuse(bridge, path.split("?")[0], "entries dropped (wrong shape or too many)", dropped)
            return kept

        results = await asyncio.gather(*(one(b) for b in asked))
        return [entry for found in results for entry in found]

    def lookup(self, bridges: AppServices, client: BridgeClient, kind: str, protocol: str,
               params: list[tuple[str, str]]) -> Awaitable[list[dict[str, Any]]] | None:  # fmt: skip
        """Locations (``kind`` "location") or users ("user") of ``protocol`` matching ``params``, from every
        bridge declaring it; None when no bridge declares it."""
        asked = [b for b in bridges.all if protocol in b.protocols and b.url is not None]
        if not asked:
            return None
        path = f"/_matrix/app/v1/thirdparty/{kind}/{path_segment(protocol)}"
        if params:
            path += "?" + urlencode(params)
        return self._lookup(client, asked, path, check_location if kind == "location" else check_user)

    def reverse(self, bridges: AppServices, client: BridgeClient, kind: str,
                matrix_id: str) -> Awaitable[list[dict[str, Any]]] | None:  # fmt: skip
        """The third-party locations of a room alias (``kind`` "location") or users of a user ID ("user"),
        from the bridges whose namespaces hold it; None when none does."""
        if kind == "location":
            asked = [b for b in bridges.all if b.url is not None and b.wants_alias(matrix_id)]
            query = urlencode({"alias": matrix_id})
        else:
            asked = [b for b in bridges.all if b.url is not None and b.wants_user(matrix_id)]
            query = urlencode({"userid": matrix_id})
        if not asked:
            return None
        path = f"/_matrix/app/v1/thirdparty/{kind}?{query}"
        return self._lookup(client, asked, path, check_location if kind == "location" else check_user)
