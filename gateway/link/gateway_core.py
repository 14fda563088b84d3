"""The gateway's side of the link (docs/protocol/link.md), sans-I/O.

Rules:

* frames come in through :meth:`GatewayLink.receive` with ``now``; what to
  do comes back as a list of actions, to be carried out **in order** (a
  ``Persist`` must be durable before the ``Transmit`` after it);
* a device unknown to the gateway, a malformed frame, a bad tag, a stale
  epoch or a replay produces ``Refused`` and nothing else: no plaintext of
  such a frame ever leaves this module;
* a handshake (HS1) is answered with HS2; the new session stays *pending*
  beside the current one until the device's first valid DATA frame under
  it, so a replayed HS1 cannot cut a working session off; a retransmitted
  identical HS1 gets the identical HS2 (a repeated answer, rate-limited as
  below);
* a reading is acknowledged only after the runtime reports it done
  (docs/protocol/link.md section 3, gateway/homeserver/delivery.py): a
  whole message comes out as ``Deliver`` with a :class:`DeliveryToken` and
  nothing is transmitted for it yet; :meth:`GatewayLink.delivered` (its
  room event is committed, or it was refused as a value) returns the
  answer carrying the ACK, :meth:`GatewayLink.delivery_failed` (nothing
  stored) returns nothing, so the device retransmits;
* the replay window records a message's counter only when it is
  delivered, so the window on disk never covers an unstored message: a
  retransmission of a message still being stored is recognised and
  ignored (no second ``Deliver``), one whose storing failed is delivered
  again under the same message ID (the room's transaction ID, so never a
  second event);
* a whole uplink message, by its counter in its session:

      state       event                        -> actions; next state
      (unseen)    frame completes a message    -> Deliver; storing
      storing     same frame again             -> nothing (awaiting_commit); storing
      storing     delivered(token)             -> Persist, ACK; in window
      storing     delivery_failed(token)       -> nothing; failed
      failed      same frame again             -> Deliver (same message ID); storing
      in window   same frame again, the        -> the same answer bytes again, at most
                  device's latest frame           once per reack_interval after the
                                                  first (no write); in window
      in window   same frame again, older      -> Refused("replay"); in window

* a frame that was stored before is a device's retransmission only when
  it is the latest frame of the session: the device sends nothing new
  while a message waits for its ACK (stop and wait), so an older one is a
  replay, refused without an answer. The latest one gets the answer sent
  for it before, byte for byte (no new counter, so no durable write): the
  first repeat of each message always, then at most one repeated answer per
  device per ``reack_interval`` seconds (``Refused("duplicate_limited")``
  in between). A lost ACK never stalls the device: its own retry, or a
  replay of its frame by someone else, brings the answer again;
* a durable write (``Persist``) follows only what must survive a restart:
  a stored message's counter, a new session, a new block of send counters;
  a pure ACK's counter is written at most every ``PURE_ACK_PERSIST_EVERY``
  counters (nothing depends on it but the counter reach after a restart);
* every other uplink that carries a plaintext (a retransmission of a
  stored message, a fragment that does not complete one) is answered at once
  (the device listens right after it sends, then may sleep): with the
  next queued command carrying the ACK, or with a pure ACK — followed by
  the unacked command, resent byte for byte;
* commands wait per device in a bounded queue (oldest dropped, reported)
  until the device next sends: store and forward for sleeping devices;
* uplink fragments are reassembled here; ``Deliver`` always carries a whole
  compact message;
* each device's figures (frames and bytes in and out, refusals by kind,
  retransmissions both ways, handshakes, when it was last seen and its time
  on air) go to its :class:`~lowband.gateway.link.device_stats.DeviceCounters`
  as plain increments; "seen" is a frame that authenticated and was not
  refused (device_stats.py).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lowband.codecs import fragment as fragmentation
from lowband.codecs.link_frame import TYPE_DATA, TYPE_HS1, TYPE_HS2, Frame, LinkFrameError, parse_frame
from lowband.gateway.link import crypto
from lowband.gateway.link.device_stats import NOT_REFUSALS, DeviceCounters
from lowband.gateway.link.handshake import HandshakeError, Responder, SessionKeys

UP, DOWN = 0, 1
MAX_COMMANDS = 16
#: Messages of one session handed out and not yet reported stored. A device
#: waits for each acknowledgement (stop and wait), so it has one at a time;
#: the bound keeps a misbehaving one from growing the gateway's memory.
MAX_UNDELIVERED = 4
#: Seconds between two repeated answers (to retransmitted or replayed frames) for one device, after the first
#: repeat of each message: the least retransmission timeout of a device (sim/device_core.py rto_for_bps), so the
#: retries of a device alone are never refused. The runtime passes a longer one on a slow line (runtime.py).
REACK_INTERVAL = 0.2
#: A pure ACK's counter is written to disk once the window has moved this far past the stored one. Half of the
#: 127 counters the reconstruction reaches back and forth (crypto.py), so a restart never loses the device.
PURE_ACK_PERSIST_EVERY = 32


@dataclass
class _Undelivered:
    payload: bytes
    in_flight: bool = True  # False once the runtime reported it failed: a retransmission delivers it again


@dataclass
class _Answer:
    """The frames sent to acknowledge one uplink message, to send again when it comes again."""

    counter: int  # the uplink counter they acknowledge
    frames: tuple[bytes, ...]
    repeats: int = 0  # times sent again


@dataclass
class Session:
    """One handshake's keys and counters for one device."""

    keys: SessionKeys
    window: crypto.ReplayWindow = field(default_factory=crypto.ReplayWindow)
    send: crypto.SendCounter = field(default_factory=crypto.SendCounter)
    outstanding: tuple[int, bytes] | None = None  # (counter, frame bytes) of the unacked command
    # Uplink counter -> message handed out by Deliver and not yet reported stored. Memory only, on
    # purpose: after a crash the device retransmits, the frame is new to the stored window, and it is
    # delivered again under the same message ID (the room's transaction ID dedupes it).
    undelivered: dict[int, _Undelivered] = field(default_factory=dict)
    # The answer to the latest message, memory only (after a restart the first repeat is answered afresh).
    last_answer: _Answer | None = None
    stored_highest: int = -1  # the window's highest counter in the last Persist of this session

    @property
    def epoch(self) -> int:
        """Session epoch (0–7)."""
        return self.keys.epoch

    @property
    def session_id(self) -> str:
        """A stable name for this session (never on the air): hash of its keys."""
        return hashlib.sha256(self.keys.k_up + self.keys.k_down).hexdigest()[:16]

    def to_state(self) -> dict[str, Any]:
        """JSON-able state for the database (keys included: keep the file private)."""
        return {
            "epoch": self.keys.epoch, "k_up": self.keys.k_up.hex(), "k_down": self.keys.k_down.hex(),
            "window": self.window.to_state(), "send_limit": self.send.persisted_limit,
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Session:
        """Rebuild a stored session; its send counter resumes at the stored limit."""
        keys = SessionKeys(epoch=state["epoch"], k_up=bytes.fromhex(state["k_up"]), k_down=bytes.fromhex(state["k_down"]))
        window = crypto.ReplayWindow.from_state(state["window"])
        return cls(keys, window, crypto.SendCounter.resume(state["send_limit"]), stored_highest=window.highest)


@dataclass(frozen=True)
class DeviceEntry:
    """What the gateway knows of a provisioned device."""

    address: int
    name: str
    static_public: bytes


# ----------------------------------------------------------------- actions


@dataclass(frozen=True)
class Transmit:
    """Send these frame bytes to the device (serial: COBS-encode them first)."""

    address: int
    frame: bytes


@dataclass(frozen=True)
class Persist:
    """Write this session state durably before carrying out the next actions."""

    address: int
    state: dict[str, Any] | None  # None: the device has no session (forget it)


@dataclass(frozen=True)
class DeliveryToken:
    """Names one delivered message for :meth:`GatewayLink.delivered` / :meth:`GatewayLink.delivery_failed`."""

    address: int
    session_id: str
    counter: int

    @property
    def message_id(self) -> str:
        """The message's ID, unique per device forever (the room event's transaction ID)."""
        return f"{self.session_id}:{self.counter}"


@dataclass(frozen=True)
class Deliver:
    """A whole compact message from the device; ``message_id`` is unique per device forever.

    The device gets no acknowledgement until the runtime reports the
    outcome with ``token`` (:meth:`GatewayLink.delivered` or
    :meth:`GatewayLink.delivery_failed`). The same message may come out
    again (same ``message_id``) after a failure was reported.
    """

    address: int
    message_id: str
    payload: bytes
    token: DeliveryToken


@dataclass(frozen=True)
class SessionStarted:
    """The device proved a new session (its first valid DATA frame under it)."""

    address: int
    session_id: str


@dataclass(frozen=True)
class CommandAcked:
    """The device acknowledged the command frame with this counter."""

    address: int
    counter: int


@dataclass(frozen=True)
class CommandDropped:
    """A queued command was dropped (queue full); the room should be told."""

    address: int
    payload: bytes


@dataclass(frozen=True)
class Refused:
    """A frame was refused; ``reason`` is a short code for counters and logs."""

    address: int | None
    reason: str


Action = Transmit | Persist | Deliver | SessionStarted | CommandAcked | CommandDropped | Refused


@dataclass
class _Device:
    entry: DeviceEntry
    session: Session | None = None
    pending: Session | None = None
    last_hs: tuple[bytes, bytes, Session] | None = None  # (HS1 body, HS2 frame, pending session)
    commands: deque[tuple[bytes, bool]] = field(default_factory=deque)  # (plaintext, is fragment)
    counters: dict[str, int] = field(default_factory=dict)
    hs_repeats: int = 0  # times last_hs's HS2 was sent again
    repeated_at: float = float("-inf")  # when a repeated answer (ACK or HS2) last went out: the rate limit
    stats: DeviceCounters = field(default_factory=DeviceCounters)


class GatewayLink:
    """All devices on one link, seen from the gateway."""

    def __init__(self, static_private: bytes, *, mtu: int = 255, max_commands: int = MAX_COMMANDS,
                 reack_interval: float = REACK_INTERVAL, airtime_s: Callable[[int], float] | None = None) -> None:  # fmt: skip
        """``reack_interval``: seconds between repeated answers to one device (see the module rules).

        ``airtime_s``: seconds on air of a link frame of so many bytes on this
        link (None: not counted); each device's seen frames add to its window.
        """
        self.static_private = static_private
        self.airtime_s = airtime_s
        self.mtu = mtu
        self.max_commands = max_commands
        self.reack_interval = reack_interval
        self._devices: dict[int, _Device] = {}
        self._reassembler = fragmentation.Reassembler(max_messages=8, max_message_bytes=4096, max_age=600.0)
        self._fragment_ids: dict[int, int] = {}
        self.refused: dict[str, int] = {}

    # ------------------------------------------------------------ devices

    def add_device(self, entry: DeviceEntry, session_state: dict[str, Any] | None = None,
                   stats: DeviceCounters | None = None) -> None:  # fmt: skip
        """Register a device (and its stored session, if any); ``stats``: its counters to go on with (a new key)."""
        device = _Device(entry) if stats is None else _Device(entry, stats=stats)
        if session_state is not None:
            device.session = Session.from_state(session_state)
        self._devices[entry.address] = device

    def remove_device(self, address: int) -> None:
        """Forget a revoked device: its frames are refused from now on."""
        self._devices.pop(address, None)

    def counters(self, address: int) -> dict[str, int]:
        """Per-device counters by reason: refused frames, and deliveries (``awaiting_commit``, ``delivery_failed``)."""
        device = self._devices.get(address)
        return dict(device.counters) if device else {}

    def stats(self, address: int) -> DeviceCounters | None:
        """The device's counters (the object itself, bumped as frames come and go), or None for no such device."""
        device = self._devices.get(address)
        return device.stats if device else None

    def has_session(self, address: int) -> bool:
        """Whether the device has a confirmed session."""
        device = self._devices.get(address)
        return bool(device and device.session)

    # ----------------------------------------------------------- commands

    def queue_command(self, address: int, payload: bytes) -> list[Action]:
        """Queue a compact message for the device's next uplink; returns drops, if any.

        Messages longer than the MTU allows are fragmented here.
        """
        device = self._devices.get(address)
        if device is None:
            raise KeyError(f"no device at address {address}")
        room = self.mtu - 4 - crypto.TAG_LEN
        if len(payload) <= room:
            items = [(payload, False)]
        else:
            msg_id = self._fragment_ids.get(address, 0)
            self._fragment_ids[address] = (msg_id + 1) % 256
            items = [(piece, True) for piece in fragmentation.fragment(payload, msg_id, room)]
        actions: list[Action] = []
        for item in items:
            if len(device.commands) >= self.max_commands:
                dropped, _ = device.commands.popleft()
                actions.append(CommandDropped(address, dropped))
            device.commands.append(item)
        return actions

    def pending_commands(self, address: int) -> int:
        """Commands waiting for the device (including an unacked one)."""
        device = self._devices.get(address)
        if device is None:
            return 0
        outstanding = 1 if device.session and device.session.outstanding else 0
        return len(device.commands) + outstanding

    # ------------------------------------------------------------ receive

    def receive(self, data: bytes, now: float) -> list[Action]:
        """Handle one frame from the link."""
        try:
            frame = parse_frame(data)
        except LinkFrameError:
            return [self._refuse(None, "malformed")]
        device = self._devices.get(frame.address)
        if device is None:
            return [self._refuse(frame.address, "unknown_device")]
        stats = device.stats
        stats.frames_in += 1
        stats.bytes_in += len(data)
        if frame.type == TYPE_HS1:
            return self._handshake(device, frame, len(data), now)
        if frame.type == TYPE_HS2:
            return [self._refuse(frame.address, "unexpected_hs2", device)]
        return self._data(device, frame, len(data), now)

    def _refuse(self, address: int | None, reason: str, device: _Device | None = None) -> Refused:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if device is not None:
            device.counters[reason] = device.counters.get(reason, 0) + 1
            if reason not in NOT_REFUSALS:
                refused = device.stats.refused
                refused[reason] = refused.get(reason, 0) + 1
        return Refused(address, reason)

    def _seen(self, device: _Device, size: int, now: float) -> None:
        """A frame of ``size`` bytes from the device authenticated and is not refused: it was on the air."""
        stats = device.stats
        stats.last_seen = now
        if self.airtime_s is not None:
            stats.airtime.add(self.airtime_s(size), now)

    def _send(self, device: _Device, frame: bytes) -> Transmit:
        stats = device.stats
        stats.frames_out += 1
        stats.bytes_out += len(frame)
        return Transmit(device.entry.address, frame)

    def _handshake(self, device: _Device, frame: Frame, size: int, now: float) -> list[Action]:
        if device.last_hs is not None and device.last_hs[0] == frame.body:  # HS2 was lost, or a replay: same answer
            device.stats.retransmissions_in += 1
            if not self._may_repeat(device, device.hs_repeats, now):
                return [self._refuse(frame.address, "handshake_limited", device)]
            device.hs_repeats += 1
            device.stats.retransmissions_out += 1
            self._seen(device, size, now)
            return [self._send(device, device.last_hs[1])]
        responder = Responder(self.static_private, device.entry.static_public, frame.address, frame.epoch)
        try:
            message2, keys = responder.respond(frame.body)
        except HandshakeError:
            return [self._refuse(frame.address, "bad_handshake", device)]
        pending = Session(keys)
        hs2 = Frame(TYPE_HS2, frame.epoch, frame.address, message2).encode()
        device.pending = pending
        device.last_hs, device.hs_repeats = (frame.body, hs2, pending), 0
        device.stats.handshakes += 1
        self._seen(device, size, now)
        return [self._send(device, hs2)]

    def _may_repeat(self, device: _Device, repeats: int, now: float) -> bool:
        """Whether an answer sent before may go out again now; records it if so.

        The first repeat always may (a lost answer must not stall the
        device); later ones at most once per ``reack_interval`` per device.
        """
        if repeats > 0 and now - device.repeated_at < self.reack_interval:
            return False
        device.repeated_at = now
        return True

    def _data(self, device: _Device, frame: Frame, size: int, now: float) -> list[Action]:
        actions: list[Action] = []
        session, fresh = self._session_for(device, frame)
        if session is None:
            return [self._refuse(frame.address, "no_session", device)]
        counter = session.window.candidate(frame.seq)
        verdict = session.window.check(counter)
        try:
            plaintext = crypto.open_(session.keys.k_up, UP, counter, frame.aad, frame.body)
        except crypto.TagError:
            return [self._refuse(frame.address, "bad_tag", device)]
        if fresh:  # the device proved the pending session: it replaces the old one
            device.session, device.pending, device.last_hs = session, None, None
            actions += [SessionStarted(frame.address, session.session_id), self._persist(frame.address, session)]
        waiting = session.undelivered.get(counter) if plaintext else None
        if waiting is not None:  # a retransmission of a message not stored yet (its counter is not in the window)
            device.stats.retransmissions_in += 1
            self._seen(device, size, now)
            if waiting.in_flight:
                self._count(device, "awaiting_commit")  # the ACK follows the commit
                return actions
            waiting.in_flight = True
            return actions + [self._deliver(frame.address, session, counter, waiting.payload)]
        if verdict in ("new", "late"):
            # An ack counts only in a frame new to the window (a replayed old frame must not acknowledge).
            if frame.ack is not None and session.outstanding is not None:
                sent_counter, _ = session.outstanding
                if frame.ack == sent_counter & 0xFF:
                    session.outstanding = None
                    actions.append(CommandAcked(frame.address, sent_counter))
            if len(session.undelivered) < MAX_UNDELIVERED or not plaintext:
                self._seen(device, size, now)
            if not plaintext:  # a pure ack is never acknowledged
                session.window.accept(counter)
                if fresh or session.window.highest - session.stored_highest >= PURE_ACK_PERSIST_EVERY:
                    actions.append(self._persist(frame.address, session))
                return actions
            if len(session.undelivered) >= MAX_UNDELIVERED:
                return actions + [self._refuse(frame.address, "undelivered_backlog", device)]  # not accepted: resent later
            payload = self._reassemble(frame, plaintext, now)
            if payload is None:  # a fragment that completes nothing yet: acknowledge it now
                session.window.accept(counter)
                return actions + self._answer(device, session, counter, persist=True)
            session.undelivered[counter] = _Undelivered(payload)
            return actions + [self._deliver(frame.address, session, counter, payload)]
        if plaintext and counter == session.window.highest:  # stored before, and the device's latest frame
            return actions + self._repeat_answer(device, session, counter, size, now)
        return actions + [self._refuse(frame.address, "replay", device)]

    def _repeat_answer(self, device: _Device, session: Session, counter: int, size: int, now: float) -> list[Action]:
        # The device missed the ACK and retransmits, or someone replays its frame: the two look the same.
        stats = device.stats
        stats.retransmissions_in += 1
        answer = session.last_answer
        repeats = answer.repeats if answer is not None and answer.counter == counter else 0
        if not self._may_repeat(device, repeats, now):
            return [self._refuse(device.entry.address, "duplicate_limited", device)]
        self._refuse(device.entry.address, "duplicate", device)  # counted, not refused: answered
        self._seen(device, size, now)
        if answer is None or answer.counter != counter or (session.outstanding is None and device.commands):
            # No answer in memory (a restart came between), or a command waits: a fresh answer, which writes
            # only when it opens a new block of send counters.
            stats.retransmissions_out += 1  # the answer, again (an unacked command in it is counted by _answer)
            actions = self._answer(device, session, counter, persist=False)
            if session.last_answer is not None:  # always: _answer keeps what it sent
                session.last_answer.repeats = repeats + 1
            return actions
        answer.repeats += 1
        stats.retransmissions_out += len(answer.frames)
        return [self._send(device, frame) for frame in answer.frames]

    def _deliver(self, address: int, session: Session, counter: int, payload: bytes) -> Deliver:
        token = DeliveryToken(address, session.session_id, counter)
        return Deliver(address, token.message_id, payload, token)

    def _count(self, device: _Device, reason: str) -> None:
        device.counters[reason] = device.counters.get(reason, 0) + 1

    # ----------------------------------------------------------- delivery

    def delivered(self, token: DeliveryToken, now: float) -> list[Action]:
        """The message of ``token`` is done: its room event is committed, or it was refused as a value.

        Returns the answer to carry out in order: ``Persist`` (the window now
        holds the message's counter) and the ``Transmit`` of the ACK (in the
        next queued command, or a pure ACK, then an unacked command again).
        Returns ``[]`` when there is nothing to acknowledge any more: the
        device was removed or started a new session meanwhile (it sends the
        message again under the new one), or the token was reported before.
        Never raises for a token it made.
        """
        device, session = self._undelivered_session(token)
        if device is None or session is None or token.counter not in session.undelivered:
            return []
        del session.undelivered[token.counter]
        if session.window.check(token.counter) in ("new", "late"):
            session.window.accept(token.counter)
        return self._answer(device, session, token.counter, persist=True)

    def delivery_failed(self, token: DeliveryToken, now: float) -> list[Action]:
        """Nothing of the message of ``token`` was stored (the store failed): do not acknowledge it.

        The device retransmits the frame; the retransmission brings the same
        message out again as ``Deliver`` with the same message ID. Returns
        the actions to carry out (none today: the device's own timeout is
        the retry timer). Never raises for a token it made.
        """
        device, session = self._undelivered_session(token)
        if device is not None and session is not None and token.counter in session.undelivered:
            session.undelivered[token.counter].in_flight = False
            self._count(device, "delivery_failed")
        return []

    def _undelivered_session(self, token: DeliveryToken) -> tuple[_Device | None, Session | None]:
        device = self._devices.get(token.address)
        if device is None or device.session is None or device.session.session_id != token.session_id:
            return device, None
        return device, device.session

    def undelivered(self, address: int) -> int:
        """Messages of the device's session handed out by ``Deliver`` and not yet reported delivered."""
        device = self._devices.get(address)
        return len(device.session.undelivered) if device and device.session else 0

    def _session_for(self, device: _Device, frame: Frame) -> tuple[Session | None, bool]:
        if device.pending is not None and frame.epoch == device.pending.epoch:
            if device.session is None or device.session.epoch != frame.epoch:
                return device.pending, True
            # Same epoch for old and pending (8 handshakes apart): try the pending one first.
            try:
                crypto.open_(device.pending.keys.k_up, UP, device.pending.window.candidate(frame.seq), frame.aad, frame.body)
                return device.pending, True
            except crypto.TagError:
                pass
        if device.session is not None and frame.epoch == device.session.epoch:
            return device.session, False
        return None, False

    def _reassemble(self, frame: Frame, plaintext: bytes, now: float) -> bytes | None:
        if not frame.frag:
            return plaintext
        return self._reassembler.feed(frame.address, plaintext, now)

    def _answer(self, device: _Device, session: Session, acked: int, *, persist: bool) -> list[Action]:
        """The ACK of uplink ``acked``; ``persist``: the window changed, so the state is written before it."""
        actions: list[Action] = []
        frames: list[bytes] = []
        limit = session.send.persisted_limit
        if session.outstanding is None and device.commands:
            plaintext, frag = device.commands.popleft()
            counter = self._next_counter(session)
            frame = self._seal(device, session, counter, acked, plaintext, frag)
            session.outstanding = (counter, frame)
            frames.append(frame)
        else:
            counter = self._next_counter(session)
            frames.append(self._seal(device, session, counter, acked, b"", False))
            if session.outstanding is not None:
                frames.append(session.outstanding[1])
                device.stats.retransmissions_out += 1  # the unacked command, byte for byte
        if persist or session.send.persisted_limit != limit:
            actions.append(self._persist(device.entry.address, session))
        actions += [self._send(device, f) for f in frames]
        session.last_answer = _Answer(acked, tuple(frames))
        return actions

    def _persist(self, address: int, session: Session) -> Persist:
        session.stored_highest = session.window.highest  # written before anything that follows is carried out
        return Persist(address, session.to_state())

    def _next_counter(self, session: Session) -> int:
        # The Persist action that follows carries the reserved limit; the
        # runtime writes it before it transmits (crypto.SendCounter's protocol).
        if session.send.needs_block():
            session.send.reserve_block()
        return session.send.next()

    def _seal(self, device: _Device, session: Session, counter: int, acked: int, plaintext: bytes, frag: bool) -> bytes:
        shell = Frame(TYPE_DATA, session.epoch, device.entry.address, b"", seq=counter & 0xFF, ack=acked & 0xFF, frag=frag)
        return shell.aad + crypto.seal(session.keys.k_down, DOWN, counter, shell.aad, plaintext)


__all__ = [
    "PURE_ACK_PERSIST_EVERY", "REACK_INTERVAL", "Action", "CommandAcked", "CommandDropped", "Deliver", "DeliveryToken",
    "DeviceEntry", "GatewayLink", "Persist", "Refused", "Session", "SessionStarted", "Transmit",
]  # fmt: skip
