"""``POST /user_directory/search``: find users by the start of their user ID's localpart or of a word of their
display name.

Who can be found (``[user_directory] search_all_users`` in the config):

* ``false`` (the default): users who share a joined room with the searcher,
  and users joined to a room published in the room directory (anyone can
  see those members by joining);
* ``true``: every local account and every user joined to a room this server
  holds.

Deactivated accounts are never found. Nothing is cached or indexed apart from
the store's own indexes: each search reads the memberships and profiles as
they are now, so a join, a leave or a new display name shows at once. The
answer holds at most ``limit`` users (default :data:`DEFAULT_LIMIT`, at most
:data:`MAX_LIMIT`); ``limited`` says more matched. Users sharing a room with
the searcher come first.
"""

from __future__ import annotations

from typing import Any

from lowband.gateway.matrix.errors import bad_json, required_text
from lowband.gateway.store.interfaces import Store

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
#: the longest search term taken (characters)
MAX_TERM_CHARS = 256


def _like(text: str) -> str:
    """``text`` with LIKE's wildcards (and the escape character) escaped by ``\\``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class UserDirectory:
    """Answers user directory searches from the store's memberships and profiles."""

    def __init__(self, store: Store, *, search_all_users: bool = False) -> None:
        self.store = store
        self.search_all_users = search_all_users

    def search(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The response to ``body`` (``search_term``, optional ``limit``) for ``user_id``.

        400 M_MISSING_PARAM without ``search_term``, M_BAD_JSON when it is not a string or ``limit`` not a
        positive integer, M_INVALID_PARAM for a term longer than :data:`MAX_TERM_CHARS`.
        """
        term = required_text(body, "search_term", MAX_TERM_CHARS)
        limit = body.get("limit", DEFAULT_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise bad_json("'limit' must be a positive integer")
        limit = min(limit, MAX_LIMIT)
        term = term.strip().lstrip("@")
        pattern = _like(term)
        found = self.store.search.directory_users(
            user_id, self.store.public_rooms(), everyone=self.search_all_users, user_id_like=f"@{pattern}%",
            name_like=(f"{pattern}%", f"% {pattern}%"), limit=limit + 1,
        )  # fmt: skip
        results = []
        for found_id, name, avatar in found[:limit]:
            entry: dict[str, Any] = {"user_id": found_id}
            if name is not None:
                entry["display_name"] = name
            if avatar is not None:
                entry["avatar_url"] = avatar
            results.append(entry)
        return {"results": results, "limited": len(found) > limit}
