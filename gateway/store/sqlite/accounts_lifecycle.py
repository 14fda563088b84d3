"""An account's later life in the SQLite file: OpenID tokens, deactivation and erasure, what ``whois`` shows.

* ``openid_tokens``: tokens a user hands to a third party (an integration manager, a widget) so that it can
  ask this server, over federation, who the user is. Kept as ``token_key`` (SHA-256, like access tokens), with
  their expiry; expired ones are deleted whenever a new one is issued, and a user holds at most
  ``max_per_user`` (the oldest go first).
* a guest upgraded to a full account keeps its row (user ID, rooms, devices): its ``owner`` (``guest``)
  is cleared and it gets a password hash.
* deactivation marks ``users.deactivated`` (the row stays, so the user ID is never registered again), clears
  the profile and ends every token and device in one transaction; erasure also deletes the account data
  and the stored filters, and records the user in ``erased_users``: the homeserver keeps that (small) set in
  memory and serves the user's events redacted to readers who were not in the room when they were sent.

The tables are created when the store opens (``CREATE TABLE IF NOT EXISTS``), as relations.py does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from lowband.gateway.store.sqlite.database import Database
from lowband.gateway.store.sqlite.schema import token_key

ACCOUNTS_LIFECYCLE_SCHEMA = [
    """
CREATE TABLE IF NOT EXISTS openid_tokens (
    token TEXT PRIMARY KEY,         -- token_key(token): never the token itself
    user_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID
""",
    "CREATE INDEX IF NOT EXISTS openid_tokens_user ON openid_tokens(user_id, created_ms)",
    "CREATE INDEX IF NOT EXISTS openid_tokens_expiry ON openid_tokens(expires_ms)",
    # users deactivated with erase: true (homeserver/erasure.py); a row is never removed
    "CREATE TABLE IF NOT EXISTS erased_users (user_id TEXT PRIMARY KEY, erased_ms INTEGER NOT NULL) WITHOUT ROWID",
]


class AccountLifecycleTables:
    """OpenID tokens, deactivation and erasure (an
    :class:`~lowband.gateway.store.interfaces.AccountLifecycleStore`); writes are committed on return."""

    def __init__(self, db: Database, forget_cached_tokens: Callable[[str], None]) -> None:
        self.db = db
        self._forget_cached_tokens = forget_cached_tokens
        db.write_sync(_create_tables)

    # ------------------------------------------------------------------ OpenID

    async def add_openid_token(self, token: str, user_id: str, now_ms: int, lifetime_ms: int,
                               max_per_user: int) -> None:  # fmt: skip
        """Store a new OpenID token of ``user_id`` valid until ``now_ms + lifetime_ms``.

        Deletes every expired token first, and the user's oldest while they hold ``max_per_user``.
        """
        key = token_key(token)

        def fn(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM openid_tokens WHERE expires_ms <= ?", (now_ms,))
            c.execute("DELETE FROM openid_tokens WHERE token IN (SELECT token FROM openid_tokens WHERE user_id = ?"
                      " ORDER BY created_ms DESC LIMIT -1 OFFSET ?)", (user_id, max(0, max_per_user - 1)))  # fmt: skip
            c.execute("INSERT INTO openid_tokens VALUES (?, ?, ?, ?)", (key, user_id, now_ms, now_ms + lifetime_ms))

        await self.db.write(fn)

    def openid_user(self, token: str, now_ms: int) -> str | None:
        """The user an unexpired OpenID token was issued to (and who is not deactivated), or None."""
        row = self.db.query_one(
            "SELECT o.user_id FROM openid_tokens o JOIN users u USING (user_id)"
            " WHERE o.token = ? AND o.expires_ms > ? AND u.deactivated = 0", (token_key(token), now_ms))  # fmt: skip
        return str(row[0]) if row else None

    # ------------------------------------------------------------ guest upgrade

    async def upgrade_guest(self, user_id: str, guest_owner: str, password_hash: str) -> bool:
        """Make the guest account ``user_id`` (``users.owner`` = ``guest_owner``, not deactivated) a full
        account with ``password_hash``; whether it was such a guest (False: nothing changed)."""

        def fn(c: sqlite3.Connection) -> bool:
            cursor = c.execute("UPDATE users SET owner = NULL, password_hash = ? WHERE user_id = ? AND owner = ?"
                               " AND deactivated = 0", (password_hash, user_id, guest_owner))  # fmt: skip
            return cursor.rowcount == 1

        return bool(await self.db.write(fn))

    # ------------------------------------------------------------ deactivation

    async def deactivate(self, user_id: str, *, erase: bool, now_ms: int = 0) -> None:
        """Mark the user deactivated, clear their profile, end every access and OpenID token and device;
        with ``erase`` also delete their account data and filters and record the user as erased (at
        ``now_ms``). The row (and password hash) stays: the user ID is never free again, and a login with the
        right password learns it was deactivated."""
        self._forget_cached_tokens(user_id)

        def fn(c: sqlite3.Connection) -> None:
            c.execute("UPDATE users SET deactivated = 1, displayname = NULL, avatar_url = NULL WHERE user_id = ?",
                      (user_id,))  # fmt: skip
            for table in ("access_tokens", "devices", "openid_tokens"):
                c.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
            if erase:
                c.execute("DELETE FROM account_data WHERE user_id = ?", (user_id,))
                c.execute("DELETE FROM filters WHERE user_id = ?", (user_id,))
                c.execute("INSERT OR IGNORE INTO erased_users VALUES (?, ?)", (user_id, now_ms))

        await self.db.write(fn)
        self._forget_cached_tokens(user_id)  # a lookup that ran while the write was queued

    def is_erased(self, user_id: str) -> bool:
        """Whether ``user_id`` was deactivated with ``erase`` (one primary-key lookup)."""
        return self.db.query_one("SELECT 1 FROM erased_users WHERE user_id = ?", (user_id,)) is not None

    def erased_users(self) -> list[str]:
        """Every user deactivated with ``erase``, in no particular order."""
        return [str(user_id) for user_id, in self.db.query("SELECT user_id FROM erased_users", ())]

    # ------------------------------------------------------------------ whois

    def device_sessions(self, user_id: str) -> dict[str, list[int]]:
        """Per device of the user, the creation times (ms) of its live access tokens, oldest first."""
        found: dict[str, list[int]] = {}
        for device_id, in self.db.query("SELECT device_id FROM devices WHERE user_id = ?", (user_id,)):
            found[str(device_id)] = []
        rows = self.db.query("SELECT device_id, created_ts FROM access_tokens WHERE user_id = ? ORDER BY created_ts",
                             (user_id,))  # fmt: skip
        for device_id, created in rows:
            found.setdefault(str(device_id), []).append(int(created))
        return found


def _create_tables(c: sqlite3.Connection) -> None:
    for statement in ACCOUNTS_LIFECYCLE_SCHEMA:  # one per execute: executescript would commit the writer's batch
        c.execute(statement)
