"""State groups in SQLite: allocation, the delta chains on disk, the cache of full states.

Rules:

* every state event makes a new group, stored as a delta on its
  predecessor; after ``_SNAPSHOT_EVERY`` deltas a group stores its whole
  state instead, so loading one never walks a long chain;
* a group is allocated in memory (its ID and its full state cached at
  once) and written later with its event, in the writer's transaction:
  reads of a new group never wait for that write;
* the cache keeps the ``_CACHE_GROUPS`` most recently used full states.
"""

from __future__ import annotations

import json
import sqlite3
from collections import OrderedDict

from lowband.gateway.store.interfaces import StateGroupWrite, StateMap
from lowband.gateway.store.sqlite.database import Database

_SNAPSHOT_EVERY = 32  # a state group stores its full state after this many deltas
_CACHE_GROUPS = 2048


class StateGroups:
    """The state groups of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        row = db.query_one("SELECT MAX(id) FROM state_groups")
        self._next_group = (row[0] or 0) + 1 if row else 1
        self._cache: OrderedDict[int, StateMap] = OrderedDict()
        self._chains: dict[int, int] = {}

    def allocate(self, room_id: str, prev_group: int | None, delta: StateMap) -> StateGroupWrite:
        """A new group: ``prev_group``'s state changed by ``delta`` (see RoomStore.new_state_group)."""
        group = self._next_group
        self._next_group += 1
        chain = self._chain_length(prev_group) + 1 if prev_group is not None else 0
        full = dict(self.state(prev_group)) if prev_group is not None else {}
        full.update(delta)
        # Copies: the writer thread serialises ``stored`` later, while the loop reads the cached ``full``.
        if chain >= _SNAPSHOT_EVERY:
            prev_group, chain, stored = None, 0, dict(full)
        else:
            stored = dict(delta)
        self._remember(group, full)
        self._chains[group] = chain
        return StateGroupWrite(group, room_id, prev_group, chain, stored)

    @staticmethod
    def write(c: sqlite3.Connection, new: StateGroupWrite) -> None:
        """Insert an allocated group (in the writer thread, with its event)."""
        text = json.dumps([[t, k, e] for (t, k), e in sorted(new.delta.items())])
        c.execute("INSERT INTO state_groups VALUES (?, ?, ?, ?, ?)",
                  (new.group, new.room_id, new.prev_group, new.chain_length, text))  # fmt: skip

    def state(self, group: int | None) -> StateMap:
        """The full state of a group ({} for None); KeyError when a group of its chain is missing."""
        if group is None:
            return {}
        cached = self._cache.get(group)
        if cached is not None:
            self._cache.move_to_end(group)
            return cached
        chain: list[list[list[str]]] = []
        current: int | None = group
        while current is not None:
            if current in self._cache:
                base = dict(self._cache[current])
                break
            row = self.db.query_one("SELECT prev_group, delta FROM state_groups WHERE id = ?", (current,))
            if row is None:
                raise KeyError(f"state group {current} is missing")
            chain.append(json.loads(row[1]))
            current = row[0]
        else:
            base = {}
        for delta in reversed(chain):
            for t, k, e in delta:
                base[(t, k)] = e
        self._remember(group, base)
        return base

    def _chain_length(self, group: int) -> int:
        if group in self._chains:
            return self._chains[group]
        row = self.db.query_one("SELECT chain_length FROM state_groups WHERE id = ?", (group,))
        return int(row[0]) if row else 0

    def _remember(self, group: int, state: StateMap) -> None:
        self._cache[group] = state
        self._cache.move_to_end(group)
        while len(self._cache) > _CACHE_GROUPS:
            self._cache.popitem(last=False)
