"""Running real gateways in tests: as a subprocess or inside the test's loop.

Every gateway a test starts is stopped by it (context managers), every wait
has a timeout, and only 127.0.0.1 is used (or network namespaces a test made
and removes: ``GatewayProcess(host=..., wrap=["ip", "netns", "exec", NS])``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

# the tests import these from here
from lowband.sim.ports import free_port as free_port
from lowband.sim.ports import free_udp_port as free_udp_port

LOWBAND = str(Path(sys.executable).parent / "lowband")


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Decorator: run an async test (pytest fixtures passed on) in a loop of its own, 120 s at most."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 120))

    return run


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` on the running loop until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


class GatewayProcess:
    """``lowband serve`` in a subprocess; ``start``/``stop``/``kill`` for restart tests."""

    def __init__(self, data_dir: Path, server_name: str = "localhost", registration: bool = True,
                 config: str | None = None, tls: tuple[Path, Path] | None = None,
                 extra_args: list[str] | None = None, port: int | None = None, host: str = "127.0.0.1",
                 wrap: list[str] | None = None, listen: str | None = None) -> None:  # fmt: skip
        """``host``: the address to reach it at, and to listen on unless ``listen`` says otherwise (``0.0.0.0``);
        ``wrap``: a command prefix (``ip netns exec NS``)."""
        self.data_dir = data_dir
        self.host = host
        self.listen = listen or host
        self.wrap = list(wrap or [])
        self.port = port or free_port()
        #: "{port}" in the server name becomes the port (federating gateways are named 127.0.0.1:PORT)
        self.server_name = server_name.replace("{port}", str(self.port))
        self.registration = registration
        self.config_text = config
        self.tls = tls
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """Base URL of the client-server API (and, with TLS, of the federation API)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        """Start (or restart) the gateway and wait until it answers."""
        args = [*self.wrap, LOWBAND, "serve", "--data-dir", str(self.data_dir), "--server-name", self.server_name,
                "--http", f"{self.listen}:{self.port}"]  # fmt: skip
        if self.registration:
            args.append("--enable-registration")
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        args += self.extra_args
        if self.config_text is not None:
            path = self.data_dir.parent / f"{self.data_dir.name}.toml"
            path.write_text(self.config_text)
            args += ["--config", str(path)]
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-gateway.log"
        ready_lines = self._ready_lines()
        with open(self.log_path, "ab") as log:  # a file, not a pipe nobody reads: a chatty gateway never blocks
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        # The "listening" line is logged once HTTP and every component (links, MQTT) are up.
        deadline = time.monotonic() + timeout
        while self._ready_lines() == ready_lines:
            if self.proc.poll() is not None:
                problem = f"gateway exited with {self.proc.returncode}"
            elif time.monotonic() > deadline:
                problem = f"the gateway did not finish starting within {timeout} s"
            else:
                time.sleep(0.02)
                continue
            raise RuntimeError(f"{problem}; log: {self.log_path.read_text()[-2000:]}")
        return self

    def _ready_lines(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(" listening on http")
        except FileNotFoundError:
            return 0

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit status."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def kill(self) -> None:
        """``kill -9``: no chance to flush anything."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)
            self.proc = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def gateway_process(tmp_path: Path, **kwargs: Any) -> Iterator[GatewayProcess]:
    """A running subprocess gateway with its data in ``tmp_path``."""
    with GatewayProcess(tmp_path / "data", **kwargs) as gateway:
        yield gateway


@contextlib.asynccontextmanager
async def gateway_in_loop(tmp_path: Path, *, on_ready: Callable[[Any], None] | None = None,
                          **config: Any) -> AsyncIterator[str]:  # fmt: skip
    """A gateway running inside the current event loop; yields its base URL.

    ``on_ready`` gets the running gateway's ``Services`` (for tests that look inside or inject faults).
    """
    from lowband.gateway.app import run_gateway
    from lowband.gateway.config import load_config

    port = free_port()
    settings = {"data_dir": tmp_path / "data", "server_name": "localhost", "http_port": port,
                "registration_enabled": True, **config}  # fmt: skip
    started, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_gateway(load_config(None, **settings), started, stop, on_ready))
    waiter = asyncio.create_task(started.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()
    if waiter not in done:
        task.cancel()
        raise TimeoutError("gateway did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def stub_server(app: Any) -> AsyncIterator[int]:
    """An aiohttp ``app`` (a stand-in for another server) on a free loopback port, in the current loop; yields
    the port, and stops it afterwards."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def users_gateway(tmp_path: Path, *names: str, **config: Any) -> AsyncIterator[tuple[list[Client], Any, str]]:
    """A gateway in the current loop (:func:`gateway_in_loop`, ``config`` passed on), one registered
    :class:`Client` per name on one HTTP session; yields (clients, the gateway's ``Services``, its base URL)."""
    import aiohttp

    found: list[Any] = []
    async with gateway_in_loop(tmp_path, on_ready=found.append, **config) as url, aiohttp.ClientSession() as session:
        clients = []
        for name in names:
            client = Client(session, url)
            await client.register(name)
            clients.append(client)
        yield clients, found[0], url


def expect(result: tuple[int, Any], status: int, errcode: str | None = None) -> Any:
    """The body of a (status, body) answer after checking its status (and ``errcode`` when given)."""
    got_status, body = result
    assert got_status == status, body
    if errcode is not None:
        assert body["errcode"] == errcode, body
    return body


class Client:
    """A tiny raw-HTTP Matrix client over aiohttp, for what matrix-nio does not call."""

    def __init__(self, session: Any, base: str, token: str | None = None) -> None:
        self.session = session
        self.base = base
        self.token = token
        self.user_id: str | None = None

    async def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                      headers: dict[str, str] | None = None, token: bool = True,
                      exact_path: bool = False) -> tuple[int, Any]:  # fmt: skip
        """(status, parsed JSON or bytes) of one request; 30 s timeout.

        ``exact_path`` sends the path byte for byte (no re-quoting, no
        dot-segment removal).
        """
        import aiohttp
        import yarl

        all_headers = dict(headers or {})
        if token and self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        url: Any = path if path.startswith("http") else self.base + path
        if exact_path:
            url = yarl.URL(url, encoded=True)
        async with self.session.request(method, url, data=data, headers=all_headers,
                                        timeout=aiohttp.ClientTimeout(total=30)) as response:  # fmt: skip
            payload = await response.read()
            try:
                return response.status, json.loads(payload)
            except ValueError:
                return response.status, payload

    async def register(self, username: str, password: str = "secret-pw") -> str:
        """Register (m.login.dummy) and keep the token; returns the user ID."""
        status, body = await self.request("POST", "/_matrix/client/v3/register", {
            "username": username, "password": password, "auth": {"type": "m.login.dummy"}}, token=False)  # fmt: skip
        assert status == 200, body
        self.token, self.user_id = body["access_token"], body["user_id"]
        return body["user_id"]


def provision_kitchen(data_dir: Path, link_path: str, bps: int) -> Path:
    """``lowband device add kitchen`` into ``#sensors:localhost`` on a serial line; the device config's path."""
    out = subprocess.run(
        [LOWBAND, "device", "add", "kitchen", "--room", "#sensors:localhost", "--link", f"serial:{link_path}?bps={bps}",
         "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return data_dir / "devices" / "kitchen.json"


async def nio_client(base: str, name: str, register: bool = True) -> Any:
    """A matrix-nio client for ``name`` (password ``secret-pw``), registered first or logged in."""
    import nio

    client = nio.AsyncClient(base, name)
    if register:
        response = await client.register(name, "secret-pw")
        assert isinstance(response, nio.RegisterResponse), response
    else:
        response = await client.login("secret-pw")
        assert isinstance(response, nio.LoginResponse), response
    return client
