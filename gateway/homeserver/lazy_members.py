"""Lazy-loaded room members and room summaries for /sync and /messages.

Rules (the filter's ``room.state.lazy_load_members`` for /sync, the RoomEventFilter's own for /messages):

- With lazy loading, the ``m.room.member`` events a room's ``state`` carries are only those of the
  timeline's senders and of the syncing user (state at the start of the timeline); all other state is
  sent as without it. A limited incremental timeline still gets every other state change of the gap.
- Unless ``include_redundant_members`` is true, a member event this device was already sent is left out:
  "already sent" means the same event ID went out in a response whose ``next_batch`` is at or before the
  ``since`` token now given. A token older than that (a client that went back), a device or entry the
  bounded memory dropped, or an initial sync: the member is sent again. Forgetting only costs bytes.
- /messages with lazy loading answers ``state`` with the member events of the chunk's senders (each as of
  that sender's first event in the chunk). It does not leave out redundant members: its tokens are not
  sync positions, so nothing tells what the client kept.
- The room ``summary`` (``m.joined_member_count``, ``m.invited_member_count``, and ``m.heroes`` when the room
  has neither name nor canonical alias) goes out in an initial or full-state sync, and in an incremental one
  when an event that can change it (membership, name, canonical alias) is in the response and the summary
  differs from the one this device last acknowledged.

The memory is :class:`SentMembers`: per device (at most ``max_devices``, least recently syncing dropped
first), per room, user -> (event ID, position), and each room's last summary; a device past
``max_entries`` entries starts again from nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from lowband.gateway.store.interfaces import EventRow, StateMap, Store

MEMBER = "m.room.member"
MAX_HEROES = 5
#: state whose change can change a room summary
_SUMMARY_TYPES = frozenset({MEMBER, "m.room.name", "m.room.canonical_alias"})
#: below every stream position (backfilled history is stored at negative positions)
_FLOOR = -(1 << 62)


@dataclass(frozen=True)
class LazyOptions:
    """What a (Room)EventFilter asks of member loading."""

    enabled: bool = False
    redundant: bool = False

    @classmethod
    def of(cls, spec: Any) -> LazyOptions:
        """Read ``lazy_load_members`` / ``include_redundant_members`` (anything but ``true`` is false)."""
        if not isinstance(spec, dict):
            return cls()
        return cls(spec.get("lazy_load_members") is True, spec.get("include_redundant_members") is True)


#: no lazy loading (the default)
NO_LAZY = LazyOptions()


@dataclass
class _DeviceMemory:
    rooms: dict[str, dict[str, tuple[str, int]]]
    summaries: dict[str, tuple[dict[str, Any], int]]
    entries: int = 0


class SentMembers:
    """Which member events (and summaries) each device was sent, bounded in devices and entries."""

    def __init__(self, max_devices: int = 1024, max_entries: int = 50_000) -> None:
        self.max_devices = max_devices
        self.max_entries = max_entries
        self._devices: OrderedDict[tuple[str, str], _DeviceMemory] = OrderedDict()

    def _memory(self, device: tuple[str, str], create: bool) -> _DeviceMemory | None:
        memory = self._devices.get(device)
        if memory is not None:
            self._devices.move_to_end(device)
            return memory
        if not create:
            return None
        memory = _DeviceMemory({}, {})
        self._devices[device] = memory
        while len(self._devices) > self.max_devices:
            self._devices.popitem(last=False)
        return memory

    def already_sent(self, device: tuple[str, str], room_id: str, user_id: str, event_id: str,
                     since: int | None) -> bool:  # fmt: skip
        """Whether ``event_id`` (``user_id``'s member event) went to ``device`` in a response at or before
        ``since`` (None: an initial sync, nothing counts)."""
        memory = self._memory(device, False) if since is not None else None
        if memory is None or since is None:
            return False
        found = memory.rooms.get(room_id, {}).get(user_id)
        return found is not None and found[0] == event_id and found[1] <= since

    def note(self, device: tuple[str, str], room_id: str, sent: dict[str, str], position: int) -> None:
        """Remember the member events ``sent`` (user -> event ID) went to ``device`` in a response at
        ``position``."""
        if not sent:
            return
        memory = self._memory(device, True)
        assert memory is not None
        room = memory.rooms.setdefault(room_id, {})
        for user_id, event_id in sent.items():
            if user_id not in room:
                memory.entries += 1
            room[user_id] = (event_id, position)
        if memory.entries > self.max_entries:  # bounded: start again, the device is sent members again
            memory.rooms.clear()
            memory.entries = 0

    def summary_unchanged(self, device: tuple[str, str], room_id: str, summary: dict[str, Any],
                          since: int | None) -> bool:  # fmt: skip
        """Whether ``device`` acknowledged (a token at or past it) this very summary."""
        memory = self._memory(device, False) if since is not None else None
        if memory is None or since is None:
            return False
        found = memory.summaries.get(room_id)
        return found is not None and found[0] == summary and found[1] <= since

    def note_summary(self, device: tuple[str, str], room_id: str, summary: dict[str, Any], position: int) -> None:
        """Remember the summary sent to ``device`` at ``position``."""
        memory = self._memory(device, True)
        assert memory is not None
        if room_id not in memory.summaries:
            memory.entries += 1
        memory.summaries[room_id] = (summary, position)


def pick_state(
    options: LazyOptions, sent: SentMembers, device: tuple[str, str], room_id: str, rows: list[EventRow],
    start_state: StateMap, since_state: StateMap, since: int | None,
) -> StateMap:  # fmt: skip
    """The state a joined room's sync section carries under lazy loading.

    ``start_state``: state at the start of the timeline; ``since_state``: what the client holds already for
    non-member state (empty for an initial sync; ``start_state`` itself when the timeline is not limited).
    Members: those of ``rows``' senders and of the device's user, less those already sent (see the module
    rules).
    """
    picked = {k: v for k, v in start_state.items() if k[0] != MEMBER and since_state.get(k) != v}
    wanted = {row["event"].sender for row in rows} | {device[0]}
    for user_id in sorted(wanted):
        key = (MEMBER, user_id)
        event_id = start_state.get(key)
        if event_id is None:
            continue
        if not options.redundant and sent.already_sent(device, room_id, user_id, event_id, since):
            continue
        picked[key] = event_id
    return picked


def note_sent(sent: SentMembers, device: tuple[str, str], room_id: str, state: list[dict[str, Any]],
              rows: list[EventRow], position: int) -> None:  # fmt: skip
    """Remember the member events of a room's ``state`` (client format) and of its timeline ``rows``."""
    members = {e["state_key"]: e["event_id"] for e in state if e.get("type") == MEMBER and "state_key" in e}
    for row in rows:
        event = row["event"]
        if event.type == MEMBER and event.state_key is not None:
            members[event.state_key] = event.event_id
    sent.note(device, room_id, members, position)


def chunk_members(store: Store, rows: list[EventRow], options: LazyOptions) -> list[EventRow]:
    """/messages ``state`` under lazy loading: each sender's member event as of their first event in
    ``rows`` (one state lookup per sender at most, so bounded by the page size)."""
    if not options.enabled:
        return []
    found: dict[str, str] = {}
    for row in rows:
        sender = row["event"].sender
        if sender in found:
            continue
        state = store.state_for_group(row["state_before"])
        event_id = state.get((MEMBER, sender))
        found[sender] = event_id or ""
    wanted = [event_id for event_id in found.values() if event_id]
    events = store.get_events(wanted)
    return [events[i] for i in wanted if i in events]


def summary_wanted(rows: list[EventRow], state: list[dict[str, Any]]) -> bool:
    """Whether a timeline or state section holds an event that can change the room summary."""
    return any(row["event"].type in _SUMMARY_TYPES for row in rows) or any(
        e.get("type") in _SUMMARY_TYPES for e in state)  # fmt: skip


def room_summary(store: Store, room_id: str, user_id: str, upto: int, named: bool) -> dict[str, Any]:
    """The room's summary as of ``upto``: member counts, and ``m.heroes`` (at most five other members,
    joined or invited first, else those who left) when the room is not ``named`` (no name nor canonical
    alias)."""
    members = store.memberships_in([room_id], _FLOOR, upto)
    joined = sorted(u for _, u, m in members if m == "join")
    invited = sorted(u for _, u, m in members if m == "invite")
    summary: dict[str, Any] = {"m.joined_member_count": len(joined), "m.invited_member_count": len(invited)}
    if not named:
        heroes = [u for u in [*joined, *invited] if u != user_id][:MAX_HEROES]
        if not heroes:
            heroes = sorted(u for _, u, m in members if m in ("leave", "ban") and u != user_id)[:MAX_HEROES]
        summary["m.heroes"] = heroes
    return summary
