"""The device's side of the link (docs/protocol/link.md), sans-I/O, for CPython.

This is the reference device: tests and ``sim/`` use it as the scripted
device peer, and the MicroPython firmware implements the same behaviour.

Rules:

* :meth:`DeviceLink.poll` returns the frames to transmit now (handshake,
  the next queued message, a retransmission, a pure ack);
  :meth:`DeviceLink.receive` takes one frame and returns what happened;
  :meth:`DeviceLink.next_deadline` says when to poll again;
* one data frame outstanding at a time; a retransmission repeats the frame
  byte for byte; the timeout doubles per try (up to 8 × the base); after
  ``max_tries`` the session is dropped and a new handshake starts, and the
  unacknowledged message is sent again under the new session;
* the uplink queue is bounded; when full, the oldest message is dropped and
  counted (stale telemetry is worth less than fresh);
* a command (downlink plaintext) is delivered once, however often it is
  received, and acknowledged in the next uplink — a pure ack when nothing
  else is queued.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from lowband.codecs import fragment as fragmentation
from lowband.codecs.link_frame import TYPE_DATA, TYPE_HS1, TYPE_HS2, Frame, LinkFrameError, parse_frame
from lowband.gateway.link import crypto
from lowband.gateway.link.handshake import HandshakeError, Initiator, SessionKeys

UP, DOWN = 0, 1


def rto_for_bps(bps: float, bits_per_byte: int = 10) -> float:
    """A base retransmission timeout for a line of ``bps``.

    Covers the longest exchange without a retransmission racing its own
    answer: a 52-byte handshake frame out and its 52-byte answer back, plus
    half again for turnaround and processing.
    """
    return max(0.2, 1.5 * (52 + 52) * bits_per_byte / bps)


@dataclass
class DeviceEvent:
    """Something :meth:`DeviceLink.receive` noticed: kind is command, acked, session or refused."""

    kind: str
    payload: bytes = b""
    detail: str = ""


@dataclass
class _Outstanding:
    counter: int
    frame: bytes
    plaintext: tuple[bytes, bool]
    tries: int
    deadline: float


@dataclass
class DeviceLink:
    """A device's link state: session, queue, retransmission."""

    address: int
    static_private: bytes
    gateway_public: bytes
    rto: float = 5.0
    max_tries: int = 6
    mtu: int = 255
    queue_limit: int = 32
    epoch: int = 0
    keys: SessionKeys | None = None
    dropped: int = 0
    _initiator: Initiator | None = None
    _hs_frame: bytes = b""
    _hs_tries: int = 0
    _hs_deadline: float = 0.0
    _send: crypto.SendCounter = field(default_factory=lambda: crypto.SendCounter(0, 1 << 62))
    _window: crypto.ReplayWindow = field(default_factory=crypto.ReplayWindow)
    _queue: deque[tuple[bytes, bool]] = field(default_factory=deque)
    _outstanding: _Outstanding | None = None
    _ack_due: int | None = None
    _fragment_id: int = 0
    _reassembler: fragmentation.Reassembler = field(
        default_factory=lambda: fragmentation.Reassembler(max_messages=1, max_message_bytes=1024, max_age=600.0)
    )

    # ------------------------------------------------------------- sending

    def publish(self, payload: bytes) -> None:
        """Queue a compact message for the gateway (fragmented if the MTU needs it)."""
        room = self.mtu - 4 - crypto.TAG_LEN
        if len(payload) <= room:
            items = [(payload, False)]
        else:
            items = [(p, True) for p in fragmentation.fragment(payload, self._fragment_id, room)]
            self._fragment_id = (self._fragment_id + 1) % 256
        for item in items:
            if len(self._queue) >= self.queue_limit:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(item)

    @property
    def queued(self) -> int:
        """Messages waiting, including an unacknowledged one."""
        return len(self._queue) + (1 if self._outstanding else 0)

    def poll(self, now: float) -> list[bytes]:
        """Frames to transmit now."""
        if self.keys is None:
            return self._poll_handshake(now)
        out = self._outstanding
        if out is not None:
            if now < out.deadline:
                return []
            if out.tries >= self.max_tries:
                self._queue.appendleft(out.plaintext)
                self._outstanding = None
                self.keys = None
                return self._poll_handshake(now)
            out.tries += 1
            out.deadline = now + self.rto * min(8, 2 ** (out.tries - 1))
            return [out.frame]
        if self._queue:
            item = self._queue.popleft()
            counter = self._send.next()
            frame = self._seal(counter, item[0], item[1])
            self._outstanding = _Outstanding(counter, frame, item, 1, now + self.rto)
            return [frame]
        if self._ack_due is not None:
            frame = self._seal(self._send.next(), b"", False)  # a pure ack needs no ack
            return [frame]
        return []

    def _poll_handshake(self, now: float) -> list[bytes]:
        if self._initiator is not None and now < self._hs_deadline:
            return []
        if self._initiator is None or self._hs_tries >= self.max_tries:
            self.epoch = (self.epoch + 1) % 8
            self._initiator = Initiator(self.static_private, self.gateway_public, self.address, self.epoch)
            self._hs_frame = Frame(TYPE_HS1, self.epoch, self.address, self._initiator.message1()).encode()
            self._hs_tries = 0
        self._hs_tries += 1
        self._hs_deadline = now + self.rto * min(8, 2 ** (self._hs_tries - 1))
        return [self._hs_frame]

    def _seal(self, counter: int, plaintext: bytes, frag: bool) -> bytes:
        assert self.keys is not None
        ack = self._ack_due
        self._ack_due = None
        shell = Frame(TYPE_DATA, self.epoch, self.address, b"", seq=counter & 0xFF,
                      ack=None if ack is None else ack & 0xFF, frag=frag)  # fmt: skip
        return shell.aad + crypto.seal(self.keys.k_up, UP, counter, shell.aad, plaintext)

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has something to do on its own (None: on new input only)."""
        if self.keys is None:
            return self._hs_deadline if self._initiator is not None else 0.0
        if self._outstanding is not None:
            return self._outstanding.deadline
        if self._queue or self._ack_due is not None:
            return 0.0
        return None

    # ----------------------------------------------------------- receiving

    def receive(self, data: bytes, now: float) -> list[DeviceEvent]:
        """Handle one frame from the gateway."""
        try:
            frame = parse_frame(data)
        except LinkFrameError as exc:
            return [DeviceEvent("refused", detail=f"malformed: {exc}")]
        if frame.address != self.address:
            return [DeviceEvent("refused", detail="another device's frame")]
        if frame.type == TYPE_HS2:
            return self._finish_handshake(frame)
        if frame.type != TYPE_DATA or self.keys is None or frame.epoch != self.epoch:
            return [DeviceEvent("refused", detail="no session for this frame")]
        counter = self._window.candidate(frame.seq)
        verdict = self._window.check(counter)
        try:
            plaintext = crypto.open_(self.keys.k_down, DOWN, counter, frame.aad, frame.body)
        except crypto.TagError:
            return [DeviceEvent("refused", detail="bad tag")]
        events: list[DeviceEvent] = []
        if verdict in ("new", "late"):
            # An ack counts only in a frame new to the window: a replayed old
            # frame must not acknowledge a reading that was lost since.
            if frame.ack is not None and self._outstanding is not None and frame.ack == self._outstanding.counter & 0xFF:
                events.append(DeviceEvent("acked", detail=str(self._outstanding.counter)))
                self._outstanding = None
            self._window.accept(counter)
            if plaintext:
                whole = self._reassembler.feed("gw", plaintext, now) if frame.frag else plaintext
                if whole is not None:
                    events.append(DeviceEvent("command", whole))
        if plaintext:
            self._ack_due = counter
        return events

    def _finish_handshake(self, frame: Frame) -> list[DeviceEvent]:
        if self._initiator is None or frame.epoch != self.epoch:
            return [DeviceEvent("refused", detail="unexpected HS2")]
        try:
            self.keys = self._initiator.finish(frame.body)
        except HandshakeError as exc:
            return [DeviceEvent("refused", detail=f"bad HS2: {exc}")]
        self._initiator = None
        self._send = crypto.SendCounter(0, 1 << 62)
        self._window = crypto.ReplayWindow()
        self._ack_due = None
        return [DeviceEvent("session", detail=str(self.epoch))]
