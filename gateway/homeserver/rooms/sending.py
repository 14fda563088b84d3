"""Sending: the batch send path of local events, from request to committed event.

Rules:

* events of one room are created one at a time (the head's lock): each new
  event's ``prev_events`` are the room's forward extremities, its
  ``auth_events`` are chosen from the current state by the auth rules'
  selection, and it is checked against them before anything is stored; a
  local event that fails the auth rules is refused (M_FORBIDDEN) and never
  stored;
* the room's head (extremities, depth, state group) advances in memory under
  the lock and its write is queued before the lock is released, so events
  commit in creation order; the caller is answered, and listeners told,
  only after the commit;
* a transaction ID (user, device, txn) makes a send idempotent: one already
  committed, repeated in the batch, or in flight in another call returns
  the event it made;
* every state event makes a new state group (``store.new_state_group``);
  each event records the groups before and after it, which history
  visibility and ``/messages`` use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lowband.gateway.homeserver.rooms.lookups import RoomHead, RoomLookups
from lowband.gateway.matrix import auth_rules
from lowband.gateway.matrix.auth_rules import AuthError
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden, not_found
from lowband.gateway.matrix.events import Event, EventFormatError, build_event
from lowband.gateway.matrix.identifiers import create_event_id_of_room
from lowband.gateway.matrix.room_versions import RoomVersion
from lowband.gateway.matrix.signing import SigningKey
from lowband.gateway.store.interfaces import EventWrite, RoomHeadRow, StateMap, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendRequest:
    """One event for :meth:`RoomService.send_batch` (the arguments of :meth:`RoomService.send`)."""

    sender: str
    event_type: str
    content: dict[str, Any]
    state_key: str | None = None
    redacts: str | None = None
    txn: tuple[str, str, str] | None = None
    origin_server_ts: int | None = None


@dataclass(frozen=True)
class Sent:
    """A committed event and its stream position."""

    event: Event
    stream: int


class EventSender:
    """Builds, authorises and persists events of local users in existing rooms."""

    def __init__(
        self,
        store: Store,
        lookups: RoomLookups,
        server_name: str,
        signing_key: SigningKey,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.lookups = lookups
        self.server_name = server_name
        self.signing_key = signing_key
        self.clock = clock
        self.listeners: list[Callable[[Sent], None]] = []
        #: told (stream, event_id) of every committed event logged for other servers (federation's sender)
        self.log_listeners: list[Callable[[int, str], None]] = []
        #: txn → (the future of the send_batch call making it, its index there)
        self.pending_txns: dict[tuple[str, str, str], tuple[asyncio.Future[Any], int]] = {}

    def now_ms(self) -> int:
        """The clock in ms."""
        return int(self.clock() * 1000)

    # ------------------------------------------------------------- sending

    async def send(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        *,
        state_key: str | None = None,
        redacts: str | None = None,
        txn: tuple[str, str, str] | None = None,
        origin_server_ts: int | None = None,
    ) -> Sent:
        """Build, authorise and persist one event as ``sender``.

        ``origin_server_ts`` defaults to now; bridges and links pass the time
        a reading was taken.

        ``txn`` = (user_id, device_id, txn_id) makes the send idempotent: a
        repeated transaction returns the first event. Raises MatrixError:
        M_NOT_FOUND for an unknown room, M_FORBIDDEN when the auth rules
        refuse, M_BAD_JSON / M_TOO_LARGE for a malformed event.
        """
        request = SendRequest(sender, event_type, content, state_key, redacts, txn, origin_server_ts)
        result = (await self.send_batch(room_id, [request]))[0]
        if isinstance(result, MatrixError):
            raise result
        return result

    async def send_batch(self, room_id: str, requests: list[SendRequest]) -> list[Sent | MatrixError]:
        """Send several events into one room, in order; one result per request.

        Like :meth:`send` for each request, but the events are built under
        one hold of the room's lock and written in one job, so they commit
        together (one fsync) and the caller wakes once. A request that is
        refused gets its MatrixError in its place and does not stop the
        others; if the write fails every new event gets an M_UNKNOWN (500).
        A transaction already sent, or in flight in another call, gets the
        event it made.
        """
        results: list[Sent | MatrixError | None] = [None] * len(requests)
        loop = asyncio.get_running_loop()
        batch: asyncio.Future[list[Sent | MatrixError | None]] = loop.create_future()
        todo: list[int] = []
        elsewhere: list[tuple[int, tuple[asyncio.Future[Any], int]]] = []
        repeats: list[tuple[int, int]] = []  # (index, index of the first request with that txn)
        first: dict[tuple[str, str, str], int] = {}
        for index, request in enumerate(requests):
            txn = request.txn
            if txn is None:
                todo.append(index)
            elif txn in first:
                repeats.append((index, first[txn]))
            elif txn in self.pending_txns:
                elsewhere.append((index, self.pending_txns[txn]))
            else:
                first[txn] = index
                todo.append(index)
        if first:
            done = self.store.events_for_txns(list(first))
            if done:
                todo = [i for i in todo if requests[i].txn not in done]
                for txn, event_id in done.items():
                    results[first[txn]] = self._sent_by_id(event_id)
        mine = [txn for i in todo if (txn := requests[i].txn) is not None]
        for index in todo:
            txn = requests[index].txn
            if txn is not None:
                self.pending_txns[txn] = (batch, index)
        try:
            if todo:
                for index, result in zip(todo, await self._send_many(room_id, [requests[i] for i in todo]),
                                         strict=True):  # fmt: skip
                    results[index] = result
        except BaseException as exc:
            batch.set_exception(exc)
            batch.exception()  # mark retrieved
            raise
        finally:
            for txn in mine:
                self.pending_txns.pop(txn, None)
            if not batch.done():
                batch.set_result(results)
        for index, (other, at) in elsewhere:
            theirs = await asyncio.shield(other)
            results[index] = theirs[at]
        for index, at in repeats:
            results[index] = results[at]
        return [r if r is not None else MatrixError(500, "M_UNKNOWN", "transaction lost") for r in results]

    def _sent_by_id(self, event_id: str) -> Sent | MatrixError:
        row = self.store.get_event(event_id)
        if row is None:  # pragma: no cover - the index said it was there
            return MatrixError(500, "M_UNKNOWN", "transaction lost")
        return Sent(row["event"], row["stream"])

    async def _send_many(self, room_id: str, requests: list[SendRequest]) -> list[Sent | MatrixError]:
        """Build, authorise and queue ``requests`` under the room's lock, then wait for the commit."""
        head = self.lookups.head(room_id)
        if head is None:
            return [not_found(f"unknown room {room_id}") for _ in requests]
        results: list[Sent | MatrixError] = []
        made: list[tuple[int, Sent]] = []
        writes: list[EventWrite] = []
        # A plain message's auth events and verdict depend only on its sender, its type and the
        # room's state: within one batch they are worked out once per (sender, type) and state.
        known: dict[tuple[str, str], list[str]] = {}
        allowed: set[tuple[str, str]] = set()
        async with head.lock:
            group, state = head.state_group, self.store.state_for_group(head.state_group)
            for request in requests:
                if head.state_group != group:
                    group, state = head.state_group, self.store.state_for_group(head.state_group)
                    known.clear()
                    allowed.clear()
                plain = request.state_key is None and request.redacts is None
                key = (request.sender, request.event_type)
                try:
                    auth_ids = known.get(key) if plain else None
                    if auth_ids is None:
                        auth_ids = self._auth_ids(state, request, head.version)
                    event = self._build(head, request, auth_ids)
                    if not plain or key not in allowed:
                        self._authorise(event, head.version)
                    if request.redacts is not None:
                        self._check_redaction(event, state)
                except MatrixError as exc:
                    results.append(exc)
                    continue
                if plain:
                    known[key] = auth_ids
                    allowed.add(key)
                write = self.advance(head, event, request.txn)
                made.append((len(results), Sent(event, write.position)))
                results.append(made[-1][1])
                writes.append(write)
            if not writes:
                return results
            committed = self.store.persist_events(writes, self.room_row(head))
        logged = {w.event.event_id for w in writes if w.federate}
        stored = asyncio.ensure_future(committed)
        try:
            # Shielded: a client that hangs up must not make us forget events
            # that still commit (the head already builds on them).
            await asyncio.shield(stored)
        except asyncio.CancelledError:
            stored.add_done_callback(
                lambda done: None if done.cancelled() or done.exception() else self._announce_all(made, logged)
            )
            raise
        except BaseException:
            log.exception("%d events were not stored; reloading room %s", len(writes), room_id)
            self.lookups.drop_head(room_id)
            lost = MatrixError(500, "M_UNKNOWN", "the event could not be stored")
            for index, _ in made:
                results[index] = lost
            return results
        self._announce_all(made, logged)
        return results

    async def build_checked(self, room_id: str, request: SendRequest) -> tuple[Event, StateMap]:
        """Build, sign and authorise an event on the room's current head without storing it.

        For an event another server must see first (an invite of its user):
        the caller stores it later through the room DAG. Returns the event
        and the state it was judged by (its state before). MatrixError as
        :meth:`send`.
        """
        head = self.lookups.head(room_id)
        if head is None:
            raise not_found(f"unknown room {room_id}")
        async with head.lock:
            state = self.store.state_for_group(head.state_group)
            auth_ids = self._auth_ids(state, request, head.version)
            event = self._build(head, request, auth_ids)
            if event.sign is not None:
                event.sign()
            self._authorise(event, head.version)
            return event, dict(state)

    def _announce_all(self, made: list[tuple[int, Sent]], logged: set[str] | None = None) -> None:
        for _, sent in made:
            self.announce(sent)
            if logged and sent.event.event_id in logged:
                self.announce_logged(sent.stream, sent.event.event_id)

    def announce(self, sent: Sent) -> None:
        """Tell every listener about a committed event (a failing listener is logged, not raised)."""
        for listener in self.listeners:
            try:
                listener(sent)
            except Exception:  # a bridge's bug must not fail the sender
                log.exception("event listener failed on %s", sent.event.event_id)

    def announce_logged(self, position: int, event_id: str) -> None:
        """Tell the log listeners an event for other servers committed."""
        for listener in self.log_listeners:
            try:
                listener(position, event_id)
            except Exception:
                log.exception("log listener failed on %s", event_id)

    def add_listener(self, listener: Callable[[Sent], None]) -> None:
        """Call ``listener`` with every committed local event (in commit order per room)."""
        self.listeners.append(listener)

    @staticmethod
    def _auth_ids(state: StateMap, request: SendRequest, version: RoomVersion) -> list[str]:
        """The auth events the rules select for ``request`` from ``state``."""
        selected = auth_rules.auth_types_for_event(request.event_type, request.sender, request.state_key,
                                                   request.content, room_version=version)  # fmt: skip
        return [state[key] for key in selected if key in state]

    def _build(self, head: RoomHead, request: SendRequest, auth_ids: list[str]) -> Event:
        """The event; a non-state one is left for the store's writer thread to sign (``event.sign``)."""
        try:
            # State events are cached and looked up before they commit: those are signed at once. Signing
            # releases the interpreter lock, so the writer thread signs the rest while this one goes on.
            return build_event(
                room_id=head.room_id, sender=request.sender, type=request.event_type, content=request.content,
                prev_events=head.extremities[:20], auth_events=auth_ids, depth=head.depth + 1,
                origin_server_ts=self.now_ms() if request.origin_server_ts is None else request.origin_server_ts,
                server_name=self.server_name, signing_key=self.signing_key, state_key=request.state_key,
                redacts=request.redacts, sign_later=request.state_key is None, room_version=head.version,
                event_hashes=self.lookups.event_hashes(head.version, [*head.extremities, *auth_ids]),
            )  # fmt: skip (build_event runs check_event_format on what it built)
        except EventFormatError as exc:
            if "65536" in str(exc) or "too large" in str(exc).lower():
                raise MatrixError(413, "M_TOO_LARGE", str(exc)) from None
            raise bad_json(str(exc)) from None
        except ValueError as exc:  # canonical JSON refused a value (float, huge int)
            raise bad_json(str(exc)) from None

    def _authorise(self, event: Event, version: RoomVersion) -> None:
        auth_state: dict[tuple[str, str], Event] = {}
        ids = event.auth_events
        if version.room_id_is_create_hash:  # v12 judges by the create event the room ID names
            ids = [create_event_id_of_room(event.room_id), *ids]
        for event_id in ids:
            auth_event = self.lookups.event(event_id)
            if auth_event is not None:
                key = (auth_event.type, auth_event.state_key or "")
                auth_state[key] = auth_event
        try:
            auth_rules.check_auth(event, auth_state, room_version=version)
        except AuthError as exc:
            raise forbidden(str(exc)) from None

    def _check_redaction(self, event: Event, state: StateMap) -> None:
        target = self.lookups.event(event.redacts or "")
        if target is None or target.room_id != event.room_id:
            raise not_found("the event to redact is not in this room")
        if target.sender == event.sender:
            return
        create = self.lookups.event(state.get(("m.room.create", ""), ""))
        levels = self.lookups.state_content(state, "m.room.power_levels")
        level = auth_rules.power_level_for_user(levels, create, event.sender)
        if level < auth_rules.action_power_level(levels, "redact"):
            raise forbidden("you may only redact your own events")

    def advance(self, head: RoomHead, event: Event, txn: tuple[str, str, str] | None) -> EventWrite:
        """Move the room's head onto ``event`` and return its write (queued by the caller, in order).

        The event is logged for other servers when it has any
        (``RoomLookups.destinations``).
        """
        state_before = head.state_group
        state_after, new_group = state_before, None
        if event.is_state:
            new_group = self.store.new_state_group(
                head.room_id, state_before, {(event.type, event.state_key or ""): event.event_id}
            )
            state_after = new_group.group
        position = self.store.next_stream()
        others = self.lookups.destinations(event, state_before, state_after) - {self.server_name}
        cited = set(event.prev_events)
        head.extremities = [event.event_id, *(e for e in head.extremities if e not in cited)]
        head.depth = max(head.depth, event.depth)
        head.state_group = state_after
        self.lookups.remember(event)
        if head.version.events_carry_id:  # the next event cites it, maybe before it commits
            self.lookups.remember_hash(event, head.version)
        return EventWrite(event, position, state_before, state_after, new_group, txn, federate=bool(others))

    @staticmethod
    def room_row(head: RoomHead) -> RoomHeadRow:
        """The room's row as the store keeps it with the events that moved its head."""
        return {
            "room_version": head.version.identifier, "creator": head.creator, "state_group": head.state_group,
            "extremities": head.extremities, "depth": head.depth,
        }  # fmt: skip

