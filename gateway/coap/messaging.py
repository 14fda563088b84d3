"""The CoAP message layer for one peer (RFC 7252 §4, notifications of RFC 7641): sans-I/O.

One :class:`Endpoint` talks to one peer over any datagram transport (UDP, a
Noise session, a device link). It is used in both roles: the gateway answers
requests (``receive`` → :class:`Request`, then ``respond``) and sends Observe
notifications (``send``); the client library sends requests (``send``) and
gets :class:`Response` events. The pump calls ``receive(data, now)`` for each
datagram, ``poll(now)`` for the datagrams to transmit (after every call, and
at ``next_deadline()``), and ``take_events()`` for what timers decided.

Rules
-----
- Outgoing, one ``_Out`` per message we originate, moved only through
  ``_OUT_MOVES``::

      QUEUED --start--> ACTIVE (CON: retransmitted) | WAITING (NON request) | DONE (other NON)
      ACTIVE --timeout--> ACTIVE (again, timeout doubled) | DONE after MAX_RETRANSMIT: Failed
      ACTIVE --empty ACK--> WAITING (a request: separate response to come) | DONE (Acked)
      ACTIVE/WAITING --response--> DONE | OBSERVING (an Observe registration answered with Observe)
      OBSERVING --notification--> OBSERVING | DONE (a final response)
      ACTIVE --RST--> DONE (Reset);  WAITING --response timeout--> DONE (Failed);  any --cancel--> DONE

- NSTART counts ACTIVE and WAITING messages: a request holds its slot until
  its response, not just until its ACK (stricter than RFC 7252 §4.7). That
  makes zero-length tokens (compact mode) safe: a request never starts while
  another with the same token is unanswered, so a response always has one
  match. Beyond NSTART messages wait in a bounded queue (``EndpointBusy``
  when full); a queued notification is replaced by a newer one for the same
  token (RFC 7641 §4.5.2: only the latest state matters).
- Incoming, each message ID is remembered for EXCHANGE_LIFETIME (CON) or
  NON_LIFETIME (NON): a duplicate CON gets the same bytes again (the
  piggybacked response, or the empty ACK of a separate one) and nothing if
  the request is still unanswered and not yet acknowledged; a duplicate NON
  is dropped. A CON request unanswered after ``empty_ack_delay`` gets an
  empty ACK, and its response then goes as a CON of its own.
- Peer errors become values: bytes that do not parse give ``Malformed`` (a
  CON among them is rejected with RST, RFC 7252 §4.2); a response no request
  awaits, and a CoAP ping, get RST. Our own misuse raises
  ``LocalProtocolError``.
- Every table is bounded (``Limits``): remembered message IDs by count and
  age, the queue, observations, sent NONs; NSTART bounds the rest.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections import OrderedDict
from dataclasses import dataclass

from lowband.codecs.coap import (
    ACK,
    CON,
    DEFAULT_MAX_SIZE,
    EMPTY,
    NON,
    RST,
    CoapFormatError,
    Message,
    encode,
    parse,
    peek_header,
)

__all__ = [
    "Acked",
    "Endpoint",
    "EndpointBusy",
    "Event",
    "Failed",
    "Limits",
    "LocalProtocolError",
    "Malformed",
    "Request",
    "Reset",
    "Response",
    "TransmissionParams",
]


@dataclass(frozen=True)
class TransmissionParams:
    """RFC 7252 §4.8 transmission parameters; the derived times of §4.8.2 are properties.

    ``empty_ack_delay``: how long a CON request may stay unanswered before it gets an empty ACK
    (and a separate response later); None never sends one (a duplicate of an unanswered request
    is then ignored). The default is half of ACK_TIMEOUT, so the ACK arrives before the peer
    retransmits.
    """

    ack_timeout: float = 2.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 4
    nstart: int = 1
    max_latency: float = 100.0
    empty_ack_delay: float | None = 1.0

    def __post_init__(self) -> None:
        if self.ack_timeout <= 0 or self.ack_random_factor < 1 or self.max_retransmit < 0 or self.nstart < 1:
            raise ValueError(f"transmission parameters out of range: {self}")

    @classmethod
    def for_link(cls, bps: float, message_bytes: int = 64, *, turnaround: float = 0.5) -> TransmissionParams:
        """Parameters for a slow link: ACK_TIMEOUT covers a message of ``message_bytes`` each way.

        At 100 bps a 64-byte message takes 5.1 s on air, so the RFC's 2 s would retransmit every
        request before its answer could arrive. ``turnaround`` is the peer's processing and the
        link's switching time. MAX_LATENCY grows with the time on air too.
        """
        if bps <= 0 or message_bytes <= 0:
            raise ValueError("bps and message_bytes must be positive")
        on_air = message_bytes * 8 / bps
        ack_timeout = max(2.0, 2 * on_air + turnaround)
        return cls(ack_timeout=ack_timeout, max_latency=max(100.0, 4 * on_air), empty_ack_delay=ack_timeout / 2)

    @property
    def max_transmit_span(self) -> float:
        """From the first transmission of a CON to its last retransmission."""
        return self.ack_timeout * (2**self.max_retransmit - 1) * self.ack_random_factor

    @property
    def max_transmit_wait(self) -> float:
        """From the first transmission of a CON until the sender gives up."""
        return self.ack_timeout * (2 ** (self.max_retransmit + 1) - 1) * self.ack_random_factor

    @property
    def processing_delay(self) -> float:
        """How long a peer may take to acknowledge (RFC 7252: ACK_TIMEOUT)."""
        return self.ack_timeout

    @property
    def exchange_lifetime(self) -> float:
        """How long a message ID stays meaningful after a CON is first sent (247 s by default)."""
        return self.max_transmit_span + 2 * self.max_latency + self.processing_delay

    @property
    def non_lifetime(self) -> float:
        """How long a NON's message ID stays meaningful (145 s by default)."""
        return self.max_transmit_span + self.max_latency


@dataclass(frozen=True)
class Limits:
    """Table bounds of one :class:`Endpoint` (memory stays bounded under any flood)."""

    #: received message IDs remembered for deduplication (the oldest are forgotten first)
    dedup: int = 256
    #: messages waiting for an NSTART slot
    queue: int = 32
    #: Observe registrations kept by the client role
    observations: int = 16
    #: NON messages we sent, remembered so a RST on one can be reported (notifications)
    sent_non: int = 64


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Request:
    """A new request from the peer (duplicates are not reported). Answer with :meth:`Endpoint.respond`."""

    msg: Message


@dataclass(frozen=True)
class Response:
    """A response (piggybacked, separate or an Observe notification) to ``request``, which we sent."""

    msg: Message
    request: Message


@dataclass(frozen=True)
class Acked:
    """The peer acknowledged our CON ``mid`` with an empty ACK (for a request: a separate response follows)."""

    mid: int


@dataclass(frozen=True)
class Failed:
    """Our message ``mid`` got no ACK after MAX_RETRANSMIT retransmissions, or our request no response in time."""

    mid: int
    token: bytes


@dataclass(frozen=True)
class Reset:
    """The peer rejected our message ``mid`` with RST (on a notification: the observer lost interest)."""

    mid: int
    token: bytes = b""


@dataclass(frozen=True)
class Malformed:
    """A datagram that is not a CoAP message, or one the protocol forbids here; ``reason`` is safe to log."""

    reason: str


Event = Request | Response | Acked | Failed | Reset | Malformed


class LocalProtocolError(RuntimeError):
    """We, not the peer, broke the protocol (a message that cannot be sent, a request answered twice)."""


class EndpointBusy(LocalProtocolError):
    """Every NSTART slot is taken and the queue is full: try again after some responses arrive."""


# ---------------------------------------------------------------------------- state


class _OutState(enum.Enum):
    QUEUED = "queued"
    ACTIVE = "active"  # a CON awaiting its ACK, retransmitted
    WAITING = "waiting"  # a request awaiting its response (acknowledged CON, or NON)
    OBSERVING = "observing"  # an Observe registration receiving notifications
    DONE = "done"


_Q, _A, _W, _O, _D = _OutState.QUEUED, _OutState.ACTIVE, _OutState.WAITING, _OutState.OBSERVING, _OutState.DONE

#: (state, what happened) → next state; anything else is a bug of this module.
_OUT_MOVES: dict[tuple[_OutState, str], _OutState] = {
    (_Q, "start_con"): _A,
    (_Q, "start_non_request"): _W,
    (_Q, "start_non"): _D,
    (_Q, "superseded"): _D,
    (_A, "retransmit"): _A,
    (_A, "give_up"): _D,
    (_A, "empty_ack_request"): _W,
    (_A, "empty_ack"): _D,
    (_A, "reset"): _D,
    (_A, "response"): _D,
    (_W, "response"): _D,
    (_A, "observe_response"): _O,
    (_W, "observe_response"): _O,
    (_O, "observe_response"): _O,
    (_O, "response"): _D,
    (_W, "give_up"): _D,
    **{(state, "cancel"): _D for state in (_Q, _A, _W, _O)},
}
_IN_FLIGHT = (_A, _W)


@dataclass(eq=False)
class _Out:
    msg: Message  # with its mid and token
    wire: bytes
    state: _OutState = _OutState.QUEUED
    retransmissions: int = 0
    timeout: float = 0.0
    due: float | None = None  # next retransmission, or when a WAITING request gives up


@dataclass(eq=False)
class _In:
    """A message ID we received: what to send again when it comes again."""

    expires: float
    #: the bytes a duplicate CON gets (piggybacked response, empty ACK or RST); None: nothing yet
    reply: bytes | None = None
    answered: bool = False
    token: bytes = b""
    empty_ack_due: float | None = None  # a CON request still unanswered at this time gets an empty ACK


def _empty(mtype: int, mid: int) -> bytes:
    return encode(Message(mtype, EMPTY, mid))


def _is_registration(msg: Message) -> bool:
    try:
        return msg.is_request and msg.observe == 0
    except CoapFormatError:
        return False


def _observe_of(msg: Message) -> int | None:
    try:
        return msg.observe
    except CoapFormatError:
        return None


# ---------------------------------------------------------------------------- endpoint


class Endpoint:
    """The message layer towards one peer (see the module docstring for the rules).

    ``rng`` draws message IDs, tokens and retransmission timeouts (pass a seeded one in tests);
    ``token_length`` is the length of the tokens made for requests sent without one (0 for the
    zero-length tokens of compact mode); ``max_size`` is the largest datagram accepted (larger
    ones are ``Malformed``); ``limits`` bounds the tables; ``response_timeout`` is how long an
    acknowledged (or NON) request waits for its response before ``Failed`` (EXCHANGE_LIFETIME
    unless given; :meth:`cancel` ends the wait sooner).
    """

    def __init__(
        self,
        params: TransmissionParams | None = None,
        *,
        rng: random.Random | None = None,
        token_length: int = 4,
        max_size: int = DEFAULT_MAX_SIZE,
        limits: Limits | None = None,
        response_timeout: float | None = None,
    ) -> None:
        if not 0 <= token_length <= 8:
            raise ValueError("token_length must be 0 to 8")
        self.params = params or TransmissionParams()
        self.limits = limits or Limits()
        #: how long a request waits for its response once acknowledged (or sent as NON)
        self.response_timeout = self.params.exchange_lifetime if response_timeout is None else response_timeout
        self._rng = rng or random.Random()
        self._token_length = token_length
        self._max_size = max_size
        self._next_mid = self._rng.randrange(0x10000)
        self._queue: list[_Out] = []
        self._inflight: dict[int, _Out] = {}
        self._by_token: dict[bytes, _Out] = {}
        self._observing: dict[bytes, _Out] = {}
        self._seen: OrderedDict[int, _In] = OrderedDict()
        self._sent_non: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        self._outbox: list[bytes] = []
        self._events: list[Event] = []
        #: what happened, for metrics and tests: transmissions, retransmissions, duplicates, malformed, rst_sent …
        self.counters: dict[str, int] = dict.fromkeys(
            ("sent", "retransmissions", "duplicates", "malformed", "rst_sent", "failed", "empty_acks"), 0
        )

    # ------------------------------------------------------------------ sending

    def send(self, msg: Message, now: float) -> Message:
        """Send a CON or NON request or notification; returns it as it goes on the wire (mid, token).

        A request without a token gets a fresh one of ``token_length`` bytes. A CON is
        retransmitted until ACK or RST (``Acked``, ``Response``, ``Reset`` events) or until it
        gives up (``Failed``). Raises :class:`LocalProtocolError` for an ACK, RST or Empty
        message, and :class:`EndpointBusy` when NSTART is used up and the queue is full.
        """
        if msg.mtype not in (CON, NON) or msg.is_empty:
            raise LocalProtocolError("send takes a CON or NON request or response; ACK and RST are the endpoint's")
        token = msg.token
        if msg.is_request and not token:
            token = self._new_token()
        sent = dataclasses.replace(msg, mid=self._new_mid(), token=token)
        out = _Out(msg=sent, wire=encode(sent))
        self._queue.append(out)
        self._start_queued(now)
        if out.state is _Q:
            superseded = self._queued_notification(out)
            if superseded is not None:
                self._move(superseded, "superseded")
            elif len(self._queue) > self.limits.queue:
                self._queue.remove(out)
                raise EndpointBusy(f"{len(self._inflight)} in flight and {len(self._queue)} queued")
        return sent

    def respond(self, request: Message, response: Message, now: float) -> Message:
        """Answer ``request`` (from a :class:`Request` event) with ``response``; returns what is sent.

        A CON request not yet acknowledged gets the response piggybacked in its ACK; once
        acknowledged (or for a NON request) the response goes as a message of its own: CON after an
        empty ACK, NON for a NON request unless ``response.mtype`` is CON. Token and message ID
        are filled here. Raises :class:`LocalProtocolError` when this request was already answered,
        :class:`EndpointBusy` as :meth:`send`.
        """
        if not response.is_response:
            raise LocalProtocolError("respond takes a response code (2.xx to 5.xx)")
        entry = self._seen.get(request.mid)
        if entry is not None and entry.token != request.token:
            entry = None  # the ID was reused since; the old request is forgotten
        if entry is not None and entry.answered:
            raise LocalProtocolError(f"request {request.mid} was already answered")
        if request.mtype == CON and (entry is None or entry.reply is None):
            reply = dataclasses.replace(response, mtype=ACK, mid=request.mid, token=request.token)
            wire = encode(reply)
            self._outbox.append(wire)
            if entry is not None:
                entry.reply, entry.answered, entry.empty_ack_due = wire, True, None
            return reply
        mtype = CON if request.mtype == CON or response.mtype == CON else NON
        sent = self.send(dataclasses.replace(response, mtype=mtype, token=request.token), now)
        if entry is not None:
            entry.answered, entry.empty_ack_due = True, None
        return sent

    def cancel(self, token: bytes) -> None:
        """Stop waiting for the response to our request ``token``, or forget the observation of that token.

        Sends nothing: a later notification is answered with RST (RFC 7641 §3.6). Unknown tokens are ignored.
        """
        for out in [*self._queue, *self._inflight.values(), *self._observing.values()]:
            if out.msg.token == token and out.msg.is_request:
                self._move(out, "cancel")

    # ------------------------------------------------------------------ receiving

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Take one datagram from the peer; returns what it means (never raises for bad input).

        Replies the datagram calls for (ACKs, RSTs, duplicates' answers) are collected by :meth:`poll`.
        """
        try:
            msg = parse(data, self._max_size)
        except CoapFormatError as exc:
            self.counters["malformed"] += 1
            head = peek_header(data)
            if head is not None and head[0] == CON:
                self._reject(head[2])
            return [Malformed(str(exc))]
        self._forget_old(now)
        if msg.mtype == ACK:
            return self._on_ack(msg, now)
        if msg.mtype == RST:
            return self._on_reset(msg)
        if msg.is_empty:
            if msg.mtype == CON:
                self._reject(msg.mid)  # a CoAP ping: RST is the pong (RFC 7252 §4.3)
            return []
        if msg.is_request:
            return self._on_request(msg, now)
        if msg.is_response:
            return self._on_separate(msg, now)
        self.counters["malformed"] += 1
        if msg.mtype == CON:
            self._reject(msg.mid)
        return [Malformed(f"code {msg.code >> 5}.{msg.code & 31:02d} is in a reserved class")]

    def _on_request(self, msg: Message, now: float) -> list[Event]:
        entry = self._seen.get(msg.mid)
        if entry is not None:
            self.counters["duplicates"] += 1
            if msg.mtype == CON and entry.reply is not None:
                self._outbox.append(entry.reply)
            return []
        con = msg.mtype == CON
        delay = self.params.empty_ack_delay
        self._remember(
            msg.mid,
            _In(
                expires=now + (self.params.exchange_lifetime if con else self.params.non_lifetime),
                token=msg.token,
                empty_ack_due=now + delay if con and delay is not None else None,
            ),
        )
        return [Request(msg)]

    def _on_separate(self, msg: Message, now: float) -> list[Event]:
        # A response in a CON or NON of its own: a separate response or a notification.
        entry = self._seen.get(msg.mid)
        if entry is not None:
            self.counters["duplicates"] += 1
            if msg.mtype == CON and entry.reply is not None:
                self._outbox.append(entry.reply)
            return []
        out = self._by_token.get(msg.token) or self._observing.get(msg.token)
        lifetime = self.params.exchange_lifetime if msg.mtype == CON else self.params.non_lifetime
        if out is None:
            # Nobody asked (or no longer listens): RST tells the peer, and stops its notifications.
            self._remember(msg.mid, _In(expires=now + lifetime, reply=_empty(RST, msg.mid), answered=True))
            self._outbox.append(_empty(RST, msg.mid))
            self.counters["rst_sent"] += 1
            return []
        reply = _empty(ACK, msg.mid) if msg.mtype == CON else None
        self._remember(msg.mid, _In(expires=now + lifetime, reply=reply, answered=True))
        if reply is not None:
            self._outbox.append(reply)
        return self._answered(out, msg)

    def _on_ack(self, msg: Message, now: float) -> list[Event]:
        out = self._inflight.get(msg.mid)
        if out is None or out.state is not _A:
            return []  # late or duplicate ACK
        if msg.is_empty:
            if out.msg.is_request:
                self._move(out, "empty_ack_request")
                out.due = now + self.response_timeout
            else:
                self._move(out, "empty_ack")
            return [Acked(msg.mid)]
        if not msg.is_response or not out.msg.is_request or msg.token != out.msg.token:
            self.counters["malformed"] += 1
            return [Malformed(f"ACK {msg.mid} carries code {msg.code:#04x} or a token that does not match")]
        return self._answered(out, msg)

    def _answered(self, out: _Out, msg: Message) -> list[Event]:
        keeps_observing = _is_registration(out.msg) and _observe_of(msg) is not None and msg.code >> 5 == 2
        if keeps_observing and (out.state is _O or len(self._observing) < self.limits.observations):
            self._move(out, "observe_response")
        else:
            self._move(out, "response")
        return [Response(msg, out.msg)]

    def _on_reset(self, msg: Message) -> list[Event]:
        if not msg.is_empty:
            self.counters["malformed"] += 1
            return [Malformed(f"RST {msg.mid} is not Empty")]
        out = self._inflight.get(msg.mid)
        if out is not None and out.state is _A:
            self._move(out, "reset")
            return [Reset(msg.mid, out.msg.token)]
        sent = self._sent_non.pop(msg.mid, None)
        if sent is not None:
            return [Reset(msg.mid, sent[0])]
        return []

    # ------------------------------------------------------------------ time

    def poll(self, now: float) -> list[bytes]:
        """Run the timers due at ``now`` and return the datagrams to transmit, oldest first.

        Retransmits CONs, gives up on them (``Failed``, see :meth:`take_events`), sends empty ACKs
        for requests still unanswered, starts queued messages as slots free up.
        """
        for out in list(self._inflight.values()):
            if out.due is None or out.due > now:
                continue
            if out.state is _A and out.retransmissions < self.params.max_retransmit:
                self._move(out, "retransmit")
                out.retransmissions += 1
                out.timeout *= 2
                out.due = now + out.timeout
                self._outbox.append(out.wire)
                self.counters["retransmissions"] += 1
            else:
                self._move(out, "give_up")
                self.counters["failed"] += 1
                self._events.append(Failed(out.msg.mid, out.msg.token))
        for mid, entry in self._seen.items():
            if entry.empty_ack_due is not None and entry.empty_ack_due <= now:
                entry.empty_ack_due = None
                entry.reply = _empty(ACK, mid)
                self._outbox.append(entry.reply)
                self.counters["empty_acks"] += 1
        self._forget_old(now)
        self._start_queued(now)
        out_now, self._outbox = self._outbox, []
        return out_now

    def take_events(self) -> list[Event]:
        """The events timers produced in :meth:`poll` since the last call (``Failed``)."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has work, or None when only the peer can make something happen."""
        times = [out.due for out in self._inflight.values() if out.due is not None]
        times += [e.empty_ack_due for e in self._seen.values() if e.empty_ack_due is not None]
        return min(times, default=None)

    @property
    def busy(self) -> bool:
        """Messages are in flight or queued (a pump may wait for this to clear before closing)."""
        return bool(self._inflight or self._queue)

    def table_sizes(self) -> dict[str, int]:
        """How full each table is (for metrics and the flood tests)."""
        return {
            "queue": len(self._queue),
            "inflight": len(self._inflight),
            "observing": len(self._observing),
            "seen": len(self._seen),
            "sent_non": len(self._sent_non),
        }

    # ------------------------------------------------------------------ internals

    def _move(self, out: _Out, happening: str) -> None:
        new = _OUT_MOVES.get((out.state, happening))
        if new is None:
            raise AssertionError(f"no move from {out.state} on {happening}")
        old, out.state = out.state, new
        if old is _Q and new is not _Q:
            self._queue.remove(out)
        if old in _IN_FLIGHT and new not in _IN_FLIGHT:
            del self._inflight[out.msg.mid]
            if self._by_token.get(out.msg.token) is out:
                del self._by_token[out.msg.token]
        if old is _Q and new in _IN_FLIGHT:
            self._inflight[out.msg.mid] = out
            if out.msg.is_request:
                self._by_token[out.msg.token] = out
        if old is _O and new is not _O:
            del self._observing[out.msg.token]
        if old is not _O and new is _O:
            self._observing[out.msg.token] = out

    def _start(self, out: _Out, now: float) -> None:
        if out.msg.is_request:
            old = self._observing.get(out.msg.token)
            if old is not None:
                self._move(old, "cancel")  # a new request with the token of an observation replaces it
        self._outbox.append(out.wire)
        self.counters["sent"] += 1
        if out.msg.mtype == CON:
            self._move(out, "start_con")
            factor = self._rng.uniform(1.0, self.params.ack_random_factor)
            out.timeout = self.params.ack_timeout * factor
            out.due = now + out.timeout
        elif out.msg.is_request:
            self._move(out, "start_non_request")
            out.due = now + self.response_timeout
        else:
            self._move(out, "start_non")
            self._sent_non[out.msg.mid] = (out.msg.token, now + self.params.non_lifetime)
            while len(self._sent_non) > self.limits.sent_non:
                self._sent_non.popitem(last=False)

    def _start_queued(self, now: float) -> None:
        # In order, but a message blocked only by its token does not hold back the others.
        for out in list(self._queue):
            if self._can_start(out):
                self._start(out, now)

    def _can_start(self, out: _Out) -> bool:
        if out.msg.mtype == NON and not out.msg.is_request:
            return True  # a NON notification or response holds no slot
        if len(self._inflight) >= self.params.nstart:
            return False
        return not (out.msg.is_request and out.msg.token in self._by_token)

    def _queued_notification(self, out: _Out) -> _Out | None:
        if out.msg.is_request or _observe_of(out.msg) is None:
            return None
        for queued in self._queue:
            if queued is out or queued.msg.is_request or queued.msg.token != out.msg.token:
                continue
            if _observe_of(queued.msg) is not None:
                return queued
        return None

    def _new_mid(self) -> int:
        mid = self._next_mid
        self._next_mid = (mid + 1) & 0xFFFF
        return mid

    def _new_token(self) -> bytes:
        if self._token_length == 0:
            return b""
        for _ in range(16):
            token = self._rng.randbytes(self._token_length)
            if token not in self._by_token and token not in self._observing:
                return token
        return token  # a 1-byte token space nearly full: the request waits for its token to free

    def _remember(self, mid: int, entry: _In) -> None:
        self._seen[mid] = entry
        self._seen.move_to_end(mid)
        while len(self._seen) > self.limits.dedup:
            self._seen.popitem(last=False)

    def _forget_old(self, now: float) -> None:
        # Entries are in arrival order and lifetimes differ (CON/NON), so check all of the few there are.
        for mid in [mid for mid, entry in self._seen.items() if entry.expires <= now]:
            del self._seen[mid]
        for mid in [mid for mid, (_, expires) in self._sent_non.items() if expires <= now]:
            del self._sent_non[mid]

    def _reject(self, mid: int) -> None:
        self._outbox.append(_empty(RST, mid))
        self.counters["rst_sent"] += 1
