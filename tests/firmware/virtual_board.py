"""The firmware's node on CPython, on the clock of a simulated line (lowband.sim.virtual_line).

A :class:`Board` runs the device program of lbnode/unix_main.py — the
blocking loop ``Node.run(sleep="idle")``, a fake sensor whose temperature
rises by 0.1 per reading from 21.5, a fake LED, the commands "led on",
"led off" and "report" — over ``lbnode.stream.StreamTransport`` on a
:class:`~lowband.sim.virtual_line.VirtualUart`, so that a 100 bps line
costs no wall time. The firmware's code runs unchanged; what is the
host's:

* the runtime: CPython runs the same sources as the unix port (the node
  vectors run under both, tests/firmware/test_firmware_node.py), with the
  cryptolib stand-in of firmware_crypto_vectors.py;
* the clock: lbnode reads time only through ``ticks_ms`` and ``sleep_ms``
  (lbnode/ticks.py: MicroPython's ``time`` functions, with CPython
  stand-ins that each module binds by ``from .ticks import``). While a
  board runs, every lbnode module's binding is the simulation's clock
  (:func:`virtual_clock`), and a module still holding the real one fails
  the run;
* the ephemeral keys of its handshakes: given through ``DeviceLink.ephemeral``
  (the firmware's hook for boards without a hardware RNG), derived from a
  seed, so that a run is the same every time.

The fake sensor's count lives on the board, not in the node: after a power
cut the readings go on numbering where they were (the e2e test's ``--first``).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vector_runs import host_cryptolib, load_script

from lowband.sim.virtual_line import PowerCut, Simulation, VirtualUart

with host_cryptolib(load_script(Path(__file__).resolve().parent / "firmware_crypto_vectors.py")):
    from lbnode import node as fw_node
    from lbnode import state as fw_state
    from lbnode import stream as fw_stream
    from lbnode import ticks as fw_ticks

__all__ = ["Board", "Sent", "virtual_clock"]


@contextlib.contextmanager
def virtual_clock(sim: Simulation) -> Iterator[None]:
    """Meanwhile every lbnode module tells time by ``sim`` (ticks_ms, sleep_ms); restored afterwards.

    lbnode.ticks itself is switched too, so a module imported meanwhile
    binds the simulation's clock; it is switched back with the others.
    """
    real = {"ticks_ms": fw_ticks.ticks_ms, "sleep_ms": fw_ticks.sleep_ms}
    fake = {"ticks_ms": sim.ticks_ms, "sleep_ms": sim.sleep_ms}

    def modules() -> list[Any]:
        return [m for name, m in list(sys.modules.items()) if name == "lbnode" or name.startswith("lbnode.")]

    for module in modules():
        for attr, clock in real.items():
            if vars(module).get(attr) is clock:
                setattr(module, attr, fake[attr])
    try:
        for module in modules():
            held = [attr for attr, value in vars(module).items() if any(value is r for r in real.values())]
            assert not held, f"{module.__name__}.{held[0]} is still the real clock: the simulation cannot run it"
        yield
    finally:
        for module in modules():
            for attr, clock in fake.items():
                if vars(module).get(attr) is clock:
                    setattr(module, attr, real[attr])


@dataclass(frozen=True)
class Sent:
    """One frame the board transmitted: when, in which boot, under which session key and counter."""

    at: float
    boot: int
    epoch: int
    k_up: bytes | None  # None: a handshake frame
    counter: int  # -1: a handshake frame
    retransmission: bool
    frame: bytes


class Board:
    """The unix port's device program on a :class:`VirtualUart` (side B of ``sim``'s line).

    ``config`` is a device config (dict), ``interval`` the seconds between
    readings, ``store`` an lbnode.state store (None: a handshake after every
    boot), ``readings`` how many readings a boot takes before the program
    ends, once settled (None: until the simulation ends). :meth:`run` is the
    program for :meth:`Simulation.run_program`; a :class:`PowerCut` through
    it restarts the board after ``off_for`` seconds, from its store.
    """

    def __init__(self, sim: Simulation, config: dict[str, Any], *, interval: float, store: Any = None,
                 readings: int | None = None, seed: bytes = b"") -> None:  # fmt: skip
        self.sim = sim
        self.config = config
        self.interval = interval
        self.store = store
        self.readings = readings
        self.seed = seed
        self.port = VirtualUart(sim)
        self.events: list[tuple[float, str, Any]] = []  # (time, event, detail), as unix_main's trace lines
        self.sent: list[Sent] = []
        self.taken: list[int] = []  # temperature mantissas of the readings taken, in order
        self.led = 0
        self.boots = 0
        self.finished = False  # the program ended by itself (``readings`` taken and settled)
        self.node: Any = None
        self._handshakes = 0

    # ------------------------------------------------------------- program

    def run(self) -> None:
        """Boot, run the node loop; after a power cut, boot again (until the simulation or ``readings`` end)."""
        with virtual_clock(self.sim):
            while True:
                self.boots += 1
                node = self._boot()
                try:
                    node.run((self._sensor,), self.interval, sleep="idle", readings=self.readings)
                except PowerCut as cut:
                    self.events.append((self.sim.now, "power cut", cut.off_for))
                    self.port.close()  # nothing is flushed or saved: the node object is simply gone
                    self.sim.block(self.sim.now + cut.off_for)
                    self.port.open()
                    continue
                node.close()
                self.finished = True
                return

    def _boot(self) -> Any:
        transport = fw_stream.StreamTransport(self.port, bps=fw_node.link_bps(self.config))
        self.node = node = fw_node.Node(self.config, transport, store=self.store, trace=self._trace)
        node.on_command(self._command)
        node.link.ephemeral = self._next_ephemeral()
        self.events.append((self.sim.now, "start", node.link.resumed))
        return node

    def _next_ephemeral(self) -> bytes:
        self._handshakes += 1
        return hashlib.sha256(b"board ephemeral %d " % self._handshakes + self.seed).digest()

    def _trace(self, event: str, detail: Any) -> None:
        link = self.node.link
        if event != "tx":
            self.events.append((self.sim.now, event, detail))
            return
        self.sent.append(Sent(self.sim.now, self.boots, link.epoch, link.k_up, link.last_counter, link.retransmission,
                              bytes(detail)))  # fmt: skip
        if link.ephemeral is None:  # this HS1 took the last one: the next handshake's, ready
            link.ephemeral = self._next_ephemeral()

    def _sensor(self) -> dict[str, float]:
        mantissa = 215 + len(self.taken)
        self.taken.append(mantissa)
        self.events.append((self.sim.now, "reading", mantissa))
        return {"temperature": mantissa / 10, "humidity": 40, "battery": 3.7}

    def _command(self, text: str) -> str:
        if text == "report":
            self.node.sample((self._sensor,))
            return "ok: report"
        if text in ("led on", "led off"):
            self.led = int(text == "led on")
            self.events.append((self.sim.now, "led", self.led))
            return "ok: " + text
        return "unknown command: " + text

    # ------------------------------------------------------------- reading

    def times(self, event: str, since: float = 0.0) -> list[float]:
        """When ``event`` happened (at or after ``since``)."""
        return [t for t, e, _ in self.events if e == event and t >= since]

    def details(self, event: str, since: float = 0.0) -> list[Any]:
        """What ``event`` said each time (at or after ``since``)."""
        return [d for t, e, d in self.events if e == event and t >= since]


def file_store(path: Path) -> Any:
    """The firmware's FileStore (lbnode/state.py) at ``path``."""
    return fw_state.FileStore(str(path))
