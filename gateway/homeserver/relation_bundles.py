"""``m.relations`` in ``unsigned``: what the spec (v1.7 and later) asks a server to bundle with an event.

* ``m.thread``: ``latest_event`` (the newest reply, client format), ``count``
  and ``current_user_participated`` (the reader sent the root or a reply, the
  same rule as ``/threads?include=participated``);
* ``m.reference``: ``chunk``, the IDs of the oldest
  :data:`~lowband.gateway.store.sqlite.relations.MAX_BUNDLED_REFERENCES`
  events referencing it;
* ``m.replace``: the most recent valid edit (the original sender's, newest by
  ``origin_server_ts`` then event ID) as a whole event. Since v1.7 the server
  no longer puts the edit's content in place of the original's: the client
  applies ``m.new_content`` itself (the client API advertises up to v1.11).

Annotations are not bundled (the spec dropped their server-side aggregation).
Relations sent by users the reader ignores are left out (ignored.py).
Only relations at stream positions the reader may reach count (``upto``: the
present for a member, the moment they left for one who left), so a user who
left does not learn of later replies. The cost is one query for every
relation of the response's events and one for the events it names, whatever
the number of events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lowband.gateway.homeserver.ignored import ignored_users
from lowband.gateway.store.interfaces import EventRow, Store


def summaries(store: Store, rows: list[EventRow], user_id: str, upto: int,
              render: Callable[[EventRow], dict[str, Any]]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """``m.relations`` per event ID of ``rows`` that has any (redacted events have none); ``render`` turns a
    bundled event (a thread's latest reply, an edit) into its client format."""
    by_id = {r["event"].event_id: r for r in rows if not r.get("redacted_by")}
    if not by_id:
        return {}
    # what the reader's ignored users sent counts nowhere: not in a thread's count or latest reply, nor as a
    # reference (an edit by one is the edit of an event the reader does not see at all)
    found = store.relations.bundles(list(by_id), user_id, upto, ignored_users(store, user_id))
    if not found:
        return {}
    wanted: list[str] = []
    for parent, kinds in found.items():
        if "m.thread" in kinds:
            wanted.append(kinds["m.thread"]["latest"])
        edit = kinds.get("m.replace", {}).get("latest_by", {}).get(by_id[parent]["event"].sender)
        if edit is not None:
            wanted.append(edit)
    fetched = store.get_events(wanted) if wanted else {}
    result: dict[str, dict[str, Any]] = {}
    for parent, kinds in found.items():
        summary: dict[str, Any] = {}
        thread = kinds.get("m.thread")
        latest = fetched.get(thread["latest"]) if thread else None
        if thread and latest is not None:
            started = by_id[parent]["event"].sender == user_id
            summary["m.thread"] = {"latest_event": render(latest), "count": thread["count"],
                                   "current_user_participated": started or thread["participated"]}  # fmt: skip
        if "m.reference" in kinds:
            summary["m.reference"] = {"chunk": [{"event_id": i} for i in kinds["m.reference"]["ids"]]}
        original = by_id[parent]
        edit_id = kinds.get("m.replace", {}).get("latest_by", {}).get(original["event"].sender)
        edit = fetched.get(edit_id) if edit_id is not None else None
        if edit is not None and valid_edit(original, edit):
            summary["m.replace"] = render(edit)
        if summary:
            result[parent] = summary
    return result


def valid_edit(original: EventRow, edit: EventRow) -> bool:
    """Whether ``edit`` may replace ``original`` (the spec's rules a server checks): same sender, same type,
    neither a state event, the original not itself an edit, and an unencrypted edit carrying ``m.new_content``."""
    first, second = original["event"], edit["event"]
    if first.sender != second.sender or first.type != second.type:
        return False
    if first.state_key is not None or second.state_key is not None:
        return False
    relation = first.content.get("m.relates_to")
    if isinstance(relation, dict) and relation.get("rel_type") == "m.replace":
        return False
    return second.type == "m.room.encrypted" or isinstance(second.content.get("m.new_content"), dict)
