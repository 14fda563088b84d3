"""Noise sessions for CoAP clients (docs/protocol/coap-noise.md), sans-I/O, both sides.

A CoAP client on a slow or untrusted path talks to the gateway through the
same frames as the device links (docs/protocol/link.md section 2): HS1 and
HS2 carry the two 48-byte Noise KK messages, DATA frames carry one CoAP
message each, sealed with AES-256-CCM-8 under the split keys. CoAP's own
confirmable messages give reliability, so here a DATA frame never carries
the ACK flag and there is no link ARQ: a CoAP retransmission is a new DATA
frame (a new counter), and the CoAP message layer deduplicates it.

Rules of :class:`SecureListener` (the gateway, one per UDP listener):

* a client is known by its provisioned address byte, not by where its
  datagrams come from: a NAT that rebinds the client's port keeps the
  session. Replies go to the source of the client's last *authenticated*
  DATA frame (:meth:`SecureListener.route`); HS2 goes to the HS1's source;
* unknown address, malformed frame, bad tag, replay, failed handshake:
  ``Refused(kind)`` and nothing else (no exception, nothing transmitted);
* a valid HS1 makes a *pending* session (one per epoch) beside the working
  one; the first DATA frame that verifies under a pending session makes it the working
  one (so a replayed HS1 — Noise KK cannot tell a replay — costs one HS2 but
  never cuts a client off). An HS1 identical to the last one (its HS2 was
  lost) gets the identical HS2: the first repeat at once, then at most one
  per ``repeat_interval``;
* a DATA frame for which there is no session with its epoch (the gateway
  restarted, or the client's session was replaced) is answered with a
  2-byte NOSESSION frame (type 3, see below), at most once per
  ``repeat_interval`` per address; it tells the client to shake hands again;
* an empty DATA frame is a keep-alive: it refreshes the route (a NAT
  binding) and is answered with nothing;
* sessions live in memory only. A restart loses them, and the client's next
  frame brings NOSESSION and a new handshake (100 bytes). So a session key
  never outlives the process and is never written anywhere, and a send
  counter can never be used twice under one key: each handshake makes new
  keys, and within a process the counter only grows. That is why the send
  counters here need no persisted blocks (unlike the device links, whose
  sessions survive restarts).

Frame types (link.md: header bits 7-5): 0 HS1, 1 HS2, 2 DATA, and here also
3 NOSESSION (gateway to client only: ``0x60 | epoch, address``, no body,
not authenticated: a client treats it only as a hint, see
:class:`SecureClient`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from lowband.codecs.link_frame import (
    FLAG_ACK,
    FLAG_FRAG,
    HANDSHAKE_LEN,
    MAX_ADDRESS,
    MIN_ADDRESS,
    TAG_LEN,
    TYPE_DATA,
    TYPE_HS1,
    TYPE_HS2,
    Frame,
)
from lowband.gateway.link import crypto
from lowband.gateway.link.handshake import MAX_EPOCH, HandshakeError, Initiator, Responder, SessionKeys

__all__ = [
    "DATA_OVERHEAD",
    "MAX_DATAGRAM",
    "TYPE_NOSESSION",
    "Action",
    "ClientEntry",
    "NoSession",
    "Plaintext",
    "Refused",
    "SecureClient",
    "SecureListener",
    "SessionStarted",
    "Transmit",
    "parse_datagram",
]

UP, DOWN = crypto.DIRECTION_UP, crypto.DIRECTION_DOWN
TYPE_NOSESSION = 3
#: header, address, seq and the CCM-8 tag: what a DATA frame adds to a CoAP message.
DATA_OVERHEAD = 3 + TAG_LEN
#: The largest datagram accepted: a 1024-byte block plus CoAP header and options, with room to spare.
#: (The device links keep frames to 255 bytes for LoRa; on UDP a CoAP block of 1024 bytes needs more.)
MAX_DATAGRAM = 1400
#: Seconds between two repeated answers (HS2 again, NOSESSION) to one address, after the first.
REPEAT_INTERVAL = 1.0
#: New handshakes (each costs two X25519 operations) computed per client address: a burst, then this many per
#: second. A client makes one per session; a flood of forged HS1 for one address costs bounded CPU.
HANDSHAKE_BURST = 4
HANDSHAKES_PER_S = 2.0
#: Consecutive downlink frames that fail their tag before the client asks for a new handshake: the
#: gateway's counter ran more than 127 ahead (frames lost), or the gateway has other keys.
CLIENT_BAD_TAG_LIMIT = 3
# A send counter block. Sessions are never persisted (module docstring), so the block is only the
# bookkeeping crypto.SendCounter asks for; its size does not matter.
_BLOCK = 1 << 32

# Refusal kinds, for counters and logs.
MALFORMED, UNKNOWN_CLIENT, UNEXPECTED = "malformed", "unknown_client", "unexpected_frame"
BAD_HANDSHAKE, HANDSHAKE_LIMITED, BAD_TAG = "bad_handshake", "handshake_limited", "bad_tag"
NO_SESSION, REPLAY = "no_session", "replay"


class NoSession(RuntimeError):
    """:meth:`SecureListener.seal` or :meth:`SecureClient.seal` without a working session (our side's error)."""


def parse_datagram(data: bytes, max_len: int = MAX_DATAGRAM) -> Frame | None:
    """Parse one datagram as one frame (link.md section 2, plus NOSESSION); None if malformed.

    The same layout as :func:`lowband.codecs.link_frame.parse_frame`, with a
    length limit of ``max_len`` instead of a LoRa packet's 255 bytes. DATA
    frames with the ACK or FRAG flag are malformed here (CoAP brings its own
    reliability and blockwise transfer). Never raises.
    """
    if not 2 <= len(data) <= max_len:
        return None
    header, address = data[0], data[1]
    kind, epoch, flags = header >> 5, header & 0x07, header & (FLAG_ACK | FLAG_FRAG)
    if not MIN_ADDRESS <= address <= MAX_ADDRESS or flags:
        return None
    if kind in (TYPE_HS1, TYPE_HS2):
        if len(data) != 2 + HANDSHAKE_LEN:
            return None
        return Frame(kind, epoch, address, bytes(data[2:]))
    if kind == TYPE_NOSESSION:
        return Frame(kind, epoch, address, b"") if len(data) == 2 else None
    if kind == TYPE_DATA and len(data) >= DATA_OVERHEAD:
        return Frame(TYPE_DATA, epoch, address, bytes(data[3:]), seq=data[2])
    return None


def nosession_frame(address: int, epoch: int) -> bytes:
    """The 2-byte NOSESSION frame for ``address`` and the epoch of the frame it answers."""
    return bytes((TYPE_NOSESSION << 5 | epoch, address))


def _seal(keys: SessionKeys, direction: int, address: int, counter: int, plaintext: bytes) -> bytes:
    shell = Frame(TYPE_DATA, keys.epoch, address, b"", seq=counter & 0xFF)
    key = keys.k_up if direction == UP else keys.k_down
    return shell.aad + crypto.seal(key, direction, counter, shell.aad, plaintext)


def _open(keys: SessionKeys, direction: int, window: crypto.ReplayWindow, frame: Frame) -> tuple[int, bytes] | None:
    """(counter, plaintext) if the frame verifies under ``keys``, else None. The window is not changed."""
    counter = window.candidate(frame.seq)
    key = keys.k_up if direction == UP else keys.k_down
    try:
        return counter, crypto.open_(key, direction, counter, frame.aad, frame.body)
    except crypto.TagError:
        return None


@dataclass
class _Session:
    keys: SessionKeys
    window: crypto.ReplayWindow = field(default_factory=crypto.ReplayWindow)
    send: crypto.SendCounter = field(default_factory=crypto.SendCounter)

    def next_counter(self) -> int:
        if self.send.needs_block():
            self.send.reserve_block(_BLOCK)  # memory only: see the module docstring
        return self.send.next()


# ----------------------------------------------------------------- actions


@dataclass(frozen=True)
class Transmit:
    """Send ``frame`` back to the source of the datagram just received."""

    frame: bytes


@dataclass(frozen=True)
class Plaintext:
    """A CoAP message from the client at ``address`` (authenticated, new to the replay window)."""

    address: int
    data: bytes


@dataclass(frozen=True)
class SessionStarted:
    """The client at ``address`` proved a new session (its first DATA frame under it verified).

    For the CoAP side this is a new connection (MSC3079): sticky options
    start afresh. It comes before the ``Plaintext`` of that frame.
    """

    address: int
    epoch: int


@dataclass(frozen=True)
class Refused:
    """The datagram was dropped; ``kind`` names why (counted in :attr:`SecureListener.refused`)."""

    kind: str
    address: int | None = None


Action = Transmit | Plaintext | SessionStarted | Refused


@dataclass(frozen=True)
class ClientEntry:
    """A provisioned CoAP client: its address on this listener, name, static public key and Matrix user."""

    address: int
    name: str
    static_public: bytes
    user_id: str = ""


@dataclass
class _Client:
    entry: ClientEntry
    session: _Session | None = None
    # Pending sessions by epoch, with the (HS1 body, HS2 frame) that made each: a replayed old HS1 (another
    # epoch) then cannot displace the client's own new handshake before its first DATA frame.
    pending: dict[int, _Session] = field(default_factory=dict)
    last_hs: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    hs_repeats: int = 0
    repeated_at: float = float("-inf")
    route: Hashable | None = None  # source of the last authenticated DATA frame
    last_seen: float | None = None
    hs_budget: float = HANDSHAKE_BURST  # token bucket of new handshakes
    hs_budget_at: float = float("-inf")


class SecureListener:
    """The gateway's side: many provisioned clients on one listener (the responder of every handshake)."""

    def __init__(self, static_private: bytes, *, repeat_interval: float = REPEAT_INTERVAL,
                 max_datagram: int = MAX_DATAGRAM, ephemeral: Callable[[], bytes] | None = None) -> None:  # fmt: skip
        """``static_private``: the gateway's link key (devices.registry.load_or_create_link_key).

        ``ephemeral`` makes the gateway's ephemeral key of each handshake
        (test vectors only; default: a fresh random key). Raises ValueError
        for a key that is not 32 bytes.
        """
        if len(static_private) != crypto.KEY_LEN:
            raise ValueError("the gateway static key must be 32 bytes")
        self.static_private = bytes(static_private)
        self._ephemeral = ephemeral
        self.repeat_interval = repeat_interval
        self.max_datagram = max_datagram
        self._clients: dict[int, _Client] = {}
        #: refusals by kind, since start
        self.refused: dict[str, int] = {}
        #: keep-alives (empty DATA frames) accepted
        self.keepalives = 0

    # ------------------------------------------------------------ clients

    def set_clients(self, entries: list[ClientEntry]) -> None:
        """Make ``entries`` the provisioned clients.

        A client whose address and key are unchanged keeps its session; a
        removed or re-keyed one loses it (its frames are refused from now on,
        or need a new handshake under the new key).
        """
        fresh: dict[int, _Client] = {}
        for entry in entries:
            old = self._clients.get(entry.address)
            if old is not None and old.entry.static_public == entry.static_public:
                old.entry = entry
                fresh[entry.address] = old
            else:
                fresh[entry.address] = _Client(entry)
        self._clients = fresh

    def client(self, address: int) -> ClientEntry | None:
        """The provisioned client at ``address``, or None."""
        known = self._clients.get(address)
        return known.entry if known else None

    def has_session(self, address: int) -> bool:
        """Whether the client at ``address`` has a working (confirmed) session."""
        known = self._clients.get(address)
        return bool(known and known.session)

    def route(self, address: int) -> Hashable | None:
        """Where frames for ``address`` go: the source of its last authenticated DATA frame (None: not yet)."""
        known = self._clients.get(address)
        return known.route if known else None

    def last_seen(self, address: int) -> float | None:
        """``now`` of the client's last authenticated frame, or None."""
        known = self._clients.get(address)
        return known.last_seen if known else None

    # ------------------------------------------------------------ receive

    def receive(self, datagram: bytes, now: float, source: Hashable | None = None) -> list[Action]:
        """Handle one datagram from ``source`` (opaque: the transport's idea of an address).

        Returns what to do, in order: ``Transmit`` frames go back to
        ``source``; ``Plaintext`` is a CoAP message for the message layer;
        ``Refused`` says the datagram was dropped and why. Never raises for
        any ``datagram``.
        """
        frame = parse_datagram(datagram, self.max_datagram)
        if frame is None:
            return [self._refuse(MALFORMED, None)]
        known = self._clients.get(frame.address)
        if known is None:
            return [self._refuse(UNKNOWN_CLIENT, frame.address)]
        if frame.type == TYPE_HS1:
            return self._handshake(known, frame, now)
        if frame.type != TYPE_DATA:
            return [self._refuse(UNEXPECTED, frame.address)]
        return self._data(known, frame, now, source)

    def _refuse(self, kind: str, address: int | None) -> Refused:
        self.refused[kind] = self.refused.get(kind, 0) + 1
        return Refused(kind, address)

    def _may_repeat(self, known: _Client, repeats: int, now: float) -> bool:
        # The first repeat always goes (a lost answer must not stall the client); later ones are rate-limited.
        if repeats > 0 and now - known.repeated_at < self.repeat_interval:
            return False
        known.repeated_at = now
        return True

    def _handshake(self, known: _Client, frame: Frame, now: float) -> list[Action]:
        last = known.last_hs.get(frame.epoch)
        if last is not None and last[0] == frame.body:
            if not self._may_repeat(known, known.hs_repeats, now):
                return [self._refuse(HANDSHAKE_LIMITED, frame.address)]
            known.hs_repeats += 1
            return [Transmit(last[1])]
        if not self._may_handshake(known, now):
            return [self._refuse(HANDSHAKE_LIMITED, frame.address)]
        ephemeral = self._ephemeral() if self._ephemeral is not None else None
        responder = Responder(self.static_private, known.entry.static_public, frame.address, frame.epoch, ephemeral)
        try:
            message2, keys = responder.respond(frame.body)
        except HandshakeError:
            return [self._refuse(BAD_HANDSHAKE, frame.address)]
        hs2 = Frame(TYPE_HS2, frame.epoch, frame.address, message2).encode()
        known.pending[frame.epoch] = _Session(keys)
        known.last_hs[frame.epoch], known.hs_repeats = (frame.body, hs2), 0
        return [Transmit(hs2)]

    @staticmethod
    def _may_handshake(known: _Client, now: float) -> bool:
        elapsed = max(0.0, now - known.hs_budget_at) if known.hs_budget_at != float("-inf") else HANDSHAKE_BURST
        known.hs_budget = min(HANDSHAKE_BURST, known.hs_budget + elapsed * HANDSHAKES_PER_S)
        known.hs_budget_at = now
        if known.hs_budget < 1:
            return False
        known.hs_budget -= 1
        return True

    def _data(self, known: _Client, frame: Frame, now: float, source: Hashable | None) -> list[Action]:
        opened: tuple[int, bytes] | None = None
        session: _Session | None = None
        for candidate in (known.pending.get(frame.epoch), known.session):  # the pending one first: it is newer
            if candidate is not None and candidate.keys.epoch == frame.epoch:
                opened = _open(candidate.keys, UP, candidate.window, frame)
                session = candidate
                if opened is not None:
                    break
        if session is None:
            refused: list[Action] = [self._refuse(NO_SESSION, frame.address)]
            if self._may_repeat(known, 1, now):
                refused.append(Transmit(nosession_frame(frame.address, frame.epoch)))
            return refused
        if opened is None:
            return [self._refuse(BAD_TAG, frame.address)]
        counter, plaintext = opened
        if session.window.check(counter) not in ("new", "late"):
            return [self._refuse(REPLAY, frame.address)]
        session.window.accept(counter)
        actions: list[Action] = []
        if session is known.pending.get(frame.epoch):  # the client proved the new session: it replaces the old
            known.session = session
            known.pending.clear()
            known.last_hs.clear()
            actions.append(SessionStarted(frame.address, session.keys.epoch))
        known.route, known.last_seen = source, now
        if not plaintext:
            self.keepalives += 1
            return actions
        return [*actions, Plaintext(frame.address, plaintext)]

    # --------------------------------------------------------------- send

    def seal(self, address: int, plaintext: bytes) -> bytes:
        """A DATA frame carrying ``plaintext`` (one CoAP message) to the client at ``address``.

        Send it to :meth:`route`. Raises :class:`NoSession` if the client has
        no working session (unknown, removed, or not yet confirmed), and
        ``ValueError`` for a plaintext longer than CCM allows.
        """
        known = self._clients.get(address)
        if known is None or known.session is None:
            raise NoSession(f"no session with the client at address {address}")
        return _seal(known.session.keys, DOWN, address, known.session.next_counter(), plaintext)


class SecureClient:
    """The client's side: the initiator, with its provisioned key, address and the gateway's public key.

    Rules:

    * :meth:`connect` returns HS1; the same HS1 again until HS2 completes it
      (retransmit it after a timeout of your choice), then a new one with
      the next epoch. A working session stays usable until the new HS2
      arrives;
    * :meth:`receive` takes any datagram from the gateway: HS2 completes the
      handshake (returns None); a DATA frame returns its plaintext (a CoAP
      message) if it verifies and is new, else None; a NOSESSION frame for
      the current epoch, or :data:`CLIENT_BAD_TAG_LIMIT` downlink frames in a
      row that fail their tag, set :attr:`needs_handshake` (the driver then
      calls :meth:`connect` and sends the CoAP message again once
      :attr:`established`). NOSESSION is not authenticated: it only ever
      makes the client shake hands again (100 bytes), it never drops the
      working session;
    * :meth:`seal` wraps one CoAP message (``b""``: a keep-alive, 11 bytes).
    """

    def __init__(self, static_private: bytes, gateway_public: bytes, address: int, epoch: int = 0) -> None:
        """``epoch``: the epoch of the first handshake (0-7). Raises ValueError for bad keys or address."""
        if not MIN_ADDRESS <= address <= MAX_ADDRESS:
            raise ValueError(f"client address must be in {MIN_ADDRESS}..{MAX_ADDRESS}")
        if not 0 <= epoch <= MAX_EPOCH:
            raise ValueError(f"epoch must be in 0..{MAX_EPOCH}")
        self.static_private = bytes(static_private)
        self.gateway_public = bytes(gateway_public)
        self.address = address
        self._next_epoch = epoch
        self._initiator: Initiator | None = None
        self._session: _Session | None = None
        self._bad_tags = 0
        #: True when the gateway seems to have lost the session: call :meth:`connect`.
        self.needs_handshake = False
        #: refusals by kind (malformed, bad_tag, replay, unexpected_frame, bad_handshake)
        self.refused: dict[str, int] = {}

    @property
    def established(self) -> bool:
        """Whether a session is working (DATA can be sealed)."""
        return self._session is not None

    @property
    def epoch(self) -> int | None:
        """The working session's epoch, or None."""
        return self._session.keys.epoch if self._session else None

    @property
    def handshaking(self) -> bool:
        """Whether an HS1 was made and its HS2 has not arrived yet."""
        return self._initiator is not None

    def connect(self, now: float = 0.0, *, ephemeral_private: bytes | None = None) -> bytes:
        """The HS1 frame (50 bytes) to send to the gateway.

        While a handshake is under way, the same bytes again (retransmit).
        ``ephemeral_private`` fixes the ephemeral key (test vectors only).
        """
        if self._initiator is None:
            epoch = self._next_epoch
            self._next_epoch = (epoch + 1) % (MAX_EPOCH + 1)
            self._initiator = Initiator(
                self.static_private, self.gateway_public, self.address, epoch, ephemeral_private
            )
        self.needs_handshake = False
        return Frame(TYPE_HS1, self._initiator.epoch, self.address, self._initiator.message1()).encode()

    def receive(self, datagram: bytes) -> bytes | None:
        """The CoAP message in ``datagram``, or None (handshake, hint, or refused). Never raises."""
        frame = parse_datagram(datagram)
        if frame is None or frame.address != self.address:
            self._refuse(MALFORMED)
            return None
        if frame.type == TYPE_HS2:
            self._finish(frame)
            return None
        if frame.type == TYPE_NOSESSION:
            current = self._session is not None and frame.epoch == self._session.keys.epoch
            if current or (self._session is None and self._initiator is None):
                self.needs_handshake = True
            return None
        if frame.type != TYPE_DATA or self._session is None or frame.epoch != self._session.keys.epoch:
            self._refuse(UNEXPECTED)
            return None
        session = self._session
        opened = _open(session.keys, DOWN, session.window, frame)
        if opened is None:
            self._refuse(BAD_TAG)
            self._bad_tags += 1
            if self._bad_tags >= CLIENT_BAD_TAG_LIMIT:
                self.needs_handshake = True
            return None
        self._bad_tags = 0
        counter, plaintext = opened
        if session.window.check(counter) not in ("new", "late"):
            self._refuse(REPLAY)
            return None
        session.window.accept(counter)
        return plaintext or None

    def _finish(self, frame: Frame) -> None:
        if self._initiator is None or frame.epoch != self._initiator.epoch:
            self._refuse(UNEXPECTED)
            return
        try:
            keys = self._initiator.finish(frame.body)
        except HandshakeError:
            self._refuse(BAD_HANDSHAKE)
            return
        self._session, self._initiator, self._bad_tags = _Session(keys), None, 0
        self.needs_handshake = False

    def _refuse(self, kind: str) -> None:
        self.refused[kind] = self.refused.get(kind, 0) + 1

    def seal(self, plaintext: bytes) -> bytes:
        """A DATA frame carrying ``plaintext`` (one CoAP message; empty: a keep-alive).

        Raises :class:`NoSession` before the first handshake completes.
        """
        if self._session is None:
            raise NoSession("no session yet: connect() and wait for HS2")
        return _seal(self._session.keys, UP, self.address, self._session.next_counter(), plaintext)
