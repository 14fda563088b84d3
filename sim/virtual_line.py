"""A slow line on simulated time: a LinkModel between the gateway's link core and a device, with a virtual clock.

At 100 bps a byte takes 0.1 s, a handshake ten seconds and a lossy
exchange minutes. On a virtual clock the same exchange costs only the CPU
time of the cores, and a run is the same on a loaded machine as on an idle
one. Tests of the protocol over a slow line (retransmission, exactly-once
delivery, commands waiting for the next uplink, replays and forgeries,
restarts, cut lines) run here; the pty line (:mod:`lowband.sim.pty_link`)
is for the few that need real processes.

Rules:

* Time is :attr:`Simulation.now`, in seconds from 0. Only :meth:`Simulation.run`
  moves it, from one event to the next: a delivery due on the line
  (:meth:`LinkModel.next_deadline`), a participant's deadline, a
  script's wait. Nothing here reads a wall clock or sleeps.
* Side A of the line is the gateway (:class:`GatewaySide`: the gateway's
  link core and what the runtime does with its actions), side B the device:
  either a sans-I/O participant (:class:`ReferenceDevice`, the reference
  device core) or a device *program* that blocks, such as the firmware's
  node loop, through a :class:`VirtualUart`: its waits and sleeps run the
  simulation (:meth:`Simulation.block`).
* A script (a generator) says what happens when: it yields a number of
  seconds to wait, or :func:`until` (a condition, a bound in simulated
  seconds and what is awaited). A condition that does not hold within its
  bound fails with an AssertionError that names it: a run that goes wrong
  fails, it never hangs.
* Nothing depends on the machine's speed: the same seed, keys and script
  make the same run (with bit errors on the line, the handshakes' ephemeral
  keys too: a flipped bit that makes or breaks a frame delimiter depends on
  the bytes).

Like :class:`~lowband.sim.gateway_peer.GatewayPeer`, :class:`GatewaySide`
carries out the core's actions in order as the runtime does, keeping the
last ``Persist`` state so that a restarted gateway resumes from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from lowband.codecs import compact
from lowband.codecs.context import parse_context
from lowband.codecs.link_frame import SerialFramer, serial_encode
from lowband.gateway.link import gateway_core as core
from lowband.sim.device_core import DeviceEvent, DeviceLink, rto_for_bps
from lowband.sim.gateway_peer import Delivered
from lowband.sim.link_model import A, B, LinkModel

__all__ = ["GatewaySide", "PowerCut", "ReferenceDevice", "Script", "Simulation", "SimulationOver", "Until",
           "VirtualUart", "until"]  # fmt: skip


class SimulationOver(BaseException):
    """The script has ended: raised through a blocking device program's wait so that the program unwinds.

    A BaseException, as KeyboardInterrupt is: the program under test must not
    catch it with ``except Exception``.
    """


class PowerCut(BaseException):
    """Raised through a blocking device program's wait: the board lost power; nothing more runs or is saved."""

    def __init__(self, off_for: float = 0.0) -> None:
        super().__init__(f"power cut for {off_for:g} s")
        self.off_for = off_for


@dataclass(frozen=True)
class Until:
    """A script's wait: ``predicate()`` must hold within ``within`` simulated seconds, or the run fails."""

    predicate: Callable[[], bool]
    within: float
    what: str


def until(predicate: Callable[[], Any], within: float, what: str) -> Until:
    """A wait for a script to yield: until ``predicate()`` is true, at most ``within`` simulated seconds."""
    return Until(lambda: bool(predicate()), float(within), what)


Script = Generator[float | Until, None, None]


class Simulation:
    """A LinkModel, the participants on its two sides and a script, on one virtual clock.

    ``max_steps`` bounds the events of one run (RuntimeError beyond it): a
    participant that asks to be woken at the same instant forever is a bug
    to report, not a hang.
    """

    def __init__(self, line: LinkModel, *, max_steps: int = 1_000_000) -> None:
        self.line = line
        self.now = 0.0
        self.max_steps = max_steps
        self._receivers: dict[str, Callable[[bytes], None]] = {}
        self._participants: list[Any] = []
        self._script: Iterator[float | Until] | None = None
        self._wait: float | Until = 0.0
        self._wait_end = 0.0
        self.script_done = False
        self._interrupt: BaseException | None = None

    # ----------------------------------------------------------- wiring

    def attach(self, side: str, on_bytes: Callable[[bytes], None]) -> None:
        """Hand the bytes that arrive at ``side`` to ``on_bytes`` (bytes arriving at a side nobody attached are lost)."""
        self._receivers[side] = on_bytes

    def add_participant(self, participant: Any) -> None:
        """Wake ``participant.wake()`` whenever ``participant.next_deadline()`` (None: never) has come."""
        self._participants.append(participant)

    def send(self, side: str, data: bytes) -> None:
        """Write ``data`` onto the line from ``side``, now."""
        self.line.write(side, data, self.now)

    def start(self, script: Iterable[float | Until]) -> None:
        """Run ``script`` from now on, alongside whatever runs (see the module docstring)."""
        self._script = iter(script)
        self._wait, self._wait_end, self.script_done = 0.0, self.now, False

    def interrupt(self, exc: BaseException) -> None:
        """Make the next :meth:`block` raise ``exc`` (a :class:`PowerCut`, typically); for scripts."""
        self._interrupt = exc

    # ------------------------------------------------------------ clock

    def ticks_ms(self) -> int:
        """The clock in whole milliseconds, as MicroPython's ``time.ticks_ms`` gives it to the firmware."""
        return math.floor(self.now * 1000 + 1e-6)

    def sleep_ms(self, ms: int) -> None:
        """A blocking program's ``time.sleep_ms``: the simulation runs meanwhile."""
        self.block(self.now + max(0, ms) / 1000)

    def block(self, end: float, stop: Callable[[], bool] | None = None) -> bool:
        """For a device program that blocks: run until ``end`` or until ``stop()`` holds; True if it held.

        Raises :class:`SimulationOver` once the script has ended, and an
        exception given to :meth:`interrupt` when it is due: the program
        unwinds instead of running on.
        """
        self._raise_if_over()
        held = self.run(end, lambda: self.script_done or self._interrupt is not None or bool(stop and stop()))
        self._raise_if_over()
        return held and bool(stop and stop())

    def _raise_if_over(self) -> None:
        if self._interrupt is not None:
            exc, self._interrupt = self._interrupt, None
            raise exc
        if self._script is not None and self.script_done:
            raise SimulationOver()

    # ------------------------------------------------------------- runs

    def run(self, end: float = math.inf, stop: Callable[[], bool] | None = None) -> bool:
        """Process events in time order until ``stop()`` holds (True) or the next event lies after ``end`` (False).

        With ``end`` infinite, returns False when nothing is left to happen.
        The clock then stands at ``end`` (or at the last event). A script's
        wait that times out raises AssertionError.
        """
        for _ in range(self.max_steps):
            self._advance_script()
            if stop is not None and stop():
                return True
            when = self._next_time()
            if when is None or when > end:
                if math.isfinite(end):
                    self.now = max(self.now, end)
                    self._advance_script()
                    return bool(stop and stop())
                return False
            self.now = max(self.now, when)
            self._step()
        raise RuntimeError(f"simulation: more than {self.max_steps} events in one run (at t = {self.now:.3f} s)")

    def run_script(self, script: Iterable[float | Until]) -> None:
        """Run ``script`` to its end with the sans-I/O participants (no blocking device program)."""
        self.start(script)
        self._finish_script()

    def run_program(self, program: Callable[[], Any], script: Iterable[float | Until]) -> Any:
        """Run a blocking device ``program`` and ``script`` together until the script ends.

        The program runs in this thread; its waits run the simulation. It
        stops with :class:`SimulationOver` when the script ends (caught
        here); if it returns first, the script goes on without it. Returns
        what the program returned, or None.
        """
        self.start(script)
        result = None
        try:
            result = program()
        except SimulationOver:
            return None
        self._finish_script()
        return result

    def _finish_script(self) -> None:
        if not self.script_done and not self.run(stop=lambda: self.script_done):
            raise AssertionError(f"simulation: nothing more happens at t = {self.now:.1f} s and the script waits")

    def _advance_script(self) -> None:
        while self._script is not None and not self.script_done:
            wait = self._wait
            if isinstance(wait, Until):
                if not wait.predicate():
                    if self.now >= self._wait_end:
                        raise AssertionError(f"{wait.what}: not within {wait.within:g} s of simulated time "
                                             f"(t = {self.now:.1f} s)")  # fmt: skip
                    return
            elif self.now < self._wait_end:
                return
            try:
                wait = next(self._script)
            except StopIteration:
                self.script_done = True
                return
            self._wait = wait
            self._wait_end = self.now + (wait.within if isinstance(wait, Until) else float(wait))

    def _next_time(self) -> float | None:
        times = [t for t in (self.line.next_deadline(),) if t is not None]
        for participant in self._participants:
            deadline = participant.next_deadline()
            if deadline is not None:
                times.append(deadline)
        if self._script is not None and not self.script_done:
            times.append(self._wait_end)
        return min(times) if times else None

    def _step(self) -> None:
        for side, data in self.line.poll(self.now):
            receiver = self._receivers.get(side)
            if receiver is not None:
                receiver(data)
        for participant in self._participants:
            deadline = participant.next_deadline()
            if deadline is not None and deadline <= self.now:
                participant.wake()


class GatewaySide:
    """The gateway's end of a simulated line: its link core for the device of ``config``, and the runtime's part.

    Actions are carried out in order, at once: ``Transmit`` goes onto the
    line, ``Deliver`` is recorded (the room event, committed) and only then
    acknowledged (:meth:`GatewayLink.delivered`, as the runtime does after
    the commit), ``Persist`` is kept as the database would keep it.
    :meth:`down` stops the gateway (what reaches it is lost; queued
    commands and sessions in memory go with it); :meth:`restart` brings it
    back from the kept state, as ``lowband serve`` does from its database.
    """

    def __init__(
        self, sim: Simulation, config: dict[str, Any], gateway_private: bytes, *, mtu: int = 253, side: str = A
    ) -> None:
        self.sim = sim
        self.side = side
        self.config = config
        self.address = int(config["address"])
        self.context = parse_context(config["context"])
        self.gateway_private = gateway_private
        self.mtu = mtu
        self.entry = core.DeviceEntry(self.address, config["name"], bytes.fromhex(config["device_public"]))
        self.core: core.GatewayLink | None = None
        self.persisted: dict[str, Any] | None = None
        self.delivered: list[Delivered] = []
        self.transmitted: list[tuple[float, bytes]] = []  # (time, frame) of every frame sent to the device
        self.refused: list[tuple[float, str]] = []
        self.sessions: list[tuple[float, str]] = []
        self.commands_acked = 0
        self.commands_dropped = 0
        self._framer = SerialFramer()
        sim.attach(side, self._on_bytes)
        self.restart()

    # --------------------------------------------------------------- life

    @property
    def up(self) -> bool:
        """Whether the gateway is running."""
        return self.core is not None

    def down(self) -> None:
        """Stop: nothing more is received or answered; what was only in memory is gone."""
        self.core = None

    def restart(self) -> None:
        """Start (again) from the last persisted session state, with an empty command queue."""
        self.core = core.GatewayLink(self.gateway_private, mtu=self.mtu)
        self.core.add_device(self.entry, self.persisted)
        self._framer = SerialFramer()  # a port opened afresh: a partial frame from before is gone

    # ----------------------------------------------------------- commands

    def command(self, text: str, room: int = 0) -> None:
        """Queue a text command for the device's next uplink (as ``!NAME text`` typed in the room does)."""
        if self.core is None:
            raise RuntimeError("the gateway is down")
        payload = compact.encode_form(compact.CompactForm(kind=compact.KIND_TEXT, room=room, body=text), self.context)
        self._carry_out(self.core.queue_command(self.address, payload))

    def texts(self) -> list[str]:
        """Bodies of the text messages delivered so far."""
        return [d.form.body for d in self.delivered if d.form.kind == compact.KIND_TEXT]

    def readings(self) -> list[list[tuple[int, int]]]:
        """The (channel, mantissa) values of the telemetry delivered so far."""
        return [list(d.form.values) for d in self.delivered if d.form.kind == compact.KIND_TELEMETRY]

    # -------------------------------------------------------------- frames

    def _on_bytes(self, data: bytes) -> None:
        for frame in self._framer.feed(data):
            if self.core is None:
                return
            self._carry_out(self.core.receive(frame, self.sim.now))

    def _carry_out(self, actions: list[core.Action]) -> None:
        now = self.sim.now
        for action in actions:
            if isinstance(action, core.Transmit):
                self.transmitted.append((now, action.frame))
                self.sim.send(self.side, serial_encode(action.frame))
            elif isinstance(action, core.Deliver) and self.core is not None:
                form = compact.decode_form(action.payload, self.context)
                self.delivered.append(Delivered(action.message_id, form, now))
                self._carry_out(self.core.delivered(action.token, now))  # recorded: committed, so acknowledged
            elif isinstance(action, core.Persist):
                self.persisted = action.state
            elif isinstance(action, core.Refused):
                self.refused.append((now, action.reason))
            elif isinstance(action, core.SessionStarted):
                self.sessions.append((now, action.session_id))
            elif isinstance(action, core.CommandAcked):
                self.commands_acked += 1
            elif isinstance(action, core.CommandDropped):
                self.commands_dropped += 1


class ReferenceDevice:
    """The reference device core (:class:`~lowband.sim.device_core.DeviceLink`) as a participant of a simulation.

    Like :class:`~lowband.sim.device_peer.ScriptedDevice` on a pty, it
    publishes what it is given and answers every command with ``ok:
    <command>``. ``rto`` defaults to :func:`rto_for_bps` of the line.
    """

    def __init__(self, sim: Simulation, config: dict[str, Any], *, rto: float | None = None, side: str = B,
                 reply: bool = True) -> None:  # fmt: skip
        self.sim = sim
        self.side = side
        self.context = parse_context(config["context"])
        self.link = DeviceLink(int(config["address"]), bytes.fromhex(config["device_private"]),
                               bytes.fromhex(config["gateway_public"]),
                               rto=rto if rto is not None else rto_for_bps(sim.line.bps, sim.line.bits_per_byte))  # fmt: skip
        self.reply = reply
        self.commands: list[tuple[float, str]] = []
        self.events: list[tuple[float, DeviceEvent]] = []
        self.sent: list[tuple[float, bytes]] = []  # (time, frame) of every frame it transmitted
        self._framer = SerialFramer()
        sim.attach(side, self._on_bytes)
        sim.add_participant(self)

    def publish_reading(self, values: list[tuple[int, int]], age: int = 0) -> bytes:
        """Queue a telemetry reading ((channel, mantissa) pairs); returns its compact bytes."""
        payload = compact.encode_form(
            compact.CompactForm(kind=compact.KIND_TELEMETRY, age=age, values=values), self.context
        )
        self.link.publish(payload)
        return payload

    def publish_text(self, text: str) -> None:
        """Queue a text message from the device."""
        self.link.publish(compact.encode_form(compact.CompactForm(kind=compact.KIND_TEXT, body=text), self.context))

    def next_deadline(self) -> float | None:
        """When the device core wants to be polled (the simulation's participant protocol)."""
        return self.link.next_deadline()

    def wake(self) -> None:
        """Transmit what the device core has due now."""
        for frame in self.link.poll(self.sim.now):
            self.sent.append((self.sim.now, frame))
            self.sim.send(self.side, serial_encode(frame))

    def _on_bytes(self, data: bytes) -> None:
        now = self.sim.now
        for frame in self._framer.feed(data):
            for event in self.link.receive(frame, now):
                self.events.append((now, event))
                if event.kind == "command":
                    body = compact.decode_form(event.payload, self.context).body
                    self.commands.append((now, body))
                    if self.reply:
                        self.publish_text(f"ok: {body}")


class VirtualUart:
    """One end of a simulated line as a UART, for a device program that blocks (the firmware's node loop).

    It has the port interface of firmware/lbnode/stream.py: ``write(buf)``,
    ``readinto(buf)``, ``wait(timeout_ms)``, ``stream`` (None: no asyncio
    here) and ``close()``. ``wait`` runs the simulation until input is there
    or the timeout has passed. While closed (a board without power) what
    arrives is lost; :meth:`open` discards unread input, as
    ``termios.setraw`` does on the unix port.
    """

    stream = None

    def __init__(self, sim: Simulation, side: str = B) -> None:
        self.sim = sim
        self.side = side
        self.is_open = True
        self._rx = bytearray()
        sim.attach(side, self._on_bytes)

    def _on_bytes(self, data: bytes) -> None:
        if self.is_open:
            self._rx += data

    def open(self) -> VirtualUart:
        """(Re)open the port: unread input is discarded."""
        self._rx.clear()
        self.is_open = True
        return self

    def write(self, buf: Any) -> None:
        """Put ``buf`` on the line now (lost while closed)."""
        if self.is_open:
            self.sim.send(self.side, bytes(buf))

    def readinto(self, buf: Any) -> int:
        """Move what has arrived (up to ``len(buf)`` bytes) into ``buf``; returns the count."""
        n = min(len(buf), len(self._rx))
        buf[:n] = self._rx[:n]
        del self._rx[:n]
        return n

    def wait(self, timeout_ms: int) -> bool:
        """True once input is waiting, False after ``timeout_ms`` of simulated time."""
        if self._rx:
            return True
        return self.sim.block(self.sim.now + max(0, timeout_ms) / 1000, lambda: bool(self._rx))

    def close(self) -> None:
        """Close the port."""
        self.is_open = False
        self._rx.clear()
