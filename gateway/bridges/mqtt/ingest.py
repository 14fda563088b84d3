"""Bookkeeping for "nothing lost, nothing twice". Pure code: callers pass ``now``.

Rules (see docs/mqtt.md, "Delivery guarantees"):

* a QoS 1 message is acknowledged to the broker only after its event is
  committed, and PUBACKs go out in the order the PUBLISH packets arrived
  (MQTT 3.1.1 and 5, section 4.6) — :class:`AckSequencer`;
* every QoS 1 message gets a row ``(txn_id, topic, payload digest, packet
  id)`` written before its event (the writer commits jobs in queue order),
  and the event is sent with that ``txn_id``. A redelivery (DUP set, same
  packet id — brokers must resend with the original packet identifier) of
  a message whose row exists reuses the row's ``txn_id``, so the room
  service returns the first event instead of making a second —
  :class:`Deduper`;
* a PUBACK written is not a PUBACK the broker processed (the connection
  can drop first, or the gateway die with it still queued): a row is
  deleted only when the broker answered a later packet on the same
  connection (a "barrier", see ``BrokerLink.barrier``), since a broker
  handles a connection's packets in order; rows of an earlier connection
  that no redelivery claimed are deleted once a barrier on the new
  connection completed after a grace period, by which time the broker has
  resent whatever it still considered unacknowledged;
* a row is matched only by a delivery on a later connection than the one
  that last used it, so two identical messages in flight at once stay two;
* flood control delays, never drops — :class:`TokenBucket` answers how
  long to wait;
* what the bridge itself published is remembered for a while so that an
  echo arriving on a subscribed topic is recognised — :class:`EchoGuard`.
"""

from __future__ import annotations

import secrets
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is due (nothing taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(eq=False)
class Ticket:
    """One received QoS 1 PUBLISH awaiting its PUBACK."""

    gen: int
    mid: int
    done: bool = False
    row: PendingRow | None = None


class AckSequencer:
    """Releases PUBACKs in arrival order, for the current connection only."""

    def __init__(self) -> None:
        self.gen = 0
        self._queue: deque[Ticket] = deque()

    def connected(self, gen: int) -> list[Ticket]:
        """A new connection: tickets of older ones can no longer be acknowledged (returned)."""
        self.gen = gen
        stale = list(self._queue)
        self._queue.clear()
        return stale

    def received(self, gen: int, mid: int) -> Ticket:
        """Track a PUBLISH received on connection ``gen``."""
        ticket = Ticket(gen, mid)
        if gen == self.gen:
            self._queue.append(ticket)
        return ticket

    def complete(self, ticket: Ticket) -> list[Ticket]:
        """Mark ``ticket`` processed; returns the tickets now ready to acknowledge, in order."""
        ticket.done = True
        ready = []
        while self._queue and self._queue[0].done:
            ready.append(self._queue.popleft())
        return ready

    def __len__(self) -> int:
        return len(self._queue)


@dataclass(eq=False)
class PendingRow:
    """A received, not yet acknowledged QoS 1 message and the txn_id of its event."""

    txn_id: str
    topic: str
    digest: bytes
    mid: int
    gen: int  # connection that last delivered it; 0 = loaded from disk
    created_ms: int = 0
    acked_gen: int = -1  # connection its PUBACK was written on
    ack_no: int = 0  # the link's PUBACK counter at that moment


class Deduper:
    """Assigns transaction IDs so a redelivered message maps to its first event."""

    def __init__(self, rows: Iterable[PendingRow] = (), run_id: str | None = None) -> None:
        self.run_id = run_id or secrets.token_hex(6)
        self._counter = 0
        self._index: dict[tuple[str, bytes, int], list[PendingRow]] = defaultdict(list)
        self._acked: deque[PendingRow] = deque()  # in PUBACK order, for confirm()
        for row in rows:
            self._index[(row.topic, row.digest, row.mid)].append(row)

    def assign(self, topic: str, digest: bytes, mid: int, dup: bool, gen: int, now_ms: int) -> tuple[PendingRow, bool]:
        """The row for a delivery, and whether it is new (to be written before the event)."""
        if dup:
            for row in self._index.get((topic, digest, mid), ()):
                if row.gen < gen:
                    row.gen = gen
                    return row, False
        self._counter += 1
        row = PendingRow(f"{self.run_id}.{self._counter}", topic, digest, mid, gen, now_ms)
        self._index[(topic, digest, mid)].append(row)
        return row, True

    def acked(self, row: PendingRow, gen: int, ack_no: int) -> None:
        """Record that the PUBACK of ``row`` (number ``ack_no``) was written on connection ``gen``."""
        row.acked_gen = gen
        row.ack_no = ack_no
        self._acked.append(row)

    def confirm(self, gen: int, upto_ack_no: int, purge_older: bool) -> list[PendingRow]:
        """Rows whose PUBACK the broker processed, removed and returned.

        A barrier written on connection ``gen`` after PUBACK number
        ``upto_ack_no`` completed: rows acknowledged on ``gen`` up to that
        number are done. With ``purge_older``, rows of earlier connections
        that no redelivery claimed are done too.
        """
        done = []
        while self._acked and self._acked[0].ack_no <= upto_ack_no:
            row = self._acked.popleft()
            # A row acknowledged on an older connection stays: a redelivery may still claim it.
            if row.gen == gen and row.acked_gen == gen and self.release(row):
                done.append(row)
        if purge_older:
            done += [row for row in self.older_than(gen) if self.release(row)]
        return done

    def release(self, row: PendingRow) -> bool:
        """Forget a row whose message was acknowledged; False if it was already gone."""
        key = (row.topic, row.digest, row.mid)
        rows = self._index.get(key)
        if not rows or row not in rows:
            return False
        rows.remove(row)
        if not rows:
            del self._index[key]
        return True

    def older_than(self, gen: int) -> list[PendingRow]:
        """Rows last delivered before connection ``gen`` (dead when a session was lost)."""
        return [row for rows in self._index.values() for row in rows if row.gen < gen]

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._index.values())


class EchoGuard:
    """Remembers (topic, payload digest) of recent publishes to spot them coming back."""

    def __init__(self, ttl_s: float = 60.0) -> None:
        self.ttl_s = ttl_s
        self._seen: dict[tuple[str, bytes], list[float]] = {}

    def published(self, topic: str, digest: bytes, now: float) -> None:
        """Record one publish."""
        self._seen.setdefault((topic, digest), []).append(now + self.ttl_s)
        if len(self._seen) > 10_000:
            self._expire(now)

    def is_echo(self, topic: str, digest: bytes, now: float) -> bool:
        """Whether this message is one of ours coming back (each publish matches once)."""
        expiries = self._seen.get((topic, digest))
        if not expiries:
            return False
        while expiries and expiries[0] < now:
            expiries.pop(0)
        if not expiries:
            del self._seen[(topic, digest)]
            return False
        expiries.pop(0)
        if not expiries:
            del self._seen[(topic, digest)]
        return True

    def _expire(self, now: float) -> None:
        self._seen = {k: [t for t in v if t >= now] for k, v in self._seen.items() if v and v[-1] >= now}


@dataclass
class Counters:
    """Per-mapping counters; ``snapshot()`` is what the stats topic carries."""

    values: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    def add(self, mapping: str, name: str, count: int = 1) -> None:
        """Increase one counter."""
        self.values[mapping][name] += count

    def snapshot(self) -> dict[str, dict[str, int]]:
        """A plain copy of every counter."""
        return {m: dict(c) for m, c in self.values.items()}
