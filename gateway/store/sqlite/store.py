"""The SQLite store: accounts, rooms, events, state, receipts, media (the Protocols of ``store/interfaces.py``).

Writes go through the group-committing writer of :class:`Database` and are
awaited until committed; reads are direct. Stream positions (one counter for
events, account data and receipts) are handed out in memory, in the same
order jobs are queued, so the position a client sees only grows.
:attr:`SQLiteStore.persisted` is the highest position known committed; sync
never reads past it. State groups are kept by :mod:`.state_groups`; the
tables of the edges by :mod:`.devices`, :mod:`.mqtt` and :mod:`.federation`, in the same file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Awaitable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from lowband.gateway.matrix.events import Event
from lowband.gateway.store import txn_keys
from lowband.gateway.store.interfaces import (
    MAX_FILTERS_PER_USER,
    DeviceInfo,
    EventRow,
    EventWrite,
    MediaRow,
    RoomHeadRow,
    RoomRow,
    StateGroupWrite,
    StateMap,
    TooManyFilters,
    UserExists,
    UserRow,
    pdu_bytes,
)
from lowband.gateway.store.sqlite.accounts_lifecycle import AccountLifecycleTables
from lowband.gateway.store.sqlite.appservices import AppServiceTables
from lowband.gateway.store.sqlite.database import Database
from lowband.gateway.store.sqlite.devices import SQLiteLinkDevices
from lowband.gateway.store.sqlite.directory_networks import DirectoryNetworkTables
from lowband.gateway.store.sqlite.e2ee import E2EETables
from lowband.gateway.store.sqlite.federation import FederationTables
from lowband.gateway.store.sqlite.mqtt import SQLiteMqttTables
from lowband.gateway.store.sqlite.pdu_codec import PduCodec, index_fields, reader_codec
from lowband.gateway.store.sqlite.presence import PresenceTables
from lowband.gateway.store.sqlite.push import PushTables
from lowband.gateway.store.sqlite.relations import RelationTables
from lowband.gateway.store.sqlite.retention import RetentionTables
from lowband.gateway.store.sqlite.room_keys import RoomKeyTables
from lowband.gateway.store.sqlite.schema import (
    BY_EVENT_ID,
    NEW_ROOM_NUMBER,
    ROOM_NID,
    SCHEMA,
    by_event_ids,
    event_ids_args,
    event_key,
    same_event,
    token_key,
    upgrade,
)
from lowband.gateway.store.sqlite.search import SearchTables
from lowband.gateway.store.sqlite.state_groups import StateGroups
from lowband.gateway.store.txn_keys import TxnMark

_INSERT_EVENT = (
    "INSERT INTO events (stream, event_id, type, state_key, sender, depth, origin_server_ts, pdu, index_fields,"
    " state_before, state_after, rejected, txn_hash, txn_id, outlier, soft_failed, room_nid)"
    f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {ROOM_NID})"
)


log = logging.getLogger(__name__)

_EVENT_COLUMNS = ("event_id, pdu, stream, state_before, state_after, rejected, redacted_by, txn_hash, txn_id,"
                  " outlier, soft_failed")


class SQLiteStore:
    """Persistent state of one gateway in one SQLite file (WAL): a :class:`~lowband.gateway.store.interfaces.Store`."""

    def __init__(self, path: Path | None = None, *, db: Any = None) -> None:
        """The store in the SQLite file at ``path``, or on ``db``: a database with :class:`Database`'s methods
        (``store/postgres/database.py``) that takes this module's SQL."""
        if db is None:
            if path is None:
                raise ValueError("SQLiteStore needs a path or a database")
            db = Database(path, SCHEMA)
        self.db = db
        try:
            self.db.write_sync(upgrade)  # SchemaTooNew: a newer Lowband's database, left as it is
        except BaseException:
            self.db.close()
            raise
        #: how events.pdu is written and read: compressed against the store's dictionaries (pdu_codec.py)
        self.pdus = reader_codec(self.db.reader)
        self.pdus.load_current(self.db.query_one(
            "SELECT id, first_stream, sample FROM pdu_dictionaries ORDER BY id DESC LIMIT 1"))
        row = self.db.query_one(
            "SELECT MAX(m) FROM (SELECT MAX(stream) AS m FROM events UNION ALL "
            "SELECT MAX(stream) FROM account_data UNION ALL SELECT MAX(stream) FROM receipts)"
        )
        self._stream = (row[0] if row and row[0] is not None else 0)
        self.e2ee = E2EETables(self.db, self.next_stream, self._write_at)
        self._stream = max(self._stream, self.e2ee.highest_position())
        self.push = PushTables(self.db)  # push rules, notifications (push.py)
        self._stream = max(self._stream, self.push.highest_position())
        self.persisted = self._stream
        low = self.db.query_one("SELECT MIN(stream) FROM events")
        self._backfill = min(0, low[0] if low and low[0] is not None else 0)
        self._groups = StateGroups(self.db)
        self._tokens: dict[str, tuple[str, str]] = {}
        #: False in a reader worker: another process writes, so no token is taken from memory (access_token)
        self.cache_tokens = True
        self.link_devices = SQLiteLinkDevices(self.db)
        self.mqtt = SQLiteMqttTables(self.db)
        self.federation = FederationTables(self.db)  # creates its own tables (store/sqlite/federation.py)
        self.room_keys = RoomKeyTables(self.db)  # key backups, its own tables (store/sqlite/room_keys.py)
        self.appservices = AppServiceTables(self.db)  # the bridges' push queue (store/sqlite/appservices.py)
        self.directory_networks = DirectoryNetworkTables(self.db)  # bridges' networks (directory_networks.py)
        self.relations = self._relation_tables()  # m.relates_to index, kept by triggers (relations.py)
        self.presence = PresenceTables(self.db)  # presence across restarts, written in batches (presence.py)
        # OpenID tokens, deactivation and erasure (accounts_lifecycle.py)
        self.account_lifecycle = AccountLifecycleTables(self.db, self._forget_cached_tokens)
        self.search = self._search_tables()  # full-text index of message bodies, kept by triggers (search.py)
        self._retention = RetentionTables(self.db)  # MSC1763 purges and their record (retention.py)

    def _relation_tables(self) -> Any:
        """The relations index on this store's database (PostgreSQL has its own: ``store/postgres``)."""
        return RelationTables(self.db)

    def _search_tables(self) -> Any:
        """The full-text index on this store's database (PostgreSQL has its own: ``store/postgres``)."""
        return SearchTables(self.db)

    def close(self) -> None:
        """Flush queued writes and close."""
        self.db.close()

    # ----------------------------------------------------------- positions

    def next_stream(self) -> int:
        """Allocate the next stream position (queue its write right away)."""
        self._stream += 1
        return self._stream

    def backfill_positions(self, count: int) -> list[int]:
        """``count`` positions below every event stored so far, lowest first: history fetched later."""
        self._backfill -= count
        return list(range(self._backfill, self._backfill + count))

    def see_committed_events(self) -> None:
        """Move :attr:`persisted` up to the highest event position committed, by any process: a reader worker
        beside the process that writes (api/http/workers.py). Events commit in the order of their positions
        (:meth:`persist_events`), so every event below it is committed too."""
        row = self.db.query_one("SELECT MAX(stream) FROM events")
        if row and row[0] is not None:
            self._mark_persisted(row[0])

    def mark_committed(self, position: int) -> None:
        """Another process (the main process of a reader worker) says every position up to ``position`` is
        committed: :attr:`persisted` moves up to it."""
        self._mark_persisted(position)

    def _mark_persisted(self, position: int) -> None:
        self.persisted = max(self.persisted, position)

    async def _write_at(self, position: int, fn: Any) -> Any:
        result = await self.db.write(fn)
        self._mark_persisted(position)
        return result

    # ------------------------------------------------------------ accounts

    def create_user_sync(self, user_id: str, password_hash: str, admin: bool, ts: int, *, owner: str | None = None) -> None:
        """Create a user from a command-line tool; UserExists if taken. ``owner``: see :meth:`create_user`."""
        self.db.write_sync(lambda c: _insert_user(c, user_id, password_hash, admin, ts, owner))

    async def create_user(self, user_id: str, password_hash: str, admin: bool, ts: int, *, owner: str | None = None) -> None:
        """Create a user; UserExists if taken.

        ``owner`` is None for a person's account; an edge that creates accounts
        to speak as (``device:NAME``, ``mqtt``) names itself, and speaks only
        as accounts whose owner it is.
        """
        await self.db.write(lambda c: _insert_user(c, user_id, password_hash, admin, ts, owner))

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        """Replace the user's password hash (a rehash with current parameters, or a new password)."""
        await self.db.write(lambda c: c.execute("UPDATE users SET password_hash = ? WHERE user_id = ?",
                                                (password_hash, user_id)))  # fmt: skip

    async def set_admin(self, user_id: str, admin: bool) -> None:
        """Give or take the server admin flag (``users.admin``); no-op for no such user."""
        await self.db.write(lambda c: c.execute("UPDATE users SET admin = ? WHERE user_id = ?", (int(admin), user_id)))

    def get_user(self, user_id: str) -> UserRow | None:
        """The user's row (``owner`` included: None for a person's account), or None."""
        keys = ("user_id", "password_hash", "admin", "displayname", "avatar_url", "deactivated", "owner", "created_ts")
        row = self.db.query_one(f"SELECT {', '.join(keys)} FROM users WHERE user_id = ?", (user_id,))
        if row is None:
            return None
        found = dict(zip(keys, row, strict=True))
        return UserRow(user_id=found["user_id"], password_hash=found["password_hash"], admin=found["admin"],
                       displayname=found["displayname"], avatar_url=found["avatar_url"],
                       deactivated=found["deactivated"], owner=found["owner"], created_ts=found["created_ts"])  # fmt: skip

    async def add_token(self, token: str, user_id: str, device_id: str, display_name: str | None, ts: int) -> None:
        """Store an access token and its device."""

        def fn(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO access_tokens VALUES (?, ?, ?, ?)", (token_key(token), user_id, device_id, ts))
            c.execute(
                "INSERT INTO devices VALUES (?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = "
                "COALESCE(excluded.display_name, devices.display_name)",
                (user_id, device_id, display_name),
            )

        await self.db.write(fn)

    def _forget_cached_tokens(self, user_id: str) -> None:
        """Drop every cached token of ``user_id`` (its tokens are about to end)."""
        for token, owner in list(self._tokens.items()):
            if owner[0] == user_id:
                del self._tokens[token]

    def lookup_token(self, token: str) -> tuple[str, str] | None:
        """(user_id, device_id) for a live token, else None.

        Found tokens are cached: only :meth:`delete_token` ends a token, and
        it drops the cache entry first. A reader worker (``cache_tokens``
        False) asks the store every time: the main process ends tokens.
        """
        cached = self._tokens.get(token)
        if cached is not None:
            return cached
        row = self.db.query_one(
            "SELECT t.user_id, t.device_id FROM access_tokens t JOIN users u USING (user_id) "
            "WHERE t.token = ? AND u.deactivated = 0",
            (token_key(token),),
        )
        if row is None:
            return None
        if not self.cache_tokens:
            return (row[0], row[1])
        if len(self._tokens) > 50_000:
            self._tokens.clear()
        self._tokens[token] = (row[0], row[1])
        return self._tokens[token]

    async def delete_token(self, token: str) -> None:
        """Log a token out."""
        self._tokens.pop(token, None)

        key = token_key(token)

        def fn(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT user_id, device_id FROM access_tokens WHERE token = ?", (key,)).fetchone()
            c.execute("DELETE FROM access_tokens WHERE token = ?", (key,))
            if row is not None:  # a device goes with its last token
                c.execute(
                    "DELETE FROM devices WHERE user_id = ? AND device_id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM access_tokens WHERE user_id = ? AND device_id = ?)",
                    (row[0], row[1], row[0], row[1]),
                )

        await self.db.write(fn)

    async def remove_device(self, user_id: str, device_id: str) -> bool:
        """End every token of the device and forget it; False when there was no such device or token."""
        for token, owner in list(self._tokens.items()):
            if owner == (user_id, device_id):
                del self._tokens[token]

        def fn(c: sqlite3.Connection) -> bool:
            tokens = c.execute("DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user_id, device_id))
            devices = c.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id))
            return tokens.rowcount > 0 or devices.rowcount > 0

        removed: bool = await self.db.write(fn)
        return removed

    async def set_device_display_name(self, user_id: str, device_id: str, name: str | None) -> bool:
        """Rename one of the user's devices; False when there is no such device."""
        cursor = await self.db.write(lambda c: c.execute(
            "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?", (name, user_id, device_id)))
        return bool(cursor.rowcount)

    def user_devices(self, user_id: str) -> list[DeviceInfo]:
        """The user's client devices, by device ID."""
        rows = self.db.query("SELECT device_id, display_name FROM devices WHERE user_id = ? ORDER BY device_id", (user_id,))
        return [DeviceInfo(r[0], r[1]) for r in rows]

    def user_device(self, user_id: str, device_id: str) -> DeviceInfo | None:
        """One of the user's client devices, or None."""
        row = self.db.query_one(
            "SELECT device_id, display_name FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        )
        return DeviceInfo(row[0], row[1]) if row else None

    async def set_profile_field(self, user_id: str, field: str, value: str | None) -> None:
        """Set displayname or avatar_url."""
        if field not in ("displayname", "avatar_url"):
            raise ValueError(field)
        await self.db.write(lambda c: c.execute(f"UPDATE users SET {field} = ? WHERE user_id = ?", (value, user_id)))

    async def add_filter(self, user_id: str, filter_json: str) -> int:
        """Store a filter; returns its ID (per user): the existing one for the same text. TooManyFilters past
        :data:`MAX_FILTERS_PER_USER` different ones."""

        def fn(c: sqlite3.Connection) -> int:
            same = c.execute("SELECT filter_id FROM filters WHERE user_id = ? AND filter_json = ? LIMIT 1",
                             (user_id, filter_json)).fetchone()  # fmt: skip
            if same is not None:
                return int(same[0])
            row = c.execute("SELECT COALESCE(MAX(filter_id), -1) + 1, COUNT(*) FROM filters WHERE user_id = ?",
                            (user_id,)).fetchone()  # fmt: skip
            if row[1] >= MAX_FILTERS_PER_USER:
                raise TooManyFilters(f"{user_id} already has {row[1]} filters")
            c.execute("INSERT INTO filters VALUES (?, ?, ?)", (user_id, row[0], filter_json))
            return int(row[0])

        return int(await self.db.write(fn))

    def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        """A stored filter, or None."""
        if not 0 <= filter_id < 1 << 63:
            return None
        row = self.db.query_one("SELECT filter_json FROM filters WHERE user_id = ? AND filter_id = ?", (user_id, filter_id))
        return json.loads(row[0]) if row else None

    async def set_account_data(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> int:
        """Store account data (room_id '' for global); returns its stream position."""
        position = self.next_stream()
        text = json.dumps(content)
        await self._write_at(
            position,
            lambda c: c.execute(
                "INSERT INTO account_data VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET "
                "content = excluded.content, stream = excluded.stream",
                (user_id, room_id, data_type, text, position),
            ),
        )
        return position

    def get_account_data(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any] | None:
        """One account data entry, or None."""
        row = self.db.query_one(
            "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND data_type = ?",
            (user_id, room_id, data_type),
        )
        return json.loads(row[0]) if row else None

    def account_data_since(self, user_id: str, since: int, upto: int) -> list[tuple[str, str, dict[str, Any]]]:
        """(room_id, type, content) changed in (since, upto]."""
        rows = self.db.query(
            "SELECT room_id, data_type, content FROM account_data WHERE user_id = ? AND stream > ? AND stream <= ?",
            (user_id, since, upto),
        )
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    # --------------------------------------------------------------- rooms

    def get_room(self, room_id: str) -> RoomRow | None:
        """The room's row (version, state group, extremities, depth), or None."""
        row = self.db.query_one(
            "SELECT room_id, room_version, creator, is_public, state_group, extremities, depth FROM rooms WHERE room_id = ?",
            (room_id,),
        )
        if row is None:
            return None
        return {
            "room_id": row[0], "room_version": row[1], "creator": row[2], "is_public": bool(row[3]),
            "state_group": row[4], "extremities": json.loads(row[5]), "depth": row[6],
        }  # fmt: skip

    def public_rooms(self) -> list[str]:
        """IDs of rooms published in the directory."""
        return [r[0] for r in self.db.query("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY room_id")]

    async def set_room_public(self, room_id: str, public: bool) -> None:
        """Publish or unpublish a room in the directory."""
        await self.db.write(lambda c: c.execute("UPDATE rooms SET is_public = ? WHERE room_id = ?", (int(public), room_id)))

    def new_state_group(self, room_id: str, prev_group: int | None, delta: StateMap) -> StateGroupWrite:
        """Allocate a state group, written later with its event (see RoomStore.new_state_group).

        The caller already knows the full state (it computed the delta), so
        the cache is filled here and reads never wait for the write.
        """
        return self._groups.allocate(room_id, prev_group, delta)

    def state_for_group(self, group: int | None) -> StateMap:
        """The full state map of a state group ((type, state_key) → event ID)."""
        return self._groups.state(group)

    def persist_events(self, writes: list[EventWrite], room_row: RoomHeadRow | None) -> Awaitable[None]:
        """Queue events (in order) with their state groups and the room row; await the result.

        One writer job for the whole list: the events commit together or
        not at all. The write is queued before this returns (so events
        commit in the order they were created); the returned awaitable
        completes when it is committed.

        ``room_row`` (extremities, depth, current state group after the last
        event) is written in the same transaction, so a restart resumes
        exactly where the last acknowledged event left the room. Raises
        sqlite3.IntegrityError for a duplicate transaction ID (see
        :meth:`events_for_txns`).
        """
        def row(w: EventWrite) -> tuple[Any, ...]:
            event = w.event
            digest, client_id = txn_keys.mark(*w.txn) if w.txn else (None, None)
            # signs here, in the writer thread, in parallel with the event loop; compressed here too (pdu_codec.py)
            stored = self.pdus.encode(pdu_bytes(event))
            fields = index_fields(event.type, event.state_key, event.pdu.get("content"))
            return (w.position, event.event_id, event.type, event.state_key, event.sender,
                    event.depth, event.origin_server_ts, stored, fields, w.state_before, w.state_after, w.rejected,
                    digest, client_id, int(w.outlier), int(w.soft_failed), event.room_id)  # fmt: skip

        room_args = None
        if room_row is not None and writes:
            room_args = (writes[-1].event.room_id, room_row["room_version"], room_row["creator"],
                         room_row["state_group"], json.dumps(room_row["extremities"]), room_row["depth"])  # fmt: skip

        def fn(c: sqlite3.Connection) -> None:
            for room_id in {w.event.room_id for w in writes}:  # numbered before its first event (schema.py)
                c.execute(NEW_ROOM_NUMBER, (room_id, room_id))
            plain: list[tuple[Any, ...]] = []  # rows with nothing else to write, inserted in one call
            for w in writes:
                event = w.event
                shown = w.rejected is None and not w.outlier and not w.soft_failed
                if w.memberships is not None:
                    memberships: tuple[tuple[str, str, str], ...] = w.memberships
                elif shown and event.type == "m.room.member" and event.state_key is not None:
                    memberships = ((event.state_key, str(event.content.get("membership", "")), event.event_id),)
                else:
                    memberships = ()
                redaction = shown and event.redacts is not None
                special = (w.outlier or w.federate or w.extra_groups or w.replaces_outlier
                           or (not shown and w.rejected is None))  # fmt: skip
                if w.new_group is None and not memberships and not redaction and not special:
                    plain.append(row(w))
                    continue
                if plain:
                    c.executemany(_INSERT_EVENT, plain)
                    plain = []
                for group in w.extra_groups:
                    StateGroups.write(c, group)
                if w.new_group is not None:
                    StateGroups.write(c, w.new_group)
                if w.outlier:  # an outlier already known (or placed) stays as it is
                    c.execute(_INSERT_EVENT.replace("INSERT INTO", "INSERT OR IGNORE INTO"), row(w))
                else:  # an event known as an outlier is placed now: its old row goes
                    c.execute(f"DELETE FROM events WHERE {BY_EVENT_ID} AND outlier = 1",
                              (event_key(event.event_id), event.event_id))  # fmt: skip
                    c.execute(_INSERT_EVENT, row(w))
                for user_id, membership, member_event in memberships:
                    c.execute(
                        "INSERT INTO memberships VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (room_id, user_id) DO UPDATE SET membership ="
                        " excluded.membership, event_id = excluded.event_id, stream = excluded.stream, forgotten = 0",
                        (event.room_id, user_id, membership, member_event, w.position),
                    )  # fmt: skip
                if w.federate:
                    c.execute("INSERT OR IGNORE INTO federation_log VALUES (?, ?, ?)",
                              (w.position, event.event_id, event.room_id))  # fmt: skip
                if redaction and event.redacts is not None:  # (redaction says so; for the type checker)
                    c.execute(f"UPDATE events SET redacted_by = ? WHERE {BY_EVENT_ID} AND room_nid = {ROOM_NID}",
                              (event.event_id, event_key(event.redacts), event.redacts, event.room_id))  # fmt: skip
            if plain:
                c.executemany(_INSERT_EVENT, plain)
            if room_args is not None:
                c.execute(
                    "INSERT INTO rooms (room_id, room_version, creator, state_group, extremities, depth)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (room_id) DO UPDATE SET state_group = excluded.state_group,"
                    " extremities = excluded.extremities, depth = excluded.depth",
                    room_args,
                )  # fmt: skip

        future = self.db.submit(fn)
        last = max((w.position for w in writes), default=0)

        async def committed() -> None:
            await asyncio.wrap_future(future)
            self._mark_persisted(last)
            if self.pdus.due(self.persisted):
                self._new_dictionary()

        return committed()

    def _new_dictionary(self) -> None:
        """Make a compression dictionary from the newest events in a write job of its own; new events use it
        once it has committed (pdu_codec.py)."""
        self.pdus.begin_training()
        position = self.persisted
        done = self.db.submit(lambda c: self.pdus.train(c, position))

        def adopt(f: Future[tuple[int, int, bytes]]) -> None:
            if f.exception() is not None:  # the next persist tries again
                log.warning("making a compression dictionary failed: %s", f.exception())
                self.pdus.training_failed()
            else:
                self.pdus.adopt(*f.result())

        done.add_done_callback(adopt)

    def events_for_txns(self, txns: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
        """Event IDs already sent with any of these transactions (missing ones are absent), found by their
        digests (txn_keys.py). A row whose digest matches but not its kept client ID (a client's key) or its
        sender (an edge's key: edges send as the user they name) is another send whose digest collides: logged,
        and not an answer (writing this send then fails on the unique index)."""
        wanted = {txn_keys.txn_digest(*txn): txn for txn in txns}
        found: dict[tuple[str, str, str], str] = {}
        digests = list(wanted)
        for start in range(0, len(digests), 500):  # well under SQLite's bound-parameter limit
            chunk = digests[start:start + 500]
            rows = self.db.query(
                "SELECT txn_hash, txn_id, event_id, sender FROM events"
                f" WHERE txn_hash IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for digest, client_id, event_id, sender in rows:
                txn = wanted[digest]
                expected = txn_keys.client_transaction_id(txn[2])
                if client_id != expected or (expected is None and sender != txn[0]):
                    log.error("transaction digest %d of %s's device %s matches event %s, sent with another"
                              " transaction: the send is refused", digest, txn[0], txn[1], event_id)  # fmt: skip
                    continue
                found[txn] = event_id
        return found

    def get_event(self, event_id: str) -> EventRow | None:
        """An event row: event, stream, state groups, rejected reason, redacted_by."""
        row = self.db.query_one(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {BY_EVENT_ID}",
            (event_key(event_id), event_id),
        )
        return _event_row(row, self.pdus) if row else None

    def get_events(self, event_ids: list[str]) -> dict[str, EventRow]:
        """The rows of those events that are stored, by event ID, in one query per 500 IDs."""
        found: dict[str, EventRow] = {}
        for start in range(0, len(event_ids), 500):
            part = event_ids[start:start + 500]
            rows = self.db.query(f"SELECT {_EVENT_COLUMNS} FROM events WHERE {by_event_ids(len(part))}",
                                 event_ids_args(part))  # fmt: skip
            for r in rows:
                found[str(r[0])] = _event_row(r, self.pdus)
        return found

    def room_events(
        self, room_id: str, *, after: int, upto: int, limit: int, backwards: bool
    ) -> list[EventRow]:
        """Accepted events of a room with after < stream <= upto, oldest or newest first."""
        order = "DESC" if backwards else "ASC"
        rows = self.db.query(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE room_nid = {ROOM_NID} AND stream > ? AND stream <= ?"
            f" AND rejected IS NULL AND outlier = 0 AND soft_failed = 0 ORDER BY stream {order} LIMIT ?",
            (room_id, after, upto, limit),
        )
        return [_event_row(r, self.pdus) for r in rows]

    def room_events_near_ts(self, room_id: str, ts: int, *, forwards: bool, upto: int, limit: int) -> list[EventRow]:
        """Accepted timeline events at or after ``ts`` (``forwards``) or at or before it, nearest first, among
        the ``limit`` nearest by origin_server_ts (those past ``upto`` or not in the timeline are left out)."""
        # The inner query walks at most ``limit`` entries of events_room_nid_ts (stream, the rowid, is in the
        # index): filtering in one query would walk on past rows it refuses, up to the whole room.
        compare, order = (">=", "ASC") if forwards else ("<=", "DESC")
        rows = self.db.query(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE stream IN (SELECT stream FROM events WHERE room_nid = {ROOM_NID}"
            f" AND origin_server_ts {compare} ? ORDER BY origin_server_ts {order}, stream {order} LIMIT ?)"
            f" AND stream <= ? AND rejected IS NULL AND outlier = 0 AND soft_failed = 0"
            f" ORDER BY origin_server_ts {order}, stream {order}",
            (room_id, ts, limit, upto),
        )
        return [_event_row(r, self.pdus) for r in rows]

    async def purge_history(self, room_id: str, before_ts: int, *, keep: list[str], limit: int) -> list[str]:
        """Delete up to ``limit`` expired non-state events of the room and what derives from them (rules in
        store/sqlite/retention.py); the deleted IDs, oldest first. A purge that deletes something takes a
        stream position (what :meth:`last_purge` gives)."""
        keep_set = set(keep)
        if not self._retention.candidates(room_id, before_ts, keep_set, 1):
            return []  # nothing expired: no position taken, no write queued
        position = self.next_stream()
        deleted: list[str] = await self._write_at(position, self._retention.purge_job(room_id, before_ts, keep_set,
                                                                                       limit, position))  # fmt: skip
        if deleted:
            self._retention.noted(room_id, position, before_ts)
        return deleted

    def last_purge(self, room_id: str) -> tuple[int, int] | None:
        """(stream position, cutoff ts) of the room's last purge that deleted something, or None."""
        return self._retention.last_purge(room_id)

    def all_room_ids(self) -> list[str]:
        """Every room this gateway holds (has a room row for), sorted."""
        return [str(r[0]) for r in self.db.query("SELECT room_id FROM rooms ORDER BY room_id")]

    def rooms_for_user(self, user_id: str) -> list[tuple[str, str, int, str]]:
        """(room_id, membership, stream of that membership, event_id) for every room the user was in."""
        rows = self.db.query(
            "SELECT room_id, membership, stream, event_id FROM memberships WHERE user_id = ? AND forgotten = 0",
            (user_id,),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def users_sharing_rooms(self, user_id: str) -> set[str]:
        """Users joined to at least one room ``user_id`` is joined to (``user_id`` included when joined anywhere)."""
        rows = self.db.query(
            "SELECT DISTINCT other.user_id FROM memberships mine JOIN memberships other USING (room_id) "
            "WHERE mine.user_id = ? AND mine.membership = 'join' AND other.membership = 'join'", (user_id,))
        return {str(r[0]) for r in rows}

    def memberships_in(self, room_ids: list[str], since: int, upto: int) -> list[tuple[str, str, str]]:
        """(room_id, user_id, membership) of the memberships in those rooms set in (since, upto].

        ``since`` below every position (the history floor) gives every current membership up to ``upto``.
        """
        found: list[tuple[str, str, str]] = []
        for i in range(0, len(room_ids), 500):
            part = room_ids[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.query(f"SELECT room_id, user_id, membership FROM memberships WHERE room_id IN ({marks}) "
                                 "AND stream > ? AND stream <= ?", (*part, since, upto))  # fmt: skip
            found += [(str(r[0]), str(r[1]), str(r[2])) for r in rows]
        return found

    def membership(self, room_id: str, user_id: str) -> str | None:
        """The user's current membership in the room, or None."""
        row = self.db.query_one("SELECT membership FROM memberships WHERE room_id = ? AND user_id = ?", (room_id, user_id))
        return row[0] if row else None

    async def forget_room(self, room_id: str, user_id: str) -> None:
        """Hide a room the user has left from their sync."""
        await self.db.write(
            lambda c: c.execute("UPDATE memberships SET forgotten = 1 WHERE room_id = ? AND user_id = ?", (room_id, user_id))
        )

    # ------------------------------------------------------------- aliases

    async def create_alias(self, alias: str, room_id: str, creator: str) -> bool:
        """Map an alias to a room; False if the alias exists."""

        def fn(c: sqlite3.Connection) -> bool:
            return c.execute("INSERT INTO room_aliases VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                             (alias, room_id, creator)).rowcount == 1  # fmt: skip

        return bool(await self.db.write(fn))

    def get_alias(self, alias: str) -> tuple[str, str] | None:
        """(room_id, creator) of an alias, or None."""
        row = self.db.query_one("SELECT room_id, creator FROM room_aliases WHERE alias = ?", (alias,))
        return (row[0], row[1]) if row else None

    async def delete_alias(self, alias: str) -> None:
        """Remove an alias."""
        await self.db.write(lambda c: c.execute("DELETE FROM room_aliases WHERE alias = ?", (alias,)))

    def aliases_for_room(self, room_id: str) -> list[str]:
        """Local aliases pointing at a room."""
        return [r[0] for r in self.db.query("SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY alias", (room_id,))]

    # ------------------------------------------------------------ receipts

    async def set_receipt(self, room_id: str, receipt_type: str, user_id: str, event_id: str, ts: int,
                          thread_id: str | None = None) -> int:  # fmt: skip
        """Store a read receipt (``thread_id`` None: unthreaded); returns its stream position."""
        position = self.next_stream()
        await self._write_at(
            position,
            lambda c: c.execute(
                "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET"
                " event_id = excluded.event_id, ts = excluded.ts, stream = excluded.stream",
                (room_id, receipt_type, user_id, event_id, ts, position, thread_id or ""),
            ),
        )
        return position

    def get_receipt(self, room_id: str, receipt_type: str, user_id: str, thread_id: str | None = None) -> str | None:
        """The event ID the user's receipt of this type (and thread; None: unthreaded) points at, or None."""
        row = self.db.query_one(
            "SELECT event_id FROM receipts WHERE room_id = ? AND receipt_type = ? AND user_id = ? AND thread_id = ?",
            (room_id, receipt_type, user_id, thread_id or ""),
        )
        return str(row[0]) if row else None

    def receipts_since(self, room_id: str, since: int, upto: int) -> list[tuple[str, str, str, int, str | None]]:
        """(receipt_type, user_id, event_id, ts, thread_id or None) stored in (since, upto]."""
        rows = self.db.query(
            "SELECT receipt_type, user_id, event_id, ts, thread_id FROM receipts WHERE room_id = ? AND stream > ?"
            " AND stream <= ?",
            (room_id, since, upto),
        )
        return [(r[0], r[1], r[2], r[3], r[4] or None) for r in rows]

    def read_positions(self, room_id: str, user_id: str) -> dict[str, int]:
        """Per thread key ('' unthreaded, 'main', a thread root), the stream position of the event the user's
        latest read receipt (``m.read`` or ``m.read.private``, the later one) points at; receipts on events not
        stored are left out."""
        rows = self.db.query(
            f"SELECT r.thread_id, MAX(e.stream) FROM receipts r JOIN events e ON {same_event('e.event_id', 'r.event_id')}"
            " WHERE r.room_id = ? AND r.user_id = ? AND r.receipt_type IN ('m.read', 'm.read.private')"
            " GROUP BY r.thread_id",
            (room_id, user_id),
        )
        return {str(r[0]): int(r[1]) for r in rows if r[1] is not None}

    # --------------------------------------------------------------- media

    async def add_media(self, media_id: str, content_type: str, filename: str | None, size: int, sha256: str,
                        user_id: str, ts: int) -> None:  # fmt: skip
        """Record an uploaded file (the bytes are already on disk)."""
        await self.db.write(
            lambda c: c.execute("INSERT INTO media VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (media_id, content_type, filename, size, sha256, user_id, ts))  # fmt: skip
        )

    def media_bytes_of(self, user_id: str) -> int:
        """The bytes of all media ``user_id`` uploaded."""
        row = self.db.query_one("SELECT COALESCE(SUM(size), 0) FROM media WHERE user_id = ?", (user_id,))
        return int(row[0]) if row else 0

    def get_media(self, media_id: str) -> MediaRow | None:
        """Metadata of an uploaded file, or None."""
        row = self.db.query_one("SELECT content_type, filename, size, sha256 FROM media WHERE media_id = ?", (media_id,))
        if row is None:
            return None
        return {"content_type": row[0], "filename": row[1], "size": row[2], "sha256": row[3]}


def _insert_user(c: sqlite3.Connection, user_id: str, password_hash: str, admin: bool, ts: int,
                 owner: str | None) -> None:  # fmt: skip
    inserted = c.execute(
        "INSERT INTO users (user_id, password_hash, admin, created_ts, owner) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING", (user_id, password_hash, int(admin), ts, owner)).rowcount  # fmt: skip
    if inserted != 1:  # a failed statement would leave a PostgreSQL transaction unusable: no try/except here
        raise UserExists(user_id)


def _event_row(row: tuple[Any, ...], pdus: PduCodec) -> EventRow:
    return {
        "event": Event(event_id=row[0], pdu=pdus.decode(row[1])),
        "stream": row[2],
        "state_before": row[3],
        "state_after": row[4],
        "rejected": row[5],
        "redacted_by": row[6],
        "txn": TxnMark(row[7], row[8]) if row[7] is not None else None,
        "outlier": bool(row[9]),
        "soft_failed": bool(row[10]),
    }
