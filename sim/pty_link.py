"""Two pseudo-terminals joined by a LinkModel: a slow serial line for end-to-end tests.

Side A and side B each get a pty; a gateway and a device open the slave
paths (``path_a``, ``path_b``) like serial ports, with pyserial or with
MicroPython's ``open(path, "r+b")``. A relay reads what each side writes,
feeds it to the ``LinkModel`` and writes the model's deliveries to the other
side when they fall due. A pty ignores baud rates; the relay is what makes
the line slow, half duplex and lossy.

Design choices:
- The relay is one thread running a ``selectors`` loop, not an asyncio
  task: tests drive pyserial synchronously from the main thread, and a
  thread keeps the relay independent of any event loop the code under test
  runs. The thread owns the ptys' master ends; a lock guards the model so
  counters can be read from other threads.
- Both slaves are set raw with termios (no echo, no CR/LF translation, no
  signal or flow-control characters, 8 data bits) and the relay keeps its
  own slave descriptors open for its lifetime, so the settings persist and a
  side may close and reopen its port without the master seeing a hang-up.
- Model time is ``time.monotonic()``. A read chunk enters the model at the
  moment it was read.
- ``stop()`` ends the thread and closes every descriptor; bytes still in
  flight are discarded.
- As on a real UART, a side hears only what arrives after it has set its
  port up: pyserial flushes the input when it opens a port, and
  ``termios.setraw`` (MicroPython) discards unread input. Deliveries made
  before that are lost to it.

Run ``python -m lowband.sim.pty_link --bps 100 --loss 0.1 --bit-errors 0.01``
for a line to try by hand; it prints both paths and relays until Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import os
import pty
import selectors
import sys
import termios
import threading
import time
from typing import Any

from .link_model import SIDES, A, B, LinkCounters, LinkModel

__all__ = ["PtyLink", "set_raw", "main"]

_READ_CHUNK = 4096


def set_raw(fd: int) -> None:
    """Put a terminal descriptor in raw mode: every byte passes through untouched.

    Clears input translation (CR/NL, parity marking, stripping), XON/XOFF,
    output processing, echo, canonical mode and signals; sets 8 data bits and
    reads that return as soon as one byte is there.
    """
    attrs = termios.tcgetattr(fd)
    iflag, oflag, cflag, lflag = attrs[0], attrs[1], attrs[2], attrs[3]
    iflag &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
        | termios.IGNCR | termios.ICRNL | termios.IXON | termios.IXOFF | termios.IXANY | termios.INPCK
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8 | termios.CREAD | termios.CLOCAL
    cc = list(attrs[6])
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, attrs[4], attrs[5], cc])


class PtyLink:
    """A relay between two ptys through a ``LinkModel``; use as a context manager or call start()/stop()."""

    def __init__(self, model: LinkModel | None = None, **model_options: Any) -> None:
        """Relay through ``model``, or through ``LinkModel(**model_options)`` when none is given."""
        if model is not None and model_options:
            raise ValueError("pass either a LinkModel or its options, not both")
        self.model = model if model is not None else LinkModel(**model_options)
        self._lock = threading.Lock()
        self._masters: dict[str, int] = {}
        self._slaves: dict[str, int] = {}
        self._paths: dict[str, str] = {}
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        # Deliveries due but not yet accepted by the pty (guarded by _lock).
        self._outbox: dict[str, bytearray] = {A: bytearray(), B: bytearray()}

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> PtyLink:
        """Create both ptys and start relaying; returns self. Raises RuntimeError if already started."""
        if self._thread is not None:
            raise RuntimeError("PtyLink already started")
        try:
            for side in SIDES:
                master, slave = pty.openpty()
                self._masters[side], self._slaves[side] = master, slave
                set_raw(slave)
                os.set_blocking(master, False)
                self._paths[side] = os.ttyname(slave)
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._stopping.clear()
            self._outbox = {A: bytearray(), B: bytearray()}
            self._thread = threading.Thread(target=self._run, name="pty-link-relay", daemon=True)
            self._thread.start()
        except BaseException:
            self._close_fds()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the relay and close every descriptor; safe to call twice.

        Raises RuntimeError if the relay thread does not end within
        ``timeout`` seconds or ended with an error.
        """
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            self._wake()
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError("pty relay thread did not stop")
        self._close_fds()
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("pty relay failed") from error

    def __enter__(self) -> PtyLink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- introspection ------------------------------------------------------

    @property
    def path_a(self) -> str:
        """Device path of side A (valid after start())."""
        return self._path(A)

    @property
    def path_b(self) -> str:
        """Device path of side B (valid after start())."""
        return self._path(B)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def counters(self) -> dict[str, LinkCounters]:
        """A snapshot of the model's counters per sending side."""
        with self._lock:
            return {side: LinkCounters(**vars(c)) for side, c in self.model.counters.items()}

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight and everything delivered was written out; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.model.idle and not any(self._outbox.values()):
                    return True
            time.sleep(0.005)
        return False

    def _path(self, side: str) -> str:
        try:
            return self._paths[side]
        except KeyError:
            raise RuntimeError("PtyLink not started") from None

    # -- relay thread -------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            for side in SIDES:
                sel.register(self._masters[side], selectors.EVENT_READ, side)
            while not self._stopping.is_set():
                with self._lock:
                    for side_to, data in self.model.poll(time.monotonic()):
                        self._outbox[side_to] += data
                    deadline = self.model.next_deadline()
                self._flush(sel)
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                for key, events in sel.select(timeout):
                    if key.data is None:
                        self._drain_wake()
                        continue
                    side = key.data
                    if events & selectors.EVENT_READ:
                        self._read(sel, side)
                    if events & selectors.EVENT_WRITE:
                        self._flush(sel)
        except BaseException as exc:  # reported by stop()
            self._error = exc
        finally:
            sel.close()

    def _read(self, sel: selectors.BaseSelector, side: str) -> None:
        try:
            data = os.read(self._masters[side], _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            # EIO/EOF only happens if the slave side vanished; stop listening
            # instead of spinning on a descriptor that is always "readable".
            self._modify(sel, side, read=False)
            return
        with self._lock:
            self.model.write(side, data, time.monotonic())

    def _flush(self, sel: selectors.BaseSelector) -> None:
        for side in SIDES:
            with self._lock:
                box = self._outbox[side]
                while box:
                    try:
                        written = os.write(self._masters[side], box)
                    except BlockingIOError:
                        break
                    del box[:written]
                pending = bool(box)
            self._modify(sel, side, write=pending)

    def _modify(self, sel: selectors.BaseSelector, side: str, read: bool | None = None, write: bool | None = None) -> None:
        fd = self._masters[side]
        try:
            current = sel.get_key(fd).events
        except KeyError:  # unregistered after its slave went away
            current = 0
        events = current
        if read is not None:
            events = (events | selectors.EVENT_READ) if read else (events & ~selectors.EVENT_READ)
        if write is not None:
            events = (events | selectors.EVENT_WRITE) if write else (events & ~selectors.EVENT_WRITE)
        if events == current:
            return
        if not current:
            sel.register(fd, events, side)
        elif not events:
            sel.unregister(fd)
        else:
            sel.modify(fd, events, side)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _close_fds(self) -> None:
        for fd in [*self._masters.values(), *self._slaves.values(), self._wake_r, self._wake_w]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._masters.clear()
        self._slaves.clear()
        self._paths.clear()
        self._wake_r = self._wake_w = -1


# ---------------------------------------------------------------------------
# Manual testing


def main(argv: list[str] | None = None) -> int:
    """Relay between two fresh ptys until Ctrl-C; prints both paths first and the counters last."""
    parser = argparse.ArgumentParser(prog="python -m lowband.sim.pty_link", description=__doc__.splitlines()[0])
    parser.add_argument("--bps", type=float, default=100.0, help="line rate in bits per second (default 100)")
    parser.add_argument("--bits-per-byte", type=int, default=10, help="bits per byte on the line (default 10, 8N1)")
    parser.add_argument("--latency", type=float, default=0.0, help="one-way latency in seconds")
    parser.add_argument("--loss", type=float, default=0.0, help="probability that a whole frame is lost")
    parser.add_argument("--byte-loss", type=float, default=0.0, help="probability that a byte is lost")
    parser.add_argument("--bit-errors", type=float, default=0.0, help="probability that a bit flips")
    parser.add_argument("--cut", type=float, default=0.0, help="probability that a frame is truncated")
    parser.add_argument("--full-duplex", action="store_true", help="let both sides send at once")
    parser.add_argument("--collisions", choices=("queue", "drop"), default="queue",
                        help="half duplex: queue or drop bytes written while the other side sends")
    parser.add_argument("--seed", type=int, default=0, help="seed of the impairments (default 0)")
    args = parser.parse_args(argv)
    try:
        model = LinkModel(
            args.bps, bits_per_byte=args.bits_per_byte, latency=args.latency, frame_loss=args.loss,
            byte_loss=args.byte_loss, bit_error_rate=args.bit_errors, cut_rate=args.cut,
            half_duplex=not args.full_duplex, collisions=args.collisions, seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    link = PtyLink(model)
    with link:
        print(f"A: {link.path_a}")
        print(f"B: {link.path_b}")
        print("relaying; Ctrl-C stops", flush=True)
        try:
            while link.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        for side, counters in link.counters().items():
            print(f"from {side}: {counters}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
