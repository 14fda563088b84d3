"""``lowband demo``: a gateway with one emulated board, ready for any Matrix client.

It runs, all on this machine and on embedded defaults:

* the gateway (SQLite in ``--data-dir``, HTTP on ``--http``, registration open);
* a 100 bps serial line emulated between two ptys (:mod:`lowband.sim.pty_link`);
* the real device firmware on the MicroPython unix port (``firmware/``,
  compiled with mpy-cross, ``-X heapsize=64k``) as board ``board1``, sending
  a reading every ``--interval`` seconds into ``#sensors:localhost``.

A user ``demo`` (password ``demo``, a server admin) owns the room. In any
Matrix client, log in to the printed URL, join ``#sensors:localhost``, watch
the readings, and type ``!board1 report`` to command the board. The status
page (``/_lowband/status/``, log in as demo) shows the board's health and
plots its readings live; Prometheus metrics are served without a token on
``--metrics`` (loopback only). Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from lowband.gateway.cli.allocator import limit_retention
from lowband.gateway.cli.logs import setup_logging
from lowband.gateway.cli.main import UsageError

ROOM_ALIAS = "sensors"
DEVICE = "board1"


def register(subparsers: Any) -> None:
    """Add ``demo``."""
    demo = subparsers.add_parser(
        "demo",
        help="run the gateway with one emulated board on a 100 bps line (what `make run` does)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--data-dir", default="run/data", metavar="DIR", help="gateway data dir (default run/data)")
    demo.add_argument("--http", default="127.0.0.1:8008", metavar="HOST:PORT", help="client API address")
    demo.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="token-less Prometheus metrics listener, loopback only (default: the HTTP port + 1)",
    )
    demo.add_argument(
        "--coap",
        metavar="HOST:PORT",
        help="the low-bandwidth CoAP API on plain UDP, loopback only (default 127.0.0.1:5683 with the default "
        "--http, else the HTTP port + 2; 'off' for none)",
    )
    demo.add_argument("--bps", type=int, default=100, help="emulated line rate in bit/s (default 100)")
    demo.add_argument("--interval", type=int, default=30, help="seconds between readings (default 30)")
    demo.add_argument("--device", choices=("micropython", "python"), default="micropython",
                      help="the board: the real firmware on the MicroPython unix port, or the CPython reference device")  # fmt: skip
    demo.set_defaults(handler=run_demo)


def _coap_bind(value: str | None, http_port: int) -> str:
    """The demo's plain CoAP listener: on loopback only (access tokens cross plain UDP in clear)."""
    from lowband.gateway.config import ConfigError, parse_listen

    if value is None:
        return f"127.0.0.1:{5683 if http_port == 8008 else http_port + 2}"
    host, port = parse_listen(value)
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(f"--coap {value}: the demo serves plain CoAP on a loopback address only")
    return f"{host}:{port}"


def _coap_line(config: Any) -> str:
    section = config.components.get("coap")
    if not section:
        return ""
    return (
        f"  CoAP (MSC3079, docs/coap.md): lowband coap --url coap://{section['bind']} --user demo --password demo "
        f"GET 7 --query timeout=0\n"
    )


def run_demo(args: argparse.Namespace) -> int:
    """Handler of ``demo``."""
    from lowband.gateway.config import ConfigError, load_config, metrics_config, parse_listen

    setup_logging(logging.INFO)
    try:
        host, port = parse_listen(args.http)
        metrics = metrics_config(args.metrics or f"127.0.0.1:{port + 1}")
        components = {"coap": {"bind": _coap_bind(args.coap, port)}} if args.coap != "off" else {}
        config = load_config(None, data_dir=args.data_dir, server_name="localhost", http_host=host, http_port=port,
                             registration_enabled=True, metrics=metrics, components=components)  # fmt: skip
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    logging.getLogger("lowband").debug("allocator: %s", limit_retention())  # before the first thread starts
    try:
        asyncio.run(_demo(config, args))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise UsageError(str(exc)) from None
    return 0


async def _ensure_room(services: Any) -> str:
    from lowband.gateway.homeserver.accounts import hash_password
    from lowband.gateway.store.interfaces import UserExists

    owner = "@demo:localhost"
    try:
        await services.store.create_user(owner, hash_password("demo"), True, int(time.time() * 1000))
    except UserExists:  # a data dir from an earlier demo: demo becomes an admin there too (the status page needs one)
        await services.store.set_admin(owner, True)
    alias = f"#{ROOM_ALIAS}:localhost"
    found = services.store.get_alias(alias)
    if found is not None:
        return str(found[0])
    return str(await services.rooms.create_room(owner, {"preset": "public_chat", "room_alias_name": ROOM_ALIAS,
                                                        "name": "Sensors", "topic": "Readings from board1"}))  # fmt: skip


def _provision(data_dir: Path, port_link: Path, bps: int) -> Path:
    from lowband.gateway.cli.device import _open, run_add
    from lowband.gateway.devices.registry import RegistryError

    config_path = data_dir / "devices" / f"{DEVICE}.json"
    link = f"serial:{port_link}?bps={bps}"
    store, registry, _ = _open(str(data_dir))
    try:
        registry.device(DEVICE)
        exists = config_path.exists()
    except RegistryError:
        exists = False
    finally:
        store.close()
    if not exists or json.loads(config_path.read_text()).get("link") != link:
        add = argparse.Namespace(name=DEVICE, room=[f"#{ROOM_ALIAS}:localhost"], link=link, channel=None,
                                 data_dir=str(data_dir), out=None, rekey=exists)  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            run_add(add)
    return config_path


async def _demo(config: Any, args: argparse.Namespace) -> None:
    from lowband.gateway.app import run_gateway
    from lowband.sim.device_core import rto_for_bps
    from lowband.sim.pty_link import PtyLink

    stop = asyncio.Event()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    holder: dict[str, Any] = {}
    gateway = asyncio.create_task(run_gateway(config, started, stop, on_ready=lambda s: holder.update(services=s)))
    done, _ = await asyncio.wait({gateway, asyncio.create_task(started.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if gateway in done:
        gateway.result()  # raises why it could not start
        return
    room_id = await _ensure_room(holder["services"])
    data_dir = Path(config.data_dir)
    port_link = data_dir / f"tty-{DEVICE}"
    line = PtyLink(bps=args.bps, seed=int(time.time())).start()
    device_proc: subprocess.Popen[str] | None = None
    peer: Any = None
    try:
        with contextlib.suppress(FileNotFoundError):
            port_link.unlink()
        port_link.symlink_to(line.path_a)  # the gateway's port; it reopens it when it changes
        config_path = await asyncio.to_thread(_provision, data_dir, port_link, args.bps)
        device_proc, peer = await _start_device(args, config_path, line.path_b, rto_for_bps(args.bps))
        url = f"http://{config.http_host}:{config.http_port}"
        metrics_host, metrics_port = config.metrics.listen
        print(
            f"\nLowband demo running.\n"
            f"  Matrix client: {url}  (user demo, password demo; or register your own)\n"
            f"  Status page: {url}/_lowband/status/  (log in as demo, password demo: a server admin)\n"
            f"  Metrics: http://{metrics_host}:{metrics_port}/metrics  (Prometheus, no token, this machine only)\n"
            f"{_coap_line(config)}"
            f"  Room: #{ROOM_ALIAS}:localhost{f'  ({room_id})' if room_id else ''} — board {DEVICE} posts a reading "
            f"every {args.interval} s over a {args.bps} bps emulated serial line ({args.device} firmware).\n"
            f"  Command the board: type  !{DEVICE} report  in the room (it answers at its next uplink).\n"
            f"  Quick look without a client: curl -s '{url}/_matrix/client/v3/directory/room/%23{ROOM_ALIAS}%3Alocalhost'\n"
            f"  Ctrl-C stops the gateway, the line and the board.\n",
            flush=True,
        )
        await stop.wait()
    finally:
        if peer is not None:
            await peer.stop()
        if device_proc is not None and device_proc.poll() is None:
            device_proc.terminate()
            try:
                device_proc.wait(10)
            except subprocess.TimeoutExpired:
                device_proc.kill()
        line.stop()
        stop.set()
        await gateway


async def _start_device(args: argparse.Namespace, config_path: Path, port: str, rto: float) -> tuple[Any, Any]:
    if args.device == "python":
        from lowband.sim.device_peer import ScriptedDevice

        peer = ScriptedDevice(config_path, port, rto=rto)
        await peer.start()

        async def readings() -> None:
            i = 0
            while True:
                peer.publish_reading([(0, 215 + i % 20), (1, 40), (2, 370)])
                i += 1
                await asyncio.sleep(args.interval)

        asyncio.create_task(readings())
        return None, peer
    from lowband.sim.firmware import FirmwareError, build_mpy, device_command, device_env

    lib = Path(tempfile.mkdtemp(prefix="lowband-demo-mpy-"))
    try:
        await asyncio.to_thread(build_mpy, lib)
        command = device_command(config_path, port, "--interval", str(args.interval),
                                 "--state", str(config_path.with_suffix(".state")))  # fmt: skip
    except FirmwareError as exc:
        raise UsageError(f"{exc}; run with --device python to use the CPython reference device") from None
    log_path = config_path.with_suffix(".log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, env=device_env(lib), stdout=log, stderr=subprocess.STDOUT, text=True)
    print(f"board {DEVICE}: MicroPython unix port, pid {proc.pid}, log {log_path}", flush=True)
    return proc, None


__all__ = ["register", "run_demo"]
