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

from .ticks import ticks_ms

_POLL_MS = 20


async def arun(node, sensors, interval, readings):
    """Readings every interval seconds until `readings` were taken (None: forever), then until settled."""
    wake = asyncio.Event()
    stream = getattr(node.transport, "stream", None)
    pump = asyncio.create_task(_pump(node, wake, stream is None))
    reader = asyncio.create_task(_read(node, wake, asyncio.StreamReader(stream))) if stream is not None else None
    try:
        done = 0
        while readings is None or done < readings:
            node.sample(sensors)
            done += 1
            wake.set()
            if readings is not None and done >= readings:
                break
            await asyncio.sleep_ms(int(interval * 1000))
        while not node.settled():
            await asyncio.sleep_ms(50)
    finally:
        pump.cancel()
        if reader is not None:
            reader.cancel()


async def _read(node, wake, reader):
    while True:
        data = await reader.read(64)
        if data:
            node.transport.feed(data, node._on_frame)
            wake.set()
        else:
            await asyncio.sleep_ms(_POLL_MS)  # a hung-up port polls readable forever


async def _pump(node, wake, polled):
    link = node.link
    while True:
        wake.clear()  # before sending: a frame handed in from now on wakes the next wait
        node._send_due()
        if polled:
            frame = node.transport.recv(0)
            if frame is not None:
                node._on_frame(frame)
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
