"""The PostgreSQL forms of the event indexes (store/postgres/relations.py, store/postgres/search.py).

Events are written straight into ``events`` (as every path of the store does), so what is checked is the
triggers and the backfill, not the callers. Each test has a schema of its own, dropped at the end; skipped
when no PostgreSQL answers at 127.0.0.1:5432.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pg_schema import POSTGRES_URL, fresh_schema

from lowband.gateway.store.sqlite.schema import NEW_ROOM_NUMBER, ROOM_NID

ROOM = "!r:x"
BIG = 1 << 62


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema name, dropped (with everything in it) after the test."""
    yield from fresh_schema("pgidx")


def index_fields(type_: str, state_key: str | None, content: dict[str, Any]) -> str | None:
    from lowband.gateway.store.sqlite.pdu_codec import index_fields as fields_of

    return fields_of(type_, state_key, content)


def _open(schema: str) -> Any:
    from lowband.gateway.store.postgres.store import PostgresStore

    return PostgresStore(POSTGRES_URL, schema=schema)


def _insert(store: Any, stream: int, event_id: str, content: dict[str, Any], *, type_: str = "m.room.message",
            state_key: str | None = None, sender: str = "@a:x", pdu: str | None = None, **flags: Any) -> None:
    """An events row as the store writes one (``flags``: outlier, soft_failed, rejected)."""
    doc = {"type": type_, "room_id": ROOM, "sender": sender, "content": content, "origin_server_ts": stream}
    if state_key is not None:
        doc["state_key"] = state_key
    # index_fields as the store computes it; a raw ``pdu`` (hostile JSON text) is read by the indexes as it is
    fields = pdu if pdu is not None else index_fields(type_, state_key, content)
    row = (stream, event_id, ROOM, type_, state_key, sender, stream, (pdu or json.dumps(doc)).encode(), fields,
           flags.get("outlier", 0), flags.get("soft_failed", 0), flags.get("rejected"))  # fmt: skip

    def write(c: Any) -> None:
        c.execute(NEW_ROOM_NUMBER, (ROOM, ROOM))
        c.execute("INSERT INTO events (stream, event_id, room_nid, type, state_key, sender, depth, origin_server_ts,"
                  f" pdu, index_fields, outlier, soft_failed, rejected) VALUES (?, ?, {ROOM_NID}, ?, ?, ?, 1, ?, ?, ?,"
                  " ?, ?, ?)", row)  # fmt: skip

    store.db.write_sync(write)


def _found(store: Any, *words: str) -> list[str]:
    return [h.event_id for h in store.search.matches(list(words), below=BIG, limit=50)]


def _children(store: Any, parent: str, depth: int = 1) -> list[str]:
    return store.relations.children(ROOM, parent, rel_type=None, event_type=None, after=-1, upto=BIG,
                                    backwards=False, limit=50, depth=depth)  # fmt: skip


def _thread(root: str) -> dict[str, Any]:
    return {"body": "reply", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}


def test_triggers_index_what_sqlite_indexes(schema: str) -> None:
    store = _open(schema)
    try:
        _insert(store, 1, "$msg", {"body": "Crème BRÛLÉE at example.com, price_list"})
        _insert(store, 2, "$name", {"name": "Brûlée room"}, type_="m.room.name", state_key="")
        _insert(store, 3, "$topic", {"topic": "about brulee"}, type_="m.room.topic", state_key="")
        _insert(store, 4, "$keyed", {"name": "brulee"}, type_="m.room.name", state_key="other")  # not the room's
        _insert(store, 5, "$senml", {"body": "brulee reading", "org.lowband.senml": []})  # a device's reading
        _insert(store, 6, "$outlier", {"body": "brulee"}, outlier=1)
        _insert(store, 7, "$soft", {"body": "brulee"}, soft_failed=1)
        _insert(store, 8, "$rejected", {"body": "brulee"}, rejected="auth")
        _insert(store, 9, "$notext", {"body": 5})
        assert _found(store, "brulee") == ["$topic", "$name", "$msg"]  # newest first
        assert _found(store, "CREME", "brûlée") == ["$msg"]  # every word, case and diacritics folded
        assert _found(store, "example") == ["$msg"] and _found(store, "list") == ["$msg"]  # Unicode words
        assert _found(store, "creme", "absent") == []
        assert [h.event_id for h in store.search.matches(["brulee"], below=3, limit=50)] == ["$name", "$msg"]
        assert len(store.search.matches(["brulee"], below=BIG, limit=2)) == 2
        # rank: higher for a better match
        _insert(store, 10, "$weak", {"body": "gauge " + " ".join(f"filler{i}" for i in range(40))})
        _insert(store, 11, "$strong", {"body": "gauge gauge gauge"})
        ranks = {h.event_id: h.rank for h in store.search.matches(["gauge"], below=BIG, limit=10)}
        assert ranks["$strong"] > ranks["$weak"] > 0

        # relations: well-formed timeline children only
        _insert(store, 20, "$root", {"body": "root"})
        _insert(store, 21, "$r1", _thread("$root"), sender="@b:x")
        _insert(store, 22, "$r2", _thread("$root"))
        _insert(store, 23, "$edit", {"m.relates_to": {"rel_type": "m.replace", "event_id": "$root"}})
        _insert(store, 24, "$ref", {"m.relates_to": {"rel_type": "m.reference", "event_id": "$r1"}})
        _insert(store, 25, "$ann", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$root", "key": "👍"}})
        _insert(store, 26, "$bad", {"m.relates_to": {"rel_type": 5, "event_id": "$root"}})
        _insert(store, 27, "$self", {"m.relates_to": {"rel_type": "x", "event_id": "$self"}})
        _insert(store, 28, "$out", _thread("$root"), outlier=1)
        assert _children(store, "$root") == ["$r1", "$r2", "$edit", "$ann"]
        assert _children(store, "$root", depth=2) == ["$r1", "$r2", "$edit", "$ref", "$ann"]
        assert store.relations.relation_of("$ann") == ("$root", "m.annotation")
        assert store.db.query_one("SELECT aggregation_key FROM event_relations WHERE child_id = '$ann'") == ("👍",)
        assert store.relations.threads(ROOM, below=None, limit=5, participant=None) == [("$root", 22)]
        assert store.relations.threads(ROOM, below=None, limit=5, participant="@b:x") == [("$root", 22)]
        assert store.relations.threads(ROOM, below=None, limit=5, participant="@c:x") == []
        bundle = store.relations.bundles(["$root", "$r1"], "@b:x", BIG)
        assert bundle["$root"]["m.thread"] == {"count": 2, "latest": "$r2", "participated": True}
        assert bundle["$root"]["m.replace"] == {"latest_by": {"@a:x": "$edit"}}
        assert bundle["$r1"]["m.reference"] == {"ids": ["$ref"]}
        ignoring = store.relations.bundles(["$root"], "@c:x", BIG, frozenset({"@a:x"}))
        assert ignoring["$root"] == {"m.thread": {"count": 1, "latest": "$r1", "participated": False}}
    finally:
        store.close()


def test_redaction_update_and_delete_take_events_out(schema: str) -> None:
    store = _open(schema)
    try:
        _insert(store, 1, "$root", {"body": "root words"})
        _insert(store, 2, "$r1", {"body": "thread words", "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}})
        _insert(store, 3, "$r2", {"body": "other words"})
        assert _found(store, "words") == ["$r2", "$r1", "$root"] and _children(store, "$root") == ["$r1"]

        store.db.write_sync(lambda c: c.execute("UPDATE events SET redacted_by = '$red' WHERE event_id = '$r1'"))
        assert _found(store, "words") == ["$r2", "$root"] and _children(store, "$root") == []
        assert store.relations.threads(ROOM, below=None, limit=5, participant=None) == [("$root", 2)]  # kept

        store.db.write_sync(lambda c: c.execute("UPDATE events SET soft_failed = 1 WHERE event_id = '$r2'"))
        assert _found(store, "words") == ["$root"]
        # what the indexes read of an event changes (they read index_fields, never the compressed pdu)
        store.db.write_sync(lambda c: c.execute(
            "UPDATE events SET soft_failed = 0, index_fields = replace(index_fields, 'other', 'changed') WHERE event_id = '$r2'"))
        assert _found(store, "changed") == ["$r2"] and _found(store, "other") == []
        store.db.write_sync(lambda c: c.execute("UPDATE events SET depth = 2 WHERE event_id = '$r2'"))  # no effect
        assert _found(store, "changed") == ["$r2"]

        _insert(store, 4, "$r3", {"body": "late", "m.relates_to": {"rel_type": "m.reference", "event_id": "$root"}})
        store.db.write_sync(lambda c: c.execute("DELETE FROM events WHERE event_id IN ('$r2', '$r3')"))
        assert _found(store, "words") == ["$root"] and _found(store, "changed") == [] and _children(store, "$root") == []
        assert store.db.query("SELECT stream FROM event_search ORDER BY stream") == [(1,)]
    finally:
        store.close()


def test_older_events_are_indexed_by_the_backfill(schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from lowband.gateway.store.postgres import relations as pg_relations
    from lowband.gateway.store.postgres import search as pg_search

    store = _open(schema)
    try:
        _insert(store, 1, "$root", {"body": "root gauge"})
        for i in range(2, 12):
            _insert(store, i, f"$r{i}", {**_thread("$root"), "body": f"reply {i} gauge"})
        _insert(store, 12, "$soft", {**_thread("$root"), "body": "gauge"}, soft_failed=1)
    finally:
        store.close()
    store = _open(schema)  # as an older version left it: events, no index
    try:
        store.db.write_sync(lambda c: c.executescript(
            "DROP TABLE event_search; DROP TABLE search_backfill; DROP TABLE event_relations; DROP TABLE event_threads;"
            " DROP TABLE relations_backfill; DROP TRIGGER event_search_insert ON events;"
            " DROP TRIGGER event_search_update ON events; DROP TRIGGER event_search_delete ON events;"
            " DROP TRIGGER event_relations_insert ON events; DROP TRIGGER event_relations_redact ON events;"
            " DROP TRIGGER event_relations_delete ON events"))  # fmt: skip
    finally:
        store.close()
    for module in (pg_relations, pg_search):
        monkeypatch.setattr(module, "BACKFILL_BATCH", 3)
        monkeypatch.setattr(module, "BACKFILL_BUDGET_S", 0.0)  # everything after the first batch: background
    store = _open(schema)
    try:
        for older in (store.search.older, store.relations.older):
            assert older.backfilling is not None  # the rest went to background write jobs
            deadline = time.monotonic() + 10
            while older.pending():
                assert time.monotonic() < deadline, "backfill did not finish"
                time.sleep(0.01)
        assert _found(store, "gauge") == [f"$r{i}" for i in range(11, 1, -1)] + ["$root"]
        assert _children(store, "$root") == [f"$r{i}" for i in range(2, 12)]
        assert store.relations.threads(ROOM, below=None, limit=5, participant=None) == [("$root", 11)]
        _insert(store, 13, "$new", {**_thread("$root"), "body": "new gauge"})  # the triggers are back
        assert _found(store, "gauge")[0] == "$new" and _children(store, "$root")[-1] == "$new"
        assert store.relations.threads(ROOM, below=None, limit=5, participant=None) == [("$root", 13)]
    finally:
        store.close()


HOSTILE = ["a & b | !c :* ( ' \"", "a&b", "!c", ":*", "(", ")", "'", '"', "\\", "<->", "<2>", "%s", "?", "$1",
           "a:*", "''", "x\0y", "", "   ", "'a' & 'b'"]


def test_hostile_search_text_is_plain_words(schema: str) -> None:
    store = _open(schema)
    try:
        _insert(store, 1, "$hostile", {"body": "a & b | !c :* ( ' \" x y"})
        _insert(store, 2, "$ab", {"body": "b then a"})
        for word in HOSTILE:  # never an error, never wider than the words in it
            found = _found(store, word)
            assert set(found) <= {"$hostile", "$ab"}, word
        assert _found(store, "a & b | !c :* ( ' \"") == ["$hostile"]  # one word: its words adjacent, in order
        assert set(_found(store, "a", "&", "b", "|", "!c", ":*", "(", "'", '"')) == {"$hostile"}
        assert _found(store, "a", "b") == ["$ab", "$hostile"]
        assert _found(store, "&", "|") == []  # no letter or digit: nothing to match
        assert _found(store, "a:*") == ["$ab", "$hostile"]  # the word "a", not a prefix query
        assert _found(store, "th") == []  # no prefix matching: "then" is not "th"
    finally:
        store.close()


def test_a_pdu_jsonb_refuses_is_still_stored_and_indexed(schema: str) -> None:
    store = _open(schema)
    try:
        pdu = ('{"type": "m.room.message", "room_id": "!r:x", "sender": "@a:x", "origin_server_ts": 1,'
               ' "content": {"body": "nul\\u0000here gauge \\\\u0000 kept", "m.relates_to":'
               ' {"rel_type": "m.thread", "event_id": "$root"}}}')  # fmt: skip
        _insert(store, 1, "$nul", {}, pdu=pdu)
        assert _found(store, "gauge") == ["$nul"] and _found(store, "nulhere") == ["$nul"]
        assert _found(store, "u0000") == ["$nul"]  # an escaped backslash then "u0000": text, kept
        assert _children(store, "$root") == ["$nul"]
        escaped = ('{"type": "m.room.message", "room_id": "!r:x", "sender": "@a:x", "origin_server_ts": 2,'
                   ' "content": {"m\\u002erelates_to": {"rel_type": "m.thread", "event_id": "$root"}}}')  # fmt: skip
        _insert(store, 2, "$escaped", {}, pdu=escaped)  # the key through an escape: still a relation
        assert _children(store, "$root") == ["$nul", "$escaped"]
    finally:
        store.close()


def test_directory_search_folds_case_as_like_does(schema: str) -> None:
    store = _open(schema)
    try:
        store.db.write_sync(lambda c: c.execute(
            "INSERT INTO memberships (room_id, user_id, membership, event_id, stream) VALUES (?, ?, 'join', ?, 1)",
            (ROOM, "@Bob:x", "$m")))  # fmt: skip
        _insert(store, 1, "$m", {"membership": "join", "displayname": "Bobby Tables"}, type_="m.room.member",
                state_key="@Bob:x", sender="@Bob:x")  # fmt: skip
        found = store.search.directory_users("@a:x", [ROOM], everyone=False, user_id_like="%bob%",
                                             name_like=("%TABLES%", "%zzz%"), limit=5)  # fmt: skip
        assert found == [("@Bob:x", "Bobby Tables", None)]
        assert store.search.directory_users("@a:x", [ROOM], everyone=True, user_id_like="%b\0ob%",
                                            name_like=("%\0%", "%\0%"), limit=5)[0][0] == "@Bob:x"  # fmt: skip
    finally:
        store.close()
