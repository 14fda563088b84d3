"""A read-only view of a gateway's store, for a tool in another process (benchmarks).

A benchmark that runs the gateway as a child process checks what reached
the rooms by reading the gateway's database itself, not through the
gateway's API, so the check costs the measured process nothing. It does so
here, so that every query that knows the schema stays in ``store/``.

The file is opened with ``mode=ro``: this never writes, never creates the
schema, and sees what the gateway has committed (WAL lets it read while the
gateway writes). It is not a store: inside the gateway, use the one
``app.open_store`` returns.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from lowband.gateway.store.sqlite.pdu_codec import reader_codec
from lowband.gateway.store.sqlite.schema import ROOM_NID


class ReadOnlyEvents:
    """Committed events of a gateway's database, read from another process."""

    def __init__(self, source: Path | Any, timeout_s: float = 30.0) -> None:
        """Open the SQLite file ``source`` read-only (sqlite3.OperationalError if it does not exist or is not a
        database), or read through ``source``, a reading connection ``app.open_reader`` gave (either store)."""
        if isinstance(source, Path):
            source = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=timeout_s)
        self._conn = source
        self._pdus = reader_codec(source)

    def count_after(self, room_id: str, event_type: str, after: int) -> tuple[int, int | None]:
        """(how many events of ``event_type`` the room has after stream ``after``, the highest stream among them).

        One indexed range scan: cheap enough to poll every few milliseconds.
        """
        count, last = self._conn.execute(
            f"SELECT COUNT(*), MAX(stream) FROM events WHERE room_nid = {ROOM_NID} AND stream > ? AND type = ?",
            (room_id, after, event_type),
        ).fetchone()
        return int(count), last

    def contents(self, room_id: str, event_type: str) -> list[dict[str, Any]]:
        """The content of every event of ``event_type`` in the room, in stream order (rejected ones included)."""
        rows = self._conn.execute(
            f"SELECT pdu FROM events WHERE room_nid = {ROOM_NID} AND type = ? ORDER BY stream", (room_id, event_type)
        ).fetchall()
        contents = []
        for (pdu,) in rows:
            content = self._pdus.decode(pdu).get("content")
            contents.append(content if isinstance(content, dict) else {})
        return contents

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
