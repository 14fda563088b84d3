"""heisenbridge, a real Matrix-IRC bridge (an application service), for the bridge tests.

heisenbridge is installed from PyPI, at a pinned version, into its own venv
(``~/.cache/lowband/heisenbridge-venv``, or ``$LOWBAND_HEISENBRIDGE_VENV``) on
first use: it pins its own mautrix, which need not agree with the project's,
and it is never a dependency of Lowband. :class:`Heisenbridge` generates the
registration the ordinary way (``-c FILE --generate``), runs the bridge
against a homeserver's URL and stops it. Every wait has a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lowband.sim.synapse import SynapseError, run_setup

__all__ = ["HEISENBRIDGE_VERSION", "Heisenbridge", "HeisenbridgeError", "ensure_heisenbridge", "heisenbridge_venv_dir"]

#: The release the tests and docs/bridges.md were checked with; moving it is a deliberate change.
HEISENBRIDGE_VERSION = "1.15.4"


class HeisenbridgeError(RuntimeError):
    """heisenbridge could not be installed, configured or started; the message says what."""


def heisenbridge_venv_dir() -> Path:
    """Where heisenbridge is installed: ``$LOWBAND_HEISENBRIDGE_VENV`` or the user cache."""
    override = os.environ.get("LOWBAND_HEISENBRIDGE_VENV")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lowband" / "heisenbridge-venv"


def ensure_heisenbridge(progress: Any = None) -> Path:
    """The Python of a venv with heisenbridge ``HEISENBRIDGE_VERSION`` in it, installing from PyPI when missing.

    ``progress(message)`` is told when the install starts. A venv holding
    another version is rebuilt. Raises HeisenbridgeError when the venv cannot
    be made or pip fails.
    """
    venv = heisenbridge_venv_dir()
    python = venv / "bin" / "python"
    marker = venv / ".lowband-installed"
    wanted = f"heisenbridge=={HEISENBRIDGE_VERSION}"
    if python.exists() and marker.exists() and marker.read_text().strip() == wanted:
        return python
    if progress is not None:
        progress(f"installing {wanted} from PyPI into {venv} (once; some seconds)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_setup([sys.executable, "-m", "venv", "--clear", str(venv)], "creating the heisenbridge venv", 300)
    except SynapseError as exc:
        raise HeisenbridgeError(str(exc)) from exc
    pip = [str(python), "-m", "pip", "install", "--progress-bar", "off", wanted]
    try:
        code = subprocess.run(pip, check=False, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
                              timeout=900).returncode  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HeisenbridgeError(f"pip install {wanted} failed: {exc}") from exc
    if code != 0:
        raise HeisenbridgeError(f"pip install {wanted} failed with status {code} (see the lines above)")
    marker.write_text(wanted + "\n")
    return python


class Heisenbridge:
    """One heisenbridge process with its registration file in ``workdir``.

    ``generate`` writes the registration (``--generate``, listening on
    127.0.0.1:``port``); ``start(homeserver_url)`` runs the bridge and waits for
    its "bridge is now running" line; ``stop`` ends its process group.
    """

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = Path(workdir)
        self.port = port
        self.registration = self.workdir / "heisenbridge.yaml"
        self.log = self.workdir / "heisenbridge.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def generate(self) -> Path:
        """Write the registration with ``python -m heisenbridge -c FILE --generate``; its path."""
        python = ensure_heisenbridge()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            run_setup([str(python), "-m", "heisenbridge", "-c", str(self.registration), "--generate",
                       "--listen-address", "127.0.0.1", "--listen-port", str(self.port)],
                      "generating the heisenbridge registration", 120, cwd=self.workdir)  # fmt: skip
        except SynapseError as exc:
            raise HeisenbridgeError(str(exc)) from exc
        return self.registration

    def start(self, homeserver_url: str, timeout: float = 60.0, owner: str | None = None) -> Heisenbridge:
        """Run the bridge against ``homeserver_url``; HeisenbridgeError when it exits or is not running in time."""
        python = ensure_heisenbridge()
        argv = [str(python), "-u", "-m", "heisenbridge", "-vv", "-c", str(self.registration),
                "--listen-address", "127.0.0.1", "--listen-port", str(self.port)]  # fmt: skip
        if owner:
            argv += ["--owner", owner]
        argv.append(homeserver_url)
        before = self._log_text().count("bridge is now running")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while self._log_text().count("bridge is now running") == before:
            if self.proc.poll() is not None:
                raise HeisenbridgeError(f"heisenbridge exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise HeisenbridgeError(f"heisenbridge was not running within {timeout} s: {self.tail()}")
            time.sleep(0.1)
        return self

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, chars: int = 3000) -> str:
        """The end of the bridge's log."""
        return self._log_text()[-chars:]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its process group, SIGKILL after ``timeout`` seconds."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
