"""Run by tests/firmware/test_firmware_aio.py on the MicroPython unix port:

    micropython firmware_aio_memory.py FIRMWARE_DIR

Node.arun() with a node whose sending raises MemoryError: a few times (a
fragmented heap), then for good. Prints one line per case.
"""

import sys

sys.path.insert(0, sys.argv[1])

import asyncio  # noqa: E402

from lbnode import aio  # noqa: E402


class Link:
    def wait_ms(self, now):
        return None


class Transport:  # no `stream`: the pump polls it
    def recv(self, timeout):
        return None


class Node:
    def __init__(self, failures):
        self.link, self.transport = Link(), Transport()
        self.failures = failures  # -1: for ever
        self.pending = 0

    def _send_due(self):
        if self.pending and self.failures:
            self.failures -= 1
            raise MemoryError("simulated")
        self.pending = 0

    def _on_frame(self, frame):
        pass

    def sample(self, sensors):
        self.pending += 1

    def settled(self):
        return self.pending == 0


async def case(name, failures):
    node = Node(failures)
    try:
        await asyncio.wait_for_ms(aio.arun(node, (), 0.01, 2), 5000)
        print(name, "completed", node.failures)
    except MemoryError:
        print(name, "raised MemoryError")
    except asyncio.TimeoutError:
        print(name, "hung")


asyncio.run(case("transient", 2))
asyncio.run(case("lasting", -1))
