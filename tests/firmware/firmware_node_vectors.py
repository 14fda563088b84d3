"""Check the firmware node (firmware/lbnode) against the shared vectors.

Runs unchanged under CPython and the MicroPython unix port:

    python tests/firmware/firmware_node_vectors.py FIRMWARE_DIR DATA_DIR
    micropython -X heapsize=64k tests/firmware/firmware_node_vectors.py FIRMWARE_DIR DATA_DIR

FIRMWARE_DIR holds lbnode, lbcrypto (and lbwire) as .py sources or .mpy
files. Checks, byte for byte:

- the device's link state machine (lbnode.link.DeviceLink) fed the test
  keys and ephemeral of link_vectors.json: HS1, the keys after HS2, the
  reading frame and its serial form (lbnode.stream), the gateway's pure
  ack (acknowledges it), the command frame (delivered), the next uplink
  carrying the ack, frames a device must refuse, the replay window steps;
- lbnode.wire against compact_vectors.json: telemetry and text encoded
  to the vector bytes, text read back, other kinds refused.

On CPython, which has no cryptolib, tests/firmware/firmware_crypto_vectors.py's
install_host_cryptolib() must run first (tests/firmware/test_firmware_node.py does).
Prints one line per failing check and ends with "N passed, M failed"; exits
1 if M > 0, 2 on a usage error or a missing vector file.
"""

import gc
import json
import sys
from binascii import hexlify, unhexlify


class T:
    passed = failed = 0


def _hex(b):
    return hexlify(bytes(b)).decode()


def run(label, check, *args):
    try:
        problem = check(*args)
    except Exception as e:  # a crash is one more failure, named
        problem = "raised %s: %s" % (type(e).__name__, e)
    if problem:
        T.failed += 1
        print("FAIL %s: %s" % (label, problem))
    else:
        T.passed += 1
    gc.collect()


def _eq(what, got, want):
    got = _hex(got) if not isinstance(got, (str, int)) else got
    return None if got == want else "%s is %s, expected %s" % (what, got, want)


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return None


# ------------------------------------------------------------- the link


class Session:
    """The vector device, driven through the vector exchange."""

    def __init__(self, doc, link):
        keys = doc["keys"]
        self.doc = doc
        self.link = link.DeviceLink(
            doc["address"], unhexlify(keys["device_static"]["private"]), unhexlify(keys["device_static"]["public"]),
            unhexlify(keys["gateway_static"]["public"]), rto_ms=1000)
        self.link.ephemeral = unhexlify(keys["device_ephemeral"]["private"])
        self.mod = link

    def data(self, name):
        for d in self.doc["data"]:
            if d["name"] == name:
                return d


def check_handshake(s):
    hs = s.doc["handshake"]
    frame = s.link.poll(0)
    problem = _eq("HS1 frame", frame, hs["hs1"]["frame"])
    if problem:
        return problem
    got = s.link.receive(unhexlify(hs["hs2"]["frame"]), 10)
    if got != s.mod.SESSION:
        return "HS2 gave %d, expected SESSION (reason %s)" % (got, s.link.reason)
    return _eq("k_up", s.link.k_up, hs["k_up"]) or _eq("k_down", s.link.k_down, hs["k_down"])


def check_reading(s, stream):
    v = s.data("uplink_reading")
    s.link.publish(unhexlify(v["plaintext"]))
    frame = s.link.poll(20)
    problem = _eq("reading frame", frame, v["frame"])
    if problem:
        return problem
    buf = bytearray(stream.ENCODED_MAX)
    n = stream.encode_into(buf, frame, len(frame))
    problem = _eq("serial form", buf[:n], v["serial"])
    if problem:
        return problem
    if s.link.poll(30) is not None:
        return "sent again before its timeout"
    return None


def check_ack_command_and_reply(s):
    ack = s.data("downlink_pure_ack")
    got = s.link.receive(unhexlify(ack["frame"]), 40)
    if got != s.mod.ACKED or s.link.acked != 0:
        return "pure ack gave %d (acked %d), expected ACKED of 0" % (got, s.link.acked)
    if s.link.poll(50) is not None:
        return "a pure ack was answered"
    cmd = s.data("downlink_command_with_ack")
    got = s.link.receive(unhexlify(cmd["frame"]), 60)
    if got != s.mod.COMMAND:
        return "command frame gave %d, expected COMMAND" % got
    problem = _eq("command", s.link.command, cmd["plaintext"])
    if problem:
        return problem
    if s.link.receive(unhexlify(cmd["frame"]), 61) != 0:
        return "the repeated command was delivered again"
    up = s.data("uplink_with_ack")
    s.link.publish(unhexlify(up["plaintext"]))
    return _eq("uplink with ack", s.link.poll(70), up["frame"])


def check_refusals(s):
    base = unhexlify(s.data("downlink_pure_ack")["frame"])
    bad = (
        ("tag bit flipped", base[:-1] + bytes((base[-1] ^ 1,))),
        ("epoch 2", bytes((base[0] ^ 0x03,)) + base[1:]),
        ("address 6", base[:1] + b"\x06" + base[2:]),
        ("ACK flag without its byte", bytes((base[0],)) + base[1:3] + base[4:]),
        ("truncated tag", base[:-1]),
        ("reserved type", bytes((0x60 | 1,)) + base[1:]),
        ("empty", b""),
        ("HS2 for no handshake", unhexlify(s.doc["handshake"]["hs2"]["frame"])),
    )
    for name, frame in bad:
        if s.link.receive(frame, 80) != s.mod.REFUSED:
            return "%s was not refused" % name
    return None


def check_replay_window(doc, link):
    w = link.DeviceLink(7, bytes(32), bytes(32), bytes(32))
    for step in doc["replay_window"]["steps"]:
        fresh = w._fresh(step["counter"])
        if fresh != (step["verdict"] in ("new", "late")):
            return "counter %d: fresh=%s, expected %s" % (step["counter"], fresh, step["verdict"])
        if fresh:
            w._accept(step["counter"])
        if w._rx_high != step["highest_after"]:
            return "counter %d: highest %d" % (step["counter"], w._rx_high)
    return None


# ------------------------------------------------------------- compact messages


def check_wire(v, wire):
    data = unhexlify(v["compact"])
    form = v["form"]
    kind = form["kind"]
    buf = bytearray(96)
    if kind == 1 and not form["room"] and not form["sender"]:
        mask = 0
        for ch, _ in form["values"]:
            mask |= 1 << ch
        n = wire.telemetry_into(buf, 1, form["age"], mask, [m for _, m in form["values"]])
        return _eq("telemetry", buf[:n], v["compact"])
    if kind == 2:
        if not form["sender"] and not form["age"]:
            n = wire.text_into(buf, 1, form["body"].encode(), form["room"])
            problem = _eq("text", buf[:n], v["compact"])
            if problem:
                return problem
        room, body = wire.read_text(data, 1)
        if room != form["room"] or body != form["body"]:
            return "read %r in room %d" % (body, room)
        try:
            wire.read_text(data, 2)
        except ValueError:
            return None
        return "a message of context version 1 was read as version 2"
    try:
        wire.read_text(data, 1)
    except ValueError:
        return None
    return "a kind %d message was read as text" % kind


def main(argv):
    if len(argv) != 3:
        print("usage: firmware_node_vectors.py FIRMWARE_DIR DATA_DIR")
        return 2
    sys.path.insert(0, argv[1])
    from lbnode import link, stream, wire

    doc = _load(argv[2] + "/link_vectors.json")
    if doc is None:
        print("link_vectors.json not found in", argv[2])
        return 2
    s = Session(doc, link)
    run("link handshake", check_handshake, s)
    run("link reading", check_reading, s, stream)
    run("link ack, command, reply", check_ack_command_and_reply, s)
    run("link refusals", check_refusals, s)
    run("link replay window", check_replay_window, doc, link)
    s = doc = None
    gc.collect()
    compact = _load(argv[2] + "/compact_vectors.json")
    if compact is None:
        print("compact_vectors.json not found in", argv[2])
        return 2
    for v in compact["vectors"]:
        run("wire " + v["name"], check_wire, v, wire)
    print("%d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
