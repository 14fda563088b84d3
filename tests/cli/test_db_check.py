"""``lowband db check``: a data dir made by a real gateway is clean; copies damaged in one way each are not, and
the check that says so is the one that looks at that damage; what cannot be checked is a usage error."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from harness import Client, expect, users_gateway

from lowband.gateway.cli.main import main

# `lowband db check` reads the SQLite file (gateway/store/sqlite/integrity.py); a PostgreSQL store has no such check.
pytestmark = pytest.mark.sqlite_only

V3 = "/_matrix/client/v3"


async def _send(client: Client, room_id: str, content: dict[str, Any]) -> str:
    path = f"{V3}/rooms/{quote(room_id, safe='')}/send/m.room.message/{time.monotonic_ns()}"
    return str(expect(await client.request("PUT", path, content), 200)["event_id"])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A stopped gateway's data dir with two rooms, messages, a thread, a reaction and an edit; the IDs used."""
    tmp = tmp_path_factory.mktemp("dbcheck")
    ids: dict[str, str] = {}

    async def run() -> None:
        async with users_gateway(tmp, "alice", "bob") as ((alice, bob), _, _):
            room = expect(await alice.request("POST", V3 + "/createRoom", {"preset": "public_chat"}), 200)["room_id"]
            expect(await bob.request("POST", f"{V3}/join/{quote(room, safe='')}", {}), 200)
            other = expect(await bob.request("POST", V3 + "/createRoom", {"name": "second"}), 200)["room_id"]
            ids["first"] = await _send(alice, room, {"msgtype": "m.text", "body": "hello lighthouse"})
            ids["reply"] = await _send(bob, room, {"msgtype": "m.text", "body": "in a thread", "m.relates_to": {
                "rel_type": "m.thread", "event_id": ids["first"]}})  # fmt: skip
            path = f"{V3}/rooms/{quote(room, safe='')}/send/m.reaction/r1"
            expect(await bob.request("PUT", path, {"m.relates_to": {
                "rel_type": "m.annotation", "event_id": ids["first"], "key": "+1"}}), 200)  # fmt: skip
            for n in range(5):
                ids[f"m{n}"] = await _send(alice if n % 2 else bob, room, {"msgtype": "m.text", "body": f"note {n}"})
            await _send(bob, other, {"msgtype": "m.text", "body": "elsewhere"})
            ids["room"] = room

    asyncio.run(asyncio.wait_for(run(), 60))
    return tmp / "data", ids


def _copy(made: tuple[Path, dict[str, str]], tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(made[0], target, ignore=shutil.ignore_patterns("media"))
    return target


def _check(data_dir: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["db", "check", "--data-dir", str(data_dir), "--json", *extra])
    return status, (json.loads(out.getvalue()) if out.getvalue() else {})


def _damage(data_dir: Path, change: Callable[[sqlite3.Connection], None]) -> None:
    conn = sqlite3.connect(data_dir / "lowband.db")
    with conn:
        change(conn)
    conn.close()


def _failing(report: dict[str, Any]) -> set[str]:
    return {name for name, check in report["checks"].items() if check["problems"]}


def test_db_check_clean_gateway(made: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    status, report = _check(made[0])
    assert status == 0, report
    assert report["ok"] and report["problems"] == 0
    assert report["checks"]["events"]["checked"] >= 12
    assert report["checks"]["relations"]["checked"] >= 2  # the thread reply and the reaction
    assert report["checks"]["search"]["checked"] >= 8
    quick_status, quick = _check(made[0], "--quick")
    assert quick_status == 0 and "events" not in quick["checks"]
    assert main(["db", "check", "--data-dir", str(made[0])]) == 0  # the text report
    assert capsys.readouterr().out.strip().endswith("clean")


def test_db_check_missing_prev_event(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    data_dir = _copy(made, tmp_path)
    _damage(data_dir, lambda c: c.execute("DELETE FROM events WHERE event_id = ?", (made[1]["m2"],)))
    status, report = _check(data_dir)
    assert status == 1
    assert "dag" in _failing(report)
    assert any(made[1]["m2"] in line for line in report["checks"]["dag"]["examples"])


def test_db_check_retention_gap_is_not_a_problem(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    data_dir = _copy(made, tmp_path)

    def purge(c: sqlite3.Connection) -> None:
        # what a retention purge does (store/sqlite/retention.py): the event, its notifications, the record
        c.execute("DELETE FROM events WHERE event_id = ?", (made[1]["m2"],))
        c.execute("DELETE FROM push_notifications WHERE event_id = ?", (made[1]["m2"],))
        c.execute("INSERT INTO retention_purges VALUES (?, 1, 1)", (made[1]["room"],))

    _damage(data_dir, purge)
    status, report = _check(data_dir)
    assert status == 0, report
    assert report["checks"]["dag"]["notes"]


def test_db_check_changed_event_json(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    data_dir = _copy(made, tmp_path)
    _damage(data_dir, lambda c: _edit_pdu(c, made[1]["m3"], lambda text: text.replace("note 3", "note 9")))
    status, report = _check(data_dir)
    assert status == 1
    assert _failing(report) == {"events"}
    assert made[1]["m3"] in report["checks"]["events"]["examples"][0]
    # --quick skips the hashing: it cannot see this
    assert _check(data_dir, "--quick")[0] == 0


def _edit_pdu(c: sqlite3.Connection, event_id: str, edit: Callable[[str], str]) -> None:
    """Rewrite one event's stored JSON (decompressed, edited, stored as plain JSON: a form the store reads)."""
    from lowband.gateway.store.sqlite.pdu_codec import reader_codec

    stored = c.execute("SELECT pdu FROM events WHERE event_id = ?", (event_id,)).fetchone()[0]
    text = reader_codec(c).decode_bytes(stored).decode()
    c.execute("UPDATE events SET pdu = ? WHERE event_id = ?", (edit(text), event_id))


def test_db_check_damaged_compressed_event(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """A compressed PDU with a byte flipped, and one naming a dictionary the file lacks: both found, named."""
    data_dir = _copy(made, tmp_path)

    def damage(c: sqlite3.Connection) -> None:
        packed = [(e, bytes(p)) for e, p in c.execute("SELECT event_id, pdu FROM events WHERE typeof(pdu) = 'blob'"
                                                       " AND substr(pdu, 1, 1) IN (x'01', x'02') ORDER BY stream DESC LIMIT 2")]
        assert len(packed) == 2, "the fixture's events are compressed"
        (first, a), (second, b) = packed
        c.execute("UPDATE events SET pdu = ? WHERE event_id = ?", (a[:-3] + bytes([a[-3] ^ 0x55]) + a[-2:], first))
        c.execute("UPDATE events SET pdu = ? WHERE event_id = ?", (b[:1] + b"\x7f" + b[2:], second))

    _damage(data_dir, damage)
    status, report = _check(data_dir)
    assert status == 1
    examples = " | ".join(report["checks"]["events"]["examples"])
    assert "dictionary 127 is missing" in examples
    assert "stored PDU" in examples


def test_db_check_index_fields_that_differ(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """index_fields is what search and relations read: one that no longer matches its event is a finding."""
    data_dir = _copy(made, tmp_path)
    _damage(data_dir, lambda c: c.execute("UPDATE events SET index_fields = '{\"content\":{\"body\":\"other\"}}'"
                                          " WHERE event_id = ?", (made[1]["m2"],)))  # fmt: skip
    status, report = _check(data_dir)
    assert status == 1 and "events" in _failing(report)
    assert any("index_fields differ" in line and made[1]["m2"] in line for line in report["checks"]["events"]["examples"])


def test_db_check_unparsable_event_json(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    data_dir = _copy(made, tmp_path)

    def garble(c: sqlite3.Connection) -> None:
        for trigger in ("event_search_update",):  # its JSON functions would refuse the write
            c.execute(f"DROP TRIGGER {trigger}")
        c.execute("UPDATE events SET pdu = '{\"broken' WHERE event_id = ?", (made[1]["m4"],))

    _damage(data_dir, garble)
    status, report = _check(data_dir)
    assert status == 1
    assert "stored PDU: not JSON" in report["checks"]["events"]["examples"][0]


def test_db_check_broken_search_index(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    data_dir = _copy(made, tmp_path)

    def unindex(c: sqlite3.Connection) -> None:
        stream = c.execute("SELECT stream FROM events WHERE event_id = ?", (made[1]["m1"],)).fetchone()[0]
        # a contentless FTS5 row is deleted by repeating its text: the event stays, its index entry goes
        c.execute("INSERT INTO event_search (event_search, rowid, value) VALUES ('delete', ?, 'note 1')", (stream,))
        c.execute("INSERT INTO event_search (rowid, value) VALUES (999999, 'ghost')")

    _damage(data_dir, unindex)
    status, report = _check(data_dir)
    assert status == 1
    assert _failing(report) == {"search"}
    assert report["checks"]["search"]["problems"] == 2


def test_db_check_broken_relations_and_state(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    data_dir = _copy(made, tmp_path)

    def damage(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM event_relations WHERE child_id = ?", (made[1]["reply"],))
        group = c.execute("SELECT state_group FROM rooms WHERE room_id = ?", (made[1]["room"],)).fetchone()[0]
        c.execute("DELETE FROM state_groups WHERE id = ?", (group,))

    _damage(data_dir, damage)
    status, report = _check(data_dir)
    assert status == 1
    assert {"relations", "state"} <= _failing(report)


def test_db_check_truncated_file(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    data_dir = _copy(made, tmp_path)
    for suffix in ("-wal", "-shm"):
        (data_dir / f"lowband.db{suffix}").unlink(missing_ok=True)
    path = data_dir / "lowband.db"
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size * 2 // 3)
    status, report = _check(data_dir)
    assert status == 1
    assert "sqlite" in _failing(report)


def test_db_check_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "check", "--data-dir", str(tmp_path / "absent")]) == 2
    assert "no data dir" in capsys.readouterr().err
    assert main(["db", "check", "--data-dir", str(tmp_path)]) == 2  # a dir without a database
    (tmp_path / "lowband.db").write_bytes(b"not a database at all" * 100)
    assert main(["db", "check", "--data-dir", str(tmp_path)]) == 2
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / "lowband.db").execute("CREATE TABLE t (x)").connection.close()
    assert main(["db", "check", "--data-dir", str(other)]) == 2
    assert "not a Lowband database" in capsys.readouterr().err


def test_db_check_beside_a_writer(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """A connection in the middle of a write transaction (as a live gateway's writer is) does not stop the check:
    WAL lets it read the last committed state."""
    data_dir = _copy(made, tmp_path)
    writer = sqlite3.connect(data_dir / "lowband.db", isolation_level=None)
    try:
        assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        writer.execute("BEGIN IMMEDIATE")
        _edit_pdu(writer, made[1]["m0"], lambda text: text.replace("note 0", "changed"))
        status, report = _check(data_dir)
        assert status == 0, report
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_db_check_event_stored_redacted_is_clean(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Federation stores an event whose content hash was wrong in its redacted form: its ID still matches, and
    its hash cannot; that is not damage. The same change with content left in is."""
    data_dir = _copy(made, tmp_path)

    def prune(c: sqlite3.Connection) -> None:
        _edit_pdu(c, made[1]["m3"], lambda text: json.dumps({**json.loads(text), "content": {}}))
        c.execute("UPDATE events SET index_fields = NULL WHERE event_id = ?", (made[1]["m3"],))  # as stored then

    _damage(data_dir, prune)
    status, report = _check(data_dir)
    assert status == 0, report
    _damage(data_dir, lambda c: _edit_pdu(c, made[1]["m3"], lambda text: json.dumps(
        {**json.loads(text), "content": {"body": "x"}})))
    assert _check(data_dir)[0] == 1


def test_db_check_gap_in_a_room_with_remote_members_is_noted(made: tuple[Path, dict[str, str]],
                                                             tmp_path: Path) -> None:  # fmt: skip
    """History from before this server joined is not stored: a room with members on other servers may miss prev
    events without damage. The same gap in a local-only room is a problem (test_db_check_missing_prev_event)."""
    data_dir = _copy(made, tmp_path)

    def federate(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM events WHERE event_id = ?", (made[1]["m2"],))
        c.execute("DELETE FROM push_notifications WHERE event_id = ?", (made[1]["m2"],))
        # a member on another server (only the sender column is read for this: the events check would see the
        # edit, so this event's JSON is left alone and the events check is not asked)
        c.execute("UPDATE events SET sender = '@carol:elsewhere.example' WHERE event_id = ?", (made[1]["m4"],))

    _damage(data_dir, federate)
    status, report = _check(data_dir)
    assert report["checks"]["dag"]["problems"] == 0, report["checks"]["dag"]
    assert any("remote members" in note for note in report["checks"]["dag"]["notes"])
    assert _failing(report) == {"events"} and status == 1  # the sender column no longer matches its JSON


def test_db_check_event_with_another_rooms_number(made: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """An event whose room number (what the room indexes hold) is not its room's: it would be listed in another
    room's history, and missing from its own."""
    data_dir = _copy(made, tmp_path)

    def damage(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO room_numbers (room_id) VALUES ('!elsewhere:x')")
        c.execute("UPDATE events SET room_nid = (SELECT nid FROM room_numbers WHERE room_id = '!elsewhere:x')"
                  " WHERE event_id = ?", (made[1]["m3"],))  # fmt: skip

    _damage(data_dir, damage)
    status, report = _check(data_dir)
    assert status == 1 and _failing(report) == {"events"}
    assert made[1]["m3"] in report["checks"]["events"]["examples"][0]
    assert "is not its room's" in report["checks"]["events"]["examples"][0]
