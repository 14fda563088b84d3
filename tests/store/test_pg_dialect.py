"""SQLite's SQL as the PostgreSQL store sends it (store/postgres/dialect.py): exact translations of each rule."""

from __future__ import annotations

import pytest

from lowband.gateway.store.postgres.dialect import UnsupportedSQL, translate


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        # scalar MAX/MIN (two arguments) become GREATEST/LEAST; the aggregate (one) stays, nested ones too
        ("SELECT MAX(a, b), MAX(c) FROM x WHERE y = ?", "SELECT GREATEST(a, b), MAX(c) FROM x WHERE y = %s"),
        ("SELECT MIN(x, (SELECT MAX(y) FROM z)) FROM w", "SELECT LEAST(x, (SELECT MAX(y) FROM z)) FROM w"),
        # CAST(… AS BLOB): the text's UTF-8 bytes, whatever the argument holds; other casts keep their form
        ("SELECT CAST(name AS BLOB), CAST(n AS INTEGER) FROM t",
         "SELECT convert_to(name , 'UTF8'), CAST(n AS BIGINT) FROM t"),
        ("SELECT CAST(substr(a, 1, (2)) AS BLOB) FROM t", "SELECT convert_to(substr(a, 1, (2)) , 'UTF8') FROM t"),
        # an unnamed subquery in FROM or JOIN gets a name; a named one keeps it; % is escaped; LIMIT -1 is ALL
        ("SELECT * FROM (SELECT a FROM t) WHERE b LIKE '%x' LIMIT -1",
         "SELECT * FROM (SELECT a FROM t) AS _sub1 WHERE b LIKE '%%x' LIMIT ALL"),
        ("SELECT * FROM (SELECT a FROM t) s JOIN (SELECT b FROM u) ON 1",
         "SELECT * FROM (SELECT a FROM t) s JOIN (SELECT b FROM u) AS _sub1 ON 1"),
        ("INSERT OR IGNORE INTO t VALUES (?, ?)", "INSERT INTO t VALUES (%s, %s) ON CONFLICT DO NOTHING"),
    ],
)
def test_translation(sqlite: str, postgres: str) -> None:
    assert translate(sqlite) == postgres


def test_insert_or_replace_is_refused() -> None:
    with pytest.raises(UnsupportedSQL):
        translate("INSERT OR REPLACE INTO t VALUES (?)")
