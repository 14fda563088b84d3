"""The push tables: a user's notification rows stay bounded, trimmed oldest first."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lowband.gateway.app import open_store
from lowband.gateway.store.interfaces import NotificationRow
from lowband.gateway.store.sqlite.push import MAX_NOTIFICATIONS_PER_USER, TRIM_EVERY


def test_a_users_rows_are_trimmed_back_to_the_cap_oldest_first(tmp_path: Path) -> None:
    store = open_store(tmp_path / "lowband.db")
    writes = MAX_NOTIFICATIONS_PER_USER + 2 * TRIM_EVERY + 7

    async def fill() -> None:
        for i in range(1, writes + 1):
            rows = [NotificationRow(user, i, "!room:localhost", f"$e{i}", ["notify"], False, i)
                    for user in ("@alice:localhost", "@bob:localhost")]  # fmt: skip
            await store.push.add_notifications(rows, i)

    try:
        asyncio.run(fill())
        for user in ("@alice:localhost", "@bob:localhost"):
            count, oldest, newest = store.db.query_one(
                "SELECT COUNT(*), MIN(stream), MAX(stream) FROM push_notifications WHERE user_id = ?", (user,))
            assert MAX_NOTIFICATIONS_PER_USER <= count < MAX_NOTIFICATIONS_PER_USER + TRIM_EVERY
            assert newest == writes and oldest == writes - count + 1  # the newest kept, none in between lost
    finally:
        store.close()
