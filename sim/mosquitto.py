"""A private Mosquitto broker for benchmarks and tests (never for production).

``PrivateMosquitto(directory)`` writes a config file into ``directory`` and
runs ``mosquitto -c FILE`` on a free loopback port, with persistence in the
same directory and queue limits lifted, so QoS 1 messages for a slow or
absent subscriber are kept instead of dropped (Mosquitto's defaults:
``max_queued_messages 1000`` and ``max_inflight_messages 20`` per client).
``restart()`` stops it with SIGTERM (Mosquitto saves its database on the
way out) and starts it again on the same port with the same data.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

from lowband.sim.ports import free_port


class MosquittoError(RuntimeError):
    """The broker could not be started (not installed, port taken, bad config)."""


class PrivateMosquitto:
    """One ``mosquitto`` process on 127.0.0.1 with its data in ``directory``."""

    def __init__(self, directory: Path, *, persistence: bool = True, allow_anonymous: bool = True,
                 extra: str = "") -> None:  # fmt: skip
        """``extra`` is appended to the config; listener options in it apply to the one listener."""
        self.directory = Path(directory)
        self.port = free_port()
        self.persistence = persistence
        self.allow_anonymous = allow_anonymous
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        """The broker's config file."""
        return self.directory / "mosquitto.conf"

    def write_config(self) -> None:
        """Write the config file (called by :meth:`start`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            # Keep every QoS 1 message for a slow or absent subscriber.
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            "message_size_limit 0",
            # Started as root, Mosquitto would drop to user "mosquitto" and could not save its database here.
            f"user {getpass.getuser()}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory}/",
            "autosave_interval 1",
            f"log_dest file {self.directory}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra)

    def start(self, timeout: float = 10.0) -> PrivateMosquitto:
        """Start the broker and wait until it accepts connections."""
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise MosquittoError("mosquitto is not installed")
        self.write_config()
        self.proc = subprocess.Popen([binary, "-c", str(self.config_path)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise MosquittoError(f"mosquitto exited with {self.proc.returncode}: {err.strip()[-300:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise MosquittoError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the database is saved), then SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    def __enter__(self) -> PrivateMosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
