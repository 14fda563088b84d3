"""A private IRC server (Debian's ``ngircd``) on loopback, for the bridge tests; never for production.

``PrivateIrcd(directory)`` writes a config into ``directory`` (no PAM, no
ident or DNS look-ups, nothing read from ``/etc/ngircd``) and runs
``ngircd --nodaemon`` on a free 127.0.0.1 port; ``stop`` ends it. Every wait
has a timeout. :class:`IrcLine` is a tiny blocking IRC client over a plain
socket, enough for a test to register, join and talk.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

__all__ = ["IrcError", "IrcLine", "PrivateIrcd"]


class IrcError(RuntimeError):
    """The server could not be started, or an expected line did not come in time."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ngircd_binary() -> str | None:
    """Where ``ngircd`` is: on PATH, or in ``/usr/sbin`` (a non-root PATH may lack it); None when not installed."""
    return shutil.which("ngircd") or ("/usr/sbin/ngircd" if Path("/usr/sbin/ngircd").exists() else None)


class PrivateIrcd:
    """One ``ngircd`` process on 127.0.0.1 with its config in ``directory``."""

    def __init__(self, directory: Path, name: str = "irc.lowband.test") -> None:
        self.directory = Path(directory)
        self.name = name
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.directory / "ngircd.log"

    def write_config(self) -> Path:
        """The config file, written (called by :meth:`start`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        include = self.directory / "conf.d"  # empty: the machine's /etc/ngircd/ngircd.conf.d stays out
        include.mkdir(exist_ok=True)
        user = getpass.getuser()
        path = self.directory / "ngircd.conf"
        path.write_text("\n".join([
            "[Global]",
            f"Name = {self.name}",
            "Info = Lowband test IRC server",
            "AdminInfo1 = tests", "AdminInfo2 = loopback", "AdminEMail = nobody@invalid",
            "Listen = 127.0.0.1",
            f"Ports = {self.port}",
            "MotdPhrase = test server",
            f"PidFile = {self.directory / 'ngircd.pid'}",
            # Started as root it would switch to this user; stay who we are.
            f"ServerUID = {user}",
            "[Limits]",
            "MaxNickLength = 30",  # the default 9 is shorter than the nicks bridges derive from user IDs
            "PingTimeout = 300",
            "MaxConnectionsIP = 0",
            "[Options]",
            "PAM = no", "Ident = no", "DNS = no",
            f"IncludeDir = {include}",
            "",
        ]))  # fmt: skip
        return path

    def start(self, timeout: float = 15.0) -> Self:
        """Start the server and wait until it accepts connections; IrcError when it cannot."""
        binary = ngircd_binary()
        if binary is None:
            raise IrcError("ngircd is not installed (Debian package ngircd)")
        config = self.write_config()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([binary, "--nodaemon", "--config", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise IrcError(
                    f"ngircd exited with {self.proc.returncode}: {self.log.read_text(errors='replace')[-500:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise IrcError(f"ngircd did not listen on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class IrcLine:
    """A blocking IRC client on one socket: :meth:`send` a line, :meth:`expect` one; answers PINGs on the way.

    ``lines`` keeps every line received, for a failing test's message.
    """

    def __init__(self, port: int, nick: str, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.nick = nick
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""
        self.lines: list[str] = []

    def send(self, line: str) -> None:
        """Send one line (CRLF added)."""
        self.sock.sendall(line.encode() + b"\r\n")

    def _next_line(self, deadline: float) -> str:
        while b"\r\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise IrcError(f"the server closed the connection; last lines: {self.lines[-10:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\r\n", 1)
        line = raw.decode(errors="replace")
        self.lines.append(line)
        return line

    def expect(self, *words: str, timeout: float = 20.0) -> str:
        """The next line holding every one of ``words``; IrcError with the recent lines after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._next_line(deadline)
            except TimeoutError:
                raise IrcError(f"no line with {words} within {timeout} s; last lines: {self.lines[-10:]}") from None
            if line.startswith("PING "):
                self.send("PONG " + line[5:])
                continue
            if all(word in line for word in words):
                return line

    def register(self) -> None:
        """NICK and USER, then wait for the welcome (001)."""
        self.send(f"NICK {self.nick}")
        self.send(f"USER lowband 0 * :{self.nick}")  # a fixed user name: a nick may hold characters it may not
        self.expect(" 001 ")

    def close(self) -> None:
        """QUIT (best effort) and close the socket."""
        try:
            self.send("QUIT :bye")
        except OSError:
            pass
        self.sock.close()
