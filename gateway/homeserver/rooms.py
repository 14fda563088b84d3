"""Rooms: building, authorising and persisting local events.

Rules:

* events of one room are created one at a time (a per-room lock): each new
  event's ``prev_events`` are the room's forward extremities, its
  ``auth_events`` are chosen from the current state by the auth rules'
  selection, and it is checked against them before anything is stored; a
  local event that fails the auth rules is refused (M_FORBIDDEN) and never
  stored;
* the room's head (extremities, depth, state group) advances in memory under
  the lock and its write is queued before the lock is released, so events
  commit in creation order; the caller is answered only after the commit;
* state is kept as state groups: every state event makes a new group (a
  delta on its predecessor); each event records the groups before and after
  it, which history visibility and ``/messages`` use.

Every room version of ``room_versions.KNOWN``: each room's version (the
``rooms`` row's ``room_version``) is in its head and goes to every call whose
algorithm depends on it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lowband.gateway.matrix import auth_rules, room_versions
from lowband.gateway.matrix.auth_rules import AuthError
from lowband.gateway.matrix.errors import MatrixError, bad_json, forbidden, not_found
from lowband.gateway.matrix.events import Event, EventFormatError, build_event, reference_hash
from lowband.gateway.matrix.identifiers import create_event_id_of_room
from lowband.gateway.matrix.room_versions import RoomVersion
from lowband.gateway.matrix.signing import SigningKey, encode_base64
from lowband.gateway.store.sqlite.store import EventWrite, SQLiteStore, StateMap

log = logging.getLogger(__name__)

_EVENT_CACHE_SIZE = 5000

PRESETS: dict[str, dict[str, str]] = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "trusted_private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden"},
}


def default_power_levels(creator: str, version: RoomVersion = room_versions.DEFAULT) -> dict[str, Any]:
    """Power levels a new room starts with: the creator at 100 (v12: above all levels, with no entry,
    and m.room.tombstone at 150 so that only creators upgrade the room by default, as MSC4289 asks)."""
    levels: dict[str, Any] = {
        "users": {} if version.privileged_creators else {creator: 100},
        "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
            "m.room.server_acl": 100, "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "notifications": {"room": 50},
    }  # fmt: skip
    if version.privileged_creators:
        levels["events"]["m.room.tombstone"] = 150
    return levels


@dataclass
class RoomHead:
    """What the next event of a room builds on."""

    room_id: str
    creator: str
    state_group: int | None
    extremities: list[str]
    depth: int
    version: RoomVersion = room_versions.DEFAULT
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


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


class RoomService:
    """Creates rooms and sends events as local users."""

    def __init__(
        self,
        store: SQLiteStore,
        server_name: str,
        signing_key: SigningKey,
        on_new_event: Callable[[Sent], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.server_name = server_name
        self.signing_key = signing_key
        self.listeners: list[Callable[[Sent], None]] = [on_new_event] if on_new_event else []
        self.clock = clock
        self._heads: dict[str, RoomHead] = {}
        # txn → (the future of the send_batch call making it, its index there)
        self._pending_txns: dict[tuple[str, str, str], tuple[asyncio.Future[Any], int]] = {}
        self._event_cache: dict[str, Event] = {}
        # v1-v2 rooms: reference hashes of recent events, which the next events cite before they commit
        self._reference_hashes: dict[str, str] = {}

    # ------------------------------------------------------------- lookups

    def now_ms(self) -> int:
        """The clock in ms."""
        return int(self.clock() * 1000)

    def head(self, room_id: str) -> RoomHead | None:
        """The room's head, loaded from the store on first use; None if unknown."""
        head = self._heads.get(room_id)
        if head is None:
            row = self.store.get_room(room_id)
            if row is None:
                return None
            head = RoomHead(room_id, row["creator"], row["state_group"], row["extremities"], row["depth"],
                            room_versions.get(row["room_version"]))  # fmt: skip
            self._heads[room_id] = head
        return head

    def room_version(self, room_id: str) -> RoomVersion:
        """The version of a room this server knows (``room_versions.DEFAULT`` for an unknown room)."""
        head = self.head(room_id)
        return head.version if head is not None else room_versions.DEFAULT

    def event(self, event_id: str) -> Event | None:
        """An accepted or rejected event by ID (cached), or None."""
        cached = self._event_cache.get(event_id)
        if cached is not None:
            return cached
        row = self.store.get_event(event_id)
        if row is None:
            return None
        event = row["event"]
        self._remember(event)
        return event

    def _remember(self, event: Event) -> None:
        # Only state events are looked up again and again (auth events,
        # membership, power levels); messages would just fill memory.
        if event.is_state:
            if len(self._event_cache) >= _EVENT_CACHE_SIZE:
                self._event_cache.pop(next(iter(self._event_cache)))
            self._event_cache[event.event_id] = event

    def current_state(self, room_id: str) -> StateMap:
        """Current state map of a room ({} when unknown)."""
        head = self.head(room_id)
        return self.store.state_for_group(head.state_group) if head else {}

    def state_event(self, room_id: str, event_type: str, state_key: str = "") -> Event | None:
        """Current state event of one (type, state_key), or None."""
        event_id = self.current_state(room_id).get((event_type, state_key))
        return self.event(event_id) if event_id else None

    def state_content(self, state: StateMap, event_type: str, state_key: str = "") -> dict[str, Any] | None:
        """Content of a state event in a given state map, or None."""
        event_id = state.get((event_type, state_key))
        event = self.event(event_id) if event_id else None
        return event.content if event else None

    def membership_in(self, state: StateMap, user_id: str) -> str | None:
        """A user's membership in a state map, or None."""
        content = self.state_content(state, "m.room.member", user_id)
        membership = content.get("membership") if content else None
        return membership if isinstance(membership, str) else None

    def joined_members(self, room_id: str) -> list[str]:
        """Users whose current membership is join."""
        state = self.current_state(room_id)
        return [k for (t, k) in state if t == "m.room.member" and self.membership_in(state, k) == "join"]

    def power_level(self, room_id: str, user_id: str) -> int:
        """A user's current power level in the room."""
        create = self.state_event(room_id, "m.room.create")
        levels = self.state_event(room_id, "m.room.power_levels")
        return auth_rules.power_level_for_user(levels.content if levels else None, create, user_id)

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
            elif txn in self._pending_txns:
                elsewhere.append((index, self._pending_txns[txn]))
            else:
                first[txn] = index
                todo.append(index)
        if first:
            done = self.store.events_for_txns(list(first))
            if done:
                todo = [i for i in todo if requests[i].txn not in done]
                for txn, event_id in done.items():
                    results[first[txn]] = self._sent_by_id(event_id)
        mine = [requests[i].txn for i in todo if requests[i].txn is not None]
        for index in todo:
            txn = requests[index].txn
            if txn is not None:
                self._pending_txns[txn] = (batch, index)
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
                self._pending_txns.pop(txn, None)
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
        head = self.head(room_id)
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
                write = self._advance(head, event, request.txn)
                made.append((len(results), Sent(event, write.position)))
                results.append(made[-1][1])
                writes.append(write)
            if not writes:
                return results
            committed = self.store.persist_events(writes, self._room_row(head))
        stored = asyncio.ensure_future(committed)
        try:
            # Shielded: a client that hangs up must not make us forget events
            # that still commit (the head already builds on them).
            await asyncio.shield(stored)
        except asyncio.CancelledError:
            stored.add_done_callback(
                lambda done: None if done.cancelled() or done.exception() else self._announce_all(made)
            )
            raise
        except BaseException:
            log.exception("%d events were not stored; reloading room %s", len(writes), room_id)
            self._heads.pop(room_id, None)
            lost = MatrixError(500, "M_UNKNOWN", "the event could not be stored")
            for index, _ in made:
                results[index] = lost
            return results
        self._announce_all(made)
        return results

    def _announce_all(self, made: list[tuple[int, Sent]]) -> None:
        for _, sent in made:
            self._announce(sent)

    def _announce(self, sent: Sent) -> None:
        for listener in self.listeners:
            try:
                listener(sent)
            except Exception:  # a bridge's bug must not fail the sender
                log.exception("event listener failed on %s", sent.event.event_id)

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
                prev_events=list(head.extremities), auth_events=auth_ids, depth=head.depth + 1,
                origin_server_ts=self.now_ms() if request.origin_server_ts is None else request.origin_server_ts,
                server_name=self.server_name, signing_key=self.signing_key, state_key=request.state_key,
                redacts=request.redacts, sign_later=request.state_key is None, room_version=head.version,
                event_hashes=self._event_hashes(head.version, [*head.extremities, *auth_ids]),
            )  # fmt: skip (build_event runs check_event_format on what it built)
        except EventFormatError as exc:
            if "65536" in str(exc) or "too large" in str(exc).lower():
                raise MatrixError(413, "M_TOO_LARGE", str(exc)) from None
            raise bad_json(str(exc)) from None
        except ValueError as exc:  # canonical JSON refused a value (float, huge int)
            raise bad_json(str(exc)) from None

    def _event_hashes(self, version: RoomVersion, event_ids: list[str]) -> dict[str, str] | None:
        """Reference hashes of ``event_ids``, which v1-v2 events cite next to their IDs; None from v3."""
        if not version.events_carry_id:
            return None
        hashes: dict[str, str] = {}
        for event_id in event_ids:
            known = self._reference_hashes.get(event_id)
            event = self.event(event_id) if known is None else None
            if event is not None:
                known = self._remember_hash(event, version)
            if known is not None:
                hashes[event_id] = known
        return hashes

    def _remember_hash(self, event: Event, version: RoomVersion) -> str:
        if len(self._reference_hashes) >= _EVENT_CACHE_SIZE:
            self._reference_hashes.pop(next(iter(self._reference_hashes)))
        digest = self._reference_hashes[event.event_id] = encode_base64(reference_hash(event.pdu, version))
        return digest

    def _authorise(self, event: Event, version: RoomVersion) -> None:
        auth_state: dict[tuple[str, str], Event] = {}
        ids = event.auth_events
        if version.room_id_is_create_hash:  # v12 judges by the create event the room ID names
            ids = [create_event_id_of_room(event.room_id), *ids]
        for event_id in ids:
            auth_event = self.event(event_id)
            if auth_event is not None:
                key = (auth_event.type, auth_event.state_key or "")
                auth_state[key] = auth_event
        try:
            auth_rules.check_auth(event, auth_state, room_version=version)
        except AuthError as exc:
            raise forbidden(str(exc)) from None

    def _check_redaction(self, event: Event, state: StateMap) -> None:
        target = self.event(event.redacts or "")
        if target is None or target.room_id != event.room_id:
            raise not_found("the event to redact is not in this room")
        if target.sender == event.sender:
            return
        create = self.event(state.get(("m.room.create", ""), ""))
        levels = self.state_content(state, "m.room.power_levels")
        level = auth_rules.power_level_for_user(levels, create, event.sender)
        if level < auth_rules.action_power_level(levels, "redact"):
            raise forbidden("you may only redact your own events")

    def _advance(self, head: RoomHead, event: Event, txn: tuple[str, str, str] | None) -> EventWrite:
        """Move the room's head onto ``event`` and return its write (queued by the caller, in order)."""
        state_before = head.state_group
        state_after, group_job = state_before, None
        if event.is_state:
            state_after, group_job = self.store.new_state_group(
                head.room_id, state_before, {(event.type, event.state_key or ""): event.event_id}
            )
        position = self.store.next_stream()
        head.extremities = [event.event_id]
        head.depth = event.depth
        head.state_group = state_after
        self._remember(event)
        if head.version.events_carry_id:  # the next event cites it, maybe before it commits
            self._remember_hash(event, head.version)
        return EventWrite(event, position, state_before, state_after, group_job, txn)

    @staticmethod
    def _room_row(head: RoomHead) -> dict[str, Any]:
        return {
            "room_version": head.version.identifier, "creator": head.creator, "state_group": head.state_group,
            "extremities": head.extremities, "depth": head.depth,
        }  # fmt: skip

    # ------------------------------------------------------------- creating

    def new_room_id(self) -> str:
        """A fresh room ID on this server."""
        return "!" + secrets.token_urlsafe(13).replace("-", "x").replace("_", "y") + ":" + self.server_name

    async def create_room(self, creator: str, body: dict[str, Any]) -> str:
        """Create a room as the /createRoom body asks; returns its ID.

        Raises MatrixError (M_BAD_JSON for wrong types, M_ROOM_IN_USE for a
        taken alias, M_UNSUPPORTED_ROOM_VERSION for a version not in ``room_versions.KNOWN``).
        """
        try:
            version = room_versions.get(body.get("room_version", room_versions.DEFAULT.identifier))
        except room_versions.UnsupportedRoomVersion as exc:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", str(exc)) from None
        visibility = body.get("visibility", "private")
        if visibility not in ("public", "private"):
            raise bad_json("'visibility' must be 'public' or 'private'")
        preset_name = body.get("preset") or ("public_chat" if visibility == "public" else "private_chat")
        if not isinstance(preset_name, str) or preset_name not in PRESETS:
            raise bad_json(f"unknown preset {preset_name!r}")
        preset = PRESETS[preset_name]
        invites = body.get("invite", [])
        if not isinstance(invites, list) or not all(isinstance(u, str) for u in invites):
            raise bad_json("'invite' must be a list of user IDs")
        for user in invites:
            if not user.startswith("@") or ":" not in user or len(user.encode()) > 255:
                raise MatrixError(400, "M_INVALID_PARAM", f"{user[:80]!r} is not a user ID")
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list) or not all(isinstance(e, dict) for e in initial_state):
            raise bad_json("'initial_state' must be a list of state events")
        creation_content = body.get("creation_content", {})
        if not isinstance(creation_content, dict):
            raise bad_json("'creation_content' must be an object")
        alias = None
        alias_name = body.get("room_alias_name")
        if alias_name is not None:
            if not isinstance(alias_name, str) or not alias_name or ":" in alias_name or len(alias_name) > 200:
                raise bad_json("'room_alias_name' must be the local part of an alias")
            alias = f"#{alias_name}:{self.server_name}"
            if self.store.get_alias(alias) is not None:
                raise MatrixError(400, "M_ROOM_IN_USE", f"alias {alias} is taken")

        levels = default_power_levels(creator, version)
        create_content: dict[str, Any] = {**creation_content, "room_version": version.identifier}
        if not version.implicit_room_creator:
            create_content["creator"] = creator
        if preset_name == "trusted_private_chat":
            if version.privileged_creators:  # MSC4289: the invitees become creators, as levels cannot list them
                extra = create_content.get("additional_creators", [])
                if not isinstance(extra, list):
                    raise bad_json("'additional_creators' must be a list of user IDs")
                create_content["additional_creators"] = list(dict.fromkeys([*extra, *invites]))
            else:
                for user in invites:
                    levels["users"][user] = 100
        if version.room_id_is_create_hash:
            # The room ID is the create event's hash: two rooms made by one user in one
            # millisecond would collide without something random (MSC4291 suggests this).
            create_content.setdefault("io.lowband.nonce", secrets.token_urlsafe(6))
        override = body.get("power_level_content_override")
        if override is not None:
            if not isinstance(override, dict):
                raise bad_json("'power_level_content_override' must be an object")
            levels.update(override)
        plan: list[tuple[str, str, dict[str, Any]]] = [
            ("m.room.create", "", create_content),
            ("m.room.member", creator, {"membership": "join", **self._profile(creator)}),
            ("m.room.power_levels", "", levels),
        ]
        if alias is not None:
            plan.append(("m.room.canonical_alias", "", {"alias": alias}))
        plan += [
            ("m.room.join_rules", "", {"join_rule": preset["join_rule"]}),
            ("m.room.history_visibility", "", {"history_visibility": preset["history_visibility"]}),
            ("m.room.guest_access", "", {"guest_access": preset["guest_access"]}),
        ]
        for item in initial_state:
            event_type, state_key, content = item.get("type"), item.get("state_key", ""), item.get("content")
            if not isinstance(event_type, str) or not isinstance(state_key, str) or not isinstance(content, dict):
                raise bad_json("each initial_state entry needs type, state_key and content")
            if event_type in ("m.room.create", "m.room.member"):
                raise bad_json(f"initial_state cannot hold {event_type} events")
            plan.append((event_type, state_key, content))
        for key, event_type in (("name", "m.room.name"), ("topic", "m.room.topic")):
            if key in body:
                if not isinstance(body[key], str):
                    raise bad_json(f"'{key}' must be a string")
                plan.append((event_type, "", {key: body[key]}))
        for user in invites:
            plan.append(("m.room.member", user, {"membership": "invite", **({"is_direct": True} if body.get("is_direct") is True else {})}))

        # v12: the create event names the room, and _dry_run sets the ID once it has built it
        room_id = "" if version.room_id_is_create_hash else self.new_room_id()
        head = RoomHead(room_id, creator, None, [], 0, version)
        # Build and authorise every event in memory first: a room that would
        # be refused half-way is never stored, and its alias stays free.
        events = self._dry_run(head, creator, plan)
        room_id = head.room_id
        if alias is not None and not await self.store.create_alias(alias, room_id, creator):
            raise MatrixError(400, "M_ROOM_IN_USE", f"alias {alias} is taken")
        self._heads[room_id] = head
        async with head.lock:
            writes = [self._advance(head, event, None) for event in events]
            committed = self.store.persist_events(writes, self._room_row(head))
        await committed
        for write in writes:
            self._announce(Sent(write.event, write.position))
        if visibility == "public":
            await self.store.set_room_public(room_id, True)
        return room_id

    def _dry_run(self, head: RoomHead, sender: str, plan: list[tuple[str, str, dict[str, Any]]]) -> list[Event]:
        """Build and authorise a new room's first events without storing anything."""
        state: dict[tuple[str, str], Event] = {}
        events: list[Event] = []
        version = head.version
        hashes: dict[str, str] = {}  # v1-v2 events cite their prev and auth events' reference hashes
        for event_type, state_key, content in plan:
            selected = auth_rules.auth_types_for_event(event_type, sender, state_key, content, room_version=version)
            auth = {key: state[key] for key in selected if key in state}
            first = version.room_id_is_create_hash and event_type == "m.room.create"
            try:
                event = build_event(
                    room_id=None if first else head.room_id, sender=sender, type=event_type, content=content,
                    prev_events=[events[-1].event_id] if events else [],
                    auth_events=[e.event_id for e in auth.values()], depth=len(events) + 1,
                    origin_server_ts=self.now_ms(), server_name=self.server_name, signing_key=self.signing_key,
                    state_key=state_key, room_version=version, event_hashes=hashes,
                )  # fmt: skip
            except EventFormatError as exc:
                raise bad_json(str(exc)) from None
            if first:
                head.room_id = event.room_id
            elif version.room_id_is_create_hash and ("m.room.create", "") in state:
                auth[("m.room.create", "")] = state[("m.room.create", "")]  # named by the room ID
            try:
                auth_rules.check_auth(event, auth, room_version=version)
            except AuthError as exc:
                raise MatrixError(400, "M_INVALID_ROOM_STATE", f"{event_type}: {exc}") from None
            state[(event_type, state_key)] = event
            events.append(event)
            if version.events_carry_id:
                hashes[event.event_id] = encode_base64(reference_hash(event.pdu, version))
        return events

    def _profile(self, user_id: str) -> dict[str, str]:
        row = self.store.get_user(user_id)
        if row is None:
            return {}
        return {k: row[k] for k in ("displayname", "avatar_url") if row.get(k)}

    # ----------------------------------------------------------- membership

    async def set_membership(
        self, sender: str, room_id: str, target: str, membership: str, reason: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Sent:  # fmt: skip
        """Send a membership event (join, invite, leave, ban; leave on another user is a kick)."""
        content: dict[str, Any] = {"membership": membership}
        if membership == "join":
            content.update(self._profile(target))
            join_rule = self.state_content(self.current_state(room_id), "m.room.join_rules") or {}
            if join_rule.get("join_rule") in ("restricted", "knock_restricted"):
                authoriser = self._join_authoriser(room_id, target, join_rule.get("allow"))
                if authoriser is not None:
                    content["join_authorised_via_users_server"] = authoriser
        if reason is not None:
            if not isinstance(reason, str):
                raise bad_json("'reason' must be a string")
            content["reason"] = reason
        if extra:
            content.update(extra)
        return await self.send(sender, room_id, "m.room.member", content, state_key=target)

    def _join_authoriser(self, room_id: str, target: str, allow: Any) -> str | None:
        """A local member who may vouch for ``target`` joining a restricted room.

        Only when ``target`` is joined to a room the join rules allow;
        otherwise None, and the auth rules refuse the join unless ``target``
        was invited.
        """
        allowed = [
            entry.get("room_id") for entry in (allow if isinstance(allow, list) else [])
            if isinstance(entry, dict) and entry.get("type") == "m.room_membership"
        ]  # fmt: skip
        if not any(isinstance(r, str) and self.store.membership(r, target) == "join" for r in allowed):
            return None
        levels = self.state_event(room_id, "m.room.power_levels")
        needed = auth_rules.action_power_level(levels.content if levels else None, "invite")
        for user in self.joined_members(room_id):
            if user.endswith(":" + self.server_name) and self.power_level(room_id, user) >= needed:
                return user
        return None
