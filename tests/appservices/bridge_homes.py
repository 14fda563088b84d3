"""The homeserver the real-bridge tests run their bridges on, chosen in one place, and a few shared helpers.

``start_home(kind, workdir, registrations)`` starts either ``lowband serve``
(what the suite checks) or Synapse (the reference the bridges are known to
work with, to tell a bridge's quirk from ours) with the given registration
files, on 127.0.0.1 over plain HTTP, open registration, no rate limits. The
kind is ``LOWBAND_AS_HOMESERVER=lowband|synapse`` (default lowband). Each
test module starts one server for its tests and stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The homeserver under test unless LOWBAND_AS_HOMESERVER says otherwise.
DEFAULT_HOME = "lowband"


def home_kind() -> str:
    """``lowband`` or ``synapse``: which server the bridge tests run against."""
    kind = os.environ.get("LOWBAND_AS_HOMESERVER", DEFAULT_HOME)
    assert kind in ("lowband", "synapse"), f"LOWBAND_AS_HOMESERVER={kind!r}: lowband or synapse"
    return kind


@dataclass
class Home:
    """A running homeserver: where to reach it, its server name and its log."""

    kind: str
    url: str
    server_name: str
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log (for a failing test's message)."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def api(self, method: str, path: str, body: Any = None, token: str | None = None,
            timeout: float = 30.0) -> tuple[int, Any]:  # fmt: skip
        """One blocking client-server request: (status, decoded JSON body)."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw

    def register(self, username: str, password: str = "bridge-test-pw") -> tuple[str, str]:
        """Register ``username`` (m.login.dummy); (user_id, access_token)."""
        status, body = self.api("POST", "/_matrix/client/v3/register",
                                {"username": username, "password": password, "auth": {"type": "m.login.dummy"}})  # fmt: skip
        assert status == 200, body
        return body["user_id"], body["access_token"]


#: Many requests in a few seconds from one user and one address.
_LOWBAND_CONFIG = """
[rate_limits]
enabled = false

[appservices]
config_files = {files}
"""


@contextlib.contextmanager
def start_home(kind: str, workdir: Path, registrations: list[Path]) -> Iterator[Home]:
    """The homeserver ``kind`` with ``registrations`` loaded, stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "synapse":
        from lowband.sim.synapse import SynapsePeer

        peer = SynapsePeer(workdir / "synapse", tls=False, extra={
            "app_service_config_files": [str(path) for path in registrations],
            # heisenbridge sets presence for its puppets; the default limit would slow it down
            "rc_presence": {"per_user": {"per_second": 100_000, "burst_count": 100_000}},
        })  # fmt: skip
        try:
            peer.start()
            yield Home("synapse", peer.url, peer.server_name, peer.workdir / "homeserver.log")
        finally:
            peer.stop()
        return
    from harness import GatewayProcess

    gateway = GatewayProcess(
        workdir / "data", config=_LOWBAND_CONFIG.format(files=json.dumps([str(p) for p in registrations]))
    )
    try:
        gateway.start()
        yield Home("lowband", gateway.url, gateway.server_name, gateway.log_path)
    finally:
        gateway.stop()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate()`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(interval)
