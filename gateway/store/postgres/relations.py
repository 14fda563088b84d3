"""Event relations (``m.relates_to``) on PostgreSQL: the index behind /relations, /threads and ``m.relations``.

The same tables as :mod:`..sqlite.relations` (``event_relations``, ``event_threads``, ``relations_backfill``,
created by that module's portable DDL) and the same rules, with the triggers written in PL/pgSQL:

* ``event_relations_insert`` (after insert on ``events``): a timeline event (not rejected, outlier,
  soft-failed or redacted) whose ``content["m.relates_to"]`` has a string ``rel_type`` and a string
  ``event_id`` other than its own is indexed (a row already there for it is replaced, as SQLite's
  ``INSERT OR REPLACE``); an ``m.thread`` one moves its root's ``latest_stream`` up;
* ``event_relations_redact`` (after an update setting ``redacted_by``) and ``event_relations_delete``
  (after delete): the child's row goes; ``event_threads`` keeps its position, as on SQLite.

The trigger reads ``index_fields`` (TEXT holding the JSON the indexes need, as on SQLite), as ``jsonb`` (``lowband_pdu_json``, :mod:`.pdu_json`); SQLite's
``json_type(...) = 'text'`` is ``jsonb_typeof(...) = 'string'`` here. Events stored before the index existed are
indexed by :class:`~lowband.gateway.store.sqlite.event_index.OlderEvents` through this module's
:func:`_index_range`, as on SQLite.

Queries are the SQLite module's (portable) but for two PostgreSQL lacks: the ignored senders of
:meth:`bundles` come as a JSON array read with ``jsonb_array_elements_text``, and the recursive walk of
:meth:`children` bounds its nodes outside the recursive query (PostgreSQL refuses LIMIT inside one; it
evaluates a recursive query only as far as its reader fetches, so the walk still stops at
:data:`MAX_TREE_NODES`).
"""

from __future__ import annotations

from typing import Any

from lowband.gateway.store.postgres.pdu_json import PDU_JSON_FUNCTION
from lowband.gateway.store.sqlite.event_index import OlderEvents
from lowband.gateway.store.sqlite.relations import (
    BACKFILL_BATCH,
    BACKFILL_BUDGET_S,
    RELATIONS_SCHEMA,
    RelationTables,
)
from lowband.gateway.store.sqlite.schema import ROOM_OF

#: an events row ``{e}`` is shown in a timeline and not redacted
_TIMELINE = "{e}.rejected IS NULL AND {e}.outlier = 0 AND {e}.soft_failed = 0 AND {e}.redacted_by IS NULL"
#: ``{r}`` (the ``m.relates_to`` object, jsonb) is a well-formed relation of events row ``{e}``
_WELL_FORMED = (
    "jsonb_typeof({r}->'rel_type') = 'string' AND jsonb_typeof({r}->'event_id') = 'string'"
    " AND {r}->>'event_id' <> {e}.event_id"
)
#: event_relations' columns for events row ``{e}`` with relation ``{r}``
_ROW = (
    "{e}.event_id, " + ROOM_OF + ", {r}->>'event_id', {r}->>'rel_type', {e}.type, {e}.sender, {e}.stream,"
    " {e}.origin_server_ts, CASE WHEN jsonb_typeof({r}->'key') = 'string' THEN {r}->>'key' END"
)

RELATIONS_PG_SCHEMA = [s for s in RELATIONS_SCHEMA if "CREATE TRIGGER" not in s] + [
    PDU_JSON_FUNCTION,
    f"""
CREATE OR REPLACE FUNCTION lowband_relations_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
BEGIN
    -- most events relate to nothing: skip parsing their JSON (the key is in the text as is or through a \\u escape)
    IF NOT ({_TIMELINE.format(e="NEW")})
            OR (strpos(COALESCE(NEW.index_fields, ''), 'm.relates_to') = 0 AND strpos(COALESCE(NEW.index_fields, ''), '\\u') = 0) THEN
        RETURN NULL;
    END IF;
    r := lowband_pdu_json(NEW.index_fields)->'content'->'m.relates_to';
    IF {_WELL_FORMED.format(e="NEW", r="r")} THEN
        INSERT INTO event_relations VALUES ({_ROW.format(e="NEW", r="r")})
            ON CONFLICT (child_id) DO UPDATE SET room_id = excluded.room_id, parent_id = excluded.parent_id,
            rel_type = excluded.rel_type, child_type = excluded.child_type, sender = excluded.sender,
            child_stream = excluded.child_stream, child_ts = excluded.child_ts,
            aggregation_key = excluded.aggregation_key;
        IF r->>'rel_type' = 'm.thread' THEN
            INSERT INTO event_threads VALUES ({ROOM_OF.format(e="NEW")}, r->>'event_id', NEW.stream)
                ON CONFLICT (room_id, root_id)
                DO UPDATE SET latest_stream = GREATEST(event_threads.latest_stream, excluded.latest_stream);
        END IF;
    END IF;
    RETURN NULL;
END
$$
""",
    """
CREATE OR REPLACE FUNCTION lowband_relations_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_relations WHERE child_id = OLD.event_id;
    RETURN NULL;
END
$$
""",
    (
        # the function's first test again, as the trigger's condition: most events never call PL/pgSQL
        "CREATE OR REPLACE TRIGGER event_relations_insert AFTER INSERT ON events FOR EACH ROW"
        r" WHEN (strpos(COALESCE(NEW.index_fields, ''), 'm.relates_to') > 0 OR strpos(COALESCE(NEW.index_fields, ''), '\u') > 0)"
        " EXECUTE FUNCTION lowband_relations_insert()"
    ),
    (
        "CREATE OR REPLACE TRIGGER event_relations_redact AFTER UPDATE OF redacted_by ON events FOR EACH ROW"
        " WHEN (NEW.redacted_by IS NOT NULL) EXECUTE FUNCTION lowband_relations_forget()"
    ),
    (
        "CREATE OR REPLACE TRIGGER event_relations_delete AFTER DELETE ON events FOR EACH ROW"
        " EXECUTE FUNCTION lowband_relations_forget()"
    ),
]


class PgRelationTables(RelationTables):
    """The relation index on a PostgreSQL store (a ``RelationStore``). Reads see committed events only."""

    #: bundles(): the reader's ignored users, one JSON array parameter
    not_ignored = " AND sender NOT IN (SELECT jsonb_array_elements_text(CAST(? AS jsonb)))"
    #: children(): PostgreSQL refuses LIMIT in a recursive query's term
    walk_bound_inside = False

    def __init__(self, db: Any, *, budget_s: float | None = None) -> None:
        """Create the tables if missing and the trigger functions and triggers (replaced); index older events
        for up to ``budget_s`` (default :data:`BACKFILL_BUDGET_S`), the rest in background write jobs."""
        self.db = db
        self.older = OlderEvents(db, marker="event_relations", schema=RELATIONS_PG_SCHEMA,
                                 progress_table="relations_backfill", index_range=_index_range,
                                 batch=BACKFILL_BATCH, label="relations",
                                 budget_s=BACKFILL_BUDGET_S if budget_s is None else budget_s)  # fmt: skip


def _index_range(c: Any, lower: int, below: int) -> None:
    """Index the relations of the events at positions in [lower, below) (stored before the index existed)."""
    source = (" FROM events e CROSS JOIN LATERAL (SELECT lowband_pdu_json(e.index_fields)->'content'->'m.relates_to' AS r) j"
              f" WHERE e.stream >= ? AND e.stream < ? AND {_TIMELINE.format(e='e')}"
              f" AND {_WELL_FORMED.format(e='e', r='j.r')}")  # fmt: skip
    c.execute(f"INSERT INTO event_relations SELECT {_ROW.format(e='e', r='j.r')}{source}"
              " ON CONFLICT (child_id) DO NOTHING", (lower, below))  # fmt: skip
    c.execute(f"INSERT INTO event_threads SELECT {ROOM_OF.format(e='e')}, j.r->>'event_id', MAX(e.stream){source}"
              " AND j.r->>'rel_type' = 'm.thread' GROUP BY e.room_nid, 2 ON CONFLICT (room_id, root_id) DO UPDATE"
              " SET latest_stream = GREATEST(event_threads.latest_stream, excluded.latest_stream)",
              (lower, below))  # fmt: skip
