"""The homeserver the real-client tests talk to, and the few blocking calls they make to set it up.

A :class:`Homeserver` is a running server on 127.0.0.1 with open registration:
its client-server base URL, plain HTTP, and :meth:`Homeserver.register`.
``start_synapse`` runs Synapse from its cache venv (the reference: what the
clients are known to work with); ``start_lowband`` runs ``lowband serve``.
``conftest.py`` picks one of them in one line.

Set-up (registration, an encrypted room and its members) goes over raw HTTP
here so that every client under test starts from the same state, whichever
the server; what the clients then do is the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

PASSWORD = "e2e-secret-pw"
#: The algorithm every client under test speaks for rooms.
MEGOLM = "m.megolm.v1.aes-sha2"
JS_DIR = Path(__file__).parent / "js"


class HomeserverError(AssertionError):
    """A set-up request got an error status; the message has the method, path, status and body."""


@dataclass(frozen=True)
class Account:
    """A registered user: log in with ``user_id`` and ``password``; ``access_token`` is the registration's session."""

    user_id: str
    password: str
    access_token: str


class Homeserver:
    """A running homeserver under test (see the module docstring)."""

    def __init__(self, name: str, base_url: str, log: Path, tag: str = "") -> None:
        """``tag`` goes into every user name: a server that outlives this run keeps the names of earlier ones."""
        self.name = name
        self.base_url = base_url
        #: where the server writes its log (printed when a test fails)
        self.log = log
        self._tag = f"{tag}-" if tag else ""
        self._names = itertools.count(1)

    def api(self, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 30.0) -> Any:
        """One client-server request; the decoded JSON answer, HomeserverError on an error status."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise HomeserverError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None

    def register(self, prefix: str) -> Account:
        """A new user ``<prefix>-[<tag>-]<n>`` (unique on this server), registered with one m.login.dummy request."""
        username = f"{prefix}-{self._tag}{next(self._names)}"
        done = self.api("POST", "/_matrix/client/v3/register",
                        {"username": username, "password": PASSWORD, "auth": {"type": "m.login.dummy"}})  # fmt: skip
        return Account(done["user_id"], PASSWORD, done["access_token"])

    def encrypted_room(self, owner: Account, members: list[Account], name: str = "e2e") -> str:
        """A private room created by ``owner`` with Megolm on from its first event, every member joined; its ID."""
        created = self.api("POST", "/_matrix/client/v3/createRoom", {
            "preset": "private_chat", "name": name, "invite": [m.user_id for m in members],
            "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}],
        }, owner.access_token)  # fmt: skip
        room_id = created["room_id"]
        for member in members:
            self.api("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room_id)}", {}, member.access_token)
        return room_id

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _wait_answering(base_url: str, alive: Any, timeout: float) -> None:
    """Poll ``/versions`` until it answers; RuntimeError when ``alive()`` turns false or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base_url + "/_matrix/client/versions", timeout=2) as response:
                response.read()
                return
        except OSError:
            pass
        if not alive():
            raise RuntimeError("the homeserver exited while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the homeserver did not answer within {timeout} s")
        time.sleep(0.1)


@contextlib.contextmanager
def start_synapse(workdir: Path, timeout: float = 90.0) -> Iterator[Homeserver]:
    """Synapse on 127.0.0.1 (plain HTTP, open registration, rate limits off), stopped on exit.

    Installs Synapse into its cache venv on first use (``.ci/run`` does it beforehand).
    """
    from lowband.gateway.bench.synapse import prepare_synapse

    workdir.mkdir(parents=True, exist_ok=True)
    server = prepare_synapse(workdir)
    try:
        server.start()
        try:
            _wait_answering(server.base_url, lambda: server.proc is not None and server.proc.poll() is None, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {server.log.read_text(errors='replace')[-1500:]}") from None
        yield Homeserver("synapse", server.base_url, server.log)
    finally:
        server.stop()


#: A test gateway: many clients' requests in a few seconds, so no rate limits.
LOWBAND_CONFIG = """
[rate_limits]
enabled = false
[registration]
guests = true
"""


@contextlib.contextmanager
def start_lowband(workdir: Path) -> Iterator[Homeserver]:
    """``lowband serve --enable-registration`` on 127.0.0.1 (server name ``localhost``), stopped on exit."""
    from harness import GatewayProcess

    workdir.mkdir(parents=True, exist_ok=True)
    gateway = GatewayProcess(workdir / "data", config=LOWBAND_CONFIG)
    try:
        gateway.start()
        yield Homeserver("lowband", gateway.url, gateway.log_path)
    finally:
        gateway.stop()


def _node_argv(script: str, config: dict[str, Any]) -> list[str]:
    return ["node", str(JS_DIR / script), json.dumps(config)]


def _node_env() -> dict[str, str]:
    return {**os.environ, "NODE_NO_WARNINGS": "1"}


def _signal_group(proc: subprocess.Popen[Any] | asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def _stop(proc: subprocess.Popen[Any]) -> None:
    """End a script still running: SIGTERM first, on which Playwright closes the browser it launched (in a
    process group of its own, out of reach of ``killpg``), then SIGKILL to the script's group after 5 s."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(10)


def _parse(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("E2E {")]


def run_node(script: str, config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``js/<script>`` with ``config`` as JSON in argv[2]; the ``result`` object of its last output line.

    The scripts (``js/report.mjs``) print ``E2E <json>`` lines on stdout:
    ``{"step": ...}`` as they go, ``{"result": {...}}`` at the end,
    ``{"error": "..."}`` before a non-zero exit; libraries log to stderr.
    AssertionError with the lines and stderr's end when the script fails,
    prints no result, or runs past ``timeout`` seconds (it is ended then, see
    :func:`_stop`).
    """
    proc = subprocess.Popen(_node_argv(script, config), cwd=JS_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_node_env(), start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"{script} ran past {timeout} s; its lines:\n{out}\nstderr:\n{err[-3000:]}") from None
    finally:
        _stop(proc)
    lines = _parse(out)
    if proc.returncode != 0 or not lines or "result" not in lines[-1]:
        raise AssertionError(f"{script} exited with {proc.returncode}; its lines:\n{out}\nstderr:\n{err[-3000:]}")
    result: dict[str, Any] = lines[-1]["result"]
    return result


class NodeScript:
    """A Node script (same protocol as :func:`run_node`) that a test talks with while it runs.

    ``async with NodeScript(...) as script``: started on entry, ended on exit
    if it still runs, and so is every process group it reported in a line's
    ``pgids`` (a browser it launched); stderr goes to ``stderr_path``.
    """

    def __init__(self, script: str, config: dict[str, Any], stderr_path: Path) -> None:
        self.script = script
        self.config = config
        self.stderr_path = stderr_path
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        # A local file, opened once before anything else runs on the test's loop.
        with open(self.stderr_path, "wb") as stderr:  # noqa: ASYNC230
            self.proc = await asyncio.create_subprocess_exec(
                *_node_argv(self.script, self.config), cwd=JS_DIR, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env=_node_env(), start_new_session=True)  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        """End the script if it still runs, as :func:`_stop` does, then every process group it reported."""
        if self.proc is not None and self.proc.returncode is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                _signal_group(self.proc, signal.SIGKILL)
                await asyncio.wait_for(self.proc.wait(), 10)
        # A browser's helpers (renderers, zygote) outlive its main process for a moment.
        for line in self.lines:
            for pgid in line.get("pgids", []):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)

    def _failure(self, what: str) -> AssertionError:
        lines = "\n".join(json.dumps(line) for line in self.lines)
        err = self.stderr_path.read_text(errors="replace")[-3000:] if self.stderr_path.exists() else ""
        return AssertionError(f"{self.script}: {what}; its lines:\n{lines}\nstderr:\n{err}")

    async def wait_for(self, key: str, value: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """The next line that has ``key`` (equal to ``value`` if given); AssertionError on an error line,
        the script's exit, or after ``timeout`` seconds."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(f"no {key} {value or ''} within {timeout} s")
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            except TimeoutError:
                continue
            if not raw:
                await asyncio.wait_for(self.proc.wait(), 10)
                raise self._failure(f"exited with {self.proc.returncode} before {key} {value or ''}")
            for line in _parse(raw.decode(errors="replace")):
                self.lines.append(line)
                if "error" in line:
                    raise self._failure("it failed")
                if key in line and (value is None or line[key] == value):
                    return line
