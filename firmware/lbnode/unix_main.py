"""The device process on the MicroPython unix port (started by firmware/main_unix.py).

    micropython -X heapsize=64k firmware/main_unix.py CONFIG PORT [options]

CONFIG is the file `lowband device add` wrote, PORT the device's end of
the serial line (a pty from sim/pty_link.py). Options:

    --interval S    seconds between readings (default 30)
    --readings N    stop after N readings, once the link has settled (default: run forever)
    --first N       the fake sensor's first reading number (default 0)
    --state FILE    keep the session in FILE across restarts (default: none)
    --asyncio       run the asyncio loop (Node.arun) instead of the blocking one
    --quiet         no trace lines

The fake sensor gives the three default channels of `lowband device add`
with a temperature rising by 0.1 per reading from 21.5 + first / 10, so
every reading of a run can be told apart in the room. Commands (typed as
"!NAME command" in the room): "report" answers "ok: report" and takes a
reading at once; "led on" / "led off" switch the fake LED and answer
"ok: led on" / "ok: led off"; anything else gets "unknown command: ...".

Trace lines on stdout, one per event:

    start NAME address=A resumed=0|1 epoch=E
    tx EPOCH SID COUNTER RETX HEX   COUNTER -1: a handshake frame; SID: SHA-256(k_up)[:4]
    session EPOCH | resumed EPOCH | acked COUNTER | refused REASON | command TEXT | led 0|1
    reading N TEMPERATURE heap_alloc=A heap_free=F   (after a collection)
    done readings=N dropped=D refused=R
"""

import gc
import sys
from binascii import hexlify

from .hal_unix import UnixPort
from .node import Node, link_bps, load_config
from .stream import StreamTransport

_FLAGS = ("asyncio", "quiet")


def _options(argv):
    opts = {"interval": "30", "readings": None, "first": "0", "state": None}
    rest = []
    i = 0
    while i < len(argv):
        name = argv[i][2:] if argv[i].startswith("--") else None
        if name in _FLAGS:
            opts[name] = True
        elif name in opts and i + 1 < len(argv):
            i += 1
            opts[name] = argv[i]
        elif name is None:
            rest.append(argv[i])
        else:
            rest = ()
            break
        i += 1
    if len(rest) != 2:
        print("usage: main_unix.py CONFIG PORT [--interval S] [--readings N] [--first N] [--state FILE]"
              " [--asyncio] [--quiet]")
        sys.exit(2)
    return rest, opts


def main(argv):
    (config_path, port), opts = _options(argv)
    config = load_config(config_path)
    transport = StreamTransport(UnixPort(port), bps=link_bps(config))
    store = None
    if opts["state"]:
        from .state import FileStore

        store = FileStore(opts["state"])
    sid = [None, "-"]  # key, its name

    def trace(event, detail):
        if event != "tx":
            print(event, detail)
            return
        link = node.link
        if link.k_up is not sid[0]:
            import hashlib

            sid[0] = link.k_up
            sid[1] = hexlify(hashlib.sha256(link.k_up).digest()[:4]).decode() if link.k_up else "-"
        print("tx", link.epoch, sid[1], link.last_counter, int(link.retransmission), hexlify(detail).decode())

    node = Node(config, transport, store=store, trace=None if opts.get("quiet") else trace)
    del config
    print("start", node.name, "address=%d" % node.link.address, "resumed=%d" % node.link.resumed,
          "epoch=%d" % node.link.epoch)
    count = [int(opts["first"]), 0]
    led = [0]

    def sensor():
        t = (215 + count[0]) / 10
        count[0] += 1
        count[1] += 1
        gc.collect()
        print("reading", count[1], t, "heap_alloc=%d heap_free=%d" % (gc.mem_alloc(), gc.mem_free()))
        return {"temperature": t, "humidity": 40, "battery": 3.7}

    def command(text):
        if text == "report":
            node.sample((sensor,))
            return "ok: report"
        if text in ("led on", "led off"):
            led[0] = int(text == "led on")
            print("led", led[0])
            return "ok: " + text
        return "unknown command: " + text

    node.on_command(command)
    readings = None if opts["readings"] is None else int(opts["readings"])
    try:
        if opts.get("asyncio"):
            import asyncio

            asyncio.run(node.arun((sensor,), float(opts["interval"]), readings))
        else:
            node.run((sensor,), float(opts["interval"]), sleep="idle", readings=readings)
    finally:
        node.close()
    print("done readings=%d dropped=%d refused=%d" % (count[1], node.link.dropped, node.link.refused))
