"""The tables of end-to-end encryption's server half, in the gateway's SQLite file.

* ``e2e_device_keys``: each device's identity keys as the device signed them;
* ``e2e_one_time_keys``: one-time keys not yet claimed (a claim deletes the key
  in the same transaction that reads it, so no key is handed out twice);
* ``e2e_fallback_keys``: one per device and algorithm, handed out when the
  one-time keys run out and marked used, never deleted by a claim;
* ``e2e_cross_signing_keys`` and ``e2e_signatures``: a user's master,
  self-signing and user-signing keys, and signatures uploaded later for
  devices and keys (merged into what ``keys/query`` returns);
* ``e2e_device_list_changes``: the stream position of each user's latest
  device list change (a device, its keys or the user's cross-signing keys);
* ``to_device_inbox``: messages waiting for a device, at stream positions,
  deleted once the device's ``/sync`` shows it has them;
* ``to_device_txns``: the senders' transaction IDs, so a retried
  ``sendToDevice`` delivers nothing twice;
* ``e2e_positions``: the highest stream position ever given to a to-device
  message (the messages themselves are deleted; a restart must not hand
  out their positions again).

Stream positions come from the store's one counter (``SQLiteStore.next_stream``),
so ``/sync`` tokens stay ``s<stream>_<typing>``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from lowband.gateway.store.interfaces import OneTimeKeyConflict, TooManyOneTimeKeys
from lowband.gateway.store.sqlite.database import Database

E2EE_SCHEMA = [
    """
CREATE TABLE IF NOT EXISTS e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    keys TEXT NOT NULL,               -- the device's signed device_keys object, as uploaded
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID
""",
    """
CREATE TABLE IF NOT EXISTS e2e_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
) WITHOUT ROWID
""",
    """
CREATE TABLE IF NOT EXISTS e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
) WITHOUT ROWID
""",
    """
CREATE TABLE IF NOT EXISTS e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    usage TEXT NOT NULL,              -- master, self_signing or user_signing
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, usage)
) WITHOUT ROWID
""",
    """
CREATE TABLE IF NOT EXISTS e2e_signatures (
    target_user TEXT NOT NULL,
    target_key TEXT NOT NULL,         -- a device ID, or the public part of a cross-signing key
    signer_user TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,      -- ed25519:<key>
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user, target_key, signer_user, signer_key_id)
) WITHOUT ROWID
""",
    """
CREATE TABLE IF NOT EXISTS e2e_device_list_changes (
    user_id TEXT PRIMARY KEY,
    stream INTEGER NOT NULL
) WITHOUT ROWID
""",
    "CREATE INDEX IF NOT EXISTS e2e_device_list_changes_stream ON e2e_device_list_changes(stream)",
    """
CREATE TABLE IF NOT EXISTS to_device_inbox (
    stream INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL
)
""",
    "CREATE INDEX IF NOT EXISTS to_device_inbox_device ON to_device_inbox(user_id, device_id, stream)",
    """
CREATE TABLE IF NOT EXISTS to_device_txns (
    sender TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (sender, sender_device, txn_id)
) WITHOUT ROWID
""",
    """
CREATE TABLE IF NOT EXISTS e2e_positions (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID
""",
]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class E2EETables:
    """Reads and writes of the E2EE tables; positions come from, and are reported to, the owning store."""

    def __init__(self, db: Database, next_stream: Callable[[], int],
                 write_at: Callable[[int, Callable[[sqlite3.Connection], Any]], Awaitable[Any]]) -> None:  # fmt: skip
        self.db = db
        self._next_stream = next_stream
        self._write_at = write_at

        def create(c: sqlite3.Connection) -> None:
            for statement in E2EE_SCHEMA:  # one at a time: executescript would commit the writer's transaction
                c.execute(statement)

        self.db.write_sync(create)

    def highest_position(self) -> int:
        """The highest stream position these tables ever used (0 when none)."""
        row = self.db.query_one(
            "SELECT MAX(m) FROM (SELECT MAX(stream) AS m FROM e2e_device_list_changes UNION ALL "
            "SELECT MAX(position) FROM e2e_positions UNION ALL SELECT MAX(stream) FROM to_device_inbox)"
        )
        return int(row[0]) if row and row[0] is not None else 0

    # ------------------------------------------------------------ device keys

    def device_keys(self, user_id: str, device_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """device ID → its uploaded device keys (all the user's devices when ``device_ids`` is None)."""
        if device_ids is None:
            rows = self.db.query("SELECT device_id, keys FROM e2e_device_keys WHERE user_id = ?", (user_id,))
        else:
            wanted = list(dict.fromkeys(device_ids))
            rows = []
            for i in range(0, len(wanted), 500):
                part = wanted[i : i + 500]
                rows += self.db.query(
                    f"SELECT device_id, keys FROM e2e_device_keys WHERE user_id = ? AND device_id IN "
                    f"({','.join('?' * len(part))})",
                    (user_id, *part),
                )
        return {str(r[0]): json.loads(r[1]) for r in rows}

    async def set_device_keys(self, user_id: str, device_id: str, keys: dict[str, Any]) -> bool:
        """Store the device's keys; True (and a device list change) when they differ from those stored."""
        text = _dumps(keys)
        row = self.db.query_one("SELECT keys FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                                (user_id, device_id))  # fmt: skip
        if row is not None and row[0] == text:
            return False
        position = self._next_stream()

        def fn(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO e2e_device_keys VALUES (?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET keys = excluded.keys",
                      (user_id, device_id, text))  # fmt: skip
            _changed(c, [user_id], position)

        await self._write_at(position, fn)
        return True

    async def add_one_time_keys(self, user_id: str, device_id: str, keys: list[tuple[str, str, Any]],
                                max_held: int) -> None:  # fmt: skip
        """Add (algorithm, key ID, key) one-time keys; the same key again is ignored.

        Nothing is stored on OneTimeKeyConflict (a key ID already held with other content) or TooManyOneTimeKeys
        (the device would hold more than ``max_held``; counted in the transaction, so parallel uploads cannot pass
        it together).
        """

        def fn(c: sqlite3.Connection) -> None:
            held = c.execute("SELECT COUNT(*) FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?",
                             (user_id, device_id)).fetchone()[0]  # fmt: skip
            for algorithm, key_id, key in keys:
                text = _dumps(key)
                row = c.execute(
                    "SELECT key_json FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ? "
                    "AND key_id = ?", (user_id, device_id, algorithm, key_id)).fetchone()  # fmt: skip
                if row is not None:
                    if row[0] != text:
                        raise OneTimeKeyConflict(f"one-time key {algorithm}:{key_id} already exists with other content")
                    continue
                held += 1
                if held > max_held:
                    raise TooManyOneTimeKeys(f"a device holds at most {max_held} one-time keys")
                c.execute("INSERT INTO e2e_one_time_keys VALUES (?, ?, ?, ?, ?)",
                          (user_id, device_id, algorithm, key_id, text))  # fmt: skip

        await self.db.write(fn)

    async def set_fallback_keys(self, user_id: str, device_id: str, keys: list[tuple[str, str, Any]]) -> None:
        """Replace the device's fallback key of each algorithm given (unused again); the same key keeps its state."""

        def fn(c: sqlite3.Connection) -> None:
            for algorithm, key_id, key in keys:
                c.execute(
                    "INSERT INTO e2e_fallback_keys VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET "
                    "key_id = excluded.key_id, key_json = excluded.key_json, used = 0 "
                    "WHERE e2e_fallback_keys.key_id != excluded.key_id OR e2e_fallback_keys.key_json != excluded.key_json",
                    (user_id, device_id, algorithm, key_id, _dumps(key)),
                )

        await self.db.write(fn)

    def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]:
        """algorithm → unclaimed one-time keys of the device."""
        rows = self.db.query("SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? "
                             "GROUP BY algorithm", (user_id, device_id))  # fmt: skip
        return {str(r[0]): int(r[1]) for r in rows}

    def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        """Algorithms of the device's fallback keys not handed out since they were uploaded."""
        rows = self.db.query("SELECT algorithm FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ? AND used = 0 "
                             "ORDER BY algorithm", (user_id, device_id))  # fmt: skip
        return [str(r[0]) for r in rows]

    async def claim(self, wanted: list[tuple[str, str, str]]) -> dict[tuple[str, str], tuple[str, Any]]:
        """For each (user, device, algorithm): one one-time key, taken away, else the fallback key, marked used.

        (user, device) → ("algorithm:key_id", key) for those that had one. One transaction: two concurrent
        claims never get the same one-time key.
        """

        def fn(c: sqlite3.Connection) -> dict[tuple[str, str], tuple[str, Any]]:
            found: dict[tuple[str, str], tuple[str, Any]] = {}
            for user_id, device_id, algorithm in wanted:
                if (user_id, device_id) in found:
                    continue
                row = c.execute(
                    "SELECT key_id, key_json FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                    " ORDER BY key_id LIMIT 1", (user_id, device_id, algorithm)).fetchone()  # fmt: skip
                if row is not None:
                    c.execute("DELETE FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ? "
                              "AND key_id = ?", (user_id, device_id, algorithm, row[0]))  # fmt: skip
                else:
                    row = c.execute("SELECT key_id, key_json FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ?"
                                    " AND algorithm = ?", (user_id, device_id, algorithm)).fetchone()  # fmt: skip
                    if row is None:
                        continue
                    c.execute("UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = ? AND device_id = ? AND "
                              "algorithm = ?", (user_id, device_id, algorithm))  # fmt: skip
                found[(user_id, device_id)] = (f"{algorithm}:{row[0]}", json.loads(row[1]))
            return found

        result: dict[tuple[str, str], tuple[str, Any]] = await self.db.write(fn)
        return result

    # --------------------------------------------------------- cross-signing

    def cross_signing_keys(self, user_id: str) -> dict[str, dict[str, Any]]:
        """usage (master, self_signing, user_signing) → the user's key object."""
        rows = self.db.query("SELECT usage, key_json FROM e2e_cross_signing_keys WHERE user_id = ?", (user_id,))
        return {str(r[0]): json.loads(r[1]) for r in rows}

    async def set_cross_signing_keys(self, user_id: str, keys: dict[str, dict[str, Any]]) -> int:
        """Store the given keys (usage → key object) and note a device list change; its position."""
        position = self._next_stream()

        def fn(c: sqlite3.Connection) -> None:
            for usage, key in keys.items():
                c.execute("INSERT INTO e2e_cross_signing_keys VALUES (?, ?, ?) ON CONFLICT (user_id, usage) DO UPDATE SET "
                          "key_json = excluded.key_json", (user_id, usage, _dumps(key)))  # fmt: skip
            _changed(c, [user_id], position)

        await self._write_at(position, fn)
        return position

    def signatures_for(self, target_user: str, target_key: str) -> list[tuple[str, str, str]]:
        """(signer user, signer key ID, signature) uploaded for a device or key of ``target_user``."""
        rows = self.db.query("SELECT signer_user, signer_key_id, signature FROM e2e_signatures WHERE target_user = ? "
                             "AND target_key = ?", (target_user, target_key))  # fmt: skip
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def add_signatures(self, signatures: list[tuple[str, str, str, str, str]]) -> None:
        """Keep (target user, target key, signer user, signer key ID, signature); a change for each target user."""
        if not signatures:
            return
        position = self._next_stream()

        def fn(c: sqlite3.Connection) -> None:
            c.executemany("INSERT INTO e2e_signatures VALUES (?, ?, ?, ?, ?) ON CONFLICT (target_user, target_key, signer_user, signer_key_id) DO UPDATE SET "
                          "signature = excluded.signature", signatures)  # fmt: skip
            _changed(c, sorted({s[0] for s in signatures}), position)

        await self._write_at(position, fn)

    # ----------------------------------------------------------- device lists

    async def device_list_changed(self, user_ids: list[str]) -> int:
        """Note that each user's device list changed (a device added, renamed or deleted); its position."""
        position = self._next_stream()
        await self._write_at(position, lambda c: _changed(c, user_ids, position))
        return position

    def device_lists_changed(self, since: int, upto: int, limit: int = 10_000) -> list[str]:
        """Users whose device list changed in (since, upto]."""
        rows = self.db.query("SELECT user_id FROM e2e_device_list_changes WHERE stream > ? AND stream <= ? LIMIT ?",
                             (since, upto, limit))  # fmt: skip
        return [str(r[0]) for r in rows]

    def device_list_position(self, user_id: str) -> int | None:
        """The stream position of the user's latest device list change (None: never changed)."""
        row = self.db.query_one("SELECT stream FROM e2e_device_list_changes WHERE user_id = ?", (user_id,))
        return int(row[0]) if row else None

    async def delete_device(self, user_id: str, device_id: str) -> None:
        """Forget the device's keys, one-time and fallback keys, waiting messages and signatures of it."""

        def fn(c: sqlite3.Connection) -> None:
            for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys", "to_device_inbox"):
                c.execute(f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?", (user_id, device_id))
            c.execute("DELETE FROM e2e_signatures WHERE target_user = ? AND target_key = ?", (user_id, device_id))

        await self.db.write(fn)

    # -------------------------------------------------------------- to-device

    def seen_txn(self, sender: str, sender_device: str, txn_id: str) -> bool:
        """Whether this sender's device already sent this transaction ID."""
        return self.db.query_one("SELECT 1 FROM to_device_txns WHERE sender = ? AND sender_device = ? AND txn_id = ?",
                                 (sender, sender_device, txn_id)) is not None  # fmt: skip

    def inbox_size(self, user_id: str, device_id: str) -> int:
        """Messages waiting for the device."""
        row = self.db.query_one("SELECT COUNT(*) FROM to_device_inbox WHERE user_id = ? AND device_id = ?",
                                (user_id, device_id))  # fmt: skip
        return int(row[0]) if row else 0

    async def enqueue(self, messages: list[tuple[str, str, str, str, dict[str, Any]]],
                      txn: tuple[str, str, str] | None, ts: int, max_inbox: int) -> int | None:  # fmt: skip
        """Queue (user, device, sender, type, content) messages with the sender's transaction.

        The transaction ID and the messages commit together: a retry after a crash delivers each once. A message
        for a device already holding ``max_inbox`` is left out (checked in the transaction, so parallel senders
        cannot pass the cap together). Returns how many were left out, or None when the transaction was seen.
        """
        positions = [self._next_stream() for _ in messages] or [self._next_stream()]

        def fn(c: sqlite3.Connection) -> int | None:
            if txn is not None:
                if c.execute("SELECT 1 FROM to_device_txns WHERE sender = ? AND sender_device = ? AND txn_id = ?",
                             txn).fetchone():  # fmt: skip
                    return None
                c.execute("INSERT INTO to_device_txns VALUES (?, ?, ?, ?)", (*txn, ts))
            held: dict[tuple[str, str], int] = {}
            rows = []
            for position, (user, device, sender, kind, content) in zip(positions, messages, strict=False):
                if (user, device) not in held:
                    held[(user, device)] = c.execute("SELECT COUNT(*) FROM to_device_inbox WHERE user_id = ? AND "
                                                     "device_id = ?", (user, device)).fetchone()[0]  # fmt: skip
                if held[(user, device)] >= max_inbox:
                    continue
                held[(user, device)] += 1
                rows.append((position, user, device, sender, kind, _dumps(content)))
            c.executemany("INSERT INTO to_device_inbox VALUES (?, ?, ?, ?, ?, ?)", rows)
            c.execute("INSERT INTO e2e_positions VALUES ('to_device', ?) ON CONFLICT (name) DO UPDATE SET "
                      "position = MAX(e2e_positions.position, excluded.position)", (positions[-1],))  # fmt: skip
            return len(messages) - len(rows)

        result: int | None = await self._write_at(positions[-1], fn)
        return result

    def pending(self, user_id: str, device_id: str, since: int, upto: int, limit: int) -> list[tuple[int, str, str, Any]]:
        """(position, sender, type, content) of messages for the device in (since, upto], oldest first."""
        rows = self.db.query("SELECT stream, sender, type, content FROM to_device_inbox WHERE user_id = ? AND "
                             "device_id = ? AND stream > ? AND stream <= ? ORDER BY stream LIMIT ?",
                             (user_id, device_id, since, upto, limit))  # fmt: skip
        return [(int(r[0]), str(r[1]), str(r[2]), json.loads(r[3])) for r in rows]

    async def acknowledge(self, user_id: str, device_id: str, upto: int) -> None:
        """The device has every message up to ``upto``: delete them."""
        if self.db.query_one("SELECT 1 FROM to_device_inbox WHERE user_id = ? AND device_id = ? AND stream <= ? LIMIT 1",
                             (user_id, device_id, upto)) is None:  # fmt: skip
            return
        await self.db.write(lambda c: c.execute(
            "DELETE FROM to_device_inbox WHERE user_id = ? AND device_id = ? AND stream <= ?", (user_id, device_id, upto)))

    async def forget_txns_before(self, ts: int) -> None:
        """Drop remembered transaction IDs older than ``ts`` (a client retries within minutes, not days)."""
        await self.db.write(lambda c: c.execute("DELETE FROM to_device_txns WHERE ts < ?", (ts,)))


def _changed(c: sqlite3.Connection, user_ids: Iterable[str], position: int) -> None:
    c.executemany("INSERT INTO e2e_device_list_changes VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET stream = excluded.stream",
                  [(u, position) for u in user_ids])  # fmt: skip
