"""Event relations (``m.relates_to``) in the SQLite file: the index behind /relations, /threads and ``m.relations``.

* ``event_relations``: one row per timeline event that relates to another
  (``content["m.relates_to"]`` with a string ``rel_type`` and ``event_id``):
  the parent, the relation type, the child's type, sender, stream position and
  timestamp, and an annotation's ``key``;
* ``event_threads``: per thread root, the stream position of its latest
  ``m.thread`` reply (the order of ``/threads``);
* ``relations_backfill``: how far the index of events stored before it
  existed has come (one row; ``below`` NULL when done).

The index is kept by triggers on ``events``, so every path that stores an
event (local sends, federation, backfilled history, an outlier placed later)
indexes it in the same transaction without knowing about relations. Only
events shown in a timeline are indexed (not rejected, outliers or
soft-failed). A redacted child leaves the index (redaction strips
``m.relates_to`` in every room version Lowband serves); ``event_threads``
keeps its latest position then (a thread may sort a little high until its
next reply). The SQL reads ``index_fields`` (the content keys the indexes
need, plain JSON: ``pdu_codec.index_fields``), not the compressed ``pdu``.

Events stored before this table existed are indexed by :data:`BACKFILL_BATCH`
stream positions per write, newest first: for up to :data:`BACKFILL_BUDGET_S`
while the store opens, then one batch per write job, chained, so the one
writer is never held for long and a start with a large database is not
delayed for it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from lowband.gateway.store.sqlite.database import Database
from lowband.gateway.store.sqlite.event_index import OlderEvents
from lowband.gateway.store.sqlite.schema import ROOM_OF, same_event

#: stream positions indexed per backfill write (a position holds at most one event)
BACKFILL_BATCH = 20_000
#: how long opening the store may spend indexing older events before the rest goes to the background
BACKFILL_BUDGET_S = 2.0
#: nodes a recursive /relations walk visits at most
MAX_TREE_NODES = 10_000
#: references listed per event in ``m.relations`` (the spec sets no bound; a client pages /relations for more)
MAX_BUNDLED_REFERENCES = 50

_REL = "'$.content.\"m.relates_to\".rel_type'"
_PARENT = "'$.content.\"m.relates_to\".event_id'"
_KEY = "'$.content.\"m.relates_to\".key'"

#: the relation columns of an events row ``e`` (for the trigger, ``NEW``), in event_relations' order
_SELECT_RELATION = (
    "SELECT {e}.event_id, " + ROOM_OF + ", json_extract({e}.index_fields, " + _PARENT + "), json_extract({e}.index_fields, " + _REL + "),"
    " {e}.type, {e}.sender, {e}.stream, {e}.origin_server_ts,"
    " CASE WHEN json_type({e}.index_fields, " + _KEY + ") = 'text' THEN json_extract({e}.index_fields, " + _KEY + ") END"
)
#: when an events row ``e`` is indexed: shown in the timeline, not redacted, with a well-formed relation
_INDEXED = (
    "{e}.rejected IS NULL AND {e}.outlier = 0 AND {e}.soft_failed = 0 AND {e}.redacted_by IS NULL"
    " AND json_type({e}.index_fields, " + _REL + ") = 'text' AND json_type({e}.index_fields, " + _PARENT + ") = 'text'"
    " AND json_extract({e}.index_fields, " + _PARENT + ") != {e}.event_id"
)

RELATIONS_SCHEMA = [
    """
CREATE TABLE IF NOT EXISTS event_relations (
    child_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    child_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    child_stream INTEGER NOT NULL,
    child_ts INTEGER NOT NULL,
    aggregation_key TEXT              -- m.annotation's key, else NULL
) WITHOUT ROWID
""",
    "CREATE INDEX IF NOT EXISTS event_relations_parent ON event_relations(parent_id, rel_type, child_stream)",
    """
CREATE TABLE IF NOT EXISTS event_threads (
    room_id TEXT NOT NULL,
    root_id TEXT NOT NULL,
    latest_stream INTEGER NOT NULL,
    PRIMARY KEY (room_id, root_id)
) WITHOUT ROWID
""",
    "CREATE INDEX IF NOT EXISTS event_threads_latest ON event_threads(room_id, latest_stream)",
    "CREATE TABLE IF NOT EXISTS relations_backfill (id INTEGER PRIMARY KEY CHECK (id = 0), below INTEGER)",
    f"""
CREATE TRIGGER IF NOT EXISTS event_relations_insert AFTER INSERT ON events WHEN {_INDEXED.format(e="NEW")}
BEGIN
    INSERT OR REPLACE INTO event_relations {_SELECT_RELATION.format(e="NEW")};
    INSERT INTO event_threads SELECT {ROOM_OF.format(e="NEW")}, json_extract(NEW.index_fields, {_PARENT}), NEW.stream
        WHERE json_extract(NEW.index_fields, {_REL}) = 'm.thread'
        ON CONFLICT DO UPDATE SET latest_stream = MAX(latest_stream, excluded.latest_stream);
END
""",
    """
CREATE TRIGGER IF NOT EXISTS event_relations_redact AFTER UPDATE OF redacted_by ON events
WHEN NEW.redacted_by IS NOT NULL
BEGIN
    DELETE FROM event_relations WHERE child_id = NEW.event_id;
END
""",
    """
CREATE TRIGGER IF NOT EXISTS event_relations_delete AFTER DELETE ON events
BEGIN
    DELETE FROM event_relations WHERE child_id = OLD.event_id;
END
""",
]


class RelationTables:
    """The relation index on the gateway's database (a ``RelationStore``). Reads see committed events only."""

    #: bundles(): the reader's ignored users, one JSON array parameter (``store/postgres/relations.py``: its own)
    not_ignored = " AND sender NOT IN (SELECT value FROM json_each(?))"
    #: children(): the walk's node bound sits in the recursive query (False: on its result, where PostgreSQL
    #: wants it; it evaluates the recursion only as far as that LIMIT reads, so the walk stops there too)
    walk_bound_inside = True

    def __init__(self, db: Database, *, budget_s: float | None = None) -> None:
        """Create the tables and triggers if missing; index older events for up to ``budget_s`` (default
        :data:`BACKFILL_BUDGET_S`), the rest in background write jobs."""
        self.db = db
        #: the index made and the events stored before it indexed (``older.pending()``: tests wait on it)
        self.older = OlderEvents(db, marker="event_relations", schema=RELATIONS_SCHEMA,
                                 progress_table="relations_backfill", index_range=_index_range,
                                 batch=BACKFILL_BATCH, label="relations",
                                 budget_s=BACKFILL_BUDGET_S if budget_s is None else budget_s)  # fmt: skip

    # --------------------------------------------------------------- reads

    def relation_of(self, event_id: str) -> tuple[str, str] | None:
        """(parent event ID, rel_type) of an indexed child, or None."""
        row = self.db.query_one("SELECT parent_id, rel_type FROM event_relations WHERE child_id = ?", (event_id,))
        return (str(row[0]), str(row[1])) if row else None

    def children(
        self, room_id: str, parent_id: str, *, rel_type: str | None, event_type: str | None, after: int, upto: int,
        backwards: bool, limit: int, depth: int = 1,
    ) -> list[str]:  # fmt: skip
        """IDs of events of ``room_id`` relating to ``parent_id`` with after < stream <= upto, in stream order
        (newest first when ``backwards``), at most ``limit``.

        ``depth`` > 1 also follows relations of relations that far (at most :data:`MAX_TREE_NODES` events are
        walked); ``rel_type`` and ``event_type`` then apply at every step, so an event reached only through one
        that does not match is left out, as the spec says.
        """
        match = ""
        args: list[Any] = []
        if rel_type is not None:
            match += " AND r.rel_type = ?"
            args.append(rel_type)
        if event_type is not None:
            match += " AND r.child_type = ?"
            args.append(event_type)
        order = "DESC" if backwards else "ASC"
        if depth <= 1:  # one range of event_relations_parent when rel_type is given
            rows = self.db.query(
                f"SELECT r.child_id FROM event_relations r WHERE r.parent_id = ? AND r.room_id = ?{match}"
                f" AND r.child_stream > ? AND r.child_stream <= ? ORDER BY r.child_stream {order} LIMIT ?",
                (parent_id, room_id, *args, after, upto, limit),
            )  # fmt: skip
            return [str(r[0]) for r in rows]
        inside, outside = (" LIMIT ?", "") if self.walk_bound_inside else ("", " LIMIT ?")
        rows = self.db.query(
            "WITH RECURSIVE tree(child_id, level) AS ("
            f" SELECT r.child_id, 1 FROM event_relations r WHERE r.parent_id = ? AND r.room_id = ?{match}"
            " UNION SELECT r.child_id, tree.level + 1 FROM event_relations r JOIN tree ON r.parent_id = tree.child_id"
            f" WHERE tree.level < ? AND r.room_id = ?{match}{inside})"
            f" SELECT r.child_id FROM event_relations r WHERE r.child_id IN (SELECT child_id FROM tree{outside})"
            f" AND r.child_stream > ? AND r.child_stream <= ? ORDER BY r.child_stream {order} LIMIT ?",
            (parent_id, room_id, *args, depth, room_id, *args, MAX_TREE_NODES, after, upto, limit),
        )
        return [str(r[0]) for r in rows]

    def bundles(self, parent_ids: list[str], user_id: str, upto: int,
                ignored: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:  # fmt: skip
        """What ``m.relations`` needs of these events, in one query: children at positions up to ``upto``, not
        sent by one of ``ignored`` (the reader's ignored users, passed as one JSON parameter).

        Per parent that has any: ``m.thread`` → ``{"count", "latest", "participated"}`` (the latest reply's ID,
        whether ``user_id`` replied); ``m.reference`` → ``{"ids"}`` (the oldest :data:`MAX_BUNDLED_REFERENCES`);
        ``m.replace`` → ``{"latest_by": {sender: edit ID}}``, each sender's newest edit by timestamp then ID
        (the caller keeps the original sender's).
        """
        found: dict[str, dict[str, Any]] = {}
        unwanted = self.not_ignored if ignored else ""
        extra: tuple[str, ...] = (json.dumps(sorted(ignored)),) if ignored else ()
        for start in range(0, len(parent_ids), 500):  # well under SQLite's bound-parameter limit
            part = parent_ids[start:start + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.query(
                "SELECT parent_id, rel_type, child_id, sender, n, mine FROM (SELECT parent_id, rel_type, child_id,"
                " sender, ROW_NUMBER() OVER (PARTITION BY parent_id, rel_type,"
                " CASE WHEN rel_type = 'm.replace' THEN sender END ORDER BY CASE rel_type"
                " WHEN 'm.thread' THEN -child_stream WHEN 'm.reference' THEN child_stream ELSE -child_ts END,"
                " child_id DESC) AS rank, COUNT(*) OVER (PARTITION BY parent_id, rel_type) AS n,"
                " MAX(CASE WHEN sender = ? THEN 1 ELSE 0 END) OVER (PARTITION BY parent_id, rel_type) AS mine"
                " FROM event_relations"
                f" WHERE parent_id IN ({marks}) AND rel_type IN ('m.thread', 'm.reference', 'm.replace')"
                f" AND child_stream <= ?{unwanted}) AS ranked"
                " WHERE rank <= CASE rel_type WHEN 'm.reference' THEN ? ELSE 1 END",
                (user_id, *part, upto, *extra, MAX_BUNDLED_REFERENCES),
            )  # fmt: skip
            for parent, rel_type, child, sender, count, mine in rows:
                entry = found.setdefault(str(parent), {}).setdefault(str(rel_type), {})
                if rel_type == "m.thread":
                    entry.update(count=int(count), latest=str(child), participated=bool(mine))
                elif rel_type == "m.reference":
                    entry.setdefault("ids", []).append(str(child))
                else:
                    entry.setdefault("latest_by", {})[str(sender)] = str(child)
        return found

    def threads(self, room_id: str, *, below: int | None, limit: int, participant: str | None) -> list[tuple[str, int]]:
        """(root ID, latest reply's position) of the room's threads, latest activity first, positions below
        ``below`` (all when None); ``participant``: only threads that user started or replied to."""
        where = ""
        args: list[Any] = [room_id]
        if below is not None:
            where += " AND t.latest_stream < ?"
            args.append(below)
        if participant is not None:
            where += (f" AND (EXISTS (SELECT 1 FROM events e WHERE {same_event('e.event_id', 't.root_id')} AND e.sender = ?)"
                      " OR EXISTS"
                      " (SELECT 1 FROM event_relations r WHERE r.parent_id = t.root_id AND r.rel_type = 'm.thread'"
                      " AND r.sender = ?))")  # fmt: skip
            args += [participant, participant]
        rows = self.db.query(
            f"SELECT t.root_id, t.latest_stream FROM event_threads t WHERE t.room_id = ?{where}"
            " ORDER BY t.latest_stream DESC LIMIT ?", (*args, limit))  # fmt: skip
        return [(str(r[0]), int(r[1])) for r in rows]


def _index_range(c: sqlite3.Connection, lower: int, below: int) -> None:
    """Index the relations of the events at positions in [lower, below) (stored before the index existed)."""
    c.execute(f"INSERT OR IGNORE INTO event_relations {_SELECT_RELATION.format(e='e')} FROM events e"
              f" WHERE e.stream >= ? AND e.stream < ? AND {_INDEXED.format(e='e')}", (lower, below))  # fmt: skip
    c.execute(f"INSERT INTO event_threads SELECT {ROOM_OF.format(e='e')}, json_extract(e.index_fields, {_PARENT}), MAX(e.stream) FROM events e"
              f" WHERE e.stream >= ? AND e.stream < ? AND {_INDEXED.format(e='e')} AND json_extract(e.index_fields, {_REL})"
              " = 'm.thread' GROUP BY e.room_nid, 2 ON CONFLICT DO UPDATE SET latest_stream ="
              " MAX(latest_stream, excluded.latest_stream)", (lower, below))  # fmt: skip
