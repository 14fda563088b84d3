"""A filter's ``event_fields`` and ``event_format``: the shape of the events a response carries.

Rules (client-server API, "Filtering", Filter):

* ``event_format``: ``client`` (the default) serves the client format;
  ``federation`` serves room events (timeline and state) as their PDU, the
  envelope the federation carries (``auth_events``, ``prev_events``,
  ``depth``, ``hashes``, ``signatures``…), with ``event_id``, ``room_id``
  and ``unsigned`` as the client format has them (a redacted event's PDU is
  its redacted form). Events that are not PDUs (typing, receipts, account
  data, presence) have no federation form: they are served unchanged;
* ``event_fields``: each entry is a dot-separated path (``content.body``);
  a backslash escapes the next character, so ``content.m\\.relates_to``
  names the key ``m.relates_to``. Only the named fields are kept, with the
  objects that lead to them; a path through a value that is not an object,
  or to a key the event lacks, keeps nothing. A path that is a prefix of
  another keeps the whole value. Absent or empty: every field is kept (the
  spec lets a server return more than asked);
* both apply to every event of a ``/sync`` response (joined and left rooms'
  timeline, state, ephemeral and account data; global account data;
  presence). The spec defines them on the Filter that ``/sync`` takes;
  Lowband also honours them in the RoomEventFilter of ``/messages`` and
  ``/context`` (``chunk``, ``state``, ``event``, ``events_before``,
  ``events_after``), which is what a client sending one filter everywhere
  expects.

Cost: the paths are compiled once per request into a tree whose size is
bounded by the filter's (at most :data:`~lowband.gateway.homeserver.filter_check.MAX_LIST`
paths, 16 KiB inline); each event costs at most one walk of that tree. The
federation form costs one batched event read per response.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Union

#: a compiled ``event_fields``: key -> the fields wanted below it, or None for the whole value
FieldTree = dict[str, Union["FieldTree", None]]
#: the raw (federation) form of stored events by ID: redacted PDUs with ``event_id``
RawLookup = Callable[[list[str]], dict[str, dict[str, Any]]]


def split_path(path: str) -> list[str]:
    """The keys of one ``event_fields`` entry: split on ``.``, a backslash escaping the character after it
    (a trailing lone backslash is kept as itself)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in path:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def compile_fields(paths: Iterable[str]) -> FieldTree | None:
    """The tree of ``event_fields`` paths; None when there are none (keep everything)."""
    root: FieldTree = {}
    for path in paths:
        node: FieldTree = root
        keys = split_path(path)
        for key in keys[:-1]:
            if key in node and node[key] is None:
                break  # a shorter path already keeps the whole value
            below = node.get(key)
            if below is None:
                below = {}
                node[key] = below
            node = below
        else:
            node[keys[-1]] = None
    return root or None


def _pick(value: dict[str, Any], tree: FieldTree) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, below in tree.items():
        if key not in value:
            continue
        field = value[key]
        if below is None:
            out[key] = field
        elif isinstance(field, dict):
            picked = _pick(field, below)
            if picked:
                out[key] = picked
    return out


@dataclass(frozen=True)
class EventShape:
    """What a filter asks of the events' shape (see the module rules)."""

    federation: bool = False
    fields: FieldTree | None = None

    @classmethod
    def of(cls, filter_doc: Any) -> EventShape:
        """The shape a filter (a checked Filter or RoomEventFilter, or None) asks for."""
        if not isinstance(filter_doc, dict):
            return PLAIN
        paths = filter_doc.get("event_fields")
        fields = compile_fields(p for p in paths if isinstance(p, str)) if isinstance(paths, list) else None
        return cls(filter_doc.get("event_format") == "federation", fields)

    @property
    def plain(self) -> bool:
        """Whether events are served as they are (client format, every field)."""
        return not self.federation and self.fields is None

    def project(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event with only the wanted fields (the event itself when every field is wanted); never mutates."""
        return event if self.fields is None else _pick(event, self.fields)

    def room_events(self, events: list[dict[str, Any]], raw: RawLookup) -> list[dict[str, Any]]:
        """Client-format room events in the requested shape; ``raw`` gives the federation form when asked."""
        if self.plain or not events:
            return events
        if self.federation:
            found = raw([e["event_id"] for e in events if isinstance(e.get("event_id"), str)])
            events = [_federation_form(e, found.get(e.get("event_id", ""))) for e in events]
        return [self.project(e) for e in events]

    def other_events(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Events that are not PDUs (ephemeral, account data, presence): fields only."""
        return events if self.fields is None else [self.project(e) for e in events]

    def sync_response(self, response: dict[str, Any], raw: RawLookup) -> None:
        """Reshape a ``/sync`` response in place (every section the module rules name)."""
        if self.plain:
            return
        rooms = response.get("rooms", {})
        sections = [*rooms.get("join", {}).values(), *rooms.get("leave", {}).values()]
        found: dict[str, dict[str, Any]] = {}
        if self.federation:  # one read for every room's events
            wanted = [e["event_id"] for room in sections for part in ("timeline", "state")
                      for e in room.get(part, {}).get("events", []) if isinstance(e.get("event_id"), str)]  # fmt: skip
            found = raw(wanted) if wanted else {}
        for room in sections:
            for part in ("timeline", "state"):
                if part in room:
                    room[part]["events"] = self.room_events(room[part]["events"], lambda _ids: found)
            for part in ("ephemeral", "account_data"):
                if part in room:
                    room[part]["events"] = self.other_events(room[part]["events"])
        for part in ("account_data", "presence"):
            if part in response:
                response[part]["events"] = self.other_events(response[part]["events"])


def _federation_form(client: dict[str, Any], pdu: dict[str, Any] | None) -> dict[str, Any]:
    """The PDU's envelope under the client format's keys (a client event whose PDU is gone stays as it is)."""
    if pdu is None:
        return client
    merged = dict(pdu)
    merged.update(client)
    merged["room_id"] = pdu.get("room_id", client.get("room_id"))
    return merged


PLAIN = EventShape()

__all__ = ["PLAIN", "EventShape", "FieldTree", "compile_fields", "split_path"]
