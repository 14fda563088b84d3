"""Assembles a running gateway from its configuration.

``open_store`` is the one place that names the concrete store (SQLite);
``open_services`` builds the store, signing key and services for a data dir;
``serve`` runs the HTTP API until SIGTERM or SIGINT, then stops cleanly
(stops accepting, finishes queued writes, closes the database).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import re
import secrets
import signal
import socket
import sqlite3
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from lowband.gateway.aio import cancel_and_wait
from lowband.gateway.api.http.app import make_app
from lowband.gateway.api.http.base import READER_WORKER
from lowband.gateway.api.http.metrics import make_metrics_app, metrics_of
from lowband.gateway.api.http.status import start_snapshots
from lowband.gateway.api.http.workers import FEED_SOURCE, ReaderWorker
from lowband.gateway.appservices.registration import APPSERVICES, AppServices, load_appservices
from lowband.gateway.ble import registry as ble_registry
from lowband.gateway.bridges.mqtt import config as mqtt_config
from lowband.gateway.config import Config, ConfigError
from lowband.gateway.devices import registry as devices_registry
from lowband.gateway.homeserver.accounts import Reservation, ReservedNamespaces
from lowband.gateway.homeserver.notifications import CountsChanged, unread_counts
from lowband.gateway.homeserver.notifier import Notifier
from lowband.gateway.homeserver.presence import flush as flush_presence
from lowband.gateway.homeserver.presence import presence_loop
from lowband.gateway.homeserver.ratelimit import LoginThrottle
from lowband.gateway.homeserver.rooms import RoomService
from lowband.gateway.homeserver.services import HTTP_SERVER, Services
from lowband.gateway.homeserver.sync import ErasedInStore, SyncHandler, typing_expiry_loop
from lowband.gateway.homeserver.typing import TypingTracker
from lowband.gateway.homeserver.worker_feed import FeedMirror, FeedSource
from lowband.gateway.matrix.signing import SigningKey
from lowband.gateway.store.interfaces import Store
from lowband.gateway.store.sqlite.migrations import SchemaTooNew
from lowband.gateway.store.sqlite.store import SQLiteStore

log = logging.getLogger("lowband")

#: A component's entry: ``async start(services)`` returns an ``async stop()``
#: (or None when the config does not enable it) and raises ConfigError for a
#: bad config section.
Component = Callable[[Services], Awaitable[Callable[[], Awaitable[None]] | None]]


class Registered:
    """A component known by name whose module is imported only when the config enables it.

    ``entry`` is ``"package.module:function"``, a :data:`Component`;
    ``enabled(config)`` must be cheap and import nothing heavy. A disabled
    component costs nothing: neither its module nor its dependencies (paho,
    noise, cryptography, bleak, aiocoap …) are imported. Calling a
    ``Registered`` is calling its entry (None when disabled), so it is itself
    a :data:`Component`; its ``__name__`` is the entry function's.
    """

    def __init__(self, name: str, entry: str, enabled: Callable[[Config], bool]) -> None:
        self.name = name
        self.entry = entry
        self.enabled = enabled
        self.__name__ = entry.rpartition(":")[2]

    def __repr__(self) -> str:
        return f"Registered({self.name!r}, {self.entry!r})"

    def load(self) -> Component:
        """Import the entry's module (and so its dependencies) and return the entry function."""
        module, _, function = self.entry.partition(":")
        loaded: Component = getattr(importlib.import_module(module), function)
        return loaded

    async def __call__(self, services: Services) -> Callable[[], Awaitable[None]] | None:
        if not self.enabled(services.config):
            return None
        return await self.load()(services)


def _always(config: Config) -> bool:
    return True


def _has_section(name: str) -> Callable[[Config], bool]:
    def enabled(config: Config) -> bool:
        return name in config.components

    return enabled


#: Components started after the HTTP API, in order. The link component always
#: starts, but it is a light watcher that imports the link runtime (noise,
#: cryptography) only once a device is provisioned (``link/component.py``);
#: the MQTT bridge (paho) is imported only with an ``[mqtt]`` section.
COMPONENTS: list[Component] = [
    # push rules judged on every new event, unread counts in /sync, delivery to push gateways (docs/client-api.md)
    Registered("push", "lowband.gateway.homeserver.notifications:start_push", _always),
    # MSC1763 m.room.retention: expired events hidden from every read and purged by a job (docs/retention.md)
    Registered("retention", "lowband.gateway.homeserver.retention_job:start_retention",
               lambda config: config.retention.enabled),
    Registered("federation", "lowband.gateway.federation.component:start_federation",
               lambda config: config.federation.enabled),
    Registered("links", "lowband.gateway.link.component:start_links", _always),
    Registered("mqtt", "lowband.gateway.bridges.mqtt.bridge:start_mqtt", _has_section("mqtt")),
    Registered("appservices", "lowband.gateway.appservices.component:start_appservices", _has_section("appservices")),
    # the low-bandwidth client API, CoAP+CBOR (MSC3079) with compact mode and Noise sessions (docs/coap.md): `[coap]`
    Registered("coap", "lowband.gateway.coap.component:start_coap", _has_section("coap")),
    # BLE sensors (bleak and the parser libraries are imported only here): with `[ble] enabled = true`, or once
    # `lowband ble add` has made the sensors file (the gateway picks up the first one at its next start).
    Registered("ble", "lowband.gateway.ble.component:start_ble",
               lambda config: config.ble.enabled or ble_registry.has_sensors(config.data_dir)),
]


def connect_ble_discovery(services: Services) -> None:
    """Home Assistant discovery of BLE sensors: the MQTT bridge's ``BleDiscovery`` observes the BLE component.

    BLE and the bridges are sibling layers that do not import each other; the
    app joins them here when both run (``[ble]`` or sensors, and ``[mqtt]``).
    """
    ble, bridge = services.components.get("ble"), services.components.get("mqtt")
    if ble is None or bridge is None:
        return
    from lowband.gateway.bridges.mqtt.ble_discovery import BleDiscovery

    ble.add_observer(BleDiscovery(bridge))


def claim_data_dir(config: Config) -> None:
    """Create the data dir for this server name, or refuse one made for another name.

    A data dir keeps the server name it was first started with (its events,
    users and keys carry it); ConfigError otherwise.
    """
    marker = config.data_dir / "server_name"
    if marker.exists():
        recorded = marker.read_text().strip()
        if recorded != config.server_name:
            raise ConfigError(f"data dir {config.data_dir} belongs to server {recorded!r}, not {config.server_name!r}")
        if config.data_dir.stat().st_mode & 0o077:  # made before data dirs were private
            config.data_dir.chmod(0o700)
        return
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.data_dir.chmod(0o700)
    marker.write_text(config.server_name + "\n")


#: Test hook: with this set to a ``postgresql://`` URL, every store without a URL of its own opens in that
#: database, in a schema of its own per data dir (how the suite runs on PostgreSQL: docs/storage.md).
TEST_DATABASE_ENV = "LOWBAND_TEST_DATABASE_URL"
#: the file in a data dir that names its PostgreSQL database, so tools given only the data dir find the store
DATABASE_MARKER = "database_url"


def open_store(db_path: Path, url: str | None = None) -> Store:
    """The gateway's store, created on first use; close it with ``close()``. See :func:`_open_store`; a
    database written by a newer Lowband is a ConfigError too (schema migrations this one does not know)."""
    try:
        return _open_store(db_path, url)
    except SchemaTooNew as exc:
        raise ConfigError(f"{_store_place(db_path, url)}: {exc}") from None


def _store_place(db_path: Path, url: str | None) -> str:
    place = postgres_place(db_path) if url is None else None
    url = url or (place[0] if place else None)
    return _safe_url(url) if url else str(db_path)


def _open_store(db_path: Path, url: str | None = None) -> Store:
    """The gateway's store, created on first use.

    ``url`` (``[database] url``) names a PostgreSQL database; without it, the one the data dir (``db_path``'s
    folder) was first served with, else the SQLite file ``db_path``. A data dir served on PostgreSQL keeps
    the URL in a private file, so command-line tools given only ``--data-dir`` open the same store; a data
    dir never moves between databases silently (``lowband db migrate`` does it). ConfigError when the
    database cannot be reached or the URL contradicts the one recorded.

    Command-line tools open it too, whether the gateway runs or not: they
    write users and devices, never rooms (see ``store/sqlite/devices.py``).
    """
    marker = db_path.parent / DATABASE_MARKER
    recorded = marker.read_text().strip() if marker.exists() else None
    if url is not None and recorded is not None and url != recorded:
        raise ConfigError(f"data dir {db_path.parent} is served from the database in {marker}, not {_safe_url(url)}")
    url = url or recorded
    if url is None:
        test_url = os.environ.get(TEST_DATABASE_ENV)
        if not test_url:
            return SQLiteStore(db_path)
        from lowband.gateway.store.postgres.store import schema_for_path

        return _postgres_store(test_url, schema_for_path(db_path))
    if recorded is None:
        if db_path.exists():
            raise ConfigError(f"data dir {db_path.parent} has a SQLite store ({db_path.name}); move it with"
                              " `lowband db migrate` before serving it from PostgreSQL")  # fmt: skip
        store = _postgres_store(url, None)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(url + "\n")
        return store
    return _postgres_store(url, None)


def open_reader(db_path: Path, timeout_s: float = 5.0) -> Any:
    """A read-only connection to the store of ``db_path``'s data dir, for tools beside a running gateway: a
    :class:`sqlite3.Connection` opened read-only, or the PostgreSQL store's reader (the same ``execute`` with
    SQLite's SQL; sqlite3's errors); None when the data dir has no store yet. The caller closes it."""
    place = postgres_place(db_path)
    if place is None:
        if not db_path.exists():
            return None
        return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=timeout_s)
    from lowband.gateway.store.postgres.database import open_reader as open_pg_reader

    url, libpq, schema = place
    try:
        return open_pg_reader(libpq, schema)
    except Exception as exc:  # psycopg's OperationalError
        raise sqlite3.OperationalError(f"cannot open PostgreSQL database {_safe_url(url)}: {str(exc).strip()}") from None


def postgres_place(db_path: Path) -> tuple[str, str, str] | None:
    """Where the data dir of ``db_path`` keeps its store on PostgreSQL: (its URL, libpq's URL, schema), or None
    for a SQLite store (the URL the data dir records; in a test run, ``LOWBAND_TEST_DATABASE_URL``)."""
    marker = db_path.parent / DATABASE_MARKER
    url = marker.read_text().strip() if marker.exists() else os.environ.get(TEST_DATABASE_ENV)
    if not url:
        return None
    from lowband.gateway.store.postgres.store import schema_for_path, split_url  # psycopg: only for PostgreSQL

    libpq, schema = split_url(url)
    return url, libpq, schema if marker.exists() else schema_for_path(db_path)


def _store_words(store: Store) -> str:
    """What the start-up line says of a PostgreSQL store ("" for SQLite, the default)."""
    pg = getattr(store, "pg", None)
    return f", store in PostgreSQL schema {pg.schema} at {_safe_url(pg.url)}" if pg is not None else ""


def _safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def _postgres_store(url: str, schema: str | None) -> Store:
    from lowband.gateway.store.postgres.store import PostgresStore

    try:
        return PostgresStore(url, schema)
    except ValueError as exc:
        raise ConfigError(f"database.url: {exc}") from None
    except Exception as exc:  # psycopg's OperationalError: the server is down, refuses us, or the database is missing
        if type(exc).__module__.startswith("psycopg"):
            raise ConfigError(f"cannot open PostgreSQL database {_safe_url(url)}: {str(exc).strip()}") from None
        raise


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server-side TLS context for ``--tls-cert``/``--tls-key`` (None: plain HTTP); ConfigError if unusable."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use TLS certificate {config.tls_cert} with key {config.tls_key}: {exc}") from None
    return context


def open_services(config: Config, *, claim_store: bool = True) -> Services:
    """Open (creating on first start) the data dir and build the services.

    Must be called inside a running event loop (the room service uses
    asyncio locks). ``claim_store`` False: a reader worker, beside the
    main process that claimed the store.
    """
    claim_data_dir(config)
    config.media_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if config.media_dir.stat().st_mode & 0o077:
        config.media_dir.chmod(0o700)
    key = SigningKey.load_or_create(config.signing_key_path)
    store = open_store(config.db_path, config.database_url)
    claim = getattr(store, "claim_serving", None)  # PostgreSQL: one gateway process per schema
    if claim is not None and claim_store:
        try:
            claim()
        except ValueError as exc:
            store.close()
            raise ConfigError(str(exc)) from None
    notifier = Notifier()
    typing = TypingTracker()
    rooms = RoomService(store, config.server_name, key, on_new_event=lambda sent: notifier.notify())
    sync = SyncHandler(store, rooms, typing, notifier)
    user_limiter, ip_limiter = Services.rate_limiters(config.rate_limits)
    bridges = load_appservices(config.components.get("appservices"), config.server_name)
    namespaces = reserved_namespaces(config, bridges)
    throttle = LoginThrottle() if config.rate_limits.enabled else None
    services = Services(config, store, rooms, sync, typing, notifier, user_limiter, ip_limiter, namespaces=namespaces,
                        login_throttle=throttle, read_limiter=Services.read_rate_limiter(config.rate_limits))  # fmt: skip
    services.components[APPSERVICES] = bridges
    return services


def reserved_namespaces(config: Config, bridges: AppServices | None = None) -> ReservedNamespaces:
    """The localparts edges keep for themselves under ``config``: ``dev.*``, ``ble_*``, every enabled bridge's, and the
    exclusive user namespaces of the registered application services (read from their files when not given).

    ``/register`` and ``lowband user add`` refuse them; a new bridge adds its
    reservations here.
    """
    if bridges is None:
        bridges = load_appservices(config.components.get("appservices"), config.server_name)
    registered = [Reservation(f"the application service {b.id!r}", user_ids=b.owns_user) for b in bridges.all]
    return ReservedNamespaces([devices_registry.RESERVATION, ble_registry.RESERVATION,
                               *mqtt_config.reservations(config.components),
                               *registered])  # fmt: skip


async def _start_metrics_listener(config: Config, services: Services) -> web.AppRunner | None:
    """The token-less metrics listener ``[metrics] listen`` asks for (None: not asked); OSError naming the address."""
    metrics = metrics_of(services)
    if config.metrics.listen is None or metrics is None:
        return None
    host, port = config.metrics.listen
    runner = web.AppRunner(make_metrics_app(metrics), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot listen for metrics on {host}:{port}: {exc.strerror}") from None
    log.info("metrics at http://%s:%d/metrics (no token: loopback only)", host, port)
    return runner


#: environment variable that hands a reader worker the secret its forwarded requests carry
WORKER_SECRET_ENV = "LOWBAND_WORKER_SECRET"
#: services.components key of the main process's :class:`WorkerPool` (the status summary describes it)
WORKER_POOL = "worker_pool"


class WorkerPool:
    """The reader worker processes of a main gateway process (docs/scaling.md): started with the main
    process's own command line plus ``--worker-of``, restarted a second after one dies, stopped with it.

    A worker's standard input is a pipe from this process: when the main process goes, however it goes, the
    worker reads end-of-file and stops. Its first line on standard output says it listens.
    """

    def __init__(self, count: int, argv: list[str], main_url: str, secret: str) -> None:
        self.count = count
        self.argv = argv
        self.main_url = main_url
        self.secret = secret
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def _spawn(self, number: int, timeout_s: float) -> asyncio.subprocess.Process:
        command = [sys.executable, "-m", "lowband.gateway.cli.main", *self.argv, "--workers", "0",
                   "--worker-of", f"{number}@{self.main_url}"]  # fmt: skip
        env = {**os.environ, WORKER_SECRET_ENV: self.secret}
        process = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.PIPE,
                                                       stdout=asyncio.subprocess.PIPE, env=env)  # fmt: skip
        self.processes[number] = process
        assert process.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                line = await process.stdout.readline()
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            await self._end(process)
            raise ConfigError(f"reader worker {number} did not start (exit status {process.returncode}; its "
                              f"errors are above)")  # fmt: skip
        return process

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start every worker; ConfigError when one does not say it listens within ``timeout_s``."""
        try:
            for number in range(1, self.count + 1):
                process = await self._spawn(number, timeout_s)
                self._tasks.append(asyncio.create_task(self._watch(number, process)))
        except BaseException:
            await self.stop()
            raise
        log.info("%d reader worker%s serving on the same address (docs/scaling.md)", self.count,
                 "" if self.count == 1 else "s")  # fmt: skip

    async def _watch(self, number: int, process: asyncio.subprocess.Process) -> None:
        while True:
            await process.wait()
            if self._stopping:
                return
            log.error("reader worker %d exited with status %s; starting it again in 1 s", number,
                      process.returncode)  # fmt: skip
            await asyncio.sleep(1.0)
            try:
                process = await self._spawn(number, 60.0)
            except ConfigError as exc:
                log.error("%s", exc)
                continue
            self.restarts += 1

    @staticmethod
    async def _end(process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            process.terminate()
            try:
                async with asyncio.timeout(10.0):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()

    def describe(self) -> dict[str, Any]:
        """The status summary's ``workers`` (docs/status.md)."""
        running = sorted(n for n, p in self.processes.items() if p.returncode is None)
        return {"configured": self.count, "running": len(running), "restarts": self.restarts,
                "pids": [self.processes[n].pid for n in running]}  # fmt: skip

    async def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after 10 s) and wait for them."""
        self._stopping = True
        for task in self._tasks:
            await cancel_and_wait(task)
        await asyncio.gather(*(self._end(p) for p in self.processes.values()))


def _is_postgres(services: Services) -> bool:
    return callable(getattr(services.store, "claim_serving", None))  # PostgresStore's


async def run_gateway(
    config: Config,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Services], None] | None = None,
    *,
    workers: int = 0,
    worker_argv: list[str] | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None).

    ``on_ready`` is called with the running services once everything listens. ``workers``: reader worker
    processes to start beside this one (PostgreSQL store only), each run as ``lowband`` with ``worker_argv``
    (this process's arguments) and ``--worker-of``.
    """
    services = open_services(config)
    if workers and not _is_postgres(services):
        services.store.close()
        raise ConfigError("--workers needs the PostgreSQL store (--database postgresql://... or [database] url): "
                          "one process serves a SQLite file (docs/scaling.md)")  # fmt: skip
    secret = secrets.token_urlsafe(24) if workers else None
    if workers:  # what the workers' /sync needs of this process's memory (worker_feed.py)
        services.components[FEED_SOURCE] = FeedSource(services)
    app = make_app(services, workers_secret=secret)
    # auto_decompress off: a compressed body is refused unread (api.http.app.plain_bodies), never inflated.
    # keepalive_timeout is also aiohttp's only bound on a connection whose request headers never complete
    # (its default, an hour, let 200 half-open requests sit there): it closes such a connection, and an
    # idle one, after header_timeout_s. Bodies have their own deadline (api.http.base.body_deadline); after
    # a response to a body not read to its end (413, 408), aiohttp drains it for lingering_time before closing,
    # so a refused slow sender is let go after 2 s rather than aiohttp's 10.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False,
                           keepalive_timeout=config.header_timeout_s, lingering_time=2.0,
                           shutdown_timeout=5.0)  # fmt: skip
    await runner.setup()
    # The CoAP API serves its requests through this same application, in memory (gateway/coap/inproc.py).
    services.components[HTTP_SERVER] = runner.server
    try:
        tls = tls_context(config)
    except ConfigError:
        await runner.cleanup()
        services.store.close()
        raise
    # with workers every process listens on the address (SO_REUSEPORT): the kernel spreads the connections
    site = web.TCPSite(runner, config.http_host, config.http_port, reuse_address=True, ssl_context=tls,
                       reuse_port=bool(workers) or None)  # fmt: skip
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        services.store.close()
        raise OSError(f"cannot listen on {config.http_host}:{config.http_port}: {exc.strerror}") from None
    bound_host, bound_port = runner.addresses[0][:2]  # port 0 in the config: the port the kernel chose
    pool: WorkerPool | None = None
    try:
        metrics_runner = await _start_metrics_listener(config, services)
        if workers and secret is not None:
            # the workers forward what they do not serve to this process's own loopback listener
            inner = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            inner.bind(("127.0.0.1", 0))
            await web.SockSite(runner, inner).start()
            where = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
            pool = WorkerPool(workers, [*(worker_argv or []), "--http", where],
                              f"http://127.0.0.1:{inner.getsockname()[1]}", secret)  # fmt: skip
            await pool.start()
            services.components[WORKER_POOL] = pool
    except (OSError, ConfigError):
        await runner.cleanup()
        services.store.close()
        raise
    expiry = asyncio.create_task(typing_expiry_loop(services.typing, services.notifier))
    if services.sync.presence is not None:  # online -> unavailable -> offline on idle (presence.py)
        presence_task = asyncio.create_task(presence_loop(services.sync.presence, services.notifier,
                                                          services.store.presence))  # fmt: skip
        expiry.add_done_callback(lambda _: presence_task.cancel())
    stoppers: list[Callable[[], Awaitable[None]]] = []
    if metrics_runner is not None:
        stoppers.append(metrics_runner.cleanup)
    if pool is not None:
        stoppers.append(pool.stop)
    try:
        for component in COMPONENTS:
            stopper = await component(services)
            if stopper is not None:
                stoppers.append(stopper)
        connect_ble_discovery(services)
        # DATA_DIR/status.json every 5 s, and once more when stopping (first of the stoppers): `lowband status`
        stoppers.append(await start_snapshots(services))
    except BaseException:
        for stopper in reversed(stoppers):
            await stopper()
        expiry.cancel()
        await runner.cleanup()
        services.store.close()
        raise
    stop_event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if stop is None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_event.set)
    # What start-up built lives as long as the process: keep it out of every later garbage collection.
    # Under load most objects die young: collecting less often promotes fewer of them (10-20 % more
    # events/s on the MQTT bench, a few MB more garbage at most).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    log.info(
        "lowband gateway %s listening on %s://%s:%d (data in %s, registration %s)%s",
        config.server_name, "https" if tls else "http", config.http_host, bound_port, config.data_dir,
        "open" if config.registration_enabled else "closed", _store_words(services.store),
    )  # fmt: skip
    if on_ready is not None:
        on_ready(services)
    if started is not None:
        started.set()
    try:
        await stop_event.wait()
    finally:
        log.info("lowband gateway stopping")
        for stopper in reversed(stoppers):
            try:
                await stopper()
            except Exception:
                log.exception("a component failed to stop cleanly")
        await cancel_and_wait(expiry)
        services.notifier.close()  # parked /sync requests answer now: runner.cleanup() waits for every handler
        await runner.cleanup()
        if services.sync.presence is not None:  # the last changes, before the store closes (presence.py)
            flush_presence(services.sync.presence, services.store.presence)
        services.store.close()
        if stop is None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def run_worker(config: Config, number: int, main_url: str, secret: str) -> None:
    """Serve as reader worker ``number`` of the main process at ``main_url`` (:class:`WorkerPool`, docs/scaling.md)
    until SIGTERM, SIGINT, end-of-file on standard input (the main process went) or the end of its feed."""
    services = open_services(config, claim_store=False)
    if not _is_postgres(services):
        services.store.close()
        raise ConfigError("a reader worker needs the PostgreSQL store")
    store: Any = services.store
    store.cache_tokens = False  # the main process ends tokens (heads and state events: workers.py)
    worker = ReaderWorker(number, main_url, secret, services)
    await worker.start()
    services.components[READER_WORKER] = worker
    if config.retention.enabled:  # the read-time cutoff only: the main process purges
        from lowband.gateway.homeserver.retention_job import Retention

        services.sync.retention = Retention(services).cutoff
    # erasures are the main process's: each sender asked about is looked up, once per request (sync.py)
    services.sync.erased = ErasedInStore(store.account_lifecycle.is_erased)
    stop_event = asyncio.Event()
    # /sync: positions, typing, presence and wake-ups from the main process's feed (worker_feed.py)
    mirror = FeedMirror(services)
    try:
        await worker.follow_feed(mirror, stop_event.set)
    except RuntimeError as exc:
        await worker.close()
        services.store.close()
        raise ConfigError(f"reader worker {number}: {exc}") from None
    services.sync.settle, services.sync.catch_up, services.sync.before_round = (mirror.settle, mirror.catch_up,
                                                                                mirror.before_round)  # fmt: skip
    # unread counts from the store (the main process always judges push rules: the push component): a worker
    # serves only positions judged with their notifications committed (FeedMirror.settle)
    services.sync.unread = lambda user_id, room_id, per_thread: unread_counts(store, user_id, room_id, None,
                                                                              per_thread)  # fmt: skip
    services.sync.unread_changed = CountsChanged(store)
    loop = asyncio.get_running_loop()
    runner = web.AppRunner(make_app(services), access_log=None, handle_signals=False, auto_decompress=False,
                           keepalive_timeout=config.header_timeout_s, lingering_time=2.0,
                           shutdown_timeout=5.0)  # fmt: skip
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.http_host, config.http_port, reuse_address=True, reuse_port=True,
                           ssl_context=tls_context(config))  # fmt: skip
        await site.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_event.set)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        gone = asyncio.create_task(reader.read())  # the main process's end of the pipe closes: EOF
        gone.add_done_callback(lambda _: stop_event.set())
        log.info("reader worker %d of %s listening on %s:%d", number, main_url, config.http_host, config.http_port)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nobody reads the pipe any more: later output to stderr
        await stop_event.wait()
        gone.cancel()
    finally:
        services.notifier.close()  # parked /sync requests answer now: runner.cleanup() waits for every handler
        await runner.cleanup()
        await worker.close()
        services.store.close()
