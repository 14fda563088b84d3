"""A sans-I/O model of one slow link between side A and side B.

Rules:
- Time is whatever clock the caller passes as ``now`` (seconds, never going
  backwards). The model never sleeps and never reads a clock.
- ``write(side, data, now)`` hands bytes to the line; ``poll(now)`` returns
  the deliveries due by ``now`` as ``(side_to, bytes)``; ``next_deadline()``
  says when the next one falls due.
- Line rate: a byte occupies the line for ``bits_per_byte / bps`` seconds
  (10 bits for 8N1 UART framing by default). It arrives ``latency`` seconds
  after its last bit left the sender.
- Half duplex (default): one side sends at a time. Policy for a side that
  writes while the other side holds the line (``collisions``):
    * ``"queue"`` (default, a modem with a transmit buffer): its bytes wait;
      when the other side's burst ends, the waiting side starts after
      ``turnaround`` seconds (default: ``latency``, the time the last byte
      takes to reach it, before which it cannot know the line is free).
    * ``"drop"`` (a plain half-duplex radio): its bytes are discarded and
      counted in ``bytes_collided``; they never reach the line.
  A side that keeps writing while its own burst is still going on extends
  the burst without a gap. When a burst ends and the other side is waiting,
  the waiting side goes next.
- Impairments, all drawn from one seeded ``random.Random`` so a run is
  reproducible per seed and per sequence of writes (how often the caller
  polls does not change the outcome):
    * frame loss: a frame — the bytes up to and including a 0x00 delimiter,
      as COBS framing puts them on the line — is lost whole, delimiter
      included, with probability ``frame_loss``;
    * cut frames: with probability ``cut_rate`` a frame is truncated at a
      random point: it keeps its first k data bytes (0 <= k < length) and
      its delimiter. Such a frame is held back until its delimiter has been
      sent, because the cut point depends on its length;
    * byte loss: each byte independently vanishes with probability
      ``byte_loss`` (a lost delimiter merges two frames, as on a real line);
    * bit errors: each of the 8 data bits of every delivered byte flips
      with probability ``bit_error_rate``.
  Frame decisions are made at a frame's first non-delimiter byte; a lone
  0x00 (an idle or lead delimiter) is not a frame.
- Lost and cut bytes still took their time on the line.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, fields

__all__ = ["A", "B", "DROP", "QUEUE", "SIDES", "LinkCounters", "LinkModel", "other_side"]

A = "A"
B = "B"
SIDES = (A, B)
QUEUE = "queue"
DROP = "drop"

_OK, _LOST, _CUT = 0, 1, 2


def other_side(side: str) -> str:
    """The side across the link from ``side``."""
    return B if side == A else A


@dataclass
class LinkCounters:
    """What happened to the bytes one side wrote."""

    bytes_written: int = 0  # handed to write()
    bytes_sent: int = 0  # took time on the line
    bytes_delivered: int = 0  # returned by poll() to the other side
    bytes_dropped: int = 0  # lost on the line: frame loss, cut frames, byte loss
    bytes_collided: int = 0  # discarded by the half-duplex "drop" policy, never sent
    bits_flipped: int = 0
    frames_sent: int = 0  # frames that started on the line
    frames_lost: int = 0
    frames_cut: int = 0

    def __add__(self, other: LinkCounters) -> LinkCounters:
        return LinkCounters(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


class _Sender:
    """Transmit state of one side."""

    __slots__ = ("pending", "burst_start", "burst_bytes", "tx_end", "in_frame", "fate", "held", "gap")

    def __init__(self) -> None:
        self.pending = bytearray()  # waiting for the line (queue policy)
        self.burst_start = 0.0
        self.burst_bytes = 0
        self.tx_end = -math.inf  # when the last committed byte left the sender
        self.in_frame = False
        self.fate = _OK
        self.held: list[tuple[float, int]] = []  # bytes of a frame being cut
        self.gap = -1  # bits to pass before the next flip; -1 = not drawn yet


class LinkModel:
    """One half-duplex (or full-duplex) link with rate, latency and seeded impairments."""

    def __init__(
        self,
        bps: float = 100.0,
        *,
        latency: float = 0.0,
        bits_per_byte: int = 10,
        half_duplex: bool = True,
        collisions: str = QUEUE,
        turnaround: float | None = None,
        bit_error_rate: float = 0.0,
        frame_loss: float = 0.0,
        byte_loss: float = 0.0,
        cut_rate: float = 0.0,
        seed: int | None = 0,
        rng: random.Random | None = None,
        delimiter: int = 0x00,
    ) -> None:
        """Build a link; every argument is checked and a bad one raises ValueError.

        ``seed`` seeds a private ``random.Random``; pass ``rng`` instead to
        share or control the generator.
        """
        if not isinstance(bps, (int, float)) or not bps > 0 or not math.isfinite(bps):
            raise ValueError(f"bps must be a positive number, got {bps!r}")
        if not isinstance(bits_per_byte, int) or bits_per_byte < 1:
            raise ValueError(f"bits_per_byte must be a positive integer, got {bits_per_byte!r}")
        _check_nonneg("latency", latency)
        if turnaround is not None:
            _check_nonneg("turnaround", turnaround)
        if collisions not in (QUEUE, DROP):
            raise ValueError(f"collisions must be {QUEUE!r} or {DROP!r}, got {collisions!r}")
        for name, p in (
            ("bit_error_rate", bit_error_rate),
            ("frame_loss", frame_loss),
            ("byte_loss", byte_loss),
            ("cut_rate", cut_rate),
        ):
            if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        if not isinstance(delimiter, int) or not 0 <= delimiter <= 255:
            raise ValueError(f"delimiter must be a byte value, got {delimiter!r}")

        self.bps = float(bps)
        self.bits_per_byte = bits_per_byte
        self.latency = float(latency)
        self.turnaround = self.latency if turnaround is None else float(turnaround)
        self.half_duplex = bool(half_duplex)
        self.collisions = collisions
        self.bit_error_rate = float(bit_error_rate)
        self.frame_loss = float(frame_loss)
        self.byte_loss = float(byte_loss)
        self.cut_rate = float(cut_rate)
        self.delimiter = delimiter
        self.rng = rng if rng is not None else random.Random(seed)
        # log(1 - p), the scale of the geometric gaps between flipped bits.
        self._log_keep = math.log1p(-self.bit_error_rate) if 0.0 < self.bit_error_rate < 1.0 else 0.0

        self.counters: dict[str, LinkCounters] = {A: LinkCounters(), B: LinkCounters()}
        self._senders = {A: _Sender(), B: _Sender()}
        # Per receiving side: (delivery time, byte), in time order.
        self._queues: dict[str, deque[tuple[float, int]]] = {A: deque(), B: deque()}
        self._holder: str | None = None  # side holding the half-duplex line
        self._now = -math.inf

    # -- public API ---------------------------------------------------------

    @property
    def byte_time(self) -> float:
        """Seconds one byte occupies the line."""
        return self.bits_per_byte / self.bps

    def write(self, side: str, data: bytes, now: float) -> None:
        """Hand ``data`` written by ``side`` at time ``now`` to the line.

        Raises ValueError for an unknown side, non-bytes data or a ``now``
        earlier than a previous call's.
        """
        if side not in SIDES:
            raise ValueError(f"side must be {A!r} or {B!r}, got {side!r}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"data must be bytes, got {type(data).__name__}")
        self._advance(now)
        data = bytes(data)
        if not data:
            return
        sender = self._senders[side]
        self.counters[side].bytes_written += len(data)

        if not self.half_duplex:
            self._commit(side, data, max(now, sender.tx_end))
            return
        if self._holder == side:
            # Still sending: continue the burst without a gap; otherwise the
            # line is still ours (nobody was waiting) and we start now.
            self._commit(side, data, sender.tx_end if now < sender.tx_end else now)
            return
        if sender.pending:
            sender.pending += data  # already waiting in line
            return
        other = self._senders[other_side(side)]
        if self._holder is not None and now < other.tx_end + self.turnaround:
            if self.collisions == DROP:
                self.counters[side].bytes_collided += len(data)
            else:
                sender.pending += data
            return
        self._holder = side
        self._commit(side, data, now)

    def poll(self, now: float) -> list[tuple[str, bytes]]:
        """Deliveries due by ``now``: a list of ``(side_to, bytes)``, oldest first, at most one per side.

        Raises ValueError for a ``now`` earlier than a previous call's.
        """
        self._advance(now)
        due: list[tuple[float, str, bytes]] = []
        for dest, queue in self._queues.items():
            if not queue or queue[0][0] > now:
                continue
            first = queue[0][0]
            out = bytearray()
            while queue and queue[0][0] <= now:
                out.append(queue.popleft()[1])
            self.counters[other_side(dest)].bytes_delivered += len(out)
            due.append((first, dest, bytes(out)))
        due.sort(key=lambda item: item[0])
        return [(dest, data) for _, dest, data in due]

    def next_deadline(self) -> float | None:
        """The time at which ``poll`` next has something to do, or None when nothing is under way.

        It may lie before the ``now`` of the last call (something is already
        due): poll at once then. Bytes of a cut frame wait for its delimiter
        and set no deadline.
        """
        times = [queue[0][0] for queue in self._queues.values() if queue]
        if self._holder is not None and self._senders[other_side(self._holder)].pending:
            times.append(self._senders[self._holder].tx_end)
        return min(times) if times else None

    @property
    def idle(self) -> bool:
        """True when no byte is waiting for the line, held back or in flight."""
        return not any(self._queues.values()) and not any(s.pending or s.held for s in self._senders.values())

    def totals(self) -> LinkCounters:
        """Counters of both directions added together."""
        return self.counters[A] + self.counters[B]

    # -- line ---------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if not isinstance(now, (int, float)) or isinstance(now, bool) or math.isnan(now):
            raise ValueError(f"now must be a number of seconds, got {now!r}")
        if now < self._now:
            raise ValueError(f"time went backwards: {now!r} after {self._now!r}")
        self._now = now
        holder = self._holder
        if holder is None:
            return
        waiting = other_side(holder)
        if self._senders[waiting].pending and self._senders[holder].tx_end <= now:
            # The burst is over and can no longer grow: hand the line over.
            start = self._senders[holder].tx_end + self.turnaround
            data = bytes(self._senders[waiting].pending)
            self._senders[waiting].pending.clear()
            self._holder = waiting
            self._commit(waiting, data, start)

    def _commit(self, side: str, data: bytes, start: float) -> None:
        """Put ``data`` on the line from ``start``; each byte is then impaired and queued."""
        sender = self._senders[side]
        if start > sender.tx_end or sender.burst_bytes == 0:
            sender.burst_start = start
            sender.burst_bytes = 0
        counters = self.counters[side]
        dest_queue = self._queues[other_side(side)]
        end = sender.tx_end
        for value in data:
            sender.burst_bytes += 1
            # From the burst start in one step, so 10 bytes at 100 bps end at
            # exactly 1.0 s rather than at a sum of ten rounded 0.1 s.
            end = sender.burst_start + (sender.burst_bytes * self.bits_per_byte) / self.bps
            counters.bytes_sent += 1
            self._frame_stage(side, value, end + self.latency, dest_queue)
        sender.tx_end = end

    # -- impairments --------------------------------------------------------

    def _frame_stage(self, side: str, value: int, when: float, dest_queue: deque[tuple[float, int]]) -> None:
        sender = self._senders[side]
        counters = self.counters[side]
        is_delimiter = value == self.delimiter
        if not sender.in_frame:
            if is_delimiter:
                self._byte_stage(side, value, when, dest_queue)  # idle or lead delimiter
                return
            sender.in_frame = True
            counters.frames_sent += 1
            sender.fate = _OK
            if self.frame_loss and self.rng.random() < self.frame_loss:
                sender.fate = _LOST
                counters.frames_lost += 1
            elif self.cut_rate and self.rng.random() < self.cut_rate:
                sender.fate = _CUT
                counters.frames_cut += 1

        if sender.fate == _LOST:
            counters.bytes_dropped += 1
        elif sender.fate == _CUT and not is_delimiter:
            sender.held.append((when, value))
        elif sender.fate == _CUT:
            keep = self.rng.randrange(len(sender.held))  # at least one data byte goes
            counters.bytes_dropped += len(sender.held) - keep
            for held_when, held_value in sender.held[:keep]:
                self._byte_stage(side, held_value, held_when, dest_queue)
            sender.held = []
            self._byte_stage(side, value, when, dest_queue)
        else:
            self._byte_stage(side, value, when, dest_queue)
        if is_delimiter:
            sender.in_frame = False

    def _byte_stage(self, side: str, value: int, when: float, dest_queue: deque[tuple[float, int]]) -> None:
        if self.byte_loss and self.rng.random() < self.byte_loss:
            self.counters[side].bytes_dropped += 1
            return
        if self.bit_error_rate:
            mask = self._flip_mask(self._senders[side])
            if mask:
                value ^= mask
                self.counters[side].bits_flipped += bin(mask).count("1")
        dest_queue.append((when, value))

    def _flip_mask(self, sender: _Sender) -> int:
        """Which of the next 8 bits flip; gaps between flips are geometric, so p per bit exactly."""
        mask = 0
        pos = 0
        if sender.gap < 0:
            sender.gap = self._draw_gap()
        while sender.gap < 8 - pos:
            pos += sender.gap
            mask |= 1 << pos
            pos += 1
            sender.gap = self._draw_gap()
        sender.gap -= 8 - pos
        return mask

    def _draw_gap(self) -> int:
        if self.bit_error_rate >= 1.0:
            return 0
        # Number of good bits before the next bad one: floor(ln U / ln(1 - p)).
        return int(math.log1p(-self.rng.random()) / self._log_keep)


def _check_nonneg(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
