"""The MicroPython unix port's HAL: a pty (or a real tty) as the device's UART.

The port's `os` has no open/read/write, so the tty is opened with the
builtin open(path, "r+b") (a FileIO) and set up with termios:

- termios.setraw(fd) gives raw bytes (no echo, no CR/LF translation, no
  signal characters) -- it also discards unread input, as a UART that was
  just configured would;
- then VMIN = 0 and VTIME = 0 (termios has no names for them: indexes 6
  and 5 of the control characters, as on Linux). FileIO.readinto() loops
  until the buffer is full or a read returns 0; with VMIN = 0 a read
  returns 0 as soon as nothing is waiting, so readinto() returns what
  is there instead of blocking for a whole buffer;
- select.poll waits for input with a timeout.

A pty ignores the baud rate; sim/pty_link.py's relay makes the line slow.
MicroPython only (CPython's termios has no setraw).
"""

import select
import termios

_VTIME = 5
_VMIN = 6


class UnixPort:
    """A UART-like port on a tty path, for lbnode.stream.StreamTransport."""

    def __init__(self, path):
        self.path = path
        self._f = open(path, "r+b")
        fd = self._f.fileno()
        termios.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[6][_VMIN] = 0
        attrs[6][_VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._poll = select.poll()
        self._poll.register(self._f, select.POLLIN)
        self.stream = self._f  # asyncio.StreamReader can wait on it

    def wait(self, timeout_ms):
        """True once input is waiting (or the line hung up), False after timeout_ms."""
        return bool(self._poll.poll(timeout_ms if timeout_ms > 0 else 0))

    def readinto(self, buf):
        try:
            return self._f.readinto(buf)
        except OSError:  # EIO: the other end of the pty is gone
            return 0

    def write(self, data):
        self._f.write(data)

    def close(self):
        self._f.close()
