"""``lowband_pdu_json(pdu)``: an ``events.index_fields`` (TEXT holding JSON: what the indexes read of an event,
``store/sqlite/pdu_codec.py``) as ``jsonb``, for the index triggers; NULL for NULL.

SQLite's JSON functions read any JSON text; ``jsonb`` refuses one thing they take, the escape of U+0000
(``\\u0000``: PostgreSQL text cannot hold that character). An index trigger must never make storing an
event fail, so a PDU holding that escape has it dropped (only where it is an escape: after an even number of
backslashes) before the cast, and one that still does not parse reads as NULL (indexed as having no
relation and no text). Every other PDU is cast as is: the common path has no exception block (PL/pgSQL runs
those in a subtransaction).
"""

from __future__ import annotations

#: created (or replaced) by each index module that reads PDUs: :mod:`.relations` and :mod:`.search`
PDU_JSON_FUNCTION = r"""
CREATE OR REPLACE FUNCTION lowband_pdu_json(pdu text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF strpos(pdu, '\u0000') = 0 THEN
        RETURN pdu::jsonb;
    END IF;
    BEGIN
        RETURN regexp_replace(pdu, '(?<![\\])((?:\\\\)*)\\u0000', '\1', 'g')::jsonb;
    EXCEPTION WHEN others THEN
        RETURN NULL;
    END;
END
$$
"""
