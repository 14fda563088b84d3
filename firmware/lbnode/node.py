"""The application API: a board becomes a room member.

    from lbnode import Node
    node = Node("device.json", transport)      # the file `lowband device add` wrote
    node.on_command(lambda text: "ok: " + text)  # a reply (str) goes back to the room
    node.publish(temperature=21.5, humidity=40, battery=3.7)
    node.run(sensors=[bme280, battery], interval=300)   # or: await node.arun(...)

Runs on MicroPython (boards and the unix port) and on CPython (tests).

- Channel names and scales come from the context table in the config:
  publish(temperature=21.5) with channel temperature at scale -1 sends
  the mantissa 215. A name the table does not have raises ValueError.
- A command arrives as text (a room message "!NAME text"); the callback
  gets the text and may return a reply, published as a text message to
  the room the command came from. A callback that raises does not stop
  the node: the error is printed and the command counts as handled.
- run() is the blocking loop: read the sensors, publish, pump the link
  until it is idle (everything acknowledged, then a short linger for a
  command behind the acknowledgement), sleep until the next reading.
  While the link is busy (retrying, no gateway) readings keep being taken
  on time and queued (oldest dropped when full); it sleeps only when idle.
- Sleep: "light" uses machine.lightsleep where the port has it, "deep"
  saves the session and calls machine.deepsleep (the board restarts, and
  main.py builds the node again: the session resumes from the store),
  anything else or a port without them (unix) waits with time.sleep_ms.
- arun() is the same with asyncio: the link is pumped by a task, input
  is awaited through asyncio.StreamReader where the transport offers a
  stream, other tasks run meanwhile.
"""

import json
import sys
from binascii import unhexlify

from . import link as _link
from . import wire
from .ticks import sleep_ms, ticks_add, ticks_diff, ticks_ms

try:
    _print_exception = sys.print_exception
except AttributeError:  # CPython
    from traceback import print_exception as _print_exception

_SCRATCH = 96  # one compact message: telemetry for 32 channels, or a short text


def load_config(config):
    """A device config as a dict: given one, or read from a JSON file path."""
    if isinstance(config, dict):
        return config
    with open(config) as f:
        return json.load(f)


def link_bps(config, default=9600):
    """The bit rate in the config's link spec (serial:PATH?bps=N), or default."""
    spec = config.get("link", "")
    at = spec.find("bps=")
    digits = ""
    for ch in spec[at + 4 :] if at >= 0 else "":
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else default


class Node:
    """A device on a link: publish telemetry, take commands.

    config: a dict or the path of the JSON file `lowband device add` wrote.
    transport: frames in and out -- send(frame, n), recv(timeout_ms) ->
    frame or None, rto_ms(), mtu, close(), and optionally linger_ms() and
    pause() (lbnode.stream.StreamTransport over a UART or pty,
    lbnode.lora_radio.RadioTransport). store: an
    lbnode.state store to keep the session across restarts (None: a
    handshake after every start). trace: None, or trace(event, detail) for
    logs and tests. Raises ValueError (or KeyError) for a malformed config.
    """

    def __init__(self, config, transport, store=None, queue_limit=32, trace=None):
        config = load_config(config)
        self.name = config.get("name", "device")
        context = config["context"]
        self.version = context["version"]
        self._names = [c["n"] for c in context["channels"]]
        self._scales = [c.get("scale", 0) for c in context["channels"]]
        self.transport = transport
        self.trace = trace
        self.link = _link.DeviceLink(
            config["address"], unhexlify(config["device_private"]), unhexlify(config["device_public"]),
            unhexlify(config["gateway_public"]), rto_ms=transport.rto_ms(), mtu=transport.mtu,
            queue_limit=queue_limit, queue_bytes=512, store=store,
        )  # fmt: skip
        self._callback = None
        self._buf = bytearray(_SCRATCH)
        self._last_io = ticks_ms()
        # How long to keep listening once idle, for a command right behind an
        # acknowledgement: the transport knows (a radio keeps it short).
        linger = getattr(transport, "linger_ms", None)
        self.linger_ms = linger() if linger is not None else transport.rto_ms() // 3

    # ------------------------------------------------------------ the API

    def publish(self, age=0, **values):
        """Queue one telemetry reading: channel name = value (scaled by the context table).

        age: seconds since the values were measured. Returns how many old
        messages the queue dropped for it. Raises ValueError for an
        unknown channel or no values.
        """
        mask = 0
        mantissas = []
        for name in values:
            if name not in self._names:
                raise ValueError("node: no channel %s in the context table" % name)
        for i in range(len(self._names)):
            value = values.get(self._names[i])
            if value is not None:
                scale = self._scales[i]
                mantissas.append(round(value * 10 ** -scale) if scale <= 0 else round(value / 10**scale))
                mask |= 1 << i
        if not mask:
            raise ValueError("node: nothing to publish")
        n = wire.telemetry_into(self._buf, self.version, age, mask, mantissas)
        return self.link.publish(self._buf, n)

    def say(self, text, room=0):
        """Queue a text message (a reply, a status) to the room with this context index."""
        raw = text.encode() if isinstance(text, str) else text
        buf = self._buf if len(raw) + 16 <= _SCRATCH else bytearray(len(raw) + 16)
        return self.link.publish(buf, wire.text_into(buf, self.version, raw, room))

    def on_command(self, callback):
        """callback(text) is called once per command; a str it returns is sent back as a reply."""
        self._callback = callback

    # ------------------------------------------------------- the link pump

    def _send_due(self):
        while True:
            frame = self.link.poll(ticks_ms())
            if frame is None:
                return
            self.transport.send(frame, len(frame))
            self._last_io = ticks_ms()
            if self.trace is not None:
                self.trace("tx", frame)

    def _on_frame(self, frame):
        link = self.link
        result = link.receive(frame, ticks_ms())
        self._last_io = ticks_ms()
        trace = self.trace
        if trace is not None:
            if result & _link.REFUSED:
                trace("refused", link.reason)
            if result & _link.SESSION:
                trace("session", link.epoch)
            if result & _link.ACKED:
                trace("acked", link.acked)
        if not result & _link.COMMAND:
            return
        try:
            room, body = wire.read_text(link.command, self.version)
        except ValueError as exc:
            if trace is not None:
                trace("refused", "unreadable command: %s" % exc)
            return
        if trace is not None:
            trace("command", body)
        if self._callback is None:
            return
        try:
            reply = self._callback(body)
        except Exception as exc:  # the application's bug must not stop the link
            _print_exception(exc)
            return
        if reply is not None:
            self.say(reply, room)

    def settled(self):
        """Idle, and quiet for linger_ms: no command is coming behind the last acknowledgement."""
        return self.link.idle and ticks_diff(ticks_ms(), self._last_io) >= self.linger_ms

    def service(self, max_ms):
        """Pump the link until it has settled or max_ms passed; True if it settled.

        Each round sends what is due, then waits for input until the link's
        next deadline (or, when idle, until the linger time is over).
        """
        start = ticks_ms()
        while not self.settled():
            now = ticks_ms()
            left = max_ms - ticks_diff(now, start)
            if left <= 0:
                return False
            self._send_due()
            wait = self.link.wait_ms(ticks_ms())
            if wait is None:  # idle: listen until the linger time is over
                wait = self.linger_ms - ticks_diff(now, self._last_io)
            frame = self.transport.recv(max(1, min(wait, left)))
            if frame is not None:
                self._on_frame(frame)
        return True

    # --------------------------------------------------------------- loops

    def sample(self, sensors):
        """Read every sensor (objects with read() or functions, each giving a dict) and publish it."""
        values = {}
        for sensor in sensors:
            values.update((sensor() if callable(sensor) else sensor.read()) or {})
        if values:
            self.publish(**values)
        return values

    def sleep(self, ms, mode="light"):
        """Low-power wait of ms between uplinks (see the module docstring for the modes)."""
        if ms <= 0:
            return
        pause = getattr(self.transport, "pause", None)
        if pause is not None:
            pause()  # a radio stops listening: it would draw mA all through the sleep
        try:
            import machine
        except ImportError:
            machine = None
        if mode == "deep" and hasattr(machine, "deepsleep"):
            self.close()
            machine.deepsleep(ms)  # does not return: the board restarts
        if mode == "light" and hasattr(machine, "lightsleep"):
            machine.lightsleep(ms)
        else:
            sleep_ms(ms)

    def run(self, sensors=(), interval=60, sleep="light", readings=None):
        """Blocking loop: a reading every interval seconds, commands answered, sleep between.

        readings: stop after this many (None: forever), once the link has
        settled after the last one.
        """
        next_at = ticks_ms()
        done = 0
        while readings is None or done < readings:
            self.sample(sensors)
            done += 1
            next_at = ticks_add(next_at, int(interval * 1000))
            left = ticks_diff(next_at, ticks_ms())
            if left > 0 and self.service(left) and (readings is None or done < readings):
                self.sleep(ticks_diff(next_at, ticks_ms()), sleep)
        self.service(1 << 30)

    async def arun(self, sensors=(), interval=60, readings=None):
        """The asyncio form of run(): readings, commands and replies while other tasks run (lbnode/aio.py)."""
        from .aio import arun

        await arun(self, sensors, interval, readings)

    def close(self):
        """Save the session and close the transport."""
        self.link.save()
        self.transport.close()
