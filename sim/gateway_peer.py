"""A gateway link core on a serial port, without the homeserver.

:class:`GatewayPeer` runs the real :class:`~lowband.gateway.link.gateway_core.GatewayLink`
in a thread on one end of a serial line (a pty from
:mod:`lowband.sim.pty_link`): it answers handshakes, acknowledges
uplinks, records every delivered message (decoded with the device's
context table) and sends queued commands — all a device needs to talk to,
when a test or a benchmark wants the device's side and not the rooms. The
full gateway (``lowband serve``) does the same plus the Matrix side.

Actions are carried out in order as the runtime does, except that
``Persist`` is not kept: a peer lives for one test or benchmark run. A
delivered message counts as stored once recorded, and only then is it
acknowledged (:meth:`GatewayLink.delivered`), as in the runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowband.codecs import compact
from lowband.codecs.context import parse_context
from lowband.codecs.link_frame import SerialFramer, serial_encode
from lowband.gateway.devices.registry import DEFAULT_CHANNELS
from lowband.gateway.link import gateway_core as core
from lowband.gateway.link.handshake import generate_keypair, public_from_private

from .pty_link import set_raw

__all__ = ["Delivered", "GatewayPeer", "new_device_config"]


def new_device_config(path: Path | None, name: str, *, address: int, room_id: str, link: str,
                      seed: bytes | None = None) -> tuple[dict[str, Any], bytes]:  # fmt: skip
    """A device config with fresh keys on both sides, for ``@dev.NAME:localhost`` in one room, written to ``path``.

    ``seed`` derives both key pairs from it instead (a simulated run that
    must be the same every time); ``path`` None writes no file. Returns
    (the config, the gateway's private key): what :class:`GatewayPeer` takes.
    """
    if seed is None:
        gw_private, gw_public = generate_keypair()
        dev_private, dev_public = generate_keypair()
    else:
        gw_private = hashlib.sha256(b"lowband sim gateway key " + seed).digest()
        dev_private = hashlib.sha256(b"lowband sim device key " + seed).digest()
        gw_public, dev_public = public_from_private(gw_private), public_from_private(dev_private)
    user_id = f"@dev.{name}:localhost"
    config = {
        "format": "lowband-device", "version": 1, "name": name, "user_id": user_id, "address": address,
        "device_private": dev_private.hex(), "device_public": dev_public.hex(), "gateway_public": gw_public.hex(),
        "link": link,
        "context": {"format": "lowband-context", "version": 1, "rooms": [room_id], "senders": [user_id],
                    "event_types": ["m.room.message"], "keys": ["content", "msgtype", "body"],
                    "channels": DEFAULT_CHANNELS},
    }  # fmt: skip
    if path is not None:
        path.write_text(json.dumps(config))
    return config, gw_private


@dataclass(frozen=True)
class Delivered:
    """A whole message from the device: its compact form and when it arrived."""

    message_id: str
    form: compact.CompactForm
    at: float


class GatewayPeer:
    """A GatewayLink on ``path`` for the device of ``config`` (a device config dict)."""

    def __init__(self, config: dict[str, Any], path: str, gateway_private: bytes, *, mtu: int = 253) -> None:
        self.config = config
        self.path = path
        self.address = int(config["address"])
        self.context = parse_context(config["context"])
        self.core = core.GatewayLink(gateway_private, mtu=mtu)
        self.core.add_device(core.DeviceEntry(self.address, config["name"], bytes.fromhex(config["device_public"])))
        self.delivered: list[Delivered] = []
        self._framer = SerialFramer()
        self._lock = threading.Lock()
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()

    def start(self) -> GatewayPeer:
        """Open the port and serve it in a thread."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        set_raw(self._fd)
        self._thread = threading.Thread(target=self._run, name="gateway-peer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close the port; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            os.write(self._wake_w, b"x")
            thread.join(5)
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._wake_r = self._wake_w = -1

    def __enter__(self) -> GatewayPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self, text: str, room: int = 0) -> None:
        """Queue a text command for the device's next uplink."""
        payload = compact.encode_form(compact.CompactForm(kind=compact.KIND_TEXT, room=room, body=text), self.context)
        with self._lock:
            self.core.queue_command(self.address, payload)  # what it returns (drops of older commands) is not kept

    def texts(self) -> list[str]:
        """Bodies of the text messages delivered so far."""
        with self._lock:
            return [d.form.body for d in self.delivered if d.form.kind == compact.KIND_TEXT]

    def readings(self) -> list[list[tuple[int, int]]]:
        """The (channel, mantissa) values of the telemetry delivered so far."""
        with self._lock:
            return [list(d.form.values) for d in self.delivered if d.form.kind == compact.KIND_TELEMETRY]

    def wait(self, predicate: Any, timeout: float) -> bool:
        """Poll ``predicate(self)`` until it holds (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return bool(predicate(self))

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._fd, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(1.0):
                    if key.fd == self._wake_r:
                        continue
                    try:
                        data = os.read(self._fd, 4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        time.sleep(0.05)  # the line went away; keep the thread until stop()
                        continue
                    self._feed(data)
        finally:
            sel.close()

    def _feed(self, data: bytes) -> None:
        now = time.monotonic()
        for frame in self._framer.feed(data):
            with self._lock:
                actions = self.core.receive(frame, now)
            self._carry_out(actions, now)

    def _carry_out(self, actions: list[Any], now: float) -> None:
        for action in actions:
            if isinstance(action, core.Transmit):
                self._write(serial_encode(action.frame))
            elif isinstance(action, core.Deliver):
                # Recording it is this peer's "commit": only then is the device acknowledged, as in the runtime.
                form = compact.decode_form(action.payload, self.context)
                with self._lock:
                    self.delivered.append(Delivered(action.message_id, form, now))
                    answer = self.core.delivered(action.token, now)
                self._carry_out(answer, now)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[written:]
