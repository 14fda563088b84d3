"""Node.arun(): the node's loop as asyncio tasks (MicroPython asyncio).

Three parts share the node:
- the pump task sends what the link has due and then waits on an Event
  until the link's next deadline; anything that queues a frame or hands
  in one sets the Event;
- the reader task awaits input through asyncio.StreamReader when the
  transport offers a `stream` (a UART, the unix port's pty), so the board
  runs other tasks meanwhile; a transport without one (a packet radio
  polled by the driver) is polled by the pump every 20 ms instead;
- arun() itself takes the readings every interval seconds.
Loaded only by arun(): a blocking node never pays its RAM.
"""

import asyncio
import gc

from .ticks import ticks_ms

_POLL_MS = 20
_MEMORY_RETRIES = 3


async def arun(node, sensors, interval, readings):
    """Readings every interval seconds until `readings` were taken (None: forever), then until settled."""
    wake = asyncio.Event()
    stream = getattr(node.transport, "stream", None)
    pump = asyncio.create_task(_pump(node, wake, stream is None))
    reader = asyncio.create_task(_read(node, wake, asyncio.StreamReader(stream))) if stream is not None else None
    try:
        done = 0
        while readings is None or done < readings:
            await _alive(pump, reader)
            node.sample(sensors)
            done += 1
            wake.set()
            if readings is not None and done >= readings:
                break
            await asyncio.sleep_ms(int(interval * 1000))
        while not node.settled():
            await _alive(pump, reader)
            await asyncio.sleep_ms(50)
    finally:
        pump.cancel()
        if reader is not None:
            reader.cancel()


async def _alive(pump, reader):
    """Raise the error a task ended on (they only end on one): readings would otherwise pile up unsent and
    the wait for the link to settle would never end."""
    for task in (pump, reader):
        if task is not None and task.done():
            await task  # re-raises its exception
            raise RuntimeError("a link task ended")


def _short_of_memory(exc, short):
    """After a MemoryError in a link task: the new count of them in a row, the heap collected.

    A fragmented heap can refuse one allocation (a handshake's big
    integers); the link's own retransmission covers what was lost. A heap
    that stays too small ends the task with the error, which arun() raises.
    """
    if short >= _MEMORY_RETRIES:
        raise exc
    gc.collect()
    return short + 1


async def _read(node, wake, reader):
    short = 0  # MemoryErrors in a row (see _pump)
    while True:
        data = await reader.read(64)
        if data:
            try:
                node.transport.feed(data, node._on_frame)
                short = 0
            except MemoryError as exc:
                short = _short_of_memory(exc, short)
            wake.set()
        else:
            await asyncio.sleep_ms(_POLL_MS)  # a hung-up port polls readable forever


async def _pump(node, wake, polled):
    link = node.link
    short = 0  # MemoryErrors in a row
    while True:
        wake.clear()  # before sending: a frame handed in from now on wakes the next wait
        try:
            node._send_due()
            frame = node.transport.recv(0) if polled else None
            if frame is not None:
                node._on_frame(frame)
            short = 0
        except MemoryError as exc:
            short = _short_of_memory(exc, short)
            await asyncio.sleep_ms(_POLL_MS)
            continue
        if frame is not None:
            continue
        wait = link.wait_ms(ticks_ms())
        if polled and (wait is None or wait > _POLL_MS):
            wait = _POLL_MS
        if wait is None:
            await wake.wait()
        elif wait > 0:
            try:
                await asyncio.wait_for_ms(wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
