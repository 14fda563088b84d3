"""LoRa through a transparent UART modem, within the band's duty cycle.

A transparent module (E22/E32/RYLR-style) radiates whatever arrives on its
UART as a packet and writes what it hears back to the UART. The gateway
talks to it like a serial port — the same COBS frames — and this module adds
what a radio needs:

* every frame's time on air, from the region's modulation at the link's
  data rate (``hardware/lora.py``);
* a :class:`DutyCycleScheduler` that holds frames back until the sub-band's
  budget (e.g. 1 % per hour in EU868 g1) allows them — it never transmits
  over the budget; frames wait in order, and when more than ``max_queue``
  wait, the oldest is dropped (a retransmission will bring it again);
* the MTU of the data rate, so the link core fragments larger messages;
* each device's figures (device_stats.py): its frames' time on air at the
  link's data rate (:func:`frame_airtime`) against its own budget in the
  sub-band (:func:`device_budget_s`: 36 s per hour at 1 %).

Link spec: ``lora:/dev/ttyUSB1?region=EU868&dr=0&freq=868100000``.

Such a modem writes back the packet's bytes and nothing else: no RSSI, no
SNR. So the devices' ``rssi_dbm`` and ``snr_db`` stay None on this link; a
driver for a modem that reports them would call
``DeviceCounters.note_signal`` with the figures of each received packet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from lowband.gateway.aio import cancel_and_wait, wait_until
from lowband.gateway.link.device_stats import wire_len
from lowband.hardware.lora import MAX_PAYLOAD, DutyCycleBudget
from lowband.hardware.radio import Region, load_region

log = logging.getLogger("lowband.link")
COBS_OVERHEAD = 2  # one code byte and the 0x00 delimiter for frames under 254 bytes


class DutyCycleScheduler:
    """Sans-I/O: when each queued frame may go on the air."""

    def __init__(self, region: Region, dr: int, frequency_hz: int, max_queue: int = 32) -> None:
        self.region = region
        self.dr = dr
        self.rate = region.data_rate(dr)
        self.sub_band = region.sub_band_for(frequency_hz, self.rate.bw_hz)
        self.budget = DutyCycleBudget(self.sub_band.duty_cycle, region.duty_cycle_window_s)
        self.max_queue = max_queue
        self._queue: deque[tuple[bytes, float]] = deque()
        self.dropped = 0
        self.sent_airtime_ms = 0.0

    @property
    def budget_window_s(self) -> float:
        """Seconds of the region's duty-cycle window (3600 in EU868)."""
        return float(self.region.duty_cycle_window_s)

    @property
    def mtu(self) -> int:
        """Largest link frame that fits one packet at this data rate (after COBS)."""
        return self.rate.mtu - COBS_OVERHEAD

    def airtime_ms(self, packet_len: int) -> float:
        """Time on air of a packet of ``packet_len`` bytes."""
        return self.region.time_on_air_ms(self.dr, packet_len)

    def submit(self, packet: bytes) -> None:
        """Queue a packet (COBS frame) for transmission."""
        self.region.check_payload(self.dr, len(packet))
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((packet, self.airtime_ms(len(packet))))

    def next_deadline(self, now: float) -> float | None:
        """When the head of the queue may go, or None when nothing waits."""
        if not self._queue:
            return None
        return self.budget.earliest_send(self._queue[0][1], now)

    def pop_due(self, now: float) -> list[bytes]:
        """Packets that may be sent now; their airtime is charged to the budget."""
        out = []
        while self._queue and self.budget.can_send(self._queue[0][1], now):
            packet, airtime = self._queue.popleft()
            self.budget.record(airtime, now)
            self.sent_airtime_ms += airtime
            out.append(packet)
            now += airtime / 1000  # the next packet starts after this one ends
        return out


class LoRaModemTransport:
    """A serial transport whose writes pass a duty-cycle scheduler."""

    def __init__(self, serial_transport: Any, scheduler: DutyCycleScheduler) -> None:
        self.serial = serial_transport
        self.scheduler = scheduler
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Open the port and start the sender."""
        self.serial.start()
        self._task = asyncio.create_task(self._send_loop())

    def write(self, data: bytes) -> None:
        """Queue a COBS frame; it goes out when the duty cycle allows."""
        try:
            self.scheduler.submit(data)
        except ValueError as exc:
            log.warning("LoRa frame refused: %s", exc)
            return
        self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            now = time.monotonic()
            for packet in self.scheduler.pop_due(now):
                self.serial.write(packet)
            await wait_until(self._wake, self.scheduler.next_deadline(time.monotonic()))

    async def close(self) -> None:
        """Stop sending and close the port."""
        await cancel_and_wait(self._task)
        await self.serial.close()


def frame_airtime(scheduler: DutyCycleScheduler) -> Callable[[int], float]:
    """Seconds on air of a link frame of ``n`` bytes at the scheduler's data rate (the modem sends it COBS-framed).

    A frame too long for one packet (none is sent: ``submit`` refuses it)
    is charged as the longest packet, so it never raises.
    """
    return lambda n: scheduler.airtime_ms(min(wire_len(n), MAX_PAYLOAD)) / 1000


def device_budget_s(scheduler: DutyCycleScheduler) -> float | None:
    """Seconds a device may spend on air per window in the link's sub-band; None where it has no duty-cycle limit."""
    duty = scheduler.sub_band.duty_cycle
    return None if duty >= 1.0 else duty * scheduler.budget_window_s


def scheduler_for(query: dict[str, str]) -> DutyCycleScheduler:
    """A scheduler from a ``lora:`` link spec's query (region, dr, freq)."""
    region = load_region(query.get("region", "EU868"))
    dr = int(query.get("dr", "0"))
    frequency = int(query.get("freq", str(region.channels[0].frequency_hz)))
    return DutyCycleScheduler(region, dr, frequency)
