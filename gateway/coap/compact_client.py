"""Client side of compact mode (docs/protocol/coap-compact.md): :class:`CompactClient`, one per connection.

The wire rules are in :mod:`lowband.gateway.coap.compact` (which also holds the
server side, :class:`~lowband.gateway.coap.compact.CompactSession`); this module
mirrors a session's alias tables, encodes requests with them and decodes the
compact answers back to MSC3079 JSON with full IDs. Sans-I/O: the caller sends
the requests. Malformed answers raise :class:`~lowband.gateway.coap.compact.CompactError`.

Unknown-alias recovery lives here, for every client (gateway/coap/client.py and
sim/coap_peer.py): the server counts a definition as known once any later
request arrives, so under loss an answer can name a room, user or type alias
whose definition this client never got. :meth:`CompactClient.decode` lists such
aliases in :attr:`Decoded.unknown`; the caller sends :meth:`CompactClient.lookup_path`
(``GET ~/{kind}/{n}``) for each, hands the answers to :meth:`CompactClient.learn_lookup`,
and decodes the first answer again. A 4.04 ``ORG.LOWBAND_UNKNOWN_ALIAS`` (the
server forgot an alias the request used) drops the request's aliases and sets
:attr:`Decoded.retry`: the caller encodes the request again, once, with full IDs.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

from lowband.codecs import cbor, msc3079
from lowband.codecs import coap as C
from lowband.codecs.errors import WireError
from lowband.gateway.coap.compact import (
    _COUNTS,
    _EVENT_ANSWER,
    _ROOM_ANSWER,
    _SEND,
    _STICKY_ROOM,
    _STICKY_TOP,
    _SYNC,
    ALIAS_CODE,
    CLIENT_MAX_ALIASES,
    ERR_UNKNOWN_ALIAS,
    KINDS,
    MAX_BATCHES,
    MAX_SENT,
    MAX_VALUE_CHARS,
    PARAMS,
    PROFILE_COMPACT_V1,
    STATIC_TYPES,
    CompactError,
    _from_msc,
    _is_m_text,
    _is_uint,
    _loads,
    escape_segment,
    parse_ref_segment,
    unescape_segment,
)


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A decoded answer (:meth:`CompactClient.decode`).

    ``value``: the JSON value (None for an empty payload); an alias this
    client does not know appears in it as ``"~n"``. ``unknown``: the room,
    user and type aliases (kind, n) this answer named without the client
    knowing them, sorted; look each up and decode the answer again (event and
    batch handles are not listed: ``"~n"`` is their usual form). ``retry``:
    the answer was 4.04 unknown alias and the aliases the request used are
    dropped; encode and send the request again (once) with full IDs.
    """

    value: object
    unknown: tuple[tuple[str, int], ...] = ()
    retry: bool = False


def _bounded_put(table: OrderedDict[Any, Any], key: Any, value: Any, cap: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > cap:
        table.popitem(last=False)


class CompactClient:
    """Client side of compact mode, mirroring one :class:`CompactSession` (one per connection).

    Until the server has echoed OPT_PROFILE (:meth:`note_profile`) requests
    and responses are plain MSC3079. Values the client holds only by alias
    (event and batch handles, an alias it has forgotten) appear in decoded
    documents as ``"~n"``, which the server accepts back in path parameters
    and as ``since``; ``unresolved`` lists them for :meth:`lookup_path`.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new connection (the server starts a new session)."""
        self.active = False
        self.tables: dict[str, OrderedDict[int, str]] = {kind: OrderedDict() for kind in KINDS}
        self._numbers: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
        self._bases: OrderedDict[int, int] = OrderedDict()
        self._sent: OrderedDict[int, str] = OrderedDict()
        self._sticky: OrderedDict[str, Any] = OrderedDict()
        #: every room/user/type alias seen without a value and not learnt since (all answers)
        self.unresolved: set[tuple[str, int]] = set()
        self._missing: set[tuple[str, int]] = set()  # the same, for the answer being decoded

    def profile_option(self) -> int | None:
        """The OPT_PROFILE value to put in the next request (None once compact mode is on)."""
        return None if self.active else PROFILE_COMPACT_V1

    def note_profile(self, value: int | None) -> None:
        """Record the OPT_PROFILE of a response: 1 turns compact mode on (no echo: the server is MSC3079 only)."""
        if value == PROFILE_COMPACT_V1:
            self.active = True

    # ---------------------------------------------------------- aliases

    def learn(self, kind: str, number: int, value: str) -> None:
        """Store an alias (from a definition or a lookup)."""
        if kind not in KINDS or not _is_uint(number) or not isinstance(value, str) or len(value) > 4 * MAX_VALUE_CHARS:
            raise CompactError("bad alias definition")
        old = self.tables[kind].get(number)
        if old is not None and old != value:
            raise CompactError(f"alias ~{number} of kind {kind} redefined")
        _bounded_put(self.tables[kind], number, value, CLIENT_MAX_ALIASES)
        self._numbers[kind][value] = number
        if len(self._numbers[kind]) > 2 * CLIENT_MAX_ALIASES:  # drop reverse entries of forgotten aliases
            self._numbers[kind] = {v: n for n, v in self.tables[kind].items()}
        self.unresolved.discard((kind, number))

    def _known(self, kind: str, number: int) -> str | None:
        if kind == "t" and number < len(STATIC_TYPES):
            return STATIC_TYPES[number]
        return self.tables[kind].get(number)

    def _number(self, kind: str, value: str) -> int | None:
        if kind == "t" and value in STATIC_TYPES:
            return STATIC_TYPES.index(value)
        number = self._numbers[kind].get(value)
        return number if number is not None and self.tables[kind].get(number) == value else None

    def _read_ref(self, kind: str, item: Any) -> str:
        """A reference position: literal text, alias n (``"~n"`` when unknown) or definition [n, value]."""
        if isinstance(item, str):
            return item
        if isinstance(item, list) and len(item) == 2 and _is_uint(item[0]) and isinstance(item[1], str):
            self.learn(kind, item[0], item[1])
            return item[1]
        if not _is_uint(item):
            raise CompactError(f"bad {kind} reference")
        known = self._known(kind, item)
        if known is None:
            if kind not in ("e", "b"):
                self.unresolved.add((kind, item))
                self._missing.add((kind, item))
            return f"~{item}"
        return known

    def forget(self, kind: str, number: int) -> bool:
        """Drop an alias the server no longer has: requests name the value in full again. False: not held."""
        value = self.tables[kind].pop(number, None)
        if value is not None and self._numbers[kind].get(value) == number:
            del self._numbers[kind][value]
        return value is not None

    def _forget_path_aliases(self, path: tuple[str, ...]) -> bool:
        # Answer 4.04 "unknown alias": one of this path's aliases was evicted by the server; which one is
        # not said, so all of them go and the retry names every value in full (and learns new aliases).
        kinds = PARAMS.get(path[0], ()) if path else ()
        if path and path[0] == _SEND and len(path) == 3:
            kinds = ("r", None)
        dropped = False
        for segment, kind in zip(path[1:], kinds, strict=False):
            if kind is not None and segment.startswith("~") and not segment.startswith("~~"):
                number = parse_ref_segment(segment)
                if number is not None:
                    dropped = self.forget(kind, number) or dropped
        return dropped

    def lookup_path(self, kind: str, number: int) -> tuple[str, ...]:
        """Path of the request that fetches an alias's full value (GET, no payload, no query)."""
        return (ALIAS_CODE, kind, str(number))

    def learn_lookup(self, kind: str, number: int, code: int, payload: bytes) -> bool:
        """Take the answer to ``GET lookup_path(kind, number)``; True when the alias is now known.

        Never raises: a refused lookup (4.04: the server evicted the alias too)
        or a malformed answer leaves the alias unknown and drops it from
        :attr:`unresolved`, so it is not asked for again; the decoded answer
        keeps its ``"~n"``.
        """
        if code >> 5 == 2 and self.active:
            try:
                self.decode_response(self.lookup_path(kind, number), code, payload)
            except CompactError:
                pass
        known = self._known(kind, number) is not None if kind in KINDS else False
        self.unresolved.discard((kind, number))
        return known

    # ---------------------------------------------------------- requests

    def encode_request(self, method: str, path: tuple[str, ...], body: object | None) -> tuple[tuple[str, ...], bytes]:
        """Path segments and payload for a request given in MSC3079 path-code form with full IDs.

        Known IDs become ``~n``; a ``~n`` already in a room/user/event
        parameter is passed on; ``PUT /9/{room}/m.room.message/{txn}`` drops
        the type, and m.text content becomes a bare text string. Raises
        CompactError for a body outside the JSON model.
        """
        try:
            payload = b"" if body is None else msc3079.encode(body)
        except WireError as exc:
            raise CompactError(f"body cannot be encoded: {exc}") from None
        if not self.active or not path or path[0] not in PARAMS:
            return tuple(path), payload
        code, params = path[0], list(path[1:])
        kinds = PARAMS[code]
        if len(params) != len(kinds):
            return tuple(path), payload
        out = [code]
        for value, kind in zip(params, kinds, strict=True):
            if kind in ("r", "u", "e") and value.startswith("~") and not value.startswith("~~"):
                parse_ref_segment(value)  # a handle the client holds: must be well-formed
                out.append(value)
                continue
            number = self._number(kind, value) if kind is not None else None
            out.append(f"~{number}" if number is not None else escape_segment(value))
        if code == _SEND and params[1] == STATIC_TYPES[0]:
            del out[2]
            if _is_m_text(body):
                assert isinstance(body, dict)
                payload = cbor.dumps(body["body"])
        return tuple(out), payload

    def encode_query(self, path: tuple[str, ...], query: tuple[str, ...]) -> tuple[str, ...]:
        """Uri-Query items: on /sync, ``since=~n`` shrinks to ``~n`` and a literal ``~`` token is escaped."""
        if not self.active or not path or path[0] != _SYNC:
            return tuple(query)
        out = []
        for item in query:
            if item.startswith("since=~"):
                value = item[6:]
                out.append(value if parse_ref_segment(value) is not None else "since=~" + value)
            else:
                out.append(item)
        return tuple(out)

    def send_text(self, room_id: str, txn: str, text: str) -> tuple[tuple[str, ...], bytes]:
        """``PUT`` path and payload that send ``text`` as m.text into ``room_id`` with transaction ``txn``."""
        return self.encode_request("PUT", ("9", room_id, "m.room.message", txn), {"msgtype": "m.text", "body": text})

    # ---------------------------------------------------------- responses

    def decode(self, path: tuple[str, ...], code: int, payload: bytes) -> Decoded:
        """Decode the response to a request sent with ``path`` (as sent); see :class:`Decoded` for what to do next.

        Decoding the same answer again (after lookups) gives the same value
        with the looked-up aliases filled in. Raises CompactError for a
        payload that is neither valid compact nor valid MSC3079 CBOR.
        """
        self._missing = set()
        if not payload:
            return Decoded(None)
        item = _loads(payload)
        if not self.active or code >> 5 != 2 or not path:
            document = _from_msc(item)
            unknown = isinstance(document, dict) and document.get("errcode") == ERR_UNKNOWN_ALIAS
            retry = self.active and code == C.NOT_FOUND and unknown and self._forget_path_aliases(path)
            return Decoded(document, retry=retry)
        value = self._decode_ok(path, item)
        return Decoded(value, tuple(sorted(self._missing)))

    def decode_response(self, path: tuple[str, ...], code: int, payload: bytes) -> object:
        """The JSON value of :meth:`decode` (unknown aliases stay ``"~n"``; see :attr:`unresolved`)."""
        return self.decode(path, code, payload).value

    def _decode_ok(self, path: tuple[str, ...], item: Any) -> object:
        first = path[0]
        if first == ALIAS_CODE and len(path) == 3 and path[1] in KINDS:
            number = parse_ref_segment("~" + path[2])
            if not isinstance(item, str) or number is None:
                raise CompactError("bad alias lookup answer")
            self.learn(path[1], number, item)
            return item
        if isinstance(item, dict) and (first != _SYNC or 0 not in item):
            document = _from_msc(item)  # an MSC3079 body (a path that is not rewritten, or the server's fallback)
            if first == _SYNC and isinstance(document, dict):  # the session counts its sticky parts as sent
                self._restore_sticky(document, _STICKY_TOP, "")
                joined = document.get("rooms", {}).get("join") if isinstance(document.get("rooms"), dict) else None
                for room_id, room in joined.items() if isinstance(joined, dict) else ():
                    if isinstance(room, dict):
                        self._restore_sticky(room, _STICKY_ROOM, room_id)
            return document
        if first in _EVENT_ANSWER:
            event_id = self._read_ref("e", item)
            if first == _SEND and _is_uint(item):
                _bounded_put(self._sent, item, unescape_segment(path[-1]), 4 * MAX_SENT)
            return {"event_id": event_id}
        if first in _ROOM_ANSWER:
            return {"room_id": self._read_ref("r", item)}
        if first == _SYNC and isinstance(item, dict):
            # Two passes: a definition may come after a use of its alias within one response.
            _SyncDecoder(self, collect=True).sync(item)
            return _SyncDecoder(self, collect=False).sync(item)
        return _from_msc(item)

    def _restore_sticky(self, section: dict[str, Any], sticky: tuple[str, ...], scope: str) -> None:
        for key in sticky:
            name = scope + "/" + key
            if key in section:
                _bounded_put(self._sticky, name, section[key], 4 * CLIENT_MAX_ALIASES)
            elif name in self._sticky:
                section[key] = self._sticky[name]


class _SyncDecoder:
    """One pass over a compact sync: ``collect`` learns definitions only, the second pass builds the JSON."""

    def __init__(self, client: CompactClient, *, collect: bool) -> None:
        self.client = client
        self.collect = collect
        self.clock = 0

    def sync(self, item: dict[Any, Any]) -> dict[str, Any]:
        client = self.client
        echo = item.get(1)
        if echo is not None:
            if not _is_uint(echo) or echo not in client._bases:
                raise CompactError("sync relative to a batch this client does not know: sync again without since")
            self.clock = client._bases[echo]
        batch = item[0]
        doc: dict[str, Any] = {"next_batch": client._read_ref("b", batch) if _is_uint(batch) else _text(batch)}
        rooms: dict[str, Any] = {}
        for key, name in ((2, "join"), (3, "invite"), (4, "leave"), (5, "knock")):
            entries = item.get(key)
            if entries is None:
                continue
            if not isinstance(entries, list):
                raise CompactError("room section must be an array")
            group = rooms.setdefault(name, {})
            for entry in entries:
                room_id, room = self.room(entry, timeline=name in ("join", "leave"))
                group[room_id] = room
        if rooms:
            doc["rooms"] = rooms
        rest = item.get(6)
        if rest is not None:
            extra = _from_msc(rest)
            if not isinstance(extra, dict) or "next_batch" in extra or "rooms" in extra:
                raise CompactError("bad sync remainder")
            doc.update(extra)
        if not self.collect:
            client._restore_sticky(doc, _STICKY_TOP, "")
            if _is_uint(batch) and batch not in client._bases:
                _bounded_put(client._bases, batch, self.clock, 4 * MAX_BATCHES)
        return doc

    def room(self, entry: Any, *, timeline: bool) -> tuple[str, dict[str, Any]]:
        if not isinstance(entry, list) or not 1 <= len(entry) <= (3 if timeline else 2):
            raise CompactError("bad room entry")
        room_id = self.client._read_ref("r", entry[0])
        room: dict[str, Any] = {}
        rest = list(entry[1:])
        if timeline:
            events = rest.pop(0) if rest else []
            if not isinstance(events, list):
                raise CompactError("timeline must be an array")
            room["timeline"] = {"events": [self.event(e) for e in events]}
        extra = rest[0] if rest else {}
        if not isinstance(extra, dict):
            raise CompactError("bad room extra")
        if timeline and 1 in extra:
            room["timeline"].update(limited=True, prev_batch=_text(extra[1]))
        if timeline and 0 in extra:
            if not isinstance(extra[0], list):
                raise CompactError("state must be an array")
            room["state"] = {"events": [self.event(e) for e in extra[0]]}
        if 3 in extra:
            counts = extra[3]
            if not isinstance(counts, list) or len(counts) != len(_COUNTS) or not all(_is_uint(n) for n in counts):
                raise CompactError("bad unread counts")
            room["unread_notifications"] = dict(zip(_COUNTS, counts, strict=True))
        if 2 in extra:
            more = _from_msc(extra[2])
            if not isinstance(more, dict):
                raise CompactError("bad room remainder")
            for key, value in more.items():
                if key == "timeline" and isinstance(value, dict) and "timeline" in room:
                    room["timeline"].update({k: v for k, v in value.items() if k != "events"})
                else:
                    room[key] = value
        if not self.collect:
            self.client._restore_sticky(room, _STICKY_ROOM, room_id)
        return room_id, room

    def event(self, item: Any) -> Any:
        if isinstance(item, dict):
            return _from_msc(item)
        if not isinstance(item, list) or len(item) not in (5, 6):
            raise CompactError("bad compact event")
        client = self.client
        handle, type_ref, sender_ref, delta, content = item[:5]
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise CompactError("event time must be an integer")
        self.clock += delta
        event: dict[str, Any] = {
            "event_id": client._read_ref("e", handle),
            "type": client._read_ref("t", type_ref),
            "sender": client._read_ref("u", sender_ref),
            "origin_server_ts": self.clock,
        }
        if isinstance(content, str):
            event["content"] = {"msgtype": "m.text", "body": content}
        elif isinstance(content, dict):
            event["content"] = _from_msc(content)
        else:
            raise CompactError("event content must be a map or a text string")
        if len(item) == 6:
            extra = item[5]
            if not isinstance(extra, dict):
                raise CompactError("bad event extra")
            fields = {k: v for k, v in extra.items() if k != 4}
            more = _from_msc(fields) if fields else {}
            if not isinstance(more, dict) or any(k in event for k in more):
                raise CompactError("event extra repeats a field")
            event.update(more)
            if 4 in extra:
                event["state_key"] = client._read_ref("u", extra[4])
        if _is_uint(handle) and handle in client._sent:
            unsigned = event.setdefault("unsigned", {})
            if isinstance(unsigned, dict):
                unsigned.setdefault("transaction_id", client._sent[handle])
        return event


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise CompactError("expected a text string")
    return value
