"""Full-text search of room events in the SQLite file (SQLite FTS5): the index behind ``POST /search``.

* ``event_search``: a contentless FTS5 table (``content=''``: only the index
  is stored, not a second copy of the text) whose rowid is the event's stream
  position; one row per searchable event: ``content.body`` of an
  ``m.room.message``, ``content.name`` of an ``m.room.name`` and
  ``content.topic`` of an ``m.room.topic``. Tokens are Unicode words, case and
  diacritics folded (``unicode61 remove_diacritics 2``);
* ``search_backfill``: how far the indexing of events stored before the index
  existed has come (one row; ``below`` NULL when done).

As for relations (:mod:`.relations`), triggers on ``events`` keep the index,
so every path that stores an event indexes it in the same transaction. Only
timeline events are indexed (not rejected, outliers or soft-failed), never a
redacted one (a redaction takes it out), and not a device's reading (content
with ``org.lowband.senml``: its body is a generated summary, and a reading is
the one event whose bytes on disk are counted). Encrypted events
(``m.room.encrypted``) hold no text the server can read: nothing to index.

A contentless table cannot give its text back, so removing a row repeats the
text it was indexed with: the same expression over the old row (a trigger on
every update of the columns that decide it takes the old text out and puts
the new one in).

The SQL reads an event's ``index_fields`` (``{"content": {...}}`` with the
content keys the indexes need, :func:`lowband.gateway.store.sqlite.pdu_codec.index_fields`),
not its ``pdu``, which is compressed.

Queries never pass user text to FTS5's query language: :func:`match_expression`
quotes each word as an FTS5 string, so ``"``, ``NEAR(``, ``*``, ``AND`` or
``^`` are plain text and cannot make a query fail or widen it (the homeserver
also keeps only letters and digits: :func:`lowband.gateway.homeserver.search.query_words`).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from lowband.gateway.store.interfaces import SearchHit
from lowband.gateway.store.sqlite.database import Database
from lowband.gateway.store.sqlite.event_index import OlderEvents
from lowband.gateway.store.sqlite.schema import ROOM_OF, same_event

#: stream positions indexed per backfill write
BACKFILL_BATCH = 20_000
#: how long opening the store may spend indexing older events before the rest goes to the background
BACKFILL_BUDGET_S = 2.0
#: the text indexed for an events row ``e`` (NULL when it has none)
_VALUE = (
    "CASE WHEN json_type({e}.index_fields, '$.content.\"org.lowband.senml\"') IS NOT NULL THEN NULL"
    " WHEN {e}.type = 'm.room.message' AND json_type({e}.index_fields, '$.content.body') = 'text'"
    " THEN json_extract({e}.index_fields, '$.content.body')"
    " WHEN {e}.type = 'm.room.name' AND {e}.state_key = '' AND json_type({e}.index_fields, '$.content.name') = 'text'"
    " THEN json_extract({e}.index_fields, '$.content.name')"
    " WHEN {e}.type = 'm.room.topic' AND {e}.state_key = '' AND json_type({e}.index_fields, '$.content.topic') = 'text'"
    " THEN json_extract({e}.index_fields, '$.content.topic') END"
)
#: when an events row ``e`` is in the index
_INDEXED = (
    "{e}.type IN ('m.room.message', 'm.room.name', 'm.room.topic') AND {e}.rejected IS NULL AND {e}.outlier = 0"
    " AND {e}.soft_failed = 0 AND {e}.redacted_by IS NULL AND (" + _VALUE + ") IS NOT NULL"
)

SEARCH_SCHEMA = [
    ("CREATE VIRTUAL TABLE IF NOT EXISTS event_search USING fts5(value, content='',"
    " tokenize='unicode61 remove_diacritics 2')"),
    "CREATE TABLE IF NOT EXISTS search_backfill (id INTEGER PRIMARY KEY CHECK (id = 0), below INTEGER)",
    f"""
CREATE TRIGGER IF NOT EXISTS event_search_insert AFTER INSERT ON events WHEN {_INDEXED.format(e="NEW")}
BEGIN
    INSERT INTO event_search (rowid, value) VALUES (NEW.stream, {_VALUE.format(e="NEW")});
END
""",
    # Any change of what decides indexing (a redaction, mostly) takes the old text out and puts the new one in.
    f"""
CREATE TRIGGER IF NOT EXISTS event_search_update
AFTER UPDATE OF index_fields, type, state_key, rejected, outlier, soft_failed, redacted_by ON events
BEGIN
    INSERT INTO event_search (event_search, rowid, value)
        SELECT 'delete', OLD.stream, {_VALUE.format(e="OLD")} WHERE {_INDEXED.format(e="OLD")};
    INSERT INTO event_search (rowid, value) SELECT NEW.stream, {_VALUE.format(e="NEW")} WHERE {_INDEXED.format(e="NEW")};
END
""",
    f"""
CREATE TRIGGER IF NOT EXISTS event_search_delete AFTER DELETE ON events WHEN {_INDEXED.format(e="OLD")}
BEGIN
    INSERT INTO event_search (event_search, rowid, value) VALUES ('delete', OLD.stream, {_VALUE.format(e="OLD")});
END
""",
]


def match_expression(words: list[str]) -> str:
    """An FTS5 query matching text holding every one of ``words`` (each a quoted string: no FTS5 syntax)."""
    # FTS5 reads the query as a C string: a NUL would end it inside a quoted word ("unterminated string")
    return " ".join('"' + word.replace("\0", "").replace('"', '""') + '"' for word in words)


class SearchTables:
    """The full-text index on the gateway's database (a ``SearchStore``). Reads see committed events only."""

    #: directory search's pattern operator, and a joined member's profile field ``{key}`` of events row ``e``
    #: (the PostgreSQL store has its own: ``store/postgres/search.py``)
    like = "LIKE"
    member_field = ("CASE WHEN json_type(e.index_fields, '$.content.{key}') = 'text'"
                    " THEN json_extract(e.index_fields, '$.content.{key}') END")  # fmt: skip

    def __init__(self, db: Database, *, budget_s: float | None = None) -> None:
        """Create the table and triggers if missing; index older events for up to ``budget_s`` (default
        :data:`BACKFILL_BUDGET_S`), the rest in background write jobs."""
        self.db = db
        #: the index made and the events stored before it indexed (``older.pending()``: tests wait on it)
        self.older = OlderEvents(db, marker="event_search", schema=SEARCH_SCHEMA, progress_table="search_backfill",
                                 index_range=_index_range, batch=BACKFILL_BATCH, label="search",
                                 budget_s=BACKFILL_BUDGET_S if budget_s is None else budget_s)  # fmt: skip

    def matches(self, words: list[str], *, below: int, limit: int) -> list[SearchHit]:
        """Indexed events holding every one of ``words`` at positions below ``below``, newest first, at most
        ``limit``, rank higher for a better match (FTS5's bm25, negated). One query; its cost grows with ``limit``, not with the size of the index."""
        if not words:
            return []
        rows = self.db.query(
            f"SELECT m.stream, e.event_id, {ROOM_OF.format(e='e')}, e.type, e.sender, e.state_before, m.score,"
            " e.origin_server_ts"
            " FROM (SELECT rowid AS stream,"
            " -bm25(event_search) AS score FROM event_search WHERE event_search MATCH ? AND rowid < ?"
            " ORDER BY rowid DESC LIMIT ?) m JOIN events e ON e.stream = m.stream ORDER BY m.stream DESC",
            (match_expression(words), below, limit),
        )  # fmt: skip
        return [SearchHit(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5], float(r[6]), int(r[7]))
                for r in rows]


    def directory_users(self, searcher: str, public_rooms: list[str], *, everyone: bool, user_id_like: str,
                        name_like: tuple[str, str], limit: int) -> list[tuple[str, str | None, str | None]]:  # fmt: skip
        """(user ID, display name, avatar URL) of users ``searcher`` may find, at most ``limit``: those joined to
        a room ``searcher`` is joined to, or to one of ``public_rooms``; with ``everyone``, every local user and
        every user joined to a room here. Deactivated accounts are left out.

        A user matches when the ID is LIKE ``user_id_like`` or the name LIKE either of ``name_like`` (patterns
        with ``\\`` as the escape; LIKE folds the case of ASCII letters only). A local user's profile is the
        account's; another server's user's comes from one of their join events here. Users sharing a room with
        ``searcher`` come first, then by name.
        """
        marks = ",".join("?" * len(public_rooms))
        sources = [
            ("SELECT other.user_id, 1 FROM memberships mine JOIN memberships other USING (room_id)"
            " WHERE mine.user_id = ? AND mine.membership = 'join' AND other.membership = 'join'"),
        ]
        args: list[Any] = [searcher]
        if public_rooms:
            sources.append(f"SELECT user_id, 0 FROM memberships WHERE membership = 'join' AND room_id IN ({marks})")
            args += public_rooms
        if everyone:
            sources.append("SELECT user_id, 0 FROM users")
            sources.append("SELECT user_id, 0 FROM memberships WHERE membership = 'join'")
        member = (f"(SELECT {self.member_field} FROM memberships m JOIN events e ON {same_event('e.event_id', 'm.event_id')}"
                  " WHERE m.user_id = p.user_id AND m.membership = 'join' LIMIT 1)")  # fmt: skip
        rows = self.db.query(
            f"WITH seen(user_id, shared) AS ({' UNION ALL '.join(sources)}),"
            " people AS (SELECT user_id, MAX(shared) AS shared FROM seen GROUP BY user_id),"
            " named AS (SELECT p.user_id, p.shared, COALESCE(u.deactivated, 0) AS gone,"
            f" CASE WHEN u.user_id IS NOT NULL THEN u.displayname ELSE {member.format(key='displayname')} END AS name,"
            f" CASE WHEN u.user_id IS NOT NULL THEN u.avatar_url ELSE {member.format(key='avatar_url')} END AS avatar"
            " FROM people p LEFT JOIN users u ON u.user_id = p.user_id)"
            f" SELECT user_id, name, avatar FROM named WHERE gone = 0 AND (user_id {self.like} ? ESCAPE '\\'"
            f" OR name {self.like} ? ESCAPE '\\' OR name {self.like} ? ESCAPE '\\')"
            " ORDER BY shared DESC, name IS NULL, lower(COALESCE(name, user_id)), user_id LIMIT ?",
            (*args, user_id_like, *name_like, limit),
        )  # fmt: skip
        return [(str(r[0]), r[1] if isinstance(r[1], str) else None, r[2] if isinstance(r[2], str) else None)
                for r in rows]  # fmt: skip


def _index_range(c: sqlite3.Connection, lower: int, below: int) -> None:
    """Index the events at positions in [lower, below) (stored before the index existed)."""
    c.execute(f"INSERT INTO event_search (rowid, value) SELECT e.stream, {_VALUE.format(e='e')} FROM events e"
              f" WHERE e.stream >= ? AND e.stream < ? AND {_INDEXED.format(e='e')}", (lower, below))  # fmt: skip
