"""A real Synapse as a federation peer on loopback, for tests and benchmarks.

Synapse is installed from PyPI into its own venv (``~/.cache/lowband/
synapse-venv``, or ``$LOWBAND_SYNAPSE_VENV``) on first use and is never a
dependency of Lowband. A :class:`SynapsePeer` runs one homeserver:

* server name ``127.0.0.1:PORT`` (no DNS), one TLS listener on that port
  serving the client and federation APIs, with a self-signed certificate;
* ``federation_verify_certificates: false`` and an ``ip_range_blocklist``
  without the loopback ranges, so it federates with other loopback peers;
* SQLite, open registration, no key servers, rate limits out of the way.

``start`` waits until it answers; ``stop`` (SIGTERM) and ``kill`` (SIGKILL)
end its process group. Every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lowband.sim.tls import self_signed

__all__ = ["SynapseError", "SynapsePeer", "ensure_synapse", "run_setup", "synapse_venv_dir"]

_LIMIT = {"per_second": 100_000, "burst_count": 100_000}


class SynapseError(RuntimeError):
    """Synapse could not be installed, configured or started; the message says what."""


def synapse_venv_dir() -> Path:
    """Where Synapse is installed: ``$LOWBAND_SYNAPSE_VENV`` or the user cache."""
    override = os.environ.get("LOWBAND_SYNAPSE_VENV")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lowband" / "synapse-venv"


def run_setup(argv: list[str], what: str, timeout: float, cwd: Path | None = None) -> str:
    """Run a set-up command (venv, pip, config generation); its stdout, SynapseError with its last line on failure."""
    try:
        done = subprocess.run(argv, check=False, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SynapseError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise SynapseError(f"{what} failed with status {done.returncode}: {tail[-1] if tail else 'no output'}")
    return done.stdout


def ensure_synapse(progress: Any = None) -> Path:
    """The Python of a venv with matrix-synapse in it, installing from PyPI on first use.

    ``progress(message)`` is told when the (minute-long) install starts.
    Raises SynapseError when the venv cannot be made or pip fails.
    """
    venv = synapse_venv_dir()
    python = venv / "bin" / "python"
    marker = venv / ".lowband-installed"
    if python.exists() and marker.exists():
        return python
    if progress is not None:
        progress(f"installing matrix-synapse from PyPI into {venv} (once; about a minute)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    run_setup([sys.executable, "-m", "venv", "--clear", str(venv)], "creating the Synapse venv", 300)
    pip = [str(python), "-m", "pip", "install", "--progress-bar", "off", "matrix-synapse"]
    try:
        code = subprocess.run(pip, check=False, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
                              timeout=1800).returncode  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SynapseError(f"pip install matrix-synapse failed: {exc}") from exc
    if code != 0:
        raise SynapseError(f"pip install matrix-synapse failed with status {code} (see the lines above)")
    marker.write_text("matrix-synapse\n")
    return python


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SynapsePeer:
    """One Synapse homeserver federating on loopback (see the module docstring)."""

    def __init__(self, workdir: Path, port: int | None = None, extra: dict[str, Any] | None = None,
                 tls: bool = True) -> None:  # fmt: skip
        """``extra``: config keys set last (``app_service_config_files`` …); ``tls=False``: plain HTTP, for
        clients that cannot be told to trust a self-signed certificate (bridges)."""
        self.workdir = workdir
        self.tls = tls
        self.port = port or _free_port()
        self.server_name = f"127.0.0.1:{self.port}"
        self.extra = extra or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "synapse.stdout.log"
        self._python: Path | None = None

    @property
    def url(self) -> str:
        """Base URL of both APIs."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def configure(self) -> None:
        """Generate and edit the config once (keeps the signing key and database across restarts)."""
        config_path = self.workdir / "homeserver.yaml"
        if config_path.exists():
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        python = self._python = ensure_synapse()
        run_setup([str(python), "-m", "synapse.app.homeserver", "--server-name", self.server_name, "--config-path",
              str(config_path), "--data-directory", str(self.workdir), "--generate-config", "--report-stats=no"],
             "generating the Synapse config", 120, cwd=self.workdir)  # fmt: skip
        cert, key = self_signed(self.workdir, ["127.0.0.1"])
        script = (
            "import json, sys, yaml\n"
            "from synapse.config.server import DEFAULT_IP_RANGE_BLOCKLIST as B\n"
            "print(json.dumps({'config': yaml.safe_load(open(sys.argv[1])),"
            " 'blocklist': [r for r in B if r not in ('127.0.0.0/8', '::1/128')]}))\n"
        )
        found = json.loads(run_setup([str(python), "-c", script, str(config_path)], "reading the Synapse config", 60))
        config = found["config"]
        config.update({
            "listeners": [{"port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": self.tls,
                           "x_forwarded": False, "resources": [{"names": ["client", "federation"], "compress": False}]}],
            "tls_certificate_path": str(cert),
            "tls_private_key_path": str(key),
            "federation_verify_certificates": False,
            "ip_range_blacklist": found["blocklist"],
            "database": {"name": "sqlite3", "args": {"database": str(self.workdir / "homeserver.db")}},
            "media_store_path": str(self.workdir / "media_store"),
            "pid_file": str(self.workdir / "homeserver.pid"),
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "report_stats": False,
            "rc_message": _LIMIT, "rc_registration": _LIMIT, "rc_room_creation": _LIMIT, "rc_joins_per_room": _LIMIT,
            "rc_login": {"address": _LIMIT, "account": _LIMIT, "failed_attempts": _LIMIT},
            "rc_joins": {"local": _LIMIT, "remote": _LIMIT},
            "rc_invites": {"per_room": _LIMIT, "per_user": _LIMIT, "per_issuer": _LIMIT},
            "rc_federation": {"window_size": 1000, "sleep_limit": 10_000, "sleep_delay": 1, "reject_limit": 10_000,
                              "concurrent": 100},
            # Quick retries to peers that come back (tests restart peers).
            "federation": {"destination_min_retry_interval": "1s", "destination_retry_multiplier": 1,
                           "destination_max_retry_interval": "5s"},
        })  # fmt: skip
        config.update(self.extra)
        config_path.write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML

    def start(self, timeout: float = 90.0) -> SynapsePeer:
        """Start (or restart) Synapse and wait until its client API answers."""
        self.configure()
        python = self._python or ensure_synapse()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(python), "-m", "synapse.app.homeserver", "-c",
                                          str(self.workdir / "homeserver.yaml")], cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/_matrix/client/versions")
                return self
            except (OSError, SynapseError):
                pass
            if self.proc.poll() is not None:
                raise SynapseError(f"Synapse exited with {self.proc.returncode}: {self._tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise SynapseError(f"Synapse did not answer within {timeout} s: {self._tail()}")
            time.sleep(0.2)

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"

    def _signal(self, sig: int, wait: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        self._signal(signal.SIGTERM, 20.0)

    def kill(self) -> None:
        """``kill -9`` the whole process group."""
        self._signal(signal.SIGKILL, 10.0)

    def __enter__(self) -> SynapsePeer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------- client API (blocking, for set-up)

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                timeout: float = 30.0) -> Any:  # fmt: skip
        """A client-server request; the decoded answer, SynapseError with the body on an error status."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise SynapseError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None

    def get(self, path: str, token: str | None = None) -> Any:
        """GET ``path``."""
        return self.request("GET", path, token=token, timeout=5.0)

    def register(self, username: str, password: str = "pw-" + "x" * 8) -> tuple[str, str]:
        """Register a user with one m.login.dummy request; (user_id, access_token)."""
        done = self.request("POST", "/_matrix/client/v3/register",
                            {"username": username, "password": password, "auth": {"type": "m.login.dummy"}})  # fmt: skip
        return done["user_id"], done["access_token"]
