"""A scripted device: the CPython reference device on a serial port.

It reads a device config file written by ``lowband device add``, opens the
port (a pty from :mod:`lowband.sim.pty_link` in tests, a real port on a
bench), runs :class:`~lowband.sim.device_core.DeviceLink`, and

* publishes readings given to :meth:`ScriptedDevice.publish_reading`;
* answers every command it receives with a text message ``ok: <command>``
  (and records it), so a test can see the round trip from a Matrix room to
  the device and back.

The MicroPython firmware does the same on a board; this peer stands in for
it where the firmware is not needed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from lowband.codecs import compact
from lowband.codecs.context import parse_context
from lowband.codecs.link_frame import SerialFramer, serial_encode
from lowband.gateway.aio import cancel_and_wait, wait_until
from lowband.sim.device_core import DeviceLink


class ScriptedDevice:
    """A device process in the test's event loop."""

    def __init__(self, config: dict[str, Any] | str | Path, port: str, *, rto: float = 6.0, reply: bool = True) -> None:
        doc: dict[str, Any] = config if isinstance(config, dict) else json.loads(Path(config).read_text())
        self.config = doc
        self.port = port
        self.context = parse_context(doc["context"])
        self.link = DeviceLink(
            doc["address"], bytes.fromhex(doc["device_private"]), bytes.fromhex(doc["gateway_public"]), rto=rto
        )
        self.reply = reply
        self.commands: list[str] = []
        self.events: list[Any] = []
        self.sent_frames = 0
        self._framer = SerialFramer()
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def publish_reading(self, values: list[tuple[int, int]], age: int = 0) -> bytes:
        """Queue a telemetry reading ((channel, mantissa) pairs); returns its compact bytes."""
        payload = compact.encode_form(compact.CompactForm(kind=compact.KIND_TELEMETRY, age=age, values=values), self.context)
        self.link.publish(payload)
        self._wake.set()
        return payload

    def publish_text(self, text: str) -> None:
        """Queue a text message from the device."""
        self.link.publish(compact.encode_form(compact.CompactForm(kind=compact.KIND_TEXT, body=text), self.context))
        self._wake.set()

    async def start(self) -> None:
        """Open the port and run until :meth:`stop`."""
        import serial

        port = serial.Serial(self.port, baudrate=9600, timeout=0)
        self._port = port
        self._fd = port.fileno()
        asyncio.get_running_loop().add_reader(self._fd, self._readable)
        self._task = asyncio.create_task(self._run(self._fd))

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096) if self._fd is not None else b""
        except OSError:
            data = b""
        now = time.monotonic()
        for frame in self._framer.feed(data):
            for event in self.link.receive(frame, now):
                self.events.append(event)
                if event.kind == "command":
                    form = compact.decode_form(event.payload, self.context)
                    self.commands.append(form.body)
                    if self.reply:
                        self.publish_text(f"ok: {form.body}")
        self._wake.set()

    async def _run(self, fd: int) -> None:
        while True:
            for frame in self.link.poll(time.monotonic()):
                os.write(fd, serial_encode(frame))
                self.sent_frames += 1
            await wait_until(self._wake, self.link.next_deadline())  # the link's clock is time.monotonic()

    async def stop(self) -> None:
        """Stop and close the port."""
        await cancel_and_wait(self._task)
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._port.close()
            self._fd = None
