"""Compact mode: Lowband's extension of MSC3079 for the slowest links (docs/protocol/coap-compact.md).

Rules (the spec is the doc; this is the short form):

* A request with option :data:`~lowband.codecs.coap.OPT_PROFILE` = 1 switches
  its connection to compact mode (sticky, like the access token); the server
  echoes the option. Everything below applies only to path-code requests on a
  compact connection; full-path requests pass through untouched.
* Aliases are server-assigned, per session and per kind (room ``r``, user
  ``u``, event ``e``, event type ``t``, sync batch ``b``), at most
  :data:`MAX_ALIASES` live per kind (least recently used evicted), numbers
  never reused within a session. In a request path parameter ``~n`` is alias
  ``n`` of the kind the path template gives that parameter; ``~~x`` is the
  literal ``~x``. In a response a *reference position* holds a text string
  (the literal value), an unsigned ``n`` (an alias) or ``[n, "value"]`` (a
  definition). Room, user and type definitions repeat until the client has
  shown it knows them (used the alias, or sent any later request); event and
  batch aliases are handles: never defined, looked up on demand with
  ``GET /~/{kind}/{n}``.
* Defaults: ``PUT /9/{room}/{txn}`` is type ``m.room.message``; a send body
  that is a bare CBOR text string is ``{"msgtype": "m.text", "body": s}``.
* Responses: sends answer the event's handle; join/createRoom the room
  reference; /sync a compact sync (events as arrays, timestamps as deltas,
  empty and unchanged sections dropped). Other bodies stay MSC3079 CBOR; a
  CBOR Content-Format is not sent (implied).

:class:`CompactSession` is the server side (one per compact peer, in
``Peer.compact``); the client side, ``CompactClient``, is in
:mod:`lowband.gateway.coap.compact_client` and imports the shared definitions
from here. Both are sans-I/O and refuse malformed input with :class:`CompactError`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from lowband.codecs import cbor, msc3079
from lowband.codecs import coap as C
from lowband.codecs.errors import WireError
from lowband.gateway.coap.exchange import CoapRequest, CoapResponse, Peer

#: Value of OPT_PROFILE that asks for (and acknowledges) compact mode version 1.
PROFILE_COMPACT_V1 = 1
#: Path code of the alias table resource (not a MSC3079 v1 code).
ALIAS_CODE = "~"
#: Live aliases per kind and session; the oldest unused one is evicted beyond this.
MAX_ALIASES = 256
#: Batch (sync token) aliases kept per session: enough for a few outstanding syncs.
MAX_BATCHES = 16
#: Send records (event handle -> txn id) kept for own-echo elision.
MAX_SENT = 64
#: Longest value that gets an alias (Matrix IDs and event types are ≤ 255 bytes); longer ones travel literally.
MAX_VALUE_CHARS = 255
#: Client-side mirror bound per kind (larger than the server's, so it forgets later than the server).
CLIENT_MAX_ALIASES = 1024
#: Largest payload either side decodes.
MAX_PAYLOAD = 1 << 20
#: Deepest nesting of a compact body: an MSC3079 value (≤ cbor.MAX_DEPTH) sits at most 8 levels down in a sync.
MAX_DEPTH = cbor.MAX_DEPTH + 8
#: Unknown-alias error code in the MSC3079 error body of a 4.04.
ERR_UNKNOWN_ALIAS = "ORG.LOWBAND_UNKNOWN_ALIAS"

KINDS = ("r", "u", "e", "t", "b")
#: Event types with fixed aliases 0..11 in every session (never defined on the wire, never evicted).
STATIC_TYPES: tuple[str, ...] = (
    "m.room.message", "m.room.member", "m.reaction", "m.room.redaction", "m.room.encrypted", "m.room.create",
    "m.room.power_levels", "m.room.join_rules", "m.room.history_visibility", "m.room.name", "m.room.topic",
    "m.room.avatar",
)  # fmt: skip

#: Kind of each parameter of each MSC3079 v1 path code (None: free text, never an alias).
PARAMS: dict[str, tuple[str | None, ...]] = {
    "5": ("u",), "6": ("u", None), "8": ("r", "t", None), "9": ("r", "t", None), "A": ("r", "e"), "B": ("r",),
    "C": ("r",), "D": ("r",), "E": ("r",), "F": ("r", "e", None), "H": (None,), "J": ("r",), "K": ("r",),
    "L": ("r",), "M": ("r",), "N": ("r",), "O": ("r",), "P": ("r",), "Q": ("r",), "R": ("r",), "U": ("u",),
    "V": ("u",), "W": ("u",), "Y": ("r", "u"), "Z": ("r", None, "e"), "a": ("r",), "b": ("u",), "c": ("t", None),
    "e": (None,), "p": ("u", "r"), "q": ("u", "r", None), "r": ("u", "t"), "s": ("u", "r", "t"), "t": ("r", "e"),
    "u": ("r", "e"),
}  # fmt: skip
_NO_PARAMS = frozenset("012347GISTXdfghijklmno")
_EVENT_ANSWER = frozenset("89F")  # {"event_id": …} → handle
_ROOM_ANSWER = frozenset("GKL")  # {"room_id": …} → room reference
_SYNC = "7"
_SEND = "9"
_EVENT_KEYS = ("event_id", "type", "sender", "origin_server_ts", "content")
_TEXT_KEYS = {"msgtype", "body"}
# Sync sections whose unchanged value is left out (the client keeps the last one it saw).
_STICKY_TOP = ("device_one_time_keys_count", "device_unused_fallback_key_types")
_STICKY_ROOM = ("unread_notifications", "unread_thread_notifications")
_COUNTS = ("notification_count", "highlight_count")  # room extra key 3, in this order


class CompactError(ValueError):
    """A compact request or response the peer got wrong.

    ``code`` is the CoAP code to answer with (4.00 malformed, 4.04 unknown
    alias); :meth:`response` builds that answer. The message names the
    problem in one line and never echoes more than a few characters of input.
    """

    def __init__(self, message: str, code: int = C.BAD_REQUEST, errcode: str = "M_BAD_JSON") -> None:
        super().__init__(message)
        self.code = code
        self.errcode = errcode

    def response(self) -> CoapResponse:
        """The CoAP answer: this code with an MSC3079 error body ``{102: errcode, 103: message}``."""
        return CoapResponse(self.code, msc3079.encode({"errcode": self.errcode, "error": str(self)}))


def _unknown(kind: str, number: int) -> CompactError:
    return CompactError(f"unknown alias ~{number} of kind {kind}", C.NOT_FOUND, ERR_UNKNOWN_ALIAS)


# ------------------------------------------------------------------ helpers shared by both sides (compact_client imports them)


def _to_msc(value: Any) -> Any:
    """A JSON value in MSC3079 form (integer keys) as a CBOR-ready object."""
    return cbor.loads(msc3079.encode(value))


def _from_msc(value: Any) -> Any:
    """An MSC3079-form object (decoded CBOR) back to JSON; CompactError when it is not one."""
    try:
        return msc3079.decode(cbor.dumps(value, max_depth=MAX_DEPTH))
    except WireError as exc:
        raise CompactError(f"bad MSC3079 value: {exc}") from None


def _loads(payload: bytes) -> Any:
    if not payload:
        raise CompactError("empty payload")
    if len(payload) > MAX_PAYLOAD:
        raise CompactError(f"payload of {len(payload)} bytes is too large")
    try:
        return cbor.loads(payload, max_depth=MAX_DEPTH, strict=False)
    except WireError as exc:
        raise CompactError(f"bad CBOR: {exc}") from None


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_ref_segment(segment: str) -> int | None:
    """The alias number of a path segment ``~n``, None for a literal segment.

    ``n`` is decimal without leading zeros, at most 19 digits. Raises
    CompactError for anything else that starts with ``~`` but not ``~~``.
    """
    if not segment.startswith("~") or segment.startswith("~~"):
        return None
    digits = segment[1:]
    canonical = digits == "0" or digits[:1] in tuple("123456789")
    if not canonical or len(digits) > 19 or not digits.isascii() or not digits.isdigit():
        raise CompactError(f"bad alias segment {segment[:24]!r}")
    return int(digits)


def escape_segment(value: str) -> str:
    """A literal path parameter as sent in compact mode: a leading ``~`` is doubled."""
    return "~" + value if value.startswith("~") else value


def unescape_segment(segment: str) -> str:
    """Inverse of :func:`escape_segment` for a literal (non-alias) segment."""
    return segment[1:] if segment.startswith("~~") else segment


def _is_m_text(content: Any) -> bool:
    return (
        isinstance(content, dict) and set(content) == _TEXT_KEYS
        and content["msgtype"] == "m.text" and isinstance(content["body"], str)
    )  # fmt: skip


def _text_send_body(body: bytes) -> bytes | None:
    """A bare CBOR text string send body expanded to MSC3079 m.text content; None when the body is not one."""
    if not body or body[0] >> 5 != 3:
        return None
    text = _loads(body)
    if not isinstance(text, str):  # pragma: no cover - major type 3 always decodes to str
        raise CompactError("bad text body")
    return msc3079.encode({"msgtype": "m.text", "body": text})


_ABSENT = object()


def _reset(table: dict[Any, Any], key: Any, value: Any, *, if_present: bool = False) -> None:
    """Put ``table[key]`` back to ``value`` (:data:`_ABSENT`: remove it); ``if_present``: only if still there."""
    if value is _ABSENT:
        table.pop(key, None)
    elif key in table or not if_present:
        table[key] = value


def _prune(value: Any) -> Any:
    """Drop empty maps and lists from a JSON value, recursively (Matrix treats absent and empty alike)."""
    if isinstance(value, dict):
        out = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


# ------------------------------------------------------------------ server side


class AliasTable:
    """One kind's aliases in one session: bounded LRU, numbers never reused.

    ``defined`` says whether the kind's aliases are defined on the wire
    (rooms, users, types) or are handles (events, batches).
    """

    def __init__(self, kind: str, cap: int, defined: bool, static: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.cap = cap
        self.defined = defined
        self.static = static
        self._static_index = {value: number for number, value in enumerate(static)}
        self._by_number: OrderedDict[int, str] = OrderedDict()
        self._by_value: dict[str, int] = {}
        self._next = len(static)
        self.unconfirmed: dict[int, int] = {}  # number -> request epoch it was last sent in (-1: never sent)
        self.extra: dict[int, Any] = {}  # per-alias data (a batch's time base)

    def __len__(self) -> int:
        return len(self._by_number)

    def number(self, value: str) -> int | None:
        """The alias of ``value``, allocating one (and evicting the oldest) if needed; None if it is too long."""
        if value in self._static_index:
            return self._static_index[value]
        if len(value) > MAX_VALUE_CHARS:
            return None
        found = self._by_value.get(value)
        if found is not None:
            self._by_number.move_to_end(found)
            return found
        while len(self._by_number) >= self.cap:
            old, old_value = self._by_number.popitem(last=False)
            del self._by_value[old_value]
            self.unconfirmed.pop(old, None)
            self.extra.pop(old, None)
        number = self._next
        self._next += 1
        self._by_number[number] = value
        self._by_value[value] = number
        if self.defined:
            self.unconfirmed[number] = -1
        return number

    def drop(self, number: int) -> None:
        """Forget a dynamic alias (its number stays used up)."""
        value = self._by_number.pop(number, None)
        if value is not None:
            del self._by_value[value]
        self.unconfirmed.pop(number, None)
        self.extra.pop(number, None)

    def find(self, value: str) -> int | None:
        """The live alias of ``value`` without allocating or touching."""
        return self._static_index.get(value, self._by_value.get(value))

    def value(self, number: int) -> str | None:
        """The value of a live alias (touching it), or None."""
        if number < len(self.static):
            return self.static[number]
        found = self._by_number.get(number)
        if found is not None:
            self._by_number.move_to_end(number)
        return found

    def confirm_sent_before(self, epoch: int) -> None:
        """The client sent a request after epoch ``epoch``: definitions sent before it are known to it."""
        for number in [n for n, sent in self.unconfirmed.items() if 0 <= sent < epoch]:
            del self.unconfirmed[number]


class CompactSession:
    """Server side of compact mode for one peer (stored in ``Peer.compact``).

    The transport calls :meth:`answer` first (the alias table resource is
    served here), else :meth:`inbound` before the MSC3079 handler and
    :meth:`outbound` after it; :func:`serve` does the three in order.
    """

    def __init__(self) -> None:
        self.tables = {
            "r": AliasTable("r", MAX_ALIASES, True),
            "u": AliasTable("u", MAX_ALIASES, True),
            "t": AliasTable("t", MAX_ALIASES, True, STATIC_TYPES),
            "e": AliasTable("e", MAX_ALIASES, False),
            "b": AliasTable("b", MAX_BATCHES, False),
        }
        self.epoch = 0  # counts requests; a definition sent in epoch k is known once a request of epoch > k came
        self._sent: OrderedDict[int, str] = OrderedDict()  # event handle -> txn id of this session's sends
        self._sticky: OrderedDict[str, Any] = OrderedDict()  # last value sent of each sticky sync section
        self._defined_now: set[tuple[str, int]] = set()  # definitions already in the response being built
        # What the last outbound() recorded as told, and how to take it back (True: a sticky section, which
        # an MSC3079 fallback answer carries too).
        self._undo: list[tuple[bool, Callable[[], None]]] = []

    # ---------------------------------------------------------- requests

    def _begin_request(self) -> None:
        self.epoch += 1
        for table in self.tables.values():
            table.confirm_sent_before(self.epoch)

    def _resolve(self, kind: str, number: int) -> str:
        value = self.tables[kind].value(number)
        if value is None:
            raise _unknown(kind, number)
        self.tables[kind].unconfirmed.pop(number, None)  # the client used it: it knows it
        return value

    def answer(self, req: CoapRequest) -> CoapResponse | None:
        """Serve ``GET /~/{kind}/{n}`` (the full value of an alias, 2.05 CBOR text; 4.04 unknown); None otherwise.

        Raises CompactError for a malformed alias request.
        """
        if not req.path or req.path[0] != ALIAS_CODE:
            return None
        self._begin_request()
        if req.method != "GET":
            raise CompactError("the alias table is read with GET", C.METHOD_NOT_ALLOWED, "M_UNRECOGNIZED")
        if len(req.path) != 3 or req.path[1] not in KINDS:
            raise CompactError("alias lookup is GET /~/{r|u|e|t|b}/{n}", C.NOT_FOUND, "M_UNRECOGNIZED")
        number = parse_ref_segment("~" + req.path[2])
        if number is None:
            raise CompactError("bad alias number")
        return CoapResponse(C.CONTENT, cbor.dumps(self._resolve(req.path[1], number)))

    def inbound(self, req: CoapRequest) -> CoapRequest:
        """The plain MSC3079 request a compact request stands for.

        Expands ``~n`` path parameters, the send defaults and the sync
        ``since`` alias; marks the CBOR body and key table (v1). Full-path
        requests come back unchanged. Raises CompactError (4.00 malformed,
        4.04 unknown alias).
        """
        self._begin_request()
        if not req.path or req.path[0] not in PARAMS and req.path[0] not in _NO_PARAMS:
            if req.path and req.path[0] == ALIAS_CODE:
                raise CompactError("alias lookups are answered by CompactSession.answer", C.NOT_FOUND, "M_UNRECOGNIZED")
            return dataclasses.replace(req, profile=None)
        code, params = req.path[0], list(req.path[1:])
        body = req.body
        if code == _SEND and len(params) == 2:
            params.insert(1, STATIC_TYPES[0])  # the default event type
        kinds = PARAMS.get(code, ())
        if len(params) == len(kinds):
            expanded = [code]
            for segment, kind in zip(params, kinds, strict=True):
                number = parse_ref_segment(segment)
                if number is None:
                    expanded.append(unescape_segment(segment))
                elif kind is None:
                    raise CompactError(f"path code {code} takes no alias there")
                else:
                    expanded.append(self._resolve(kind, number))
            path = tuple(expanded)
        else:  # not this code's shape: the handler answers it (4.04); aliases are not guessed at
            path = (code, *params)
        if code == _SEND:
            body = _text_send_body(body) or body
        query = self._expand_query(req.query) if code == _SYNC else req.query
        return dataclasses.replace(
            req, path=path, query=query, body=body, profile=None,
            content_format=req.content_format if req.content_format is not None or not body else C.FORMAT_CBOR,
            cbor_version=req.cbor_version if req.cbor_version is not None else 1,
        )  # fmt: skip

    def _expand_query(self, query: tuple[str, ...]) -> tuple[str, ...]:
        # "~n" alone stands for since=~n, unless a since= item is there too (a transport's OBSERVE loop that
        # sets since= on the request as the client sent it): then that one wins and "~n" is dropped.
        explicit = any(item.startswith("since=") for item in query)
        out = []
        for item in query:
            bare = item.startswith("~") and not item.startswith("~~")
            if bare and explicit:
                continue
            value = item[6:] if item.startswith("since=") else item if bare else None
            if value is None:
                out.append(item)
                continue
            number = parse_ref_segment(value)
            out.append("since=" + (unescape_segment(value) if number is None else self._resolve("b", number)))
        return tuple(out)

    # ---------------------------------------------------------- responses

    def outbound(self, req: CoapRequest, original: CoapRequest, resp: CoapResponse) -> CoapResponse:
        """The compact form of ``resp``, the MSC3079 answer to ``req`` (``original`` is what the client sent).

        Successful answers to sends, joins and /sync are rewritten; others keep
        their MSC3079 body. A CBOR Content-Format is dropped (implied). A body
        that is not what the handler should give is passed on as MSC3079
        (the client tells the forms apart), never an exception.
        """
        fmt = None if resp.content_format == C.FORMAT_CBOR else resp.content_format
        plain = dataclasses.replace(resp, content_format=fmt)
        if not original.path or original.path[0] not in PARAMS and original.path[0] not in _NO_PARAMS:
            return plain
        if resp.code >> 5 != 2 or not resp.body or resp.content_format not in (C.FORMAT_CBOR, None):
            return plain
        code = req.path[0] if req.path else ""
        self._defined_now.clear()
        self._undo = []
        try:
            doc = msc3079.decode(resp.body)
            if code in _EVENT_ANSWER and isinstance(doc, dict) and isinstance(doc.get("event_id"), str):
                body = self._event_answer(req, doc["event_id"])
            elif (
                code in _ROOM_ANSWER
                and isinstance(doc, dict)
                and list(doc) == ["room_id"]
                and isinstance(doc["room_id"], str)
            ):
                body = cbor.dumps(self._ref("r", doc["room_id"]))
            elif code == _SYNC and isinstance(doc, dict) and isinstance(doc.get("next_batch"), str):
                body = cbor.dumps(self._sync(req, doc), max_depth=MAX_DEPTH)
            else:
                return plain
        except WireError:  # not from our homeserver (an event that is no object …): MSC3079 it is
            self._take_back(sticky=False)  # the client gets the sticky sections, but no alias, no batch
            return plain
        return dataclasses.replace(plain, body=body)

    def not_sent(self) -> None:
        """Take back the last :meth:`outbound` answer: it was not sent (an OBSERVE poll without news).

        Its definitions count as never sent, its new sync batch is forgotten and the sticky sections
        it carried are not taken as known to the client. Aliases it gave out stay (never told, so
        harmless; numbers are not reused).
        """
        self._take_back(sticky=True)

    def _take_back(self, *, sticky: bool) -> None:
        for is_sticky, undo in reversed(self._undo):
            if sticky or not is_sticky:
                undo()
        self._undo = []

    def _ref(self, kind: str, value: str) -> Any:
        """A reference position's item: n, [n, value] while unconfirmed, or the literal value."""
        table = self.tables[kind]
        number = table.number(value)
        if number is None:
            return value
        if number in table.unconfirmed and (kind, number) not in self._defined_now:
            was = table.unconfirmed[number]
            self._undo.append((False, lambda: _reset(table.unconfirmed, number, was, if_present=True)))
            table.unconfirmed[number] = self.epoch
            self._defined_now.add((kind, number))
            return [number, value]
        return number

    def _handle(self, kind: str, value: str) -> Any:
        number = self.tables[kind].number(value)
        return value if number is None else number

    def _event_answer(self, req: CoapRequest, event_id: str) -> bytes:
        handle = self._handle("e", event_id)
        if req.path[0] == _SEND and len(req.path) == 4 and isinstance(handle, int):
            self._sent[handle] = req.path[3]
            self._sent.move_to_end(handle)
            while len(self._sent) > MAX_SENT:
                self._sent.popitem(last=False)
        return cbor.dumps(handle)

    def _drop_unchanged(self, section: dict[str, Any], sticky: tuple[str, ...], scope: str) -> dict[str, Any]:
        """``section`` without empty parts and without sticky parts equal to what this session sent last.

        A changed sticky part is kept even when empty (``{}`` replaces the client's remembered value).
        """
        kept = _prune({k: v for k, v in section.items() if k not in sticky})
        for key in sticky:
            if key not in section:
                continue
            name = scope + "/" + key
            if name in self._sticky and self._sticky[name] == section[key]:
                self._sticky.move_to_end(name)
                continue
            self._undo.append((True, functools.partial(_reset, self._sticky, name, self._sticky.get(name, _ABSENT))))
            self._sticky[name] = section[key]
            self._sticky.move_to_end(name)
            kept[key] = section[key]
        while len(self._sticky) > 2 * MAX_ALIASES:
            self._sticky.popitem(last=False)
        return kept

    def _sync(self, req: CoapRequest, doc: dict[str, Any]) -> dict[int, Any]:
        batches = self.tables["b"]
        since = next((q[6:] for q in req.query if q.startswith("since=")), None)
        echo = batches.find(since) if since is not None else None
        base: int = batches.extra.get(echo, 0) if echo is not None else 0
        if echo is not None and echo not in batches.extra:
            echo = None
        clock = [base]
        out: dict[int, Any] = {}
        found = doc.get("rooms")
        rooms: dict[str, Any] = found if isinstance(found, dict) else {}
        sections: list[tuple[int, str]] = [(2, "join"), (3, "invite"), (4, "leave"), (5, "knock")]
        encoded_rooms: dict[int, list[Any]] = {}
        for key, name in sections:
            group = rooms.get(name)
            if not isinstance(group, dict):
                continue
            entries = []
            for room_id, room in group.items():
                if not isinstance(room, dict):
                    raise WireError("a room that is not an object")
                entry = self._room(str(room_id), room, clock, timeline=name in ("join", "leave"))
                if entry is not None:  # a room where nothing changed is left out
                    entries.append(entry)
            if entries:
                encoded_rooms[key] = entries
        rest = {k: v for k, v in doc.items() if k not in ("next_batch", "rooms")}
        rest = self._drop_unchanged(rest, _STICKY_TOP, "")
        number = batches.number(doc["next_batch"])
        out[0] = number if number is not None else doc["next_batch"]
        if number is not None and number not in batches.extra:
            batches.extra[number] = clock[0]
            self._undo.append((False, functools.partial(batches.drop, number)))
        if echo is not None and (echo != number or clock[0] != base):  # a base the client needs
            out[1] = echo
        out.update(encoded_rooms)
        if rest:
            out[6] = _to_msc(rest)
        return out

    def _room(self, room_id: str, room: dict[str, Any], clock: list[int], *, timeline: bool) -> list[Any] | None:
        """``[room, timeline events, extra?]`` (``[room, extra?]`` without a timeline); None: nothing changed."""
        body: list[Any] = []
        rest = dict(room)
        extra: dict[int, Any] = {}
        if timeline:
            tl = rest.pop("timeline", {})
            events = tl.get("events", []) if isinstance(tl, dict) else None
            if not isinstance(events, list):  # not from our homeserver: the whole answer stays MSC3079
                raise WireError("a timeline that is not an object with a list of events")
            tl = {k: v for k, v in tl.items() if k != "events"}
            body.append([self._event(e, room_id, clock) for e in events])
            if tl.get("limited") is True and isinstance(tl.get("prev_batch"), str):
                extra[1] = tl.pop("prev_batch")
                del tl["limited"]
            elif tl.get("limited", False) is False:
                tl.pop("limited", None)
                tl.pop("prev_batch", None)  # not limited: the timeline continues what the client has
            if tl:
                rest["timeline"] = tl
            state = rest.pop("state", None)
            if isinstance(state, dict) and list(state) == ["events"] and isinstance(state["events"], list):
                if state["events"]:
                    extra[0] = [self._event(e, room_id, clock) for e in state["events"]]
            elif state is not None:
                rest["state"] = state
        rest = self._drop_unchanged(rest, _STICKY_ROOM, room_id)
        counts = rest.get("unread_notifications")
        if isinstance(counts, dict) and set(counts) == set(_COUNTS) and all(_is_uint(counts[k]) for k in _COUNTS):
            extra[3] = [counts[k] for k in _COUNTS]  # changes with nearly every message: 3 bytes, not 40
            del rest["unread_notifications"]
        if rest:
            extra[2] = _to_msc(rest)
        if extra:
            body.append(extra)
        if body in ([], [[]]):
            return None
        return [self._ref("r", room_id), *body]  # the reference last: a room left out defines nothing

    def _event(self, event: Any, room_id: str, clock: list[int]) -> Any:
        """One event as ``[handle, type, sender, Δts, content, extra?]``, or MSC3079 form if it does not fit."""
        if not isinstance(event, dict):
            raise WireError("an event that is not an object")  # not from our homeserver: the answer stays MSC3079
        if not all(k in event for k in _EVENT_KEYS):
            return _to_msc(event)
        event_id, etype, sender, ts, content = (event[k] for k in _EVENT_KEYS)
        state_key = event.get("state_key")
        if not (isinstance(event_id, str) and isinstance(etype, str) and isinstance(sender, str)
                and isinstance(ts, int) and not isinstance(ts, bool) and isinstance(content, dict)
                and (state_key is None or isinstance(state_key, str))):  # fmt: skip
            return _to_msc(event)  # not a well-formed client event: it travels as it is (no clock step)
        handle = self._handle("e", event_id)
        delta = ts - clock[0]
        clock[0] = ts
        item: list[Any] = [handle, self._ref("t", etype), self._ref("u", sender), delta,
                           content["body"] if _is_m_text(content) else _to_msc(content)]  # fmt: skip
        others = {k: v for k, v in event.items() if k not in _EVENT_KEYS and k != "state_key"}
        if others.get("room_id") == room_id:
            del others["room_id"]
        unsigned = others.pop("unsigned", None)
        if isinstance(unsigned, dict):
            unsigned = {k: v for k, v in unsigned.items() if k != "age"}  # derivable from the timestamp
            txn = self._sent.get(handle) if isinstance(handle, int) else None
            if txn is not None and unsigned.get("transaction_id") == txn:
                del unsigned["transaction_id"]  # the client has it from the send's answer (own echo)
        if unsigned:
            others["unsigned"] = unsigned
        extra: dict[Any, Any] = _to_msc(others) if others else {}
        if state_key is not None:
            extra[4] = self._ref("u", state_key) if state_key.startswith("@") else state_key
        if extra:
            item.append(extra)
        return item


def negotiate(req: CoapRequest, peer: Peer) -> int | None:
    """Turn compact mode on for ``peer`` if ``req`` asks for it; the OPT_PROFILE value to echo, or None.

    Only :data:`PROFILE_COMPACT_V1` is understood; other values are ignored
    as an old server would (no echo, the connection stays as it was).
    """
    if req.profile != PROFILE_COMPACT_V1:
        return None
    if not isinstance(peer.compact, CompactSession):
        peer.compact = CompactSession()
    return PROFILE_COMPACT_V1


async def serve(
    req: CoapRequest, peer: Peer, handler: Callable[[CoapRequest, Peer], Awaitable[CoapResponse]]
) -> tuple[CoapResponse, int | None]:
    """Negotiate, then answer ``req`` through ``handler`` in compact or plain mode.

    Returns the response and the OPT_PROFILE value the transport puts in
    it (None: no option). A CompactError becomes its error response.
    """
    echo = negotiate(req, peer)
    session = peer.compact
    if not isinstance(session, CompactSession):
        return await handler(req, peer), echo
    try:
        local = session.answer(req)
        if local is not None:
            return local, echo
        plain = session.inbound(req)
    except CompactError as exc:
        return exc.response(), echo
    resp = await handler(plain, peer)
    return session.outbound(plain, req, resp), echo
