"""The SQLite schema of every area, in one place. Every statement is idempotent, so it runs on each start.

:func:`upgrade` brings a database made by an older Lowband up to this
schema: it runs after :data:`SCHEMA`, on each start, the numbered
:data:`MIGRATIONS` the database has not recorded (``migrations.py``), and
refuses a database a newer Lowband wrote.

One exception for now: federation's tables are created by ``federation.py``
itself (its tests open a bare database with that module alone).

The homeserver's tables come first, then those of the edges (device
registry, MQTT bridge). All live in the gateway's one file behind one
writer, so an edge's row and the room event queued after it commit in that
order (see ``store/interfaces.py``).
"""

import hashlib
import re
import sqlite3

from lowband.gateway.store import txn_keys
from lowband.gateway.store.sqlite import migrations


def token_key(token: str) -> str:
    """What the database keeps of an access token: its SHA-256, so a copy of the file holds no usable token.

    A token is 32 bytes from ``secrets``: a plain hash is enough (there is nothing to guess, unlike a password).
    """
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

_HOMESERVER = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    created_ts INTEGER NOT NULL,
    displayname TEXT,
    avatar_url TEXT,
    deactivated INTEGER NOT NULL DEFAULT 0,
    owner TEXT                      -- NULL: a person's; else the edge that created it ('device:NAME', 'mqtt')
);
CREATE TABLE IF NOT EXISTS access_tokens (
    token TEXT PRIMARY KEY,         -- token_key(token): 'sha256:' and the hex digest, never the token
    user_id TEXT NOT NULL REFERENCES users(user_id),
    device_id TEXT NOT NULL,
    created_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE IF NOT EXISTS filters (
    user_id TEXT NOT NULL,
    filter_id INTEGER NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);
CREATE TABLE IF NOT EXISTS account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,          -- '' for global account data
    data_type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);
CREATE INDEX IF NOT EXISTS account_data_stream ON account_data(user_id, stream);

CREATE TABLE IF NOT EXISTS rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    is_public INTEGER NOT NULL DEFAULT 0,
    state_group INTEGER,            -- current state
    extremities TEXT NOT NULL,      -- JSON list of forward extremity event IDs
    depth INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state_groups (
    id INTEGER PRIMARY KEY,
    room_id TEXT NOT NULL,
    prev_group INTEGER,             -- NULL: 'delta' is the whole state
    chain_length INTEGER NOT NULL,
    delta TEXT NOT NULL             -- JSON [[type, state_key, event_id], ...]
);
-- Fixed-width columns first, then text, the PDU last: on PostgreSQL each 8-byte column after text is aligned
-- with padding (SQLite does not care). Stores made before keep their column order (nothing reads by position).
CREATE TABLE IF NOT EXISTS events (
    stream INTEGER PRIMARY KEY,
    room_nid INTEGER,               -- room_numbers.nid of the event's room: its room ID is there (migrations 8, 9)
    depth INTEGER NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    state_before INTEGER,
    state_after INTEGER,
    txn_hash INTEGER,               -- txn_keys.txn_digest of (user, device, key) it was sent with (migration 7)
    outlier SMALLINT NOT NULL DEFAULT 0,      -- 1: known for auth/state, not in the timeline
    soft_failed SMALLINT NOT NULL DEFAULT 0,  -- 1: refused by the current state when it came, never shown
    event_id TEXT NOT NULL,         -- unique: events_event_key (SQLite), events_event_id_key (PostgreSQL), migration 10
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    rejected TEXT,                  -- reason, NULL when accepted
    redacted_by TEXT,
    txn_id TEXT,                    -- the client's own transaction ID (a client's send), for unsigned.transaction_id
    index_fields TEXT,              -- what search and relations read of the content, JSON (pdu_codec.index_fields)
    pdu BLOB NOT NULL               -- canonical JSON, compressed against a dictionary (store/sqlite/pdu_codec.py)
);
-- A number for each room that has events: the room indexes on events (made by migration 8: events_room_nid_stream,
-- and for timestamp_to_event and retention events_room_nid_ts) and the events rows themselves (migration 9) hold it
-- instead of the room ID's ~30 bytes.
CREATE TABLE IF NOT EXISTS room_numbers (
    nid INTEGER PRIMARY KEY,
    room_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS pdu_dictionaries (
    id INTEGER PRIMARY KEY,
    first_stream INTEGER NOT NULL,  -- the stream position when it was made: the next one is due counting from here
    created_ts INTEGER NOT NULL,
    sample BLOB NOT NULL            -- the Zstandard dictionary, trained or raw content (pdu_codec.py)
);

CREATE TABLE IF NOT EXISTS memberships (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream INTEGER NOT NULL,
    forgotten INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX IF NOT EXISTS memberships_user ON memberships(user_id, membership);

CREATE TABLE IF NOT EXISTS room_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    thread_id TEXT NOT NULL DEFAULT '',  -- '' unthreaded, 'main' or a thread root's event ID (spec v1.4)
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX IF NOT EXISTS receipts_stream ON receipts(room_id, stream);

CREATE TABLE IF NOT EXISTS media (
    media_id TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    filename TEXT,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS media_by_user ON media(user_id);
"""

_LINK_DEVICES = """
CREATE TABLE IF NOT EXISTS link_devices (
    name TEXT PRIMARY KEY,
    address INTEGER NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    static_public TEXT NOT NULL,
    rooms TEXT NOT NULL,            -- JSON list of room IDs
    context TEXT NOT NULL,          -- JSON context table (compact profile)
    link TEXT NOT NULL,             -- e.g. serial:/dev/ttyUSB0?bps=100
    created_ts INTEGER NOT NULL,
    key_ts INTEGER NOT NULL,        -- when the current key was provisioned
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS link_sessions (
    name TEXT PRIMARY KEY,
    key_ts INTEGER NOT NULL,        -- the device key this session belongs to
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS link_announcements (
    name TEXT NOT NULL,
    room_id TEXT NOT NULL,
    key_ts INTEGER NOT NULL,
    PRIMARY KEY (name, room_id, key_ts)
);
"""

# mqtt_inflight: every message adds a row and soon deletes it; WITHOUT ROWID
# keeps that to one B-tree (a database made before has the rowid table, which
# works the same). What each table holds: store/sqlite/mqtt.py.
_MQTT = """
CREATE TABLE IF NOT EXISTS mqtt_inflight (
    broker TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    digest BLOB NOT NULL,
    mid INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (broker, txn_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mqtt_cursor (
    mapping TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream INTEGER NOT NULL,
    PRIMARY KEY (mapping, room_id)
);
CREATE TABLE IF NOT EXISTS mqtt_users (
    user_id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mqtt_discovery (
    broker TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (broker, topic)
);
CREATE TABLE IF NOT EXISTS mqtt_subscriptions (
    broker TEXT NOT NULL,
    filter TEXT NOT NULL,
    PRIMARY KEY (broker, filter)
);
"""

SCHEMA = _HOMESERVER + _LINK_DEVICES + _MQTT


def upgrade(conn: sqlite3.Connection) -> list[str]:
    """Bring a database made by an older Lowband to this schema: the :data:`MIGRATIONS` it has not recorded
    (``migrations.py``: rules; SchemaTooNew for a newer one). Runs inside the writer's transaction; the names
    of the migrations run."""
    return migrations.apply(conn, MIGRATIONS)


def _federation_columns(conn: sqlite3.Connection) -> None:
    """``events.outlier`` and ``soft_failed``: federation's events known outside the timeline."""
    event_columns = _columns(conn, "events")
    for column in ("outlier", "soft_failed"):
        if column not in event_columns:
            conn.execute(f"ALTER TABLE events ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")


def _hashed_tokens(conn: sqlite3.Connection) -> None:
    """Access tokens were stored in clear until 0.x; the database keeps only their SHA-256 (token_key)."""
    clear = conn.execute("SELECT token FROM access_tokens WHERE token NOT LIKE 'sha256:%'").fetchall()
    for (token,) in clear:
        conn.execute("UPDATE access_tokens SET token = ? WHERE token = ?", (token_key(token), token))


def _account_owners(conn: sqlite3.Connection) -> None:
    """``users.owner`` (edges speak only as accounts they created).

    When the column is added, accounts an edge demonstrably made are claimed
    for it, once — those the MQTT bridge recorded in ``mqtt_users``, and a
    provisioned device's ``@dev.NAME`` created no earlier than the device
    itself (the link makes it within seconds of ``lowband device add``; an
    older one was registered by someone before the device existed). Every
    other account stays NULL: a person's, never adopted by an edge.
    """
    if "owner" in _columns(conn, "users"):
        return
    conn.execute("ALTER TABLE users ADD COLUMN owner TEXT")
    # The values are devices.account.device_owner() and the MQTT bridge's rooms.ACCOUNT_OWNER.
    conn.execute(
        "UPDATE users SET owner = (SELECT 'device:' || d.name FROM link_devices d WHERE d.user_id = users.user_id"
        " AND users.created_ts >= d.created_ts) WHERE owner IS NULL"
    )
    if migrations.table_exists(conn, "mqtt_users"):
        conn.execute("UPDATE users SET owner = 'mqtt' WHERE owner IS NULL AND user_id IN (SELECT user_id FROM mqtt_users)")


def _threaded_notifications(conn: sqlite3.Connection) -> None:
    """``push_notifications.thread_id``: rows of databases made before threaded counts count as the main
    timeline's (the table itself is push.py's, made at the newest shape when missing)."""
    if migrations.table_exists(conn, "push_notifications") and not migrations.has_columns(
            conn, "push_notifications", "thread_id"):  # fmt: skip
        conn.execute("ALTER TABLE push_notifications ADD COLUMN thread_id TEXT NOT NULL DEFAULT 'main'")


def _compact_events(conn: sqlite3.Connection) -> None:
    """Compact events (pdu_codec.py): ``events.index_fields`` (see :func:`_index_fields`)."""
    if "index_fields" not in _columns(conn, "events"):
        _index_fields(conn)


def _txn_digests(conn: sqlite3.Connection) -> None:
    """Transaction keys as 64-bit digests (txn_keys.py): ``events.txn_hash`` under a unique index replaces
    ``txn_user``, ``txn_device`` and the whole key in ``txn_id`` (and their unique index), which keeps only a
    client's own transaction ID. Older JSON keys get the digest of the current form of the same send, so a
    retry and ``unsigned.transaction_id`` work for them too."""
    if "txn_hash" not in _columns(conn, "events"):
        conn.execute("ALTER TABLE events ADD COLUMN txn_hash INTEGER")
        conn.execute("DROP INDEX IF EXISTS events_txn")
        last = -1
        while True:  # in batches: no whole table in memory
            rows = conn.execute(
                "SELECT stream, room_id, type, txn_user, txn_device, txn_id FROM events"
                " WHERE txn_id IS NOT NULL AND stream > ? ORDER BY stream LIMIT 5000", (last,)).fetchall()  # fmt: skip
            if not rows:
                break
            last = rows[-1][0]
            conn.executemany("UPDATE events SET txn_hash = ?, txn_id = ? WHERE stream = ?",
                             [(*_txn_mark(*row[1:]), row[0]) for row in rows])  # fmt: skip
        for column in ("txn_user", "txn_device"):
            conn.execute(f"ALTER TABLE events DROP COLUMN {column}")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_txn_hash ON events(txn_hash) WHERE txn_hash IS NOT NULL")


def _room_numbers(conn: sqlite3.Connection) -> None:
    """Room numbers (``room_numbers``, ``events.room_nid``): the two room indexes on events hold a room's
    number instead of its ID. Every room with events gets its number, every event its room's, and the indexes
    on the room ID are replaced."""
    if "room_nid" not in _columns(conn, "events"):
        conn.execute("ALTER TABLE events ADD COLUMN room_nid INTEGER")
        conn.execute("INSERT INTO room_numbers (room_id) SELECT DISTINCT room_id FROM events")
        conn.execute("UPDATE events SET room_nid = (SELECT nid FROM room_numbers n WHERE n.room_id = events.room_id)")
        conn.execute("DROP INDEX IF EXISTS events_room_stream")
        conn.execute("DROP INDEX IF EXISTS events_room_ts")
    conn.execute("CREATE INDEX IF NOT EXISTS events_room_nid_stream ON events(room_nid, stream)")
    conn.execute("CREATE INDEX IF NOT EXISTS events_room_nid_ts ON events(room_nid, origin_server_ts)")


#: ``events.room_nid = {ROOM_NID}`` picks a room's events through the room indexes (one parameter: the room ID;
#: a room without a number has no events, and the comparison with NULL matches none)
ROOM_NID = "(SELECT nid FROM room_numbers WHERE room_id = ?)"
#: gives a room its number in a write job before its first event is inserted (parameters: the room ID, twice)
NEW_ROOM_NUMBER = ("INSERT INTO room_numbers (room_id) SELECT ? WHERE NOT EXISTS"
                   " (SELECT 1 FROM room_numbers WHERE room_id = ?)")  # fmt: skip
#: the room ID of events row ``{e}`` (the row holds its room's number only, since schema migration 9)
ROOM_OF = "(SELECT room_id FROM room_numbers WHERE nid = {e}.room_nid)"
#: the columns of a timeline row (push rules, the application-service queue's interest rules), by stream position:
#: store/interfaces.py TimelineRow
TIMELINE_COLUMNS = f"stream, event_id, {ROOM_OF.format(e='events')}, type, state_key, sender, state_before"

#: What SQLite's unique index on event IDs holds (``events_event_key``, migration 10) for event ID ``{c}``: a
#: computed ID (room versions 3 and later: ``$`` and 43 base64 characters of a SHA-256, no ``:``) by its first 17
#: characters, 96 bits of the hash, about 30 bytes less per event than the whole ID; any other ID (room versions
#: 1 and 2 carry ``$opaque:server``) whole. A lookup by event ID names this expression and the ID
#: (:data:`BY_EVENT_ID`, :func:`event_key`) so SQLite reads the index; PostgreSQL keeps its unique index on the
#: whole ID and finds the row by ``event_id = ?``.
EVENT_KEY = "(CASE WHEN length({c}) = 44 AND replace({c}, ':', '') = {c} THEN substr({c}, 1, 17) ELSE {c} END)"
#: one event by ID; parameters: ``event_key(id)``, then the ID. The CAST keeps SQLite from putting the ID in
#: place of the column inside the key expression (its constant propagation), which would stop it matching the
#: index; tests/store/test_event_key.py checks the plans.
BY_EVENT_ID = EVENT_KEY.format(c="event_id") + " = ? AND event_id = CAST(? AS TEXT)"


def event_key(event_id: str) -> str:
    """:data:`EVENT_KEY` of ``event_id``, computed here."""
    return event_id[:17] if len(event_id) == 44 and ":" not in event_id else event_id


def by_event_ids(count: int) -> str:
    """SQL choosing the events of ``count`` IDs (parameters: :func:`event_ids_args`) through the key index (one
    ID is :data:`BY_EVENT_ID`: SQLite reads a one-item ``IN`` as ``=``)."""
    if count == 1:
        return BY_EVENT_ID
    marks = ",".join("?" * count)
    return f"{EVENT_KEY.format(c='event_id')} IN ({marks}) AND event_id IN ({marks})"


def event_ids_args(event_ids: list[str]) -> tuple[str, ...]:
    """The parameters of :func:`by_event_ids` for ``event_ids``."""
    return (*map(event_key, event_ids), *event_ids)


def same_event(a: str, b: str) -> str:
    """SQL saying the event IDs in columns ``a`` and ``b`` are the same, in a form SQLite's index serves."""
    return f"{EVENT_KEY.format(c=a)} = {EVENT_KEY.format(c=b)} AND {a} = {b}"


def _event_key_index(conn: sqlite3.Connection) -> None:
    """Event IDs unique through :data:`EVENT_KEY` on SQLite (``events_event_key``) instead of the column's own
    unique index, which held every whole ID a second time. SQLite cannot drop a column's UNIQUE, so a store made
    before has its events table made anew (every row copied, in the new column order; the indexes made again,
    the index triggers by search.py and relations.py when the store opens). On PostgreSQL the whole ID stays
    unique (``events_event_id_key``: the constraint's index in a store made before, an index in a new one)."""
    if not isinstance(conn, sqlite3.Connection):
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_event_id_key ON events(event_id)")
        return
    unique = [row for row in conn.execute("PRAGMA index_list(events)") if row[3] == "u"]  # a column's UNIQUE
    if unique:
        match = re.search(r"CREATE TABLE IF NOT EXISTS events \(.*?\n\);", SCHEMA, re.DOTALL)
        assert match is not None
        conn.execute("ALTER TABLE events RENAME TO events_before_10")  # its triggers follow it, and go with it
        conn.execute(match.group(0))
        columns = ", ".join(sorted(_columns(conn, "events") & _columns(conn, "events_before_10")))
        conn.execute(f"INSERT INTO events ({columns}) SELECT {columns} FROM events_before_10")
        conn.execute("DROP TABLE events_before_10")
        _txn_digests(conn)  # on this shape these two only make their indexes again
        _room_numbers(conn)
    conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS events_event_key ON events {EVENT_KEY.format(c='event_id')}")


def _room_id_dropped(conn: sqlite3.Connection) -> None:
    """``events.room_id`` goes: every row has its room's number (migration 8), and the queries that read an
    event's room by its stream position take the ID from ``room_numbers`` (:data:`ROOM_OF`). The relations
    trigger that read ``NEW.room_id`` is dropped first (SQLite refuses to drop a column a trigger names; on
    PostgreSQL the trigger's function is replaced): relations.py makes it anew when the store opens. SQLite
    rewrites the table (a while on a large store); PostgreSQL only marks the column dropped, and its bytes go
    as rows are rewritten."""
    if "room_id" not in _columns(conn, "events"):
        return
    postgres = not isinstance(conn, sqlite3.Connection)
    missing = conn.execute("SELECT COUNT(*) FROM events WHERE room_nid IS NULL").fetchone()[0]
    if missing:  # every writer since migration 8 sets it; a row without one would lose its room here
        conn.execute("INSERT INTO room_numbers (room_id) SELECT DISTINCT room_id FROM events e WHERE e.room_nid IS"
                     " NULL AND NOT EXISTS (SELECT 1 FROM room_numbers n WHERE n.room_id = e.room_id)")  # fmt: skip
        conn.execute("UPDATE events SET room_nid = (SELECT nid FROM room_numbers n WHERE n.room_id = events.room_id)"
                     " WHERE room_nid IS NULL")  # fmt: skip
    conn.execute("DROP TRIGGER IF EXISTS event_relations_insert" + (" ON events" if postgres else ""))
    conn.execute("ALTER TABLE events DROP COLUMN room_id")


def _txn_mark(room_id: str, event_type: str, user_id: str, device_id: str, key: str) -> txn_keys.TxnMark:
    client_id = txn_keys.client_transaction_id(key)
    if client_id is not None:  # the current form of the key, whichever form it was stored in
        key = txn_keys.transaction_key(room_id, event_type, client_id)
    return txn_keys.mark(user_id, device_id, key)


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


#: the index triggers that read ``pdu`` before ``index_fields`` existed (search.py, relations.py make them anew)
_OLD_TRIGGERS = ("event_search_insert", "event_search_update", "event_search_delete", "event_relations_insert")


def _index_fields(conn: sqlite3.Connection) -> None:
    """Compact events (pdu_codec.py): the search and relations indexes read ``index_fields``, no longer ``pdu``.

    Rows stored before keep their JSON ``pdu`` and get their whole content as
    ``index_fields`` (what the index SQL read of them before); their triggers
    are dropped first, so this rewrite indexes nothing twice, and made anew
    by the index modules when the store opens. On PostgreSQL ``pdu`` becomes
    BYTEA (its JSON text as UTF-8 bytes, a form pdu_codec reads).
    """
    postgres = not isinstance(conn, sqlite3.Connection)
    for name in _OLD_TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}" + (" ON events" if postgres else ""))
    conn.execute("ALTER TABLE events ADD COLUMN index_fields TEXT")
    if postgres:  # lowband_pdu_json: made with the indexes (store/postgres/pdu_json.py) when the schema was
        conn.execute("UPDATE events SET index_fields ="
                     " jsonb_build_object('content', lowband_pdu_json(pdu)->'content')::text")  # fmt: skip
        conn.execute("ALTER TABLE events ALTER COLUMN pdu TYPE BYTEA USING convert_to(pdu, 'UTF8')")
    else:
        conn.execute("UPDATE events SET index_fields = json_object('content', json(json_extract(pdu, '$.content')))")


def _thread_receipts(conn: sqlite3.Connection) -> None:
    """Give ``receipts`` its ``thread_id`` column, part of the key (threaded receipts, spec v1.4): SQLite cannot
    change a primary key in place, so the table is rebuilt once; every stored receipt stays, unthreaded."""
    if "thread_id" in {row[1] for row in conn.execute("PRAGMA table_info(receipts)")}:
        return
    conn.execute("ALTER TABLE receipts RENAME TO receipts_unthreaded")
    conn.execute("DROP INDEX IF EXISTS receipts_stream")
    conn.execute(
        "CREATE TABLE receipts (room_id TEXT NOT NULL, receipt_type TEXT NOT NULL, user_id TEXT NOT NULL,"
        " event_id TEXT NOT NULL, ts INTEGER NOT NULL, stream INTEGER NOT NULL, thread_id TEXT NOT NULL DEFAULT '',"
        " PRIMARY KEY (room_id, receipt_type, user_id, thread_id))"
    )
    conn.execute(
        "INSERT INTO receipts SELECT room_id, receipt_type, user_id, event_id, ts, stream, '' FROM receipts_unthreaded"
    )
    conn.execute("DROP TABLE receipts_unthreaded")
    conn.execute("CREATE INDEX IF NOT EXISTS receipts_stream ON receipts(room_id, stream)")


#: every schema change since the first release, in order (migrations.py: never renumbered or edited)
MIGRATIONS: list[migrations.Migration] = [
    (1, "receipts per thread", _thread_receipts),
    (2, "events.outlier and events.soft_failed", _federation_columns),
    (3, "access tokens kept as SHA-256", _hashed_tokens),
    (4, "users.owner", _account_owners),
    (5, "push_notifications.thread_id", _threaded_notifications),
    (6, "compact events: events.index_fields, events.pdu compressed", _compact_events),
    (7, "transaction keys as 64-bit digests: events.txn_hash", _txn_digests),
    (8, "room numbers: events.room_nid in the room indexes", _room_numbers),
    (9, "events.room_id dropped: the row's room number names its room", _room_id_dropped),
    (10, "event IDs unique by a 17-character key on SQLite: events_event_key", _event_key_index),
]
