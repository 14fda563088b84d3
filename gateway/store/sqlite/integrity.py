"""A read-only integrity check of a gateway's SQLite file (``lowband db check``): an :class:`IntegrityCheck`.

Rules:

* the file is opened ``mode=ro``: nothing is written or created, and WAL
  lets the check read beside a live gateway. A check that compares two
  reads runs in one read transaction (one snapshot); the two that walk every
  event (``events``, ``dag``) page by key without holding a snapshot, and
  are written so that rows committed meanwhile cause no false problem;
* every check streams its rows (cursors, batches of :data:`BATCH` events),
  so memory does not grow with the database: at most :data:`EXAMPLES`
  problems are kept as text, the rest only counted;
* a check that hits a damaged file (``sqlite3.DatabaseError``) reports that
  as one of its problems and the next check still runs.

The checks, in order (``--quick`` uses SQLite's ``quick_check`` and skips the
per-event hashing, the slowest part):

* ``sqlite`` — ``PRAGMA integrity_check`` (``quick_check``): pages, B-trees;
* ``foreign_keys`` — ``PRAGMA foreign_key_check``;
* ``events`` — every stored PDU is JSON, its columns (room, type, state key,
  sender) are what it says, its event ID is its reference hash (room
  versions 3+; versions 1–2 carry the ID, which must be the column) and,
  unless redacted, its content matches its ``hashes.sha256`` (the
  reference hash covers only the redacted form, not e.g. a message body;
  an event stored in its redacted form, as federation stores one whose
  hash was wrong, passes);
* ``dag`` — every timeline event's ``prev_events`` and ``auth_events`` are
  stored (outliers count: they are stored), and the prevs that are stored
  have lower stream positions (a child commits after its parents; history
  backfilled over federation sits below 0 and is exempt). A missing *prev*
  event is not a problem, only counted in the notes, in a room that had a
  retention purge (a purge deletes old non-state events on purpose, see
  :mod:`.retention`) or that has members on other servers (history from
  before this server joined; a gap the receive path skipped over). Auth
  events are state, never purged, and always fetched: missing is a problem;
* ``state`` — every room's current state group resolves (its delta chain
  is whole) to stored events, and its forward extremities are stored;
* ``relations`` / ``search`` — the trigger-kept indexes agree with the
  events: a row for every event that should have one (above the index's
  backfill point), none for an event that is not stored or should not be
  indexed;
* ``notifications`` — every ``push_notifications`` row and every thread's
  latest reply names a stored event.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lowband.gateway.matrix import room_versions
from lowband.gateway.matrix.events import compute_event_id, content_hash_matches
from lowband.gateway.matrix.redaction import redacted_view
from lowband.gateway.store.interfaces import IntegrityFinding
from lowband.gateway.store.sqlite.pdu_codec import PduDecodeError, index_fields, reader_codec

# The indexes' own definitions of "this event is indexed", so the check cannot drift from the triggers.
from lowband.gateway.store.sqlite.relations import _INDEXED as _RELATION_INDEXED
from lowband.gateway.store.sqlite.schema import ROOM_NID, ROOM_OF, by_event_ids, event_ids_args, same_event
from lowband.gateway.store.sqlite.search import _INDEXED as _SEARCH_INDEXED

#: events read per batch (one IN (...) lookup of their references each)
BATCH = 500
#: problems kept as text per check
EXAMPLES = 10


class NotAStore(Exception):
    """The file cannot be checked at all: missing, not SQLite, not a Lowband database, or locked by a writer."""


class _Finding:
    """A finding being built: counts everything, keeps the first few problems."""

    def __init__(self, check: str) -> None:
        self.result = IntegrityFinding(check, examples=[], notes=[])

    def problem(self, text: str) -> None:
        self.result.problems += 1
        assert self.result.examples is not None
        if len(self.result.examples) < EXAMPLES:
            self.result.examples.append(text)

    def note(self, text: str) -> None:
        assert self.result.notes is not None
        self.result.notes.append(text)


class SQLiteIntegrity:
    """The integrity checks of one SQLite file, read-only (see the module rules)."""

    #: what differs on PostgreSQL (store/postgres/integrity.py): the SQL of an event that should be indexed, the
    #: search index's position column, the last ``len(suffix)`` characters of ``sender`` (parameter: the length)
    relation_indexed = _RELATION_INDEXED
    search_indexed = _SEARCH_INDEXED
    search_position = "rowid"
    sender_tail = "substr(sender, -?)"

    def __init__(self, path: Path, *, server_name: str | None = None, timeout_s: float = 10.0) -> None:
        """Open ``path`` read-only; :class:`NotAStore` if it is missing, not SQLite, has no Lowband schema, or
        stays locked for ``timeout_s`` (a writer in rollback-journal mode). ``server_name`` (the gateway's) tells
        rooms with remote members, whose history may have gaps, from local ones; None: every room is local."""
        self._server_name = server_name
        self._federated: dict[str, bool] = {}
        if not path.is_file():
            raise NotAStore(f"no database file {path}")
        try:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)
            self._pdus = reader_codec(self._conn)
        except sqlite3.Error as exc:
            raise NotAStore(f"cannot open {path}: {exc}") from None
        try:
            tables = {str(r[0]) for r in self._conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.OperationalError as exc:
            self._conn.close()
            raise NotAStore(f"cannot read {path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            if not _sqlite_header(path):
                self._conn.close()
                raise NotAStore(f"{path} is not a SQLite database ({exc})") from None
            # a SQLite file whose schema cannot be read (truncated, overwritten): damage for the checks to report
            tables = {"events", "rooms", "state_groups"}
        if not {"events", "rooms", "state_groups"} <= tables:
            self._conn.close()
            raise NotAStore(f"{path} is not a Lowband database (no events, rooms and state_groups tables)")
        self._tables = tables
        self._versions: dict[str, str | None] = {}

    def checks(self, *, quick: bool) -> list[tuple[str, int]]:
        """(name, amount of work for a progress bar) of every check, in the order they should run."""
        events = self._count("events")
        rooms = self._count("rooms")
        plan = [("sqlite", 1), ("foreign_keys", 1), ("events", events), ("dag", events), ("state", rooms),
                ("relations", 2), ("search", 2), ("notifications", 2)]  # fmt: skip
        return [(name, work) for name, work in plan if not (quick and name == "events")]

    def run(self, name: str, *, quick: bool, advance: Callable[[int], None]) -> IntegrityFinding:
        """Run one check by name; a damaged file shows as a problem of that check, never an exception
        (KeyError for a name :meth:`checks` does not list)."""
        check = {
            "sqlite": self._sqlite, "foreign_keys": self._foreign_keys, "events": self._events, "dag": self._dag,
            "state": self._state, "relations": self._relations, "search": self._search,
            "notifications": self._notifications,
        }[name]  # fmt: skip
        finding = _Finding(name)
        # A check that compares two reads (an index and its events) does them in one read transaction, one
        # snapshot, so a live gateway's writes between them are no false problem. The two that walk every
        # event page by key instead and hold no snapshot for long (a snapshot held keeps a live WAL growing).
        snapshot = name not in ("events", "dag")
        try:
            if snapshot:
                self._begin_snapshot()
            try:
                check(finding, quick, advance)
            finally:
                if snapshot:
                    self._end_snapshot()
        except sqlite3.DatabaseError as exc:
            finding.problem(f"the database could not be read: {exc}")
        return finding.result

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    # -- helpers ----------------------------------------------------------------

    def _begin_snapshot(self) -> None:
        self._conn.execute("BEGIN")

    def _end_snapshot(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _count(self, table: str) -> int:
        try:
            return int(self._conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        except sqlite3.DatabaseError:
            return 0

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        cursor = self._conn.execute(sql, params)
        while rows := cursor.fetchmany(BATCH):
            yield from rows

    def _batches(self, sql: str) -> Iterator[list[tuple[Any, ...]]]:
        """Batches of rows of ``sql`` (its first column an increasing ``stream``), keyset-paged: no statement
        stays open across batches, so a live gateway's WAL can be checkpointed meanwhile."""
        after = -(1 << 63)
        while True:
            rows = self._conn.execute(sql, (after, BATCH)).fetchall()
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    def _version(self, room_id: str) -> str | None:
        if room_id not in self._versions:
            row = self._conn.execute("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
            self._versions[room_id] = None if row is None else str(row[0])
        return self._versions[room_id]

    def _stored(self, event_ids: set[str]) -> dict[str, int]:
        """event ID → stream of those of ``event_ids`` that are stored."""
        found: dict[str, int] = {}
        ids = list(event_ids)
        for start in range(0, len(ids), BATCH):
            part = ids[start:start + BATCH]
            for event_id, stream in self._conn.execute(
                    f"SELECT event_id, stream FROM events WHERE {by_event_ids(len(part))}",
                    event_ids_args(part)):  # fmt: skip
                found[str(event_id)] = int(stream)
        return found

    def _is_federated(self, room_id: str) -> bool:
        """Whether any stored event of the room was sent from another server (asked once per room, and only
        for a room with a missing prev event: one scan of the room's events)."""
        if self._server_name is None:
            return False
        if room_id not in self._federated:
            suffix = ":" + self._server_name
            row = self._conn.execute(
                f"SELECT 1 FROM events WHERE room_nid = {ROOM_NID} AND {self.sender_tail} != ? LIMIT 1",
                (room_id, len(suffix), suffix)).fetchone()  # fmt: skip
            self._federated[room_id] = row is not None
        return self._federated[room_id]

    def _purged_since(self, room_id: str) -> bool:
        if "retention_purges" not in self._tables:
            return False
        return self._conn.execute("SELECT 1 FROM retention_purges WHERE room_id = ?", (room_id,)).fetchone() is not None

    def _backfill_below(self, table: str) -> int | None:
        """Positions below this are not indexed yet (an index made on an older database), or None."""
        if table not in self._tables:
            return None
        row = self._conn.execute(f"SELECT below FROM {table} WHERE id = 0").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # -- the checks ---------------------------------------------------------------

    def _sqlite(self, finding: _Finding, quick: bool, advance: Callable[[int], None]) -> None:
        pragma = "quick_check" if quick else "integrity_check"
        finding.result.checked = 1
        for (line,) in self._rows(f"PRAGMA {pragma}"):
            if line != "ok":
                finding.problem(str(line))
        advance(1)

    def _foreign_keys(self, finding: _Finding, quick: bool, advance: Callable[[int], None]) -> None:
        for table, rowid, parent, _ in self._rows("PRAGMA foreign_key_check"):
            finding.problem(f"{table} row {rowid} names a missing {parent} row")
        finding.result.checked = 1
        advance(1)

    @staticmethod
    def _room_column(columns: set[str]) -> str:
        """What an events row's room ID is read as: its own column before schema migration 9, else the ID its
        room number names (NULL for a number ``room_numbers`` does not hold)."""
        return "room_id" if "room_id" in columns else ROOM_OF.format(e="events")

    def _events(self, finding: _Finding, quick: bool, advance: Callable[[int], None]) -> None:
        # a file no gateway of this version has opened yet has no index_fields (schema.upgrade adds them)
        columns = {str(r[1]) for r in self._rows("PRAGMA table_info(events)")}
        upgraded = "index_fields" in columns
        # room numbers (schema migration 8): each event's must be its room's; since migration 9 the row holds only
        # the number, and the room ID it names is compared with the JSON's
        numbers = dict(self._rows("SELECT nid, room_id FROM room_numbers")) if "room_nid" in columns else None
        sql = (f"SELECT stream, event_id, {self._room_column(columns)}, type, state_key, sender, pdu, redacted_by,"
               f" {'index_fields' if upgraded else 'NULL'}, {'room_nid' if numbers is not None else 'NULL'}"
               " FROM events WHERE stream > ? ORDER BY stream LIMIT ?")  # fmt: skip
        for rows in self._batches(sql):
            for stream, event_id, room_id, kind, state_key, sender, text, redacted_by, fields, nid in rows:
                finding.result.checked += 1
                where = f"stream {stream} ({event_id})"
                numbered_wrong = numbers is not None and (nid not in numbers or numbers[nid] != room_id)
                if numbered_wrong:
                    finding.problem(f"{where}: room number {nid} is not its room's")
                try:
                    pdu = self._pdus.decode(text)
                except PduDecodeError as exc:
                    finding.problem(f"{where}: {exc}")
                    continue
                differs = [name for name, column in (("room_id", room_id), ("type", kind), ("state_key", state_key),
                                                     ("sender", sender)) if pdu.get(name) != column]  # fmt: skip
                if "room_id" in differs and (numbered_wrong or "room_id" not in columns):
                    differs.remove("room_id")  # the row holds the number alone: it names another room
                    if not numbered_wrong:
                        finding.problem(f"{where}: room number {nid} is not its room's")
                if differs:
                    finding.problem(f"{where}: columns differ from the JSON: {', '.join(differs)}")
                if upgraded and not _fields_match(fields, kind, state_key, pdu.get("content")):
                    finding.problem(f"{where}: index_fields differ from the event's content")
                identifier = self._version(str(room_id))
                version = room_versions.KNOWN.get(identifier) if identifier is not None else None
                if version is None:
                    continue  # a room this server is not in (an outlier of another room): no version to hash by
                try:
                    computed = compute_event_id(pdu, version)
                except Exception as exc:  # noqa: BLE001 - any failure to hash stored JSON is a finding
                    finding.problem(f"{where}: no event ID can be computed ({exc})")
                    continue
                if computed != event_id:
                    finding.problem(f"{where}: content hashes to {computed}")
                elif redacted_by is None and not content_hash_matches(pdu) and not _pruned(pdu, version):
                    # the event ID covers only the redacted form: the body is covered by hashes.sha256. An event
                    # already in its redacted form is one federation received with a wrong hash (stored redacted)
                    finding.problem(f"{where}: content does not match its hashes.sha256")
            advance(len(rows))

    def _dag(self, finding: _Finding, quick: bool, advance: Callable[[int], None]) -> None:
        purged = {str(r[0]) for r in self._rows("SELECT room_id FROM retention_purges")} \
            if "retention_purges" in self._tables else set()  # fmt: skip
        excused = gaps = 0
        room = self._room_column({str(r[1]) for r in self._rows("PRAGMA table_info(events)")})
        sql = f"SELECT stream, event_id, {room}, outlier, pdu FROM events WHERE stream > ? ORDER BY stream LIMIT ?"
        for rows in self._batches(sql):
            refs: list[tuple[int, str, str, list[str], list[str]]] = []
            wanted: set[str] = set()
            for stream, event_id, room_id, outlier, text in rows:
                if outlier:
                    continue  # known for auth or state only: its own history is not expected here
                try:
                    pdu = self._pdus.decode(text)
                except PduDecodeError:
                    continue  # the events check reports it
                prevs, auths = _ids(pdu.get("prev_events")), _ids(pdu.get("auth_events"))
                refs.append((int(stream), str(event_id), str(room_id), prevs, auths))
                wanted.update(prevs, auths)
            stored = self._stored(wanted)
            for stream, event_id, room_id, prevs, auths in refs:
                finding.result.checked += 1
                for prev in prevs:
                    if prev not in stored:
                        if room_id not in purged and self._purged_since(room_id):
                            purged.add(room_id)  # a live gateway's first purge of the room, during this check
                        if room_id in purged:
                            excused += 1
                        elif self._is_federated(room_id):
                            gaps += 1
                        else:
                            finding.problem(f"{event_id} (stream {stream}): prev event {prev} is not stored")
                    elif stream > 0 and stored[prev] >= stream:  # backfilled history sits below 0, in any order
                        finding.problem(f"{event_id} (stream {stream}): prev event {prev} has a later stream "
                                        f"position ({stored[prev]})")  # fmt: skip
                for auth in auths:
                    if auth not in stored:
                        finding.problem(f"{event_id} (stream {stream}): auth event {auth} is not stored")
            advance(len(rows))
        if excused:
            finding.note(f"{excused} prev events missing in rooms with a retention purge (deleted on purpose)")
        if gaps:
            finding.note(f"{gaps} prev events missing in rooms with remote members (history from before this "
                         "server joined, or a gap federation skipped over)")

    def _state(self, finding: _Finding, quick: bool, advance: Callable[[int], None]) -> None:
        for room_id, group, extremities in self._rows("SELECT room_id, state_group, extremities FROM rooms"):
            finding.result.checked += 1
            try:
                tips = _ids(json.loads(extremities))
            except (ValueError, TypeError):
                finding.problem(f"{room_id}: forward extremities are not JSON")
                tips = []
            for tip in set(tips) - set(self._stored(set(tips))):
                finding.problem(f"{room_id}: forward extremity {tip} is not stored")
            if group is not None:
                state = self._resolve(finding, str(room_id), int(group))
                if state is not None:
                    missing = set(state.values()) - set(self._stored(set(state.values())))
                    for (kind, key), event_id in sorted(state.items()):
                        if event_id in missing:
                            finding.problem(f"{room_id}: current state ({kind}, {key!r}) is {event_id}, not stored")
            advance(1)

    def _resolve(self, finding: _Finding, room_id: str, group: int) -> dict[tuple[str, str], str] | None:
        """The full state of ``group`` (one room's: its size bounds the memory), or None with a problem noted."""
        chain: list[str] = []
        current: int | None = group
        while current is not None:
            row = self._conn.execute("SELECT prev_group, delta, room_id FROM state_groups WHERE id = ?",
                                     (current,)).fetchone()  # fmt: skip
            if row is None:
                finding.problem(f"{room_id}: state group {current} (current state's chain) is not stored")
                return None
            if row[2] != room_id:
                finding.problem(f"{room_id}: state group {current} belongs to {row[2]}")
                return None
            chain.append(str(row[1]))
            current = None if row[0] is None else int(row[0])
            if len(chain) > 10_000:
                finding.problem(f"{room_id}: state group chain from {group} does not end (a loop?)")
                return None
        state: dict[tuple[str, str], str] = {}
        for text in reversed(chain):
            try:
                for kind, key, event_id in json.loads(text):
                    state[(str(kind), str(key))] = str(event_id)
            except (ValueError, TypeError):
                finding.problem(f"{room_id}: a state group of the current state's chain is malformed")
                return None
        return state

    def _relations(self, finding: _Finding, quick: bool, advance: Callable[[int], None]) -> None:
        if "event_relations" not in self._tables:
            finding.note("no relation index in this database")
            return
        finding.result.checked = self._count("event_relations")
        for child, stream in self._rows(
                "SELECT r.child_id, r.child_stream FROM event_relations r WHERE NOT EXISTS"
                " (SELECT 1 FROM events e WHERE e.event_id = r.child_id AND e.stream = r.child_stream)"):  # fmt: skip
            finding.problem(f"relation row of {child} (stream {stream}) names no stored event at that position")
        advance(1)
        below = self._backfill_below("relations_backfill") or -(1 << 63)
        for event_id, stream in self._rows(
                f"SELECT e.event_id, e.stream FROM events e WHERE e.stream >= ? AND {self.relation_indexed.format(e='e')}"
                " AND NOT EXISTS (SELECT 1 FROM event_relations r WHERE r.child_id = e.event_id)", (below,)):
            finding.problem(f"{event_id} (stream {stream}) relates to an event but has no relation row")
        advance(1)

    def _search(self, finding: _Finding, quick: bool, advance: Callable[[int], None]) -> None:
        if "event_search" not in self._tables:
            finding.note("no search index in this database")
            return
        below = self._backfill_below("search_backfill") or -(1 << 63)
        # Both sides in stream order, merged: the index's rowids against the events that should be in it.
        indexed = self._rows(f"SELECT {self.search_position} FROM event_search ORDER BY 1")
        expected = (int(r[0]) for r in self._rows(  # a second statement read beside the first
            f"SELECT e.stream FROM events e WHERE e.stream >= ? AND {self.search_indexed.format(e='e')} ORDER BY e.stream",
            (below,)))
        a, b = next(indexed, None), next(expected, None)
        while a is not None or b is not None:
            if b is None or (a is not None and a[0] < b):
                assert a is not None
                if a[0] >= below:
                    finding.problem(f"search entry at stream {a[0]}: no stored event there should be indexed")
                finding.result.checked += 1
                a = next(indexed, None)
            elif a is None or b < a[0]:
                finding.problem(f"stream {b}: a searchable event missing from the search index")
                b = next(expected, None)
            else:
                finding.result.checked += 1
                a, b = next(indexed, None), next(expected, None)
        advance(2)

    def _notifications(self, finding: _Finding, quick: bool, advance: Callable[[int], None]) -> None:
        if "push_notifications" in self._tables:
            finding.result.checked += self._count("push_notifications")
            for user, event_id in self._rows(
                    "SELECT n.user_id, n.event_id FROM push_notifications n WHERE NOT EXISTS"
                    f" (SELECT 1 FROM events e WHERE {same_event('e.event_id', 'n.event_id')})"):  # fmt: skip
                finding.problem(f"notification of {user} names {event_id}, not stored")
        advance(1)
        if "event_threads" in self._tables:
            finding.result.checked += self._count("event_threads")
            for room_id, root, stream in self._rows(
                    "SELECT t.room_id, t.root_id, t.latest_stream FROM event_threads t WHERE NOT EXISTS"
                    " (SELECT 1 FROM events e WHERE e.stream = t.latest_stream)"):  # fmt: skip
                finding.problem(f"thread {root} in {room_id}: its latest reply (stream {stream}) is not stored")
        advance(1)


def _fields_match(fields: str | None, kind: str, state_key: str | None, content: Any) -> bool:
    """Whether ``index_fields`` is what the store writes for the event (pdu_codec.index_fields), or the whole
    content an upgraded older row was given."""
    if fields == index_fields(kind, state_key, content):
        return True
    try:
        return fields is not None and json.loads(fields) == {"content": content}
    except ValueError:
        return False


def _pruned(pdu: dict[str, Any], version: room_versions.RoomVersion) -> bool:
    """Whether ``pdu`` is already its own redacted form (signatures and ``unsigned`` aside)."""
    bare = {k: v for k, v in pdu.items() if k not in ("signatures", "unsigned")}
    view = {k: v for k, v in redacted_view(pdu, version).items() if k not in ("signatures", "unsigned")}
    return bare == view


def _sqlite_header(path: Path) -> bool:
    """Whether the file starts as every SQLite 3 database does."""
    try:
        with path.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _ids(value: Any) -> list[str]:
    """Event IDs of a ``prev_events``/``auth_events`` value: strings (v3+) or [id, hashes] pairs (v1-2)."""
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list) and item and isinstance(item[0], str):
            out.append(item[0])
    return out


__all__ = ["NotAStore", "SQLiteIntegrity"]
