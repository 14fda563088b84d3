"""An in-memory RoomDag and peer for testing the receive path without a store or a network."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from lowband.gateway.federation.client import FederationError
from lowband.gateway.federation.inbound.dag import StateMap
from lowband.gateway.matrix import room_versions
from lowband.gateway.matrix.events import Event, build_event
from lowband.gateway.matrix.signing import SigningKey


@dataclass(frozen=True)
class KnownEvent:
    event: Event
    rejected: str | None
    outlier: bool


class MemoryDag:
    """Rooms as dicts; the current state follows the last accepted, non-soft-failed event (one extremity)."""

    def __init__(self) -> None:
        self.events: dict[str, KnownEvent] = {}
        self.before: dict[str, StateMap] = {}
        self.after: dict[str, StateMap] = {}
        self.rooms: dict[str, dict[str, Any]] = {}
        self.timeline: list[str] = []
        self.soft_failed: set[str] = set()
        self.locks: dict[str, asyncio.Lock] = {}

    def room_version(self, room_id):
        return room_versions.V10 if room_id in self.rooms else None

    def room_lock(self, room_id):
        return self.locks.setdefault(room_id, asyncio.Lock())

    def known(self, event_id):
        return self.events.get(event_id)

    def state_before(self, event_id):
        return self.before.get(event_id)

    def state_after(self, event_id):
        return self.after.get(event_id)

    def current_state(self, room_id):
        return dict(self.rooms[room_id]["state"])

    def forward_extremities(self, room_id):
        return list(self.rooms[room_id]["extremities"])

    async def store_outliers(self, room_id, events):
        for event, rejected in events:
            self.events.setdefault(event.event_id, KnownEvent(event, rejected, True))

    async def store_remote(self, room_id, event, state_before, rejected, soft_failed, relay=False):
        self.events[event.event_id] = KnownEvent(event, rejected, False)
        self.before[event.event_id] = dict(state_before)
        after = dict(state_before)
        if event.state_key is not None and rejected is None:
            after[(event.type, event.state_key)] = event.event_id
        self.after[event.event_id] = after
        self.timeline.append(event.event_id)
        room = self.rooms.setdefault(room_id, {"state": {}, "extremities": []})
        if soft_failed:
            self.soft_failed.add(event.event_id)
        elif rejected is None:
            room["extremities"] = [e for e in room["extremities"] if e not in event.prev_events] + [event.event_id]
            room["state"] = after


class RemoteServer:
    """Another server's view: builds and signs its events, answers the fetch endpoints from what it holds."""

    def __init__(self, name: str, key: SigningKey | None = None) -> None:
        self.name = name
        self.key = key or SigningKey.from_seed(bytes([len(name)]) * 32, "r1")
        self.events: dict[str, Event] = {}
        self.state_before: dict[str, StateMap] = {}
        self.requests: list[tuple[str, str]] = []
        self.ts = 1_700_000_000_000

    def make(self, room_id: str, sender: str, event_type: str, content: dict, *, prev: list[Event], auth: list[Event],
             state_key: str | None = None, state: StateMap | None = None, depth: int | None = None) -> Event:  # fmt: skip
        self.ts += 1
        event = build_event(room_id=room_id, sender=sender, type=event_type, content=content,
                            prev_events=[e.event_id for e in prev], auth_events=[e.event_id for e in auth],
                            depth=depth if depth is not None else max([e.depth for e in prev], default=0) + 1,
                            origin_server_ts=self.ts, server_name=self.name, signing_key=self.key,
                            state_key=state_key)  # fmt: skip
        self.events[event.event_id] = event
        self.state_before[event.event_id] = dict(state or {})
        return event

    async def request(self, destination, method, path, *, query=None, body=None, timeout=None, max_bytes=None):
        self.requests.append((method, path.split("/")[4] if path.count("/") >= 4 else path))
        parts = path.split("/")
        kind = parts[4]
        if kind == "event":
            event_id = _unquote(parts[5])
            if event_id in self.events:
                return {"pdus": [self.events[event_id].pdu]}
        elif kind == "event_auth":
            return {"auth_chain": [e.pdu for e in self._auth_chain(_unquote(parts[6]))]}
        elif kind == "get_missing_events":
            latest = body["latest_events"]
            earliest = set(body["earliest_events"])
            out: list[Event] = []
            frontier = list(latest)
            while frontier and len(out) < body["limit"]:
                event = self.events.get(frontier.pop(0))
                for prev in event.prev_events if event else []:
                    if prev not in earliest and prev in self.events and self.events[prev] not in out:
                        out.append(self.events[prev])
                        frontier.append(prev)
            return {"events": [e.pdu for e in out[: body["limit"]]]}
        elif kind == "state_ids":
            event_id = query["event_id"]
            state = self.state_before[event_id]
            return {"pdu_ids": list(state.values()),
                    "auth_chain_ids": sorted({a.event_id for s in state.values() for a in self._auth_chain(s)})}  # fmt: skip
        raise FederationError(destination, 404, "M_NOT_FOUND", f"no {kind}")

    def _auth_chain(self, event_id: str) -> list[Event]:
        seen: dict[str, Event] = {}
        todo = list(self.events[event_id].auth_events) if event_id in self.events else []
        while todo:
            current = todo.pop()
            if current in seen or current not in self.events:
                continue
            seen[current] = self.events[current]
            todo.extend(self.events[current].auth_events)
        return list(seen.values())


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)


class FakeKeyRing:
    """Keys of the given servers, as the real key ring would return them."""

    def __init__(self, *servers: RemoteServer) -> None:
        self.keys = {(s.name, s.key.key_id): s.key.verify_key_bytes for s in servers}

    async def verify_key(self, server, key_id, at_ts=None):
        return self.keys.get((server, key_id))
