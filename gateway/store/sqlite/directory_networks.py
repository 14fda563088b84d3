"""The room directory per network: rooms a bridge published under one of its third-party networks.

``PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}``
(application services only) adds a row; ``/publicRooms`` with
``third_party_instance_id`` lists one (bridge, network)'s rooms, with
``include_all_networks`` every network's rooms besides the server's own
directory. A row belongs to the bridge that wrote it: a bridge removes
only its own, and each bridge holds at most the ``limit`` its caller gives
(counted inside the write, so parallel requests cannot pass it together).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from lowband.gateway.store.sqlite.database import Database

DIRECTORY_NETWORKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS directory_networks (
    appservice_id TEXT NOT NULL,    -- the bridge's registration id
    network_id TEXT NOT NULL,       -- as the bridge names the network (its protocol instances' network_id)
    room_id TEXT NOT NULL,
    PRIMARY KEY (appservice_id, network_id, room_id)
) WITHOUT ROWID
"""


class DirectoryNetworkTables:
    """Reads and writes of ``directory_networks`` on the gateway's database (a ``DirectoryNetworkStore``)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.db.write_sync(lambda c: c.execute(DIRECTORY_NETWORKS_SCHEMA))

    async def publish(self, appservice_id: str, network_id: str, room_id: str, limit: int) -> bool:
        """List ``room_id`` under the bridge's network; True when listed (also already), False when the bridge
        already lists ``limit`` rooms (nothing written). Committed on return."""

        def fn(c: sqlite3.Connection) -> bool:
            exists = c.execute("SELECT 1 FROM directory_networks WHERE appservice_id = ? AND network_id = ?"
                               " AND room_id = ?", (appservice_id, network_id, room_id)).fetchone()  # fmt: skip
            if exists:
                return True
            held = c.execute("SELECT COUNT(*) FROM directory_networks WHERE appservice_id = ?", (appservice_id,))
            if int(held.fetchone()[0]) >= limit:
                return False
            c.execute("INSERT INTO directory_networks VALUES (?, ?, ?)", (appservice_id, network_id, room_id))
            return True

        return await self.db.write(fn)

    async def unpublish(self, appservice_id: str, network_id: str, room_id: str) -> None:
        """Take ``room_id`` off the bridge's network (no error when it was not listed). Committed on return."""
        await self.db.write(lambda c: c.execute(
            "DELETE FROM directory_networks WHERE appservice_id = ? AND network_id = ? AND room_id = ?",
            (appservice_id, network_id, room_id)))  # fmt: skip

    def rooms(self, appservice_ids: Sequence[str], network_id: str | None = None) -> list[str]:
        """Room IDs listed by any of these bridges (under ``network_id`` only, when given), sorted, once each."""
        if not appservice_ids:
            return []
        marks = ", ".join("?" * len(appservice_ids))
        sql = f"SELECT DISTINCT room_id FROM directory_networks WHERE appservice_id IN ({marks})"
        args: tuple[str, ...] = tuple(appservice_ids)
        if network_id is not None:
            sql += " AND network_id = ?"
            args += (network_id,)
        return [str(r[0]) for r in self.db.query(sql + " ORDER BY room_id", args)]
