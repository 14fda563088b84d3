"""What the homeserver and its edges need from storage, as Protocols.

The homeserver layer (``gateway/homeserver``), the APIs and the edges
(device links, bridges) are typed against these Protocols; only the
composition root (``gateway/app.py``) names a concrete store. SQLite
(``gateway/store/sqlite``) is the embedded one; the PostgreSQL store
(``gateway/store/postgres``) runs the same table modules through a connection
that translates their SQL, with its own full-text and relation indexes.

Words every contract below uses:

* **committed** — the write is durable: once a coroutine of a store returns
  (or an awaitable it handed out completes), a crash of the process or of
  the machine loses nothing it wrote. Nothing is acknowledged earlier.
* **queued** — a write is put in the store's single, ordered write queue
  before the method returns; writes commit in the order they were queued,
  whichever method queued them, so a row queued before an event commits no
  later than that event (the MQTT bridge relies on this).
* **stream position** — one counter, shared by events, account data and
  receipts, ordering everything ``/sync`` reports. Positions are handed out
  by :meth:`RoomStore.next_stream` in the order writes are queued;
  :attr:`RoomStore.persisted` is the highest position known committed and
  never goes back, and readers never look past it.
* **reads** are cheap, synchronous and run on the caller's thread (the
  event loop): they see every committed write, and may see nothing queued
  but not yet committed.

Errors: a store raises the errors named here for the conditions named here
(:class:`UserExists`, :class:`DeviceNameTaken`, :class:`NoFreeAddress`);
any other exception from a write means that write (the whole batch, for
:meth:`RoomStore.persist_events`) is not stored.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypedDict

from lowband.gateway.matrix.events import Event
from lowband.gateway.store.txn_keys import TxnMark

#: A room's state: (event type, state key) → event ID.
StateMap = dict[tuple[str, str], str]


# ------------------------------------------------------------------- errors


class StoreError(Exception):
    """A write the store refused for a documented reason (see its subclasses)."""


class UserExists(StoreError):
    """A user ID is taken."""


class DeviceNameTaken(StoreError):
    """A link device of that name exists and no re-key was asked for."""


class TooManyFilters(StoreError):
    """A user has stored :data:`MAX_FILTERS_PER_USER` different filters already."""


#: Different filters one user may store (the same filter stored again keeps its ID and costs nothing).
MAX_FILTERS_PER_USER = 1000


class NoFreeAddress(StoreError):
    """Every link address (1–254) is in use."""


# ------------------------------------------------------------------ records


class UserRow(TypedDict):
    """A user as :meth:`AccountStore.get_user` returns it."""

    user_id: str
    password_hash: str
    admin: int
    displayname: str | None
    avatar_url: str | None
    deactivated: int
    owner: str | None  # None for a person's account; the edge that made it ("device:NAME", "mqtt")
    created_ts: int


class DeviceInfo(NamedTuple):
    """One of a user's client devices (made by a login, gone with its last token)."""

    device_id: str
    display_name: str | None


class RoomHeadRow(TypedDict):
    """What :meth:`RoomStore.persist_events` writes of a room with its events."""

    room_version: str
    creator: str
    state_group: int | None  # the room's current state
    extremities: list[str]  # forward extremities: the next local event's prev_events
    depth: int


class RoomRow(RoomHeadRow):
    """A room as :meth:`RoomStore.get_room` returns it."""

    room_id: str
    is_public: bool


class EventRow(TypedDict):
    """A stored event with its place in the room (:meth:`RoomStore.get_event`)."""

    event: Event
    stream: int
    state_before: int | None
    state_after: int | None
    rejected: str | None  # the reason, None when accepted
    redacted_by: str | None
    txn: TxnMark | None  # what is kept of the transaction it was sent with (txn_keys.py)
    outlier: bool  # known (an auth or state event fetched from a peer) but not placed in the timeline
    soft_failed: bool  # accepted in the DAG but not allowed by the room's state when it came: never shown


class MediaRow(TypedDict):
    """Metadata of an uploaded file (:meth:`MediaStore.get_media`)."""

    content_type: str
    filename: str | None
    size: int
    sha256: str


@dataclass(frozen=True)
class StateGroupWrite:
    """A state group :meth:`RoomStore.new_state_group` allocated, written with its event.

    Callers read ``group`` and hand the object back untouched in
    :attr:`EventWrite.new_group`; the other fields are for the store that
    made it (``delta`` is what it stores: the change from ``prev_group``,
    or the whole state when ``prev_group`` is None).
    """

    group: int
    room_id: str
    prev_group: int | None
    chain_length: int
    delta: StateMap


@dataclass(frozen=True)
class EventWrite:
    """One event for :meth:`RoomStore.persist_events`, with its place in the room."""

    event: Event
    position: int  # from next_stream
    state_before: int | None
    state_after: int | None
    new_group: StateGroupWrite | None = None  # for a state event: the group it makes
    txn: tuple[str, str, str] | None = None
    rejected: str | None = None
    #: An event known for its place in auth chains or state, outside the timeline (no state groups).
    outlier: bool = False
    #: Accepted into the DAG but refused by the current state when it came: stored, never shown.
    soft_failed: bool = False
    #: The current memberships this write sets: (user_id, membership, event_id) each. None: those of
    #: the event itself when it is an accepted member event (a local send: its state is the current one).
    memberships: tuple[tuple[str, str, str], ...] | None = None
    #: Log it for sending to the room's other servers (``federation_log``) in the same transaction.
    federate: bool = False
    #: State groups it makes besides ``new_group`` (a received event: the state before it, the room's new
    #: current state), written before it.
    extra_groups: tuple[StateGroupWrite, ...] = ()
    #: The event came from another server and may be stored as an outlier already (from a join's state,
    #: an auth chain, or a fetch whose commit is still queued): such a row is replaced. Our own new events
    #: (False) cannot have one, which keeps local sends to one insert.
    replaces_outlier: bool = False


@dataclass(frozen=True)
class DeviceRecord:
    """A provisioned link device (a board on a serial line or a LoRa radio)."""

    name: str
    address: int
    user_id: str
    static_public: bytes
    rooms: list[str]
    context: dict[str, Any]
    link: str
    created_ts: int
    key_ts: int
    revoked: bool


class InflightRow(NamedTuple):
    """A received, not yet acknowledged MQTT message and the transaction ID of its event."""

    txn_id: str
    topic: str
    digest: bytes
    mid: int
    created_ms: int


# ------------------------------------------------------- the stored PDU


def pdu_bytes(event: Event) -> bytes:
    """The canonical JSON a store writes for ``event``, signing it first when it waits for that.

    Every store calls this for each event it persists, and must call it
    before :meth:`RoomStore.persist_events` reports the batch committed:
    an event built with ``sign_later`` carries a stand-in signature until
    ``event.sign()`` runs, and nobody sees the event before its commit.
    It may be called from any thread. Raises nothing for an event this
    process built or read back from a store.
    """
    # Why the store signs: Ed25519 signing is the largest single cost of a
    # local send and releases the interpreter lock, so SQLite's writer
    # thread signs a batch while the event loop builds the next one. A
    # store without a thread of its own (an asyncio PostgreSQL driver) may
    # call this in a thread pool or inline: only speed depends on where.
    # This one helper keeps both stores writing the same bytes.
    if event.sign is not None:
        return event.sign()
    if event.canonical is not None:  # built by this process: its canonical JSON is at hand
        return event.canonical
    return json.dumps(event.pdu, ensure_ascii=False, separators=(",", ":")).encode()


# ---------------------------------------------------------------- Protocols


class AccountStore(Protocol):
    """Users, access tokens, client devices, filters and account data."""

    async def create_user(self, user_id: str, password_hash: str, admin: bool, ts: int, *,
                          owner: str | None = None) -> None:  # fmt: skip
        """Create a user; committed on return. Raises :class:`UserExists` if the ID is taken.

        ``owner`` is None for a person's account; an edge that creates accounts to speak as
        (``device:NAME``, ``mqtt``) names itself, and speaks only as accounts it owns.
        """
        ...

    def create_user_sync(self, user_id: str, password_hash: str, admin: bool, ts: int, *,
                         owner: str | None = None) -> None:  # fmt: skip
        """Blocking :meth:`create_user`, for command-line tools (never on the event loop)."""
        ...

    def get_user(self, user_id: str) -> UserRow | None:
        """The user, or None when there is no such user (deactivated users are returned)."""
        ...

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        """Replace the user's password hash; committed on return."""
        ...

    async def set_admin(self, user_id: str, admin: bool) -> None:
        """Give or take the server admin flag (``users.admin``); committed on return; no-op for no such user."""
        ...

    async def add_token(self, token: str, user_id: str, device_id: str, display_name: str | None, ts: int) -> None:
        """Store an access token and create or update its device; committed on return.

        A ``display_name`` of None keeps the device's current name.
        """
        ...

    def lookup_token(self, token: str) -> tuple[str, str] | None:
        """(user_id, device_id) of a live token, None for an unknown token or a deactivated user."""
        ...

    async def delete_token(self, token: str) -> None:
        """End a token (at once: :meth:`lookup_token` fails from now on); its device goes with its last token."""
        ...

    async def remove_device(self, user_id: str, device_id: str) -> bool:
        """End every token of the device and forget it (at once); False when there was none."""
        ...

    async def set_device_display_name(self, user_id: str, device_id: str, name: str | None) -> bool:
        """Rename a device; False when the user has no such device."""
        ...

    def user_devices(self, user_id: str) -> list[DeviceInfo]:
        """The user's client devices, by device ID."""
        ...

    def user_device(self, user_id: str, device_id: str) -> DeviceInfo | None:
        """One of the user's client devices, or None."""
        ...

    async def set_profile_field(self, user_id: str, field: str, value: str | None) -> None:
        """Set ``displayname`` or ``avatar_url``; committed on return. ValueError for another field."""
        ...

    async def add_filter(self, user_id: str, filter_json: str) -> int:
        """Store a filter; returns its ID, the next free one of this user (0, 1, …), or the ID it already has
        when the user stored the same text before. TooManyFilters past MAX_FILTERS_PER_USER different ones."""
        ...

    def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        """A stored filter, or None (also for an ID out of range)."""
        ...

    async def set_account_data(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> int:
        """Store (replace) account data, ``room_id`` '' for global; returns its stream position, committed."""
        ...

    def get_account_data(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any] | None:
        """One account data entry, or None."""
        ...

    def account_data_since(self, user_id: str, since: int, upto: int) -> list[tuple[str, str, dict[str, Any]]]:
        """(room_id, type, content) of entries last set at a stream position in (since, upto]."""
        ...


class RoomStore(Protocol):
    """Stream positions, rooms, state groups, events, memberships and aliases."""

    @property
    def persisted(self) -> int:
        """The highest stream position known committed (everything at or below it is)."""
        ...

    def see_committed_events(self) -> None:
        """Move :attr:`persisted` up to the highest event position committed by any process (a reader worker)."""
        ...

    def mark_committed(self, position: int) -> None:
        """Another process says everything up to ``position`` is committed: :attr:`persisted` moves up to it."""
        ...

    def next_stream(self) -> int:
        """Allocate the next stream position; queue the write that uses it before yielding to the loop."""
        ...

    def backfill_positions(self, count: int) -> list[int]:
        """``count`` stream positions below every event stored so far, lowest first.

        For history fetched after newer events (backfill): its events sort
        before everything already in the room's timeline, and ``/sync``
        (which only moves forward) never shows them.
        """
        ...

    def get_room(self, room_id: str) -> RoomRow | None:
        """The room's committed row, or None for a room this store does not hold."""
        ...

    def public_rooms(self) -> list[str]:
        """IDs of rooms published in the directory, sorted."""
        ...

    async def set_room_public(self, room_id: str, public: bool) -> None:
        """Publish or unpublish a room in the directory; committed on return."""
        ...

    def new_state_group(self, room_id: str, prev_group: int | None, delta: StateMap) -> StateGroupWrite:
        """Allocate a state group: the state of ``prev_group`` (None: empty) changed by ``delta``.

        Nothing is written: pass the result in :attr:`EventWrite.new_group`
        of the event that makes this state. :meth:`state_for_group` answers
        for the new group at once, before that write commits.
        """
        ...

    def state_for_group(self, group: int | None) -> StateMap:
        """The full state of a group ({} for None). Callers must not change the map.

        KeyError for a group that was neither allocated by this store nor committed.
        """
        ...

    def persist_events(self, writes: list[EventWrite], room_row: RoomHeadRow | None) -> Awaitable[None]:
        """Queue events (in list order) and what they change, in one transaction; await the result.

        Written together, all or nothing: each event with its stream
        position, state groups before and after, rejection reason and
        transaction ID; the state group it makes (``new_group``); for an
        accepted membership event, the member's row (see
        :meth:`membership`); for an accepted redaction, the target's
        ``redacted_by``; and ``room_row``, the room's head after the last
        event (None: the room row is left as it is).

        The write is queued before this returns, so batches of one room
        commit in the order they were made. The returned awaitable
        completes once everything is committed, and only then raises
        :attr:`persisted` to the batch's last position. It raises if the
        write failed (e.g. a transaction ID already used by another
        event): then none of the batch is stored.

        The store obtains each PDU's bytes with :func:`pdu_bytes`, which
        signs an event built with ``sign_later``; it may do so on any
        thread, but before the awaitable completes.
        """
        ...

    def events_for_txns(self, txns: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
        """Event IDs committed with any of these (user, device, transaction ID); unknown ones are absent."""
        ...

    def get_event(self, event_id: str) -> EventRow | None:
        """A committed event, accepted or rejected, or None."""
        ...

    def get_events(self, event_ids: list[str]) -> dict[str, EventRow]:
        """The committed ones of these events, by event ID (one query per 500 IDs)."""
        ...

    def room_events(self, room_id: str, *, after: int, upto: int, limit: int, backwards: bool) -> list[EventRow]:
        """At most ``limit`` accepted events with ``after`` < stream ≤ ``upto``, oldest or newest first."""
        ...

    async def purge_history(self, room_id: str, before_ts: int, *, keep: list[str], limit: int) -> list[str]:
        """Retention (MSC1763): delete up to ``limit`` **non-state** events of the room whose
        ``origin_server_ts`` is below ``before_ts``, oldest first, except ``keep`` (the forward extremities),
        with every row derived from them (relations, full-text index, notifications, threads); return the
        deleted IDs. State events and state groups are never deleted. Fewer than ``limit`` returned: none
        left. A purge that deletes something takes a stream position, which :meth:`last_purge` gives."""
        ...

    def last_purge(self, room_id: str) -> tuple[int, int] | None:
        """(stream position, cutoff ts) of the room's last purge that deleted something, or None. No I/O."""
        ...

    def all_room_ids(self) -> list[str]:
        """Every room this gateway holds (the rooms with a head), sorted."""
        ...

    def room_events_near_ts(self, room_id: str, ts: int, *, forwards: bool, upto: int, limit: int) -> list[EventRow]:
        """Accepted timeline events at or after ``ts`` (``forwards``) or at or before it, nearest first.

        Taken from the ``limit`` events nearest ``ts`` by ``origin_server_ts``
        (one index range, so the cost is bounded by ``limit``); those past
        stream ``upto``, rejected, outliers or soft-failed are left out, not
        replaced by further ones.
        """
        ...

    def rooms_for_user(self, user_id: str) -> list[tuple[str, str, int, str]]:
        """(room_id, membership, its stream position, its event ID) of every room the user has not forgotten."""
        ...

    def users_sharing_rooms(self, user_id: str) -> set[str]:
        """Users joined to a room ``user_id`` is joined to (``user_id`` too when joined anywhere)."""
        ...

    def memberships_in(self, room_ids: list[str], since: int, upto: int) -> list[tuple[str, str, str]]:
        """(room_id, user_id, membership) of the memberships in those rooms set in (since, upto]."""
        ...

    def membership(self, room_id: str, user_id: str) -> str | None:
        """The user's current membership in the room (join, invite, leave, ban, knock), or None."""
        ...

    async def forget_room(self, room_id: str, user_id: str) -> None:
        """Hide a room from :meth:`rooms_for_user` until the user's membership changes again."""
        ...

    async def create_alias(self, alias: str, room_id: str, creator: str) -> bool:
        """Map an alias to a room; committed on return. False (nothing written) if the alias exists."""
        ...

    def get_alias(self, alias: str) -> tuple[str, str] | None:
        """(room_id, creator) of an alias, or None."""
        ...

    async def delete_alias(self, alias: str) -> None:
        """Remove an alias (no error if it does not exist)."""
        ...

    def aliases_for_room(self, room_id: str) -> list[str]:
        """Local aliases pointing at a room, sorted."""
        ...


class ReceiptStore(Protocol):
    """Read receipts: one per room, receipt type, user and thread (None: unthreaded; 'main' or a thread root)."""

    async def set_receipt(self, room_id: str, receipt_type: str, user_id: str, event_id: str, ts: int,
                          thread_id: str | None = None) -> int:  # fmt: skip
        """Store (replace) a receipt; returns its stream position, committed."""
        ...

    def get_receipt(self, room_id: str, receipt_type: str, user_id: str, thread_id: str | None = None) -> str | None:
        """The event ID the user's receipt of this type and thread points at, or None."""
        ...

    def receipts_since(self, room_id: str, since: int, upto: int) -> list[tuple[str, str, str, int, str | None]]:
        """(receipt_type, user_id, event_id, ts, thread_id) of receipts set at a stream position in (since, upto]."""
        ...

    def read_positions(self, room_id: str, user_id: str) -> dict[str, int]:
        """Per thread key ('' unthreaded, 'main', a thread root) the stream position of the event the user's
        latest ``m.read``/``m.read.private`` receipt points at (receipts on unknown events left out)."""
        ...


class MediaStore(Protocol):
    """Metadata of uploaded files (their bytes live in the media directory)."""

    async def add_media(self, media_id: str, content_type: str, filename: str | None, size: int, sha256: str,
                        user_id: str, ts: int) -> None:  # fmt: skip
        """Record an uploaded file whose bytes are already on disk; committed on return."""
        ...

    def get_media(self, media_id: str) -> MediaRow | None:
        """Metadata of an uploaded file, or None."""
        ...

    def media_bytes_of(self, user_id: str) -> int:
        """The bytes of all media ``user_id`` uploaded (what counts against the media quota)."""
        ...


class LinkDeviceStore(Protocol):
    """The device registry's tables: provisioned link devices, their sessions and announcements.

    The command line writes here whether the gateway runs or not (the
    blocking methods); a running gateway polls :meth:`version`.
    """

    def devices(self) -> list[DeviceRecord]:
        """Every device, revoked ones included, by name."""
        ...

    def version(self) -> tuple[int, int, int]:
        """A value that changes whenever a device is added, re-keyed or revoked; cheap to poll."""
        ...

    def provision(self, name: str, user_id: str, static_public: bytes, rooms: list[str], context: dict[str, Any],
                  link: str, now_ms: int, *, rekey: bool) -> int:  # fmt: skip
        """Blocking: add a device at the lowest free address, or with ``rekey`` give an existing one a new key.

        A re-keyed device keeps its address and user, is no longer revoked
        and gets ``key_ts`` = max(old + 1, ``now_ms``); rooms, context and
        link are replaced. Returns the address. Raises
        :class:`DeviceNameTaken` (exists, no ``rekey``) or
        :class:`NoFreeAddress`.
        """
        ...

    def revoke(self, name: str) -> None:
        """Blocking: mark a device revoked (no error for an unknown name)."""
        ...

    def session_state(self, name: str, key_ts: int) -> dict[str, Any] | None:
        """The stored link session of the device's key ``key_ts``, or None."""
        ...

    async def save_session(self, name: str, key_ts: int, state: dict[str, Any] | None) -> None:
        """Store a device's session state for key ``key_ts`` (None: forget it); committed on return."""
        ...

    def announced(self, name: str, room_id: str, key_ts: int) -> bool:
        """Whether the room was told about this device key."""
        ...

    async def mark_announced(self, name: str, room_id: str, key_ts: int) -> None:
        """Remember that the room was told about this device key; committed on return."""
        ...


class MqttBridgeStore(Protocol):
    """The MQTT bridge's tables, per broker: in-flight messages, cursors, users, discovery, subscriptions.

    Coroutines here are shielded: cancelling the caller does not cancel
    the write, which still commits in its turn.
    """

    def inflight(self, broker: str, not_before_ms: int) -> list[InflightRow]:
        """In-flight rows of ``broker`` created at or after ``not_before_ms``."""
        ...

    async def purge_inflight(self, broker: str, before_ms: int) -> None:
        """Drop in-flight rows created before ``before_ms`` (their broker session expired)."""
        ...

    def add_inflight(self, broker: str, rows: Iterable[InflightRow]) -> Future[Any]:
        """Queue the insert of new rows (a row already there is kept) and return at once.

        Not awaited by the bridge: being queued before the events sent with
        these transaction IDs, the rows commit no later than those events.
        The future resolves when they are committed.
        """
        ...

    def drop_inflight(self, broker: str, txn_ids: Iterable[str]) -> Future[Any]:
        """Queue the delete of acknowledged rows and return at once; the future resolves when committed."""
        ...

    def cursor(self, mapping: str, room_id: str) -> int | None:
        """Stream position an outbound mapping published up to in a room, or None before its first start."""
        ...

    async def set_cursor(self, mapping: str, room_id: str, stream: int) -> None:
        """Record that everything up to ``stream`` was published; committed on return."""
        ...

    def bridge_users(self) -> set[str]:
        """Users the bridge created (only these are its to use)."""
        ...

    async def add_bridge_user(self, user_id: str, now_ms: int) -> None:
        """Remember a user the bridge created; committed on return."""
        ...

    def discovery(self, broker: str) -> list[tuple[str, bytes]]:
        """(topic, payload) of every discovery config stored for ``broker``."""
        ...

    async def add_discovery(self, broker: str, topic: str, payload: bytes) -> None:
        """Store (replace) one discovery config; committed on return."""
        ...

    def subscriptions(self, broker: str) -> set[str]:
        """Topic filters subscribed in ``broker``'s session."""
        ...

    async def set_subscriptions(self, broker: str, filters: set[str]) -> None:
        """Replace the recorded filters of ``broker``; committed on return."""
        ...


class FederationStore(Protocol):
    """Federation's tables: other servers' keys, the outbound log and its destinations, received transactions."""

    async def save_server_keys(self, server_name: str, fetched_ts: int, document: dict[str, Any],
                               keys: list[tuple[str, bytes, int]]) -> None:  # fmt: skip
        """Remember ``keys`` ((key_id, key, valid_until_ts)) of a server from ``document``; committed on return.

        A key already known keeps the later of the two validities.
        """
        ...

    def server_keys(self, server_name: str) -> list[tuple[str, bytes, int, int, dict[str, Any]]]:
        """Every cached key of ``server_name``: (key_id, key, valid_until_ts, fetched_ts, document)."""
        ...

    def log_after(self, cursor: int, upto: int, limit: int) -> list[tuple[int, str, str]]:
        """(stream, event_id, room_id) of logged events with cursor < stream ≤ upto, oldest first."""
        ...

    def log_head(self) -> int:
        """The last logged stream position (0 when the log is empty)."""
        ...

    def destinations(self) -> list[tuple[str, int, int, int | None]]:
        """Every known destination: (name, cursor, txn_seq, txn_upto)."""
        ...

    async def add_destination(self, destination: str, cursor: int) -> None:
        """Start delivering to ``destination`` from log position ``cursor`` on (no change if known); committed."""
        ...

    async def begin_transaction(self, destination: str, txn_seq: int, upto: int) -> None:
        """Record the transaction about to be sent (its number and the log position it covers); committed."""
        ...

    async def end_transaction(self, destination: str, cursor: int, ts: int) -> None:
        """The transaction was accepted: the cursor moves to ``cursor``, nothing is in flight; committed."""
        ...

    async def add_outbox(self, destination: str, edus: list[tuple[str, dict[str, Any]]]) -> None:
        """Keep EDUs that must reach ``destination`` across restarts; committed on return."""
        ...

    def outbox(self, destination: str, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """The oldest kept EDUs for ``destination``: (id, edu_type, content)."""
        ...

    def outbox_destinations(self) -> list[str]:
        """Destinations with kept EDUs waiting."""
        ...

    async def drop_outbox(self, ids: list[int]) -> None:
        """The peer accepted these kept EDUs."""
        ...

    async def count_failure(self, destination: str) -> None:
        """One more failed attempt to reach ``destination``."""
        ...

    def received_txn(self, origin: str, txn_id: str) -> dict[str, Any] | None:
        """The answer already given to transaction ``txn_id`` of ``origin``, or None."""
        ...

    async def remember_txn(self, origin: str, txn_id: str, response: dict[str, Any], ts: int) -> None:
        """Keep the answer to a handled transaction (a day's worth is kept); committed on return."""
        ...

    async def save_invite(self, room_id: str, user_id: str, event_id: str, room_version: str,
                          stripped_state: list[Any]) -> None:  # fmt: skip
        """Keep an invite to a room this server does not hold, with the state the inviter showed; committed."""
        ...

    def invite(self, room_id: str, user_id: str) -> tuple[str, str, list[Any]] | None:
        """(event_id, room_version, stripped state) of such an invite, or None."""
        ...

    async def save_knock(self, room_id: str, user_id: str, event_id: str, room_version: str,
                         stripped_state: list[Any], servers: list[str]) -> None:  # fmt: skip
        """Keep our user's knock on a room this server does not hold, with the room's stripped state and the
        servers it went through (the latest knock replaces one before); committed."""
        ...

    def knock(self, room_id: str, user_id: str) -> tuple[str, str, list[Any], list[str]] | None:
        """(event_id, room_version, stripped state, servers) of such a knock, or None."""
        ...


class OneTimeKeyConflict(ValueError):
    """A one-time key ID uploaded again with other content (the spec's 400 M_INVALID_PARAM)."""


class TooManyOneTimeKeys(ValueError):
    """An upload would leave a device holding more unclaimed one-time keys than allowed."""


class E2EEStore(Protocol):
    """Device keys, one-time and fallback keys, cross-signing, device list changes, to-device messages.

    Contracts are those of :class:`~lowband.gateway.store.sqlite.e2ee.E2EETables`; every write is committed on
    return, and writes that take a stream position mark it persisted.
    """

    def device_keys(self, user_id: str, device_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]: ...

    async def set_device_keys(self, user_id: str, device_id: str, keys: dict[str, Any]) -> bool: ...

    async def add_one_time_keys(self, user_id: str, device_id: str, keys: list[tuple[str, str, Any]],
                                max_held: int) -> None: ...  # fmt: skip

    async def set_fallback_keys(self, user_id: str, device_id: str, keys: list[tuple[str, str, Any]]) -> None: ...

    def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]: ...

    def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]: ...

    async def claim(self, wanted: list[tuple[str, str, str]]) -> dict[tuple[str, str], tuple[str, Any]]: ...

    def cross_signing_keys(self, user_id: str) -> dict[str, dict[str, Any]]: ...

    async def set_cross_signing_keys(self, user_id: str, keys: dict[str, dict[str, Any]]) -> int: ...

    def signatures_for(self, target_user: str, target_key: str) -> list[tuple[str, str, str]]: ...

    async def add_signatures(self, signatures: list[tuple[str, str, str, str, str]]) -> None: ...

    async def device_list_changed(self, user_ids: list[str]) -> int: ...

    def device_lists_changed(self, since: int, upto: int, limit: int = 10_000) -> list[str]: ...

    def device_list_position(self, user_id: str) -> int | None: ...

    async def delete_device(self, user_id: str, device_id: str) -> None: ...

    def seen_txn(self, sender: str, sender_device: str, txn_id: str) -> bool: ...

    def inbox_size(self, user_id: str, device_id: str) -> int: ...

    async def enqueue(self, messages: list[tuple[str, str, str, str, dict[str, Any]]],
                      txn: tuple[str, str, str] | None, ts: int, max_inbox: int) -> int | None: ...  # fmt: skip

    def pending(self, user_id: str, device_id: str, since: int, upto: int, limit: int) -> list[tuple[int, str, str, Any]]: ...

    async def acknowledge(self, user_id: str, device_id: str, upto: int) -> None: ...

    async def forget_txns_before(self, ts: int) -> None: ...


@dataclass(frozen=True)
class BackedUpKey:
    """One session key in a server-side key backup: what the server compares, and the client's opaque data."""

    first_message_index: int
    forwarded_count: int
    is_verified: bool
    #: the client's ``session_data`` object as compact JSON text (the server never looks inside)
    session_data: str


class RoomKeyVersion(NamedTuple):
    """A live key backup version of one user."""

    version: int
    algorithm: str
    auth_data: str  # JSON object text
    etag: int  # grows whenever the version's keys change
    key_count: int  # keys stored in it
    data_bytes: int  # bytes of their session_data


class WrongRoomKeysVersion(StoreError):
    """A key upload named a version that is not the user's current one (``current`` None: the user has none)."""

    def __init__(self, current: int | None) -> None:
        super().__init__(f"current version: {current}")
        self.current = current


class RoomKeysFull(StoreError):
    """A write would take a user's backups past a limit the caller set (the message names it)."""


class RoomKeyStore(Protocol):
    """Server-side key backups ("room_keys"), per user. Contracts are those of
    :class:`~lowband.gateway.store.sqlite.room_keys.RoomKeyTables`; every write is committed on return."""

    def current_version(self, user_id: str) -> RoomKeyVersion | None: ...

    def get_version(self, user_id: str, version: int) -> RoomKeyVersion | None: ...

    def last_issued(self, user_id: str) -> int: ...

    async def create_version(self, user_id: str, algorithm: str, auth_data: str, max_versions: int) -> int: ...

    async def update_version(self, user_id: str, version: int, auth_data: str) -> bool: ...

    async def delete_version(self, user_id: str, version: int) -> bool: ...

    async def put_keys(self, user_id: str, version: int, keys: list[tuple[str, str, BackedUpKey]],
                       replaces: Callable[[BackedUpKey, BackedUpKey], bool], max_keys: int,
                       max_bytes: int) -> tuple[int, int]: ...  # fmt: skip

    async def delete_keys(self, user_id: str, version: int, room_id: str | None,
                          session_id: str | None) -> tuple[int, int] | None: ...  # fmt: skip

    def get_key(self, user_id: str, version: int, room_id: str, session_id: str) -> BackedUpKey | None: ...

    def keys_page(self, user_id: str, version: int, room_id: str | None, after: tuple[str, str] | None,
                  limit: int) -> list[tuple[str, str, BackedUpKey]]: ...  # fmt: skip


class PresenceRecord(NamedTuple):
    """One user's presence as kept across restarts (``homeserver/presence.py`` holds the rules)."""

    user_id: str
    presence: str
    status_msg: str | None
    last_active_ms: int
    #: a user of this server (False: what another server said of its user)
    local: bool


class PresenceStore(Protocol):
    """Presence kept across restarts. Contracts are those of
    :class:`~lowband.gateway.store.sqlite.presence.PresenceTables`."""

    def save(self, records: Sequence[PresenceRecord]) -> None: ...

    def load(self, limit: int) -> list[PresenceRecord]: ...


class DirectoryNetworkStore(Protocol):
    """Rooms bridges published under their third-party networks. Contracts are those of
    :class:`~lowband.gateway.store.sqlite.directory_networks.DirectoryNetworkTables`; writes committed on return."""

    async def publish(self, appservice_id: str, network_id: str, room_id: str, limit: int) -> bool: ...

    async def unpublish(self, appservice_id: str, network_id: str, room_id: str) -> None: ...

    def rooms(self, appservice_ids: Sequence[str], network_id: str | None = None) -> list[str]: ...


@dataclass
class AppServiceQueueRow:
    """One application service's place in the stream and its transaction in flight (see :class:`AppServiceStore`)."""

    appservice_id: str
    cursor: int
    txn_prefix: str
    txn_seq: int
    txn_upto: int | None
    txn_content: dict[str, Any] | None
    failures: int = 0
    last_ok_ts: int | None = None
    last_error: str | None = None
    last_error_ts: int | None = None
    sent_txns: int = 0
    sent_events: int = 0


@dataclass(frozen=True)
class TimelineRow:
    """A timeline event, as much as deciding which application services want it takes."""

    stream: int
    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    state_before: int | None


class AppServiceStore(Protocol):
    """The application services' push queue: a cursor per bridge over the event stream, and the transaction in
    flight. Contracts are those of :class:`~lowband.gateway.store.sqlite.appservices.AppServiceTables`; every
    write is committed on return."""

    def queues(self) -> dict[str, AppServiceQueueRow]: ...

    async def add_queue(self, appservice_id: str, cursor: int, txn_prefix: str) -> AppServiceQueueRow: ...

    async def move_cursor(self, appservice_id: str, cursor: int) -> None: ...

    async def begin_transaction(self, appservice_id: str, txn_seq: int, upto: int, content: dict[str, Any]) -> None: ...

    async def end_transaction(self, appservice_id: str, upto: int, ts: int, events: int,
                              to_device: list[int]) -> None: ...  # fmt: skip

    async def count_failure(self, appservice_id: str, error: str, ts: int) -> None: ...

    def timeline_after(self, cursor: int, upto: int, limit: int) -> list[TimelineRow]: ...

    def to_device_after(self, cursor: int, upto: int, limit: int) -> list[tuple[int, str, str]]: ...

    def to_device_at(self, positions: list[int]) -> list[dict[str, Any]]: ...


class TooManyPushers(StoreError):
    """The user already has as many pushers as allowed."""


class NotificationRow(NamedTuple):
    """One event a user's push rules asked to notify about."""

    user_id: str
    stream: int
    room_id: str
    event_id: str
    actions: list[Any]
    highlight: bool
    ts: int
    #: the thread the event is in: "main" or its thread root's event ID (spec v1.4 threading)
    thread_id: str = "main"


class PusherRow(NamedTuple):
    """One pusher of a user: ``body`` is the pusher as ``GET /pushers`` shows it; ``cursor`` the notification
    position delivered up to."""

    user_id: str
    app_id: str
    pushkey: str
    kind: str
    body: dict[str, Any]
    device_id: str | None
    cursor: int
    failures: int = 0
    last_error: str | None = None


class PushStore(Protocol):
    """Push rules, notification rows and pushers. Contracts are those of
    :class:`~lowband.gateway.store.sqlite.push.PushTables`; every write is committed on return."""

    def rules_doc(self, user_id: str) -> dict[str, Any] | None: ...

    async def edit_rules(self, user_id: str,
                         edit: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]: ...  # fmt: skip

    def evaluated(self) -> int | None: ...

    def timeline_after(self, cursor: int, upto: int, limit: int) -> list[TimelineRow]: ...

    async def add_notifications(self, rows: list[NotificationRow], evaluated: int) -> None: ...

    def rooms_changed(self, user_id: str, after: int, upto: int) -> set[str]: ...

    def unread_counts(self, user_id: str, room_id: str, after: int) -> tuple[int, int]: ...

    def unread_by_thread(self, user_id: str, room_id: str, after: int,
                         read_upto: dict[str, int]) -> dict[str, tuple[int, int]]: ...  # fmt: skip

    def newest_notification(self, user_id: str, room_id: str) -> int: ...

    def notification_rooms(self, user_id: str) -> list[str]: ...

    def notifications(self, user_id: str, below: int | None, limit: int,
                      only_highlight: bool) -> list[NotificationRow]: ...  # fmt: skip

    def notifications_after(self, user_id: str, cursor: int, limit: int) -> list[NotificationRow]: ...

    def pushers(self, user_id: str | None = None) -> list[PusherRow]: ...

    async def set_pusher(self, pusher: PusherRow, *, append: bool, limit: int, ts: int) -> list[PusherRow]: ...

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> bool: ...

    async def move_pusher_cursor(self, user_id: str, app_id: str, pushkey: str, cursor: int) -> None: ...

    async def count_pusher_failure(self, user_id: str, app_id: str, pushkey: str, error: str) -> None: ...


class RelationStore(Protocol):
    """The index of ``m.relates_to`` (relations, threads). Contracts are those of
    :class:`~lowband.gateway.store.sqlite.relations.RelationTables`; kept up to date by every event write."""

    def relation_of(self, event_id: str) -> tuple[str, str] | None: ...

    def children(self, room_id: str, parent_id: str, *, rel_type: str | None, event_type: str | None, after: int,
                 upto: int, backwards: bool, limit: int, depth: int = 1) -> list[str]: ...  # fmt: skip

    def bundles(self, parent_ids: list[str], user_id: str, upto: int,
                ignored: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]: ...  # fmt: skip

    def threads(self, room_id: str, *, below: int | None, limit: int,
                participant: str | None) -> list[tuple[str, int]]: ...  # fmt: skip


class SearchHit(NamedTuple):
    """One event the full-text index matched."""

    stream: int
    event_id: str
    room_id: str
    type: str
    sender: str
    state_before: int | None
    #: higher for a better match
    rank: float
    #: the event's origin_server_ts (retention leaves out expired hits)
    origin_server_ts: int = 0


class SearchStore(Protocol):
    """The full-text index of message bodies, room names and topics. Contracts are those of
    :class:`~lowband.gateway.store.sqlite.search.SearchTables`; kept up to date by every event write."""

    def matches(self, words: list[str], *, below: int, limit: int) -> list[SearchHit]: ...

    def directory_users(self, searcher: str, public_rooms: list[str], *, everyone: bool, user_id_like: str,
                        name_like: tuple[str, str], limit: int) -> list[tuple[str, str | None, str | None]]: ...


@dataclass
class IntegrityFinding:
    """The outcome of one integrity check: what it looked at, how many problems, a few of them as text."""

    #: the check's name (``sqlite``, ``foreign_keys``, ``events``, ``dag``, ``state``, ``relations``, ...)
    check: str
    #: how many items (rows, events, rooms) the check looked at
    checked: int = 0
    #: how many problems it found; 0 is clean
    problems: int = 0
    #: up to a few problems, one line each
    examples: list[str] | None = None
    #: things that are not problems but a reader may want to know (e.g. gaps left by retention on purpose)
    notes: list[str] | None = None


class IntegrityCheck(Protocol):
    """A read-only integrity check of a store (``lowband db check``); never writes, works beside a live gateway.
    Contracts are those of :class:`~lowband.gateway.store.sqlite.integrity.SQLiteIntegrity`."""

    def checks(self, *, quick: bool) -> list[tuple[str, int]]: ...

    def run(self, name: str, *, quick: bool, advance: Callable[[int], None]) -> IntegrityFinding: ...

    def close(self) -> None: ...


class AccountLifecycleStore(Protocol):
    """OpenID tokens, deactivation and erasure, what ``whois`` shows. Contracts are those of
    :class:`~lowband.gateway.store.sqlite.accounts_lifecycle.AccountLifecycleTables`; writes committed on return."""

    async def add_openid_token(self, token: str, user_id: str, now_ms: int, lifetime_ms: int,
                               max_per_user: int) -> None: ...  # fmt: skip

    def openid_user(self, token: str, now_ms: int) -> str | None: ...

    async def upgrade_guest(self, user_id: str, guest_owner: str, password_hash: str) -> bool: ...

    async def deactivate(self, user_id: str, *, erase: bool, now_ms: int = 0) -> None: ...

    def erased_users(self) -> list[str]: ...

    def device_sessions(self, user_id: str) -> dict[str, list[int]]: ...


class Store(AccountStore, RoomStore, ReceiptStore, MediaStore, Protocol):
    """Everything one gateway keeps: what :class:`~lowband.gateway.homeserver.services.Services` holds.

    The homeserver's own data is reached directly; the tables of an edge
    hang off it by name, so an edge is handed only its own.
    """

    @property
    def link_devices(self) -> LinkDeviceStore:
        """The device registry's tables."""
        ...

    @property
    def mqtt(self) -> MqttBridgeStore:
        """The MQTT bridge's tables."""
        ...

    @property
    def federation(self) -> FederationStore:
        """Federation's tables."""
        ...

    @property
    def e2ee(self) -> E2EEStore:
        """End-to-end encryption's tables (keys, device lists, to-device messages)."""
        ...

    @property
    def room_keys(self) -> RoomKeyStore:
        """Server-side key backups (``room_keys``)."""
        ...

    @property
    def appservices(self) -> AppServiceStore:
        """The application services' push queue."""
        ...

    @property
    def directory_networks(self) -> DirectoryNetworkStore:
        """The room directory per bridge network."""
        ...

    @property
    def relations(self) -> RelationStore:
        """The index of event relations (threads, edits, references, annotations)."""
        ...

    @property
    def presence(self) -> PresenceStore:
        """Presence of users, kept across restarts."""
        ...

    @property
    def push(self) -> PushStore:
        """Push rules, notifications and pushers."""
        ...

    @property
    def account_lifecycle(self) -> AccountLifecycleStore:
        """OpenID tokens, deactivation and erasure."""
        ...

    @property
    def search(self) -> SearchStore:
        """The full-text index behind ``POST /search``."""
        ...

    def close(self) -> None:
        """Commit every queued write, then release the database (blocking)."""
        ...
