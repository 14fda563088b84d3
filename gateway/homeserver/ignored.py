"""Ignored users: the ``m.ignored_user_list`` account data, and what it hides from the user who keeps it.

Rules (client-server API, "Ignoring Users"):

* a user's list is the keys of ``content["ignored_users"]`` of their global
  ``m.ignored_user_list`` account data; anything malformed there ignores
  nobody (the account data is the client's to write, not ours to refuse);
  oneself is never ignored;
* the non-state events of an ignored user are left out of ``/sync``
  timelines, ``/messages`` and ``/context`` (state events stay: they make
  the room what it is, and clients must see them to show it right);
* an invite from an ignored user is not shown in ``/sync``;
* at most :data:`MAX_IGNORED` users are honoured, so one reader's list keeps
  every check a set lookup of bounded size.
"""

from __future__ import annotations

from typing import Any

from lowband.gateway.store.interfaces import Store

IGNORED_USER_LIST = "m.ignored_user_list"
#: Entries of one list honoured at most (a longer list is cut, in its own order).
MAX_IGNORED = 10_000


def ignored_in(content: Any, user_id: str) -> frozenset[str]:
    """The users an ``m.ignored_user_list`` content ignores (never ``user_id`` itself; empty when malformed)."""
    users = content.get("ignored_users") if isinstance(content, dict) else None
    if not isinstance(users, dict):
        return frozenset()
    found = [u for u in list(users)[:MAX_IGNORED] if isinstance(u, str) and u.startswith("@") and u != user_id]
    return frozenset(found)


def ignored_users(store: Store, user_id: str) -> frozenset[str]:
    """The users ``user_id`` ignores, read from their account data (one store read)."""
    return ignored_in(store.get_account_data(user_id, "", IGNORED_USER_LIST), user_id)
