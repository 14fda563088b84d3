"""The device's side of the link (docs/protocol/link.md), sans-I/O, for MicroPython.

Runs unchanged on CPython 3.11 and MicroPython. It behaves like the
reference device, sim/device_core.py (DeviceLink), with its state
in preallocated buffers and its times in ticks_ms.

Rules:
- poll(now) returns the one frame to transmit now (a memoryview, valid
  until the next poll) or None; receive(frame, now) takes one frame and
  returns a bit set of what happened (ACKED, COMMAND, SESSION, REFUSED);
  wait_ms(now) says how soon poll() has something to do on its own
  (0: now, None: only after new input or a publish);
- one data frame outstanding at a time; a retransmission repeats its bytes
  exactly; the timeout is rto_ms, doubling per try up to 8 x; after
  max_tries the session is dropped, a new handshake starts (epoch + 1) and
  the unacknowledged message is sealed again under the new keys -- never a
  new plaintext under an old counter;
- the uplink queue is bounded (queue_limit messages, queue_bytes bytes);
  when full, the oldest message is dropped and counted in `dropped`;
- a command (a downlink plaintext) is delivered once, however often it
  arrives, and acknowledged in the next uplink: a pure ack (empty
  plaintext) when nothing else is queued;
- an acknowledgement byte counts only in a frame that is new to the
  window. The gateway never acknowledges in a repeated frame (a resent
  command carries the ack of its first sending), so this loses nothing and
  keeps a replayed old frame from acknowledging a reading that was lost
  (the reference DeviceLink, sim/device_core.py, does the same);
- with a store (lbnode.state), the session survives restarts: counters are
  reserved in blocks written before use, the receive window is written
  before a command is handed out. See lbnode/state.py for why and how.

Transitions (state: what the link is doing; "frame" = a DATA frame with a
plaintext; events in the order they are checked):

    state        event                                   -> action; next state
    NO_SESSION   poll                                    -> HS1 for epoch + 1; HANDSHAKE
    HANDSHAKE    poll, timeout, tries < max_tries        -> HS1 again, same bytes; HANDSHAKE
    HANDSHAKE    poll, timeout, tries = max_tries        -> HS1 for epoch + 1; HANDSHAKE
    HANDSHAKE    HS2 of this epoch verifies              -> counters 0, window empty; READY
    READY        poll, message waiting                   -> frame (with ack if due); WAIT_ACK
    READY        poll, only an ack due                   -> pure ack; READY
    WAIT_ACK     new frame acknowledges ours             -> ACKED; READY
    WAIT_ACK     poll, timeout, tries < max_tries        -> frame again, same bytes; WAIT_ACK
    WAIT_ACK     poll, timeout, tries = max_tries        -> drop keys, keep message; NO_SESSION
    any          DATA with a plaintext, new or late      -> COMMAND; ack due
    any          DATA with a plaintext, seen before      -> ack due (not delivered again)
    any          malformed, bad tag, no session, other   -> REFUSED (reason, counted)
"""

from lbcrypto import link_aead

from .msgring import MessageRing
from .ticks import ticks_add, ticks_diff

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


TYPE_HS1 = const(0)
TYPE_HS2 = const(1)
TYPE_DATA = const(2)
FLAG_ACK = const(0x10)
FLAG_FRAG = const(0x08)
HS_FRAME = const(50)  # header, address, e (32), tag (16)
TAG_LEN = const(8)
MAX_FRAME = const(255)
WINDOW = const(64)
BLOCK = const(16)  # send counters reserved per write to the store
_MASK64 = (1 << 64) - 1
_UP = const(0)
_DOWN = const(1)

# receive() result bits
ACKED = const(1)
COMMAND = const(2)
SESSION = const(4)
REFUSED = const(8)

# refusal reasons (link.md section 5: counted, never delivered)
R_MALFORMED = "malformed"
R_ADDRESS = "another device's frame"
R_NO_SESSION = "no session for this frame"
R_UNEXPECTED_HS2 = "unexpected HS2"
R_BAD_HS2 = "bad HS2"
R_BAD_TAG = "bad tag"


def _unload_handshake():
    # On a port that loads code into RAM (the unix port, .mpy files on a
    # board's filesystem) the handshake's modules hold about 5 KB of heap
    # that a session never uses: drop them; the next handshake imports them
    # again. Frozen modules cost no heap, and this changes nothing for them.
    import sys

    import lbcrypto

    for name in ("noise_kk", "x25519"):
        sys.modules.pop("lbcrypto." + name, None)
        if name in lbcrypto.__dict__:
            delattr(lbcrypto, name)


def _backoff(rto, tries):
    return rto * (1 << (tries - 1)) if tries < 4 else rto * 8


class DeviceLink:
    """A device's link state: session, queue, retransmission.

    address, static_private, static_public, gateway_public: from the
    device config (bytes; the keys 32 bytes each). rto_ms: the base
    retransmission timeout (the transport knows it: rto_ms()). store: an
    object with load()/save() (lbnode.state) to keep the session across
    restarts, or None to start with a handshake every time. Raises
    ValueError for a key of the wrong size or an address outside 1-254.
    """

    def __init__(self, address, static_private, static_public, gateway_public, rto_ms=5000, max_tries=6,
                 mtu=MAX_FRAME, queue_limit=32, queue_bytes=1024, store=None):
        if not 1 <= address <= 254:
            raise ValueError("link: address must be 1-254")
        for key in (static_private, static_public, gateway_public):
            if len(key) != 32:
                raise ValueError("link: keys must be 32 bytes")
        if mtu < 4 + TAG_LEN + 3 or mtu > MAX_FRAME:
            raise ValueError("link: mtu must be 15-255")
        # Attributes are few on purpose: an instance's dict grows by
        # reallocation, and on a 64 KB heap a large one may not find room.
        self.address = address
        self._s = static_private
        self._spub = static_public
        self._g = gateway_public
        self.rto_ms = rto_ms
        self.max_tries = max_tries
        self.store = store
        self.epoch = 0
        self.k_up = None
        self.k_down = None
        self.ephemeral = None  # tests and boards without a hardware RNG: the next handshake's secret
        self.resumed = False  # the session came from the store
        # counters for logs and tests
        self.dropped = 0
        self.refused = 0
        self.reason = None  # why the last frame was refused
        self.command = None  # the plaintext of the last COMMAND
        self.last_counter = -1  # counter of the frame poll() returned (-1: handshake)
        self.retransmission = False  # whether that frame was a repeat
        self.acked = -1  # counter of the frame the last ACKED acknowledged
        self._queue = MessageRing(queue_bytes, queue_limit)
        self._plain = bytearray(mtu - 4 - TAG_LEN)  # the message in flight (or waiting for a session)
        self._plain_len = -1
        self._plain_frag = False
        self._tx = bytearray(mtu)  # the frame in flight
        self._tx_len = 0
        self._hs = bytearray(HS_FRAME)  # HS1 while handshaking, then a pure ack's frame
        self._out_counter = -1
        self._tries = 0  # of HS1, or of the frame in flight
        self._deadline = 0  # of the same
        self._ack_due = -1
        self._ini = None
        self._send_next = 0
        self._send_limit = 0
        self._rx_high = -1
        self._rx_bits = 0
        self._frag_id = 0
        self._reasm = None
        if store is not None:
            self._restore()

    # ------------------------------------------------------------- sending

    @property
    def idle(self):
        """Nothing to send, nothing unacknowledged, and a session: the device may sleep."""
        return self.k_up is not None and self._plain_len < 0 and not len(self._queue) and self._ack_due < 0

    def publish(self, payload, n=-1):
        """Queue payload[:n] (all of it by default), a compact message, for the gateway.

        A message longer than one frame's plaintext (mtu - 12 bytes) is
        split into fragments (docs/protocol/fragmentation.md). Returns how
        many old messages were dropped to make room. Raises ValueError for
        an empty message or one that cannot fit the queue.
        """
        if n < 0:
            n = len(payload)
        if n == 0:
            raise ValueError("link: empty message")
        room = len(self._plain)
        if n <= room:
            dropped = self._queue.push(payload, n, False)
        else:
            from lbwire import frag

            count = frag.fragment_count(n, room)
            piece = self._plain if self._plain_len < 0 else bytearray(room)
            dropped = 0
            for i in range(count):
                m = frag.fragment_into(piece, payload[:n], self._frag_id, room, i)
                dropped += self._queue.push(piece, m, True)
            self._frag_id = (self._frag_id + 1) & 0xFF
        self.dropped += dropped
        return dropped

    def poll(self, now):
        """The frame to transmit now (memoryview, valid until the next poll), or None."""
        if self.k_up is None:
            return self._poll_handshake(now)
        if self._out_counter >= 0:
            if ticks_diff(now, self._deadline) < 0:
                return None
            if self._tries >= self.max_tries:
                self._drop_session()  # the message stays in _plain for the next session
                return self._poll_handshake(now)
            self._tries += 1
            self._deadline = ticks_add(now, _backoff(self.rto_ms, self._tries))
            self.last_counter = self._out_counter
            self.retransmission = True
            return memoryview(self._tx)[: self._tx_len]
        if self._plain_len < 0 and len(self._queue):
            self._plain_len, self._plain_frag = self._queue.pop_into(self._plain)
        self.retransmission = False
        if self._plain_len >= 0:
            counter = self._take_counter()
            self._tx_len = self._seal(self._tx, counter, self._plain, self._plain_len, self._plain_frag)
            self._out_counter = counter
            self._tries = 1
            self._deadline = ticks_add(now, self.rto_ms)
            self.last_counter = counter
            return memoryview(self._tx)[: self._tx_len]
        if self._ack_due >= 0:
            counter = self._take_counter()
            n = self._seal(self._hs, counter, b"", 0, False)  # a pure ack needs no ack
            self.last_counter = counter
            return memoryview(self._hs)[:n]
        return None

    def _poll_handshake(self, now):
        if self._ini is not None and ticks_diff(now, self._deadline) < 0:
            return None
        if self._ini is None or self._tries >= self.max_tries:
            from lbcrypto import noise_kk  # only while handshaking: a resumed session never loads it

            self.epoch = (self.epoch + 1) & 7
            self._ini = noise_kk.Initiator(self._s, self._spub, self._g, self.address, self.epoch, self.ephemeral)
            self.ephemeral = None
            hs = self._hs
            hs[0] = (TYPE_HS1 << 5) | self.epoch
            hs[1] = self.address
            hs[2:HS_FRAME] = self._ini.message1()
            self._tries = 0
            self.save()  # the proposed epoch: a restart proposes the next one
        self._tries += 1
        self._deadline = ticks_add(now, _backoff(self.rto_ms, self._tries))
        self.last_counter = -1
        self.retransmission = self._tries > 1
        return memoryview(self._hs)

    def _take_counter(self):
        counter = self._send_next
        if counter >= self._send_limit:
            self._send_limit = counter + BLOCK
            self.save()  # durable before the first counter of the block is used
        self._send_next = counter + 1
        return counter

    def _seal(self, out, counter, plain, n, frag):
        ack = self._ack_due
        self._ack_due = -1
        header = (TYPE_DATA << 5) | self.epoch
        if ack >= 0:
            header |= FLAG_ACK
        if frag:
            header |= FLAG_FRAG
        out[0] = header
        out[1] = self.address
        out[2] = counter & 0xFF
        pos = 3
        if ack >= 0:
            out[3] = ack & 0xFF
            pos = 4
        sealed = link_aead.seal(self.k_up, _UP, counter, memoryview(out)[:pos], memoryview(plain)[:n])
        end = pos + len(sealed)
        out[pos:end] = sealed
        return end

    def wait_ms(self, now):
        """Milliseconds until poll() has something to do on its own; 0: now; None: on input only."""
        if self.k_up is None:
            if self._ini is None:
                return 0
            wait = ticks_diff(self._deadline, now)
            return wait if wait > 0 else 0
        if self._out_counter >= 0:
            wait = ticks_diff(self._deadline, now)
            return wait if wait > 0 else 0
        if self._plain_len >= 0 or len(self._queue) or self._ack_due >= 0:
            return 0
        return None

    def _drop_session(self):
        self.k_up = self.k_down = None
        self._out_counter = -1
        self._ack_due = -1
        self.resumed = False

    # ----------------------------------------------------------- receiving

    def _refuse(self, reason):
        self.refused += 1
        self.reason = reason
        return REFUSED

    def receive(self, data, now):
        """Handle one frame from the gateway; returns ACKED | COMMAND | SESSION bits, or REFUSED.

        With COMMAND, `command` holds the whole compact message (bytes);
        with REFUSED, `reason` says why. Never raises for any input.
        """
        self.command = None
        n = len(data)
        if n < 2 or n > MAX_FRAME:
            return self._refuse(R_MALFORMED)
        header = data[0]
        kind = header >> 5
        epoch = header & 0x07
        if kind > TYPE_DATA or not 1 <= data[1] <= 254:
            return self._refuse(R_MALFORMED)
        if data[1] != self.address:
            return self._refuse(R_ADDRESS)
        if kind != TYPE_DATA:
            if header & (FLAG_ACK | FLAG_FRAG) or n != HS_FRAME:
                return self._refuse(R_MALFORMED)
            if kind == TYPE_HS1:
                return self._refuse(R_NO_SESSION)
            return self._finish_handshake(data, epoch)
        has_ack = header & FLAG_ACK
        start = 4 if has_ack else 3
        if n < start + TAG_LEN:
            return self._refuse(R_MALFORMED)
        if self.k_up is None or epoch != self.epoch:
            return self._refuse(R_NO_SESSION)
        counter = link_aead.counter_from_seq(self._rx_high, data[2])
        fresh = self._fresh(counter)
        try:
            plain = link_aead.open(self.k_down, _DOWN, counter, data[:start], data[start:])
        except ValueError:
            return self._refuse(R_BAD_TAG)
        result = 0
        if fresh:
            self._accept(counter)
            if has_ack and self._out_counter >= 0 and data[3] == self._out_counter & 0xFF:
                self.acked = self._out_counter
                self._out_counter = -1
                self._plain_len = -1
                result |= ACKED
            if plain:
                whole = plain
                if header & FLAG_FRAG:
                    whole = self._reassemble(plain, now)
                if whole is not None:
                    self.save()  # the window, before anyone acts on the command
                    self.command = whole
                    result |= COMMAND
        if plain:
            self._ack_due = counter  # a duplicate is acknowledged again: our ack was lost
        return result

    def _reassemble(self, piece, now):
        if self._reasm is None:
            from lbwire import frag

            self._reasm = frag.Reassembler(max_size=512, max_age_ms=600000)
        return self._reasm.add(piece, now)

    def _fresh(self, counter):
        # link.md: new (above H) or late (in the window, not seen); anything
        # else is a duplicate or too old to tell apart from one.
        if counter > self._rx_high:
            return True
        behind = self._rx_high - counter
        return behind < WINDOW and not (self._rx_bits >> behind) & 1

    def _accept(self, counter):
        if counter > self._rx_high:
            shift = counter - self._rx_high
            self._rx_bits = 1 if shift >= WINDOW else ((self._rx_bits << shift) | 1) & _MASK64
            self._rx_high = counter
        else:
            self._rx_bits |= 1 << (self._rx_high - counter)

    def _finish_handshake(self, data, epoch):
        if self._ini is None or epoch != self.epoch:
            return self._refuse(R_UNEXPECTED_HS2)
        try:
            self.k_up, self.k_down = self._ini.finish(data[2:HS_FRAME])
        except ValueError:
            return self._refuse(R_BAD_HS2)
        self._ini = None
        _unload_handshake()
        self._send_next = 0
        self._send_limit = 0
        self._rx_high = -1
        self._rx_bits = 0
        self._ack_due = -1
        self._out_counter = -1
        self.resumed = False
        self.save()
        return SESSION

    # --------------------------------------------------------- persistence

    def save(self):
        """Write the state to the store now (the link does it when needed; also before a deep sleep)."""
        if self.store is None:
            return
        from . import state

        buf = bytearray(state.STATE_LEN)
        keys = (self.k_up, self.k_down) if self.k_up is not None else None
        state.pack_into(buf, self.address, self._spub, self.epoch, keys, self._send_limit, self._rx_high, self._rx_bits)
        self.store.save(buf)

    def _restore(self):
        from . import state

        got = state.unpack(self.store.load(), self.address, self._spub)
        if got is None:
            return
        epoch, keys, limit, high, bits = got
        self.epoch = epoch
        if keys is not None:
            self.k_up, self.k_down = keys
            self._send_next = self._send_limit = limit  # counters below it may have been used
            self._rx_high = high
            self._rx_bits = bits
            self.resumed = True
