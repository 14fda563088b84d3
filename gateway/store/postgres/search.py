"""Full-text search of room events on PostgreSQL: the index behind ``POST /search``, as :mod:`..sqlite.search`.

What SQLite's FTS5 table does, kept in plain PostgreSQL (no extension, nothing a superuser must create):

* ``event_search``: one row per searchable event, keyed by the event's stream
  position, holding a ``tsvector`` of its text (GIN index): ``content.body``
  of an ``m.room.message``, ``content.name`` of an ``m.room.name`` and
  ``content.topic`` of an ``m.room.topic`` (state key ``''``). The same
  events as on SQLite: timeline events only (not rejected, outliers or
  soft-failed), never a redacted one, never a device's reading (content with
  ``org.lowband.senml``);
* ``search_backfill``: how far the indexing of events stored before the index
  existed has come (:class:`~lowband.gateway.store.sqlite.event_index.OlderEvents`).

Triggers on ``events`` (one PL/pgSQL function) keep it in the event's own transaction: an insert indexes, an
update of a column that decides indexing (a redaction, mostly) takes the row out and puts the new text in, a
delete takes it out.

Words, as FTS5's ``unicode61 remove_diacritics 2`` makes them: ``lowband_search_fold`` decomposes the text
(NFD), drops the combining marks (U+0300–036F, 1AB0–1AFF, 1DC0–1DFF, 20D0–20FF, FE20–FE2F) and recomposes
(NFC), then turns every run of characters that are not letters or digits into a space; the ``simple``
configuration lower-cases what is left (Unicode case, per the database's ``LC_CTYPE``) and keeps every word (no
stop words, no stemming). Differences left: letters that do not decompose (``ø``, ``ł``, ``æ``, ``ß``) are kept
as they are, as FTS5 keeps most of them; ``unaccent`` is not used, so that a role without ``CREATE`` on the
database works and dropping one store's schema cannot drop an extension another store uses. The database must
be UTF8 (``normalize``).

Queries never parse user text as tsquery syntax: each query word is folded the same way and given to
``phraseto_tsquery`` (which reads only words: ``&``, ``|``, ``!``, ``:*``, quotes and parentheses are
separators), the words joined with ``&&``: every word must be in the text, a word that folds to several
(``foo-bar``) as adjacent words, as FTS5 reads a quoted string. A word with no letter or digit adds nothing
(a query of only such words matches nothing). Rank is ``ts_rank`` (higher is better).

Query cost: the same bounds as on SQLite (positions below ``below``, newest first, at most ``limit`` rows
joined to ``events``), but the planner either reads the GIN index (cost grows with the number of events holding
the rarest word, then a top-``limit`` sort) or walks ``event_search`` backwards from ``below`` testing each row
(cost grows with how far back ``limit`` matches lie): unlike FTS5's doclists, neither is bounded by ``limit``
alone.
"""

from __future__ import annotations

from typing import Any

from lowband.gateway.store.interfaces import SearchHit
from lowband.gateway.store.postgres.pdu_json import PDU_JSON_FUNCTION
from lowband.gateway.store.sqlite.event_index import OlderEvents
from lowband.gateway.store.sqlite.schema import ROOM_OF
from lowband.gateway.store.sqlite.search import BACKFILL_BATCH, BACKFILL_BUDGET_S, SearchTables

#: event types whose text is indexed
_TYPES = "('m.room.message', 'm.room.name', 'm.room.topic')"
#: an events row ``{e}`` is a candidate (the text, which needs the PDU parsed, is tested after)
_CANDIDATE = (
    "{e}.type IN " + _TYPES + " AND {e}.rejected IS NULL AND {e}.outlier = 0 AND {e}.soft_failed = 0"
    " AND {e}.redacted_by IS NULL"
)

SEARCH_SCHEMA = [
    PDU_JSON_FUNCTION,
    "CREATE TABLE IF NOT EXISTS event_search (stream BIGINT PRIMARY KEY, value tsvector NOT NULL)",
    "CREATE INDEX IF NOT EXISTS event_search_value ON event_search USING gin (value)",
    "CREATE TABLE IF NOT EXISTS search_backfill (id INTEGER PRIMARY KEY CHECK (id = 0), below INTEGER)",
    # the text indexed for an event (NULL when none): what search.py's _VALUE gives on SQLite
    """
CREATE OR REPLACE FUNCTION lowband_search_value(type text, state_key text, pdu jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN pdu->'content'->'org.lowband.senml' IS NOT NULL THEN NULL
    WHEN type = 'm.room.message' AND jsonb_typeof(pdu->'content'->'body') = 'string'
    THEN pdu->'content'->>'body'
    WHEN type = 'm.room.name' AND state_key = '' AND jsonb_typeof(pdu->'content'->'name') = 'string'
    THEN pdu->'content'->>'name'
    WHEN type = 'm.room.topic' AND state_key = '' AND jsonb_typeof(pdu->'content'->'topic') = 'string'
    THEN pdu->'content'->>'topic' END
$$
""",
    # text → the words the index and the queries compare (see the module docstring)
    r"""
CREATE OR REPLACE FUNCTION lowband_search_fold(t text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT regexp_replace(normalize(regexp_replace(normalize(t, NFD),
    '[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]', '', 'g'), NFC),
    '[^[:alnum:]]+', ' ', 'g')
$$
""",
    f"""
CREATE OR REPLACE FUNCTION lowband_search_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v text;
BEGIN
    IF TG_OP = 'UPDATE' AND (NEW.stream, NEW.index_fields, NEW.type, NEW.state_key, NEW.rejected, NEW.outlier,
            NEW.soft_failed, NEW.redacted_by) IS NOT DISTINCT FROM (OLD.stream, OLD.index_fields, OLD.type, OLD.state_key,
            OLD.rejected, OLD.outlier, OLD.soft_failed, OLD.redacted_by) THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM event_search WHERE stream = OLD.stream;
    END IF;
    IF TG_OP <> 'DELETE' AND {_CANDIDATE.format(e="NEW")} THEN
        v := lowband_search_value(NEW.type, NEW.state_key, lowband_pdu_json(NEW.index_fields));
        IF v IS NOT NULL THEN
            INSERT INTO event_search (stream, value) VALUES (NEW.stream,
                to_tsvector('simple', lowband_search_fold(v)))
                ON CONFLICT (stream) DO UPDATE SET value = excluded.value;
        END IF;
    END IF;
    RETURN NULL;
END
$$
""",
    (
        "CREATE OR REPLACE TRIGGER event_search_insert AFTER INSERT ON events FOR EACH ROW"
        " WHEN (NEW.type IN " + _TYPES + ") EXECUTE FUNCTION lowband_search_row()"
    ),
    (
        "CREATE OR REPLACE TRIGGER event_search_update"
        " AFTER UPDATE OF stream, index_fields, type, state_key, rejected, outlier, soft_failed, redacted_by ON events"
        " FOR EACH ROW EXECUTE FUNCTION lowband_search_row()"
    ),
    (
        "CREATE OR REPLACE TRIGGER event_search_delete AFTER DELETE ON events FOR EACH ROW"
        " EXECUTE FUNCTION lowband_search_row()"
    ),
]


def tsquery_sql(count: int) -> str:
    """SQL for a tsquery holding each of ``count`` words (``?`` parameters, plain text): all must match."""
    return " && ".join(["phraseto_tsquery('simple', lowband_search_fold(?))"] * count)


class PgSearchTables(SearchTables):
    """The full-text index on a PostgreSQL store (a ``SearchStore``). Reads see committed events only."""

    #: directory search: ILIKE folds case as SQLite's LIKE does (wider: every letter with a case, not ASCII only)
    like = "ILIKE"
    member_field = ("CASE WHEN jsonb_typeof(lowband_pdu_json(e.index_fields)->'content'->'{key}') = 'string'"
                    " THEN lowband_pdu_json(e.index_fields)->'content'->>'{key}' END")  # fmt: skip

    def __init__(self, db: Any, *, budget_s: float | None = None) -> None:
        """Create the table, functions and triggers if missing (triggers and functions replaced); index older
        events for up to ``budget_s`` (default :data:`BACKFILL_BUDGET_S`), the rest in background write jobs."""
        self.db = db
        self.older = OlderEvents(db, marker="event_search", schema=SEARCH_SCHEMA, progress_table="search_backfill",
                                 index_range=_index_range, batch=BACKFILL_BATCH, label="search",
                                 budget_s=BACKFILL_BUDGET_S if budget_s is None else budget_s)  # fmt: skip

    def matches(self, words: list[str], *, below: int, limit: int) -> list[SearchHit]:
        """As :meth:`SearchTables.matches`; rank is ``ts_rank`` (higher for a better match)."""
        words = [w.replace("\0", "") for w in words]
        if not words:
            return []
        rows = self.db.query(
            f"SELECT m.stream, e.event_id, {ROOM_OF.format(e='e')}, e.type, e.sender, e.state_before, m.score,"
            " e.origin_server_ts"
            " FROM (SELECT s.stream, ts_rank(s.value, q.query) AS score FROM event_search s,"
            f" (SELECT {tsquery_sql(len(words))} AS query) q WHERE s.value @@ q.query AND s.stream < ?"
            " ORDER BY s.stream DESC LIMIT ?) m JOIN events e ON e.stream = m.stream ORDER BY m.stream DESC",
            (*words, below, limit),
        )  # fmt: skip
        return [SearchHit(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5], float(r[6]), int(r[7]))
                for r in rows]  # fmt: skip

    def directory_users(self, searcher: str, public_rooms: list[str], *, everyone: bool, user_id_like: str,
                        name_like: tuple[str, str], limit: int) -> list[tuple[str, str | None, str | None]]:  # fmt: skip
        """As :meth:`SearchTables.directory_users`, with ILIKE; a NUL in a pattern (PostgreSQL text cannot hold
        one, SQLite's can) is dropped rather than failing the query."""
        return super().directory_users(
            searcher, public_rooms, everyone=everyone, user_id_like=user_id_like.replace("\0", ""),
            name_like=(name_like[0].replace("\0", ""), name_like[1].replace("\0", "")), limit=limit,
        )  # fmt: skip


def _index_range(c: Any, lower: int, below: int) -> None:
    """Index the events at positions in [lower, below) (stored before the index existed)."""
    c.execute("INSERT INTO event_search (stream, value) SELECT t.stream, to_tsvector('simple', lowband_search_fold(t.v))"
              " FROM (SELECT e.stream, lowband_search_value(e.type, e.state_key, lowband_pdu_json(e.index_fields)) AS v"
              f" FROM events e WHERE e.stream >= ? AND e.stream < ? AND {_CANDIDATE.format(e='e')}) t"
              " WHERE t.v IS NOT NULL ON CONFLICT (stream) DO NOTHING", (lower, below))  # fmt: skip
